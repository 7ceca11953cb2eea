"""Time-scale analysis of trajectories (docs: [time scales][time-scales]).

- `learning_times`: when each residual `r_alpha` (each Hermite degree, or each multi-index of a
  target of `k` directions) is learned; `label_name` names a residual label.
- `detect_phases`: the plateaus and drops of the risk on log time.
- `fit_exponent`, `fit_scalings`, `local_exponents`: fitted exponents `d log t_alpha / d log eps`
  of an eps sweep, with their uncertainty, compared with the heuristic scalings `t_l ~ eps^(1/(2l))`
  (docs: [time scales][time-scales]).

The residuals `r_alpha` these functions read are the projections of the target minus the network
function on `h_alpha(U*^T x)`, labelled by `Trajectory.residual_labels` (multi-indices; `(l,)` is
degree `l` of a single-index target); `sst.solve` computes them exactly for any activation,
closed-form kernels included (docs: [the mean-field ODE][mean-field-ode]).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Sequence

import numpy as np
from jaxtyping import ArrayLike, Bool, Float

from ._functionals import crossing_time
from ._solution import Trajectory
from ._target import format_index

# A label counts as carried by the residuals when |r_alpha(0)| exceeds this fraction of |r(0)|:
# labels absent from the target start at zero up to rounding, and have no learning time.
_PRESENT = 1e-10

#: Degrees whose heuristic scaling carries a factor `log(1/eps)`.
LOG_FACTOR_DEGREES: frozenset[int] = frozenset({1})


def heuristic_exponent(degree: int) -> float:
    """The exponent of `t_l ~ eps^(1/(2l))` for a bounded law of `a(0)` and `s(0) = 0`
    (docs: [time scales][time-scales]): 1 for degree 0 (learned at `t ~ eps`), `1/(2l)` for `l >= 1`
    (degree 1 with an extra factor `log(1/eps)`)."""
    return 1.0 if degree == 0 else 1.0 / (2 * degree)


def label_name(label: Hashable) -> str:
    """The name of a residual label in figures, summaries and messages: `"degree l"` for the
    degree `(l,)` of a single direction, `sst.format_index` otherwise (`"z1 z2"` for
    `(1, 1, 0)`); a label that is not a multi-index (a model's own) as `str`."""
    if isinstance(label, tuple) and len(label) == 1:
        return f"degree {label[0]}"
    return format_index(label) if isinstance(label, tuple) else str(label)


def learning_times(traj: Trajectory, fraction: float = 0.5) -> Float[np.ndarray, " R"]:
    """For each residual `r_alpha` of `traj` (column `j` is labelled `traj.residual_labels[j]`:
    the degrees `(0,), (1,), ...` of a single-index target, the multi-indices of a target of `k`
    directions), the time when `r_alpha^2` has lost `fraction` of its initial value.

    `fraction=0.5` is "half learned", `0.9` is "90% learned" (docs: [time scales][time-scales]).
    Residuals whose initial value is zero up to rounding (absent from the target, or fitted by
    the initial network) get `nan`, and so do those not learned by the last valid save. Pair the
    times with their labels by `dict(zip(traj.residual_labels, times))`.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must lie strictly between 0 and 1, got {fraction}.")
    _check_single(traj, "learning_times")
    valid = np.asarray(traj.valid)
    ts = np.asarray(traj.ts)[valid]
    r2 = np.asarray(traj.residuals, dtype=float)[valid] ** 2
    out = np.full(r2.shape[1], np.nan)
    if ts.size == 0:
        return out
    for j in np.nonzero(_carried(traj))[0]:
        out[j] = float(crossing_time(ts, r2[:, j], (1.0 - fraction) * r2[0, j]))
    return out


def _carried(traj: Trajectory) -> Bool[np.ndarray, " R"]:
    """Which residuals are carried at the first valid save: `|r_alpha(0)|` above `1e-10` of
    `|r(0)|` (the others are absent from the target, or fitted by the initial network)."""
    r2 = np.asarray(traj.residuals, dtype=float)[np.asarray(traj.valid)] ** 2
    if r2.shape[0] == 0:
        return np.zeros(r2.shape[1], bool)
    return r2[0] > _PRESENT**2 * np.sum(r2[0])


def _check_single(traj: Trajectory, name: str) -> None:
    if not isinstance(traj, Trajectory):
        raise ValueError(f"{name} needs an sst.Trajectory, got {type(traj).__name__}.")
    if traj.batch_size is not None:
        raise ValueError(
            f"{name} needs a single trajectory, got a batch of {traj.batch_size}; pass traj[i]."
        )


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
    traj: Trajectory,
    *,
    rate_threshold: float = 0.02,
    min_drop: float = 0.01,
    min_plateau_decades: float = 0.25,
) -> list[Phase]:
    """Split a learning curve into plateaus and drops on log time (docs: [time
    scales][time-scales]).

    The rate of learning is `-dR / d log10(t)` divided by the total decrease of the risk over the
    curve: a drop is a maximal interval where it exceeds `rate_threshold` (a fraction of the total
    decrease per decade of time), a plateau is what lies between. Measuring the rate against the
    total decrease, rather than the current risk, keeps a small early drop (degree 0) visible
    and does not call the exponential tail of a learned target an endless drop.

    **Arguments:**

    - `traj`: a single trajectory; its valid saves at times `> 0` make the curve.
    - `rate_threshold`: drop/plateau boundary, fraction of the total decrease per decade.
    - `min_drop`: drops losing less than this fraction of the total decrease become plateau.
    - `min_plateau_decades`: plateaus shorter than this (in decades) between two drops are
      merged into one drop.

    **Returns:** the phases in time order, covering the valid part of the curve; empty if fewer
    than three valid points, a single plateau if the risk does not decrease.
    """
    _check_single(traj, "detect_phases")
    ts = np.asarray(traj.ts, dtype=float)
    risk = np.asarray(traj.risk, dtype=float)
    keep = (ts > 0) & np.isfinite(risk) & np.asarray(traj.valid)
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
    the docs' [model page][setting] for this degree (`nan` where none is stated).
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
    logarithmic factor of the degree-1 heuristic `t_1 ~ eps^(1/2) log(1/eps)` (docs:
    [time scales][time-scales]). Points with a non-finite or non-positive time are left out.

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


#: The fewest learned points (distinct eps) from which `fit_scalings` fits a label.
MIN_FIT_POINTS = 3


def fit_scalings(
    eps: Float[ArrayLike, " N"],
    times: Float[ArrayLike, "N R"],
    labels: Sequence[Hashable] | None = None,
) -> dict[int, ScalingFit]:
    """Fit `d log t / d log eps` for every column of `times` learned at three or more distinct
    eps.

    `times[i, j]` is the learning time of residual label `labels[j]` at `eps[i]` (from
    `learning_times`); `labels` defaults to the degrees `(0,), (1,), ...` of a single-index
    target, so that column `l` is degree `l`. Two points give a slope without a standard error,
    so a column with fewer than three is not fitted (absent from the result). A degree `(l,)`
    carries the heuristic exponent `1/(2l)` of the docs' [time scales][time-scales], degree 1
    fitted with the `log(1/eps)` factor removed; other labels (multi-indices of several
    directions) carry no heuristic (`nan`) and are fitted without a log factor.

    **Returns:** `{j: ScalingFit}` for the columns `j` that could be fitted.
    """
    times = np.asarray(times, dtype=float)
    eps = np.asarray(eps, dtype=float)
    if times.ndim != 2 or times.shape[0] != eps.shape[0]:
        raise ValueError(
            f"times must have shape (len(eps), R) = ({eps.shape[0]}, R), got {times.shape}."
        )
    labels = [(j,) for j in range(times.shape[1])] if labels is None else list(labels)
    if len(labels) != times.shape[1]:
        raise ValueError(
            f"labels must name each of the {times.shape[1]} columns of times; got {len(labels)} "
            "labels."
        )
    fits = {}
    for j, label in enumerate(labels):
        ok = np.isfinite(times[:, j]) & (times[:, j] > 0)
        if np.unique(eps[ok]).size < MIN_FIT_POINTS:
            continue
        # The heuristic of the docs is stated for the degrees of a single direction.
        degree = label[0] if isinstance(label, tuple) and len(label) == 1 else None
        fit = fit_exponent(eps, times[:, j], log_factor=degree in LOG_FACTOR_DEGREES)
        heuristic = float("nan") if degree is None else heuristic_exponent(degree)
        fits[j] = dataclasses.replace(fit, heuristic=heuristic)
    return fits
