"""The mean-field ODE of a multi-index target on weighted particles `(a, s in R^k)`.

Docs: [the multi-index mean-field ODE][multi-index-mean-field-ode],
`eps da_i/dt = V(s_i) - sum_j p_j a_j U(s_i . s_j)` and
`ds_i/dt = a_i (I - s_i s_i^T) [grad V(s_i) - sum_j p_j a_j U'(s_i . s_j) s_j]`.

**Moments.** For an activation of degree `K`, with `b_alpha = sigma_|alpha| sqrt(|alpha|!/alpha!)`
and the residuals `r_alpha = c_alpha - b_alpha mu_alpha` (`|alpha| <= K`), both rates are those
of one polynomial `A(s) = sum_alpha b_alpha r_alpha s^alpha`: `eps da_i/dt = A(s_i)` and
`ds_i/dt = a_i (I - s_i s_i^T) grad A(s_i)`, at cost O(m N_K), `N_K = C(K + k, k)`.

**Coordinates on the ball.** `|s_i| = 1` is invariant and an implicit step can overshoot it.
The solver integrates `x_i in R^k` with `s = sin(|x|) x / |x|` (for `k = 1`, `s = sin(x)`: the
`theta` of `MeanFieldODE`), so every `s` lies in the closed ball whatever the step. Writing
`r = |x|`, `n = x / r`, `ds = cos(r) (n . dx) n + (sin(r) / r) (I - n n^T) dx`; with
`(I - s s^T) g` the radial part of `ds/dt` carries `cos^2 r` and the rate in `x` is

`dx/dt = a [cos(r) (n . g) n + (r / sin r) (I - n n^T) g] = a [psi g + phi (x . g) x]`,

`psi = r / sin r`, `phi = (cos r - r / sin r) / r^2`, both smooth functions of `r^2`
(series near `x = 0`, where every particle of the d = infinity limit starts). The radial rate
`a cos(r) (n . g)` vanishes on `r = pi / 2` (`|s| = 1`), so the ball `r < pi/2` is invariant.

**Jacobian.** Each particle's rates depend on its own `(a_i, x_i)` and on the `N_K` residuals,
which are linear in the moments: `J = D + B R` (`sst.ParticleJacobian`, blocks of `1 + k`
coordinates, rank `N_K`), solved by the Woodbury identity. `D` comes from `jax.jacfwd` of one
particle's rates (vmapped over particles), `B` in closed form (the rates are linear in `r`),
`R` from `jax.jacfwd` of one particle's weighted monomials: all O(m N_K k^2).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ._linear import DenseJacobian, ParticleJacobian
from ._multi_finite_dim import check_overlap_state
from ._multi_index import (
    AbstractMultiIndexModel,
    MultiIndexProblem,
    derivative_indices,
    graded_indices,
    monomials,
)
from ._validate import check_weights, float_array, particle_weights

# Below this |x|^2 the functions of r^2 use their Taylor series to q^3 (truncation error below
# 1e-17 relative; above it the closed form of phi loses at most 1e-12 relative to cancellation,
# on a term that is itself O(q) relative to the rate).
_SERIES_BELOW = 1e-4


def _safe(q: Array) -> Array:
    return jnp.where(q < _SERIES_BELOW, _SERIES_BELOW, q)


def _sinc(q: Array) -> Array:
    """`sin(r) / r` as a function of `q = r^2`."""
    r = jnp.sqrt(_safe(q))
    series = 1.0 - q / 6.0 + q**2 / 120.0 - q**3 / 5040.0
    return jnp.where(q < _SERIES_BELOW, series, jnp.sin(r) / r)


def _radial_factors(q: Array) -> tuple[Array, Array]:
    """`psi = r / sin r` and `phi = (cos r - r / sin r) / r^2`, as functions of `q = r^2`."""
    r = jnp.sqrt(_safe(q))
    psi_series = 1.0 + q / 6.0 + 7.0 * q**2 / 360.0 + 31.0 * q**3 / 15120.0
    psi = jnp.where(q < _SERIES_BELOW, psi_series, r / jnp.sin(r))
    phi_series = -2.0 / 3.0 + q / 45.0 - 13.0 * q**2 / 3780.0 - q**3 / 5400.0
    phi = jnp.where(q < _SERIES_BELOW, phi_series, (jnp.cos(r) - r / jnp.sin(r)) / _safe(q))
    return psi, phi


def _arcsinc(q: Array) -> Array:
    """`arcsin(rho) / rho` as a function of `q = rho^2` (`rho <= 1`)."""
    rho = jnp.sqrt(_safe(q))
    series = 1.0 + q / 6.0 + 3.0 * q**2 / 40.0 + 5.0 * q**3 / 112.0
    return jnp.where(q < _SERIES_BELOW, series, jnp.arcsin(jnp.minimum(rho, 1.0)) / rho)


def ball(x: Float[Array, "k ..."]) -> Float[Array, "k ..."]:
    """`s = sin(|x|) x / |x|`, coordinates on the leading axis (`sin(x)` for `k = 1`)."""
    if x.shape[0] == 1:
        return jnp.sin(x)
    return _sinc(jnp.sum(x**2, axis=0)) * x


def ball_inverse(s: Float[Array, "k ..."]) -> Float[Array, "k ..."]:
    """`x = arcsin(|s|) s / |s|`, the inverse of `ball` on `|x| <= pi/2`."""
    if s.shape[0] == 1:
        return jnp.arcsin(s)
    return _arcsinc(jnp.sum(s**2, axis=0)) * s


def _tangent_map(x: Array, g: Array) -> Array:
    """`dx/dt / a` for the bracket `g`: `cos(x) g` for `k = 1`, else `psi g + phi (x . g) x`."""
    if x.shape[0] == 1:
        return jnp.cos(x) * g
    psi, phi = _radial_factors(jnp.sum(x**2, axis=0))
    return psi * g + phi * jnp.sum(x * g, axis=0) * x


class MultiIndexMeanFieldState(eqx.Module):
    """Weighted particles of the multi-index mean-field ODE.

    **Fields:** `a` second-layer weights `(m,)`, `s` overlaps with the `k` target directions
    `(m, k)` (rows in the unit ball), `weights` particle weights `(m,)` (non-negative, summing
    to 1; default `1/m`).
    """

    a: Float[Array, " m"]
    s: Float[Array, "m k"]
    weights: Float[Array, " m"]

    def __init__(self, a, s, weights=None):
        self.a = float_array(a)
        self.s = float_array(s)
        self.weights = particle_weights(self.a, weights)


class MultiIndexMeanFieldODE(AbstractMultiIndexModel):
    """The mean-field ODE of weighted particles `(a_i, s_i in R^k)` for a multi-index target
    (docs: [its equations][multi-index-mean-field-ode], [the coordinates][ball-coordinates]).

    For a polynomial activation the interaction goes through the moments `mu_alpha` and costs
    O(m N_K) with a `ParticleJacobian`; otherwise (relu, erf) the dense O(m^2) sums with a
    `DenseJacobian`. `interaction="dense"` forces the O(m^2) path (a cross-check). For `k = 1`
    it is `sst.MeanFieldODE`, in the same solver coordinates.
    """

    problem: MultiIndexProblem
    interaction: str = eqx.field(static=True, default="auto")

    def __check_init__(self):
        if not isinstance(self.problem, MultiIndexProblem):
            raise ValueError(
                "MultiIndexMeanFieldODE needs an sst.MultiIndexProblem; for a single-index "
                "sst.Problem use sst.MeanFieldODE."
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
        """The multi-indices of degree `<= K` through which particles interact."""
        return graded_indices(self.problem.k, self.problem.activation.degree)

    def check_state(self, state: MultiIndexMeanFieldState) -> None:
        """Raise `ValueError` if `state` is not a valid set of weighted particles."""
        a, s, w = check_overlap_state(self, state, MultiIndexMeanFieldState)
        if w.shape != a.shape:
            raise ValueError(f"weights must have the shape {a.shape} of a, got {w.shape}.")
        check_weights(w)

    def split(self, state: MultiIndexMeanFieldState):
        """Solver coordinates `(a, x)` with `x` of shape `(k, m)` and `s = sin(|x|) x / |x|`
        (coordinate-major, as `ParticleJacobian` lays out particles), and `args` the weights."""
        x = jnp.moveaxis(ball_inverse(jnp.moveaxis(state.s, -1, 0)), 0, -2)
        return (state.a, x), state.weights

    def merge(self, y, args) -> MultiIndexMeanFieldState:
        """Inverse of `split` (works on `y` with leading batch or time axes)."""
        a, x = y
        s = jnp.moveaxis(ball(jnp.moveaxis(x, -2, 0)), 0, -1)
        return MultiIndexMeanFieldState(a, s, jnp.broadcast_to(args, a.shape))

    # ------------------------------------------------------------------------------- moments

    def _coefficients(self, a: Array, s: Array, weights: Array) -> tuple[Array, Array]:
        """The coefficients of `A(s) = sum_alpha w_alpha s^alpha`, `w = b r` on the interaction
        indices, and of its gradient on the indices one degree lower (`(k, N')`)."""
        indices = self.interaction_indices
        P = monomials(s, indices)
        r = self.problem.residuals(P @ (weights * a), indices)
        w = self.problem.factors(indices) * r
        return w, self._gradient_coefficients(w)

    def _gradient_coefficients(self, w: Array) -> Array:
        indices = self.interaction_indices
        lower = self._lower_indices
        source, factor = derivative_indices(indices, lower)
        return jnp.where(source >= 0, factor * w[np.maximum(source, 0)], 0.0)

    @property
    def _lower_indices(self):
        return graded_indices(self.problem.k, max(self.problem.activation.degree - 1, 0))

    def _particle_rates(self, a: Array, x: Array, w: Array, d: Array) -> tuple[Array, Array]:
        """The rates of particles `(a, x)` (`x` of shape `(k, ...)`) given the coefficients."""
        s = ball(x)
        da = jnp.tensordot(w, monomials(s, self.interaction_indices), axes=1) / self.problem.eps
        g = jnp.tensordot(d, monomials(s, self._lower_indices), axes=1)
        return da, a * _tangent_map(x, g)

    def _dense_rates(self, a: Array, x: Array, weights: Array) -> tuple[Array, Array]:
        p = self.problem
        s = ball(x).T  # (m, k)
        q = s @ s.T
        pa = weights * a
        da = (p.V(s) - p.U(q) @ pa) / p.eps
        g = p.dV(s) - (p.dU(q) * pa[None, :]) @ s  # (m, k)
        return da, a * _tangent_map(x, g.T)

    def __call__(self, t, y, weights):
        """Time derivative of the solver coordinates `(a, x)`."""
        a, x = y
        if not self.uses_moments:
            return self._dense_rates(a, x, weights)
        w, d = self._coefficients(a, ball(x), weights)
        return self._particle_rates(a, x, w, d)

    def jacobian(self, t, y, weights):
        """`ParticleJacobian` `J = D + B R` on the moment path (see the module docstring),
        `DenseJacobian` on the dense path."""
        if not self.uses_moments:
            return DenseJacobian.of(self, t, y, weights)
        a, x = y
        indices = self.interaction_indices
        b = self.problem.factors(indices)
        w, d = self._coefficients(a, ball(x), weights)

        def own(a_i, x_i):
            da, dx = self._particle_rates(a_i, x_i, w, d)
            return jnp.concatenate([da[None], dx])

        def weighted_monomials(a_i, x_i):
            return a_i * monomials(ball(x_i), indices)

        def per_particle(a_i, x_i):
            ja, jx = jax.jacfwd(own, argnums=(0, 1))(a_i, x_i)  # (p,), (p, k)
            D = jnp.concatenate([ja[:, None], jx], axis=1)  # (p, p)
            P = monomials(ball(x_i), indices)
            G = jax.jacfwd(lambda s: monomials(s, indices))(ball(x_i))  # (N, k): d s^alpha/d s
            TG = jax.vmap(lambda g: _tangent_map(x_i, g))(G)  # (N, k)
            B = jnp.concatenate([P[None] / self.problem.eps, a_i * TG.T], axis=0)  # (p, N)
            ma, mx = jax.jacfwd(weighted_monomials, argnums=(0, 1))(a_i, x_i)  # (N,), (N, k)
            R = jnp.concatenate([ma[None], mx.T], axis=0)  # (p, N)
            return D, B, R

        D, B, R = jax.vmap(per_particle, in_axes=(0, 1), out_axes=-1)(a, x)
        return ParticleJacobian(D=D, B=b[:, None] * B, R=-(b[:, None] * weights) * R)

    def moments(self, state: MultiIndexMeanFieldState) -> Float[Array, " N"]:
        """`mu_alpha = sum_i p_i a_i s_i^alpha` on the residual labels."""
        P = monomials(state.s.T, self.problem.labels)
        return P @ (state.weights * state.a)

    def risk(self, state: MultiIndexMeanFieldState) -> Float[Array, ""]:
        """`R_mf = |phi|^2/2 - sum_i p_i a_i V(s_i) + sum_ij p_i p_j a_i a_j U(s_i . s_j)/2`
        (+ noise^2/2): on the moment path `1/2 sum_alpha r_alpha^2` over `|alpha| <= max(K,
        deg phi)`, non-negative by construction; otherwise densely, O(m^2)."""
        p = self.problem
        a, s, w = state.a, state.s, state.weights
        if self.uses_moments:
            indices = graded_indices(p.k, max(p.activation.degree, p.target.degree))
            r = p.residuals(monomials(s.T, indices) @ (w * a), indices)
            return 0.5 * (jnp.sum(r**2) + p.noise**2)
        pa = w * a
        return p.baseline_risk - jnp.sum(pa * p.V(s)) + 0.5 * pa @ p.U(s @ s.T) @ pa
