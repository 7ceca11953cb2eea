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
