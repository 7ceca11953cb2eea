"""Differentiable scalar functionals of a trajectory, and which adjoint to differentiate with.

`sst.solve` is a pure diffrax solve, so `jax.grad` and `jax.jvp` of any scalar function of its
`Trajectory` go through it, with respect to `eps`, the Hermite coefficients of the target or
activation and the initial state. This module provides the functionals people differentiate:

- `risk_at`: the risk at a time (interpolated in log time between saves);
- `log_time_area`: the area under the risk curve against `log t`, which weighs every time scale
  (every plateau and drop, docs: [time scales][time-scales]) equally;
- `hitting_time`: the first time the risk falls to a level, a differentiable event (located on
  the solver's dense output when the trajectory keeps it).

**Which adjoint.**

- Reverse mode (`jax.grad`, `jax.vjp`): `diffrax.RecursiveCheckpointAdjoint`, i.e.
  differentiate through the solver's own operations; the gradient is exact for the discrete
  solve. `grad_adjoint()` gives it enough checkpoints (one per step for the first 1024 steps) that
  the backward pass recomputes nothing: the states here are small (`2m` numbers), so memory is
  cheap. Beyond that many steps the checkpoints are reused (treeverse). `benchmarks/batch.py`
  measures the cost of a gradient relative to the forward solve.
- Forward mode (`jax.jvp`, `jax.jacfwd`): pass `adjoint=grad_adjoint("forward")`
  (`diffrax.ForwardMode()`) to `sst.solve`; the recursive-checkpoint adjoint only supports
  reverse mode. Forward mode is cheaper when there are fewer inputs than outputs (one direction
  in parameter space, a whole risk curve out).

**Accuracy.** Derivatives of the discrete solve differ from those of the exact flow by about the
solver tolerance; at `rtol = 1e-9` they match central finite differences to relative 1e-5
(tests/test_grad.py).
"""

from __future__ import annotations

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from ._model import AbstractModel
from ._solution import DenseOutput, Trajectory


def grad_adjoint(mode: str = "reverse", checkpoints: int = 1024) -> dfx.AbstractAdjoint:
    """The adjoint to pass to `sst.solve` for differentiating a trajectory (see above).

    **Arguments:** `mode` is `"reverse"` (for `jax.grad`, `jax.vjp`, `jax.jacrev`) or `"forward"`
    (for `jax.jvp`, `jax.jacfwd`); `checkpoints` bounds the steps stored in reverse mode.
    """
    if mode == "reverse":
        return dfx.RecursiveCheckpointAdjoint(checkpoints=checkpoints)
    if mode == "forward":
        return dfx.ForwardMode()
    raise ValueError(f"mode must be 'reverse' or 'forward', got {mode!r}.")


def _log_time(ts: Array) -> Array:
    # Saves at t = 0 have no log time; they are masked out by the callers.
    return jnp.log(jnp.where(ts > 0, ts, 1.0))


def risk_at(traj: Trajectory, t: Float[ArrayLike, ""]) -> Float[Array, ""]:
    """The risk at time `t`, interpolated linearly in `log t` between the bracketing saves.

    Exact (the solver's own value) when `t` is a save time; `t` must lie in `[ts[0], ts[-1]]`
    and the interval holding it must have a positive left end unless `t` is a save time.
    Differentiable with respect to everything the trajectory depends on (and to `t`).
    """
    ts, risk = traj.ts, traj.risk
    t = jnp.asarray(t, dtype=ts.dtype)
    j = jnp.clip(jnp.searchsorted(ts, t, side="right"), 1, ts.shape[0] - 1)
    logt = _log_time(ts)
    t0, t1 = logt[j - 1], logt[j]
    frac = jnp.where(t == ts[j - 1], 0.0, (jnp.log(jnp.maximum(t, ts[0])) - t0) / (t1 - t0))
    return risk[j - 1] + jnp.clip(frac, 0.0, 1.0) * (risk[j] - risk[j - 1])


def log_time_area(traj: Trajectory) -> Float[Array, ""]:
    """`int R(t) d log t` over the saves with `t > 0` (trapezoidal rule in `log t`).

    The risk curve of the docs' [time scales][time-scales] drops on geometrically spaced time
    scales, so this is
    the natural "total time spent not knowing the target" and is smooth in every parameter.
    Use a save grid uniform in `log t` for a meaningful quadrature.
    """
    ts, risk = traj.ts, traj.risk
    logt = _log_time(ts)
    both_positive = (ts[:-1] > 0) & (ts[1:] > 0)
    pieces = 0.5 * (risk[:-1] + risk[1:]) * jnp.diff(logt)
    return jnp.sum(jnp.where(both_positive, pieces, 0.0))


def hitting_time(
    traj: Trajectory, level: Float[ArrayLike, ""], model: AbstractModel | None = None
) -> Float[Array, ""]:
    """First time the risk falls to `level`, a differentiable event.

    The crossing is bracketed by the first save at or below `level` and the save before it.

    - With the solver's dense output (`sst.solve(..., dense=True)`) it is located on the dense
      output, to the solver's tolerance whatever the save grid: bisection in `log t` (in `t`
      while the left end is `t = 0`), then one Newton step with the exact rate `dR/dt` of
      `DenseOutput.risk_rate`. `model` is not needed (the dense output carries the solved one).
    - Otherwise it is interpolated between the two saves in `log t` (in `t` if the left save is
      at `t = 0`): without `model`, linearly in the risk (as `crossing_time`), second-order
      accurate in the save spacing and its derivative only first-order; with the `model` that
      produced `traj`, by the cubic Hermite interpolant built from the risk and its exact rate
      `dR/dt = grad R . f` at both saves, fourth-order accurate and its derivative third-order.

    The derivative is that of the implicit function theorem, `dt*/dp = -(dR/dp)/(dR/dt)` at the
    crossing of the dense output or of the interpolant: the crossing is found under
    `stop_gradient` and one final Newton step carries the derivative. The bracketing saves are
    piecewise constant in the parameters.

    Returns `ts[0]` if the risk starts at or below `level` and NaN if it never gets there
    (including when the solve failed before reaching it).
    """
    if traj.ts.ndim != 1:
        raise ValueError(
            f"hitting_time needs a single trajectory, got a batch of {traj.ts.shape[0]}; pass "
            "traj[i], or jax.vmap over members."
        )
    if traj.dense is not None:
        return _dense_crossing(traj, level)
    rate = None
    if model is not None:

        def rate(i):
            state = traj.state(i)
            return jax.jvp(model.risk, (state,), (model.rate(traj.ts[i], state),))[1]

    return _crossing(traj.ts, traj.risk, level, rate)


def _dense_crossing(traj: Trajectory, level) -> Array:
    """`hitting_time` on the dense output (see there)."""
    # Imported here: the time-scale module builds on this one.
    from ._timescales import _bisect

    ts, risk, dense = traj.ts, traj.risk, traj.dense
    level = jnp.asarray(level, dtype=risk.dtype)
    below = risk <= level
    j = jnp.clip(jnp.argmax(below), 1, ts.shape[0] - 1)
    arrays, static = eqx.partition(dense, eqx.is_inexact_array)
    fixed = eqx.combine(jax.lax.stop_gradient(arrays), static)
    t0 = _bisect(
        _risk_excess, fixed, ts[j - 1][None], ts[j][None], jax.lax.stop_gradient(level)[None]
    )[0]
    slope = jax.lax.stop_gradient(dense.risk_rate(t0))
    t_hit = t0 - (dense.risk(t0) - level) / jnp.where(slope == 0, 1.0, slope)
    t_hit = jnp.where(below[0], ts[0], t_hit)
    return jnp.where(jnp.any(below), t_hit, jnp.nan)


def _risk_excess(dense: DenseOutput, t, level) -> Float[Array, ""]:
    """`R(t) - level`: positive before the risk reaches `level`."""
    return dense.risk(t) - level


def crossing_time(
    ts: Float[ArrayLike, " T"], values: Float[ArrayLike, " T"], level: Float[ArrayLike, ""]
) -> Float[Array, ""]:
    """First time at which `values` falls to `level` or below, interpolated linearly in log time
    (in `t` if the left save is at `t = 0`); differentiable.

    Returns NaN if the level is never reached on the grid (and `ts[0]` if it starts below it).
    Interpolating in log time matches how learning curves are read: drops happen over a fixed
    factor of time, not a fixed interval.
    """
    return _crossing(jnp.asarray(ts, dtype=float), jnp.asarray(values, dtype=float), level, None)


def _crossing(ts: Array, values: Array, level, rate) -> Array:
    """The crossing of `values` with `level`; with `rate(i)` (`d values / dt` at save `i`) by the
    cubic Hermite interpolant, else linearly (see `hitting_time`)."""
    level = jnp.asarray(level, dtype=values.dtype)
    below = values <= level
    j = jnp.clip(jnp.argmax(below), 1, ts.shape[0] - 1)
    in_log = ts[j - 1] > 0
    u = jnp.where(in_log, _log_time(ts), ts)
    u0, du = u[j - 1], u[j] - u[j - 1]
    r0, r1 = values[j - 1] - level, values[j] - level
    if rate is None:
        slopes = (r1 - r0, r1 - r0)
    else:
        # d values / du on the unit interval: dR/dt * dt/du * du, with dt/du = t in log time.
        slopes = tuple(rate(i) * jnp.where(in_log, ts[i], 1.0) * du for i in (j - 1, j))

    def cubic(x):
        # Cubic Hermite interpolant of values - level on x in [0, 1], and its derivative.
        h00, h10, h01, h11 = (
            2 * x**3 - 3 * x**2 + 1,
            x**3 - 2 * x**2 + x,
            -2 * x**3 + 3 * x**2,
            x**3 - x**2,
        )
        d00, d10, d01, d11 = (
            6 * x**2 - 6 * x,
            3 * x**2 - 4 * x + 1,
            -6 * x**2 + 6 * x,
            3 * x**2 - 2 * x,
        )
        value = h00 * r0 + h10 * slopes[0] + h01 * r1 + h11 * slopes[1]
        return value, d00 * r0 + d10 * slopes[0] + d01 * r1 + d11 * slopes[1]

    safe = jnp.where(r0 == r1, 1.0, r0 - r1)
    x = jax.lax.stop_gradient(jnp.clip(r0 / safe, 0.0, 1.0))
    for _ in range(_NEWTON_ITERATIONS if rate is not None else 0):
        value, slope = jax.lax.stop_gradient(cubic(x))
        x = jnp.clip(x - value / jnp.where(slope == 0, 1.0, slope), 0.0, 1.0)
    value, slope = cubic(x)
    x = x - value / jnp.where(slope == 0, 1.0, slope)
    u_hit = u0 + x * du
    t_hit = jnp.where(in_log, jnp.exp(u_hit), u_hit)
    t_hit = jnp.where(below[0], ts[0], t_hit)
    return jnp.where(jnp.any(below), t_hit, jnp.nan)


# Newton on a cubic from the linear interpolant's root: converged to machine precision in a few.
_NEWTON_ITERATIONS = 8
