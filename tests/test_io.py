"""Saving and loading trajectories: every kind of Trajectory round-trips leaf by leaf, with its
result code, statistics, tolerances, labels and training record."""

import dataclasses
import json
import sys

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import (
    TRAIN_TS,
    TS,
    Point,
    cubic_problem,
    particles,
    random_network,
    small_problem,
    synthetic_trajectory,
)
from jaxtyping import Array, Float

import sst
from sst._solution import DenseOutput


def _assert_round_trip(traj, path):
    sst.save_trajectory(path, traj)
    loaded = sst.load_trajectory(path)
    assert type(loaded) is sst.Trajectory and type(loaded.ys) is type(traj.ys)
    # The same pytree (classes and static fields: labels, tolerances, estimator, eta) ...
    assert jax.tree_util.tree_structure(loaded) == jax.tree_util.tree_structure(traj)
    assert (loaded.rtol, loaded.atol) == (traj.rtol, traj.atol)
    assert loaded.residual_labels == traj.residual_labels
    assert bool(jnp.all(loaded.result == traj.result)) and set(loaded.stats) == set(traj.stats)
    # ... with the same arrays, bit for bit and dtype for dtype.
    leaves = zip(jax.tree_util.tree_leaves(loaded), jax.tree_util.tree_leaves(traj), strict=True)
    for x, y in leaves:
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(x, y)
    return loaded


def test_mean_field_round_trip(tmp_path, cubic_trajectory):
    loaded = _assert_round_trip(cubic_trajectory, tmp_path / "mean_field.npz")
    assert isinstance(loaded.ys, sst.MeanFieldState) and loaded.training is None
    assert (loaded.rtol, loaded.atol) == (1e-8, 1e-10)


def test_finite_dim_round_trip(tmp_path, finite_dim_trajectory):
    loaded = _assert_round_trip(finite_dim_trajectory, tmp_path / "finite_dim.npz")
    assert isinstance(loaded.ys, sst.FiniteDimState) and loaded.ys.Q.ndim == 3


def test_round_trip_of_k_directions(tmp_path):
    # Overlaps of shape (T, m, k) and multi-index labels come back as they were.
    ts = np.array([0.0, 0.5, 1.0])
    s = np.arange(3 * 4 * 2, dtype=float).reshape(3, 4, 2) / 30
    ys = sst.MeanFieldState(np.ones((3, 4)), s, np.full((3, 4), 0.25))
    traj = synthetic_trajectory(ts, np.ones((3, 3)), ys=ys)
    traj = dataclasses.replace(traj, residual_labels=((0, 0), (1, 0), (1, 1)))
    loaded = _assert_round_trip(traj, tmp_path / "k2.npz")
    assert loaded.residual_labels == ((0, 0), (1, 0), (1, 1)) and loaded.ys.s.shape == (3, 4, 2)


@pytest.mark.slow
def test_training_round_trip(tmp_path):
    run = sst.train(
        small_problem(),
        random_network(),
        TRAIN_TS,
        eta=1e-2,
        estimator=sst.FixedSamples(12),  # as in test_train: the same compiled loop
        key=jax.random.key(0),
    )
    loaded = _assert_round_trip(run, tmp_path / "train.npz")
    assert loaded.training.estimator == sst.FixedSamples(12)
    assert loaded.training.eta == 1e-2 and loaded.rtol is None
    np.testing.assert_array_equal(loaded.training.train_risk, run.training.train_risk)
    np.testing.assert_array_equal(loaded.training.W, run.training.W)


def test_failed_and_batched_round_trip(tmp_path, cubic_model):
    failed = sst.solve(cubic_model, particles(), TS, max_steps=5, throw=False)
    loaded = _assert_round_trip(failed, tmp_path / "failed.npz")
    assert loaded.result == sst.RESULTS.max_steps_reached
    np.testing.assert_array_equal(loaded.valid, failed.valid)
    batch = jax.tree_util.tree_map(lambda *x: jnp.stack(x), failed, failed)
    loaded = _assert_round_trip(batch, tmp_path / "batch.npz")
    assert loaded.batch_size == 2 and not bool(jnp.any(loaded[1].success))


def test_io_rejects_what_it_cannot_read_or_write(tmp_path):
    with pytest.raises(ValueError, match="save_trajectory needs an sst.Trajectory"):
        sst.save_trajectory(tmp_path / "x.npz", cubic_problem())
    plain = tmp_path / "plain.npz"
    np.savez(plain, ts=np.zeros(3))
    with pytest.raises(ValueError, match="not a trajectory written by sst.save_trajectory"):
        sst.load_trajectory(plain)
    with pytest.raises(ValueError, match="Cannot read .* as a trajectory file"):
        sst.load_trajectory(tmp_path / "missing.npz")
    tiny = synthetic_trajectory(np.array([0.0, 1.0]), np.ones((2, 1)))
    with pytest.raises(ValueError, match="Cannot write .*existing, writable folder"):
        sst.save_trajectory(tmp_path / "no" / "such" / "x.npz", tiny)


def _with_header(source, target, edit):
    """Copy the trajectory file `source` to `target` with its JSON header changed by `edit`."""
    with np.load(source) as data:
        arrays = {name: data[name] for name in data.files}
    header = json.loads(str(arrays["__sst_header__"]))
    edit(header)
    arrays["__sst_header__"] = np.asarray(json.dumps(header))
    np.savez(target, **arrays)


def test_a_file_naming_another_class_is_refused_and_nothing_is_imported(tmp_path, monkeypatch):
    # A module on the path that would leave a marker if anything imported it.
    marker = tmp_path / "imported"
    (tmp_path / "planted_module.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('imported')\n"
        "class Planted:\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    tiny = synthetic_trajectory(np.array([0.0, 1.0]), np.ones((2, 1)))
    sst.save_trajectory(tmp_path / "tiny.npz", tiny)
    modules = set(sys.modules)
    for name, where in [
        ("planted_module:Planted", lambda h: h),
        ("os:system", lambda h: h["fields"]["ys"]),
        ("planted_module:Planted", lambda h: h["fields"]["result"]["fields"]["_enumeration"]),
    ]:
        crafted = tmp_path / "crafted.npz"

        def edit(header, name=name, where=where):
            node = where(header)
            node["type" if "type" in node else "class"] = name

        _with_header(tmp_path / "tiny.npz", crafted, edit)
        with pytest.raises(ValueError, match=rf"names the class '{name}', which load_trajectory"):
            sst.load_trajectory(crafted)
    assert set(sys.modules) == modules and "planted_module" not in sys.modules
    assert not marker.exists()


class Probability(eqx.Module):
    """A state type of one's own with a check."""

    p: Float[Array, " T"]

    def __check_init__(self):
        if not np.all((np.asarray(self.p) >= 0) & (np.asarray(self.p) <= 1)):
            raise ValueError("p must lie in [0, 1].")


def test_loaded_objects_run_their_checks(tmp_path):
    # Fields are rebuilt as saved, then checked as on construction.
    traj = synthetic_trajectory(
        np.array([0.0, 1.0]), np.ones((2, 1)), ys=Probability(0.5 * np.ones(2))
    )
    sst.save_trajectory(tmp_path / "traj.npz", traj)
    np.testing.assert_array_equal(
        sst.load_trajectory(tmp_path / "traj.npz", like=traj).ys.p, traj.ys.p
    )
    with np.load(tmp_path / "traj.npz") as data:
        arrays = {name: data[name] for name in data.files}
    arrays[".ys.p"] = np.array([0.5, 2.0])
    np.savez(tmp_path / "unchecked.npz", **arrays)
    with pytest.raises(ValueError, match=r"p must lie in \[0, 1\]"):
        sst.load_trajectory(tmp_path / "unchecked.npz", like=traj)
    _with_header(tmp_path / "traj.npz", tmp_path / "bad.npz", lambda h: h.update(fields=[]))
    with pytest.raises(ValueError, match="has a malformed header; rewrite it"):
        sst.load_trajectory(tmp_path / "bad.npz", like=traj)


def test_states_of_a_model_of_ones_own_load_with_like(tmp_path):
    # helpers.Point is a state type outside sst: a file holding it loads only given a like.
    traj = synthetic_trajectory(np.array([0.0, 1.0]), np.ones((2, 1)), ys=Point(np.ones((2, 3))))
    sst.save_trajectory(tmp_path / "point.npz", traj)
    with pytest.raises(ValueError, match=r"names the class 'helpers:Point'.*pass like="):
        sst.load_trajectory(tmp_path / "point.npz")
    loaded = sst.load_trajectory(tmp_path / "point.npz", like=traj)
    assert type(loaded.ys) is Point
    np.testing.assert_array_equal(loaded.ys.x, traj.ys.x)


def test_the_dense_output_is_not_written(tmp_path):
    traj = synthetic_trajectory(np.array([0.0, 1.0]), np.ones((2, 1)))
    dense = dataclasses.replace(traj, dense=DenseOutput(None, None, None))
    with pytest.raises(ValueError, match=r"does not write the solver's dense output"):
        sst.save_trajectory(tmp_path / "dense.npz", dense)
