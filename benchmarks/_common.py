"""What every benchmark shares: the device it runs on, best-of timing, sizes, the RESULT line,
and the result file that records which code produced the numbers.

The benchmarks import it as `from _common import ...` (Python puts the script's folder,
`benchmarks/`, first on the path).

Which code a result file was measured with (its `code` field, see `code_field`): the commit
checked out (the full hash of `HEAD`), and whether the files that determine the numbers differ
from that commit: `sst/` and `sst_cli.py` (the library), `benchmarks/` (the scripts and this
file), `examples/` (the configs `timescales.py` runs) and `pyproject.toml` (the dependencies'
versions), modified or untracked files under them included (`CODE_PATHS`). Uncommitted changes
anywhere else (docs, notebooks, tests, the README) are not counted: no benchmark imports or
reads them, so they cannot change its numbers. The state is taken when this
module is imported (before the script imports `sst`) and again when the file is written, since
subprocesses of a benchmark import `sst` from the disk while it runs: a run is recorded as the
clean commit only if both snapshots are clean and name the same content of those paths;
otherwise `code` is `"<hash>+modified"` and `code_state` lists what differed. (An edit made and
undone between the two snapshots cannot be seen.)
"""

from __future__ import annotations

import datetime
import hashlib
import io
import json
import os
import pathlib
import platform
import shutil
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

    `Record(__file__, __doc__, mode)` at the start of `main` copies standard output into a buffer;
    `print_result(fields, record)` then writes `docs/benchmarks/NAME.json` (NAME the script's
    name) with the run's mode, start and end, machine, backend, the code it measured (`code`,
    `code_state`: see the module's docstring), the whole printed output and the RESULT line: the
    docs' Benchmarks page renders it (docs/scripts/bench_tables.py).

    Only a full run writes the file, and a full run is the script with its defaults: a run given
    any argument other than `--quick` (a batch size, other step sizes, another output folder) is
    recorded as mode `custom` and replaces nothing.
    """

    def __init__(self, script: str, doc: str | None, mode: str = "full"):
        self.name = pathlib.Path(script).stem
        self.doc = (doc or "").strip()
        self.arguments = sys.argv[1:]
        if mode == "full" and self.arguments:
            mode = "custom"
            print(
                f"not a full run (arguments {' '.join(self.arguments)}): "
                f"docs/benchmarks/{self.name}.json will not be written"
            )
        self.mode = mode
        self.command = " ".join(["python", f"benchmarks/{self.name}.py", *self.arguments])
        self.started = _now()
        self.figures: list[tuple[pathlib.Path, str]] = []
        self.buffer = io.StringIO()
        self._stdout = sys.stdout
        sys.stdout = _Tee(self._stdout, self.buffer)

    def keep_figure(self, source: str | pathlib.Path, caption: str) -> None:
        """Have a full run copy the figure at `source` next to its result file and list it there
        (the page shows it under the tables); a quick or custom run keeps nothing."""
        self.figures.append((pathlib.Path(source), caption))

    def write(self, line: str) -> pathlib.Path:
        sys.stdout = self._stdout
        title, _, rest = self.doc.partition("\n")
        code, state = code_field(_CODE_AT_IMPORT, code_state())
        d = device()
        data = {
            "title": title.strip(),
            "command": self.command,
            "mode": self.mode,
            "date": datetime.date.today().isoformat(),
            "started": self.started,
            "finished": _now(),
            "machine": _machine(),
            "device": d["backend"],
            "device_kind": d["device"],
            "code": code,
            "code_state": state,
            "code_digest": code_digest(),
            "packages": _packages(),
            "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "setup": rest.strip().split("\n\n")[0] if rest.strip() else "",
            "output": self.buffer.getvalue(),
            "result": line,
        }
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        if self.figures:
            data["figures"] = []
            for source, caption in self.figures:
                shutil.copyfile(source, RESULTS_DIR / source.name)
                data["figures"].append({"path": source.name, "caption": caption})
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


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def _packages() -> dict[str, str]:
    """Versions of the libraries the numbers depend on (pyproject.toml pins ranges, not these)."""
    from importlib import metadata

    versions = {}
    for name in ("jax", "jaxlib", "equinox", "diffrax", "lineax", "optax", "numpy", "scipy"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


# The files whose content determines a benchmark's numbers (see the module's docstring).
CODE_PATHS = ("sst", "sst_cli.py", "benchmarks", "examples", "pyproject.toml")
REPO = pathlib.Path(__file__).resolve().parent.parent


def _git(root: pathlib.Path, *args: str) -> str:
    # --no-optional-locks: `git status` then never takes the index's lock, which would make a
    # commit started at the same moment in the same checkout fail.
    return subprocess.run(
        ["git", "--no-optional-locks", *args], cwd=root, capture_output=True, text=True, check=True
    ).stdout


def code_state(root: pathlib.Path = REPO, paths: tuple[str, ...] = CODE_PATHS) -> dict | None:
    """The checked-out commit, the object ids of `paths` in it (their committed content) and the
    `git status` lines of `paths` (modified, staged, deleted or untracked files; ignored ones
    such as `__pycache__` are not listed). None without git or outside a repository."""
    try:
        commit = _git(root, "rev-parse", "--verify", "HEAD^{commit}").strip()
        # `HEAD:path` of a path the commit lacks is an error: record it as absent instead.
        listed = _git(root, "ls-tree", "HEAD", "--", *paths).splitlines()
        objects = {line.split("\t", 1)[1]: line.split()[2] for line in listed}
        status = _git(
            root, "status", "--porcelain", "--untracked-files=all", "--", *paths
        ).splitlines()
    except (OSError, subprocess.CalledProcessError):
        return None
    return {
        "commit": commit,
        "objects": {p: objects.get(p, "absent") for p in paths},
        "changes": status,
    }


def _blob_id(data: bytes) -> str:
    """Git's object id of a file with this content (`git hash-object`), computed without git."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


# Skipped when the files are listed without git (what .gitignore ignores under CODE_PATHS).
_IGNORED = ("__pycache__", ".ipynb_checkpoints", ".egg-info", ".pyc", "/out/")


def code_digest(
    root: pathlib.Path = REPO, paths: tuple[str, ...] = CODE_PATHS, commit: str | None = None
) -> str | None:
    """A fingerprint of the content of `paths`: sha256 of the sorted `path blob-id` lines of their
    files, in `commit` (from `git ls-tree`) or, without `commit`, in the working tree (tracked
    and untracked files git does not ignore; without git, every file but caches and `out/`).

    Equal digests mean the same files with the same bytes, so a result file's `code_digest`
    can be checked against the commit it names, also for a run in a copy of the tree whose own
    git history did not match the copied files (a device machine's)."""
    entries = []
    try:
        if commit is not None:
            for line in _git(root, "ls-tree", "-r", commit, "--", *paths).splitlines():
                meta, path = line.split("\t", 1)
                entries.append(f"{path} {meta.split()[2]}")
        else:
            try:
                files = _git(
                    root, "ls-files", "-co", "--exclude-standard", "--", *paths
                ).splitlines()
            except (OSError, subprocess.CalledProcessError):
                files = [
                    str(f.relative_to(root))
                    for p in paths
                    for f in ([root / p] if (root / p).is_file() else (root / p).rglob("*"))
                    if f.is_file() and not any(x in f"/{f.relative_to(root)}" for x in _IGNORED)
                ]
            for path in sorted(set(files)):
                if (root / path).is_file():  # a deleted tracked file is missing from the digest
                    entries.append(f"{path} {_blob_id((root / path).read_bytes())}")
    except (OSError, subprocess.CalledProcessError):
        return None
    return hashlib.sha256("\n".join(sorted(entries)).encode()).hexdigest()


def code_field(start: dict | None, end: dict | None) -> tuple[str, dict]:
    """`code` and `code_state` of a result file from the states at the start and end of a run.

    `code` is the full hash of the commit measured when `paths` matched it at both ends (the
    commit may have moved on meanwhile if those paths' content did not change), else
    `"<hash>+modified"` (the commit at the start), `"unknown"` without git. `code_state` says why.
    """
    if start is None or end is None:
        return "unknown", {"reason": "git could not be run, or this is not a git checkout"}
    same_content = start["objects"] == end["objects"]
    clean = not start["changes"] and not end["changes"] and same_content
    state = {
        "paths": sorted(start["objects"]),
        "modified": not clean,
        "changes_at_start": start["changes"],
        "changes_at_end": end["changes"],
    }
    if end["commit"] != start["commit"]:
        state["commit_at_end"] = end["commit"]
        state["same_content_at_end"] = same_content
    return (start["commit"] if clean else f"{start['commit']}+modified"), state


# Taken now, when a benchmark imports this module and before it imports sst.
_CODE_AT_IMPORT = code_state()


def print_result(fields: dict[str, Any], record: Record | None = None) -> None:
    """Print the RESULT line; with the `record` of a full run, also write the benchmark's result
    file (a `--quick` run does not replace the figures of the last full run)."""
    line = result_line(fields)
    print(line)
    if record is not None and record.mode == "full":
        print(f"wrote {record.write(line).relative_to(RESULTS_DIR.parent.parent)}")
