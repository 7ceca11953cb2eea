"""Every ```python block of the README runs as pasted: all of them, in order, in one fresh
interpreter, as a reader copying them one after another would."""

import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent

_RUNNER = """
import sys, time
blocks = {blocks!r}
namespace = {{"__name__": "__main__"}}
for i, block in enumerate(blocks):
    start = time.perf_counter()
    exec(compile(block, f"README block {{i + 1}}", "exec"), namespace)
    print(f"README block {{i + 1}}: {{time.perf_counter() - start:.1f}} s", file=sys.stderr)
"""


def python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", (ROOT / "README.md").read_text(), re.S | re.M)


@pytest.mark.slow
def test_readme_python_blocks_run_in_order(tmp_path):
    blocks = python_blocks()
    assert len(blocks) >= 4, "the README lost its examples"
    result = subprocess.run(
        [sys.executable, "-c", _RUNNER.format(blocks=blocks)],
        cwd=tmp_path,  # a fresh folder: the blocks must not rely on files of the checkout
        env={
            "PATH": "/usr/bin:/bin",
            "MPLBACKEND": "Agg",
            "PYTHONPATH": str(ROOT),
            # Only the compiler settings of the suite (tests/conftest.py), nothing of sst's.
            "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
        },
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    # Each block prints what it computes.
    assert result.stdout.count("\n") >= len(blocks), result.stdout
    times = [float(t) for t in re.findall(r"README block \d+: ([\d.]+) s", result.stderr)]
    assert len(times) == len(blocks), result.stderr[-2000:]
