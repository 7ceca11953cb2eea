"""benchmarks/_common.py: the device named in the RESULT line, best-of timing, device sizes, and
the code, mode and machine a result file records."""

import importlib.util
import json
import pathlib
import shutil
import subprocess
import sys
import time

import jax
import pytest

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


def _git(root, *args):
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=root,
        check=True,
        capture_output=True,
    )


@pytest.fixture
def repo(tmp_path):
    """A repository with a library file, a benchmark and a docs page, all committed."""
    for path, text in {
        "sst/model.py": "x = 1\n",
        "benchmarks/bench.py": "print(1)\n",
        "pyproject.toml": "[project]\n",
        "docs/page.md": "text\n",
    }.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(text)
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-q", "-m", "first")
    return tmp_path


def _head(root):
    return subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=root, check=True, capture_output=True, text=True
    ).stdout.strip()


def _code(start_root, end_root=None):
    return common.code_field(
        common.code_state(start_root), common.code_state(end_root or start_root)
    )


def test_code_is_the_commit_when_only_files_outside_the_code_paths_changed(repo):
    (repo / "docs/page.md").write_text("edited\n")
    (repo / "notebook.ipynb").write_text("{}\n")  # untracked, outside the code paths
    code, state = _code(repo)
    assert code == _head(repo) and len(code) == 40
    assert state["modified"] is False and state["changes_at_start"] == []
    # examples/ and sst_cli.py are absent from this commit: recorded as such, not an error.
    assert common.code_state(repo)["objects"]["examples"] == "absent"


@pytest.mark.parametrize(
    "change",
    [
        lambda root: (root / "sst/model.py").write_text("x = 2\n"),
        lambda root: (root / "benchmarks/bench.py").unlink(),
        lambda root: (root / "sst/new.py").write_text("y = 0\n"),  # untracked
        lambda root: (root / "pyproject.toml").write_text("[project]\nname = 'x'\n"),
    ],
    ids=["library edited", "benchmark deleted", "untracked library file", "pyproject edited"],
)
def test_a_change_to_the_code_paths_marks_the_run_modified(repo, change):
    change(repo)
    code, state = _code(repo)
    assert code == f"{_head(repo)}+modified"
    assert state["modified"] is True and state["changes_at_start"]


def test_a_change_during_the_run_marks_it_modified(repo):
    start = common.code_state(repo)
    (repo / "sst/model.py").write_text("x = 3\n")
    code, state = common.code_field(start, common.code_state(repo))
    assert code == f"{start['commit']}+modified"
    assert state["changes_at_start"] == [] and state["changes_at_end"] == [" M sst/model.py"]


def test_a_commit_during_the_run_counts_only_if_it_changed_the_code_paths(repo):
    start = common.code_state(repo)
    (repo / "docs/page.md").write_text("edited\n")
    _git(repo, "commit", "-q", "-am", "docs only")
    code, state = common.code_field(start, common.code_state(repo))
    assert code == start["commit"]  # the measured content is that of the starting commit
    assert state["commit_at_end"] == _head(repo) and state["same_content_at_end"] is True

    (repo / "sst/model.py").write_text("x = 4\n")
    _git(repo, "commit", "-q", "-am", "library")
    code, state = common.code_field(start, common.code_state(repo))
    assert code == f"{start['commit']}+modified"
    assert state["same_content_at_end"] is False and state["changes_at_end"] == []


def test_code_is_unknown_outside_a_repository(tmp_path):
    assert common.code_state(tmp_path) is None
    code, state = common.code_field(None, None)
    assert code == "unknown" and "git" in state["reason"]


def test_only_a_run_with_the_defaults_is_full(monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["bench.py", "--n", "64"])
    record = common.Record("benchmarks/bench.py", "Title.", "full")
    try:
        print("hello")
    finally:
        sys.stdout = record._stdout
    assert record.mode == "custom" and record.command == "python benchmarks/bench.py --n 64"
    assert "will not be written" in capsys.readouterr().out
    monkeypatch.setattr("sys.argv", ["bench.py", "--quick"])
    record = common.Record("benchmarks/bench.py", "Title.", "quick")
    sys.stdout = record._stdout
    assert record.mode == "quick"
    monkeypatch.setattr("sys.argv", ["bench.py"])
    record = common.Record("benchmarks/bench.py", "Title.", "full")
    sys.stdout = record._stdout
    assert record.mode == "full"


def test_the_result_file_records_code_mode_machine_and_date(monkeypatch, tmp_path):
    monkeypatch.setattr("sys.argv", ["bench.py"])
    monkeypatch.setattr(common, "RESULTS_DIR", tmp_path)
    record = common.Record("benchmarks/bench.py", "Title.\n\nSetup paragraph.", "full")
    print("table")
    path = record.write("RESULT x=1")
    data = json.loads(path.read_text())
    assert path == tmp_path / "bench.json"
    assert data["mode"] == "full" and data["command"] == "python benchmarks/bench.py"
    assert data["output"] == "table\n" and data["result"] == "RESULT x=1"
    assert data["setup"] == "Setup paragraph." and data["title"] == "Title."
    assert data["device"] == jax.default_backend() and data["packages"]["jax"] == jax.__version__
    assert data["date"] == data["started"][:10] or data["date"] == data["finished"][:10]
    # This checkout's state, whatever it is today: the commit, "+modified" exactly when the code
    # paths had changes.
    state = common.code_state()
    expected = state["commit"] + ("+modified" if data["code_state"]["modified"] else "")
    assert data["code"] == expected


def test_code_digest_matches_the_commit_exactly_when_the_code_paths_do(repo, tmp_path_factory):
    committed = common.code_digest(repo, commit="HEAD")
    assert common.code_digest(repo) == committed
    (repo / "docs/page.md").write_text("edited\n")  # outside the code paths
    assert common.code_digest(repo) == committed
    # A copy of the tree without git (as on a device machine), with caches that git ignores.
    copy = tmp_path_factory.mktemp("copy")
    shutil.copytree(repo, copy, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".git"))
    (copy / "sst/__pycache__").mkdir()
    (copy / "sst/__pycache__/model.cpython-312.pyc").write_bytes(b"\0")
    assert common.code_state(copy) is None
    assert common.code_digest(copy) == committed
    (copy / "sst/model.py").write_text("x = 5\n")
    assert common.code_digest(copy) != committed
    (repo / "sst/extra.py").write_text("")  # untracked in the repository
    assert common.code_digest(repo) != committed


def test_a_full_run_keeps_its_figures_next_to_the_result_file(monkeypatch, tmp_path):
    monkeypatch.setattr("sys.argv", ["bench.py"])
    results = tmp_path / "results"
    monkeypatch.setattr(common, "RESULTS_DIR", results)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "curve.png").write_bytes(b"png")
    record = common.Record("benchmarks/bench.py", "Title.", "full")
    record.keep_figure(tmp_path / "out" / "curve.png", "The curve.")
    data = json.loads(record.write("RESULT x=1").read_text())
    assert data["figures"] == [{"path": "curve.png", "caption": "The curve."}]
    assert (results / "curve.png").read_bytes() == b"png"
