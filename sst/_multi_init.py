"""Initial conditions for multi-index targets: random networks in dimension `d` with `k` target
directions, and particles `s(0) = 0` for the d = infinity limit."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from ._init import quadrature_particles
from ._multi_finite_dim import MultiIndexFiniteDimState
from ._multi_mean_field import MultiIndexMeanFieldState

_LAWS = ("normal", "uniform", "rademacher")


class MultiIndexRandomInit(eqx.Module):
    """A network in dimension `d` and its exact order parameters for `k` target directions.

    **Fields:** `state` (the exact `MultiIndexFiniteDimState`), `W` the first-layer weights
    `(m, d)` with unit rows, `U` the target directions `(d, k)` with orthonormal columns.
    `state.s = W U` and `state.Q = W W^T`.
    """

    state: MultiIndexFiniteDimState
    W: Float[Array, "m d"]
    U: Float[Array, "d k"]

    @classmethod
    def from_weights(
        cls, a: Float[ArrayLike, " m"], W: Float[ArrayLike, "m d"], U: Float[ArrayLike, "d k"]
    ) -> MultiIndexRandomInit:
        """The network `(a, W)` with target directions `U` and its order parameters (e.g. to
        continue a training run from `traj.training.W`)."""
        a, W, U = (jnp.asarray(v, dtype=float) for v in (a, W, U))
        if U.ndim != 2 or W.ndim != 2 or U.shape[0] != W.shape[1]:
            raise ValueError(
                f"from_weights needs W of shape (m, d) and U of shape (d, k); got {W.shape} "
                f"and {U.shape}."
            )
        Q = W @ W.T
        Q = 0.5 * (Q + Q.T)
        Q = Q.at[jnp.diag_indices(W.shape[0])].set(1.0)
        return cls(MultiIndexFiniteDimState(a, W @ U, Q), W, U)

    def mean_field(self) -> MultiIndexMeanFieldState:
        """The same particles `(a, s)` with equal weights, for `MultiIndexMeanFieldODE` (its
        overlaps keep the `1/sqrt(d)` randomness of dimension `d`)."""
        return MultiIndexMeanFieldState(self.state.a, self.state.s)


def _second_layer(key: PRNGKeyArray, m: int, scale: float, law: str) -> Array:
    if law == "normal":
        return scale * jax.random.normal(key, (m,))
    if law == "uniform":
        return jax.random.uniform(key, (m,), minval=-scale, maxval=scale)
    if law == "rademacher":
        return scale * jax.random.rademacher(key, (m,)).astype(float)
    raise ValueError(f"a_law must be one of {list(_LAWS)}, got {law!r}.")


def random_init_multi_index(
    key: PRNGKeyArray, m: int, d: int, k: int, a_scale: float = 1.0, a_law: str = "normal"
) -> MultiIndexRandomInit:
    """Random unit first-layer weights in dimension `d`, target directions `U = [e_1 .. e_k]`,
    and random second-layer weights (`a_law` and `a_scale` as in `sst.random_init`).

    The overlaps `s_ir = <w_i, u_r>` are of order `1/sqrt(d)`.
    """
    if not all(isinstance(v, int) for v in (m, d, k)) or m < 1 or k < 1 or d < k + 1:
        raise ValueError(
            f"random_init_multi_index needs integers m >= 1, k >= 1 and d > k; got m={m}, "
            f"d={d}, k={k}."
        )
    kw, ka = jax.random.split(key)
    W = jax.random.normal(kw, (m, d))
    W = W / jnp.linalg.norm(W, axis=1, keepdims=True)
    U = jnp.eye(d, k)
    return MultiIndexRandomInit.from_weights(_second_layer(ka, m, a_scale, a_law), W, U)


def multi_index_particles(
    m: int,
    k: int,
    law: str = "uniform",
    scale: float = 1.0,
    mean: float = 0.0,
    key: PRNGKeyArray | None = None,
) -> MultiIndexMeanFieldState:
    """Particles for the d = infinity limit: `s(0) = 0` in `R^k`, the law of `a(0)` discretised
    by quadrature (`key=None`: Gauss-Hermite for `"normal"`, Gauss-Legendre for `"uniform"` on
    `[mean - scale, mean + scale]`, atoms for `"rademacher"`, as `sst.quadrature_particles`) or
    sampled (`key` given: `m` draws with weights `1/m`)."""
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer number of directions, got {k!r}.")
    if key is None:
        single = quadrature_particles(m, law, scale, mean)
        return MultiIndexMeanFieldState(single.a, np.zeros((m, k)), single.weights)
    if not isinstance(m, int) or m < 1:
        raise ValueError(f"m must be a positive integer number of particles, got {m!r}.")
    if law not in _LAWS:
        raise ValueError(f"law must be one of {list(_LAWS)}, got {law!r}.")
    a = mean + _second_layer(key, m, scale, law)
    return MultiIndexMeanFieldState(a, np.zeros((m, k)))
