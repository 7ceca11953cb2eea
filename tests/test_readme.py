"""Every ```python block of the README runs as pasted: all of them, in order, in one fresh
interpreter, as a reader copying them one after another would; and prints what the README says.

A line `#> TEXT` under a line of code states one line that the block prints, in order. The check
compares the words exactly and every number to a relative `RTOL`, so that a result that drifts
(a changed solver, a stale comment) fails here rather than misleading a reader.
"""

import importlib.util
import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent

# The README says "to 2%".
RTOL = 0.02

_RUNNER = """
import contextlib, io, json, sys, time
blocks = {blocks!r}
namespace = {{"__name__": "__main__"}}
printed = []
for i, block in enumerate(blocks):
    start = time.perf_counter()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(block, f"README block {{i + 1}}", "exec"), namespace)
    printed.append(out.getvalue())
    print(f"README block {{i + 1}}: {{time.perf_counter() - start:.1f}} s", file=sys.stderr)
json.dump(printed, sys.stdout)
"""

# A number on its own: not a digit of a name such as `z1` or `r_2`.
_NUMBER = re.compile(r"(?<![\w.])[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?(?![\w.])")


def python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", (ROOT / "README.md").read_text(), re.S | re.M)


def expected_output(block: str) -> list[str]:
    """The lines the README says `block` prints: its `#> ` comments, in order."""
    return [line.strip()[3:] for line in block.splitlines() if line.strip().startswith("#> ")]


def line_mismatch(expected: str, actual: str, rtol: float = RTOL) -> str | None:
    """Why `actual` is not `expected` (same words, numbers within `rtol`), or None."""
    words = _NUMBER.sub("<number>", expected).split(), _NUMBER.sub("<number>", actual).split()
    if words[0] != words[1]:
        return "the words differ"
    for e, a in zip(_NUMBER.findall(expected), _NUMBER.findall(actual), strict=True):
        if not abs(float(a) - float(e)) <= rtol * abs(float(e)):
            return f"{a} is not {e} to {rtol:.0%}"
    return None


def test_expected_output_comparison():
    assert (
        line_mismatch("final risk 2.255e-10, r_k 0.0564", "final risk 2.26e-10, r_k 0.0563") is None
    )
    assert (
        line_mismatch("{'z1': 0.031, 'z1 z2': 0.0916}", "{'z1': 0.0311, 'z1 z2': 0.0915}") is None
    )
    assert line_mismatch("1094 accepted steps", "1137 accepted steps") is not None
    assert line_mismatch("degree 3: exponent 0.262", "degree 2: exponent 0.262") is not None
    assert line_mismatch("RESULTS.successful", "RESULTS.max_steps_reached") is not None
    assert line_mismatch("risks 1e-5 2e-5", "risks 1e-5") is not None


def _readme_outputs():
    path = ROOT / "docs" / "scripts" / "readme_outputs.py"
    spec = importlib.util.spec_from_file_location("readme_outputs", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_outputs_script_restates_the_blocks():
    """docs/scripts/readme_outputs.py writes what the blocks print into their #> lines."""
    script = _readme_outputs()
    readme = (
        "text\n```python\nprint(1)\n#> 2\nprint(3)\n    #> 4\n```\nmore\n```python\nx = 1\n```\n"
    )
    new, skipped = script.rewrite_blocks(readme, ["1\n3\n", ""])
    assert new == readme.replace("#> 2", "#> 1").replace("#> 4", "#> 3") and skipped == []
    assert script.rewrite_blocks(readme, ["1\n", ""]) == (readme, [1])
    # The README restated with its own #> lines is the README.
    text = (ROOT / "README.md").read_text()
    stated = ["".join(line + "\n" for line in expected_output(b)) for b in python_blocks()]
    assert script.rewrite_blocks(text, stated) == (text, [])


def test_readme_states_expected_output():
    blocks = python_blocks()
    stated = [i + 1 for i, block in enumerate(blocks) if expected_output(block)]
    assert len(stated) >= 4, f"only README blocks {stated} state what they print"


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
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    times = [float(t) for t in re.findall(r"README block \d+: ([\d.]+) s", result.stderr)]
    assert len(times) == len(blocks), result.stderr[-2000:]
    printed = json.loads(result.stdout)
    problems = []
    for i, (block, out) in enumerate(zip(blocks, printed, strict=True)):
        assert out.strip(), f"README block {i + 1} prints nothing"
        expected, actual = expected_output(block), out.rstrip("\n").split("\n")
        if not expected:
            continue
        if len(expected) != len(actual):
            problems.append(f"block {i + 1}: states {len(expected)} lines, prints {actual}")
            continue
        for e, a in zip(expected, actual, strict=True):
            why = line_mismatch(e, a)
            if why:
                problems.append(f"block {i + 1}: {why}\n  README: {e}\n  prints: {a}")
    assert not problems, "\n".join(
        [*problems, "If the change is intended: python docs/scripts/readme_outputs.py"]
    )
