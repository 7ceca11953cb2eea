"""Designing the activation by gradient descent through the learning dynamics (with optax).

The learning curve depends smoothly on the activation's Hermite coefficients `sigma_k`
(docs: [time scales][time-scales]): `sigma_k` sets the rate at which degree `k` of the target is
learned. `optimize_activation` minimises a differentiable functional of the trajectory over the
coefficients with their norm `|sigma|` held fixed (a larger activation trivially learns faster):
the coefficients are `|sigma| v / |v|` and Adam updates `v`.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, ArrayLike, Float, PyTree

from ._functionals import hitting_time, log_time_area, risk_at
from ._hermite import Hermite
from ._problem import AbstractProblemModel
from ._solution import Trajectory
from ._solve import solve

OBJECTIVES = ("risk", "area", "time")


class OptimizeResult(eqx.Module):
    """Outcome of `optimize_activation`.

    **Fields:** `initial` and `final` activations (`Hermite`, same norm), `losses` the objective
    at each step `(steps + 1,)` (the last after the final update), `before` and `after` the
    trajectories of the two activations.
    """

    initial: Hermite
    final: Hermite
    losses: Float[Array, " S"]
    before: Trajectory
    after: Trajectory


def _objective(kind: str, traj: Trajectory, model: AbstractProblemModel, t: float, level: float):
    if kind == "risk":
        return risk_at(traj, t)
    if kind == "area":
        return log_time_area(traj)
    return jnp.log(hitting_time(traj, level, model))


def optimize_activation(
    model: AbstractProblemModel,
    y0: PyTree,
    ts: Float[ArrayLike, " T"],
    *,
    objective: str = "risk",
    t: float | None = None,
    level: float | None = None,
    steps: int = 40,
    learning_rate: float = 0.05,
    **solve_options,
) -> OptimizeResult:
    """Optimise the activation's Hermite coefficients at fixed norm with Adam (optax).

    **Arguments:**

    - `model`: a model of a `Problem` (`sst.MeanFieldODE`, `sst.FiniteDimODE`, for a target of
      one direction or of `k`) with the initial activation (a finite Hermite series); each step
      solves `model.with_parameters(activation=sigma)`.
    - `y0`, `ts`: initial state (particles or network) and save times of the solve.
    - `objective`: `"risk"` (risk at time `t`, default `ts[-1]`), `"area"` (area under the risk
      against `log t`) or `"time"` (log of the first time the risk reaches `level`; use a save
      grid dense in `log t`).
    - `steps`, `learning_rate`: Adam iterations and step size.
    - `solve_options`: passed to `sst.solve` (tolerances, solver, ...).

    **Returns:** an `OptimizeResult`. Steps whose solve failed (non-finite loss or gradient) are
    skipped by `optax.apply_if_finite` and reported as NaN in `losses`.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}.")
    if not isinstance(model, AbstractProblemModel):
        raise ValueError(
            "model must be a model of a Problem (e.g. sst.MeanFieldODE(problem)), got "
            f"{type(model).__name__}."
        )
    activation = model.problem.activation
    if not activation.is_polynomial:
        raise ValueError(
            "optimize_activation changes the activation's Hermite coefficients, so the activation "
            "must be a finite series: use sst.Hermite(coeffs), e.g. relu's truncated coeffs."
        )
    if objective == "time" and level is None:
        raise ValueError("objective='time' needs the risk level to reach, e.g. level=0.1.")
    ts = jnp.asarray(ts, dtype=float)
    t = float(ts[-1]) if t is None else t
    sigma0 = activation.coeffs
    norm = jnp.linalg.norm(sigma0)
    solve_options = {**solve_options, "throw": False}

    def trajectory(v):
        changed = model.with_parameters(activation=norm * v / jnp.linalg.norm(v))
        return changed, solve(changed, y0, ts, **solve_options)

    def loss(v):
        changed, traj = trajectory(v)
        return _objective(objective, traj, changed, t, level)

    optimiser = optax.apply_if_finite(optax.adam(learning_rate), max_consecutive_errors=5)
    value_and_grad = eqx.filter_jit(jax.value_and_grad(loss))
    v = sigma0
    state = optimiser.init(v)
    losses = []
    for _ in range(steps):
        value, grad = value_and_grad(v)
        losses.append(float(value))
        updates, state = optimiser.update(grad, state, v)
        v = optax.apply_updates(v, updates)
    losses.append(float(eqx.filter_jit(loss)(v)))
    final = Hermite(norm * v / jnp.linalg.norm(v))
    return OptimizeResult(
        initial=activation,
        final=final,
        losses=jnp.asarray(np.where(np.isfinite(losses), losses, np.nan)),
        before=eqx.filter_jit(lambda: trajectory(sigma0)[1])(),
        after=eqx.filter_jit(lambda: trajectory(v)[1])(),
    )
