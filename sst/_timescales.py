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
import warnings
from collections.abc import Hashable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float

from ._functionals import crossing_time
from ._solution import DenseOutput, Trajectory
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
    directions), the first time when `r_alpha^2` has lost `fraction` of its initial value (its
    value at the first valid save).

    `fraction=0.5` is "half learned" (`r_alpha^2` halved), `0.9` is "90% learned" (docs: [time
    scales][time-scales]). Pair the times with their labels by
    `dict(zip(traj.residual_labels, times))`.

    **Where the time is read.** With the solver's dense output (`sst.solve(..., dense=True)`)
    each crossing that the saves bracket is located on it by bisection in `log t`, to the
    solver's tolerance whatever the save grid. Without it, the crossing is interpolated linearly
    in `log t` between the two bracketing saves, which is accurate only to the save spacing
    (on 2,001 saves over 14 decades the half-learning times of the staircase are off by up to
    2%).

    **NaN.** A residual gets `nan` when there is nothing to learn: its initial value is zero up
    to rounding (`|r_alpha(0)|` below `1e-10 |r(0)|`), because the target has no component
    `alpha` (a target without degree 0, `h1 + h2`, gets `nan` for degree 0) or the initial
    network already fits it. It also gets `nan` when it is not learned by the last valid save;
    that case warns (extend the save times, or see why the solve stopped).
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
    carried = np.nonzero(_carried(traj))[0]
    levels = (1.0 - fraction) * r2[0, carried]
    below = r2[:, carried] <= levels
    reached = below.any(axis=0)
    if not reached.all():
        names = ", ".join(label_name(traj.residual_labels[j]) for j in carried[~reached])
        warnings.warn(
            f"learning_times: {names} not {fraction:.0%} learned by the last valid save "
            f"t = {ts[-1]:.3g} (nan); extend the save times, or see traj.result.",
            stacklevel=2,
        )
    columns, levels, hits = carried[reached], levels[reached], np.argmax(below[:, reached], 0)
    if traj.dense is None:
        for j, level in zip(columns, levels, strict=True):
            out[j] = float(crossing_time(ts, r2[:, j], level))
        return out
    # A crossing at the first save is that save; the others lie between two saves.
    inside = hits > 0
    out[columns[~inside]] = ts[0]
    if inside.any():
        hit = hits[inside]
        out[columns[inside]] = np.asarray(
            _bisect(
                _residual_excess,
                traj.dense,
                jnp.asarray(ts[hit - 1]),
                jnp.asarray(ts[hit]),
                (jnp.asarray(columns[inside]), jnp.asarray(levels[inside])),
            )
        )
    return out


def _residual_excess(dense: DenseOutput, t, data) -> Float[Array, ""]:
    """`r_j(t)^2 - level`: positive before residual `j` reaches `level`."""
    j, level = data
    return dense.residuals(t)[j] ** 2 - level


@eqx.filter_jit
def _on_dense(fn, dense: DenseOutput, ts: Float[Array, " N"]) -> Float[Array, " N"]:
    """`fn(dense, t)` at each of `ts`, in one compiled program."""
    return jax.vmap(lambda t: fn(dense, t))(ts)


# Bisection halves the bracket in log t: 64 halvings take a bracket of any ratio below 1e10
# (and one starting at t = 0 down to ~1e-9 of its upper end) to rounding.
_BISECTIONS = 64


@eqx.filter_jit
def _bisect(excess, dense: DenseOutput, lo, hi, data) -> Float[Array, " N"]:
    """For each `n`, a time in `[lo_n, hi_n]` where `excess(dense, t, data_n)` changes sign,
    given `excess > 0` at `lo_n` and `<= 0` at `hi_n`: bisection in `log t` (in `t` while the
    lower end is 0), returning the upper end of the final bracket."""

    def one(lo, hi, data):
        def halve(_, bracket):
            lo, hi = bracket
            mid = jnp.where(lo > 0, jnp.sqrt(lo * hi), 0.5 * hi)
            ahead = excess(dense, mid, data) > 0
            return jnp.where(ahead, mid, lo), jnp.where(ahead, hi, mid)

        return jax.lax.fori_loop(0, _BISECTIONS, halve, (lo, hi))[1]

    return jax.vmap(one)(lo, hi, data)


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
    """One phase of a learning curve on log time: a `"plateau"`, a `"drop"` or a `"descent"`
    of the risk (see `detect_phases`).

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
    descent_rate: float = 0.2,
) -> list[Phase]:
    """Split a learning curve into plateaus, drops and descents on log time (docs: [time
    scales][time-scales]).

    - A **drop** is a maximal interval where the rate of learning, `-dR / d log10(t)` divided
      by the total decrease of the risk over the curve, exceeds `rate_threshold` (a fraction of
      the total decrease per decade of time). Measuring it against the total decrease keeps a
      small early drop (degree 0) visible.
    - A **descent** is an interval outside the drops where the risk still falls by orders of
      magnitude: its relative rate `-d log10(R) / d log10(t)` exceeds `descent_rate` and it
      loses at least a factor 10. This is how a learned target converges (the risk falling
      from 5e-3 to 2e-10 over the last decades, too little of the total decrease per decade
      to be a drop, is no plateau).
    - A **plateau** is what lies between: the risk nearly constant on log time.

    With the solver's dense output (`sst.solve(..., dense=True)`) the rates are the model's own
    (`dR/dt` along its vector field) and every boundary between phases is located on the dense
    output by bisection, to the solver's tolerance; otherwise the rates are finite differences
    between saves and the boundaries are save times.

    **Arguments:**

    - `traj`: a single trajectory; its valid saves at times `> 0` make the curve.
    - `rate_threshold`: drop/plateau boundary, fraction of the total decrease per decade.
    - `min_drop`: drops losing less than this fraction of the total decrease become plateau.
    - `min_plateau_decades`: plateaus shorter than this (in decades) between two drops (or two
      descents) are merged into one; a descent this close to a drop (or with no save between
      them) extends to it.
    - `descent_rate`: descent/plateau boundary, decades of risk lost per decade of time.

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
    logt = np.log10(ts)
    if traj.dense is None:
        slope = np.gradient(risk, logt)  # dR / d log10(t)
    else:
        rates = _on_dense(DenseOutput.risk_rate, traj.dense, jnp.asarray(ts))
        slope = ts * np.log(10.0) * np.asarray(rates)
    rate = -slope / total
    relative = -slope / (np.log(10.0) * np.where(risk > 0, risk, np.inf))

    def runs(mask, barrier):
        # Maximal runs of `mask` as [start, end] index pairs (inclusive), merged across gaps
        # shorter than min_plateau_decades that hold no `barrier` point.
        edges = np.diff(np.concatenate([[0], mask.astype(int), [0]]))
        merged: list[list[int]] = []
        for s, e in zip(np.nonzero(edges == 1)[0], np.nonzero(edges == -1)[0] - 1, strict=True):
            if (
                merged
                and logt[s] - logt[merged[-1][1]] < min_plateau_decades
                and not barrier[merged[-1][1] : s].any()
            ):
                merged[-1][1] = e
            else:
                merged.append([s, e])
        return merged

    no_barrier = np.zeros(ts.size, bool)
    drops = [
        (s, e)
        for s, e in runs(rate > rate_threshold, no_barrier)
        if risk[s] - risk[e] >= min_drop * total
    ]
    in_drop = np.zeros(ts.size, bool)
    for s, e in drops:
        in_drop[s : e + 1] = True
    descents = []
    for s, e in runs((relative > descent_rate) & ~in_drop, in_drop):
        # A descent next to a drop (no save, or less than min_plateau_decades, between them)
        # joins it: the drop's boundary is the sharper one.
        def close(a: int, b: int) -> bool:
            return b - a == 1 or logt[b] - logt[a] < min_plateau_decades

        before = [d for d in drops if d[1] < s and close(d[1], s)]
        after = [d for d in drops if d[0] > e and close(e, d[0])]
        s, e = (before[-1][1] if before else s), (after[0][0] if after else e)
        if risk[e] <= 0.1 * risk[s]:
            descents.append((s, e))
    intervals = sorted(
        [("drop", s, e) for s, e in drops] + [("descent", s, e) for s, e in descents],
        key=lambda x: x[1],
    )
    tiles: list[tuple[str, int, int]] = []
    cursor = 0
    for kind, s, e in intervals:
        if s > cursor:
            tiles.append(("plateau", cursor, s))
        tiles.append((kind, s, e))
        cursor = e
    if cursor < ts.size - 1:
        tiles.append(("plateau", cursor, ts.size - 1))
    times = [ts[0]] + [ts[e] for _, _, e in tiles]
    risks = [risk[0]] + [risk[e] for _, _, e in tiles]
    if traj.dense is not None and len(tiles) > 1:
        times[1:-1], risks[1:-1] = _boundaries(
            traj.dense, ts, tiles, total, rate_threshold, descent_rate
        )
    return [
        Phase(kind, float(times[i]), float(times[i + 1]), float(risks[i]), float(risks[i + 1]))
        for i, (kind, _, _) in enumerate(tiles)
    ]


def _boundaries(dense, ts, tiles, total, rate_threshold, descent_rate):
    """The times and risks of the boundaries between successive `tiles` (kind, first save, last
    save), located on the dense output: each is the crossing of the threshold of the drop on
    either side of it if there is one (of the descent otherwise), between its save and the
    neighbouring one inside the plateau or descent."""
    lo, hi, data = [], [], []
    for (kind, _, b), (after, _, _) in zip(tiles[:-1], tiles[1:], strict=True):
        if kind == "drop" or (after != "drop" and kind == "descent"):
            ending, which = True, kind  # the quantity falls below its threshold after save b
        else:
            ending, which = False, after  # it rises above its threshold before save b
        threshold = rate_threshold if which == "drop" else descent_rate
        lo.append(ts[b] if ending else ts[b - 1])
        hi.append(ts[b + 1] if ending else ts[b])
        data.append((float(which == "descent"), threshold, 1.0 if ending else -1.0, total))
    columns = tuple(jnp.asarray(np.array(c)) for c in zip(*data, strict=True))
    times = _bisect(_rate_excess, dense, jnp.asarray(lo), jnp.asarray(hi), columns)
    return list(np.asarray(times)), list(np.asarray(_on_dense(DenseOutput.risk, dense, times)))


def _rate_excess(dense: DenseOutput, t, data) -> Float[Array, ""]:
    """`sign (q(t) - threshold)` for the rate `q` of `detect_phases`: of the total decrease per
    decade (`relative == 0`) or of decades of risk per decade (`relative == 1`)."""
    relative, threshold, sign, total = data
    slope = -t * jnp.log(10.0) * dense.risk_rate(t)
    q = jnp.where(relative > 0, slope / (jnp.log(10.0) * dense.risk(t)), slope / total)
    return sign * (q - threshold)


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
