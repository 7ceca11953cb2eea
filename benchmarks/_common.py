"""What every benchmark shares: the device it runs on, best-of timing, sizes, the RESULT line.

The benchmarks import it as `from _common import ...` (Python puts the script's folder,
`benchmarks/`, first on the path).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import jax


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


def print_result(fields: dict[str, Any]) -> None:
    print(result_line(fields))
