"""The reduced mean-field ODE of weighted particles `(a_i, s_i in R^k)` (docs: [the mean-field
ODE][mean-field-ode], [targets of k directions][multi-index-mean-field-ode]):

`eps da_i/dt = V(s_i) - sum_j p_j a_j U(s_i . s_j)`,
`ds_i/dt = a_i (I - s_i s_i^T) [grad V(s_i) - sum_j p_j a_j U'(s_i . s_j) s_j]`.

**Moments.** For an activation of degree `K`, with `b_alpha = sigma_|alpha| sqrt(|alpha|!/alpha!)`
and the residuals `r_alpha = c_alpha - b_alpha mu_alpha` (`|alpha| <= K`, `N_K = C(K + k, k)` of
them), both rates are those of one polynomial `A(s) = sum_alpha b_alpha r_alpha s^alpha`:
`eps da_i/dt = A(s_i)` and `ds_i/dt = a_i (I - s_i s_i^T) grad A(s_i)`, at cost O(m N_K).

**Coordinates on the ball.** `|s_i| = 1` is invariant and an implicit step can overshoot it.
The solver integrates `x_i in R^k` with `s = sin(|x|) x / |x|` (for `k = 1`, `s = sin(x)`), so
every `s` lies in the closed ball whatever the step. With `J = ds/dx` and
`T = psi I + phi x x^T` (`psi = r / sin r`, `phi = (cos r - r / sin r) / r^2`, `r = |x|`; for
`k = 1`, `T = cos x`), `J T = I - s s^T`, so `dx/dt = a T g` for `ds/dt = a (I - s s^T) g`.
`psi` and `phi` are smooth functions of `r^2` (series near `x = 0`, where every particle of the
d = infinity limit starts); the radial rate vanishes on `r = pi/2`, so the ball is invariant.

**The staircase solver.** On the moment path the solver coordinates are `(a, x, r)`: the
residuals are integrated as coordinates, with `dr/dt = -M r` (`M` positive semidefinite), and
`a` is moved back onto them after each step (`project`); the Jacobian is a `BorderedJacobian`
(blocks of `1 + k` coordinates per particle, bordered by the `N_K` residuals), solved by the
Schur complement in O(m N_K^2) (docs: [the staircase solver][staircase-solver]).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ._control import scaled_rms_error
from ._linear import BorderedJacobian, DenseJacobian, _small_matrix_inverse
from ._problem import AbstractProblemModel, Problem, overlap_matrix, state_overlaps
from ._target import _powers, _select, graded_indices, monomials
from ._validate import check_overlaps, check_weights, float_array, particle_weights

# `project`: the ratio atol / rtol of the default tolerances (see there).
_PROJECTION_ALPHA = 1e-2
# Unit roundoff of float64: the relative rounding error of one operation.
_U = float(np.finfo(np.float64).eps) / 2
# Below this |x|^2 the functions of r^2 use their Taylor series to q^3 (truncation error below
# 1e-17 relative; above it the closed form of phi loses at most 1e-12 relative to cancellation,
# on a term that is itself O(q) relative to the rate).
_SERIES_BELOW = 1e-4


class MeanFieldState(eqx.Module):
    """Weighted particles of the reduced ODE (docs: [the mean-field ODE][mean-field-ode]).

    **Fields:** `a` second-layer weights `(m,)`; `s` overlaps with the target directions,
    `(m,)` for an `sst.Hermite` target and `(m, k)` for an `sst.Target` (rows in the unit
    ball); `weights` particle weights `p_i` `(m,)` (non-negative, summing to 1; default `1/m`).
    """

    a: Float[Array, " m"]
    s: Float[Array, " m *k"]
    weights: Float[Array, " m"]

    def __init__(self, a, s, weights=None):
        self.a = float_array(a)
        self.s = float_array(s)
        self.weights = particle_weights(self.a, weights)


class MeanFieldODE(AbstractProblemModel):
    """The reduced mean-field ODE for weighted particles `(a_i, s_i)` of a `Problem` with `k`
    target directions (docs: [the mean-field ODE][mean-field-ode]; equations in the module
    docstring).

    For a polynomial activation the interaction goes through the moments `mu_alpha` and costs
    O(m N_K) (the staircase solver: residuals as coordinates, `BorderedJacobian`); otherwise
    (relu, erf) the dense O(m^2) sums with a `DenseJacobian`. `interaction="dense"` forces the
    O(m^2) path (a cross-check of the moment path).
    """

    problem: Problem
    interaction: str = eqx.field(static=True, default="auto")

    def __check_init__(self):
        if not isinstance(self.problem, Problem):
            raise ValueError(
                f"MeanFieldODE needs an sst.Problem, got {type(self.problem).__name__}."
            )
        if self.interaction not in ("auto", "moments", "dense"):
            raise ValueError(
                f"interaction must be 'auto', 'moments' or 'dense', got {self.interaction!r}."
            )
        if self.interaction == "moments" and not self.problem.activation.is_polynomial:
            raise ValueError(
                "interaction='moments' needs a polynomial activation (a finite Hermite series); "
                "use 'dense' or 'auto' for relu or erf."
            )

    @property
    def uses_moments(self) -> bool:
        """Whether the O(m N_K) moment path is used."""
        if self.interaction == "auto":
            return self.problem.activation.is_polynomial
        return self.interaction == "moments"

    @property
    def interaction_indices(self):
        """The multi-indices of degree `<= K` through which particles interact (`(l,)` for
        `k = 1`): the residuals integrated on the moment path."""
        return graded_indices(self.problem.k, self.problem.activation.degree)

    def check_state(self, state: MeanFieldState) -> MeanFieldState:
        """`state`, checked as a set of weighted particles: a `ValueError` now if concrete and
        invalid; under jit, an error when run if `|s_i| > 1` or the weights are off."""
        if not isinstance(state, MeanFieldState):
            raise ValueError(f"MeanFieldODE needs a MeanFieldState, got {type(state).__name__}.")
        s = check_overlaps(self.problem, state.a, state.s, "MeanFieldState")
        if state.weights.shape != state.a.shape:
            raise ValueError(
                f"weights must have the shape {state.a.shape} of a, got {state.weights.shape}."
            )
        return MeanFieldState(state.a, s, check_weights(state.weights))

    def split(self, state: MeanFieldState) -> tuple[tuple[Array, ...], Array]:
        """Solver coordinates and constant `args` (the weights), also of a state with leading
        batch axes.

        The coordinates are `(a, x)` with `x` of shape `(k, m)` (coordinate-major, as
        `BorderedJacobian` lays out particles) and `s = sin(|x|) x / |x|`, and on the moment path
        also the residuals `r_alpha` on `interaction_indices`: `(a, x, r)` (docs: [the staircase
        solver][staircase-solver]). The residuals are integrated rather than recomputed from the
        particles because at tiny eps they are O(1) differences of sums up to 1e12 times larger,
        which no tolerance on the particles resolves.
        """
        s = jnp.moveaxis(overlap_matrix(self.problem, state.s), -1, 0)  # (k, ..., m)
        y = (state.a, jnp.moveaxis(ball_inverse(s), 0, -2))
        if self.uses_moments:
            indices = self.interaction_indices
            mu = jnp.sum(monomials(s, indices) * (state.weights * state.a), axis=-1)  # (N, ...)
            y = (*y, self.problem.residuals(jnp.moveaxis(mu, 0, -1), indices))
        return y, state.weights

    def merge(self, y: tuple[Array, ...], args: Array) -> MeanFieldState:
        """Inverse of `split` (works on `y` with leading batch or time axes; the residuals are
        dropped)."""
        a, x = y[:2]
        s = jnp.moveaxis(ball(jnp.moveaxis(x, -2, 0)), 0, -1)
        return MeanFieldState(a, state_overlaps(self.problem, s), jnp.broadcast_to(args, a.shape))

    def __call__(self, t, y: tuple[Array, ...], weights: Array) -> tuple[Array, ...]:
        """Time derivative of the solver coordinates: `dx/dt = a T g` and on the moment path
        `da/dt = A(s) / eps`, `g = grad A(s)`, and `dr_alpha/dt = -b_alpha sum_i p_i
        (s_i^alpha da_i/dt + a_i grad(s^alpha) . ds_i/dt)`, the chain rule of `r`'s definition
        (`= -M r`, see `jacobian`)."""
        chart = _Chart.at(y[1])
        if not self.uses_moments:
            a, _ = y
            da, g = self._dense_rates(a, chart.s, weights)
            return da, a * chart.tangent(g)
        a, _, r = y
        table = _MonomialTable.at(chart.s, self.interaction_indices, order=1)
        b = self.problem.factors(self.interaction_indices)
        w = b * r
        da = (w @ table.P) / self.problem.eps
        dx = a * chart.tangent(table.gradient(w))
        # dr/dt from the very velocities computed for the particles, so that the rounding of
        # A(s_i) (a cancellation where a particle sits at |s| = 1) enters a and r alike and the
        # stiff solve cancels it.
        ds = chart.ball_jvp(dx)
        dr = -b * (table.P @ (weights * da) + table.contract_gradient(weights * a * ds))
        return da, dx, dr

    def _dense_rates(self, a: Array, s: Array, weights: Array) -> tuple[Array, Array]:
        """`da/dt` and the bracket `g_i` (`(k, m)`) in `ds_i/dt = a_i (I - s_i s_i^T) g_i`, by
        the O(m^2) sums (`s` of shape `(k, m)`)."""
        p = self.problem
        q = s.T @ s
        pa = weights * a
        da = (p.V(s.T) - p.U(q) @ pa) / p.eps
        g = p.dV(s.T).T - s @ (p.dU(q) * pa[:, None])
        return da, g

    def rate(self, t, state: MeanFieldState) -> MeanFieldState:
        """`d state / dt` in `(a, s)` directly: through the chart it would differentiate
        `arcsin`, infinite where a particle has reached `|s| = 1` in rounding."""
        s = overlap_matrix(self.problem, state.s).T
        if self.uses_moments:
            indices = self.interaction_indices
            table = _MonomialTable.at(s, indices, order=1)
            w = self.problem.factors(indices) * self.problem.residuals(
                table.P @ (state.weights * state.a), indices
            )
            da, g = (w @ table.P) / self.problem.eps, table.gradient(w)
        else:
            da, g = self._dense_rates(state.a, s, state.weights)
        ds = state.a * (g - s * jnp.sum(s * g, axis=0))
        return MeanFieldState(da, state_overlaps(self.problem, ds.T), jnp.zeros_like(state.weights))

    def jacobian(self, t, y: tuple[Array, ...], weights: Array):
        """The Jacobian of the vector field: on the moment path a `BorderedJacobian`
        `[[D, B], [E, -M]]`, on the dense O(m^2) path a `DenseJacobian`.

        With `A(s) = sum_alpha w_alpha s^alpha` (`w = b r`), `g = grad A`, `H` its Hessian and
        `f_alpha = s^alpha A / eps + a^2 grad(s^alpha)^T (I - s s^T) g` (so that
        `dr_alpha/dt = -b_alpha sum_i p_i f_alpha(particle i)`):

        - `D`: `d(da)/dx = J g / eps`, `d(dx)/da = T g`, `d(dx)/dx = a (T H J + d(T g)/dx)`;
        - `B`: `d(da)/dr_alpha = b_alpha s^alpha / eps`, `d(dx)/dr_alpha = a b_alpha T
          grad(s^alpha)`;
        - `E`: `-b_alpha p_i` times `d f_alpha / da = 2 a grad(s^alpha)^T (I - s s^T) g` and
          `d f_alpha / dx = [(grad(s^alpha) A + s^alpha g) / eps + a^2 (Hess(s^alpha)
          (I - s s^T) g + ((I - s s^T) H - (s . g) I - s g^T)^T grad(s^alpha))]^T J`;
        - `M = diag(b) sum_i p_i [P P^T / eps + a^2 G^T (I - s s^T) G] diag(b)`, positive
          semidefinite (`P` the monomials, `G` their gradients).

        All closed-form, O(m N_K k^2 + m N_K^2).
        """
        if not self.uses_moments:
            return DenseJacobian.of(self, t, y, weights)
        a, x, r = y
        k = x.shape[0]
        chart = _Chart.at(x)
        s = chart.s
        indices = self.interaction_indices
        table = _MonomialTable.at(s, indices, order=2)
        b = self.problem.factors(indices)
        eps = self.problem.eps
        w = b * r
        A, g, H = w @ table.P, table.gradient(w), table.hessian(w)  # (m,), (k, m), (k, k, m)
        Tg = chart.tangent(g)
        Jg = chart.ball_jvp(g)
        THJ = _bmm(_bmm(chart.T, H), chart.J)
        D = jnp.concatenate(
            [
                jnp.concatenate([jnp.zeros((1, 1) + a.shape, a.dtype), Jg[None] / eps], axis=1),
                jnp.concatenate([Tg[:, None], a * (THJ + chart.d_tangent(g))], axis=1),
            ]
        )
        G = table.G  # (k, N, m)
        TG = _bmm(chart.T, G)
        B = b[:, None] * jnp.concatenate([table.P[None] / eps, a * TG])
        proj_g = g - s * jnp.sum(s * g, axis=0)  # (I - s s^T) g
        proj_H = H - s[:, None] * jnp.sum(s[:, None] * H, axis=0)[None]  # (I - s s^T) H
        sg = jnp.sum(s * g, axis=0)
        # d/ds of (I - s s^T) g, (k, k, m): (I - s s^T) H - (s . g) I - s g^T.
        d_proj_g = proj_H - sg * jnp.eye(k, dtype=s.dtype)[:, :, None] - s[:, None] * g[None]
        f_a = 2 * a * jnp.sum(G * proj_g[:, None], axis=0)
        f_s = (G * A + table.P * g[:, None]) / eps + a**2 * (
            jnp.sum(table.Hm * proj_g[None, :, None], axis=1)
            + _bmm(jnp.swapaxes(d_proj_g, 0, 1), G)
        )
        f_x = _bmm(jnp.swapaxes(chart.J, 0, 1), f_s)
        E = -(b[:, None] * weights) * jnp.concatenate([f_a[None], f_x])
        proj_G = G - s[:, None] * jnp.sum(s[:, None] * G, axis=0)[None]
        n = table.P.shape[0]
        G_rows = jnp.swapaxes(G, 0, 1).reshape(n, -1)  # (N, k m)
        proj_G_rows = jnp.swapaxes(proj_G * (weights * a**2), 0, 1).reshape(n, -1)
        M = (table.P * weights) @ table.P.T / eps + G_rows @ proj_G_rows.T
        return BorderedJacobian(D=D, B=B, E=E, M=b[:, None] * b[None, :] * M)

    def project(self, y: tuple[Array, ...], weights: Array) -> tuple[Array, ...]:
        """On the moment path, `a` moved so that the residuals of the particles equal the
        integrated ones (docs: [the staircase solver][staircase-solver]).

        `r(a, x) = c - b * P(s) (p a)` is linear in `a`; the correction `da` minimises
        `sum_i (da_i / (|a_i| + alpha))^2 + |(r(a + da, x) - r_int) / alpha|^2` (one
        `N_K x N_K` solve): the smallest relative change of the weights that removes the drift,
        leaving alone the part of the drift that only a large relative change could remove
        (early on, while the moments are below the residuals' accuracy). `alpha` = 1e-2 is the
        ratio `atol / rtol` of the default tolerances: with `(rtol |a_i| + atol)` and `atol` in
        place of `(|a_i| + alpha)` and `alpha` the solution is the same.
        """
        if not self.uses_moments:
            return y
        a, x, r = y
        indices = self.interaction_indices
        P = monomials(ball(x), indices)
        drift = r - self.problem.residuals(P @ (weights * a), indices)
        r_a = -(self.problem.factors(indices)[:, None] * weights) * P  # d r / d a
        w_a = (jnp.abs(a) + _PROJECTION_ALPHA) ** 2
        normal = (r_a * w_a) @ r_a.T + _PROJECTION_ALPHA**2 * jnp.eye(len(indices))
        scale = jnp.sqrt(jnp.diag(normal))
        # An N x N solve per step: unrolled elimination, as for the solver's small matrices
        # (lineax's Cholesky costs more to compile and to run than the rest of the projection).
        z = _small_matrix_inverse(normal / scale[:, None] / scale[None, :]) @ (drift / scale)
        z = z / scale
        return a + w_a * (z @ r_a), x, r

    def error_norm(self, y0, y1, y_error, weights, rtol, atol):
        """The size of a step's error (moment path; the dense path uses diffrax's measure,
        `AbstractModel.error_norm`): the RMS over all components of

        - the residuals' errors against `atol + rtol |phi|` (for each `alpha` with
          `b_alpha != 0`; the others never change): the residuals drive every `a_i` and make
          the risk;
        - the weights' errors `da_i / (atol + rtol |a_i|)` and the chart coordinates'
          `dx_i / (atol + rtol |x_i|)`, diffrax's measure.

        On the particles alone (diffrax's measure) the moments, sums up to 1e12 times larger
        than themselves at tiny eps, would be held to nothing (docs: [error
        control][error-control]).
        """
        if not self.uses_moments:
            return super().error_norm(y0, y1, y_error, weights, rtol, atol)
        particles = scaled_rms_error(y0[:2], y1[:2], y_error[:2], rtol, atol)
        b = self.problem.factors(self.interaction_indices)
        tol_r = atol + rtol * jnp.sqrt(self.problem.target.norm2)
        err_r = jnp.where(b != 0, y_error[2] / tol_r, 0.0)
        size = y0[0].shape[-1] * (1 + y0[1].shape[-2])
        return jnp.sqrt((size * particles**2 + jnp.sum(err_r**2)) / (size + b.shape[0]))

    def risk_rounding_error(self, state: MeanFieldState) -> Float[Array, ""]:
        """A bound on the rounding error of `risk(state)` (moment path; docs: [the staircase
        solver][staircase-solver]).

        Each residual `r_alpha = c_alpha - b_alpha sum_i p_i a_i s_i^alpha` is a sum whose
        rounding error is up to `d_alpha = u |b_alpha| sum_i p_i |a_i s_i^alpha|` (`u` =
        1.1e-16): O(1) moments of weights up to 1e12 carry errors of 1e-4 |s^alpha|. The risk
        `|r|^2 / 2` then errs by up to `sum_alpha |r_alpha| d_alpha + sum_alpha d_alpha^2 / 2`,
        plus `16 u` times itself. Along a solve the computed risk can rise by up to twice the
        largest bound, the true risk never.
        """
        if not self.uses_moments:
            raise ValueError(
                "risk_rounding_error needs the moment path (a polynomial activation, "
                "interaction 'auto' or 'moments')."
            )
        indices = self.interaction_indices
        s = overlap_matrix(self.problem, state.s).T
        gross = monomials(jnp.abs(s), indices) @ (state.weights * jnp.abs(state.a))
        d = _U * jnp.abs(self.problem.factors(indices)) * gross
        r = self.problem.residuals(monomials(s, indices) @ (state.weights * state.a), indices)
        return jnp.sum(jnp.abs(r) * d + 0.5 * d**2) + 16 * _U * self.risk(state)

    def moments(self, state: MeanFieldState) -> Float[Array, " N"]:
        """`mu_alpha = sum_i p_i a_i s_i^alpha` on the residual labels."""
        s = overlap_matrix(self.problem, state.s).T
        return monomials(s, self.problem.labels) @ (state.weights * state.a)

    def risk(self, state: MeanFieldState) -> Float[Array, ""]:
        """`R_mf = |phi|^2/2 - sum_i p_i a_i V(s_i) + sum_ij p_i p_j a_i a_j U(s_i . s_j)/2`.

        Plus `noise^2 / 2`. For a polynomial activation of degree `K` it is computed as
        `|r|^2 / 2 + (|phi|^2 - sum_alpha c_alpha^2) / 2` with the residuals `r_alpha` up to
        degree `n = max(K, deg phi)` (O(m N), non-negative by construction; the second term is
        the part of a non-polynomial target beyond its truncation); otherwise densely, O(m^2).
        """
        p = self.problem
        a, w = state.a, state.weights
        s = overlap_matrix(p, state.s)  # (m, k)
        if self.uses_moments:
            indices = graded_indices(p.k, max(p.activation.degree, p.target.degree))
            r = p.residuals(monomials(s.T, indices) @ (w * a), indices)
            beyond = p.target.norm2 - jnp.sum(p.target_coeffs(indices) ** 2)
            return 0.5 * (jnp.sum(r**2) + beyond + p.noise**2)
        pa = w * a
        return p.baseline_risk - jnp.sum(pa * p.V(s)) + 0.5 * pa @ p.U(s @ s.T) @ pa


class _MonomialTable(eqx.Module):
    """The monomials `s^alpha` of particles on a list of multi-indices, and their first (and
    second) derivatives in `s`, from one table of powers per direction."""

    P: Float[Array, "N m"]
    G: Float[Array, "k N m"] | None
    Hm: Float[Array, "k k N m"] | None

    @classmethod
    def at(cls, s: Float[Array, "k m"], indices, order: int) -> _MonomialTable:
        k = s.shape[0]
        table = np.asarray(indices, dtype=np.int64)
        n = int(table.max(initial=0)) + 1
        powers = [_powers(s, n)]  # (n, k, m): s_r^j
        for _ in range(order):
            powers.append(_d_ds(powers[-1]))  # j s^(j-1), then j (j-1) s^(j-2)
        F = [_select(p, table) for p in powers]  # (k, N, m): the power of s_r in s^alpha

        def product(factors: dict[int, Array]) -> Array:
            out = None
            for r in range(k):
                f = factors.get(r, F[0][r])
                out = f if out is None else out * f
            return out

        P = product({})
        G = jnp.stack([product({r: F[1][r]}) for r in range(k)]) if order >= 1 else None
        Hm = None
        if order >= 2:
            Hm = jnp.stack(
                [
                    jnp.stack(
                        [
                            product({r: F[2][r]} if r == q else {r: F[1][r], q: F[1][q]})
                            for q in range(k)
                        ]
                    )
                    for r in range(k)
                ]
            )
        return cls(P, G, Hm)

    def gradient(self, w: Float[Array, " N"]) -> Float[Array, "k m"]:
        """`grad_s sum_alpha w_alpha s^alpha` at each particle."""
        return jnp.sum(w[:, None] * self.G, axis=1)

    def hessian(self, w: Float[Array, " N"]) -> Float[Array, "k k m"]:
        """The Hessian of `sum_alpha w_alpha s^alpha` at each particle."""
        return jnp.sum(w[:, None] * self.Hm, axis=2)

    def contract_gradient(self, v: Float[Array, "k m"]) -> Float[Array, " N"]:
        """`sum_i grad(s_i^alpha) . v_i` for each multi-index."""
        return jnp.sum(self.G * v[:, None], axis=(0, 2))


class _Chart(eqx.Module):
    """The ball chart `s = sin(|x|) x / |x|` at particles `x` (`(k, m)`), its Jacobian
    `J = ds/dx`, the tangent map `T` (`J T = I - s s^T`) and what their derivatives need."""

    x: Float[Array, "k m"]
    s: Float[Array, "k m"]
    J: Float[Array, "k k m"]
    T: Float[Array, "k k m"]
    d_psi: Float[Array, " m"]
    phi: Float[Array, " m"]
    d_phi: Float[Array, " m"]

    @classmethod
    def at(cls, x: Float[Array, "k m"]) -> _Chart:
        if x.shape[0] == 1:
            s, c = _sin_cos(x)
            zero = jnp.zeros_like(x[0])
            return cls(x, s, c[None], c[None], zero, zero, zero)
        sinc, psi, phi, d_sinc, d_psi, d_phi = _radial(jnp.sum(x**2, axis=0))
        eye = jnp.eye(x.shape[0], dtype=x.dtype)[:, :, None]
        xx = x[:, None] * x[None, :]
        J = sinc * eye + 2 * d_sinc * xx
        T = psi * eye + phi * xx
        return cls(x, sinc * x, J, T, d_psi, phi, d_phi)

    def tangent(self, g: Float[Array, "k m"]) -> Float[Array, "k m"]:
        """`T g`: `dx/dt = a T g` for `ds/dt = a (I - s s^T) g`."""
        return jnp.sum(self.T * g[None], axis=1)

    def ball_jvp(self, v: Float[Array, "k m"]) -> Float[Array, "k m"]:
        """`J v = (ds/dx) v`."""
        return jnp.sum(self.J * v[None], axis=1)

    def d_tangent(self, g: Float[Array, "k m"]) -> Float[Array, "k k m"]:
        """`d(T g)/dx` at fixed `g`: `-s g` for `k = 1`, else `2 psi' g x^T + 2 phi' (x . g)
        x x^T + phi (x g^T + (x . g) I)` (`'` the derivative in `r^2`)."""
        x = self.x
        if x.shape[0] == 1:
            return -(self.s * g)[None]
        xg = jnp.sum(x * g, axis=0)
        eye = jnp.eye(x.shape[0], dtype=x.dtype)[:, :, None]
        return (
            2 * self.d_psi * g[:, None] * x[None]
            + 2 * self.d_phi * xg * x[:, None] * x[None]
            + self.phi * (x[:, None] * g[None] + xg * eye)
        )


def _bmm(x: Float[Array, "a b m"], y: Float[Array, "b c m"]) -> Float[Array, "a c m"]:
    """The product of each particle's small matrices: over `k <= 3` or so a fused elementwise
    product and sum, where XLA's batched dot loops over particles."""
    return jnp.sum(x[:, :, None] * y[None], axis=1)


def _safe(q: Array) -> Array:
    return jnp.where(q < _SERIES_BELOW, _SERIES_BELOW, q)


def _radial(q: Array) -> tuple[Array, ...]:
    """`sinc = sin(r) / r`, `psi = r / sin r`, `phi = (cos r - r / sin r) / r^2` as functions of
    `q = r^2`, and their derivatives in `q` (Taylor series near 0). sin and cos are evaluated
    once (`_sin_cos`)."""
    small = q < _SERIES_BELOW
    q_safe = _safe(q)
    r = jnp.sqrt(q_safe)
    sin, cos = _sin_cos(r)
    sinc = jnp.where(small, 1.0 - q / 6.0 + q**2 / 120.0 - q**3 / 5040.0, sin / r)
    psi_series = 1.0 + q / 6.0 + 7.0 * q**2 / 360.0 + 31.0 * q**3 / 15120.0
    psi = jnp.where(small, psi_series, r / sin)
    phi_series = -2.0 / 3.0 + q / 45.0 - 13.0 * q**2 / 3780.0 - q**3 / 5400.0
    phi = jnp.where(small, phi_series, (cos - psi) / q_safe)
    # d/dq = d/dr / (2 r).
    d_sinc_series = -1.0 / 6.0 + q / 60.0 - q**2 / 1680.0
    d_sinc = jnp.where(small, d_sinc_series, (r * cos - sin) / (2 * r * q_safe))
    d_psi_series = 1.0 / 6.0 + 7.0 * q / 180.0 + 31.0 * q**2 / 5040.0
    d_psi = jnp.where(small, d_psi_series, (sin - r * cos) / (2 * r * sin**2))
    d_phi_series = 1.0 / 45.0 - 13.0 * q / 1890.0 - q**2 / 1800.0
    d_phi = jnp.where(small, d_phi_series, (-sin / (2 * r) - d_psi - phi) / q_safe)
    return sinc, psi, phi, d_sinc, d_psi, d_phi


def _arcsinc(q: Array) -> Array:
    """`arcsin(rho) / rho` as a function of `q = rho^2` (`rho <= 1`)."""
    rho = jnp.sqrt(_safe(q))
    series = 1.0 + q / 6.0 + 3.0 * q**2 / 40.0 + 5.0 * q**3 / 112.0
    return jnp.where(q < _SERIES_BELOW, series, jnp.arcsin(jnp.minimum(rho, 1.0)) / rho)


def ball(x: Float[Array, "k ..."]) -> Float[Array, "k ..."]:
    """`s = sin(|x|) x / |x|`, coordinates on the leading axis (`sin(x)` for `k = 1`)."""
    if x.shape[0] == 1:
        return jnp.sin(x)
    return _radial(jnp.sum(x**2, axis=0))[0] * x


def ball_inverse(s: Float[Array, "k ..."]) -> Float[Array, "k ..."]:
    """`x = arcsin(|s|) s / |s|`, the inverse of `ball` on `|x| <= pi/2`."""
    if s.shape[0] == 1:
        return jnp.arcsin(s)
    return _arcsinc(jnp.sum(s**2, axis=0)) * s


def _d_ds(rows: Float[Array, "n ..."]) -> Float[Array, "n ..."]:
    """The `s`-derivative of a table whose row `j` is a derivative of `s^j`: row `j` becomes
    `j` times row `j - 1` (`s^j -> j s^(j-1) -> j (j-1) s^(j-2)`)."""
    j = jnp.arange(rows.shape[0], dtype=rows.dtype).reshape((-1,) + (1,) * (rows.ndim - 1))
    return jnp.pad(rows[:-1], ((1, 0),) + ((0, 0),) * (rows.ndim - 1)) * j


@jax.custom_jvp
def _sin_cos(
    theta: Float[Array, "*shape"],
) -> tuple[Float[Array, "*shape"], Float[Array, "*shape"]]:
    """`sin(theta)` and `cos(theta)`, each evaluated once (and their derivatives from them).

    XLA fuses an elementwise producer into every kernel that consumes it, transcendental ones
    included, and so evaluates sin and cos again in each kernel of a step that reads them; over
    many particles that is most of the step. A product with the identity ends the fusion (XLA
    does not fuse into a dot's operand) and leaves every value unchanged (`x * 1 + y * 0`; a
    zero may lose its sign).
    """
    sc = jnp.stack([jnp.sin(theta), jnp.cos(theta)])
    sc = jnp.tensordot(jnp.eye(2, dtype=sc.dtype), sc, axes=1)  # any shape of theta
    return sc[0], sc[1]


@_sin_cos.defjvp
def _sin_cos_jvp(primals, tangents):
    """`d sin = cos dtheta`, `d cos = -sin dtheta`, from the values evaluated once."""
    s, c = _sin_cos(*primals)
    (dtheta,) = tangents
    return (s, c), (c * dtheta, -s * dtheta)
