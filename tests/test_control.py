"""`ModelErrorController` and the default error measure (sst/_control.py)."""

import diffrax as dfx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sst

TS = np.concatenate([[0.0], np.logspace(-4, 1, 41)])


def _relu_model(eps=1e-2):
    # A ReLU activation takes MeanFieldODE's dense path, whose error measure is the default.
    return sst.MeanFieldODE(sst.Problem(sst.Hermite([0.0, 1.0, 0.5]), sst.relu(8), eps))


def _pid(rtol=1e-8, atol=1e-10):
    return dfx.ClipStepSizeController(dfx.PIDController(rtol=rtol, atol=atol), step_ts=TS)


@pytest.mark.slow
def test_default_error_norm_steps_exactly_as_diffrax_pid():
    model, y0 = _relu_model(), sst.quadrature_particles(4, law="uniform")
    ours = sst.solve(model, y0, TS)
    theirs = sst.solve(model, y0, TS, stepsize_controller=_pid())
    assert int(ours.stats["num_steps"]) == int(theirs.stats["num_steps"])
    assert int(ours.stats["num_rejected_steps"]) == int(theirs.stats["num_rejected_steps"])
    leaves = zip(
        jax.tree_util.tree_leaves(ours.ys), jax.tree_util.tree_leaves(theirs.ys), strict=True
    )
    for x, y in leaves:
        np.testing.assert_array_equal(x, y)


def test_scaled_rms_error_matches_its_definition_and_ignores_nan_candidates():
    y0 = (jnp.array([1.0, -2.0]), jnp.array([0.5]))
    y1 = (jnp.array([3.0, -1.0]), jnp.array([jnp.nan]))
    err = (jnp.array([1e-8, 2e-8]), jnp.array([1e-9]))
    rtol, atol = 1e-6, 1e-9
    expected = np.sqrt(
        np.mean(
            [
                (1e-8 / (atol + rtol * 3.0)) ** 2,
                (2e-8 / (atol + rtol * 2.0)) ** 2,
                (1e-9 / (atol + rtol * 0.5)) ** 2,  # the NaN leaf is scaled by y0
            ]
        )
    )
    got = sst.scaled_rms_error(y0, y1, err, rtol, atol)
    np.testing.assert_allclose(got, expected, rtol=1e-14)


class _NaNError(sst.MeanFieldODE):
    def error_norm(self, y0, y1, y_error, args, rtol, atol):
        return jnp.asarray(jnp.nan)


def test_nonfinite_error_rejects_the_step_and_shrinks_it_by_factormin():
    model = _NaNError(_relu_model().problem)
    pid = dfx.PIDController(rtol=1e-6, atol=1e-9, factormin=0.25)
    controller = sst.ModelErrorController(model, pid)
    y, args = model.split(sst.quadrature_particles(4, law="uniform"))
    state = (jnp.array(1.0), jnp.array(1.0), False)
    keep, t0, t1, _, _, _ = controller.adapt_step_size(0.0, 0.1, y, y, args, y, 5, state)
    assert not bool(keep)
    np.testing.assert_allclose([t0, t1], [0.0, 0.025])


@pytest.mark.slow
def test_controller_exposes_its_pid_tolerances_and_is_recorded_by_solve():
    model = sst.MeanFieldODE(
        sst.Problem(sst.Hermite([0.0, 1.0, 1.0]), sst.Hermite([0.5, 1.0, 1.0]), 1e-2)
    )
    controller = sst.ModelErrorController(model, dfx.PIDController(rtol=1e-7, atol=1e-9))
    assert (controller.rtol, controller.atol) == (1e-7, 1e-9)
    traj = sst.solve(model, sst.quadrature_particles(4, law="uniform"), TS, rtol=1e-7, atol=1e-9)
    assert (traj.rtol, traj.atol) == (1e-7, 1e-9)
    # A user's controller is used as it is: a plain PID steps differently.
    plain = sst.solve(
        model, sst.quadrature_particles(4, law="uniform"), TS, stepsize_controller=_pid(1e-7, 1e-9)
    )
    assert int(plain.stats["num_steps"]) != int(traj.stats["num_steps"])


@pytest.mark.slow
def test_controller_runs_under_vmap_with_batched_eps():
    model = sst.MeanFieldODE(
        sst.Problem(sst.Hermite([0.0, 1.0, 1.0]), sst.Hermite([0.5, 1.0, 1.0]), 1e-2)
    )
    y0 = sst.quadrature_particles(4, law="uniform")
    batch = sst.solve_batch(model, y0, TS, eps=np.array([1e-2, 1e-3]))
    assert bool(np.all(batch.success))
    for i, eps in enumerate([1e-2, 1e-3]):
        one = sst.solve(model.with_parameters(eps=eps), y0, TS)
        np.testing.assert_allclose(batch.risk[i], one.risk, rtol=1e-12, atol=1e-15)


def test_controller_needs_a_pid_controller():
    model = _relu_model()
    with pytest.raises(ValueError, match=r"needs controller=diffrax.PIDController\(rtol"):
        sst.ModelErrorController(model, dfx.ConstantStepSize())


@pytest.mark.parametrize("scale", [1e-12, 1e-7, 1e-6, 1.0], ids=["tiny", "accept", "reject", "far"])
def test_controller_decides_as_diffrax_pid_with_all_its_options(scale):
    # With the default error measure (diffrax's own), every output of a step-size decision is
    # bitwise that of the PID controller: the model's error feeds diffrax's PID rule unchanged,
    # with proportional and derivative terms, dtmin and the controller state.
    model = _relu_model()
    pid = dfx.PIDController(
        rtol=1e-6, atol=1e-9, pcoeff=0.2, icoeff=0.4, dcoeff=0.1, dtmin=1e-3, factormax=5.0
    )
    controller = sst.ModelErrorController(model, pid)
    y0, args = model.split(sst.quadrature_particles(4, law="uniform"))
    key0, key1 = jax.random.split(jax.random.key(0))
    y1 = jax.tree_util.tree_map(lambda x: x + jax.random.normal(key0, x.shape), y0)
    y_error = jax.tree_util.tree_map(lambda x: scale * jax.random.normal(key1, x.shape), y0)
    state = (jnp.array(0.7), jnp.array(1.3), jnp.array(False))
    ours = controller.adapt_step_size(0.5, 0.6, y0, y1, args, y_error, 5, state)
    theirs = pid.adapt_step_size(0.5, 0.6, y0, y1, args, y_error, 5, state)
    assert bool(ours[0]) == (scale <= 1e-7)
    leaves = zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(theirs), strict=True)
    for x, y in leaves:
        np.testing.assert_array_equal(x, y)
