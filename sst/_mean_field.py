"""The reduced mean-field ODE of weighted particles (docs: [the mean-field ODE][mean-field-ode])."""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ._hermite import power_series, power_series_grad
from ._linear import DenseJacobian, ParticleJacobian
from ._problem import AbstractProblemModel, Problem, _moments, _powers
from ._validate import check_particles

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
        self.a = jnp.asarray(a, dtype=float)
        self.s = jnp.asarray(s, dtype=float)
        m = self.a.shape[-1] if self.a.ndim else 1
        self.weights = (
            jnp.full(self.a.shape, 1.0 / m, dtype=float)
            if weights is None
            else jnp.asarray(weights, dtype=float)
        )


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
        if not np.all(np.isfinite(w)) or np.any(w < 0) or abs(w.sum() - 1.0) > 1e-10:
            raise ValueError(
                "Particle weights must be finite, non-negative and sum to 1 (got sum "
                f"{w.sum():.12g}, min {w.min():.3g}); normalise them with weights / weights.sum()."
            )

    @property
    def uses_moments(self) -> bool:
        """Whether the O(m K) moment path is used."""
        if self.interaction == "auto":
            return self.problem.activation.is_polynomial
        return self.interaction == "moments"

    def split(self, state: MeanFieldState) -> tuple[tuple[Array, Array], Array]:
        """Solver coordinates `(a, theta)` with `s = sin(theta)`, and constant `args` (weights).

        The angle keeps every overlap inside [-1, 1] whatever the step: in `s` itself an implicit
        step can overshoot the invariant boundary `|s| = 1`, beyond which it is repelling.
        """
        return (state.a, jnp.arcsin(state.s)), state.weights

    def merge(self, y: tuple[Array, Array], args: Array) -> MeanFieldState:
        """Inverse of `split` (works on batched `y` too)."""
        a, theta = y
        return MeanFieldState(a, jnp.sin(theta), jnp.broadcast_to(args, a.shape))

    def _particle_rates(self, a: Array, s: Array, r: Array) -> tuple[Array, Array]:
        """`da/dt` and the bracket `g` of each particle given the residuals (moment path).

        `eps da_i/dt = sum_k sigma_k s_i^k r_k` and `g_i = sum_k k sigma_k s_i^(k-1) r_k`.
        """
        sr = self.problem.activation.coeffs * r
        return power_series(sr, s) / self.problem.eps, power_series_grad(sr, s)

    def _rates(self, a: Array, s: Array, weights: Array) -> tuple[Array, Array]:
        """`da/dt` and the bracket `g_i` in `ds_i/dt = (1 - s_i^2) a_i g_i`."""
        if self.uses_moments:
            n = self.problem.activation.coeffs.shape[0]
            return self._particle_rates(a, s, self.problem.residuals(_moments(weights, a, s, n)))
        p = self.problem
        q = s[:, None] * s[None, :]
        pa = weights * a
        da = p.V(s) - p.U(q) @ pa
        bracket = p.dV(s) - p.dU(q) @ (pa * s)
        return da / p.eps, bracket

    def __call__(self, t, y: tuple[Array, Array], weights: Array) -> tuple[Array, Array]:
        """Time derivative of the solver coordinates `(a, theta)`: `dtheta/dt = cos(theta) a g`."""
        a, theta = y
        da, bracket = self._rates(a, jnp.sin(theta), weights)
        return da, jnp.cos(theta) * a * bracket

    def rate(self, t, state: MeanFieldState) -> MeanFieldState:
        """`d state / dt` in `(a, s)` directly: through the angle it would differentiate
        `arcsin`, infinite where a particle has reached `|s| = 1` in rounding."""
        da, bracket = self._rates(state.a, state.s, state.weights)
        ds = (1.0 - state.s**2) * state.a * bracket
        return MeanFieldState(da, ds, jnp.zeros_like(state.weights))

    def jacobian(self, t, y: tuple[Array, Array], weights: Array):
        """The Jacobian of the vector field: for the moment path a `ParticleJacobian`
        (block-diagonal plus rank K+1), for the dense O(m^2) path a `DenseJacobian`.

        Each particle's rate depends on its own `(a_i, theta_i)` and on the residuals `r`, which
        are linear in the moments: `J = D + B R`. With `s = sin(theta)`, `c = cos(theta)`,
        `A(s) = sum_k sigma_k r_k s^k` and `g = A'`: `da/dt = A(s) / eps` and
        `dtheta/dt = c a g(s)`, so the parts are closed-form and cost O(m K).
        """
        if not self.uses_moments:
            return DenseJacobian.of(self, t, y, weights)
        a, theta = y
        s, c = jnp.sin(theta), jnp.cos(theta)
        sigma = self.problem.activation.coeffs
        n = sigma.shape[0]
        k = jnp.arange(n, dtype=s.dtype)
        powers = _powers(s, n)  # s^k, (n, m)
        d_powers = jnp.pad(powers[:-1], ((1, 0), (0, 0))) * k[:, None]  # k s^(k-1)
        sr = sigma * self.problem.residuals(powers @ (weights * a))
        g = sr @ d_powers
        dg = power_series_grad(k[1:] * sr[1:], s)
        eps = self.problem.eps
        D = jnp.stack(
            [
                jnp.stack([jnp.zeros_like(a), c * g / eps]),
                jnp.stack([c * g, a * (c**2 * dg - s * g)]),
            ]
        )
        B = sigma[:, None] * jnp.stack([powers / eps, (c * a) * d_powers])
        R = -(sigma[:, None] * weights) * jnp.stack([powers, (a * c) * d_powers])
        return ParticleJacobian(D=D, B=B, R=R)

    def error_norm(self, y0, y1, y_error, weights, rtol, atol):
        """The size of a step's error in what the dynamics depends on (moment path; the dense
        path uses diffrax's measure, `AbstractModel.error_norm`).

        The root mean square of three parts, each the RMS of its errors scaled to their
        tolerances:

        - the residuals, which drive every `a_i` and make the risk: the step's error moves
          `r_k = phi_k - sigma_k m_k` by
          `dr_k = sigma_k (sum_i p_i s_i^k da_i + sum_i p_i a_i k s_i^(k-1) cos(theta_i) dtheta_i)`
          to first order, measured against `atol + rtol |phi| + u |sigma_k| sum_i p_i |a_i s_i^k|`
          for each `k` with `sigma_k != 0` (the last term is the rounding floor of `r_k`, which no
          step can beat; `u` = 1.1e-16);
        - the weights `a_i`, which set each overlap's speed (`dtheta_i/dt = cos(theta_i) a_i g_i`):
          `da_i / (atol + rtol |a_i|)`;
        - the angles: `dtheta_i / (atol + rtol |theta_i|)`.

        The last two are diffrax's measure. They alone allow moment errors up to
        `rtol sum_i p_i |a_i s_i^k|`, O(1) once the weights reach 1e8 at tiny eps while the moments
        stay O(1); the first part holds the moments to the tolerance, or to their rounding floor
        (docs: [error control][error-control]). The parts are weighted equally, so that the few
        residuals are not outvoted by many particles. Dropping the weights' part takes 1.8x fewer
        steps at eps = 1e-20 but leaves errors in `a` that do not change the moments
        uncontrolled: they never decay and shift the learning times by ~50 rtol (4e-6 at
        eps = 1e-20 for rtol 1e-8, against 6e-8 with it).
        """
        if not self.uses_moments:
            return super().error_norm(y0, y1, y_error, weights, rtol, atol)
        (a0, theta0), (a1, theta1), (err_a, err_theta) = y0, y1, y_error
        # A trial step into NaN is measured at its start, as diffrax does.
        a1 = jnp.where(jnp.isnan(a1), a0, a1)
        theta1 = jnp.where(jnp.isnan(theta1), theta0, theta1)
        a_scale = jnp.maximum(jnp.abs(a0), jnp.abs(a1))
        s, c = jnp.sin(theta1), jnp.cos(theta1)
        sigma = self.problem.activation.coeffs
        n = sigma.shape[0]
        k = jnp.arange(n, dtype=s.dtype)
        powers = _powers(s, n)
        d_powers = jnp.pad(powers[:-1], ((1, 0), (0, 0))) * k[:, None]
        dr = sigma * (powers @ (weights * err_a) + d_powers @ (weights * a1 * c * err_theta))
        floor = _U * jnp.abs(sigma) * (jnp.abs(powers) @ (weights * a_scale))
        tol_r = atol + rtol * jnp.sqrt(self.problem.target.norm2) + floor
        active = sigma != 0
        part_r = jnp.sum(jnp.where(active, dr / tol_r, 0.0) ** 2) / jnp.maximum(
            jnp.sum(active, dtype=s.dtype), 1.0
        )
        part_a = jnp.mean((err_a / (atol + rtol * a_scale)) ** 2)
        theta_scale = jnp.maximum(jnp.abs(theta0), jnp.abs(theta1))
        part_theta = jnp.mean((err_theta / (atol + rtol * theta_scale)) ** 2)
        return jnp.sqrt((part_r + part_a + part_theta) / 3)

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
