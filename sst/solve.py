"""Integrating the order-parameter ODEs: `sst.solve` and the `Trajectory` it returns."""

from __future__ import annotations

from typing import Any

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, Int

from .odes import FiniteDimODE, FiniteDimState, MeanFieldODE, MeanFieldState
from .rosenbrock import Rodas4

Model = MeanFieldODE | FiniteDimODE
State = MeanFieldState | FiniteDimState


class Trajectory(eqx.Module):
    """A solved trajectory, saved at the requested times.

    **Fields:**

    - `ts`: save times `(T,)`.
    - `a`, `s`: second-layer weights and overlaps `(T, m)`; `Q`: overlap matrices `(T, m, m)` for
      `FiniteDimODE`, else `None`; `weights`: particle weights `(m,)`.
    - `risk`: population risk `(T,)` (THEORY.md sections 3 and 5).
    - `residuals`: Hermite residuals `r_k = phi_k - sigma_k m_k`, `(T, R)` for the degrees of the
      target; `risk = sum_k r_k^2 / 2` plus the parts beyond the activation's degree.
    - `valid`: `(T,)` mask, `False` at save times after a failure (those rows are NaN).
    - `success`: whether the whole solve succeeded.
    - `num_steps`, `num_accepted_steps`, `num_rejected_steps`: solver statistics.
    - `rtol`, `atol`: the tolerances that produced it.
    """

    ts: Float[Array, " T"]
    a: Float[Array, "T m"]
    s: Float[Array, "T m"]
    Q: Float[Array, "T m m"] | None
    weights: Float[Array, " m"]
    risk: Float[Array, " T"]
    residuals: Float[Array, "T R"]
    valid: Bool[Array, " T"]
    success: Bool[Array, ""]
    num_steps: Int[Array, ""]
    num_accepted_steps: Int[Array, ""]
    num_rejected_steps: Int[Array, ""]
    rtol: float = eqx.field(static=True)
    atol: float = eqx.field(static=True)

    def state(self, index: int) -> State:
        """The state saved at `ts[index]`."""
        if self.Q is None:
            return MeanFieldState(self.a[index], self.s[index], self.weights)
        return FiniteDimState(self.a[index], self.s[index], self.Q[index])


def default_solver() -> dfx.AbstractSolver:
    """The default stiff solver: Rodas4, a linearly implicit Rosenbrock method (`sst.rosenbrock`).

    It needs no Newton iteration, so it survives the strongly nonlinear late phase at tiny eps
    (THEORY.md section 8) where ESDIRK solvers (diffrax's Kvaerno5) stall in failed Newton
    iterations; for `MeanFieldODE` with a polynomial activation its linear solves use the
    Woodbury identity and cost O(m K^2).
    """
    return Rodas4()


def check_times(ts: ArrayLike) -> np.ndarray:
    """Validate save times: a finite, strictly increasing 1-d array of at least two times."""
    ts_np = np.asarray(ts, dtype=float)
    if ts_np.ndim != 1 or ts_np.shape[0] < 2:
        raise ValueError(f"ts must be a 1-d array of at least two times, got shape {ts_np.shape}.")
    if not np.all(np.isfinite(ts_np)):
        raise ValueError("ts contains NaN or inf; pass finite save times.")
    if np.any(np.diff(ts_np) <= 0):
        raise ValueError("ts must be strictly increasing; sort it and drop duplicates.")
    return ts_np


def _is_traced(tree) -> bool:
    return any(isinstance(x, jax.core.Tracer) for x in jax.tree_util.tree_leaves(tree))


def solve(
    model: Model,
    y0: State,
    ts: Float[ArrayLike, " T"],
    *,
    solver: dfx.AbstractSolver | None = None,
    rtol: float = 1e-8,
    atol: float = 1e-10,
    dt0: float | None = None,
    max_steps: int = 100_000,
    stepsize_controller: dfx.AbstractStepSizeController | None = None,
    adjoint: dfx.AbstractAdjoint | None = None,
    throw: bool = True,
    progress: bool = False,
) -> Trajectory:
    """Integrate `model` from `y0` at `ts[0]` and save at every time in `ts`.

    **Arguments:**

    - `model`: a `MeanFieldODE` or `FiniteDimODE`.
    - `y0`: its initial state (`MeanFieldState` or `FiniteDimState`), validated before any
      compilation when concrete.
    - `ts`: strictly increasing save times; the solve runs on `[ts[0], ts[-1]]`.
    - `solver`: any diffrax solver; default `default_solver()`.
    - `rtol`, `atol`: tolerances of the adaptive step-size controller (and of the root finder).
    - `dt0`: initial step; `None` lets diffrax choose it from the error estimate.
    - `max_steps`: step budget; reaching it is a failure.
    - `stepsize_controller`: overrides the default `PIDController(rtol, atol)`, clipped so that
      the solver steps exactly onto every save time.
    - `adjoint`: diffrax adjoint for reverse-mode differentiation (default: recursive
      checkpointing, i.e. differentiate through the solver's operations).
    - `throw`: on failure raise (`RuntimeError` outside `jit`, a runtime error inside); with
      `throw=False` the trajectory is returned with `success=False` and NaN rows masked by `valid`.
    - `progress`: show a tqdm progress bar.

    **Returns:** a `Trajectory`.
    """
    if not isinstance(model, MeanFieldODE | FiniteDimODE):
        raise ValueError(
            f"model must be a MeanFieldODE or FiniteDimODE, got {type(model).__name__}."
        )
    if not _is_traced(y0):
        model.check_state(y0)
    if not _is_traced(ts):
        check_times(ts)
    ts = jnp.asarray(ts, dtype=float)
    y, args = model.split(y0)
    # Stepping exactly onto the save times keeps saved values at the solver's accuracy: the
    # cubic Hermite dense output of the ESDIRK solvers is far less accurate between steps.
    controller = stepsize_controller or dfx.ClipStepSizeController(
        dfx.PIDController(rtol=rtol, atol=atol), step_ts=ts
    )
    options: dict[str, Any] = {}
    if adjoint is not None:
        options["adjoint"] = adjoint
    if progress:
        options["progress_meter"] = dfx.TqdmProgressMeter()
    sol = dfx.diffeqsolve(
        dfx.ODETerm(model.vector_field),
        solver or default_solver(),
        t0=ts[0],
        t1=ts[-1],
        dt0=dt0,
        y0=y,
        args=args,
        saveat=dfx.SaveAt(ts=ts),
        stepsize_controller=controller,
        max_steps=max_steps,
        throw=False,
        **options,
    )
    success = sol.result == dfx.RESULTS.successful
    # diffrax marks save times it never reached with inf.
    valid = jnp.isfinite(sol.ts)
    ys = jax.tree_util.tree_map(
        lambda x: jnp.where(valid.reshape((-1,) + (1,) * (x.ndim - 1)), x, jnp.nan), sol.ys
    )
    states = model.merge(ys, args)
    traj = Trajectory(
        ts=ts,
        a=states.a,
        s=states.s,
        Q=getattr(states, "Q", None),
        weights=args if args is not None else jnp.full(y0.a.shape, 1.0 / y0.a.shape[0]),
        risk=jax.vmap(model.risk)(states),
        residuals=jax.vmap(model.residuals)(states),
        valid=valid,
        success=success,
        num_steps=sol.stats["num_steps"],
        num_accepted_steps=sol.stats["num_accepted_steps"],
        num_rejected_steps=sol.stats["num_rejected_steps"],
        rtol=rtol,
        atol=atol,
    )
    if throw:
        if _is_traced(traj.success):
            traj = eqx.error_if(traj, ~traj.success, "sst.solve failed; " + _ADVICE)
        elif not bool(traj.success):
            raise RuntimeError(_failure_message(sol.result, traj, max_steps))
    return traj


_ADVICE = (
    "raise max_steps, loosen rtol/atol, or pass throw=False to inspect the partial trajectory "
    "(rows after the failure are NaN and masked by Trajectory.valid)."
)


def _failure_message(result, traj: Trajectory, max_steps: int) -> str:
    reached = np.asarray(traj.ts)[np.asarray(traj.valid)]
    where = f"up to t = {reached[-1]:.6g}" if reached.size else "before the first save time"
    what = dfx.RESULTS[result]
    if result == dfx.RESULTS.max_steps_reached:
        what = f"the step budget max_steps={max_steps} was exhausted"
    return (
        f"sst.solve failed after {int(traj.num_steps)} steps ({int(traj.num_rejected_steps)} "
        f"rejected), valid {where} of [{float(traj.ts[0]):.6g}, {float(traj.ts[-1]):.6g}]: {what}. "
        "To fix it: " + _ADVICE
    )
