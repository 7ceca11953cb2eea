"""Differentiable scalar functionals of a trajectory, and which adjoint to differentiate with.

`sst.solve` is a pure diffrax solve, so `jax.grad` and `jax.jvp` of any scalar function of its
`Trajectory` go through it, with respect to `eps`, the Hermite coefficients of the target or
activation and the initial state. This module provides the functionals people differentiate:

- `risk_at`: the risk at a time (interpolated in log time between saves);
- `log_time_area`: the area under the risk curve against `log t`, which weighs every time scale
  (every plateau and drop of THEORY.md section 6) equally;
- `hitting_time`: the first time the risk falls to a level, a differentiable event.

**Which adjoint.**

- Reverse mode (`jax.grad`, `jax.vjp`): the default `diffrax.RecursiveCheckpointAdjoint`,
  i.e. differentiate through the solver's own operations. The gradient is exact for the discrete
  solve, costs a small multiple of the forward solve and stores only checkpoints.
  `diffrax.BacksolveAdjoint` is *not* suitable here: it re-integrates the state backwards in
  time, and the fast second layer, strongly contracting forwards (rates up to `U(1)/eps`,
  THEORY.md section 8), is strongly expanding backwards, so the reconstructed state (and the
  gradient) blows up unless eps is large.
- Forward mode (`jax.jvp`, `jax.jacfwd`): pass `adjoint=diffrax.ForwardMode()` to `sst.solve`;
  the recursive-checkpoint adjoint only supports reverse mode. Forward mode is cheaper when there
  are fewer inputs than outputs (one direction in parameter space, a whole risk curve out).

**Accuracy.** Derivatives of the discrete solve differ from those of the exact flow by about the
solver tolerance; at `rtol = 1e-10` they match central finite differences to relative 1e-5
(tests/test_grad.py).
"""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from .solve import Trajectory


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

    The risk curve of THEORY.md section 6 drops on geometrically spaced time scales, so this is
    the natural "total time spent not knowing the target" and is smooth in every parameter.
    Use a save grid uniform in `log t` for a meaningful quadrature.
    """
    ts, risk = traj.ts, traj.risk
    logt = _log_time(ts)
    both_positive = (ts[:-1] > 0) & (ts[1:] > 0)
    pieces = 0.5 * (risk[:-1] + risk[1:]) * jnp.diff(logt)
    return jnp.sum(jnp.where(both_positive, pieces, 0.0))


def hitting_time(traj: Trajectory, level: Float[ArrayLike, ""]) -> Float[Array, ""]:
    """First time the risk falls to `level`, a differentiable event.

    The crossing is located between the two bracketing saves and interpolated linearly in the
    risk and in `log t` (the same convention as `sst.crossing_time`; linearly in `t` if the left
    save is at `t = 0`). Its derivative is the implicit-function-theorem derivative of that
    interpolant: `dt*/dp = -(dR/dp)/(dR/dt)` with both read off the bracketing saves, so it is
    accurate when the save grid resolves the drop (a dense grid in `log t`). The index of the
    bracketing interval is piecewise constant in the parameters.

    Returns `ts[0]` if the risk starts at or below `level` and NaN if it never gets there
    (including when the solve failed before reaching it).
    """
    ts, risk = traj.ts, traj.risk
    level = jnp.asarray(level, dtype=risk.dtype)
    below = risk <= level
    j = jnp.clip(jnp.argmax(below), 1, ts.shape[0] - 1)
    r0, r1 = risk[j - 1], risk[j]
    frac = (r0 - level) / jnp.where(r0 == r1, 1.0, r0 - r1)
    logt = _log_time(ts)
    in_log = jnp.exp(logt[j - 1] + frac * (logt[j] - logt[j - 1]))
    in_lin = ts[j - 1] + frac * (ts[j] - ts[j - 1])
    t_hit = jnp.where(ts[j - 1] > 0, in_log, in_lin)
    t_hit = jnp.where(below[0], ts[0], t_hit)
    return jnp.where(jnp.any(below), t_hit, jnp.nan)
