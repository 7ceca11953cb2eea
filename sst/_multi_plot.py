"""Time scales and figures per multi-index: when each `c_alpha` is learned, the residual of each
monomial and the overlaps with each direction.

- `learning_times_by_label`: `learning_times` keyed by the residual labels (multi-indices).
- `plot_monomials`: risk and `r_alpha^2 / 2` of every monomial against log time.
- `plot_overlaps`: `s_ir(t)` of every particle and direction, and the path in the plane of the
  first two directions (where the symmetric line of a committee shows).
- `plot_learning_times`: learning times of an eps sweep per multi-index, with fitted slopes.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import matplotlib.pyplot as plt
import numpy as np
from jaxtyping import ArrayLike, Float

from ._target import format_index
from ._solution import Trajectory
from ._timescales import _PRESENT, _check_single, fit_exponent, learning_times

_COLOURS = plt.rcParams["axes.prop_cycle"].by_key()["color"]
_NEGLIGIBLE = 1e-20


def _name(label: Hashable) -> str:
    return format_index(label) if isinstance(label, tuple) else f"degree {label}"


def learning_times_by_label(
    traj: Trajectory, fraction: float = 0.5, learned_only: bool = False
) -> dict[Hashable, float]:
    """`{label: t}`: the time when `r_alpha^2` of each residual label (a multi-index, or a
    degree) has lost `fraction` of its initial value (`sst.learning_times`), for the labels
    carried at the start (`nan` if not learned by the last valid save; with
    `learned_only=True` those are left out)."""
    times = learning_times(traj, fraction)
    r2 = np.asarray(traj.residuals, dtype=float)[0] ** 2
    # As learning_times: a residual zero up to rounding at the start is not carried.
    carried = r2 > _PRESENT**2 * np.nansum(r2)
    out = {}
    for label, t, present in zip(traj.residual_labels, times, carried, strict=True):
        if (present or np.isfinite(t)) and not (learned_only and not np.isfinite(t)):
            out[label] = float(t)
    return out


def plot_monomials(
    traj: Trajectory, labels: list[Hashable] | None = None, title: str | None = None, ax=None
):
    """Risk and squared residuals `r_alpha^2 / 2` of each monomial against log time.

    One line per label in `labels` (default: those carried by the target at the start or
    learned later; labels that stay zero up to rounding are left out), named as in
    `sst.format_index` (`z1 z2` for `h_(1,1,0)`); half-learning times are dotted lines.

    **Returns:** the matplotlib figure.
    """
    _check_single(traj, "plot_monomials")
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(6.4, 4.2))
    valid = np.asarray(traj.valid) & (np.asarray(traj.ts) > 0)
    ts = np.asarray(traj.ts)[valid]
    risk = np.asarray(traj.risk)[valid]
    ax.loglog(ts, risk, color="k", lw=2, label="risk")
    r2 = 0.5 * np.asarray(traj.residuals)[valid] ** 2
    half = learning_times(traj, 0.5)
    all_labels = list(traj.residual_labels)
    chosen = list(learning_times_by_label(traj)) if labels is None else list(labels)
    for n, label in enumerate(chosen):
        if label not in all_labels:
            raise ValueError(f"{label!r} is not a residual label of the trajectory.")
        j = all_labels.index(label)
        if np.max(r2[:, j]) <= _NEGLIGIBLE * np.max(risk):
            continue
        colour = _COLOURS[n % len(_COLOURS)]
        ax.loglog(ts, r2[:, j], color=colour, lw=1.2, label=f"$r^2/2$: {_name(label)}")
        if np.isfinite(half[j]):
            ax.axvline(half[j], color=colour, ls=":", lw=1)
    top = 2.0 * np.nanmax(risk)
    ax.set_ylim(max(ax.get_ylim()[0], 1e-12 * top), top)
    ax.set_xlabel("time $t$")
    ax.set_ylabel("risk")
    ax.set_title(title or "residual of each monomial")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_overlaps(traj: Trajectory, title: str | None = None, cmap: str = "coolwarm"):
    """The overlaps `s_ir(t)` of every particle (or neuron) with each direction `u_r`, against
    log time, one panel per direction, coloured by `a_i(0)`; for `k >= 2` a last panel shows
    each path in the plane `(s_i1, s_i2)` with the diagonal `s_1 = s_2` dashed (the symmetric
    line of an equal committee).

    **Returns:** the matplotlib figure.
    """
    _check_single(traj, "plot_overlaps")
    valid = np.asarray(traj.valid)
    ts = np.asarray(traj.ts)[valid]
    s = np.asarray(traj.ys.s)[valid]
    if s.ndim != 3:
        raise ValueError(
            "plot_overlaps needs overlaps s of shape (T, m, k) (a multi-index trajectory); got "
            f"{s.shape}. For a single-index trajectory use sst.plot_particles."
        )
    a0 = np.asarray(traj.ys.a)[valid][0]
    k = s.shape[2]
    norm = plt.Normalize(a0.min(), a0.max() if a0.max() > a0.min() else a0.min() + 1.0)
    colours = plt.get_cmap(cmap)(norm(a0))
    panels = k + (1 if k >= 2 else 0)
    fig, axes = plt.subplots(1, panels, figsize=(3.6 * panels, 3.4), squeeze=False)
    axes = axes[0]
    positive = ts > 0
    for r in range(k):
        for i in range(s.shape[1]):
            axes[r].semilogx(ts[positive], s[positive, i, r], color=colours[i], lw=1)
        axes[r].set_xlabel("time $t$")
        axes[r].set_ylabel(f"overlap $s_{{i{r + 1}}}$ with $u_{r + 1}$")
        axes[r].set_ylim(-1.05, 1.05)
    if k >= 2:
        plane = axes[-1]
        for i in range(s.shape[1]):
            plane.plot(s[:, i, 0], s[:, i, 1], color=colours[i], lw=1)
        plane.plot(s[-1, :, 0], s[-1, :, 1], "k.", ms=4)
        plane.plot([-1, 1], [-1, 1], color="0.6", ls="--", lw=1)
        plane.set_xlabel("$s_{i1}$")
        plane.set_ylabel("$s_{i2}$")
        plane.set_aspect("equal")
    fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), ax=axes[-1], label="$a(0)$")
    fig.suptitle(title or f"{s.shape[1]} particles, k = {k}")
    fig.tight_layout()
    return fig


def plot_learning_times(
    eps: Float[ArrayLike, " N"],
    times: Mapping[Hashable, Float[ArrayLike, " N"]],
    title: str | None = None,
):
    """Half-learning times of an eps sweep per label (`{label: times}`, e.g. collected from
    `learning_times_by_label`) on log-log axes, each with its fitted slope
    `d log t / d log eps` (`sst.fit_exponent`) where two or more times are finite.

    **Returns:** the matplotlib figure.
    """
    eps = np.asarray(eps, dtype=float)
    fig, ax = plt.subplots(figsize=(6.0, 4.5))
    grid = np.geomspace(eps.min(), eps.max(), 50)
    for n, (label, t) in enumerate(times.items()):
        t = np.asarray(t, dtype=float)
        ok = np.isfinite(t) & (t > 0)
        if not ok.any():
            continue
        colour = _COLOURS[n % len(_COLOURS)]
        name = _name(label)
        if np.unique(eps[ok]).size >= 2:
            fit = fit_exponent(eps, t)
            name += f" (slope {fit.exponent:.3f})"
            ax.loglog(grid, fit.predict(grid), "--", color=colour, lw=1)
        ax.loglog(eps[ok], t[ok], "o", color=colour, label=name)
    ax.set_xlabel(r"$\varepsilon$")
    ax.set_ylabel("half-learning time")
    ax.set_title(title or "learning time of each monomial")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
