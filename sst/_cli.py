"""The `sst` command: integrate a configured problem, write trajectories, summaries and plots.

- `sst run CONFIG.toml --out DIR`: one run per eps in the config. With a single eps the files go
  in `DIR`, with a list each member gets `DIR/eps=<eps>/`. Files: `trajectory.npz`,
  `summary.json` (learning times, final risk, solver statistics, versions, the config) and the
  plots `risk.png` and `particles.png`.
- `sst sweep CONFIG.toml --out DIR`: the same for two or more eps, then the fitted exponents
  `d log t_k / d log eps` in `DIR/sweep.json` and the plot `DIR/scaling.png` (docs: [time
  scales][time-scales]).
- `sst sweep CONFIG.toml --out DIR --shard I/N`: only members `j` with `j % N == I` (in the
  config's order), for a scheduler's job array or several hosts; each shard writes its members'
  folders and a marker `DIR/shard-I-of-N.json` (host, process, its members, failures), not the
  fits. In a process that ran `jax.distributed.initialize()` (`jax.process_count() > 1`; the
  command itself never initializes it) the shard defaults to
  `jax.process_index() / jax.process_count()`.
- `sst merge DIR`: once every shard has finished, read the members' `summary.json` (and
  `error.json`) files anywhere under `DIR` and write the `sweep.json` and `scaling.png` that one
  process would have written. It is a separate step rather than automatic on process 0: a job
  array has no barrier, a barrier hangs when one process dies, and without a shared file system
  the members must first be copied together.

Each member's files are written as soon as it finishes, so a later failure loses nothing; the
command exits with status 1 if any member failed. The arguments are parsed by the module `sst_cli`
before this one (and JAX) is imported, so `sst --help` and usage errors answer at once.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import json
import math
import pathlib
import platform
import sys
import tempfile
import time
from typing import Any

import jax
import matplotlib.pyplot as plt
import numpy as np
from tqdm.auto import tqdm

import sst_cli

from ._config import RunConfig, read_toml
from ._io import save_trajectory
from ._plot import plot_particles, plot_risk, plot_scaling
from ._solution import Trajectory, describe_steps
from ._solve import solve
from ._timescales import (
    MIN_FIT_POINTS,
    _carried,
    detect_phases,
    fit_scalings,
    label_name,
    learning_times,
    local_exponents,
)

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
    # The distribution of the package `sst` is `sst-timescales` (`sst` on PyPI is another one).
    out = {"python": platform.python_version(), "sst": importlib.metadata.version("sst-timescales")}
    for name in ("jax", "diffrax", "equinox", "lineax", "numpy"):
        out[name] = importlib.metadata.version(name)
    return out


def learning_time_table(traj: Trajectory) -> dict[str, dict[str, Any]]:
    """`{name: {"label": alpha, "half": t, "ninety": t}}` for each residual label carried at the
    start or learned later, keyed by `sst.label_name` (`"degree 2"`, `"z1 z2"`): the label as a
    list (`[2]`, `[1, 1, 0]`) and the times at which half and 90% of `r_alpha^2` is learned
    (`nan` where not learned by the last time)."""
    times = {name: learning_times(traj, f) for name, f in _FRACTIONS.items()}
    keep = _carried(traj) | np.isfinite(times["half"])
    return {
        label_name(label): {
            "label": list(label),
            **{name: float(t[j]) for name, t in times.items()},
        }
        for j, label in enumerate(traj.residual_labels)
        if keep[j]
    }


def run_member(
    config: RunConfig, eps: float, out: pathlib.Path, progress: bool, dense: bool = False
) -> dict:
    """Solve one member of the run, write its files into `out`, return its summary.

    The solve never raises on a solver failure (`throw=False`): the partial trajectory is
    written with its `valid` mask and the summary says `"success": false`. With `dense`, the
    learning times and phases are located on the solver's dense output (to the solver's
    tolerance whatever `n_save`), at the price of every step's interpolant in memory (about 32
    bytes per unknown and step of `max_steps` with `Rodas4`: 116 MB for `examples/quickstart.toml`)
    and a few seconds more compilation; the figure then draws the model's own rounding floor.
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
        dense=dense,
    )
    wall = time.perf_counter() - start
    # The file holds data only: the dense output carries the model and its interpolants.
    save_trajectory(out / "trajectory.npz", dataclasses.replace(traj, dense=None))
    valid = np.asarray(traj.valid)
    risk = np.asarray(traj.risk)[valid]
    summary = {
        "eps": eps,
        "model": config.model,
        "final_risk": float(risk[-1]),
        "learning_times": learning_time_table(traj),
        "phases": [vars(p) for p in detect_phases(traj)],
        "solver": {
            "success": bool(traj.success),
            "t_reached": float(np.asarray(traj.ts)[valid][-1]),
            **{name: int(value) for name, value in traj.stats.items()},
            "rtol": traj.rtol,
            "atol": traj.atol,
            "max_steps": s["max_steps"],
            "wall_time_s": wall,
            "dense_output": dense,
        },
        "versions": versions(),
        "config": config.to_dict(),
    }
    _write_json(out / "summary.json", summary)
    tau = config.problem["tau"]
    noisy = f", SGD noise tau={tau:g}" if tau else ""
    name = f"{config.model}: {model.problem}{noisy}\nrtol={traj.rtol:g}, atol={traj.atol:g}"
    for filename, plot in (("risk.png", plot_risk), ("particles.png", plot_particles)):
        fig = plot(traj, title=name)
        fig.savefig(out / filename, dpi=150)
        plt.close(fig)
    return summary


def member_dir(out: pathlib.Path, eps: float, n_members: int) -> pathlib.Path:
    """Where a member's files go: `out` itself for a single run, else `out/eps=<eps>`."""
    return out if n_members == 1 else out / f"eps={eps:g}"


def run(
    config: RunConfig,
    out: pathlib.Path,
    progress: bool,
    shard: tuple[int, int] = (0, 1),
    dense: bool = False,
) -> tuple[list[dict], list[str]]:
    """Run the eps of `config` (of shard `(i, n)`: members `j % n == i` only); return the
    summaries of the members and the failures. `dense` as in `run_member`."""
    eps_list = config.eps_list
    mine = shard_members(eps_list, shard)
    summaries, failures = [], []
    for eps in tqdm(mine, desc="eps", disable=len(mine) <= 1 or not progress):
        target = member_dir(out, eps, len(eps_list))
        (target / "error.json").unlink(missing_ok=True)  # from an earlier, failed attempt
        try:
            summary = run_member(config, eps, target, progress, dense)
        except Exception as err:  # one bad member must not lose the others
            target.mkdir(parents=True, exist_ok=True)
            error = {"eps": eps, "error": repr(err), "config": config.to_dict()}
            _write_json(target / "error.json", error)
            failures.append(f"eps={eps:g}: {err!r}")
            continue
        _add_summary(summary, summaries, failures)
    return summaries, failures


def _add_summary(summary: dict, summaries: list[dict], failures: list[str]) -> None:
    """Keep a member's summary, and say so in `failures` if its solver stopped early."""
    summaries.append(summary)
    if not summary["solver"]["success"]:
        failures.append(
            f"eps={summary['eps']:g}: the solver stopped at t={summary['solver']['t_reached']:g} "
            f"after {describe_steps(summary['solver'])}; raise solver.max_steps or loosen "
            "solver.rtol/atol"
        )


def shard_members(eps_list: list[float], shard: tuple[int, int]) -> list[float]:
    """The members of shard `(i, n)`: those at positions `j % n == i` of the sweep."""
    i, n = shard
    return eps_list[i::n]


def parse_shard(spec: str | None) -> tuple[int, int]:
    """`"I/N"` as `(I, N)`; `None` gives this process's share under `jax.distributed` (else
    `(0, 1)`, everything). Raises `ValueError` for anything but integers `0 <= I < N`."""
    if spec is None:
        return jax.process_index(), jax.process_count()
    return sst_cli.shard_spec(spec)


def write_shard_marker(
    out: pathlib.Path, shard: tuple[int, int], config: RunConfig, failures: list[str]
) -> pathlib.Path:
    """Record which members shard `(i, n)` ran, where, and which failed; return the path."""
    i, n = shard
    path = out / f"shard-{i}-of-{n}.json"
    marker = {
        "shard": i,
        "shards": n,
        "eps": shard_members(config.eps_list, shard),
        "failures": failures,
        "host": platform.node(),
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
        "config": config.to_dict(),
    }
    _write_json(path, marker)
    return path


def collect_members(out: pathlib.Path) -> tuple[list[dict], list[str]]:
    """Read every member folder (`summary.json` or `error.json`) under `out`, check that they
    are the members of one sweep, each exactly once, and return the summaries in the config's
    order with the failures, as `run` would have. Raises `ValueError` naming what is wrong."""
    folders = sorted({p.parent for name in ("summary.json", "error.json") for p in out.rglob(name)})
    if not folders:
        raise ValueError(
            f"{out} holds no member summaries (eps=*/summary.json); run `sst sweep CONFIG --out "
            f"{out} --shard I/N` for every shard first."
        )
    records = []
    for folder in folders:
        error = folder / "error.json"
        # A member that raised has error.json (and maybe a summary written before the error).
        data = json.loads((error if error.exists() else folder / "summary.json").read_text())
        records.append((folder, data, error.exists()))
    with_config = [(folder, data["config"]) for folder, data, _ in records if "config" in data]
    if not with_config:
        raise ValueError(f"no member under {out} records its config; rerun the sweep's shards.")
    first, config = with_config[0]
    for folder, other in with_config[1:]:
        if other != config:
            raise ValueError(
                f"{folder.relative_to(out)} comes from another config than "
                f"{first.relative_to(out)}; merge the folders of one sweep only."
            )
    eps_list = RunConfig.from_dict(config).eps_list
    by_eps: dict[float, tuple] = {}
    for record in records:
        eps = float(record[1]["eps"])
        if eps in by_eps:
            raise ValueError(
                f"member eps={eps:g} appears twice under {out} ({by_eps[eps][0].relative_to(out)} "
                f"and {record[0].relative_to(out)}); keep one folder per member and merge again."
            )
        by_eps[eps] = record
    missing = [eps for eps in eps_list if eps not in by_eps]
    if missing:
        raise ValueError(
            f"{out} lacks {len(missing)} of the sweep's {len(eps_list)} members (eps="
            f"{', '.join(f'{e:g}' for e in missing)}); run the shards that hold them (or let them "
            "finish) and merge again."
        )
    summaries, failures = [], []
    for eps in eps_list:
        _, data, failed = by_eps[eps]
        if failed:
            failures.append(f"eps={eps:g}: {data['error']}")
            continue
        _add_summary(data, summaries, failures)
    return summaries, failures


def sweep_analysis(summaries: list[dict], out: pathlib.Path) -> dict:
    """Fit the exponents of the half-learning times over the members whose solve succeeded
    (members that failed are listed in `excluded`, labels with fewer than three learned points
    in `not_fitted`); write `sweep.json` and the scaling plot.

    The columns of `half` and `ninety` are the residual labels of any member, in the order of
    `labels` (their names, as keys of the members' `learning_times`); `exponents` and
    `local_exponents` are keyed by those names."""
    excluded = [s["eps"] for s in summaries if not s["solver"]["success"]]
    summaries = [s for s in summaries if s["solver"]["success"]]
    eps = np.array([s["eps"] for s in summaries])
    entries = {name: e for s in summaries for name, e in s["learning_times"].items()}
    names = list(entries)
    labels = [tuple(entries[name]["label"]) for name in names]
    times = {
        fraction: np.array(
            [
                [_nan_if_none(s["learning_times"].get(name, {}).get(fraction)) for name in names]
                for s in summaries
            ]
        ).reshape(len(summaries), len(names))
        for fraction in _FRACTIONS
    }
    fits = fit_scalings(eps, times["half"], labels) if len(summaries) >= 2 else {}
    present = [j for j in range(len(names)) if np.any(np.isfinite(times["half"][:, j]))]
    result = {
        "labels": names,
        "eps": eps.tolist(),
        "excluded": excluded,
        "not_fitted": [names[j] for j in present if j not in fits],
        "half": times["half"].tolist(),
        "ninety": times["ninety"].tolist(),
        "exponents": {names[j]: vars(f) for j, f in fits.items()},
        "local_exponents": {
            names[j]: local_exponents(eps, times["half"][:, j], log_factor=f.log_factor).tolist()
            for j, f in fits.items()
        },
    }
    _write_json(out / "sweep.json", result)
    if summaries and names:
        solver = summaries[0]["solver"]
        title = (
            f"half-learning times ({summaries[0]['model']}, rtol={solver['rtol']:g}, "
            f"atol={solver['atol']:g})"
        )
        fig = plot_scaling(eps, times["half"], fits, title=title, labels=labels)
        fig.savefig(out / "scaling.png", dpi=150)
        plt.close(fig)
    return result


def _nan_if_none(x: float | None) -> float:
    return float("nan") if x is None else float(x)


def main(argv: list[str] | None = None) -> int:
    """The `sst` command with the arguments `argv` (default: the command line); returns the exit
    status. The console script itself is `sst_cli.main`, which parses the arguments before JAX
    is imported and then calls `execute`."""
    return sst_cli.main(argv)


def execute(args: argparse.Namespace) -> int:
    """Run the command parsed by `sst_cli.parser()`; returns the exit status."""
    jax.config.update("jax_enable_x64", True)
    if args.command == "merge":
        try:
            summaries, failures = collect_members(args.out)
        except (OSError, ValueError) as err:
            print(f"sst: error: {err}", file=sys.stderr)
            return 2
        return _report(summaries, failures, args.out, fit=True)
    shard = (0, 1)
    if args.command == "sweep":
        try:
            shard = parse_shard(args.shard)
        except ValueError as err:
            print(f"sst: error: {err}", file=sys.stderr)
            return 2
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
    problem = _unwritable(args.out)
    if problem:
        print(f"sst: error: --out {args.out}: {problem}", file=sys.stderr)
        return 2
    summaries, failures = run(config, args.out, progress, shard)
    if shard[1] > 1:
        marker = write_shard_marker(args.out, shard, config, failures)
        print(
            f"shard {shard[0]}/{shard[1]}: {len(shard_members(config.eps_list, shard))} of "
            f"{len(config.eps_list)} members, marker {marker.name}; once every shard has "
            f"finished, `sst merge {args.out}` writes sweep.json and scaling.png"
        )
    return _report(summaries, failures, args.out, fit=args.command == "sweep" and shard[1] == 1)


def _unwritable(out: pathlib.Path) -> str | None:
    """Create the output folder; say in one phrase why it cannot hold the results, if so."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except FileExistsError:
        return "it is a file, not a folder; name a folder"
    except NotADirectoryError:
        return "a parent of it is a file, not a folder; name a path under a folder"
    except PermissionError:
        return "no permission to write there; name a folder you can write to"
    except OSError as err:
        return f"cannot write there ({err.strerror}); name another folder"
    return None


def _report(summaries: list[dict], failures: list[str], out: pathlib.Path, fit: bool) -> int:
    """Print the members (and, with `fit`, write and print the fits); return the exit status."""
    for s in summaries:
        learned = {k: _nan_if_none(v["half"]) for k, v in s["learning_times"].items()}
        lt = ", ".join(f"{k} at t={t:.3g}" for k, t in learned.items() if math.isfinite(t))
        missing = [k for k, t in learned.items() if not math.isfinite(t)]
        not_learned = f"; not half learned: {', '.join(missing)}" if missing else ""
        risk = _nan_if_none(s["final_risk"])
        print(
            f"eps={s['eps']:g}: final risk {risk:.3e}; half-learned {lt}{not_learned}; "
            f"{describe_steps(s['solver'])}"
        )
    if fit and summaries:
        result = sweep_analysis(summaries, out)
        for name, f in result["exponents"].items():
            log = " (t/log(1/eps))" if f["log_factor"] else ""
            local = result["local_exponents"][name][-1]
            heuristic = _nan_if_none(f["heuristic"])
            stated = f", heuristic {heuristic:g}" if math.isfinite(heuristic) else ""
            print(
                f"{name}: exponent{log} {f['exponent']:.3f} +- {f['stderr']:.3f} "
                f"(local slope at the smallest eps {local:.3f}){stated}"
            )
        for name in result["not_fitted"]:
            print(f"{name}: not fitted (learned at fewer than {MIN_FIT_POINTS} eps)")
        if result["excluded"]:
            listed = ", ".join(f"{e:g}" for e in result["excluded"])
            print(f"excluded from the fits (solve failed): eps = {listed}")
    print(f"wrote {out}")
    for f in failures:
        print(f"sst: member failed: {f}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
