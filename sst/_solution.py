"""The one results type: `Trajectory`, with the result codes `RESULTS` of why a run stopped."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, Generic, TypeVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from equinox._enum import EnumerationItem
from jaxtyping import Array, ArrayLike, Bool, Float, Int

State = TypeVar("State")


class RESULTS(eqx.Enumeration):
    """Why a solve or a training run stopped (`Trajectory.result`).

    Items print by name (`RESULTS.successful`; a batch as `RESULTS[successful, diverged]`),
    compare with `==` (`traj.result == sst.RESULTS.successful`), and `RESULTS[item]` is the
    message saying what to change.
    """

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


class _ResultItem(EnumerationItem):
    """An item of `RESULTS` that prints by name: `RESULTS.successful`, or for a batch
    `RESULTS[successful, max_steps_reached]` (equinox's items print their message, which is
    empty for `successful`). Otherwise an equinox enumeration item: compared with `==`, its
    message is `RESULTS[item]`."""

    def __repr__(self) -> str:
        value = self._value
        if isinstance(value, jax.core.Tracer):
            return "RESULTS(traced)"
        names = np.vectorize(_RESULT_NAMES.__getitem__, otypes=[object])(np.asarray(value))
        if names.ndim == 0:
            return f"RESULTS.{names.item()}"
        return "RESULTS" + np.array2string(names, separator=", ", formatter={"all": str})


# equinox builds the items itself (at class creation, in `where`) and offers no hook for their
# repr: each item is rebuilt as a `_ResultItem` with the same value, and `where`, the one way the
# solvers combine items, returns one too, so every `RESULTS` item a run produces prints by name.
# This reads equinox's `_name_to_item` and `_value`; tests/test_solution.py fails if they change.
_RESULT_NAMES = {int(item._value): name for name, item in RESULTS._name_to_item.items()}
for _name, _item in RESULTS._name_to_item.items():
    RESULTS._name_to_item[_name] = _ResultItem(_item._value, RESULTS)


def _where(cls, pred: Bool[ArrayLike, ""], a: RESULTS, b: RESULTS) -> RESULTS:
    """`RESULTS.where(pred, a, b)`: `a` where `pred` holds, else `b` (as `eqx.Enumeration`)."""
    return _ResultItem(eqx.Enumeration.where.__func__(cls, pred, a, b)._value, cls)


RESULTS.where = classmethod(_where)


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


class DenseOutput(eqx.Module):
    """The solver's dense output of a solve (`sst.solve(..., dense=True)`): the state, risk and
    residuals at any time of the solved interval, to the solver's tolerance.

    Each step's interpolant (third order for `Rodas4`) is kept, so its memory is that of
    `max_steps` states times the interpolant's coefficients (four states for `Rodas4`).

    **Fields:** `interpolation`, diffrax's `DenseInterpolation` of the solver coordinates;
    `model`, the model that was solved; `args`, its constant solver arguments.
    """

    interpolation: Any
    model: Any
    args: Any

    def state(self, t: Float[ArrayLike, ""]):
        """The model's state at time `t`."""
        return self.model.merge(self.interpolation.evaluate(t), self.args)

    def risk(self, t: Float[ArrayLike, ""]) -> Float[Array, ""]:
        """The risk at time `t`."""
        return self.model.risk(self.state(t))

    def residuals(self, t: Float[ArrayLike, ""]) -> Float[Array, " R"]:
        """The residuals at time `t`, labelled as `Trajectory.residual_labels`."""
        return self.model.residuals(self.state(t))

    def risk_rate(self, t: Float[ArrayLike, ""]) -> Float[Array, ""]:
        """`dR/dt` at time `t`: the risk's derivative along the model's own vector field at the
        interpolated state (as accurate as the state, unlike the interpolant's derivative)."""
        y = self.interpolation.evaluate(t)
        return jax.jvp(
            lambda y: self.model.risk(self.model.merge(y, self.args)),
            (y,),
            (self.model(t, y, self.args),),
        )[1]


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
    - `dense`: the solver's `DenseOutput` with `sst.solve(..., dense=True)`, else `None`;
      `learning_times` and `detect_phases` then locate their times on it rather than between
      saves.
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
    dense: DenseOutput | None = None

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


def describe_steps(stats: dict[str, Any]) -> str:
    """The solver's step counts in words: `"1103 steps (1094 accepted, 9 rejected)"`.

    `stats` is `Trajectory.stats` or its copy in a summary file (`num_steps`,
    `num_accepted_steps`, `num_rejected_steps`); a training run's stats (`num_steps` alone) give
    `"500 steps"`. Every step is accepted or rejected: `num_steps` is their sum."""
    text = f"{int(stats['num_steps'])} steps"
    if "num_accepted_steps" in stats:
        accepted, rejected = int(stats["num_accepted_steps"]), int(stats["num_rejected_steps"])
        text += f" ({accepted} accepted, {rejected} rejected)"
    return text


def mask_invalid(valid: Bool[Array, " T"], tree):
    """Replace the rows of every array of `tree` where `valid` is `False` by NaN."""

    def mask(x):
        return jnp.where(valid.reshape((-1,) + (1,) * (x.ndim - 1)), x, jnp.nan)

    return jax.tree_util.tree_map(mask, tree)
