"""The `sst` command: integrate a configured problem, write trajectories, summaries and plots.

- `sst run CONFIG.toml --out DIR`: one run per eps in the config. With a single eps the files go
  in `DIR`, with a list each member gets `DIR/eps=<eps>/`. Files: `trajectory.npz`,
  `summary.json` (learning times, final risk, solver statistics, versions, the config) and the
  plots `risk.png` and `particles.png`.
- `sst sweep CONFIG.toml --out DIR`: the same for two or more eps, then the fitted exponents
  `d log t_k / d log eps` in `DIR/sweep.json` and the plot `DIR/scaling.png` (THEORY.md
  section 6).

Each member's files are written as soon as it finishes, so a later failure loses nothing; the
command exits with status 1 if any member failed.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import pathlib
import platform
import sys
import time
from typing import Any

import jax
import matplotlib.pyplot as plt
import numpy as np
from jaxtyping import ArrayLike, Float
from tqdm import tqdm

from ._io import save_trajectory
from ._multi_plot import learning_times_by_label, plot_learning_times, plot_monomials, plot_overlaps
from ._plot import plot_particles, plot_risk, plot_scaling
from ._solution import Trajectory
from ._solve import solve
from ._timescales import (
    detect_phases,
    fit_exponent,
    fit_scalings,
    learning_times,
    local_exponents,
)
from .config import RunConfig, read_toml

_FRACTIONS = {"half": 0.5, "ninety": 0.9}


def _json_safe(x: Any) -> Any:
    """NaN and inf become `null`: strict JSON has neither."""
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_json_safe(v) for v in x]
    if isinstance(x, float | np.floating):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def _write_json(path: pathlib.Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(_json_safe(data), indent=2, allow_nan=False) + "\n")


def versions() -> dict[str, str]:
    """Versions of Python and of the packages that produced a result."""
    out = {"python": platform.python_version()}
    for name in ("sst", "jax", "diffrax", "equinox", "optimistix", "numpy"):
        out[name] = importlib.metadata.version(name)
    return out


def learning_time_table(
    traj: Trajectory, target_coeffs: Float[ArrayLike, " K"]
) -> dict[str, dict[str, float]]:
    """`{degree: {"half": t, "ninety": t}}` for the degrees of the target, and any other
    degree that was learned (`nan` where not learned by the last time). For a multi-index
    target the keys are the multi-indices carried or learned, written `"1,1,0"`."""
    times = {name: learning_times(traj, f) for name, f in _FRACTIONS.items()}
    if _is_multi_index(traj):
        labels = list(traj.residual_labels)
        return {
            _label_key(label): {name: float(t[labels.index(label)]) for name, t in times.items()}
            for label in learning_times_by_label(traj)
        }
    phi = np.asarray(target_coeffs)
    return {
        str(k): {name: float(t[k]) for name, t in times.items()}
        for k in range(phi.shape[0])
        if phi[k] != 0 or np.isfinite(times["half"][k])
    }


def run_member(config: RunConfig, eps: float, out: pathlib.Path, progress: bool) -> dict:
    """Solve one member of the run, write its files into `out`, return its summary.

    The solve never raises on a solver failure (`throw=False`): the partial trajectory is
    written with its `valid` mask and the summary says `"success": false`.
    """
    out.mkdir(parents=True, exist_ok=True)
    model, y0, ts = config.build(eps)
    s = config.solver
    start = time.perf_counter()
    traj = solve(
        model,
        y0,
        ts,
        rtol=s["rtol"],
        atol=s["atol"],
        max_steps=s["max_steps"],
        throw=False,
        progress=progress,
    )
    wall = time.perf_counter() - start
    save_trajectory(out / "trajectory.npz", traj)
    valid = np.asarray(traj.valid)
    risk = np.asarray(traj.risk)[valid]
    summary = {
        "eps": eps,
        "model": config.model,
        "final_risk": float(risk[-1]),
        "learning_times": learning_time_table(traj, model.problem.target.coeffs),
        "phases": [vars(p) for p in detect_phases(traj)],
        "solver": {
            "success": bool(traj.success),
            "t_reached": float(np.asarray(traj.ts)[valid][-1]),
            **{name: int(value) for name, value in traj.stats.items()},
            "rtol": traj.rtol,
            "atol": traj.atol,
            "max_steps": s["max_steps"],
            "wall_time_s": wall,
        },
        "versions": versions(),
        "config": config.to_dict(),
    }
    _write_json(out / "summary.json", summary)
    name = f"eps={eps:g}, {config.model}, rtol={traj.rtol:g}, atol={traj.atol:g}"
    figures = (
        (("risk.png", plot_monomials), ("overlaps.png", plot_overlaps))
        if _is_multi_index(traj)
        else (("risk.png", plot_risk), ("particles.png", plot_particles))
    )
    for filename, plot in figures:
        fig = plot(traj, title=name)
        fig.savefig(out / filename, dpi=150)
        plt.close(fig)
    return summary


def member_dir(out: pathlib.Path, eps: float, n_members: int) -> pathlib.Path:
    """Where a member's files go: `out` itself for a single run, else `out/eps=<eps>`."""
    return out if n_members == 1 else out / f"eps={eps:g}"


def run(config: RunConfig, out: pathlib.Path, progress: bool) -> tuple[list[dict], list[str]]:
    """Run every eps of `config`; return the summaries of the members and the failures."""
    eps_list = config.eps_list
    summaries, failures = [], []
    for eps in tqdm(eps_list, desc="eps", disable=len(eps_list) == 1 or not progress):
        target = member_dir(out, eps, len(eps_list))
        try:
            summary = run_member(config, eps, target, progress)
        except Exception as err:  # one bad member must not lose the others
            target.mkdir(parents=True, exist_ok=True)
            _write_json(target / "error.json", {"eps": eps, "error": repr(err)})
            failures.append(f"eps={eps:g}: {err!r}")
            continue
        summaries.append(summary)
        if not summary["solver"]["success"]:
            failures.append(
                f"eps={eps:g}: the solver stopped at t={summary['solver']['t_reached']:g} "
                f"after {summary['solver']['num_steps']} steps (raise solver.max_steps or loosen "
                "solver.rtol/atol)"
            )
    return summaries, failures


def sweep_analysis(summaries: list[dict], out: pathlib.Path) -> dict:
    """Fit the exponents of the half-learning times over the members; write JSON and plot."""
    eps = np.array([s["eps"] for s in summaries])
    keys = list(dict.fromkeys(k for s in summaries for k in s["learning_times"]))
    if not all(k.isdigit() for k in keys):
        return _multi_index_sweep(summaries, keys, eps, out)
    degrees = sorted({int(k) for s in summaries for k in s["learning_times"]})
    width = max(degrees) + 1 if degrees else 0
    times = {
        name: np.array(
            [
                [_nan_if_none(s["learning_times"].get(str(k), {}).get(name)) for k in range(width)]
                for s in summaries
            ]
        ).reshape(len(summaries), width)
        for name in _FRACTIONS
    }
    fits = fit_scalings(eps, times["half"]) if len(summaries) >= 2 else {}
    result = {
        "eps": eps.tolist(),
        "half": times["half"].tolist(),
        "ninety": times["ninety"].tolist(),
        "exponents": {str(k): vars(f) for k, f in fits.items()},
        "local_exponents": {
            str(k): local_exponents(eps, times["half"][:, k], log_factor=f.log_factor).tolist()
            for k, f in fits.items()
        },
    }
    _write_json(out / "sweep.json", result)
    if len(summaries) >= 1 and width:
        solver = summaries[0]["solver"]
        title = (
            f"half-learning times ({summaries[0]['model']}, rtol={solver['rtol']:g}, "
            f"atol={solver['atol']:g})"
        )
        fig = plot_scaling(eps, times["half"], fits, title=title)
        fig.savefig(out / "scaling.png", dpi=150)
        plt.close(fig)
    return result


def _nan_if_none(x: float | None) -> float:
    return float("nan") if x is None else float(x)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sst",
        description="Learning time-scales of two-layer networks (Berthier, Montanari, Zhou): "
        "integrate the order-parameter ODEs of a configured problem.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("run", "integrate the problem at each eps of CONFIG and write files under --out"),
        ("sweep", "run two or more eps, then fit the exponents d log t_k / d log eps"),
    ):
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("config", type=pathlib.Path, help="TOML configuration (see examples/)")
        p.add_argument("--out", type=pathlib.Path, required=True, help="output folder")
        p.add_argument(
            "--eps", type=float, nargs="+", help="override problem.eps with these values"
        )
        p.add_argument(
            "--progress",
            action=argparse.BooleanOptionalAction,
            default=None,
            help="progress bars (default: when stderr is a terminal)",
        )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `sst` console script; returns the exit status."""
    args = _parser().parse_args(argv)
    jax.config.update("jax_enable_x64", True)
    try:
        raw = read_toml(args.config)
        if args.eps and isinstance(raw.get("problem"), dict):
            raw["problem"]["eps"] = args.eps if len(args.eps) > 1 else args.eps[0]
        config = RunConfig.from_dict(raw)
    except (OSError, ValueError) as err:
        print(f"sst: error in {args.config}: {err}", file=sys.stderr)
        return 2
    if args.command == "sweep" and len(config.eps_list) < 2:
        print(
            f"sst: error in {args.config}: sweep needs problem.eps to be a list of two or more "
            f"values (or --eps E1 E2 ...); got {config.problem['eps']!r}.",
            file=sys.stderr,
        )
        return 2
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    args.out.mkdir(parents=True, exist_ok=True)
    summaries, failures = run(config, args.out, progress)
    for s in summaries:
        learned = {k: v["half"] for k, v in s["learning_times"].items()}
        lt = ", ".join(f"t_{k}={t:.3g}" for k, t in learned.items() if math.isfinite(t))
        missing = [k for k, t in learned.items() if not math.isfinite(t)]
        not_learned = f"; not half learned: degrees {', '.join(missing)}" if missing else ""
        print(f"eps={s['eps']:g}: final risk {s['final_risk']:.3e}; half-learned {lt}{not_learned}")
    if args.command == "sweep" and summaries:
        result = sweep_analysis(summaries, args.out)
        for k, f in result["exponents"].items():
            log = " (t/log(1/eps))" if f["log_factor"] else ""
            local = result["local_exponents"][k][-1]
            what = "degree" if k.isdigit() else "multi-index"
            print(
                f"{what} {k}: exponent{log} {f['exponent']:.3f} +- {f['stderr']:.3f} "
                f"(local slope at the smallest eps {local:.3f}), heuristic {f['heuristic']:g}"
            )
    print(f"wrote {args.out}")
    for f in failures:
        print(f"sst: member failed: {f}", file=sys.stderr)
    return 1 if failures else 0


# Multi-index targets: residuals labelled by multi-indices, written "1,1,0" in the summaries.


def _is_multi_index(traj: Trajectory) -> bool:
    return any(isinstance(label, tuple) for label in traj.residual_labels)


def _label_key(label: tuple[int, ...]) -> str:
    return ",".join(str(j) for j in label)


def _multi_index_sweep(
    summaries: list[dict], keys: list[str], eps: np.ndarray, out: pathlib.Path
) -> dict:
    """`sweep_analysis` for multi-index labels: one fitted slope per multi-index (no
    heuristic exponent is stated for them)."""
    times = {
        name: np.array(
            [
                [_nan_if_none(s["learning_times"].get(k, {}).get(name)) for k in keys]
                for s in summaries
            ]
        ).reshape(len(summaries), len(keys))
        for name in _FRACTIONS
    }
    fits = {}
    for j, k in enumerate(keys):
        ok = np.isfinite(times["half"][:, j]) & (times["half"][:, j] > 0)
        if np.unique(eps[ok]).size >= 2:
            fits[k] = fit_exponent(eps, times["half"][:, j])
    result = {
        "labels": keys,
        "eps": eps.tolist(),
        "half": times["half"].tolist(),
        "ninety": times["ninety"].tolist(),
        "exponents": {k: vars(f) for k, f in fits.items()},
        "local_exponents": {
            k: local_exponents(eps, times["half"][:, keys.index(k)]).tolist() for k in fits
        },
    }
    _write_json(out / "sweep.json", result)
    labelled = {
        tuple(int(j) for j in k.split(",")): times["half"][:, n] for n, k in enumerate(keys)
    }
    fig = plot_learning_times(eps, labelled, title=f"half-learning times ({summaries[0]['model']})")
    fig.savefig(out / "scaling.png", dpi=150)
    plt.close(fig)
    return result


if __name__ == "__main__":
    sys.exit(main())
