"""Training the two-layer network itself: estimators of the descent direction and `train`.

The network `f(x) = (1/m) sum_i a_i sigma(<w_i, x>)`, `|w_i| = 1`, is trained in the time
scaling of the docs' [model page][setting] (#gradient-flow, #sgd): a step of size `eta` advances
time by
`eta`; the second layer moves `1/eps` times faster; first-layer steps are projected on the
sphere's tangent space and the rows renormalised. An estimator says how a step estimates the
descent direction:

- `PopulationGradient`: the exact population gradient (explicit Euler on the flow whose order
  parameters `FiniteDimODE` integrates exactly);
- `OnlineSGD(batch)`: a fresh Gaussian batch at every step;
- `FixedSamples(n)`: the empirical risk of `n` samples drawn once (full-batch gradient descent).

`train` starts from a `RandomInit` (shared with `FiniteDimODE`), records on a time grid the
order parameters `s = W U`, `Q = W W^T`, the second-layer weights and the exact population risk
(computed from the order parameters by `FiniteDimODE.risk`), and returns a `Trajectory` whose
`training` holds the step size, the training-set risk and the final weights. Memory is
O(m d + B d): nothing of size d x d is formed.
"""

from __future__ import annotations

import abc
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, PyTree
from tqdm.auto import tqdm

from ._finite_dim import FiniteDimODE, FiniteDimState
from ._init import RandomInit
from ._problem import Problem, state_overlaps
from ._solution import RESULTS, TrainingRecord, Trajectory
from ._validate import check_count, check_key, check_times, require_x64, show_progress

# A run whose population risk exceeds this multiple of its initial value has diverged.
DIVERGENCE_FACTOR = 1e6


class AbstractEstimator(eqx.Module):
    """How a training step estimates the descent directions `(-m dL/da, -m dL/dW)`."""

    @property
    @abc.abstractmethod
    def needs_key(self) -> bool:
        """Whether the estimator draws samples (and so `train` needs a `key`)."""

    @abc.abstractmethod
    def data(self, problem: Problem, U: Array, key: PRNGKeyArray) -> PyTree[Array] | None:
        """Samples drawn once before training (`None` if the estimator keeps none)."""

    @abc.abstractmethod
    def directions(
        self, problem: Problem, a: Array, W: Array, U: Array, data, key: PRNGKeyArray
    ) -> tuple[Float[Array, " m"], Float[Array, "m d"]]:
        """The descent directions of one step; `key` is the step's own key."""


class PopulationGradient(AbstractEstimator):
    """The exact gradient of the population risk `R(a, W U, W W^T)` (docs:
    [gradient flow][gradient-flow]), by `jax.grad` of `FiniteDimODE.risk`: gradient descent
    converges to the
    flow of `FiniteDimODE` at first order in `eta`."""

    @property
    def needs_key(self) -> bool:
        return False

    def data(self, problem, U, key):
        return None

    def directions(self, problem, a, W, U, data, key):
        return _population_directions(problem, a, W, U)


class OnlineSGD(AbstractEstimator):
    """Online SGD: a fresh batch `x ~ N(0, I_d)`, `y = phi(U^T x) + noise` at every step.

    It tracks `FiniteDimODE` when `eta * d * a^2 / batch` is small (docs: [gradient descent and
    SGD][sgd]).

    **Fields:** `batch`, the samples per step.
    """

    batch: int = eqx.field(static=True)

    def __init__(self, batch: int = 1):
        self.batch = check_count("batch (samples per step)", batch)

    @property
    def needs_key(self) -> bool:
        return True

    def data(self, problem, U, key):
        return None

    def directions(self, problem, a, W, U, data, key):
        return batch_directions(problem, a, W, *_sample(problem, U, key, self.batch))


class FixedSamples(AbstractEstimator):
    """Gradient descent on the empirical risk of `n` fixed samples (full batch): the run
    records the training risk next to the population risk, so the gap between them shows the
    finite-sample effects (docs: [gradient descent and SGD][sgd]). Memory O(n d).

    **Fields:** `n`, the number of training samples.
    """

    n: int = eqx.field(static=True)

    def __init__(self, n: int):
        self.n = check_count("n (training samples)", n)

    @property
    def needs_key(self) -> bool:
        return True

    def data(self, problem, U, key):
        return _sample(problem, U, key, self.n)

    def directions(self, problem, a, W, U, data, key):
        return batch_directions(problem, a, W, *data)


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
    `e = y - f(x)` and `z = x W^T`. The factor `m` is the mean-field time scaling of the docs'
    [gradient flow][gradient-flow]; the first-layer direction is not yet projected on the sphere.
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


def _exact(problem: Problem, a, W, U, Q):
    """The exact finite-d model of `problem` and its state at the weights `(a, W)`, with `U` the
    target directions `(d, k)`."""
    return FiniteDimODE(problem), FiniteDimState(a, state_overlaps(problem, W @ U), Q)


def _population_directions(problem: Problem, a, W, U):
    # Exact gradients of the core's population risk R(a, W U, W W^T) (docs: [gradient
    # flow][gradient-flow]).
    # FiniteDimState holds float64: the risk is evaluated in float64 whatever the simulation's
    # dtype (with the problem cast to match), and the gradients come back in the weights' dtype.
    problem64 = _cast(problem, jnp.float64)

    def risk(a, W):
        model, state = _exact(problem64, a, W, U, W @ W.T)
        return model.risk(state)

    ga, gW = jax.grad(risk, argnums=(0, 1))(a, W)
    m = a.shape[0]
    return -m * ga, -m * gW


def _labels(problem: Problem, U, x, key):
    y = problem.phi(x @ U)
    return y + problem.noise * jax.random.normal(key, y.shape, y.dtype)


def _sample(problem: Problem, U, key, batch: int):
    kx, ky = jax.random.split(key)
    x = jax.random.normal(kx, (batch, U.shape[0]), U.dtype)
    return x, _labels(problem, U, x, ky)


def _cast(tree, dtype):
    return jax.tree_util.tree_map(lambda v: v.astype(dtype) if eqx.is_inexact_array(v) else v, tree)


@eqx.filter_jit
def _advance(estimator, problem: Problem, a, W, U, data, key, start, n_steps, eta):
    """`n_steps` steps from global step index `start` (compiled once per record grid)."""

    def body(i, carry):
        a, W = carry
        # The step's samples depend only on (key, global step index): the run is the same
        # whatever the record grid.
        da, dW = estimator.directions(problem, a, W, U, data, jax.random.fold_in(key, i))
        return a + (eta / problem.eps) * da, _retract(W, dW, eta)

    return jax.lax.fori_loop(start, start + n_steps, body, (a, W))


@eqx.filter_jit
def _observe(problem: Problem, sim: Problem, a, W, U, data):
    """Order parameters, population risk and residuals in float64, and the training risk in
    the simulation's precision `sim`."""
    a64, W64, U64 = (jnp.asarray(v, jnp.float64) for v in (a, W, U))
    Q = W64 @ W64.T
    # The rows are unit up to rounding; the exact ODE state has an exact unit diagonal.
    Q = Q.at[jnp.diag_indices(a.shape[0])].set(1.0)
    model, state = _exact(problem, a64, W64, U64, Q)
    train = None
    if data is not None:
        x, y = data
        error = (y - network(sim.activation, a, W, x)).astype(jnp.float64)
        train = 0.5 * jnp.mean(error**2)
    return state, model.risk(state), model.residuals(state), train


def _record_steps(ts: np.ndarray, eta: float) -> np.ndarray:
    steps = np.rint((ts - ts[0]) / eta).astype(np.int64)
    if np.any(np.diff(steps) <= 0):
        raise ValueError(
            f"The record grid is finer than the step eta={eta:g}: two record times round to the "
            "same step. Use fewer record times or a smaller eta."
        )
    return steps


def train(
    problem: Problem,
    init: RandomInit,
    ts: Float[ArrayLike, " T"],
    *,
    eta: float,
    estimator: AbstractEstimator | None = None,
    key: PRNGKeyArray | None = None,
    dtype=jnp.float64,
    progress: bool | None = None,
) -> Trajectory:
    """Train the network from `init` and record it at the times `ts`, like `sst.solve`.

    Each step: `a += (eta/eps) da`, `w_i += eta P_i dw_i` with `(da, dW)` the estimator's
    descent directions and `P_i` the projection on the tangent space of the sphere at `w_i`,
    then rows renormalised (docs: [gradient descent and SGD][sgd]).

    **Arguments:**

    - `problem`: the `Problem` (target of `k` directions, activation, `eps`, label `noise`):
      labels `phi(U^T x) + noise`, order parameters `s = W U`.
    - `init`: a `RandomInit` with `k` directions (from `sst.random_init`, or
      `RandomInit.from_weights(a, W, U)`).
    - `ts`: increasing record times; the run starts at `ts[0]` and each time is rounded to a
      whole number of steps (the rounded times are returned).
    - `eta`: the step size (time per step); keep `eta * U(1) / eps` well below 1.
    - `estimator`: `PopulationGradient()` (default), `OnlineSGD(batch)` or `FixedSamples(n)`.
    - `key`: a JAX PRNG key, needed by the sampling estimators (the samples of step `k` come
      from `fold_in(key, k)`, the fixed samples from a key split off first).
    - `dtype`: `jnp.float32` or `jnp.float64` for the simulation (records are float64).
    - `progress`: show a progress bar (default: when a person is watching, in a terminal or
      a notebook).

    **Returns:** a `Trajectory` of `FiniteDimState`s, with
    `training` a `TrainingRecord`.
    A run that diverges (a non-finite risk, or above `1e6` times its initial value) stops
    there: `result` is `RESULTS.diverged` and later rows are masked by `valid`.
    """
    require_x64("sst.train")
    estimator = PopulationGradient() if estimator is None else estimator
    if not isinstance(problem, Problem):
        raise ValueError(f"problem must be an sst.Problem, got {type(problem).__name__}.")
    if not isinstance(estimator, AbstractEstimator):
        raise ValueError(
            "estimator must be an sst.AbstractEstimator (sst.PopulationGradient(), "
            f"sst.OnlineSGD(batch), sst.FixedSamples(n)), got {type(estimator).__name__}."
        )
    if not isinstance(init, RandomInit):
        raise ValueError(
            f"init must be an sst.RandomInit (from sst.random_init), got {type(init).__name__}."
        )
    if estimator.needs_key and key is None:
        raise ValueError(f"{type(estimator).__name__} draws samples: pass key=jax.random.key(0).")
    if key is not None:
        check_key(key)
    a, W, U = _check(init, eta, problem.k)
    ts_np = check_times(ts)
    steps = _record_steps(ts_np, eta)
    dtype = jnp.dtype(dtype)
    if dtype not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.float64)):
        raise ValueError(f"dtype must be float32 or float64, got {dtype}.")
    sim = _cast(problem, dtype)
    a, W, U = (jnp.asarray(v, dtype) for v in (a, W, U))
    key_steps, key_data = jax.random.split(jax.random.key(0) if key is None else key)
    data = _cast(estimator.data(sim, U, key_data), dtype)
    eta_d = jnp.asarray(eta, dtype)

    records = [_observe(problem, sim, a, W, U, data)]
    limit = DIVERGENCE_FACTOR * float(records[0][1])
    result = RESULTS.successful
    bar = tqdm(
        total=int(steps[-1]), disable=not show_progress(progress), desc=type(estimator).__name__
    )
    for start, stop in zip(steps[:-1], steps[1:], strict=True):
        a, W = _advance(
            estimator,
            sim,
            a,
            W,
            U,
            data,
            key_steps,
            jnp.asarray(start),
            jnp.asarray(stop - start),
            eta_d,
        )
        records.append(_observe(problem, sim, a, W, U, data))
        bar.update(int(stop - start))
        risk = float(records[-1][1])
        if not (np.isfinite(risk) and risk <= limit):
            result = RESULTS.diverged
            fast = eta * float(problem.U(1.0)) / float(problem.eps)
            warnings.warn(
                f"sst.train diverged by t = {ts_np[0] + stop * eta:.4g} (risk {risk:.3g}); it "
                f"stopped there. eta * U(1) / eps = {fast:.3g} must stay well below 1: lower eta.",
                RuntimeWarning,
                stacklevel=2,
            )
            break
    bar.close()

    states, risk, residuals, train_risk = jax.tree_util.tree_map(lambda *r: jnp.stack(r), *records)
    n = len(records)
    valid = np.zeros(steps.size, bool)
    valid[:n] = True
    if result == RESULTS.diverged:
        valid[n - 1] = False
    pad = steps.size - n

    def full(x):
        return jnp.concatenate([x, jnp.full((pad,) + x.shape[1:], jnp.nan, x.dtype)])

    states, risk, residuals, train_risk = jax.tree_util.tree_map(
        full, (states, risk, residuals, train_risk)
    )
    valid = jnp.asarray(valid)
    return Trajectory(
        ts=jnp.asarray(ts_np[0] + steps * eta),
        ys=states,
        risk=jnp.where(valid, risk, jnp.nan),
        residuals=residuals,
        valid=valid,
        result=result,
        stats={"num_steps": jnp.asarray(int(steps[n - 1]))},
        residual_labels=problem.labels,
        training=TrainingRecord(estimator, float(eta), train_risk, W),
    )


def _check(init, eta, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    a, W, U = (np.asarray(v, dtype=float) for v in (init.state.a, init.W, init.U))
    if a.ndim != 1 or W.ndim != 2 or W.shape[0] != a.shape[0] or U.shape != (W.shape[1], k):
        raise ValueError(
            f"init needs a of shape (m,), W of shape (m, d) and U of shape (d, k={k}) for this "
            f"problem; got {a.shape}, {W.shape} and {U.shape}. sst.random_init(key, m, d) gives "
            "all three (with k=k for an sst.Target)."
        )
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(W)) and np.all(np.isfinite(U))):
        raise ValueError("init.state.a, init.W and init.U must be finite.")
    if np.max(np.abs(np.linalg.norm(W, axis=1) - 1.0)) > 1e-6:
        raise ValueError("The rows of init.W must be unit vectors; divide them by their norms.")
    if np.max(np.abs(U.T @ U - np.eye(k))) > 1e-6:
        raise ValueError(
            "The target directions init.U must be orthonormal columns; orthonormalise them "
            "(e.g. numpy.linalg.qr)."
        )
    if not (isinstance(eta, int | float | np.floating) and np.isfinite(eta) and eta > 0):
        raise ValueError(f"The step size eta must be a finite positive number, got {eta!r}.")
    return a, W, U
