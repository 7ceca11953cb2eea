"""Matplotlib figures of trajectories and eps sweeps. Every function returns the figure.

- `plot_risk`: risk and Hermite residuals against log time, learning phases marked.
- `plot_particles`: the particle phase portrait `(a, s)` over time, coloured by `a(0)`.
- `plot_scaling`: learning times of an eps sweep against eps, with fitted power laws.
"""

from __future__ import annotations

# No backend is forced here: notebooks keep their inline backend, and headless runs fall back
# to Agg by themselves.
import matplotlib.pyplot as plt
import numpy as np
from jaxtyping import ArrayLike, Float

from ._solution import RESULTS, Trajectory
from ._timescales import ScalingFit, _check_single, detect_phases, learning_times

# Colour of degree k in every figure, so that a degree looks the same across panels.
_DEGREE_COLOURS = plt.rcParams["axes.prop_cycle"].by_key()["color"]


_NEGLIGIBLE = 1e-20


def _degree_colour(k: int) -> str:
    return _DEGREE_COLOURS[k % len(_DEGREE_COLOURS)]


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


def plot_risk(
    traj: Trajectory,
    title: str | None = None,
    ax=None,
    phases: bool = True,
    max_degree: int = 6,
    model=None,
):
    """Risk and squared Hermite residuals `r_k^2 / 2` against log time (docs: [time
    scales][time-scales]).

    One line per degree `k <= max_degree` (degrees that are zero up to rounding are left out),
    and one line for the sum over the higher degrees, if any (a ReLU target has 33).
    Half-learning times are dotted vertical lines in each degree's colour (in the legend); with
    `phases=True` the drops found by `detect_phases` are shaded grey (the plateaus are the
    unshaded rest). The vertical range shows every valid point of every drawn curve. The title
    states the target, activation and eps when the `model` (of a `Problem`) is given, and the
    solver tolerances, unless `title` is given.

    **Returns:** the matplotlib figure.
    """
    _check_single(traj, "plot_risk")
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(6.4, 4.2))
    valid = _valid_positive(traj)
    ts = np.asarray(traj.ts)[valid]
    risk = np.asarray(traj.risk)[valid]
    ax.loglog(ts, risk, color="k", lw=2, label="risk")
    r2 = np.asarray(traj.residuals)[valid] ** 2
    t_half = learning_times(traj, 0.5)
    curves = [
        (k, f"$r_{{{k}}}^2/2$", 0.5 * r2[:, k]) for k in range(min(r2.shape[1], max_degree + 1))
    ]
    if r2.shape[1] > max_degree + 1:
        tail = 0.5 * np.sum(r2[:, max_degree + 1 :], axis=1)
        curves.append((max_degree + 1, f"$\\sum_{{k>{max_degree}}} r_k^2/2$", tail))
    drawn = [risk]
    for k, label, y in curves:
        if np.max(y) <= _NEGLIGIBLE * np.max(risk):
            continue  # zero up to rounding: a log axis would show only rounding noise
        drawn.append(y)
        colour = _degree_colour(k)
        ax.loglog(ts, y, lw=1.2, color=colour, label=label)
        if k <= max_degree and np.isfinite(t_half[k]):
            ax.axvline(t_half[k], color=colour, ls=":", lw=1, label=f"$t_{{{k}}}$ half learned")
    if phases:
        for p in detect_phases(traj):
            if p.kind == "drop":
                ax.axvspan(p.t_start, p.t_end, color="0.85", zorder=0, label="drop")
    drawn = np.concatenate(drawn)
    drawn = drawn[np.isfinite(drawn) & (drawn > 0)]
    ax.set_ylim(0.5 * drawn.min(), 2.0 * drawn.max())
    ax.set_xlabel("time $t$")
    ax.set_ylabel("risk")
    if title is None:
        problem = getattr(model, "problem", None)
        title = _tolerances(traj) if problem is None else f"{problem}\n{_tolerances(traj)}"
    ax.set_title(title, fontsize=9)
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    ax.legend(unique.values(), unique.keys(), fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


def plot_particles(traj: Trajectory, title: str | None = None, cmap: str = "coolwarm"):
    """Particle phase portrait: each particle's path in the `(a, s)` plane, and `s_i(t)`.

    Left panel: `(a_i(t), s_i(t))`, one line per particle, starting at `s = 0` (docs:
    [the mean-field ODE][mean-field-ode]). Right panel: the overlaps `s_i(t)` against log time.
    Lines are coloured by
    `a_i(0)` (colour bar), which is what determines a particle's fate when `s(0) = 0`.

    **Returns:** the matplotlib figure (axes: plane, time, colour bar).
    """
    _check_single(traj, "plot_particles")
    valid = np.asarray(traj.valid)
    ts = np.asarray(traj.ts)[valid]
    a = np.asarray(traj.ys.a)[valid]
    s = np.asarray(traj.ys.s)[valid]
    a0 = a[0]
    norm = plt.Normalize(a0.min(), a0.max() if a0.max() > a0.min() else a0.min() + 1.0)
    colours = plt.get_cmap(cmap)(norm(a0))
    fig, (ax_plane, ax_time) = plt.subplots(1, 2, figsize=(10.0, 4.0))
    positive = ts > 0
    for i in range(a.shape[1]):
        ax_plane.plot(a[:, i], s[:, i], color=colours[i], lw=1)
        ax_time.semilogx(ts[positive], s[positive, i], color=colours[i], lw=1)
    ax_plane.plot(a[-1], s[-1], "k.", ms=4, label="final")
    ax_plane.set_xlabel("second-layer weight $a$")
    ax_plane.set_ylabel("overlap $s$")
    ax_plane.legend(fontsize=8)
    ax_time.set_xlabel("time $t$")
    ax_time.set_ylabel("overlap $s$")
    sm = plt.cm.ScalarMappable(norm=norm, cmap=cmap)
    fig.colorbar(sm, ax=ax_time, label="$a(0)$")
    fig.suptitle(title or f"{a.shape[1]} particles, {_tolerances(traj)}")
    fig.tight_layout()
    return fig


def plot_scaling(
    eps: Float[ArrayLike, " N"],
    times: Float[ArrayLike, "N R"],
    fits: dict[int, ScalingFit] | None = None,
    title: str | None = None,
):
    """Learning times `t_k(eps)` of an eps sweep on log-log axes, with fitted power laws.

    One marker series per degree with a finite time; each fit in `fits` (from
    `timescales.fit_scalings`) is drawn as a dashed line labelled with its exponent, its
    uncertainty and the heuristic `1/(2l)` of the docs' [model page][setting].

    **Returns:** the matplotlib figure.
    """
    eps = np.asarray(eps, dtype=float)
    times = np.asarray(times, dtype=float)
    fig, ax = plt.subplots(figsize=(6.0, 4.5))
    grid = np.geomspace(eps.min(), eps.max(), 100)
    for k in range(times.shape[1]):
        ok = np.isfinite(times[:, k])
        if not ok.any():
            continue
        colour = _degree_colour(k)
        ax.loglog(eps[ok], times[ok, k], "o", color=colour, label=f"degree {k}")
        if fits and k in fits:
            f = fits[k]
            log = r" of $t/\log(1/\varepsilon)$" if f.log_factor else ""
            ax.loglog(
                grid,
                f.predict(grid),
                "--",
                color=colour,
                lw=1,
                label=f"slope{log} {f.exponent:.3f} ± {f.stderr:.3f} (heuristic "
                f"{_as_fraction(f.heuristic)})",
            )
    ax.set_xlabel(r"$\varepsilon$")
    ax.set_ylabel("half-learning time $t_k$")
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
    Right: the overlaps `s_i(t)` of the first `neurons` neurons, ODE solid, the run with the
    smallest step dotted.

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
    for i in range(min(neurons, ode.ys.s.shape[1])):
        (line,) = ax_s.plot(ode.ts, ode.ys.s[:, i], lw=2)
        ax_s.plot(finest.ts, finest.ys.s[:, i], ls=":", lw=2, color=line.get_color())
    ax_s.set_xlabel("time $t$")
    ax_s.set_ylabel(f"$s_i$ (solid: ODE, dotted: eta={finest.training.eta:g})")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
