"""Fitted learning-time exponents of the eps sweep, and the time of `sst run` on the example.

Runs the sweep of `examples/sweep.toml` (eps = 1e-2 ... 1e-10; `--quick`: 1e-2 ... 1e-5) through
the same code as `sst sweep`, prints the exponents `d log t_k / d log eps` of the half-learning
times with their standard errors next to the heuristics of the docs' [time scales][time-scales],
the separation
`t_2 / t_1` at the smallest eps, and the wall time of `sst run examples/quickstart.toml` in a
fresh process (imports and compilation included). The learning times are located on the
solver's dense output, to the solver's tolerance whatever the save grid. Figures go to
out/benchmarks/timescales/; a full run keeps the scaling plot and the risk curve at the
smallest eps next to its result file (docs/benchmarks/timescales_*.png).
The same sizes on every device: the members are single small solves, latency-bound on a GPU.
"""

from __future__ import annotations

import argparse
import math
import pathlib
import shutil
import subprocess
import sys
import time

import jax
from _common import Record, device_header, print_result

from sst import label_name
from sst._cli import member_dir, run, sweep_analysis
from sst._config import RunConfig, read_toml

# The sweep runs in this process through the `sst sweep` code, which (as all of sst) leaves
# JAX's configuration to its caller.
jax.config.update("jax_enable_x64", True)

ROOT = pathlib.Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="eps down to 1e-5 only")
    args = parser.parse_args()
    record = Record(__file__, __doc__, "quick" if args.quick else "full")
    print(device_header())
    out = ROOT / "out" / "benchmarks" / "timescales"
    shutil.rmtree(out, ignore_errors=True)  # no stale members from an earlier, longer sweep
    out.mkdir(parents=True)

    cli_out = out / "cli"
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "sst._cli", "run", str(ROOT / "examples" / "quickstart.toml")]
        + ["--out", str(cli_out), "--no-progress"],
        check=True,
        capture_output=True,
    )
    cli_s = time.perf_counter() - start

    raw = read_toml(ROOT / "examples" / "sweep.toml")
    if args.quick:
        raw["problem"]["eps"] = [1e-2, 1e-3, 1e-4, 1e-5]
    config = RunConfig.from_dict(raw)
    start = time.perf_counter()
    summaries, failures = run(config, out / "sweep", progress=sys.stderr.isatty(), dense=True)
    sweep_s = time.perf_counter() - start
    result = sweep_analysis(summaries, out / "sweep")

    print(
        f"eps sweep: {config.init['particles']} {config.init['law']} particles, "
        f"rtol={config.solver['rtol']:g}, atol={config.solver['atol']:g}, t in "
        f"[{config.times['t_min']:g}, {config.times['t_max']:g}], {sweep_s:.1f} s; learning "
        "times on the dense output"
    )
    print(f"{'eps':>8} {'steps':>7} {'ok':>3} {'wall s':>7} {'t_0':>10} {'t_1':>10} {'t_2':>10}")
    for s in summaries:
        t = [s["learning_times"].get(label_name((k,)), {}).get("half") for k in range(3)]
        cells = " ".join(f"{x:>10.4g}" if x is not None else f"{'-':>10}" for x in t)
        solver = s["solver"]
        print(
            f"{s['eps']:>8.0e} {solver['num_steps']:>7} {'y' if solver['success'] else 'n':>3} "
            f"{solver['wall_time_s']:>7.1f} {cells}"
        )
    for f in failures:
        print(f"failed: {f}")
    print(
        f"{'degree':>6} {'exponent':>9} {'stderr':>7} {'local':>7} {'heuristic':>9} {'points':>6}"
    )
    fields = {}
    # The summaries are keyed by label name ("degree 1"); the RESULT fields by the degree.
    degree = {name: e["label"][0] for s in summaries for name, e in s["learning_times"].items()}
    for name, f in result["exponents"].items():
        how = " (of t/log(1/eps))" if f["log_factor"] else ""
        local = result["local_exponents"][name][-1]
        k = degree[name]
        print(
            f"{k:>6} {f['exponent']:>9.3f} {f['stderr']:>7.1e} {local:>7.3f} "
            f"{f['heuristic']:>9.3g} {f['n']:>6}{how}"
        )
        fields[f"exponent_{k}"] = f"{f['exponent']:.3f}"
        fields[f"stderr_{k}"] = f"{f['stderr']:.1e}"
        fields[f"local_{k}"] = f"{local:.3f}"
    smallest = min(summaries, key=lambda s: s["eps"])
    t1 = smallest["learning_times"][label_name((1,))]["half"]
    t2 = smallest["learning_times"][label_name((2,))]["half"]
    separation = t2 / t1 if t1 and t2 else math.nan
    print("local: slope between the two smallest eps (drift = corrections to scaling)")
    print(f"t_2 / t_1 at eps = {smallest['eps']:g}: {separation:.1f}")
    print(f"sst run examples/quickstart.toml: {cli_s:.1f} s (fresh process)")
    print(f"figures: {out / 'sweep' / 'scaling.png'}, {out / 'sweep'}/eps=*/risk.png")
    # Named for the page (docs/benchmarks/), where a full run keeps them next to its file.
    at_smallest = member_dir(out / "sweep", smallest["eps"], len(config.eps_list))
    for name, source, caption in (
        (
            "timescales_scaling.png",
            out / "sweep" / "scaling.png",
            "Half-learning times per degree against eps, with the fitted slopes.",
        ),
        (
            f"timescales_risk_eps{smallest['eps']:g}.png",
            at_smallest / "risk.png",
            f"The risk and squared residuals at eps = {smallest['eps']:g}, phases shaded, "
            "the model's rounding floor dashed.",
        ),
    ):
        shutil.copyfile(source, out / name)
        record.keep_figure(out / name, caption)
    fields |= {
        "eps_min": f"{smallest['eps']:g}",
        "separation_t2_over_t1": f"{separation:.1f}",
        "sweep_s": f"{sweep_s:.1f}",
        "cli_run_s": f"{cli_s:.1f}",
        "failed_members": str(len(failures)),
    }
    print_result(fields, record)


if __name__ == "__main__":
    main()
