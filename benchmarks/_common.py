"""What every benchmark shares: the device it runs on, best-of timing, sizes, the RESULT line.

The benchmarks import it as `from _common import ...` (Python puts the script's folder,
`benchmarks/`, first on the path).
"""

from __future__ import annotations

import datetime
import io
import json
import os
import pathlib
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import jax

RESULTS_DIR = pathlib.Path(__file__).resolve().parent.parent / "docs" / "benchmarks"


def device() -> dict[str, str]:
    """The default backend (`cpu`, `gpu`, `tpu`) and the kind of its first device, with spaces
    made underscores so that it stays one `key=value` field (`NVIDIA_H200`)."""
    return {
        "backend": jax.default_backend(),
        "device": jax.devices()[0].device_kind.replace(" ", "_"),
    }


def device_header() -> str:
    """One line naming the backend, the device kind and how many devices there are."""
    d = device()
    return (
        f"device: {d['device']} on backend {d['backend']}, {jax.device_count()} device(s), "
        f"jax {jax.__version__}"
    )


def on_gpu() -> bool:
    return jax.default_backend() == "gpu"


def sized(cpu: Any, gpu: Any) -> Any:
    """`gpu` on a GPU, else `cpu`: batches and particle numbers large enough to fill a GPU
    would take hours on a CPU, and the CPU's sizes leave a GPU idle."""
    return gpu if on_gpu() else cpu


def best_of_each(
    *fns: Callable[[], Any], repeats: int = 3, warmup: bool = True
) -> tuple[list[float], list[Any]]:
    """Best wall time of each of `fns` over `repeats` calls, and the result of its last call.

    With `warmup`, each is called once first (to compile) and that call is not timed. The calls
    are interleaved, so that the load of a shared machine hits all of them alike.
    """
    if warmup:
        for fn in fns:
            jax.block_until_ready(fn())
    best = [float("inf")] * len(fns)
    outs: list[Any] = [None] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            outs[i] = jax.block_until_ready(fn())
            best[i] = min(best[i], time.perf_counter() - start)
    return best, outs


def best_of(fn: Callable[[], Any], repeats: int = 3, warmup: bool = True) -> tuple[float, Any]:
    """`best_of_each` for one function: (best wall time, result of the last call)."""
    (seconds,), (out,) = best_of_each(fn, repeats=repeats, warmup=warmup)
    return seconds, out


def result_line(fields: dict[str, Any]) -> str:
    """`RESULT key=value ...` with the `backend` and `device` keys added (values as given, so
    format numbers before passing them)."""
    return "RESULT " + " ".join(f"{k}={v}" for k, v in (fields | device()).items())


class Record:
    """Everything a benchmark prints, kept to write its result file at the end.

    `Record(__file__, __doc__)` at the start of `main` copies standard output into a buffer;
    `print_result(fields, record)` then writes `docs/benchmarks/NAME.json` (NAME the script's
    name) with the machine, date, device, commit, the whole printed output and the RESULT line:
    the docs' Benchmarks page renders it (docs/scripts/bench_tables.py).
    """

    def __init__(self, script: str, doc: str | None, mode: str = "full"):
        self.name = pathlib.Path(script).stem
        self.doc = (doc or "").strip()
        self.mode = mode
        self.command = " ".join(["python", f"benchmarks/{self.name}.py", *sys.argv[1:]])
        self.buffer = io.StringIO()
        self._stdout = sys.stdout
        sys.stdout = _Tee(self._stdout, self.buffer)

    def write(self, line: str) -> pathlib.Path:
        sys.stdout = self._stdout
        title, _, rest = self.doc.partition("\n")
        data = {
            "title": title.strip(),
            "command": self.command,
            "mode": self.mode,
            "date": datetime.date.today().isoformat(),
            "machine": _machine(),
            "device": jax.default_backend(),
            "code": _commit(),
            "setup": rest.strip().split("\n\n")[0] if rest.strip() else "",
            "output": self.buffer.getvalue(),
            "result": line,
        }
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        path = RESULTS_DIR / f"{self.name}.json"
        path.write_text(json.dumps(data, indent=1) + "\n")
        return path


class _Tee(io.TextIOBase):
    def __init__(self, *streams):
        self.streams = streams

    def write(self, text: str) -> int:
        for stream in self.streams:
            stream.write(text)
        return len(text)

    def flush(self) -> None:
        for stream in self.streams:
            stream.flush()


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    devices = ", ".join(sorted({d.device_kind for d in jax.devices()}))
    return (
        f"{platform.system()} {cpu}, {os.cpu_count()} cores, {devices} ({jax.default_backend()}), "
        f"jax {jax.__version__}, load {load:.1f} at the end"
    )


def _commit() -> str:
    try:
        rev = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=RESULTS_DIR.parent.parent,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev


def print_result(fields: dict[str, Any], record: Record | None = None) -> None:
    """Print the RESULT line; with the `record` of a full run, also write the benchmark's result
    file (a `--quick` run does not replace the figures of the last full run)."""
    line = result_line(fields)
    print(line)
    if record is not None and record.mode == "full":
        print(f"wrote {record.write(line).relative_to(RESULTS_DIR.parent.parent)}")
