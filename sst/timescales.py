"""Time-scale analysis of trajectories (THEORY.md section 6).

- `crossing_time`, `learning_times`: when each Hermite component of the target is learned.
- `detect_phases`: the plateaus and drops of the risk on log time.
- `fit_exponent`, `fit_scalings`, `local_exponents`: fitted exponents `d log t_k / d log eps`
  of an eps sweep, with their uncertainty, compared with the heuristic scalings of THEORY.md
  section 6.

The residuals `r_k` these functions read are the projections of the target minus the network
function on `h_k(<u*, x>)`; `sst.solve` computes them exactly for any activation, closed-form
kernels included (`r_k = phi_k - sigma_k m_k`, THEORY.md section 5).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from jaxtyping import ArrayLike, Float

# A degree counts as carried by the residuals when |r_k(0)| exceeds this fraction of |r(0)|:
# degrees absent from the target start at zero up to rounding, and have no learning time.
_PRESENT = 1e-10

#: Heuristic exponents `t_k ~ eps^HEURISTIC_EXPONENTS[k]` for a bounded law of `a(0)` and
#: `s(0) = 0` (THEORY.md section 6); degree 1 carries an extra factor `log(1/eps)`.
HEURISTIC_EXPONENTS: dict[int, float] = {0: 1.0, 1: 0.5, 2: 0.25}
#: Degrees whose heuristic scaling carries a factor `log(1/eps)`.
LOG_FACTOR_DEGREES: frozenset[int] = frozenset({1})


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

    `fraction=0.5` is "half learned", `0.9` is "90% learned" (THEORY.md section 6). Degrees whose
    initial residual is zero up to rounding (absent from the target, or fitted by the initial
    network) get `nan`, and so do degrees not learned by `ts[-1]`.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must lie strictly between 0 and 1, got {fraction}.")
    r2 = np.asarray(residuals, dtype=float) ** 2
    out = np.full(r2.shape[1], np.nan)
    present = r2[0] > _PRESENT**2 * np.sum(r2[0])
    for k in np.nonzero(present)[0]:
        out[k] = crossing_time(ts, r2[:, k], (1.0 - fraction) * r2[0, k])
    return out


@dataclasses.dataclass(frozen=True)
class Phase:
    """One phase of a learning curve: a `"plateau"` or a `"drop"` of the risk on log time.

    **Fields:** `kind`, the interval `[t_start, t_end]`, and the risk at both ends.
    """

    kind: str
    t_start: float
    t_end: float
    risk_start: float
    risk_end: float


def detect_phases(
    ts: Float[ArrayLike, " T"],
    risk: Float[ArrayLike, " T"],
    *,
    rate_threshold: float = 0.02,
    min_drop: float = 0.01,
    min_plateau_decades: float = 0.25,
) -> list[Phase]:
    """Split a learning curve into plateaus and drops on log time (THEORY.md section 6).

    The rate of learning is `-dR / d log10(t)` divided by the total decrease of the risk over the
    curve: a drop is a maximal interval where it exceeds `rate_threshold` (a fraction of the total
    decrease per decade of time), a plateau is what lies between. Measuring the rate against the
    total decrease, rather than the current risk, keeps a small early drop (degree 0) visible
    and does not call the exponential tail of a learned target an endless drop.

    **Arguments:**

    - `ts`, `risk`: the curve; times `<= 0` and non-finite values are ignored.
    - `rate_threshold`: drop/plateau boundary, fraction of the total decrease per decade.
    - `min_drop`: drops losing less than this fraction of the total decrease become plateau.
    - `min_plateau_decades`: plateaus shorter than this (in decades) between two drops are
      merged into one drop.

    **Returns:** the phases in time order, covering the valid part of the curve; empty if fewer
    than three valid points, a single plateau if the risk does not decrease.
    """
    ts = np.asarray(ts, dtype=float)
    risk = np.asarray(risk, dtype=float)
    if ts.shape != risk.shape or ts.ndim != 1:
        raise ValueError(
            f"ts and risk must be 1-d arrays of the same length, got {ts.shape} and {risk.shape}."
        )
    keep = (ts > 0) & np.isfinite(risk)
    ts, risk = ts[keep], risk[keep]
    if ts.size < 3:
        return []
    total = risk[0] - np.min(risk)
    if total <= 0:
        return [Phase("plateau", ts[0], ts[-1], risk[0], risk[-1])]
    rate = -np.gradient(risk, np.log10(ts)) / total
    fast = rate > rate_threshold
    # Runs of fast points, as [start, end] index pairs (inclusive).
    edges = np.diff(np.concatenate([[0], fast.astype(int), [0]]))
    starts, ends = np.nonzero(edges == 1)[0], np.nonzero(edges == -1)[0] - 1
    runs = [[s, e] for s, e in zip(starts, ends, strict=True)]
    logt = np.log10(ts)
    merged: list[list[int]] = []
    for run in runs:
        if merged and logt[run[0]] - logt[merged[-1][1]] < min_plateau_decades:
            merged[-1][1] = run[1]
        else:
            merged.append(run)
    drops = [(s, e) for s, e in merged if risk[s] - risk[e] >= min_drop * total]
    phases: list[Phase] = []
    cursor = 0
    for s, e in drops:
        if s > cursor:
            phases.append(Phase("plateau", ts[cursor], ts[s], risk[cursor], risk[s]))
        phases.append(Phase("drop", ts[s], ts[e], risk[s], risk[e]))
        cursor = e
    if cursor < ts.size - 1:
        phases.append(Phase("plateau", ts[cursor], ts[-1], risk[cursor], risk[-1]))
    return [dataclasses.replace(p, **_floats(p)) for p in phases]


def _floats(p: Phase) -> dict[str, float]:
    return {f: float(getattr(p, f)) for f in ("t_start", "t_end", "risk_start", "risk_end")}


@dataclasses.dataclass(frozen=True)
class ScalingFit:
    """A fitted power law `t = prefactor * eps^exponent` (times `log(1/eps)` if `log_factor`).

    **Fields:** `exponent` and its standard error `stderr` (`nan` from two points),
    `prefactor`, `log_factor`, the number of points `n` used, and `heuristic`, the exponent of
    THEORY.md section 6 for this degree (`nan` where none is stated).
    """

    exponent: float
    stderr: float
    prefactor: float
    log_factor: bool
    n: int
    heuristic: float = float("nan")

    def predict(self, eps: Float[ArrayLike, " N"]) -> Float[np.ndarray, " N"]:
        """The fitted time at each `eps`."""
        eps = np.asarray(eps, dtype=float)
        t = self.prefactor * eps**self.exponent
        return t * np.log(1.0 / eps) if self.log_factor else t


def fit_exponent(
    eps: Float[ArrayLike, " N"], times: Float[ArrayLike, " N"], *, log_factor: bool = False
) -> ScalingFit:
    """Least-squares slope of `log t` against `log eps`: the exponent `d log t / d log eps`.

    With `log_factor=True` the fit is of `log(t / log(1/eps))`, which accounts for the
    logarithmic factor of the degree-1 heuristic `t_1 ~ eps^(1/2) log(1/eps)` (THEORY.md
    section 6). Points with a non-finite or non-positive time are left out.

    **Returns:** a `ScalingFit`; its `stderr` is the standard error of the slope from the
    residuals of the fit (`nan` with exactly two points). It is statistical only: see
    `local_exponents` for the drift due to corrections to scaling.
    """
    eps = np.asarray(eps, dtype=float)
    times = np.asarray(times, dtype=float)
    if eps.shape != times.shape or eps.ndim != 1:
        raise ValueError(
            f"eps and times must be 1-d arrays of the same length, got {eps.shape} and "
            f"{times.shape}."
        )
    if np.any(~np.isfinite(eps)) or np.any(eps <= 0) or (log_factor and np.any(eps >= 1)):
        raise ValueError(
            "eps must be finite and positive (and below 1 with log_factor=True, where "
            f"log(1/eps) > 0); got {eps}."
        )
    ok = np.isfinite(times) & (times > 0)
    if np.count_nonzero(ok) < 2 or np.unique(eps[ok]).size < 2:
        raise ValueError(
            "fit_exponent needs finite positive times at two or more distinct eps; got "
            f"{np.count_nonzero(ok)} usable points. Extend t_max so the components are learned."
        )
    x = np.log(eps[ok])
    y = np.log(times[ok])
    if log_factor:
        y = y - np.log(np.log(1.0 / eps[ok]))
    n = x.size
    xc = x - x.mean()
    slope = float(np.sum(xc * (y - y.mean())) / np.sum(xc**2))
    intercept = float(y.mean() - slope * x.mean())
    if n > 2:
        resid = y - (intercept + slope * x)
        stderr = float(np.sqrt(np.sum(resid**2) / (n - 2) / np.sum(xc**2)))
    else:
        stderr = float("nan")
    return ScalingFit(slope, stderr, float(np.exp(intercept)), log_factor, n)


def local_exponents(
    eps: Float[ArrayLike, " N"], times: Float[ArrayLike, " N"], *, log_factor: bool = False
) -> Float[np.ndarray, " N-1"]:
    """Slopes `d log t / d log eps` between successive points of a sweep (sorted by eps).

    The standard error of `fit_exponent` is statistical only; a drift of these local slopes
    towards small eps shows the systematic part (corrections to scaling), and their value at
    the smallest eps is the best estimate of the asymptotic exponent. `log_factor` as in
    `fit_exponent`; non-finite times give `nan` slopes.
    """
    eps = np.asarray(eps, dtype=float)
    order = np.argsort(eps)[::-1]
    eps = eps[order]
    times = np.asarray(times, dtype=float)[order]
    y = np.log(np.where(times > 0, times, np.nan))
    if log_factor:
        y = y - np.log(np.log(1.0 / eps))
    return np.diff(y) / np.diff(np.log(eps))


def fit_scalings(
    eps: Float[ArrayLike, " N"], times: Float[ArrayLike, "N R"]
) -> dict[int, ScalingFit]:
    """Fit `d log t_k / d log eps` for every degree `k` with at least two learning times.

    `times[i, k]` is the learning time of degree `k` at `eps[i]` (from `learning_times`).
    Degree 1 is fitted with the `log(1/eps)` factor removed (THEORY.md section 6); each fit
    carries the heuristic exponent of its degree for comparison.

    **Returns:** `{degree: ScalingFit}` for the degrees that could be fitted.
    """
    times = np.asarray(times, dtype=float)
    eps = np.asarray(eps, dtype=float)
    if times.ndim != 2 or times.shape[0] != eps.shape[0]:
        raise ValueError(
            f"times must have shape (len(eps), R) = ({eps.shape[0]}, R), got {times.shape}."
        )
    fits = {}
    for k in range(times.shape[1]):
        ok = np.isfinite(times[:, k]) & (times[:, k] > 0)
        if np.unique(eps[ok]).size < 2:
            continue
        fit = fit_exponent(eps, times[:, k], log_factor=k in LOG_FACTOR_DEGREES)
        fits[k] = dataclasses.replace(fit, heuristic=HEURISTIC_EXPONENTS.get(k, float("nan")))
    return fits
