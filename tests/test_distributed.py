"""Two jax.distributed processes on localhost (CPU, two host devices each) running the README's
several-hosts recipe, examples/multihost.py, give the single-process result of solve_batch."""

import importlib.util
import os
import pathlib
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import sst

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "examples" / "multihost.py"
TIMEOUT_S = 180  # both processes together; they took 11-45 s on 2 shared cores


def _example():
    spec = importlib.util.spec_from_file_location("multihost", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_two_processes(tmp_path) -> list[subprocess.Popen]:
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=2",
        PYTHONPATH=str(ROOT),
    )
    for key in ("no_proxy", "NO_PROXY"):  # the processes talk over gRPC on localhost
        env[key] = ",".join(filter(None, [env.get(key), "127.0.0.1", "localhost"]))
    port = _free_port()
    return [
        subprocess.Popen(
            [sys.executable, str(SCRIPT), "--coordinator", f"127.0.0.1:{port}"]
            + ["--num-processes", "2", "--process-id", str(i), "--out", str(tmp_path / f"{i}.npz")],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]


def _stop(procs) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


def _results(procs, tmp_path) -> list[dict]:
    outputs, deadline = [], time.monotonic() + TIMEOUT_S
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=max(1.0, deadline - time.monotonic()))[0])
    except subprocess.TimeoutExpired:
        pytest.fail(f"the two jax.distributed processes did not finish within {TIMEOUT_S} s")
    for p, out in zip(procs, outputs, strict=True):
        assert p.returncode == 0, out[-3000:]
    results = []
    for i in range(2):
        with np.load(tmp_path / f"{i}.npz") as data:
            results.append({k: data[k] for k in data.files})
    return results


@pytest.mark.slow
def test_solve_batch_across_two_processes_equals_one_process(tmp_path):
    procs = _start_two_processes(tmp_path)  # they run while this process solves the reference
    try:
        model, y0, ts, eps = _example().batch_inputs()
        single = sst.solve_batch(model, y0, ts, eps=eps)
        results = _results(procs, tmp_path)
    finally:
        _stop(procs)
    assert jax.process_count() == 1 and bool(np.all(single.success))

    for i, result in enumerate(results):
        # The mesh really spanned both processes: 4 devices, 2 of them local to each process.
        assert int(result["process_index"]) == i
        assert int(result["process_count"]) == 2
        assert int(result["mesh_devices"]) == 4 and int(result["local_devices"]) == 2
        assert bool(np.all(result["success"]))
        # Every process holds the whole batch, equal to one process's result up to rounding
        # (another reduction order, grown along the trajectory: measured 1.4e-11 relative).
        np.testing.assert_array_equal(result["num_steps"], np.asarray(single.stats["num_steps"]))
        expected = {"risk": single.risk, "a": single.ys.a, "s": single.ys.s}
        for name, value in expected.items():
            np.testing.assert_allclose(result[name], np.asarray(value), rtol=1e-10, atol=1e-15)

    # And the single-process batch is the plain per-member solve (independent of batching).
    for j in (0, len(eps) - 1):
        member = sst.MeanFieldState(y0.a[j], y0.s[j])
        problem = sst.Problem(model.problem.target, model.problem.activation, eps[j])
        alone = sst.solve(sst.MeanFieldODE(problem), member, ts)
        np.testing.assert_allclose(single.risk[j], alone.risk, rtol=1e-9, atol=1e-13)
