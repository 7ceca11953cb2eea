"""Initial conditions: quadrature or given particles for the mean-field ODE, random networks
in dimension `d` for the finite-dimensional ODE and for training."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from ._finite_dim import FiniteDimState
from ._mean_field import MeanFieldState
from ._validate import check_count, check_key


def quadrature_particles(
    m: int, law: str = "normal", scale: float = 1.0, mean: float = 0.0, k: int | None = None
) -> MeanFieldState:
    """Deterministic particles discretising the law of `a(0)`, `s(0) = 0` (docs:
    [the mean-field ODE][mean-field-ode]).

    **Arguments:**

    - `m`: number of particles.
    - `law`: `"normal"` (Gauss-Hermite nodes of N(mean, scale^2)), `"uniform"` (Gauss-Legendre
      nodes on [mean - scale, mean + scale]) or `"rademacher"` (mean +- scale with weight 1/2;
      `m` must be even, the two atoms are split into m/2 equal particles each).
    - `k`: `None` for overlaps of shape `(m,)` (an `sst.Hermite` target), or the number of
      directions of an `sst.Target` (overlaps `(m, k)`).

    **Returns:** a `MeanFieldState` whose weights are the quadrature weights.
    """
    m = check_count("m (the number of particles)", m)
    if not (np.isfinite(scale) and scale > 0 and np.isfinite(mean)):
        raise ValueError(f"scale must be finite and positive and mean finite, got {scale}, {mean}.")
    if law == "normal":
        x, w = np.polynomial.hermite_e.hermegauss(m)
        w = w / w.sum()
    elif law == "uniform":
        x, w = np.polynomial.legendre.leggauss(m)
        w = w / 2.0
    elif law == "rademacher":
        if m % 2:
            raise ValueError(f"law='rademacher' needs an even number of particles, got m={m}.")
        x = np.repeat([-1.0, 1.0], m // 2)
        w = np.full(m, 1.0 / m)
    else:
        raise ValueError(f"law must be 'normal', 'uniform' or 'rademacher', got {law!r}.")
    return MeanFieldState(mean + scale * x, np.zeros(_overlap_shape(m, k)), w)


def particles_from_law(
    nodes: Float[ArrayLike, " m"], weights: Float[ArrayLike, " m"], k: int | None = None
) -> MeanFieldState:
    """Particles at given nodes `a(0)` with given weights and `s(0) = 0` (`k` as in
    `quadrature_particles`)."""
    nodes = np.asarray(nodes, dtype=float)
    return MeanFieldState(nodes, np.zeros(_overlap_shape(nodes.shape[0], k)), weights)


def _overlap_shape(m: int, k: int | None) -> tuple[int, ...]:
    if k is None:
        return (m,)
    return (m, check_count("k (the number of target directions)", k))


class RandomInit(eqx.Module):
    """A random initialisation of the network in dimension `d` and its order parameters.

    **Fields:** `state` (the exact `FiniteDimState`), `W` the first-layer weights `(m, d)` with
    unit rows, `U` the target directions `(d, k)` with orthonormal columns. `state.s = W U`
    (`(m,)` for a single direction given as a vector `u`) and `state.Q = W W^T`.
    """

    state: FiniteDimState
    W: Float[Array, "m d"]
    U: Float[Array, "d k"]

    @classmethod
    def from_weights(
        cls, a: Float[ArrayLike, " m"], W: Float[ArrayLike, "m d"], U: Float[ArrayLike, " d *k"]
    ) -> RandomInit:
        """The network `(a, W)` with target directions `U` and its exact order parameters (e.g.
        to continue a training run from `traj.training.W`). `U` of shape `(d,)` is the single
        direction of an `sst.Hermite` target (overlaps `(m,)`), `(d, k)` the directions of an
        `sst.Target` (overlaps `(m, k)`)."""
        a, W, U = (jnp.asarray(v, dtype=float) for v in (a, W, U))
        if W.ndim != 2 or U.ndim not in (1, 2) or U.shape[0] != W.shape[1]:
            raise ValueError(
                f"from_weights needs W of shape (m, d) and U of shape (d,) or (d, k); got "
                f"{W.shape} and {U.shape}."
            )
        Q = W @ W.T
        Q = 0.5 * (Q + Q.T)
        Q = Q.at[jnp.diag_indices(W.shape[0])].set(1.0)
        return cls(FiniteDimState(a, W @ U, Q), W, U.reshape(U.shape[0], -1))

    def mean_field(self) -> MeanFieldState:
        """The same particles `(a, s)` with equal weights, for `MeanFieldODE` (their overlaps
        keep the `1/sqrt(d)` randomness of dimension `d`)."""
        return MeanFieldState(self.state.a, self.state.s)


def random_init(
    key: PRNGKeyArray,
    m: int,
    d: int,
    a_scale: float = 1.0,
    a_law: str = "normal",
    k: int | None = None,
) -> RandomInit:
    """Random unit first-layer weights in dimension `d` and random second-layer weights.

    `w_i` uniform on the sphere, target directions `U = [e_1 .. e_k]` (`k = None`: the single
    direction `e_1` of an `sst.Hermite` target, overlaps of shape `(m,)`); `a_i` i.i.d. normal
    with standard deviation `a_scale` (`a_law="normal"`), uniform on `[-a_scale, a_scale]`
    (`"uniform"`) or `+-a_scale` (`"rademacher"`). Overlaps are of order `1/sqrt(d)` (docs: [the
    finite-dimensional ODE][finite-dimensional-ode]).
    """
    check_key(key)
    m, d = check_count("m (the number of neurons)", m), check_count("d (the dimension)", d, 2)
    directions = 1 if k is None else check_count("k (the number of target directions)", k)
    if d <= directions:
        raise ValueError(f"d must exceed the number of directions k={directions}; got d={d}.")
    if not (np.isfinite(a_scale) and a_scale > 0):
        raise ValueError(f"a_scale must be finite and positive, got {a_scale!r}.")
    kw, ka = jax.random.split(key)
    W = jax.random.normal(kw, (m, d))
    W = W / jnp.linalg.norm(W, axis=1, keepdims=True)
    U = jnp.eye(d, directions)
    if a_law == "normal":
        a = a_scale * jax.random.normal(ka, (m,))
    elif a_law == "uniform":
        a = jax.random.uniform(ka, (m,), minval=-a_scale, maxval=a_scale)
    elif a_law == "rademacher":
        a = a_scale * jax.random.rademacher(ka, (m,)).astype(float)
    else:
        raise ValueError(f"a_law must be 'normal', 'uniform' or 'rademacher', got {a_law!r}.")
    return RandomInit.from_weights(a, W, U[:, 0] if k is None else U)
