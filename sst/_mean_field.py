"""The reduced mean-field ODE of weighted particles (docs: [the mean-field ODE][mean-field-ode])."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ._control import scaled_rms_error
from ._hermite import power_series, power_series_grad
from ._linear import BorderedJacobian, DenseJacobian, _gauss_jordan_inverse
from ._problem import AbstractProblemModel, Problem, _moments, _powers
from ._validate import check_particles, check_weights, float_array, particle_weights

# `project`: the ratio atol / rtol of the default tolerances (see there).
_PROJECTION_ALPHA = 1e-2
# Unit roundoff of float64: the relative rounding error of one operation.
_U = float(np.finfo(np.float64).eps) / 2


class MeanFieldState(eqx.Module):
    """Weighted particles of the reduced ODE (docs: [the mean-field ODE][mean-field-ode]).

    **Fields:** `a` second-layer weights, `s` overlaps with the target direction, `weights`
    particle weights `p_i` (non-negative, summing to 1); all of shape `(m,)`.
    """

    a: Float[Array, " m"]
    s: Float[Array, " m"]
    weights: Float[Array, " m"]

    def __init__(self, a, s, weights=None):
        self.a = float_array(a)
        self.s = float_array(s)
        self.weights = particle_weights(self.a, weights)


class MeanFieldODE(AbstractProblemModel):
    """The reduced mean-field ODE for weighted particles (docs: [the mean-field
    ODE][mean-field-ode]):

    `eps da_i/dt = V(s_i) - sum_j p_j a_j U(s_i s_j)`,
    `ds_i/dt = (1 - s_i^2) a_i [V'(s_i) - sum_j p_j a_j s_j U'(s_i s_j)]`.

    For a polynomial activation the interaction goes through the Hermite moments
    `m_k = sum_j p_j a_j s_j^k` and costs O(m K); otherwise the dense O(m^2) sums are used.
    `interaction="dense"` forces the O(m^2) path (a cross-check of the moment path).
    """

    problem: Problem
    interaction: str = eqx.field(static=True, default="auto")

    def __check_init__(self):
        if self.interaction not in ("auto", "moments", "dense"):
            raise ValueError(
                f"interaction must be 'auto', 'moments' or 'dense', got {self.interaction!r}."
            )
        if self.interaction == "moments" and not self.problem.activation.is_polynomial:
            raise ValueError(
                "interaction='moments' needs a polynomial activation (a finite Hermite series); "
                "use 'dense' or 'auto' for ReLU or erf."
            )

    def check_state(self, state: MeanFieldState) -> None:
        """Raise `ValueError` if `state` is not a valid set of weighted particles."""
        if not isinstance(state, MeanFieldState):
            raise ValueError(f"MeanFieldODE needs a MeanFieldState, got {type(state).__name__}.")
        a, s, w = (np.asarray(x) for x in (state.a, state.s, state.weights))
        if a.ndim != 1 or s.shape != a.shape or w.shape != a.shape:
            raise ValueError(
                "MeanFieldState needs a, s and weights of the same shape (m,); got "
                f"{a.shape}, {s.shape} and {w.shape}."
            )
        check_particles(a, s)
        check_weights(w)

    @property
    def uses_moments(self) -> bool:
        """Whether the O(m K) moment path is used."""
        if self.interaction == "auto":
            return self.problem.activation.is_polynomial
        return self.interaction == "moments"

    def split(self, state: MeanFieldState) -> tuple[tuple[Array, ...], Array]:
        """Solver coordinates and constant `args` (the weights).

        The coordinates are `(a, theta)` with `s = sin(theta)`, and on the moment path also the
        residuals `r_k = phi_k - sigma_k sum_i p_i a_i s_i^k` for `k` up to the activation's
        degree: `(a, theta, r)` (docs: [the staircase solver][staircase-solver]). The angle keeps
        every overlap inside [-1, 1] whatever the step: in `s` itself an implicit step can
        overshoot the invariant boundary `|s| = 1`, beyond which it is repelling. The residuals
        are integrated rather than recomputed from the particles because at tiny eps they are
        O(1) differences of sums up to 1e12 times larger, which no tolerance on the particles
        resolves.
        """
        y = (state.a, jnp.arcsin(state.s))
        if self.uses_moments:
            n = self.problem.activation.coeffs.shape[0]
            y = (*y, self.problem.residuals(_moments(state.weights, state.a, state.s, n)))
        return y, state.weights

    def merge(self, y: tuple[Array, ...], args: Array) -> MeanFieldState:
        """Inverse of `split` (works on batched `y` too; the residuals are dropped)."""
        a, theta = y[:2]
        return MeanFieldState(a, jnp.sin(theta), jnp.broadcast_to(args, a.shape))

    def _rates(self, a: Array, s: Array, weights: Array) -> tuple[Array, Array]:
        """`da/dt` and the bracket `g_i` in `ds_i/dt = (1 - s_i^2) a_i g_i`."""
        p = self.problem
        if self.uses_moments:
            n = p.activation.coeffs.shape[0]
            sr = p.activation.coeffs * p.residuals(_moments(weights, a, s, n))
            return power_series(sr, s) / p.eps, power_series_grad(sr, s)
        q = s[:, None] * s[None, :]
        pa = weights * a
        da = p.V(s) - p.U(q) @ pa
        bracket = p.dV(s) - p.dU(q) @ (pa * s)
        return da / p.eps, bracket

    def _residual_rate_matrix(self, a: Array, c: Array, weights: Array, powers: Array) -> Array:
        """`M = (sigma sigma^T) * (G / eps + H)` with `G_kl = sum_i p_i s_i^(k+l)` and
        `H_kl = k l sum_i p_i a_i^2 c_i^2 s_i^(k+l-2)`: `dr/dt = -M r` (positive semidefinite).
        `powers` are `s^j` for `j < 2n - 1`."""
        sigma = self.problem.activation.coeffs
        n = sigma.shape[0]
        mu, nu = powers @ weights, powers @ (weights * (a * c) ** 2)
        nu = jnp.concatenate([jnp.zeros(2, nu.dtype), nu])  # nu[j] of s^(j-2)
        # Hankel matrices from static slices (a gather is slow under vmap).
        G = jnp.stack([mu[k : k + n] for k in range(n)])
        k = jnp.arange(n, dtype=mu.dtype)
        H = (k[:, None] * k[None, :]) * jnp.stack([nu[k : k + n] for k in range(n)])
        return sigma[:, None] * sigma[None, :] * (G / self.problem.eps + H)

    def __call__(self, t, y: tuple[Array, ...], weights: Array) -> tuple[Array, ...]:
        """Time derivative of the solver coordinates: `dtheta/dt = cos(theta) a g`, and on the
        moment path `da/dt = A(s) / eps`, `g = A'(s)` with `A(s) = sum_k sigma_k r_k s^k`, and
        `dr_k/dt = -sigma_k sum_i p_i (s_i^k da_i/dt + k s_i^(k-1) a_i ds_i/dt)`, the chain rule of
        `r`'s definition (`= -M r`, `_residual_rate_matrix`)."""
        if not self.uses_moments:
            a, theta = y
            s, c = _sin_cos(theta)
            da, bracket = self._rates(a, s, weights)
            return da, c * a * bracket
        a, theta, r = y
        s, c = _sin_cos(theta)
        sigma = self.problem.activation.coeffs
        n = sigma.shape[0]
        powers = _powers(s, n)
        d_powers = _d_ds(powers)
        sr = sigma * r
        da, g = (sr @ powers) / self.problem.eps, sr @ d_powers
        # dr/dt from the very velocities computed for the particles, so that the rounding of
        # A(s_i) (a cancellation where a particle sits at |s| = 1) enters a and r alike and the
        # stiff solve cancels it.
        dr = -sigma * (powers @ (weights * da) + d_powers @ (weights * (a * c) ** 2 * g))
        return da, c * a * g, dr

    def rate(self, t, state: MeanFieldState) -> MeanFieldState:
        """`d state / dt` in `(a, s)` directly: through the angle it would differentiate
        `arcsin`, infinite where a particle has reached `|s| = 1` in rounding."""
        da, bracket = self._rates(state.a, state.s, state.weights)
        ds = (1.0 - state.s**2) * state.a * bracket
        return MeanFieldState(da, ds, jnp.zeros_like(state.weights))

    def jacobian(self, t, y: tuple[Array, ...], weights: Array):
        """The Jacobian of the vector field: for the moment path a `BorderedJacobian`
        (particles bordered by the residuals), for the dense O(m^2) path a `DenseJacobian`.

        With `s = sin(theta)`, `c = cos(theta)`, `A(s) = sum_k sigma_k r_k s^k` and `g = A'`:
        each particle's rates `da/dt = A(s) / eps`, `dtheta/dt = c a g(s)` depend on its own
        coordinates and on `r`; `dr_k/dt = -sigma_k sum_i p_i (s_i^k A(s_i) / eps +
        k s_i^(k-1) a_i^2 c_i^2 g(s_i))` on every particle and on `r`. All parts are
        closed-form and cost O(m K^2).
        """
        if not self.uses_moments:
            return DenseJacobian.of(self, t, y, weights)
        a, theta, r = y
        s, c = _sin_cos(theta)
        sigma = self.problem.activation.coeffs
        n = sigma.shape[0]
        k = jnp.arange(n, dtype=s.dtype)
        all_powers = _powers(s, 2 * n - 1)  # s^j for M
        powers = all_powers[:n]  # s^k, (n, m)
        d_powers = _d_ds(powers)  # k s^(k-1)
        dd_powers = _d_ds(d_powers)  # k (k-1) s^(k-2)
        sr = sigma * r
        A, g, dg = sr @ powers, sr @ d_powers, sr @ dd_powers
        eps = self.problem.eps
        D = jnp.stack(
            [
                jnp.stack([jnp.zeros_like(a), c * g / eps]),
                jnp.stack([c * g, a * (c**2 * dg - s * g)]),
            ]
        )
        B = sigma[:, None] * jnp.stack([powers / eps, (c * a) * d_powers])
        E_a = (2 * a * c**2 * g) * d_powers
        E_theta = c * (
            (d_powers * A + powers * g) / eps
            + a**2 * (c**2 * (dd_powers * g + d_powers * dg) - 2 * k[:, None] * powers * g)
        )
        E = -(sigma[:, None] * weights) * jnp.stack([E_a, E_theta])
        M = self._residual_rate_matrix(a, c, weights, all_powers)
        return BorderedJacobian(D=D, B=B, E=E, M=M)

    def project(self, y: tuple[Array, ...], weights: Array) -> tuple[Array, ...]:
        """On the moment path, `a` moved so that the residuals of the particles equal the
        integrated ones (docs: [the staircase solver][staircase-solver]).

        `r(a, theta) = phi - sigma * P(s) (p a)` is linear in `a`; the correction `da` minimises
        `sum_i (da_i / (|a_i| + alpha))^2 + |(r(a + da, theta) - r_int) / alpha|^2` (one
        `n x n` solve): the smallest relative change of the weights that removes the drift,
        leaving alone the part of the drift that only a large relative change could remove
        (early on, while the moments are below the residuals' accuracy). `alpha` = 1e-2 is the
        ratio `atol / rtol` of the default tolerances: with `(rtol |a_i| + atol)` and `atol` in
        place of `(|a_i| + alpha)` and `alpha` the solution is the same.
        """
        if not self.uses_moments:
            return y
        a, theta, r = y
        sigma = self.problem.activation.coeffs
        powers = _powers(jnp.sin(theta), sigma.shape[0])
        drift = r - self.problem.residuals(powers @ (weights * a))
        r_a = -(sigma[:, None] * weights) * powers  # d r / d a
        w_a = (jnp.abs(a) + _PROJECTION_ALPHA) ** 2
        normal = (r_a * w_a) @ r_a.T + _PROJECTION_ALPHA**2 * jnp.eye(sigma.shape[0])
        scale = jnp.sqrt(jnp.diag(normal))
        # An n x n solve per step: unrolled elimination, as for the solver's small matrices
        # (lineax's Cholesky costs more to compile and to run than the rest of the projection).
        z = _gauss_jordan_inverse(normal / scale[:, None] / scale[None, :]) @ (drift / scale)
        z = z / scale
        return a + w_a * (z @ r_a), theta, r

    def error_norm(self, y0, y1, y_error, weights, rtol, atol):
        """The size of a step's error (moment path; the dense path uses diffrax's measure,
        `AbstractModel.error_norm`): the RMS over all components of

        - the residuals' errors against `atol + rtol |phi|` (for each `k` with `sigma_k != 0`;
          the others never change): the residuals drive every `a_i` and make the risk;
        - the weights' errors `da_i / (atol + rtol |a_i|)` and the angles'
          `dtheta_i / (atol + rtol |theta_i|)`, diffrax's measure.

        On the particles alone (diffrax's measure) the moments, sums up to 1e12 times larger
        than themselves at tiny eps, would be held to nothing (docs: [error
        control][error-control]).
        """
        if not self.uses_moments:
            return super().error_norm(y0, y1, y_error, weights, rtol, atol)
        particles = scaled_rms_error(y0[:2], y1[:2], y_error[:2], rtol, atol)
        sigma = self.problem.activation.coeffs
        tol_r = atol + rtol * jnp.sqrt(self.problem.target.norm2)
        err_r = jnp.where(sigma != 0, y_error[2] / tol_r, 0.0)
        m, n = y0[0].shape[-1], sigma.shape[0]
        return jnp.sqrt((2 * m * particles**2 + jnp.sum(err_r**2)) / (2 * m + n))

    def risk_rounding_error(self, state: MeanFieldState) -> Float[Array, ""]:
        """A bound on the rounding error of `risk(state)` (moment path; docs: [the staircase
        solver][staircase-solver]).

        Each residual `r_k = phi_k - sigma_k sum_i p_i a_i s_i^k` is a sum whose rounding error
        is up to `d_k = u |sigma_k| sum_i p_i |a_i s_i^k|` (`u` = 1.1e-16): O(1) moments of
        weights up to 1e12 carry errors of 1e-4 |s|^k. The risk `|r|^2 / 2` then errs by up to
        `sum_k |r_k| d_k + sum_k d_k^2 / 2`, plus `16 u` times itself. Along a solve the
        computed risk can rise by up to twice the largest bound, the true risk never.
        """
        if not self.uses_moments:
            raise ValueError(
                "risk_rounding_error needs the moment path (a polynomial activation, "
                "interaction 'auto' or 'moments')."
            )
        sigma = self.problem.activation.coeffs
        n = sigma.shape[0]
        gross = _powers(jnp.abs(state.s), n) @ (state.weights * jnp.abs(state.a))
        d = _U * jnp.abs(sigma) * gross
        r = self.problem.residuals(_moments(state.weights, state.a, state.s, n))
        return jnp.sum(jnp.abs(r) * d + 0.5 * d**2) + 16 * _U * self.risk(state)

    def moments(self, state: MeanFieldState) -> Float[Array, " R"]:
        """`m_k = sum_i p_i a_i s_i^k` for `k` up to the target's degree."""
        return _moments(state.weights, state.a, state.s, len(self.problem.degrees))

    def risk(self, state: MeanFieldState) -> Float[Array, ""]:
        """`R_mf = |phi|^2/2 - sum_i p_i a_i V(s_i) + sum_ij p_i p_j a_i a_j U(s_i s_j)/2`.

        Plus `noise^2 / 2`. For a polynomial activation of degree `K` it is computed as
        `|r|^2 / 2 + (|phi|^2 - sum_{k<=n} phi_k^2) / 2` with the residuals `r_k` up to
        `n = max(K, deg phi)` (O(m K), non-negative by construction; the second term is the part
        of a non-polynomial target beyond its truncation); otherwise densely, O(m^2).
        """
        p = self.problem
        a, s, w = state.a, state.s, state.weights
        if self.uses_moments:
            n = max(p.activation.coeffs.shape[0], p.target.coeffs.shape[0])
            r = p.residuals(_moments(w, a, s, n))
            beyond = p.target.norm2 - jnp.sum(p.target.coeffs**2)
            return 0.5 * (jnp.sum(r**2) + beyond + p.noise**2)
        pa = w * a
        cross = jnp.sum(pa * p.V(s))
        self_term = pa @ p.U(s[:, None] * s[None, :]) @ pa
        return p.baseline_risk - cross + 0.5 * self_term


def _d_ds(rows: Float[Array, "n m"]) -> Float[Array, "n m"]:
    """The `s`-derivative of a table whose row `k` is the `j`-th derivative of `s^k`: row `k`
    becomes `k` times row `k - 1` (`s^k -> k s^(k-1) -> k (k-1) s^(k-2)`)."""
    k = jnp.arange(rows.shape[0], dtype=rows.dtype)
    return jnp.pad(rows[:-1], ((1, 0), (0, 0))) * k[:, None]


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
