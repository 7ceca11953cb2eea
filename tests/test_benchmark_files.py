"""The Benchmarks page is built from result files of full runs of committed code.

docs/benchmarks.md has one `<!-- bench:NAME -->` marker per section; the docs build replaces it
by the tables of docs/benchmarks/NAME.json (docs/hooks.py, docs/scripts/bench_tables.py). Each
such file must exist, come from a full run (the script with its defaults) and name, as `code`, a
commit of the repository that is an ancestor of the checkout, unmodified (`benchmarks/_common.py`
writes `HASH+modified` when the library or the benchmarks differed from it). The checks live in
`bench_tables.problems`, so `python docs/scripts/bench_tables.py --check` says the same.
"""

import importlib.util
import json
import pathlib
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location(
    "bench_tables", ROOT / "docs" / "scripts" / "bench_tables.py"
)
tables = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tables)

# Sections whose result file is not yet a full run of a commit, and what each needs. A strict
# xfail: when a full run replaces the file, its test passes, fails as XPASS, and the name must
# be removed here, after which the section is held to the rule like the others.
STALE = {
    "batch_gpu": "the GPU result file names its commit in prose (cfede80, written by hand: the "
    "device's git said dd04398-dirty), and no GPU has been lent since to rerun it: rerun "
    "benchmarks/batch.py on a GPU and save its batch.json as batch_gpu.json",
}


def _section(name):
    marks = (
        [pytest.mark.xfail(strict=True, raises=AssertionError, reason=STALE[name])]
        if name in STALE
        else []
    )
    return pytest.param(name, marks=marks, id=name)


@pytest.mark.parametrize("name", [_section(name) for name in tables.sections()])
def test_each_section_is_a_full_run_of_a_commit(name):
    path = ROOT / "docs" / "benchmarks" / f"{name}.json"
    assert tables.problems(path) == []
    data = json.loads(path.read_text())
    # The script it names is the section's benchmark (a GPU copy is NAME_gpu).
    script = tables._COMMAND.fullmatch(data["command"]).group(1)
    assert name in (script, f"{script}_gpu")
    if name.endswith("_gpu"):
        assert data["device"] == "gpu"
    assert tables.render(path)


def test_every_benchmark_has_a_section_and_every_section_a_known_state():
    scripts = {p.stem for p in (ROOT / "benchmarks").glob("*.py") if not p.stem.startswith("_")}
    names = tables.sections()
    assert scripts <= set(names), f"benchmarks without a section: {sorted(scripts - set(names))}"
    assert len(names) == len(set(names))
    # A name in STALE that is no section any more would keep a mark nobody sees.
    assert set(STALE) <= set(names)


# --- the checks themselves, on a repository made for the test ---------------------------------


def _git(root, *args):
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=root,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


@pytest.fixture
def repo(tmp_path):
    (tmp_path / "sst").mkdir()
    (tmp_path / "sst" / "model.py").write_text("x = 1\n")
    _git(tmp_path, "init", "-q", "-b", "main")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-q", "-m", "first")
    (tmp_path / "results").mkdir()
    return tmp_path


def _write(repo, **fields):
    data = {
        "title": "T",
        "date": "2026-01-01",
        "machine": "m",
        "device": "cpu",
        "mode": "full",
        "command": "python benchmarks/bench.py",
        "code": _git(repo, "rev-parse", "HEAD"),
    } | fields
    path = repo / "results" / "bench.json"
    path.write_text(json.dumps(data))
    return path


def test_a_full_run_of_a_commit_passes(repo):
    assert tables.problems(_write(repo), root=repo) == []
    short = _git(repo, "rev-parse", "--short", "HEAD")
    assert tables.problems(_write(repo, code=short), root=repo) == []


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"mode": "quick"}, "mode is 'quick', not 'full'"),
        ({"mode": None}, "mode is None"),
        ({"command": "python benchmarks/bench.py --n 64"}, "not a benchmark run with its defaults"),
        ({"code": "HEAD+modified"}, "is a run with uncommitted changes"),
        ({"code": "abc1234-dirty"}, "is not a hash"),
        ({"code": "state around the merge, b0bf4ae"}, "is not a hash"),
        ({"code": "0123456789abcdef0123456789abcdef01234567"}, "is not a commit of the repository"),
        ({"figures": [{"path": "absent.png", "caption": "c"}]}, "figure absent.png is missing"),
    ],
)
def test_what_is_not_a_full_run_of_a_commit_is_named(repo, fields, message):
    if fields.get("code") == "HEAD+modified":
        fields = {"code": _git(repo, "rev-parse", "HEAD") + "+modified"}
    found = tables.problems(_write(repo, **fields), root=repo)
    assert len(found) == 1 and message in found[0], found


def test_a_commit_off_the_checked_out_branch_is_refused(repo):
    _git(repo, "checkout", "-q", "-b", "side")
    (repo / "sst" / "model.py").write_text("x = 2\n")
    _git(repo, "commit", "-q", "-am", "side")
    side = _git(repo, "rev-parse", "HEAD")
    _git(repo, "checkout", "-q", "main")
    (found,) = tables.problems(_write(repo, code=side), root=repo)
    assert found.endswith(f"commit {side} is not an ancestor of HEAD")


def test_a_missing_file_is_named(repo):
    (found,) = tables.problems(repo / "results" / "absent.json", root=repo)
    assert found == "absent.json: no result file"


def test_stale_names_the_code_paths_changed_since_the_commit(repo):
    path = _write(repo)
    assert tables.stale(path, root=repo) == []
    (repo / "sst" / "model.py").write_text("x = 3\n")
    (repo / "notes.md").write_text("n\n")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "later")
    assert tables.stale(path, root=repo) == ["sst"]


def test_render_says_which_commit_and_whether_it_was_modified(repo):
    head = _git(repo, "rev-parse", "HEAD")
    text = tables.render(_write(repo, output="table\n"))
    assert f"code `{head[:10]}`" in text and "uncommitted" not in text
    text = tables.render(_write(repo, code=head + "+modified"))
    assert "with uncommitted changes to the code" in text
    assert "Not a full run: mode `custom`" in tables.render(_write(repo, mode="custom"))


def test_a_section_without_its_file_says_so_on_the_page(tmp_path):
    text = tables.render(tmp_path / "sgd_noise.json")
    assert text.startswith('!!! warning "No result file yet"') and "sgd_noise.json" in text
