"""Multi-index targets in the configuration and the `sst` command (`[problem.target]` as a table
of multi-indices and coefficients)."""

import jax

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_dtype_promotion", "strict")

import json  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import sst  # noqa: E402
from sst._cli import main  # noqa: E402
from sst._config import RunConfig  # noqa: E402

TERMS = [[[1, 0], 1.0], [[1, 1], 1.0]]


def _raw(target, model="mean_field", init=None):
    raw = {
        "model": model,
        "problem": {"target": target, "activation": [0.5, 1.0, 1.0, 1.0], "eps": 1e-2},
        "times": {"t_min": 1e-4, "t_max": 10.0, "n_save": 30},
    }
    if init is not None:
        raw["init"] = init
    return raw


def test_build_multi_index_models():
    config = RunConfig.from_dict(_raw({"terms": TERMS}, init={"particles": 4}))
    model, y0, ts = config.build(1e-2)
    assert isinstance(model, sst.MultiIndexMeanFieldODE)
    assert y0.s.shape == (4, 2) and float(np.max(np.abs(y0.s))) == 0.0
    assert model.problem.target.indices == ((1, 0), (1, 1))
    assert RunConfig.from_dict(config.to_dict()) == config  # round trip
    config = RunConfig.from_dict(
        _raw({"terms": [[[2, 0], 1.0]], "basis": "monomial"}, "finite_dim", {"m": 3, "d": 5})
    )
    model, y0, _ = config.build(1e-2)
    assert isinstance(model, sst.MultiIndexFiniteDimODE) and y0.s.shape == (3, 2)
    # z1^2 = h_0 + sqrt(2) h_2(z1)
    assert float(model.problem.target.coefficient((2, 0))) == pytest.approx(np.sqrt(2.0))


@pytest.mark.parametrize(
    ("target", "match"),
    [
        ({}, r"problem\.target\.terms must be a non-empty list"),
        ({"terms": TERMS, "k": 2}, r"Unknown key problem\.target\.k"),
        ({"terms": TERMS, "basis": "legendre"}, r"problem\.target\.basis must be one of"),
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
    config = RunConfig.from_dict(_raw({"terms": TERMS}, "finite_dim", {"m": 3, "d": 2}))
    with pytest.raises(ValueError, match=r"init\.d must exceed the k=2"):
        config.build(1e-2)


def test_sweep_writes_learning_times_per_multi_index(tmp_path, capsys):
    path = tmp_path / "config.toml"
    path.write_text(
        'model = "mean_field"\n'
        "[problem]\n"
        "activation = [0.5, 1.0, 1.0, 1.0]\n"
        "eps = [1e-2, 1e-3, 1e-4]\n"
        "[problem.target]\n"
        "terms = [[[1, 0], 1.0], [[1, 1], 1.0]]\n"
        "[init]\n"
        "particles = 4\n"
        "[times]\n"
        "t_min = 1e-5\n"
        "t_max = 10.0\n"
        "n_save = 30\n"
    )
    assert main(["sweep", str(path), "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    summary = json.loads((tmp_path / "out" / "eps=0.01" / "summary.json").read_text())
    assert set(summary["learning_times"]) == {"1,0", "1,1"}
    assert (tmp_path / "out" / "eps=0.01" / "overlaps.png").exists()
    traj = sst.load_trajectory(tmp_path / "out" / "eps=0.01" / "trajectory.npz")
    assert traj.residual_labels[:3] == ((0, 0), (1, 0), (0, 1)) and traj.ys.s.shape[-1] == 2
    sweep = json.loads((tmp_path / "out" / "sweep.json").read_text())
    assert sweep["labels"] == ["1,0", "1,1"]
    assert set(sweep["exponents"]) == {"1,0", "1,1"}
    assert (tmp_path / "out" / "scaling.png").exists()
    assert "multi-index 1,1: exponent" in capsys.readouterr().out
