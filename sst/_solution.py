"""The one results type: `Trajectory`, with the result codes `RESULTS` of why a run stopped."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, Generic, TypeVar

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

State = TypeVar("State")


class RESULTS(eqx.Enumeration):
    """Why a solve or a training run stopped (`Trajectory.result`)."""

    successful = ""
    max_steps_reached = (
        "the step budget max_steps was exhausted: raise max_steps, or loosen rtol/atol"
    )
    nonfinite = (
        "the initial state, a parameter (eps, coefficients) or its rates are NaN or inf: pass "
        "finite values"
    )
    solver_failed = "the solver failed (a step size underflowed or a linear solve failed)"
    diverged = (
        "the run diverged (a non-finite value, or a risk above 1e6 times its initial value): "
        "keep eta * U(1) / eps well below 1 (the second layer's explicit step) and, for SGD, "
        "eta * d * a^2 / batch small"
    )


class TrainingRecord(eqx.Module):
    """What a training run of the network records beyond its order parameters.

    **Fields:** `estimator` (the `AbstractEstimator` that gave the steps), `eta` the step size,
    `train_risk` the empirical risk on the training samples `(T,)` (`None` unless the estimator
    has a fixed training set), `W` the first-layer weights at the last record time `(m, d)`.
    """

    estimator: Any
    eta: float = eqx.field(static=True)
    train_risk: Float[Array, " T"] | None
    W: Float[Array, "m d"]


class Trajectory(eqx.Module, Generic[State]):
    """A solved (or trained) trajectory, saved at the requested times.

    Like `diffrax.Solution`, generic over the model's state: `ys` is the model's state (e.g.
    `MeanFieldState`) with a leading time axis. A batch (`solve_batch`, `jax.vmap`) adds a
    leading batch axis to every array.

    **Fields:**

    - `ts`: save times `(T,)`.
    - `ys`: the states at the save times (NaN where `valid` is `False`).
    - `risk`: population risk `(T,)`.
    - `residuals`: the components of the target not yet learned, `(T, R)`, labelled by
      `residual_labels` (Hermite degrees for a single-index target).
    - `valid`: `(T,)` mask, `False` at save times after a failure (those rows are NaN).
    - `result`: a `RESULTS` item, why the run stopped (`success` is `result == successful`).
    - `stats`: `num_steps`, `num_accepted_steps`, `num_rejected_steps` of the solver (training
      runs: `num_steps`).
    - `rtol`, `atol`: the tolerances that produced it (`nan` where the step-size controller
      has none; `None` for a training run).
    - `training`: a `TrainingRecord` for a training run of the network, else `None`.
    """

    ts: Float[Array, " T"]
    ys: State
    risk: Float[Array, " T"]
    residuals: Float[Array, "T R"]
    valid: Bool[Array, " T"]
    result: RESULTS
    stats: dict[str, Int[Array, ""]]
    residual_labels: tuple[Hashable, ...] = eqx.field(static=True)
    rtol: float | None = eqx.field(static=True, default=None)
    atol: float | None = eqx.field(static=True, default=None)
    training: TrainingRecord | None = None

    @property
    def success(self) -> Bool[Array, ""]:
        """Whether the run reached the last save time without failure."""
        return self.result == RESULTS.successful

    def state(self, index: int) -> State:
        """The state saved at `ts[index]` (of a single, unbatched trajectory)."""
        if self.ts.ndim != 1:
            raise ValueError(
                "state(index) needs a single trajectory; take a member of the batch first: "
                "traj[i] for member i."
            )
        return jax.tree_util.tree_map(lambda x: x[index], self.ys)

    def __getitem__(self, member: int) -> Trajectory[State]:
        """Member `member` of a batch of trajectories (every array indexed on its first axis)."""
        if self.ts.ndim != 2:
            raise ValueError(
                "Indexing a Trajectory selects a member of a batch, and this trajectory is not "
                "batched; use traj.state(i) for the state at ts[i]."
            )
        return jax.tree_util.tree_map(lambda x: x[member], self)

    @property
    def batch_size(self) -> int | None:
        """The number of members of a batch, or `None` for a single trajectory."""
        return None if self.ts.ndim == 1 else self.ts.shape[0]


def mask_invalid(valid: Bool[Array, " T"], tree):
    """Replace the rows of every array of `tree` where `valid` is `False` by NaN."""

    def mask(x):
        return jnp.where(valid.reshape((-1,) + (1,) * (x.ndim - 1)), x, jnp.nan)

    return jax.tree_util.tree_map(mask, tree)
