"""What the tests share: the standard problems, particles, save grids and two small models
defined outside sst.

Every distinct shape or static setting (number of particles, number of save times, tolerances,
solver) compiles the solve anew (several seconds each), so the tests reuse these few:

- mean field: `M` quadrature particles of the cubic problem on the grid `TS`;
- finite dimension and training: `random_network()` (`FD_M` neurons in dimension `D`) of
  `small_problem()` on `TS` or `TRAIN_TS`;
- stiff solves across eps: `STIFF_TS` and `REFERENCE_TS` (same shape), with references by
  `sst.WithDenseJacobian` at `REFERENCE_TOLERANCES`.

Nothing here builds an sst object at import time (a subprocess imports this module with float64
off, tests/test_validate.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

import sst


def log_grid(t_min: float, t_max: float, n: int) -> np.ndarray:
    """`t = 0` followed by `n` log-spaced save times from `t_min` to `t_max` (float64)."""
    return np.concatenate([[0.0], np.geomspace(t_min, t_max, n)])


#: The standard save grid: 41 times, 0 and 1e-4 ... 10.
TS = log_grid(1e-4, 10.0, 40)
#: Save grid of the stiff solves across eps (down to eps = 1e-12), 65 times up to t = 100.
STIFF_TS = log_grid(1e-14, 1e2, 64)
#: Save grid of the tight reference solves: the shape of STIFF_TS (so the default solves on
#: both share a compilation), up to t = 1 (beyond, 1e-11 is below what the late phase allows).
REFERENCE_TS = log_grid(1e-14, 1.0, 64)
#: Tolerances of those references: 1000 times tighter than the default.
REFERENCE_TOLERANCES = dict(rtol=1e-11, atol=1e-13)
#: Record grid of the training runs, uniform in t.
TRAIN_TS = np.linspace(0.0, 1.0, 5)

#: Options of the reference solves of FiniteDimODE (non-stiff at eps = 0.1: Dopri8, 1e-12).
FD_REFERENCE = dict(solver=dfx.Dopri8(), rtol=1e-12, atol=1e-12)

#: The standard number of mean-field particles.
M = 8
#: Neurons and input dimension of the standard finite-dimensional network.
FD_M, D = 4, 8

CUBIC_TARGET = (0.5, 1.0, 1.0, 1.0)  # phi = h_0/2 + h_1 + h_2 + h_3
CUBIC_ACTIVATION = (1.0, 1.0, 1.0, 1.0)  # sigma = h_0 + h_1 + h_2 + h_3
SMALL_TARGET = (0.0, 1.0, 0.5, 0.5)
SMALL_ACTIVATION = (0.2, 1.0, 0.5, 0.5)


def cubic_problem(eps: float = 1e-2, noise: float = 0.0) -> sst.Problem:
    """The cubic problem: target [0.5, 1, 1, 1], activation [1, 1, 1, 1] (every degree to 3)."""
    return sst.Problem(sst.Hermite(CUBIC_TARGET), sst.Hermite(CUBIC_ACTIVATION), eps, noise)


def small_problem(eps: float = 0.1, noise: float = 0.0) -> sst.Problem:
    """The finite-dimensional and training problem: no degree 0, a small activation offset.

    eps = 0.1 keeps the explicit a-step `eta U(1) / eps` of training small."""
    return sst.Problem(sst.Hermite(SMALL_TARGET), sst.Hermite(SMALL_ACTIVATION), eps, noise)


def particles(m: int = M, law: str = "normal", scale: float = 1.0) -> sst.MeanFieldState:
    """Quadrature particles (s = 0) of the law of a(0)."""
    return sst.quadrature_particles(m, law, scale=scale)


def random_network(m: int = FD_M, d: int = D, seed: int = 0) -> sst.RandomInit:
    """A random network of m neurons in dimension d."""
    return sst.random_init(jax.random.key(seed), m, d)


def geometry(k: int, m: int, d: int = 12, seed: int = 0, common: float = 0.0):
    """Random second-layer weights `a` `(m,)`, unit rows `W` `(m, d)` and orthonormal directions
    `U` `(d, k)`; `common > 0` adds a shared random row before normalising (overlaps
    `Q_ij` of about `common^2 / (1 + common^2)`)."""
    rng = np.random.default_rng(seed)
    U = np.linalg.qr(rng.normal(size=(d, k)))[0]
    W = rng.normal(size=(m, d))
    a = rng.normal(size=m) * 1.5
    if common:
        W = W + common * rng.normal(size=d)
    return a, W / np.linalg.norm(W, axis=1, keepdims=True), U


def random_particles(m: int, seed: int = 0, s_max: float = 0.99) -> sst.MeanFieldState:
    """Weighted particles with random a, s in [-s_max, s_max] and random positive weights
    (numpy's generator: no JAX random kernels to compile for each size)."""
    rng = np.random.default_rng(seed)
    w = rng.uniform(0.1, 1.0, m)
    return sst.MeanFieldState(
        3.0 * rng.standard_normal(m), rng.uniform(-s_max, s_max, m), w / w.sum()
    )


def member(tree, i: int):
    """Member i of a batched pytree."""
    return jax.tree_util.tree_map(lambda x: x[i], tree)


def max_abs(x, y) -> float:
    return float(np.max(np.abs(np.asarray(x) - np.asarray(y))))


def synthetic_trajectory(
    ts,
    residuals,
    risk=None,
    *,
    ys: Any = None,
    valid=None,
    result: sst.RESULTS = sst.RESULTS.successful,
    rtol: float = 1e-8,
    atol: float = 1e-10,
) -> sst.Trajectory:
    """A hand-made mean-field `Trajectory` with known residuals (risk |r|^2 / 2 by default)."""
    ts = jnp.asarray(ts, dtype=float)
    residuals = jnp.asarray(residuals, dtype=float)
    risk = 0.5 * jnp.sum(residuals**2, axis=1) if risk is None else jnp.asarray(risk, dtype=float)
    if ys is None:
        zeros = jnp.zeros((ts.shape[0], 1))
        ys = sst.MeanFieldState(zeros, zeros, jnp.ones_like(zeros))
    valid = jnp.ones(ts.shape, bool) if valid is None else jnp.asarray(valid)
    zero = jnp.asarray(0)
    return sst.Trajectory(
        ts=ts,
        ys=ys,
        risk=risk,
        residuals=residuals,
        valid=valid,
        result=result,
        stats={"num_steps": zero, "num_accepted_steps": zero, "num_rejected_steps": zero},
        residual_labels=tuple(range(residuals.shape[1])),
        rtol=rtol,
        atol=atol,
    )


class Point(eqx.Module):
    """The state of `Relaxation`: a point `x` of R^n."""

    x: Float[Array, " n"]


class Relaxation(sst.AbstractModel):
    """A model defined outside sst: linear relaxation `eps dx/dt = -decay (x - target)`,
    elementwise, with the closed form `x(t) = target + (x0 - target) exp(-decay t / eps)`.

    Its risk is `|x - target|^2 / 2`, its residuals `target - x`, its Jacobian dense
    (`sst.DenseJacobian.of`), its batchable parameters `eps` and `target`.
    """

    decay: Float[Array, " n"]
    target: Float[Array, " n"]
    epsilon: Float[Array, ""]

    def __init__(self, decay, target, eps):
        self.decay = jnp.asarray(decay, dtype=float)
        self.target = jnp.asarray(target, dtype=float)
        self.epsilon = jnp.asarray(eps, dtype=float)

    def __check_init__(self):
        if not isinstance(self.epsilon, jax.core.Tracer) and not float(self.epsilon) > 0:
            raise ValueError(f"Relaxation needs eps > 0, got {self.epsilon}.")

    def split(self, state: Point):
        return state.x, None

    def merge(self, y, args) -> Point:
        return Point(y)

    def __call__(self, t, y, args):
        return -self.decay * (y - self.target) / self.epsilon

    def jacobian(self, t, y, args):
        return sst.DenseJacobian.of(self, t, y, args)

    def risk(self, state: Point):
        return 0.5 * jnp.sum((state.x - self.target) ** 2)

    def residuals(self, state: Point):
        return self.target - state.x

    @property
    def residual_labels(self):
        return tuple(f"x{i}" for i in range(self.target.shape[-1]))

    def check_state(self, state: Point) -> Point:
        if not isinstance(state, Point) or np.shape(state.x) != self.target.shape:
            raise ValueError(f"Relaxation needs a Point of shape {self.target.shape}.")
        traced = isinstance(state.x, jax.core.Tracer)
        if not traced and not np.all(np.isfinite(np.asarray(state.x))):
            raise ValueError("Relaxation needs a finite starting point.")
        return state

    @property
    def eps(self):
        return self.epsilon

    def parameters(self):
        return {"eps": self.epsilon, "target": self.target}

    def with_parameters(self, **values):
        unknown = set(values) - {"eps", "target"}
        if unknown:
            raise ValueError(f"Relaxation has no parameter {sorted(unknown)[0]!r}.")
        return Relaxation(
            self.decay, values.get("target", self.target), values.get("eps", self.epsilon)
        )

    def exact(self, x0, t):
        """The closed-form solution from `x0` at times `t` `(T,)`: shape `(T, n)`."""
        t = jnp.asarray(t, dtype=float)[:, None]
        return self.target + (jnp.asarray(x0) - self.target) * jnp.exp(-self.decay * t / self.eps)


class FieldModel(sst.AbstractModel):
    """Any vector field `field(t, y, args)` on an array `y` as an sst model, for the solver
    tests (dense Jacobian; risk `|y|^2 / 2`, residuals `y`, no parameters but eps = 1)."""

    field: Callable = eqx.field(static=True)

    def split(self, state):
        return state, None

    def merge(self, y, args):
        return y

    def __call__(self, t, y, args):
        return self.field(t, y, args)

    def jacobian(self, t, y, args):
        return sst.DenseJacobian.of(self, t, y, args)

    def risk(self, state):
        return 0.5 * jnp.sum(state**2)

    def residuals(self, state):
        return state

    @property
    def residual_labels(self):
        return ()

    def check_state(self, state):
        return state

    @property
    def eps(self):
        return jnp.asarray(1.0)

    def parameters(self):
        return {"eps": self.eps}

    def with_parameters(self, **values):
        return self
