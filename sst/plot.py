"""Matplotlib figures of trajectories. Every function returns the figure."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .solve import Trajectory  # noqa: E402
from .timescales import learning_times  # noqa: E402


def plot_risk(traj: Trajectory, title: str | None = None, ax=None):
    """Risk and squared Hermite residuals `r_k^2 / 2` against log time, half-learning times marked.

    **Returns:** the matplotlib figure.
    """
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(6.4, 4.2))
    valid = np.asarray(traj.valid) & (np.asarray(traj.ts) > 0)
    ts = np.asarray(traj.ts)[valid]
    ax.loglog(ts, np.asarray(traj.risk)[valid], color="k", lw=2, label="risk")
    r = np.asarray(traj.residuals)[valid]
    t_half = learning_times(ts, r, 0.5)
    for k in range(r.shape[1]):
        if r[0, k] == 0:
            continue
        (line,) = ax.loglog(ts, 0.5 * r[:, k] ** 2, lw=1.2, label=f"$r_{k}^2/2$")
        if np.isfinite(t_half[k]):
            ax.axvline(t_half[k], color=line.get_color(), ls=":", lw=1)
    ax.set_xlabel("time $t$")
    ax.set_ylabel("risk")
    ax.set_title(title or f"rtol={traj.rtol:g}, atol={traj.atol:g}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_ode_vs_particles(ode: Trajectory, runs, mean_field=None, title=None, neurons: int = 4):
    """Particle runs overlaid on the ODE from the same initial point (THEORY.md section 7).

    Left: population risk against time of `ode` (a `FiniteDimODE` trajectory), of the optional
    `mean_field` trajectory and of each `sst.ParticleRun` in `runs` (labelled by step and batch).
    Right: the overlaps `s_i(t)` of the first `neurons` neurons, ODE solid, the run with the
    smallest step dotted.

    **Returns:** the matplotlib figure.
    """
    fig, (ax_r, ax_s) = plt.subplots(1, 2, figsize=(11, 4.2))
    ax_r.plot(ode.ts, ode.risk, color="k", lw=2.5, label="FiniteDimODE")
    if mean_field is not None:
        ax_r.plot(mean_field.ts, mean_field.risk, color="k", ls="--", lw=1.5, label="MeanFieldODE")
    for run in runs:
        kind = f"B={run.batch}" if run.batch else "population GD"
        valid = np.asarray(run.valid)
        ax_r.plot(
            np.asarray(run.ts)[valid],
            np.asarray(run.risk)[valid],
            lw=1.2,
            label=f"eta={run.eta:g}, {kind}",
        )
    ax_r.set_yscale("log")
    ax_r.set_xlabel("time $t$")
    ax_r.set_ylabel("population risk")
    ax_r.legend(fontsize=8)
    finest = min(runs, key=lambda r: r.eta)
    for i in range(min(neurons, ode.s.shape[1])):
        (line,) = ax_s.plot(ode.ts, ode.s[:, i], lw=2)
        ax_s.plot(finest.ts, finest.s[:, i], ls=":", lw=2, color=line.get_color())
    ax_s.set_xlabel("time $t$")
    ax_s.set_ylabel(f"$s_i$ (solid: ODE, dotted: eta={finest.eta:g})")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
