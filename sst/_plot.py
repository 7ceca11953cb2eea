"""Matplotlib figures of trajectories and eps sweeps, for every model of the family (a target of
one direction or of `k`). Every function returns the figure.

- `plot_risk`: risk and squared residuals `r_alpha^2 / 2` against log time, learning phases
  marked.
- `plot_particles`: the particles (or neurons) over time: the path in the `(a, s_1)` plane, the
  overlaps `s_ir(t)` with each direction, and for two or more directions the `(s_1, s_2)` plane.
- `plot_scaling`: learning times of an eps sweep against eps, with fitted power laws.
- `plot_ode_vs_network`: training runs of the network against the ODE they converge to.

Residual labels are named by `sst.label_name` (`degree 2`, `z1 z2`).
"""

from __future__ import annotations

import warnings
from collections.abc import Hashable, Sequence

import equinox as eqx
import jax

# No backend is forced here: notebooks keep their inline backend, and headless runs fall back
# to Agg by themselves.
import matplotlib.pyplot as plt
import numpy as np
from jaxtyping import ArrayLike, Float
from matplotlib.lines import Line2D

from ._problem import AbstractProblemModel
from ._solution import RESULTS, Trajectory
from ._timescales import (
    ScalingFit,
    _carried,
    _check_single,
    detect_phases,
    label_name,
    learning_times,
)

# Colour of residual label j in every figure, so that a label looks the same across panels.
_COLOURS = plt.rcParams["axes.prop_cycle"].by_key()["color"]


_NEGLIGIBLE = 1e-20


def _colour(j: int) -> str:
    return _COLOURS[j % len(_COLOURS)]


def _tolerances(traj: Trajectory) -> str:
    if traj.training is not None:
        return f"{type(traj.training.estimator).__name__}, eta={traj.training.eta:g}"
    return f"rtol={traj.rtol:g}, atol={traj.atol:g}"


def _valid_positive(traj: Trajectory) -> np.ndarray:
    # Log time axes cannot show t = 0; rows after a solver failure are NaN and masked.
    keep = np.asarray(traj.valid) & (np.asarray(traj.ts) > 0)
    if np.count_nonzero(keep) < 2:
        raise ValueError(
            "Nothing to draw on a log time axis: the trajectory has fewer than two valid saves at "
            f"t > 0 (it stopped: {RESULTS[traj.result] or 'successful'}); save at more times."
        )
    return keep


def _degree(label: Hashable) -> int:
    # The degree |alpha| of h_alpha; a label that is not a multi-index counts as degree 0.
    return int(sum(label)) if isinstance(label, tuple) else 0


def plot_risk(
    traj: Trajectory,
    title: str | None = None,
    ax=None,
    phases: bool = True,
    max_degree: int = 6,
    model: AbstractProblemModel | None = None,
    labels: Sequence[Hashable] | None = None,
):
    """Risk and squared residuals `r_alpha^2 / 2` against log time, down to the risk's
    rounding floor (docs: [time scales][time-scales]).

    One line per residual label (a degree `(l,)`, or a multi-index of a target of `k`
    directions), named by `sst.label_name`: by default every label of degree `|alpha| <=
    max_degree` carried at the start or learned later, and one line for the sum over the labels
    of higher degree, if any (a ReLU target has 33 degrees); with `labels`, exactly those (each
    must be in `traj.residual_labels`). Labels that are zero up to rounding are left out.
    Half-learning times (`r_alpha^2` halved, `sst.learning_times`) are dotted vertical lines in
    each label's colour; with `phases=True` the drops and descents found by `detect_phases` are
    shaded (the plateaus are the unshaded rest).

    The rounding floor is drawn dashed, the region under it shaded, and the vertical axis stops
    just below it: values under it are rounding noise. It is twice `model.risk_rounding_error`
    along the trajectory for a model that has one (`MeanFieldODE` with a polynomial activation),
    else `16 u max R` (`u` the unit roundoff), the rounding of the risk itself. `model` defaults
    to that of the dense output (`sst.solve(..., dense=True)`); given, it also puts the problem
    (target, activation, eps) in the title, which states the solver tolerances unless `title` is
    given. The legend sits outside the axes, one entry per quantity.

    **Returns:** the matplotlib figure.
    """
    _check_single(traj, "plot_risk")
    all_labels = list(traj.residual_labels)
    if labels is not None:
        unknown = [label for label in labels if label not in all_labels]
        if unknown:
            raise ValueError(
                f"labels: {unknown[0]!r} is not a residual label of the trajectory; pick from "
                "traj.residual_labels."
            )
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(8.0, 4.4))
    valid = _valid_positive(traj)
    ts = np.asarray(traj.ts)[valid]
    risk = np.asarray(traj.risk)[valid]
    floor = _rounding_floor(traj, model if model is not None else _dense_model(traj))[valid]
    ax.loglog(ts, risk, color="k", lw=2, label="risk $R$")
    r2 = 0.5 * np.asarray(traj.residuals)[valid] ** 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a residual not yet learned: no line
        t_half = learning_times(traj, 0.5)
    if labels is None:
        shown = _carried(traj) | np.isfinite(t_half)
        columns = [j for j, label in enumerate(all_labels) if _degree(label) <= max_degree]
        high = [j for j, label in enumerate(all_labels) if _degree(label) > max_degree]
        columns = [j for j in columns if shown[j]]
    else:
        columns, high = [all_labels.index(label) for label in labels], []
    curves = [(j, f"$r^2/2$, {label_name(all_labels[j])}", r2[:, j]) for j in columns]
    if high:
        curves.append((len(all_labels), f"$r^2/2$, degree > {max_degree}", r2[:, high].sum(1)))
    drawn = [risk]
    half_learned = False
    for j, name, y in curves:
        if np.max(y) <= _NEGLIGIBLE * np.max(risk):
            continue  # zero up to rounding: a log axis would show only rounding noise
        drawn.append(y)
        colour = _colour(j)
        ax.loglog(ts, y, lw=1.2, color=colour, label=name)
        if j < len(all_labels) and np.isfinite(t_half[j]):
            ax.axvline(t_half[j], color=colour, ls=":", lw=1)
            half_learned = True
    ax.plot(ts, floor, color="0.5", ls="--", lw=1, label=_FLOOR)
    if phases:
        for p in detect_phases(traj):
            if p.kind != "plateau":
                shade = _PHASE_SHADES[p.kind]
                ax.axvspan(p.t_start, p.t_end, color=shade, zorder=0, label=p.kind)
    drawn = np.concatenate(drawn)
    drawn = drawn[np.isfinite(drawn) & (drawn > 0)]
    low = max(0.5 * drawn.min(), 0.3 * np.nanmin(floor))
    ax.set_ylim(low, 2.0 * drawn.max())
    ax.fill_between(ts, low, np.maximum(floor, low), color="0.93", lw=0, zorder=0)
    ax.set_xlim(ts[0], ts[-1])
    ax.set_xlabel("time $t$")
    ax.set_ylabel("risk and squared residuals $r^2/2$")
    if title is None:
        title = _tolerances(traj) if model is None else f"{model.problem}\n{_tolerances(traj)}"
    ax.set_title(title, fontsize=9)
    handles, names = ax.get_legend_handles_labels()
    unique = dict(zip(names, handles, strict=True))
    if half_learned:  # one entry for the dotted lines of every colour
        unique[r"half learned ($r^2$ halved)"] = Line2D([], [], color="0.4", ls=":", lw=1)
    ax.legend(
        unique.values(), unique.keys(), fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0)
    )
    fig.tight_layout()
    return fig


_FLOOR = "rounding floor of $R$\n(below: rounding noise)"

# Shading of the phases that are not plateaus.
_PHASE_SHADES = {"drop": "0.85", "descent": "#dce6f0"}

# Unit roundoff of float64.
_U = float(np.finfo(np.float64).eps) / 2


def _dense_model(traj: Trajectory):
    return traj.dense.model if traj.dense is not None else None


@eqx.filter_jit
def _rounding_errors(model, ys):
    return jax.vmap(model.risk_rounding_error)(ys)


def _rounding_floor(traj: Trajectory, model) -> np.ndarray:
    """The rounding floor of the risk at each save (see `plot_risk`)."""
    risk = np.asarray(traj.risk, dtype=float)
    if model is not None and getattr(model, "uses_moments", False) and traj.training is None:
        floor = np.asarray(_rounding_errors(model, traj.ys))
        return 2.0 * np.where(np.asarray(traj.valid), floor, np.nan)
    return np.full(risk.shape, 16 * _U * np.nanmax(risk))


def _overlaps(traj: Trajectory, valid: np.ndarray) -> np.ndarray:
    # Overlaps with the directions on the last axis, (T, m, k): a single-index state stores
    # s of shape (T, m), a state of k directions (T, m, k).
    s = np.asarray(traj.ys.s)[valid]
    return s.reshape(s.shape[:2] + (-1,))


def plot_particles(traj: Trajectory, title: str | None = None, cmap: str = "coolwarm"):
    """The particles (or neurons) over time, coloured by `a_i(0)` (colour bar), which is what
    determines a particle's fate when `s(0) = 0` (docs: [the mean-field ODE][mean-field-ode]).

    Panels, left to right: each path in the `(a, s_1)` plane (`s_1` the overlap with the first
    target direction; the final points black); the overlaps `s_ir(t)` with each direction `r`
    against log time, one panel per direction (`s` of shape `(m,)` is one direction); for two or
    more directions, each path in the plane `(s_i1, s_i2)` with the diagonal `s_1 = s_2` dashed
    (the symmetric line of an equal committee).

    **Returns:** the matplotlib figure (axes: the panels, then the colour bar).
    """
    _check_single(traj, "plot_particles")
    valid = np.asarray(traj.valid)
    ts = np.asarray(traj.ts)[valid]
    a = np.asarray(traj.ys.a)[valid]
    s = _overlaps(traj, valid)
    m, k = s.shape[1:]
    a0 = a[0]
    norm = plt.Normalize(a0.min(), a0.max() if a0.max() > a0.min() else a0.min() + 1.0)
    colours = plt.get_cmap(cmap)(norm(a0))
    panels = 1 + k + (1 if k >= 2 else 0)
    fig, axes = plt.subplots(1, panels, figsize=(3.8 * panels, 3.6), squeeze=False)
    ax_plane, ax_times, axes = axes[0][0], axes[0][1 : 1 + k], axes[0]
    positive = ts > 0
    for i in range(m):
        ax_plane.plot(a[:, i], s[:, i, 0], color=colours[i], lw=1)
        for r in range(k):
            ax_times[r].semilogx(ts[positive], s[positive, i, r], color=colours[i], lw=1)
    ax_plane.plot(a[-1], s[-1, :, 0], "k.", ms=4, label="final")
    ax_plane.set_xlabel("second-layer weight $a$")
    ax_plane.set_ylabel("overlap $s$" if k == 1 else "overlap $s_1$")
    ax_plane.legend(fontsize=8)
    for r, ax in enumerate(ax_times):
        ax.set_xlabel("time $t$")
        ax.set_ylabel("overlap $s$" if k == 1 else f"overlap $s_{{i{r + 1}}}$ with $u_{r + 1}$")
    if k >= 2:
        plane = axes[-1]
        for i in range(m):
            plane.plot(s[:, i, 0], s[:, i, 1], color=colours[i], lw=1)
        plane.plot(s[-1, :, 0], s[-1, :, 1], "k.", ms=4)
        plane.plot([-1, 1], [-1, 1], color="0.6", ls="--", lw=1)
        plane.set_xlabel("$s_{i1}$")
        plane.set_ylabel("$s_{i2}$")
        plane.set_aspect("equal")
    fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), ax=axes[-1], label="$a(0)$")
    fig.suptitle(title or f"{m} particles, {_tolerances(traj)}")
    fig.tight_layout()
    return fig


def plot_scaling(
    eps: Float[ArrayLike, " N"],
    times: Float[ArrayLike, "N R"],
    fits: dict[int, ScalingFit] | None = None,
    title: str | None = None,
    labels: Sequence[Hashable] | None = None,
):
    """Learning times of an eps sweep on log-log axes, with fitted power laws.

    `times[i, j]` is the learning time of residual label `labels[j]` at `eps[i]` (default: the
    degrees `(0,), (1,), ...`, column `l` degree `l`), as `sst.fit_scalings` takes them. One
    marker series per column with a finite time, named by `sst.label_name`; each fit in `fits`
    (from `sst.fit_scalings`, keyed by column) is drawn as a dashed line labelled with its
    exponent, its uncertainty and, where stated, the heuristic `1/(2l)` of the docs' [time
    scales][time-scales].

    **Returns:** the matplotlib figure.
    """
    eps = np.asarray(eps, dtype=float)
    times = np.asarray(times, dtype=float)
    labels = [(j,) for j in range(times.shape[1])] if labels is None else list(labels)
    if len(labels) != times.shape[1]:
        raise ValueError(
            f"labels must name each of the {times.shape[1]} columns of times; got {len(labels)} "
            "labels."
        )
    fig, ax = plt.subplots(figsize=(6.0, 4.5))
    grid = np.geomspace(eps.min(), eps.max(), 100)
    for j, label in enumerate(labels):
        ok = np.isfinite(times[:, j])
        if not ok.any():
            continue
        colour = _colour(j)
        ax.loglog(eps[ok], times[ok, j], "o", color=colour, label=label_name(label))
        if fits and j in fits:
            f = fits[j]
            log = r" of $t/\log(1/\varepsilon)$" if f.log_factor else ""
            heuristic = (
                f" (heuristic {_as_fraction(f.heuristic)})" if np.isfinite(f.heuristic) else ""
            )
            ax.loglog(
                grid,
                f.predict(grid),
                "--",
                color=colour,
                lw=1,
                label=f"slope{log} {f.exponent:.3f} ± {f.stderr:.3f}{heuristic}",
            )
    ax.set_xlabel(r"$\varepsilon$")
    ax.set_ylabel("half-learning time")
    ax.set_title(title or "learning time-scales")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _as_fraction(x: float) -> str:
    """`1/6` for 0.1666..., else `x` as `%g`: the heuristic exponents are 1/(2l)."""
    if np.isfinite(x) and 0 < x < 1 and abs(1 / x - round(1 / x)) < 1e-9:
        return f"1/{round(1 / x)}"
    return f"{x:g}"


def plot_ode_vs_network(ode: Trajectory, runs, mean_field=None, title=None, neurons: int = 4):
    """Training runs of the network overlaid on the ODE from the same initial point (docs:
    model, #sgd).

    Left: population risk against time of `ode` (a `FiniteDimODE` trajectory), of the optional
    `mean_field` trajectory and of each training run in `runs` (trajectories from `sst.train`,
    labelled by estimator and step).
    Right: the overlaps `s_i1(t)` with the first target direction of the first `neurons`
    neurons, ODE solid, the run with the smallest step dotted.

    **Returns:** the matplotlib figure.
    """
    fig, (ax_r, ax_s) = plt.subplots(1, 2, figsize=(11, 4.2))
    ax_r.plot(ode.ts, ode.risk, color="k", lw=2.5, label="FiniteDimODE")
    if mean_field is not None:
        ax_r.plot(mean_field.ts, mean_field.risk, color="k", ls="--", lw=1.5, label="MeanFieldODE")
    for run in runs:
        valid = np.asarray(run.valid)
        ax_r.plot(
            np.asarray(run.ts)[valid], np.asarray(run.risk)[valid], lw=1.2, label=_tolerances(run)
        )
    ax_r.set_yscale("log")
    ax_r.set_xlabel("time $t$")
    ax_r.set_ylabel("population risk")
    ax_r.legend(fontsize=8)
    finest = min(runs, key=lambda r: r.training.eta)
    s_ode = _overlaps(ode, np.ones(ode.ts.shape, bool))
    s_run = _overlaps(finest, np.ones(finest.ts.shape, bool))
    for i in range(min(neurons, s_ode.shape[1])):
        (line,) = ax_s.plot(ode.ts, s_ode[:, i, 0], lw=2)
        ax_s.plot(finest.ts, s_run[:, i, 0], ls=":", lw=2, color=line.get_color())
    ax_s.set_xlabel("time $t$")
    ax_s.set_ylabel(f"$s_{{i1}}$ (solid: ODE, dotted: eta={finest.training.eta:g})")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
