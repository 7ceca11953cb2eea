"""Time-scale analysis of trajectories: when each Hermite component of the target is learned."""

from __future__ import annotations

import numpy as np
from jaxtyping import ArrayLike, Float


def crossing_time(
    ts: Float[ArrayLike, " T"], values: Float[ArrayLike, " T"], level: float
) -> float:
    """First time at which `values` falls to `level` or below, interpolated linearly in log time.

    Returns `nan` if the level is never reached on the grid (and `ts[0]` if it starts below it).
    Interpolating in log time matches how learning curves are read: drops happen over a fixed
    factor of time, not a fixed interval.
    """
    ts = np.asarray(ts, dtype=float)
    values = np.asarray(values, dtype=float)
    below = np.nonzero(values <= level)[0]
    if below.size == 0:
        return float("nan")
    j = int(below[0])
    if j == 0:
        return float(ts[0])
    t0, t1, v0, v1 = ts[j - 1], ts[j], values[j - 1], values[j]
    frac = (v0 - level) / (v0 - v1)
    if t0 > 0:
        return float(np.exp(np.log(t0) + frac * (np.log(t1) - np.log(t0))))
    return float(t0 + frac * (t1 - t0))


def learning_times(
    ts: Float[ArrayLike, " T"], residuals: Float[ArrayLike, "T R"], fraction: float = 0.5
) -> Float[np.ndarray, " R"]:
    """For each Hermite degree `k`, the time when `r_k^2` has lost `fraction` of its initial value.

    `fraction=0.5` is "half learned", `0.9` is "90% learned" (THEORY.md section 7). Degrees whose
    initial residual is zero (absent from the target) get `nan`.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must lie strictly between 0 and 1, got {fraction}.")
    r2 = np.asarray(residuals, dtype=float) ** 2
    out = np.full(r2.shape[1], np.nan)
    for k in range(r2.shape[1]):
        if r2[0, k] > 0:
            out[k] = crossing_time(ts, r2[:, k], (1.0 - fraction) * r2[0, k])
    return out
