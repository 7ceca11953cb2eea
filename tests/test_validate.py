"""`import sst` leaves JAX's configuration alone, and every entry point that needs float64 says
so (the one line to add) when it is off; the shared input checks."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from sst._validate import check_count, check_key, check_times

TESTS = pathlib.Path(__file__).resolve().parent

# A fresh interpreter: nothing but sst (and the test helpers) imported, x64 never touched.
_X64_SCRIPT = """
import json
import jax
import numpy as np
import sst
from helpers import Point, Relaxation, TS

report = {"x64_after_import": bool(jax.config.jax_enable_x64)}
# Objects that need float64 to be built are built with it on, then it is turned off again.
jax.config.update("jax_enable_x64", True)
problem = sst.Problem(sst.Hermite([0.0, 1.0]), sst.Hermite([1.0, 1.0]), eps=1e-2)
init = sst.random_init(jax.random.key(0), 2, 3)
jax.config.update("jax_enable_x64", False)
model = Relaxation([1.0], [0.0], 1e-2)  # a model outside sst, so that solve itself checks
x0 = Point(np.ones(1))
entry_points = {
    "Problem": lambda: sst.Problem(sst.Hermite([0.0, 1.0]), sst.Hermite([1.0]), eps=1e-2),
    "solve": lambda: sst.solve(model, x0, TS),
    "solve_batch": lambda: sst.solve_batch(model, x0, TS, eps=np.array([1e-2, 1e-3])),
    "train": lambda: sst.train(problem, init, np.linspace(0.0, 1.0, 3), eta=0.1),
}
for name, call in entry_points.items():
    try:
        call()
        report[name] = None
    except RuntimeError as err:
        report[name] = str(err)
print(json.dumps(report))
"""


@pytest.mark.slow
def test_import_leaves_x64_off_and_entry_points_say_what_to_add():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), str(TESTS.parent)]))
    env.pop("JAX_ENABLE_X64", None)
    out = subprocess.run(
        [sys.executable, "-c", _X64_SCRIPT],
        env=env,
        cwd=TESTS.parent,
        capture_output=True,
        text=True,
        check=True,
    )
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report.pop("x64_after_import") is False
    for name, message in report.items():
        assert message is not None, f"{name} ran with float64 off"
        assert f"sst.{name} needs float64" in message, (name, message)
        assert "jax.config.update('jax_enable_x64', True)" in message, (name, message)


def test_this_process_runs_with_x64_and_strict_promotion():
    # conftest.py turns both on, as diffrax's suite does; sst itself never does.
    assert jax.config.jax_enable_x64
    assert jax.config.jax_numpy_dtype_promotion == "strict"


@pytest.mark.parametrize(
    "ts, match",
    [
        ([0.0, 1.0, 0.5], "strictly increasing"),
        ([0.0, 0.0, 1.0], "strictly increasing"),
        ([0.0, float("inf")], "NaN or inf"),
        ([1.0], "at least two times"),
        ([[0.0, 1.0]], "1-d array"),
    ],
)
def test_check_times(ts, match):
    with pytest.raises(ValueError, match=match):
        check_times(ts)
    np.testing.assert_array_equal(check_times([0, 1, 3]), [0.0, 1.0, 3.0])


@pytest.mark.parametrize("value", [0, -1, 1.5, True, "2", None])
def test_check_count(value):
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        check_count("steps", value)
    assert check_count("steps", np.int64(3)) == 3 and check_count("k", 0, low=0) == 0


def test_check_key():
    check_key(jax.random.key(0))
    check_key(jax.random.PRNGKey(0))
    for bad in (0, np.zeros(2, np.uint32), jax.numpy.zeros(3, jax.numpy.uint32)):
        with pytest.raises(ValueError, match="key must be a JAX PRNG key"):
            check_key(bad)
