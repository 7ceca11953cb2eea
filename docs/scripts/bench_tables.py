"""Turn benchmark result files (docs/benchmarks/NAME.json) into the Markdown of the Benchmarks page,
and check that each is a full run of a commit of the repository.

The docs build calls `render` for every `<!-- bench:NAME -->` marker of docs/benchmarks.md (see
docs/hooks.py); run this file to see the Markdown of one or more result files:

    python docs/scripts/bench_tables.py docs/benchmarks/stiff.json

or, with `--check`, what keeps each section of the page from being a full run of committed code
(tests/test_benchmark_files.py fails on the same), and which of them measured `sst/`,
`benchmarks/`, ... as they were at an older commit than the checkout's (stale, not wrong):

    python docs/scripts/bench_tables.py --check

A result file is a JSON object with these keys (all but `title`, `date`, `machine`, `device`
optional):

- `title`, `command`: what was run, e.g. `python benchmarks/stiff.py`.
- `date` (ISO), `machine` (in words), `device` (`"cpu"` or `"gpu"`; figures measured on a GPU
  are marked as such), `code` (the full hash of the commit measured, `HASH+modified` if the
  files that determine the numbers differed from it; `benchmarks/_common.py` says which),
  `source` (where the numbers come from).
- `setup`: one paragraph of Markdown.
- `tables`: a list of `{"title", "columns", "rows", "note"}`; cells are strings or numbers.
- `result`: the benchmark's closing `RESULT ...` line; `output`: everything it printed (the
  benchmarks write these files themselves, `benchmarks/_common.py`, with `started`, `finished`,
  `device_kind`, `code_state`, `code_digest`, `packages` and `xla_flags` besides); `mode`:
  `full` (the script with its defaults), `quick` or `custom`.
- `figures`: a list of `{"path", "caption", "device"}`, `path` relative to docs/benchmarks/.
- `missing`: Markdown lines on what the file does not (yet) hold.
"""

from __future__ import annotations

import json
import pathlib
import re
import subprocess
import sys

DOCS = pathlib.Path(__file__).resolve().parent.parent
ROOT = DOCS.parent
PAGE = DOCS / "benchmarks.md"
MARKER = re.compile(r"<!-- bench:([A-Za-z0-9_]+) -->")
# The files whose content determines a benchmark's numbers: benchmarks/_common.py's CODE_PATHS
# (not imported: that module imports JAX, and the docs build loads this file).
CODE_PATHS = ("sst", "sst_cli.py", "benchmarks", "examples", "pyproject.toml")
_HASH = re.compile(r"[0-9a-f]{7,40}")
_COMMAND = re.compile(r"python benchmarks/([A-Za-z0-9_]+)\.py")


def _cell(x) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x).replace("|", "\\|")


def _table(table: dict) -> list[str]:
    lines = []
    if table.get("title"):
        lines += [f"**{table['title']}**", ""]
    columns = table["columns"]
    lines.append("| " + " | ".join(columns) + " |")
    lines.append("| " + " | ".join("---" for _ in columns) + " |")
    for row in table["rows"]:
        if len(row) != len(columns):
            raise ValueError(f"row {row!r} has {len(row)} cells for {len(columns)} columns")
        lines.append("| " + " | ".join(_cell(c) for c in row) + " |")
    if table.get("note"):
        lines += ["", table["note"]]
    return lines + [""]


def _device(device: str) -> str:
    return "GPU" if device.lower() in ("gpu", "cuda") else device.upper()


def _code(code: str) -> str:
    """The commit as its short hash, and a modified tree said in words."""
    commit, plus, rest = code.partition("+")
    if not _HASH.fullmatch(commit):
        return code
    short = f"`{commit[:10]}`"
    if rest == "modified":
        return f"{short} **with uncommitted changes to the code**"
    return short + (f"+{rest}" if plus else "")


def render(path: str | pathlib.Path) -> str:
    """The Markdown of one result file: provenance, setup, tables, RESULT line, figures."""
    path = pathlib.Path(path)
    if not path.is_file():
        # Said on the page rather than failing the build: a benchmark added to the page before
        # its first full run. tests/test_benchmark_files.py fails on it all the same.
        return (
            f'!!! warning "No result file yet"\n    `docs/benchmarks/{path.name}` does not exist: '
            f"this section has no measured numbers until the benchmark is run in full.\n"
        )
    data = json.loads(path.read_text())
    for key in ("title", "date", "machine", "device"):
        if key not in data:
            raise ValueError(f"{path}: missing key {key!r}")
    device = _device(data["device"])
    facts = [f"**Measured on a {device}**, {data['date']}: {data['machine']}"]
    if data.get("code"):
        facts.append(f"code {_code(data['code'])}")
    if data.get("command"):
        facts.append(f"`{data['command']}`")
    lines = ["; ".join(facts) + ".", ""]
    if data.get("source"):
        lines += [f"*Source:* {data['source']}", ""]
    if data.get("setup"):
        lines += [data["setup"], ""]
    if data.get("mode") == "quick":
        lines += ["*A `--quick` run (small sizes), the latest one recorded.*", ""]
    elif data.get("mode") not in (None, "full"):
        lines += [f"*Not a full run: mode `{data['mode']}`.*", ""]
    for table in data.get("tables", []):
        lines += _table(table)
    if data.get("output"):
        lines += ["```text", data["output"].rstrip(), "```", ""]
    if data.get("result") and not data.get("output"):
        lines += ["```text", data["result"], "```", ""]
    for fig in data.get("figures", []):
        fig_device = _device(fig.get("device", data["device"]))
        mark = " **Measured on a GPU.**" if fig_device == "GPU" else f" ({fig_device})"
        lines += [
            '<figure markdown="span">',
            f"  ![{fig['caption']}](benchmarks/{fig['path']})",
            f'  <figcaption markdown="span">{fig["caption"]}{mark}</figcaption>',
            "</figure>",
            "",
        ]
    if data.get("missing"):
        lines += ["*Not in this result file yet:*", ""]
        lines += [f"- {m}" for m in data["missing"]] + [""]
    return "\n".join(lines)


def sections(page: pathlib.Path = PAGE) -> list[str]:
    """The result files the page renders: NAME of each `<!-- bench:NAME -->` marker, in order."""
    return MARKER.findall(page.read_text())


def _git(*args: str, root: pathlib.Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)


def problems(path: pathlib.Path, root: pathlib.Path = ROOT) -> list[str]:
    """What keeps a result file from being a full run of a commit of the repository: an empty
    list for a good one.

    The file must exist; its `mode` must be `full` and its `command` the benchmark with no
    arguments; its `code` a bare commit hash (not `+modified`, not prose) that is a commit of
    `root`'s repository and an ancestor of the checkout (so on the branch being built, not
    a commit that was dropped); and the figures it lists must exist next to it. A GPU file may
    name an older commit than the CPU files: it stays until a GPU is at hand, labelled with
    its machine and commit.
    """
    if not path.is_file():
        return [f"{path.name}: no result file"]
    data = json.loads(path.read_text())
    found = []
    if data.get("mode") != "full":
        found.append(f"{path.name}: mode is {data.get('mode')!r}, not 'full'")
    command = data.get("command", "")
    if not _COMMAND.fullmatch(command):
        found.append(f"{path.name}: command {command!r} is not a benchmark run with its defaults")
    code = data.get("code", "")
    if not _HASH.fullmatch(code):
        what = "a run with uncommitted changes" if code.endswith("+modified") else "not a hash"
        found.append(f"{path.name}: code {code!r} is {what}")
    elif _git("cat-file", "-e", f"{code}^{{commit}}", root=root).returncode != 0:
        found.append(f"{path.name}: code {code} is not a commit of the repository")
    elif _git("merge-base", "--is-ancestor", code, "HEAD", root=root).returncode != 0:
        found.append(f"{path.name}: commit {code} is not an ancestor of HEAD")
    for fig in data.get("figures", []):
        if not (path.parent / fig["path"]).is_file():
            found.append(f"{path.name}: figure {fig['path']} is missing")
    return found


def stale(path: pathlib.Path, root: pathlib.Path = ROOT) -> list[str]:
    """The code paths that changed between a (good) result file's commit and HEAD."""
    code = json.loads(path.read_text())["code"]
    diff = _git("diff", "--name-only", code, "HEAD", "--", *CODE_PATHS, root=root)
    return sorted({line.split("/")[0] for line in diff.stdout.splitlines()})


def _check() -> int:
    bad = 0
    for name in sections():
        path = DOCS / "benchmarks" / f"{name}.json"
        found = problems(path)
        bad += bool(found)
        if found:
            print("\n".join(f"NOT OK {line}" for line in found))
        else:
            changed = stale(path)
            since = f"changed since: {', '.join(changed)}" if changed else "same code as HEAD"
            code = json.loads(path.read_text())["code"]
            print(f"ok     {path.name}: full run at {code[:10]}; {since}")
    return 1 if bad else 0


if __name__ == "__main__":
    if sys.argv[1:] == ["--check"]:
        sys.exit(_check())
    for name in sys.argv[1:]:
        print(render(name))
