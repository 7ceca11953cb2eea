"""Turn benchmark result files (docs/benchmarks/NAME.json) into the Markdown of the Benchmarks page.

The docs build calls `render` for every `<!-- bench:NAME -->` marker of docs/benchmarks.md (see
docs/hooks.py); run this file to see the Markdown of one or more result files:

    python docs/scripts/bench_tables.py docs/benchmarks/stiff.json

A result file is a JSON object with these keys (all but `title`, `date`, `machine`, `device`
optional):

- `title`, `command`: what was run, e.g. `python benchmarks/stiff.py`.
- `date` (ISO), `machine` (in words), `device` (`"cpu"` or `"gpu"`; figures measured on a GPU
  are marked as such), `code` (the commit measured), `source` (where the numbers come from).
- `setup`: one paragraph of Markdown.
- `tables`: a list of `{"title", "columns", "rows", "note"}`; cells are strings or numbers.
- `result`: the benchmark's closing `RESULT ...` line; `output`: everything it printed (the
  benchmarks write these files themselves, `benchmarks/_common.py`); `mode`: `full` or `quick`.
- `figures`: a list of `{"path", "caption", "device"}`, `path` relative to docs/benchmarks/.
- `missing`: Markdown lines on what the file does not (yet) hold.
"""

from __future__ import annotations

import json
import pathlib
import sys


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


def render(path: str | pathlib.Path) -> str:
    """The Markdown of one result file: provenance, setup, tables, RESULT line, figures."""
    path = pathlib.Path(path)
    data = json.loads(path.read_text())
    for key in ("title", "date", "machine", "device"):
        if key not in data:
            raise ValueError(f"{path}: missing key {key!r}")
    device = _device(data["device"])
    facts = [f"**Measured on a {device}**, {data['date']}: {data['machine']}"]
    if data.get("code"):
        facts.append(f"code {data['code']}")
    if data.get("command"):
        facts.append(f"`{data['command']}`")
    lines = ["; ".join(facts) + ".", ""]
    if data.get("source"):
        lines += [f"*Source:* {data['source']}", ""]
    if data.get("setup"):
        lines += [data["setup"], ""]
    if data.get("mode") == "quick":
        lines += ["*A `--quick` run (small sizes), the latest one recorded.*", ""]
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


if __name__ == "__main__":
    for name in sys.argv[1:]:
        print(render(name))
