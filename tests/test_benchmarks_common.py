"""benchmarks/_common.py: the device named in the RESULT line, best-of timing, device sizes."""

import importlib.util
import pathlib
import time

import jax

ROOT = pathlib.Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("_common", ROOT / "benchmarks" / "_common.py")
common = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(common)


def test_result_line_names_backend_and_device():
    line = common.result_line({"speedup": "1.500", "n": 32})
    assert line.startswith("RESULT ")
    fields = dict(field.split("=", 1) for field in line.split()[1:])
    kind = jax.devices()[0].device_kind
    assert fields == {
        "speedup": "1.500",
        "n": "32",
        "backend": jax.default_backend(),
        "device": kind.replace(" ", "_"),
    }
    header = common.device_header()
    assert kind.replace(" ", "_") in header and f"{jax.device_count()} device(s)" in header


def test_best_of_each_takes_the_fastest_warm_call_of_each():
    durations = {"a": iter([0.3, 0.2, 0.01, 0.15]), "b": iter([0.3, 0.02, 0.2, 0.16])}

    def sleeper(name):
        def call():
            seconds = next(durations[name])
            time.sleep(seconds)
            return seconds

        return call

    (a, b), outs = common.best_of_each(sleeper("a"), sleeper("b"), repeats=3)
    # The 0.3 s warm-up calls are not timed; the best of the three timed calls is kept
    # (the gaps leave room for a loaded machine oversleeping).
    assert 0.01 <= a < 0.15 and 0.02 <= b < 0.15
    assert outs == [0.15, 0.16]  # results of the last calls
    seconds, out = common.best_of(lambda: time.sleep(0.01) or "done", repeats=1, warmup=False)
    assert seconds >= 0.01 and out == "done"


def test_sized_picks_the_gpu_size_only_on_a_gpu():
    expected = "gpu" if jax.default_backend() == "gpu" else "cpu"
    assert common.sized("cpu", "gpu") == expected
