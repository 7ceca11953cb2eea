"""Particle simulations of the two-layer network itself (THEORY.md sections 3 and 7).

Three ways to train the network `f(x) = (1/m) sum_i a_i sigma(<w_i, x>)`, `|w_i| = 1`, all in the
time scaling of THEORY.md section 3 (a step of size `eta` advances time by `eta`; the second
layer moves `1/eps` times faster; first-layer steps are projected on the sphere's tangent space
and the rows renormalised):

- `population_gd`: gradient descent on the exact population risk (explicit Euler on the flow
  whose order parameters `FiniteDimODE` integrates exactly);
- `online_sgd`: one fresh Gaussian batch per step;
- `full_batch_gd`: gradient descent on the empirical risk of `n` fixed samples.

Each starts from a given `(a, W)`, so that it shares its initial point with `FiniteDimODE`
(`sst.random_init` gives both), and records on a time grid the order parameters `s = W u`,
`Q = W W^T`, the second-layer weights and the population risk, computed exactly from the order
parameters by `FiniteDimODE.risk`. Memory is O(m d + B d): nothing of size d x d is formed.
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, PRNGKeyArray
from tqdm import tqdm

from .odes import FiniteDimODE, FiniteDimState, Problem
from .solve import check_times


class ParticleRun(eqx.Module):
    """A particle simulation recorded on a time grid; fields mirror `sst.Trajectory`.

    **Fields:**

    - `ts`: record times `(T,)`, each a whole number of steps of size `eta` after `ts[0]`.
    - `a`, `s`: second-layer weights and overlaps `<u*, w_i>`, `(T, m)`; `Q`: overlap matrices
      `W W^T`, `(T, m, m)`; `weights`: particle weights `1/m`, `(m,)`.
    - `risk`: exact population risk of the recorded network `(T,)` (THEORY.md section 3).
    - `residuals`: Hermite residuals `r_k = phi_k - sigma_k m_k`, `(T, R)`.
    - `train_risk`: empirical risk on the training samples `(T,)` for `full_batch_gd`, else `None`.
    - `valid`: `(T,)` mask, `False` where the run has diverged (non-finite risk).
    - `W`: the first-layer weights at the last record time `(m, d)`, to continue the run from.
    - `eta`: the step size; `batch`: samples per step (0 for population gradient descent).
    """

    ts: Float[Array, " T"]
    a: Float[Array, "T m"]
    s: Float[Array, "T m"]
    Q: Float[Array, "T m m"]
    weights: Float[Array, " m"]
    risk: Float[Array, " T"]
    residuals: Float[Array, "T R"]
    train_risk: Float[Array, " T"] | None
    valid: Bool[Array, " T"]
    W: Float[Array, "m d"]
    eta: float = eqx.field(static=True)
    batch: int = eqx.field(static=True)

    def state(self, index: int) -> FiniteDimState:
        """The order parameters recorded at `ts[index]`."""
        return FiniteDimState(self.a[index], self.s[index], self.Q[index])


def network(
    activation, a: Float[Array, " m"], W: Float[Array, "m d"], x: Float[Array, "B d"]
) -> Float[Array, " B"]:
    """The network `f(x) = (1/m) sum_i a_i sigma(<w_i, x>)` on a batch of inputs."""
    return activation(x @ W.T) @ a / a.shape[0]


def batch_directions(
    problem: Problem,
    a: Float[Array, " m"],
    W: Float[Array, "m d"],
    x: Float[Array, "B d"],
    y: Float[Array, " B"],
) -> tuple[Float[Array, " m"], Float[Array, "m d"]]:
    """Descent directions `(-m dL/da, -m dL/dW)` of the batch-mean loss `L = mean (y - f)^2 / 2`.

    Written by hand (no autodiff) so that a step costs two `(B, m) x (m, d)` products:
    `-m dL/da_i = mean_b e_b sigma(z_bi)` and `-m dL/dw_i = a_i mean_b e_b sigma'(z_bi) x_b`, with
    `e = y - f(x)` and `z = x W^T`. The factor `m` is the mean-field time scaling of THEORY.md
    section 3; the first-layer direction is not yet projected on the sphere.
    """
    z = x @ W.T
    # Cast back: the Hermite helpers may promote to float64 under x64.
    act = problem.activation(z).astype(z.dtype)
    e = y - act @ a / a.shape[0]
    n = x.shape[0]
    da = act.T @ e / n
    dW = a[:, None] * ((problem.activation.derivative(z).astype(z.dtype) * e[:, None]).T @ x) / n
    return da, dW


def _retract(W: Array, dW: Array, eta) -> Array:
    # Project on the tangent space of each row's sphere, step, renormalise: the retraction keeps
    # the projected flow's first-order accuracy, and shrinks the rows only by O(eta^2 |dW|^2).
    dW = dW - jnp.sum(dW * W, axis=1, keepdims=True) * W
    W = W + eta * dW
    return W / jnp.linalg.norm(W, axis=1, keepdims=True)


def _step(problem: Problem, a, W, da, dW, eta):
    return a + (eta / problem.eps) * da, _retract(W, dW, eta)


def _population_directions(problem: Problem, a, W, u):
    # Exact gradients of the core's population risk R(a, W u, W W^T) (THEORY.md section 3).
    def risk(a, W):
        return FiniteDimODE(problem).risk(FiniteDimState(a, W @ u, W @ W.T))

    ga, gW = jax.grad(risk, argnums=(0, 1))(a, W)
    m = a.shape[0]
    return -m * ga, -m * gW


def _labels(problem: Problem, u, x, key):
    y = problem.target(x @ u)
    return y + problem.noise * jax.random.normal(key, y.shape, y.dtype)


def _sample(problem: Problem, u, key, batch: int):
    kx, ky = jax.random.split(key)
    x = jax.random.normal(kx, (batch, u.shape[0]), u.dtype)
    return x, _labels(problem, u, x, ky)


@eqx.filter_jit
def _advance(kind: str, problem: Problem, a, W, u, data, key, start, n_steps, eta, batch: int):
    """`n_steps` steps of the chosen method from global step index `start` (compiled once)."""

    def body(i, carry):
        a, W = carry
        if kind == "population":
            da, dW = _population_directions(problem, a, W, u)
        else:
            # The step's samples depend only on (key, global step index): the run is the same
            # whatever the record grid.
            x, y = _sample(problem, u, jax.random.fold_in(key, i), batch) if data is None else data
            da, dW = batch_directions(problem, a, W, x, y)
        return _step(problem, a, W, da, dW, eta)

    return jax.lax.fori_loop(start, start + n_steps, body, (a, W))


@eqx.filter_jit
def _observe(problem: Problem, a, W, u, data):
    a64, W64, u64 = (jnp.asarray(v, jnp.float64) for v in (a, W, u))
    Q = W64 @ W64.T
    # The rows are unit up to rounding; the exact ODE state has an exact unit diagonal.
    Q = Q.at[jnp.diag_indices(a.shape[0])].set(1.0)
    state = FiniteDimState(a64, W64 @ u64, Q)
    model = FiniteDimODE(problem)
    train = None
    if data is not None:
        x, y = data
        train = 0.5 * jnp.mean((y - network(problem.activation, a, W, x)) ** 2)
    return state, model.risk(state), model.residuals(state), train


def _cast(tree, dtype):
    return jax.tree_util.tree_map(lambda v: v.astype(dtype) if eqx.is_inexact_array(v) else v, tree)


def _check(problem, a, W, u, eta) -> tuple[Array, Array, Array]:
    if not isinstance(problem, Problem):
        raise ValueError(f"problem must be an sst.Problem, got {type(problem).__name__}.")
    a, W, u = (np.asarray(v, dtype=float) for v in (a, W, u))
    if a.ndim != 1 or W.ndim != 2 or W.shape[0] != a.shape[0] or u.shape != (W.shape[1],):
        raise ValueError(
            "Need a of shape (m,), W of shape (m, d) and u of shape (d,); got "
            f"{a.shape}, {W.shape} and {u.shape}. sst.random_init(key, m, d) gives all three."
        )
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(W)) and np.all(np.isfinite(u))):
        raise ValueError("a, W and u must be finite.")
    if np.max(np.abs(np.linalg.norm(W, axis=1) - 1.0)) > 1e-6 or abs(np.linalg.norm(u) - 1) > 1e-6:
        raise ValueError(
            "The rows of W and the target direction u must be unit vectors; divide them by "
            "their norms."
        )
    if not (np.isfinite(eta) and eta > 0):
        raise ValueError(f"The step size eta must be a finite positive number, got {eta}.")
    return a, W, u


def _record_steps(ts: np.ndarray, eta: float) -> np.ndarray:
    steps = np.rint((ts - ts[0]) / eta).astype(np.int64)
    if np.any(np.diff(steps) <= 0):
        raise ValueError(
            f"The record grid is finer than the step eta={eta:g}: two record times round to the "
            "same step. Use fewer record times or a smaller eta."
        )
    return steps


def _run(
    kind: str,
    problem: Problem,
    a: ArrayLike,
    W: ArrayLike,
    u: ArrayLike,
    ts: ArrayLike,
    eta: float,
    key: PRNGKeyArray,
    batch: int,
    data_fn: Callable | None,
    dtype,
    progress: bool,
) -> ParticleRun:
    a, W, u = _check(problem, a, W, u, eta)
    ts_np = check_times(ts)
    steps = _record_steps(ts_np, eta)
    dtype = jnp.dtype(dtype)
    if dtype not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.float64)):
        raise ValueError(f"dtype must be float32 or float64, got {dtype}.")
    sim = _cast(problem, dtype)
    a, W, u = (jnp.asarray(v, dtype) for v in (a, W, u))
    key_steps, key_data = jax.random.split(key)
    data = None if data_fn is None else _cast(data_fn(sim, u, key_data), dtype)
    eta_d = jnp.asarray(eta, dtype)

    records = [_observe(problem, a, W, u, data)]
    bar = tqdm(total=int(steps[-1]), disable=not progress, desc=kind, unit="step")
    for start, stop in zip(steps[:-1], steps[1:], strict=True):
        a, W = _advance(
            kind,
            sim,
            a,
            W,
            u,
            data,
            key_steps,
            jnp.asarray(start),
            jnp.asarray(stop - start),
            eta_d,
            batch,
        )
        records.append(_observe(problem, a, W, u, data))
        bar.update(int(stop - start))
    bar.close()

    states, risk, residuals, train = jax.tree_util.tree_map(lambda *r: jnp.stack(r), *records)
    m = a.shape[0]
    return ParticleRun(
        ts=jnp.asarray(ts_np[0] + steps * eta),
        a=states.a,
        s=states.s,
        Q=states.Q,
        weights=jnp.full(m, 1.0 / m),
        risk=risk,
        residuals=residuals,
        train_risk=train,
        valid=jnp.isfinite(risk),
        W=W,
        eta=float(eta),
        batch=batch,
    )


def population_gd(
    problem: Problem,
    a: Float[ArrayLike, " m"],
    W: Float[ArrayLike, "m d"],
    u: Float[ArrayLike, " d"],
    ts: Float[ArrayLike, " T"],
    eta: float,
    *,
    dtype=jnp.float64,
    progress: bool = False,
) -> ParticleRun:
    """Gradient descent on the exact population risk (THEORY.md sections 3 and 7).

    Each step: `a += (eta/eps) (-m dR/da)`, `w_i += eta P_i (-m dR/dw_i)` with `P_i` the
    projection on the tangent space of the sphere at `w_i`, then rows renormalised. This is
    explicit Euler on the flow that `FiniteDimODE` integrates exactly, so it converges to it at
    first order in `eta`. Gradients come from `jax.grad` of `FiniteDimODE.risk`.

    **Arguments:**

    - `problem`: the `Problem` (target, activation, `eps`).
    - `a`, `W`, `u`: initial second-layer weights `(m,)`, unit first-layer rows `(m, d)` and the
      unit target direction `(d,)` (e.g. from `sst.random_init`).
    - `ts`: increasing record times; the run starts at `ts[0]` and each time is rounded to a
      whole number of steps (the rounded times are returned).
    - `eta`: the step size (time per step); keep `eta * U(1) / eps` well below 1.
    - `dtype`: `jnp.float32` or `jnp.float64` for the simulation (records are float64).
    - `progress`: show a tqdm progress bar.

    **Returns:** a `ParticleRun` (`batch = 0`).
    """
    return _run(
        "population", problem, a, W, u, ts, eta, jax.random.PRNGKey(0), 0, None, dtype, progress
    )


def online_sgd(
    problem: Problem,
    a: Float[ArrayLike, " m"],
    W: Float[ArrayLike, "m d"],
    u: Float[ArrayLike, " d"],
    ts: Float[ArrayLike, " T"],
    eta: float,
    key: PRNGKeyArray,
    *,
    batch: int = 1,
    dtype=jnp.float64,
    progress: bool = False,
) -> ParticleRun:
    """Online SGD: a fresh batch `x ~ N(0, I_d)`, `y = phi(<u, x>) + noise` at every step.

    Each step moves `a` by `eta/eps` and `W` by `eta` along `batch_directions` of the batch's
    squared loss (tangent projection, then rows renormalised); time is `steps * eta`. It tracks
    `FiniteDimODE` when `eta * d * a^2 / batch` is small (THEORY.md section 7). Label noise is
    `problem.noise`.

    **Arguments:** as `population_gd`, plus `key` (the run is a function of the key: samples of
    step `k` come from `fold_in(key, k)`) and `batch`, the samples per step.

    **Returns:** a `ParticleRun`.
    """
    if not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be a positive integer number of samples, got {batch!r}.")
    return _run("sgd", problem, a, W, u, ts, eta, key, batch, None, dtype, progress)


def full_batch_gd(
    problem: Problem,
    a: Float[ArrayLike, " m"],
    W: Float[ArrayLike, "m d"],
    u: Float[ArrayLike, " d"],
    ts: Float[ArrayLike, " T"],
    eta: float,
    key: PRNGKeyArray,
    n: int,
    *,
    dtype=jnp.float64,
    progress: bool = False,
) -> ParticleRun:
    """Gradient descent on the empirical risk of `n` fixed samples drawn from `key`.

    The same step as `online_sgd` with the whole training set as the batch at every step. The
    run records the training risk `mean (y - f)^2 / 2` next to the exact population risk, so the
    gap between them shows the finite-sample effects (THEORY.md section 7).

    **Arguments:** as `online_sgd`, with `n` the number of training samples (memory O(n d)).

    **Returns:** a `ParticleRun` with `train_risk` set and `batch = n`.
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer number of samples, got {n!r}.")

    def data(sim, u, key):
        return _sample(sim, u, key, n)

    return _run("full_batch", problem, a, W, u, ts, eta, key, n, data, dtype, progress)
