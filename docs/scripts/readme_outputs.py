"""The outputs that README.md states, regenerated: the `#>` lines under its python blocks and the
output of `make demo`. Run it from the repository root after a change that moves them (the
README test, tests/test_readme.py, fails when a stated number drifts by more than 2%), then
review the diff and commit README.md:

    .venv/bin/python docs/scripts/readme_outputs.py

It runs every python block in order in one interpreter, as a reader would, and replaces the
`#>` lines of each block, in order, by the lines the block printed; a block that prints a
different number of lines than it states is reported and left alone (edit its `#>` lines by
hand). Then it runs `python -m sst._demo` and replaces the text block that follows
"`make demo` then prints". The machine and the time of the run are in the README's text.
(docs/figures/first_solve.txt, the docs home page's output, comes from docs/scripts/first_solve.py.)
"""

from __future__ import annotations

import contextlib
import io
import os
import pathlib
import re
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent.parent
README = ROOT / "README.md"
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
_DEMO = re.compile(r"(`make demo` then prints\n\n```text\n)(.*?)(^```)", re.S | re.M)


def run_blocks(blocks: list[str]) -> list[str]:
    """What each block prints, run in order in one namespace."""
    namespace = {"__name__": "__main__"}
    printed = []
    for i, block in enumerate(blocks):
        start = time.perf_counter()
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(block, f"README block {i + 1}", "exec"), namespace)
        printed.append(out.getvalue())
        print(f"README block {i + 1}: {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return printed


def restate(block: str, printed: str) -> str | None:
    """`block` with its `#>` lines replaced, in order, by the lines of `printed`; None when the
    numbers of lines differ."""
    lines = block.split("\n")
    stated = [i for i, line in enumerate(lines) if line.lstrip().startswith("#> ")]
    actual = printed.rstrip("\n").split("\n")
    if len(stated) != len(actual):
        return None
    for i, text in zip(stated, actual, strict=True):
        indent = lines[i][: len(lines[i]) - len(lines[i].lstrip())]
        lines[i] = f"{indent}#> {text}".rstrip()
    return "\n".join(lines)


def rewrite_blocks(readme: str, printed: list[str]) -> tuple[str, list[int]]:
    """The README with every block's `#>` lines restated; the numbers of the blocks left alone
    (they state some lines, but not as many as they print)."""
    blocks = list(_BLOCK.finditer(readme))
    skipped, pieces, end = [], [], 0
    for i, (match, out) in enumerate(zip(blocks, printed, strict=True)):
        block = match.group(1)
        new = restate(block, out) if "#> " in block else block
        if new is None:
            skipped.append(i + 1)
            new = block
        pieces += [readme[end : match.start(1)], new]
        end = match.end(1)
    return "".join(pieces) + readme[end:], skipped


def main() -> None:
    readme = README.read_text()
    blocks = [m.group(1) for m in _BLOCK.finditer(readme)]
    os.environ.setdefault("MPLBACKEND", "Agg")  # the blocks draw figures, nothing is shown
    readme, skipped = rewrite_blocks(readme, run_blocks(blocks))
    for i in skipped:
        print(f"README block {i}: its #> lines are not as many as it prints; left alone")
    demo = subprocess.run(
        [sys.executable, "-m", "sst._demo", "--out", "out/demo"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    readme, found = _DEMO.subn(lambda m: m.group(1) + demo + m.group(3), readme)
    if not found:
        print("README: no text block after '`make demo` then prints'; demo output not written")
    README.write_text(readme)
    print(f"rewrote {README}; review `git diff README.md`")


if __name__ == "__main__":
    main()
