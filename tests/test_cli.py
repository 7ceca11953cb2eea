"""The `sst` command: config -> files -> reload round trip, sweeps, failures, bad configs, for a
target of one direction (Hermite coefficients) and of k = 2 (a `[problem.target]` table)."""

import json
import pathlib
import re
import subprocess
import sys

import jax
import numpy as np
import pytest
from helpers import TS

import sst
import sst._cli
from sst._cli import main
from sst._config import RunConfig

ROOT = pathlib.Path(__file__).resolve().parent.parent

# Every run here is the cubic problem with the shapes and tolerances of the other test files'
# mean-field solves (helpers: M = 8 particles, 41 save times, the default tolerances), so the
# command's solves share their compilation.
TINY = """
model = "mean_field"
[problem]
target = [0.5, 1.0, 1.0, 1.0]
activation = [1.0, 1.0, 1.0, 1.0]
eps = {eps}
[init]
particles = 8
law = "uniform"
[times]
t_min = 1e-5
t_max = 10.0
n_save = 40
[solver]
rtol = 1e-8
atol = 1e-10
"""


# The same run for the target h_0/2 + h_1(z1) + h_1(z1) h_1(z2) of two directions.
TERMS = "[[[0, 0], 0.5], [[1, 0], 1.0], [[1, 1], 1.0]]"
TINY_K2 = TINY.replace("target = [0.5, 1.0, 1.0, 1.0]\n", "").replace(
    "eps = {eps}\n", f"eps = {{eps}}\n[problem.target]\nterms = {TERMS}\n"
)
TEXTS = {1: TINY, 2: TINY_K2}
# The labels each target carries (nonzero coefficients), by name.
CARRIED = {
    1: {"degree 0": [0], "degree 1": [1], "degree 2": [2], "degree 3": [3]},
    2: {"1": [0, 0], "z1": [1, 0], "z1 z2": [1, 1]},
}
CONSTANT = {1: "degree 0", 2: "1"}


def _config(tmp_path, eps="1e-2", text=TINY) -> pathlib.Path:
    path = tmp_path / "config.toml"
    path.write_text(text.format(eps=eps))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("k", [1, 2])
def test_run_round_trip(tmp_path, monkeypatch, k):
    # The config's solver table reaches sst.solve (whatever its values).
    real_solve, passed = sst._cli.solve, {}

    def spy(*args, **kwargs):
        passed.update(kwargs)
        return real_solve(*args, **kwargs)

    monkeypatch.setattr(sst._cli, "solve", spy)
    path = _config(tmp_path, text=TEXTS[k])
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out), "--no-progress"]) == 0
    assert {p.name for p in out.iterdir()} == {
        "trajectory.npz",
        "summary.json",
        "risk.png",
        "particles.png",
    }
    assert (passed["rtol"], passed["atol"], passed["max_steps"]) == (1e-8, 1e-10, 100_000)
    loaded = sst.load_trajectory(out / "trajectory.npz")
    config = RunConfig.from_file(path)
    model, y0, ts = config.build(1e-2)
    assert np.asarray(ts).shape == TS.shape
    direct = real_solve(model, y0, ts, rtol=1e-8, atol=1e-10)
    pairs = {
        "ts": (loaded.ts, direct.ts),
        "a": (loaded.ys.a, direct.ys.a),
        "s": (loaded.ys.s, direct.ys.s),
        "weights": (loaded.ys.weights, direct.ys.weights),
        "risk": (loaded.risk, direct.risk),
        "residuals": (loaded.residuals, direct.residuals),
        "valid": (loaded.valid, direct.valid),
        "num_steps": (loaded.stats["num_steps"], direct.stats["num_steps"]),
    }
    for name, (x, y) in pairs.items():
        np.testing.assert_array_equal(x, y, err_msg=name)
    assert isinstance(loaded.ys, sst.MeanFieldState) and loaded.result == sst.RESULTS.successful
    assert (loaded.rtol, loaded.atol) == (1e-8, 1e-10)

    assert loaded.residual_labels == direct.residual_labels == model.problem.labels
    assert np.shape(loaded.ys.s) == ((TS.size, 8) if k == 1 else (TS.size, 8, k))

    summary = json.loads((out / "summary.json").read_text())
    assert summary["final_risk"] == float(direct.risk[-1])
    # One entry per label the target carries, keyed by its name.
    table = summary["learning_times"]
    assert {name: entry["label"] for name, entry in table.items()} == CARRIED[k]
    labels = list(direct.residual_labels)
    for fraction, name in ((0.5, "half"), (0.9, "ninety")):
        expected = sst.learning_times(direct, fraction)
        # JSON has no NaN: a label not learned by t_max is written as null.
        for entry in table.values():
            written = np.array(entry[name], dtype=float)
            j = labels.index(tuple(entry["label"]))
            np.testing.assert_allclose(written, expected[j], rtol=1e-12)
    assert summary["solver"]["num_steps"] == int(direct.stats["num_steps"])
    assert summary["solver"]["success"] is True
    assert (summary["solver"]["rtol"], summary["solver"]["atol"]) == (1e-8, 1e-10)
    assert set(summary["versions"]) >= {"python", "sst", "jax", "diffrax"}
    assert RunConfig.from_dict(summary["config"]) == config
    assert summary["phases"][0]["kind"] == "plateau"


@pytest.mark.slow
@pytest.mark.parametrize("k", [1, 2])
def test_sweep_fits_exponents(tmp_path, capsys, k):
    out = tmp_path / "out"
    path = _config(tmp_path, eps="[1e-2, 1e-3, 1e-4]", text=TEXTS[k])
    assert main(["sweep", str(path), "--out", str(out), "--no-progress"]) == 0
    for eps in ("0.01", "0.001", "0.0001"):
        assert (out / f"eps={eps}" / "summary.json").exists()
        assert (out / f"eps={eps}" / "particles.png").exists()
    result = json.loads((out / "sweep.json").read_text())
    assert result["eps"] == [1e-2, 1e-3, 1e-4]
    assert result["labels"] == list(CARRIED[k])
    # The constant is fitted by the fast layer alone: t_0 is proportional to eps (docs: time
    # scales), whatever the number of directions.
    assert result["exponents"][CONSTANT[k]]["exponent"] == pytest.approx(1.0, abs=0.02)
    # The log factor and heuristic of degree 1 are stated for a single direction only.
    first = result["exponents"]["degree 1" if k == 1 else "z1"]
    assert first["log_factor"] is (k == 1)
    assert (first["heuristic"] == 0.5) if k == 1 else first["heuristic"] is None
    assert (out / "scaling.png").exists()
    printed = capsys.readouterr().out
    assert f"{CONSTANT[k]}: exponent 1.0" in printed


@pytest.mark.slow
def test_two_eps_are_swept_but_not_fitted(tmp_path, capsys):
    # Two points give a slope without a standard error: fit_scalings needs three.
    out = tmp_path / "out"
    assert main(["sweep", str(_config(tmp_path, eps="[1e-2, 1e-3]")), "--out", str(out)]) == 0
    assert json.loads((out / "sweep.json").read_text())["exponents"] == {}
    assert "degree 0: not fitted (learned at fewer than 3 eps)" in capsys.readouterr().out


def _sweep_json(out: pathlib.Path) -> dict:
    return json.loads((out / "sweep.json").read_text())


def _times(result: dict, name: str) -> np.ndarray:
    return np.array(result[name], dtype=float)  # JSON null (not learned) becomes NaN


@pytest.mark.slow
def test_sharded_sweep_merges_to_the_one_process_sweep(tmp_path, capsys):
    path = _config(tmp_path, eps="[1e-2, 1e-3, 1e-4]")
    one, shards = tmp_path / "one", tmp_path / "shards"
    assert main(["sweep", str(path), "--out", str(one), "--no-progress"]) == 0
    # Members j with j % 2 == i: shard 1 runs eps 1e-3, shard 0 runs 1e-2 and 1e-4.
    assert main(["sweep", str(path), "--out", str(shards), "--shard", "1/2"]) == 0
    assert sorted(p.name for p in shards.iterdir()) == ["eps=0.001", "shard-1-of-2.json"]
    assert main(["sweep", str(path), "--out", str(shards), "--shard", "0/2"]) == 0
    assert not (shards / "sweep.json").exists()  # a shard alone does not fit
    assert "sst merge" in capsys.readouterr().out
    for i, eps in ((0, [1e-2, 1e-4]), (1, [1e-3])):
        marker = json.loads((shards / f"shard-{i}-of-2.json").read_text())
        assert (marker["shard"], marker["shards"], marker["eps"]) == (i, 2, eps)
        assert marker["failures"] == [] and marker["process_count"] == 1

    assert main(["merge", str(shards)]) == 0
    merged, single = _sweep_json(shards), _sweep_json(one)
    assert merged["eps"] == single["eps"] == [1e-2, 1e-3, 1e-4]
    for name in ("half", "ninety"):
        np.testing.assert_allclose(_times(merged, name), _times(single, name), rtol=1e-12)
    assert merged["exponents"].keys() == single["exponents"].keys()
    for k, fit in single["exponents"].items():
        assert merged["exponents"][k]["log_factor"] == fit["log_factor"]
        for field in ("exponent", "stderr"):
            assert merged["exponents"][k][field] == pytest.approx(fit[field], rel=1e-12)
    # Independent of either path: t_0 is proportional to eps (docs: time scales).
    assert merged["exponents"]["degree 0"]["exponent"] == pytest.approx(1.0, abs=0.02)
    assert (shards / "scaling.png").exists()
    for eps in ("0.01", "0.001", "0.0001"):
        a, b = (json.loads((d / f"eps={eps}" / "summary.json").read_text()) for d in (shards, one))
        assert a["final_risk"] == pytest.approx(b["final_risk"], rel=1e-12)
        assert a["learning_times"] == b["learning_times"]


@pytest.mark.slow
def test_sweep_under_jax_distributed_takes_its_process_share(tmp_path, monkeypatch):
    monkeypatch.setattr(sst._cli.jax, "process_index", lambda: 0)
    monkeypatch.setattr(sst._cli.jax, "process_count", lambda: 2)
    out = tmp_path / "out"
    path = _config(tmp_path, eps="[1e-2, 1e-3, 1e-4, 1e-5]")
    assert main(["sweep", str(path), "--out", str(out), "--no-progress"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["eps=0.0001", "eps=0.01", "shard-0-of-2.json"]
    marker = json.loads((out / "shard-0-of-2.json").read_text())
    assert (marker["eps"], marker["process_index"], marker["process_count"]) == ([1e-2, 1e-4], 0, 2)


@pytest.mark.parametrize("spec", ["2/2", "0/0", "-1/2", "1", "a/b", "1/2/3", ""])
def test_bad_shard_exits_with_message(tmp_path, capsys, spec):
    out = tmp_path / "out"
    path = _config(tmp_path, eps="[1e-2, 1e-3]")
    assert main(["sweep", str(path), "--out", str(out), f"--shard={spec}"]) == 2
    err = capsys.readouterr().err
    assert "--shard must be I/N with integers 0 <= I < N" in err and repr(spec) in err
    assert not out.exists()


def _member(folder: pathlib.Path, eps: float, config: dict) -> None:
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({"eps": eps, "config": config}))


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ({}, "holds no member summaries"),
        ({"eps=0.01": 1e-2, "eps=0.0001": 1e-4}, "lacks 1 of the sweep's 3 members (eps=0.001)"),
        (
            {"a/eps=0.01": 1e-2, "b/eps=0.01": 1e-2, "a/eps=0.001": 1e-3, "a/eps=0.0001": 1e-4},
            "member eps=0.01 appears twice",
        ),
        ({"eps=0.01": 1e-2, "eps=0.001": 1e-3, "other/eps=0.0001": "other"}, "another config"),
    ],
)
def test_merge_rejects_incomplete_or_mixed_folders(tmp_path, capsys, layout, message):
    config = RunConfig.from_file(_config(tmp_path, eps="[1e-2, 1e-3, 1e-4]")).to_dict()
    other = json.loads(json.dumps(config))
    other["times"]["t_max"] = 20.0
    out = tmp_path / "out"
    out.mkdir()
    for name, eps in layout.items():
        _member(out / name, 1e-4 if eps == "other" else eps, other if eps == "other" else config)
    assert main(["merge", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sst: error: ") and message in err, err
    assert not (out / "sweep.json").exists()


@pytest.mark.slow
def test_failed_member_keeps_earlier_files(tmp_path, monkeypatch, capsys):
    real_solve = sst._cli.solve
    calls = []

    def failing_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("simulated solver crash")
        return real_solve(*args, **kwargs)

    monkeypatch.setattr(sst._cli, "solve", failing_second)
    out = tmp_path / "out"
    path = _config(tmp_path, eps="[1e-2, 1e-3, 1e-4]")
    assert main(["sweep", str(path), "--out", str(out), "--no-progress"]) == 1
    assert json.loads((out / "eps=0.01" / "summary.json").read_text())["eps"] == 1e-2
    assert (out / "eps=0.01" / "trajectory.npz").exists()
    assert "simulated solver crash" in (out / "eps=0.001" / "error.json").read_text()
    assert (out / "eps=0.0001" / "summary.json").exists()  # later members still run
    assert json.loads((out / "sweep.json").read_text())["eps"] == [1e-2, 1e-4]
    assert "eps=0.001" in capsys.readouterr().err


def test_unsuccessful_solve_is_reported(tmp_path, capsys):
    text = TINY.replace("atol = 1e-10", "atol = 1e-10\nmax_steps = 5")
    out = tmp_path / "out"
    assert main(["run", str(_config(tmp_path, text=text)), "--out", str(out)]) == 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["solver"]["success"] is False
    assert summary["solver"]["t_reached"] < 10.0
    assert "max_steps" in capsys.readouterr().err


def test_steps_are_printed_as_accepted_and_rejected(tmp_path, capsys):
    # A budget of 5 steps (the compilation of the test above): every step taken is either
    # accepted or rejected, and the member line and the failure say how many of each.
    text = TINY.replace("atol = 1e-10", "atol = 1e-10\nmax_steps = 5")
    out = tmp_path / "out"
    assert main(["run", str(_config(tmp_path, text=text)), "--out", str(out)]) == 1
    solver = json.loads((out / "summary.json").read_text())["solver"]
    accepted, rejected = solver["num_accepted_steps"], solver["num_rejected_steps"]
    assert accepted + rejected == solver["num_steps"] == 5
    steps = f"5 steps ({accepted} accepted, {rejected} rejected)"
    printed = capsys.readouterr()
    assert printed.out.startswith("eps=0.01: final risk ") and f"; {steps}\n" in printed.out
    assert f"after {steps}; raise solver.max_steps" in printed.err


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (("problem", "target", "tanh"), ["problem.target", "erf", "relu"]),
        (("problem", "eps", -1.0), ["problem.eps", "> 0"]),
        (("problem", "eps", []), ["problem.eps"]),
        (("problem", "eps", [1e-2, "a"]), ["problem.eps[1]"]),
        (("problem", "tau", -0.5), ["problem.tau", ">= 0"]),
        (("problem", "tau", 0.5), ["problem.tau > 0", 'model = "finite_dim"']),
        (("problem", "colour", 1), ["problem.colour", "activation", "eps", "noise", "target"]),
        (("init", "law", "cauchy"), ["init.law", "normal", "rademacher", "uniform"]),
        (("init", "particles", 0), ["init.particles", ">= 1"]),
        (("init", "d", 10), ["init.d", "law", "mean", "particles", "scale"]),
        (("times", "n_save", 2.5), ["times.n_save", "integer"]),
        (("times", "t_min", 1e3), ["times.t_min", "times.t_max"]),
        (("solver", "rtol", 0), ["solver.rtol", "> 0"]),
        ((None, "model", "pde"), ["model", "finite_dim", "mean_field"]),
        ((None, "extra", {}), ["extra", "problem", "solver"]),
    ],
)
def test_bad_config_names_key_and_allowed_values(change, named):
    raw = {
        "problem": {"target": [0.0, 1.0], "activation": [1.0, 1.0], "eps": 1e-2},
        "init": {},
        "times": {},
        "solver": {},
    }
    table, key, value = change
    (raw if table is None else raw[table])[key] = value
    with pytest.raises(ValueError, match=re.escape(named[0])) as info:
        RunConfig.from_dict(raw)
    for word in named:
        assert word in str(info.value)


def test_tau_with_a_function_without_exact_noise_is_refused():
    raw = {
        "model": "finite_dim",
        "problem": {"target": [0.0, 1.0], "activation": "relu", "eps": 1e-2, "tau": 0.5},
    }
    with pytest.raises(ValueError, match="problem.tau > 0 needs a polynomial activation"):
        RunConfig.from_dict(raw)
    raw["problem"]["tau"] = 0.0  # the flow needs no noise matrix
    assert RunConfig.from_dict(raw).problem["tau"] == 0.0
    raw["problem"].update(target="relu", tau=0.5)  # relu as both has exact noise terms
    assert RunConfig.from_dict(raw).problem["tau"] == 0.5


NOISY = """
model = "finite_dim"
[problem]
target = [0.0, 1.0, 0.5]
activation = [0.0, 1.0, 0.5]
eps = 0.5
tau = {tau}
[init]
m = 3
d = 20
[times]
t_min = 1e-2
t_max = 1.0
n_save = 5
"""


@pytest.mark.slow
def test_tau_runs_the_noisy_ode(tmp_path):
    # problem.tau reaches the model: the run's final risk is that of FiniteDimODE(problem, tau)
    # from sst.random_init's network, built here from the library, and not the flow's.
    final = {}
    for tau in (0.0, 0.5):
        path = tmp_path / f"tau={tau}.toml"
        path.write_text(NOISY.format(tau=tau))
        out = tmp_path / f"out-{tau}"
        assert main(["run", str(path), "--out", str(out), "--no-progress"]) == 0
        final[tau] = json.loads((out / "summary.json").read_text())["final_risk"]
    problem = sst.Problem(sst.Hermite([0.0, 1.0, 0.5]), sst.Hermite([0.0, 1.0, 0.5]), 0.5)
    init = sst.random_init(jax.random.PRNGKey(0), 3, 20)
    ts = np.concatenate([[0.0], np.geomspace(1e-2, 1.0, 5)])
    for tau in (0.0, 0.5):
        direct = sst.solve(sst.FiniteDimODE(problem, tau=tau), init.state, ts)
        np.testing.assert_allclose(final[tau], float(direct.risk[-1]), rtol=1e-9)
    assert abs(final[0.5] - final[0.0]) > 1e-3, final


def test_bad_config_file_exits_with_message(tmp_path, capsys):
    path = tmp_path / "bad.toml"
    path.write_text(TINY.format(eps="1e-2").replace('law = "uniform"', 'law = "cauchy"'))
    assert main(["run", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "init.law" in err and "uniform" in err
    assert not (tmp_path / "out").exists()
    path.write_text("[problem\n")
    assert main(["run", str(path), "--out", str(tmp_path / "out")]) == 2
    assert "not valid TOML" in capsys.readouterr().err
    assert main(["sweep", str(_config(tmp_path)), "--out", str(tmp_path / "out")]) == 2
    assert "two or more" in capsys.readouterr().err


def test_console_script_help():
    sst_command = pathlib.Path(sys.executable).parent / "sst"
    result = subprocess.run(
        [str(sst_command), "--help"], capture_output=True, text=True, check=True
    )
    assert "run" in result.stdout and "sweep" in result.stdout


# Runs in a fresh interpreter: the console script's front answers help and usage errors, and
# sys.modules then shows whether JAX was imported. The last line imports the package, so the
# probe is seen to detect JAX when it is there.
_NO_JAX_PROBE = """
import sys
import sst_cli

for argv in (["--help"], ["run"], ["frobnicate"], ["sweep", "c.toml", "--out", "o", "--shard=2/2"]):
    try:
        status = sst_cli.main(argv)
    except SystemExit as exit:
        status = exit.code
    print(status, "jax" in sys.modules)
import sst._cli
print("after", "jax" in sys.modules)
"""


@pytest.mark.slow
def test_help_and_usage_errors_do_not_import_jax(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", _NO_JAX_PROBE],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    )
    # The help text comes first on stdout; the probe's five lines end it.
    assert result.stdout.splitlines()[-5:] == [
        "0 False",
        "2 False",
        "2 False",
        "2 False",
        "after True",
    ], result.stderr
    assert "usage: sst" in result.stdout
    assert "the following arguments are required: config, --out" in result.stderr
    assert "invalid choice: 'frobnicate'" in result.stderr
    assert "--shard must be I/N with integers 0 <= I < N" in result.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("example", sorted((ROOT / "examples").glob("*.toml")))
def test_example_configs_are_valid(example):
    config = RunConfig.from_file(example)
    assert config.eps_list


def _raw(target, model="mean_field", init=None):
    raw = {
        "model": model,
        "problem": {"target": target, "activation": [0.5, 1.0, 1.0, 1.0], "eps": 1e-2},
        "times": {"t_min": 1e-4, "t_max": 10.0, "n_save": 30},
    }
    if init is not None:
        raw["init"] = init
    return raw


def test_target_table_builds_models_of_k_directions():
    terms = [[[1, 0], 1.0], [[1, 1], 1.0]]
    config = RunConfig.from_dict(_raw({"terms": terms}, init={"particles": 4}))
    model, y0, ts = config.build(1e-2)
    assert isinstance(model, sst.MeanFieldODE) and model.problem.k == 2
    assert y0.s.shape == (4, 2) and float(np.max(np.abs(y0.s))) == 0.0
    assert model.problem.target.indices == ((1, 0), (1, 1))
    assert RunConfig.from_dict(config.to_dict()) == config  # round trip
    config = RunConfig.from_dict(
        _raw({"terms": [[[2, 0], 1.0]], "basis": "monomial"}, "finite_dim", {"m": 3, "d": 5})
    )
    model, y0, _ = config.build(1e-2)
    assert isinstance(model, sst.FiniteDimODE) and y0.s.shape == (3, 2)
    # z1^2 = h_0 + sqrt(2) h_2(z1)
    assert float(model.problem.target.coefficient((2, 0))) == pytest.approx(np.sqrt(2.0))
    assert float(model.problem.target.coefficient((0, 0))) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("target", "match"),
    [
        ({}, r"problem\.target\.terms must be a non-empty list"),
        ({"terms": [[[1, 0], 1.0]], "k": 2}, r"Unknown key problem\.target\.k"),
        ({"terms": [[[1, 0], 1.0]], "basis": "legendre"}, r"problem\.target\.basis must be one of"),
        ({"terms": [[[1, 0], 1.0], [[1], 1.0]]}, r"problem\.target\.terms\[1\] has a multi"),
        ({"terms": [[[1, -1], 1.0]]}, r"problem\.target\.terms\[0\] must be \[multi-index"),
        ({"terms": [[[1, 0], "one"]]}, r"problem\.target\.terms\[0\]\[1\] must be a finite"),
        ({"terms": [[[1, 0], 1.0], [[1, 0], 2.0]]}, r"problem\.target\.terms lists a multi"),
    ],
)
def test_target_table_validation_names_the_key(target, match):
    with pytest.raises(ValueError, match=match):
        RunConfig.from_dict(_raw(target))


def test_finite_dim_needs_d_above_k():
    config = RunConfig.from_dict(_raw({"terms": [[[1, 1], 1.0]]}, "finite_dim", {"m": 3, "d": 2}))
    with pytest.raises(ValueError, match=r"init\.d must exceed the k=2"):
        config.build(1e-2)
