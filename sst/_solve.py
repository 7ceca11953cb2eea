"""Integrating an order-parameter model: `sst.solve`."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, PyTree

from ._control import ModelErrorController
from ._linear import DenseJacobian
from ._model import AbstractModel, ModelTerm
from ._rosenbrock import AbstractRosenbrock, Rodas4, StiffJacobian
from ._solution import RESULTS, DenseOutput, Trajectory, mask_invalid
from ._validate import check_count, check_times, check_times_shape, is_traced, require_x64


def default_solver() -> dfx.AbstractSolver:
    """The default stiff solver: `Rodas4`, a linearly implicit Rosenbrock method.

    It needs no Newton iteration, so it survives the strongly nonlinear late phase at tiny eps
    where ESDIRK solvers (diffrax's Kvaerno5) stall in failed Newton iterations; for
    `MeanFieldODE` with a polynomial activation its linear solves use the Schur complement on
    the residuals and cost O(m K^2) (docs: [the solver][rodas4]).
    """
    return Rodas4()


class ProjectedInterpolation(dfx.AbstractLocalInterpolation):
    """The dense output of a `ProjectedSolver` step: the wrapped solver's, plus the projection's
    move of the step's end, `correction = project(y1) - y1`, in proportion to the time elapsed.
    It runs from `y0` to the projected `y1`, and keeps the order of the wrapped dense output
    (the move is of the size of the step's local error)."""

    t0: Array
    t1: Array
    interpolation: dfx.AbstractLocalInterpolation
    correction: PyTree[Array]

    def evaluate(self, t0, t1=None, left: bool = True):
        if t1 is not None:
            return jax.tree_util.tree_map(
                jnp.subtract, self.evaluate(t1, left=left), self.evaluate(t0, left=left)
            )
        theta = (t0 - self.t0) / (self.t1 - self.t0)
        return jax.tree_util.tree_map(
            lambda y, c: y + theta * c, self.interpolation.evaluate(t0, left=left), self.correction
        )


class ProjectedSolver(dfx.AbstractWrappedSolver):
    """A diffrax ODE solver whose every step ends with the model's projection
    (`AbstractModel.project`), as a Rosenbrock solver's steps do: the state stays on the
    model's invariant manifold whichever solver integrates it.

    It integrates an `sst.ModelTerm(model)`. `sst.solve` wraps every solver but the Rosenbrock
    solvers in it. The error estimate is the wrapped solver's, of the step before projection;
    the dense output is `ProjectedInterpolation`, which ends at the projected state.

    **Fields:** `solver`, the diffrax ODE solver that makes the steps (e.g. `diffrax.Kvaerno5()`).
    """

    solver: dfx.AbstractSolver
    term_structure: ClassVar = ModelTerm
    interpolation_cls: ClassVar = ProjectedInterpolation

    def __check_init__(self):
        if not isinstance(self.solver, dfx.AbstractSolver):
            raise ValueError(
                "ProjectedSolver needs a diffrax solver instance such as diffrax.Kvaerno5(), got "
                f"{self.solver!r}."
            )

    @property
    def root_finder(self):
        # diffeqsolve gives an implicit solver (which isinstance sees through this wrapper) the
        # step-size controller's tolerances by replacing those of `solver.root_finder`.
        return self.solver.root_finder

    def order(self, terms):
        return self.solver.order(terms)

    def strong_order(self, terms):
        return self.solver.strong_order(terms)

    def error_order(self, terms):
        return self.solver.error_order(terms)

    def init(self, terms, t0, t1, y0, args):
        return self.solver.init(terms, t0, t1, y0, args)

    def func(self, terms, t0, y0, args):
        return self.solver.func(terms, t0, y0, args)

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        model, _ = ModelTerm.unwrap(terms)
        # A first-same-as-last solver (Tsit5, Kvaerno5) starts a step with the rate it computed
        # at the end of the last one, at the state before projection: a projection that moves
        # the state (one that does not hand back `y` itself, as the default does) makes that
        # rate stale, so the solver is told that the state jumped and evaluates it afresh.
        moves = model.project(y0, args) is not y0
        y1, y_error, dense_info, solver_state, result = self.solver.step(
            terms, t0, t1, y0, args, solver_state, made_jump | moves
        )
        projected = model.project(y1, args)
        dense_info = dict(
            interpolation=self.solver.interpolation_cls(t0=t0, t1=t1, **dense_info),
            correction=jax.tree_util.tree_map(jnp.subtract, projected, y1),
        )
        return projected, y_error, dense_info, solver_state, result


class _FiniteGradientSolver(dfx.AbstractWrappedSolver):
    """A diffrax solver whose steps that end in NaN or inf pass no gradient back.

    Such a step (a trial step far too long, which overflowed) is rejected by every adaptive
    controller, so nothing downstream depends on its outputs and their exact gradient is zero.
    Differentiated as it is, its backward pass meets `0 * inf` and lineax's solves with the
    non-finite stages, which raise (lineax transposes its solves with `throw=True`).
    """

    wrapped: dfx.AbstractSolver

    @property
    def solver(self):
        # diffrax's isinstance checks see through one wrapper, to `solver`: the innermost one
        # (through a ProjectedSolver), so that an implicit solver is still seen as implicit.
        solver = self.wrapped
        while isinstance(solver, dfx.AbstractWrappedSolver):
            solver = solver.solver
        return solver

    @property
    def term_structure(self):
        return self.wrapped.term_structure

    @property
    def interpolation_cls(self):
        return self.wrapped.interpolation_cls

    @property
    def root_finder(self):
        return self.wrapped.root_finder

    def order(self, terms):
        return self.wrapped.order(terms)

    def strong_order(self, terms):
        return self.wrapped.strong_order(terms)

    def error_order(self, terms):
        return self.wrapped.error_order(terms)

    def init(self, terms, t0, t1, y0, args):
        return self.wrapped.init(terms, t0, t1, y0, args)

    def func(self, terms, t0, y0, args):
        return self.wrapped.func(terms, t0, y0, args)

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        return _step((terms, t0, t1, y0, args, solver_state), self.wrapped, made_jump)


@eqx.filter_custom_vjp
def _step(inputs, solver, made_jump):
    return solver.step(*inputs, made_jump)


@_step.def_fwd
def _step_fwd(perturbed, inputs, solver, made_jump):
    out, vjp = eqx.filter_vjp(lambda inputs: solver.step(*inputs, made_jump), inputs)
    y1, y_error, dense_info, _, _ = out
    return out, (vjp, _all_finite((y1, y_error, dense_info)))


@_step.def_bwd
def _step_bwd(residuals, cotangents, perturbed, inputs, solver, made_jump):
    vjp, finite = residuals
    # Cotangents of outputs that nothing differentiated arrive as None: zeros to the vjp.
    outputs = jax.tree_util.tree_map(
        lambda x: x if jnp.issubdtype(x.dtype, jnp.inexact) else None,
        jax.eval_shape(_step.fn, inputs, solver, made_jump),
    )
    cotangents = jax.tree_util.tree_map(
        lambda c, x: None if x is None else (jnp.zeros(x.shape, x.dtype) if c is None else c),
        cotangents,
        outputs,
        is_leaf=lambda c: c is None,
    )
    zeros = jax.tree_util.tree_map(
        lambda x: jnp.zeros(x.shape, x.dtype), jax.eval_shape(vjp, cotangents)
    )
    (grads,) = jax.lax.cond(finite, lambda: vjp(cotangents), lambda: zeros)
    return grads


def solve(
    model: AbstractModel,
    y0: Any,
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
    dense: bool = False,
) -> Trajectory:
    """Integrate `model` from `y0` at `ts[0]` and save at every time in `ts`.

    **Arguments:**

    - `model`: any `sst.AbstractModel` (`MeanFieldODE`, `FiniteDimODE`, or your own).
    - `y0`: its initial state, validated by `model.check_state`: before any compilation when
      concrete, when the program runs under `jax.jit` (`eqx.error_if`).
    - `ts`: strictly increasing save times; the solve runs on `[ts[0], ts[-1]]`.
    - `solver`: any diffrax solver; default `default_solver()` (`Rodas4`).
    - `rtol`, `atol`: tolerances of the default step-size controller: diffrax's PID control of
      the model's own error measure (`ModelErrorController` with `model.error_norm`; for
      `MeanFieldODE` the errors of the Hermite residuals, the weights and the angles), clipped
      so that it steps onto every save time.
    - `dt0`: initial step; `None` lets diffrax choose it from the error estimate.
    - `max_steps`: step budget; reaching it is a failure (`RESULTS.max_steps_reached`).
    - `stepsize_controller`: replaces the default controller (its own tolerances are then the
      ones recorded in the trajectory). Between steps, saved values come from the solver's
      dense output (third order for `Rodas4`), so any controller keeps the solver's accuracy.
    - `adjoint`: diffrax adjoint for reverse-mode differentiation (see `sst.grad_adjoint`).
      In reverse mode a trial step that overflowed (and was rejected) passes no gradient, as
      it affects nothing; forward mode (`diffrax.ForwardMode`) differentiates every step.
    - `throw`: on failure raise (`RuntimeError` outside `jit`, a runtime error inside); with
      `throw=False` the trajectory is returned with its `result`, NaN rows masked by `valid`.
    - `progress`: show a progress bar; it advances in `log t` (from the first positive save
      time), as the learning curve does.
    - `dense`: keep the solver's dense output in `Trajectory.dense` (a `DenseOutput`), so
      that `learning_times` and `detect_phases` locate their times to the solver's tolerance
      whatever the save grid. It stores every step's interpolant: memory grows with
      `max_steps` (about 220 MB at 100,000 steps of 32 particles with `Rodas4`).

    **Supported eps:** `eps >= EPS_MIN` (1e-30); below it `solve` raises `ValueError` before
    compiling when `eps` is concrete (docs: [limits][limits]). With the default settings the
    reference problem (degree-4 target, 32 particles, benchmarks/staircase.py) takes 3k steps at
    eps = 1e-8 and 4.6k at 1e-30, a degree-6 target of the same kind 11.7k at 1e-30. What limits
    eps is rounding, not steps: the weights grow to `max |a| ~ 2e12` at 1e-30, and the risk,
    computed from moments `sum_i p_i a_i s_i^k` that stay O(1), carries rounding errors of
    `u sum_i p_i |a_i s_i^k|`: it may rise by up to 2.9e-11 at 1e-30 (measured; 5e-10 at 1e-32,
    3e-8 at 1e-34, 6e-7 at 1e-36).

    **Returns:** a `Trajectory` whose `ys` are states of the model.
    """
    require_x64("sst.solve")
    if not isinstance(model, AbstractModel):
        raise ValueError(
            "model must be an sst.AbstractModel (e.g. sst.MeanFieldODE), got "
            f"{type(model).__name__}."
        )
    max_steps = _check_options(solver, rtol, atol, dt0, max_steps, stepsize_controller)
    check_eps(model.eps)
    checked = model.check_state(y0)
    if checked is None:
        raise ValueError(
            f"{type(model).__name__}.check_state returned None; it must return the state it "
            "checked (a model without checks returns its argument)."
        )
    y0 = checked
    if is_traced(ts):
        check_times_shape(ts)  # its values are checked by _check_traced
    else:
        check_times(ts)
    ts = jnp.asarray(ts, dtype=float)
    if is_traced((ts, model.eps, dt0)):
        ts, dt0 = _check_traced(model, ts, dt0)
    # Stepping onto the save times costs fewer steps for the same accuracy of the saved values
    # than the dense output between steps (benchmarks/stiff.py, "dense output" rows).
    controller = stepsize_controller or dfx.ClipStepSizeController(
        ModelErrorController(model, dfx.PIDController(rtol=rtol, atol=atol)), step_ts=ts
    )
    options: dict[str, Any] = {}
    if adjoint is not None:
        options["adjoint"] = adjoint
    if progress:
        positive = ts[ts > 0] if not is_traced(ts) else ts[-1:]
        options["progress_meter"] = LogTimeProgressMeter(t0=ts[0], t_min=positive[0], t1=ts[-1])
    check_size = solver is None  # the default solver factors the Jacobian
    solver = default_solver() if solver is None else solver
    if not isinstance(solver, AbstractRosenbrock):
        # Rosenbrock solvers project themselves; any other solver is made to (isinstance sees
        # through a ProjectedSolver, so one passed in is not wrapped twice).
        solver = ProjectedSolver(solver)
    if not isinstance(adjoint, dfx.ForwardMode):
        # Its guard is a custom vjp, which forward mode cannot differentiate.
        solver = _FiniteGradientSolver(solver)
    tolerances = _tolerances(controller)
    traj = _solve(
        model, y0, ts, solver, controller, dt0, max_steps, options, tolerances, dense, check_size
    )
    if throw:
        if is_traced(traj.result):
            traj = traj.result.error_if(traj, ~traj.success)
        elif not bool(traj.success):
            raise RuntimeError(_failure_message(traj))
    return traj


@eqx.filter_jit
def _solve(
    model, y0, ts, solver, controller, dt0, max_steps, options, tolerances, dense, check_size
) -> Trajectory:
    """The solve and everything computed from it, in one compiled program: outside `jit`,
    each array operation on the result would be compiled on its own. `check_size`: refuse a
    dense Jacobian too large to factor (while tracing, so once per compilation)."""
    y, args = model.split(y0)
    if check_size:
        _check_jacobian_size(model, ts[0], y, args)
    finite = _finite_start(model, ts[0], y, args)
    sol = dfx.diffeqsolve(
        ModelTerm(model),
        solver,
        t0=ts[0],
        t1=ts[-1],
        dt0=dt0,
        y0=y,
        args=args,
        saveat=dfx.SaveAt(ts=ts, dense=dense),
        stepsize_controller=controller,
        max_steps=max_steps,
        throw=False,
        # A start that is NaN or inf ends the solve before its first step: every step from it
        # would be rejected, shrinking the step until max_steps ran out.
        event=dfx.Event(_StopIf(~finite)),
        **options,
    )
    # diffrax marks save times it never reached with inf.
    valid = jnp.isfinite(sol.ts)
    states = model.merge(mask_invalid(valid, sol.ys), args)
    return Trajectory(
        ts=ts,
        ys=states,
        risk=jax.vmap(model.risk)(states),
        residuals=jax.vmap(model.residuals)(states),
        valid=valid,
        result=_result(sol.result, finite),
        stats={k: sol.stats[k] for k in ("num_steps", "num_accepted_steps", "num_rejected_steps")},
        residual_labels=tuple(model.residual_labels),
        rtol=tolerances[0],
        atol=tolerances[1],
        dense=DenseOutput(sol.interpolation, model, args) if dense else None,
    )


def _check_options(solver, rtol, atol, dt0, max_steps, controller) -> int:
    """Validate the solver options before compiling; returns `max_steps` as an int."""
    if solver is not None and not isinstance(solver, dfx.AbstractSolver):
        raise ValueError(
            f"solver must be a diffrax solver instance such as sst.Rodas4(), got {solver!r}."
        )
    if controller is not None and not isinstance(controller, dfx.AbstractStepSizeController):
        raise ValueError(
            "stepsize_controller must be a diffrax step-size controller such as "
            f"diffrax.PIDController(rtol=1e-8, atol=1e-10), got {controller!r}."
        )
    if is_traced((rtol, atol)):
        raise ValueError(
            "rtol and atol must be concrete numbers (the trajectory records them as static "
            "fields); close over Python floats rather than pass them as arguments of jax.jit."
        )
    rtol_f, atol_f = float(rtol), float(atol)
    finite = math.isfinite(rtol_f) and math.isfinite(atol_f)
    if not finite or rtol_f < 0 or atol_f < 0 or rtol_f == atol_f == 0:
        raise ValueError(
            "rtol and atol must be finite and non-negative, and not both zero; got "
            f"rtol={rtol}, atol={atol} (the defaults are rtol=1e-8, atol=1e-10)."
        )
    if dt0 is not None and not is_traced(dt0):
        if not (math.isfinite(float(dt0)) and float(dt0) > 0):
            raise ValueError(
                f"dt0 must be a finite positive initial step (the solve runs forward in time), "
                f"or None to let the solver choose it; got {dt0}."
            )
    return check_count("max_steps", max_steps)


def _check_traced(model: AbstractModel, ts, dt0):
    """`ts` and `dt0`, checked when the program runs: traced (under jit, vmap, grad), the
    checks that guard against a silently wrong solve are `eqx.error_if`. A NaN eps or state is
    not one of them: the result says `nonfinite`."""
    ts = eqx.error_if(
        ts,
        ~jnp.all(jnp.isfinite(ts)) | jnp.any(jnp.diff(ts) <= 0),
        "ts must be finite and strictly increasing; sort it and drop duplicates.",
    )
    ts = eqx.error_if(
        ts,
        jnp.any(jnp.asarray(model.eps) < EPS_MIN * (1 - 1e-9)),
        f"eps is below the range sst supports, eps >= {EPS_MIN:g} (see sst.solve, 'Supported "
        f"eps'); use eps >= {EPS_MIN:g}.",
    )
    if is_traced(dt0):
        dt0 = eqx.error_if(
            dt0,
            ~(jnp.isfinite(dt0) & (dt0 > 0)),
            "dt0 must be a finite positive initial step, or None to let the solver choose it.",
        )
    return ts, dt0


class LogTimeProgressMeter(dfx.TqdmProgressMeter):
    """diffrax's tqdm progress meter, advancing in `log t` between `t_min > 0` and `t1`: a solve
    spends as long on each decade of time, so progress in `t` would sit at 0% for most of it."""

    t0: Float[Array, ""] = eqx.field(converter=jnp.asarray, default=0.0)
    t_min: Float[Array, ""] = eqx.field(converter=jnp.asarray, default=1e-8)
    t1: Float[Array, ""] = eqx.field(converter=jnp.asarray, default=1.0)

    def step(self, state, progress):
        t = self.t0 + progress * (self.t1 - self.t0)  # diffrax's progress is linear in t
        span = jnp.log(self.t1 / self.t_min)
        log_progress = jnp.clip(jnp.log(jnp.maximum(t, self.t_min) / self.t_min) / span, 0, 1)
        return super().step(state, jnp.where(span > 0, log_progress, progress))


#: The smallest eps `solve` and `solve_batch` accept (see `solve`, "Supported eps"): below it the
#: rounding floor of the risk (from second-layer weights beyond 1e12) passes 1e-10.
EPS_MIN = 1e-30


def check_eps(eps: Float[ArrayLike, ...]) -> None:
    """Raise `ValueError` if a concrete `eps` (any shape) lies below the supported range."""
    if is_traced(eps):
        return
    smallest = float(np.min(np.asarray(eps, dtype=float)))
    if smallest < EPS_MIN * (1 - 1e-9):  # 10.0**-30 rounds below 1e-30
        raise ValueError(
            f"eps = {smallest:.3g} is below the range sst supports, eps >= {EPS_MIN:g}: there "
            "the second-layer weights outgrow float64 and the risk's rounding errors pass 1e-10 "
            f"(see sst.solve, 'Supported eps'). Use eps >= {EPS_MIN:g}."
        )


def _finite_start(model: AbstractModel, t0, y: PyTree[Array], args) -> Bool[Array, ""]:
    """Whether the initial state, its rate and the model's parameters are all finite."""
    return _all_finite((y, model(t0, y, args), model.parameters()))


def _all_finite(tree: PyTree) -> Bool[Array, ""]:
    leaves = [x for x in jax.tree_util.tree_leaves(tree) if eqx.is_inexact_array(x)]
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


class _StopIf(eqx.Module):
    """The condition of a `diffrax.Event`: true from the start (and then the solve ends before
    its first step, with `diffrax.RESULTS.event_occurred`) or never."""

    stop: Bool[Array, ""]

    def __call__(self, t, y, args, **kwargs):
        return self.stop


def _result(result: dfx.RESULTS, finite: Bool[Array, ""]) -> RESULTS:
    """The result code: diffrax's, or `nonfinite` where the start was not finite (which ends the
    solve at once, as an event)."""
    failure = RESULTS.where(
        result == dfx.RESULTS.max_steps_reached,
        RESULTS.max_steps_reached,
        RESULTS.solver_failed,
    )
    code = RESULTS.where(result == dfx.RESULTS.successful, RESULTS.successful, failure)
    return RESULTS.where(finite, code, RESULTS.nonfinite)


def _tolerances(controller: dfx.AbstractStepSizeController) -> tuple[float, float]:
    """The `(rtol, atol)` of an adaptive controller (diffrax's clipping wrapper and
    `ModelErrorController` hand on those of the controller inside), `nan` for any other."""
    if isinstance(controller, dfx.AbstractAdaptiveStepSizeController):
        return float(controller.rtol), float(controller.atol)
    return math.nan, math.nan


# Beyond this many unknowns a dense Jacobian and its LU per step (O(n^3)) are impractical.
MAX_DENSE_UNKNOWNS = 2500


def _check_jacobian_size(model: AbstractModel, t0, y, args) -> None:
    n = sum(x.size for x in jax.tree_util.tree_leaves(y))
    # The default solver factors a StiffJacobian's exact (dense) Jacobian: it is not a W-method.
    if n > MAX_DENSE_UNKNOWNS and isinstance(
        jax.eval_shape(model.jacobian, t0, y, args), (DenseJacobian, StiffJacobian)
    ):
        raise ValueError(
            f"The default stiff solver would factor a dense {n} x {n} Jacobian at every step. "
            "Pass an explicit solver for non-stiff settings (e.g. solver=diffrax.Tsit5() when "
            "eps is not small), use fewer particles, or for MeanFieldODE a polynomial "
            "activation (structured O(m K^2) solves)."
        )


def _failure_message(traj: Trajectory) -> str:
    reached = np.asarray(traj.ts)[np.asarray(traj.valid)]
    where = f"up to t = {reached[-1]:.6g}" if reached.size else "before the first save time"
    return (
        f"sst.solve failed after {int(traj.stats['num_steps'])} steps "
        f"({int(traj.stats['num_rejected_steps'])} rejected), valid {where} of "
        f"[{float(traj.ts[0]):.6g}, {float(traj.ts[-1]):.6g}]: {RESULTS[traj.result]}. Pass "
        "throw=False to inspect the partial trajectory (rows after the failure are NaN and "
        "masked by Trajectory.valid)."
    )
