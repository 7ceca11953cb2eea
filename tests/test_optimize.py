"""optimize_activation: Adam through the solve at fixed norm lowers the objective, and the
losses it records are the objectives of the trajectories it returns, for a model of either kind
and a target of one direction or of k = 2."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import FD_M, D, log_grid

import sst

TS = log_grid(1e-4, 10.0, 30)
PROBLEM = sst.Problem(sst.Hermite([0.5, 1.0, 1.0, 1.0]), sst.Hermite([0.5, 0.5, 0.5, 0.5]), 1e-2)


def _optimize(*args, **kwargs):
    # optax's Adam raises its Python-float decay to its int32 step count, which strict
    # promotion (conftest) refuses: optax's code, not sst's, needs standard promotion.
    with jax.numpy_dtype_promotion("standard"):
        return sst.optimize_activation(*args, **kwargs)


@pytest.mark.slow
def test_optimised_activation_keeps_its_norm_and_lowers_the_risk():
    y0 = sst.quadrature_particles(4)
    result = _optimize(sst.MeanFieldODE(PROBLEM), y0, TS, t=1.0, steps=6, learning_rate=0.1)
    losses = np.asarray(result.losses)
    assert losses.shape == (7,) and np.all(np.isfinite(losses))
    np.testing.assert_allclose(jnp.linalg.norm(result.final.coeffs), 1.0, rtol=1e-12)
    # The recorded losses are the risks of the trajectories returned, before and after.
    np.testing.assert_allclose(losses[0], sst.risk_at(result.before, 1.0), rtol=1e-10)
    np.testing.assert_allclose(losses[-1], sst.risk_at(result.after, 1.0), rtol=1e-10)
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.slow
def test_optimize_activation_takes_a_finite_dim_model_of_k_directions():
    target = sst.Target.from_monomials({(1, 0): 1.0, (1, 1): 1.0})
    activation = sst.Hermite([0.2, 1.0, 0.5, 0.5])
    init = sst.random_init(jax.random.key(0), FD_M, D, k=2)
    model = sst.FiniteDimODE(sst.Problem(target, activation, 0.1))
    result = _optimize(model, init.state, TS, t=1.0, steps=2, learning_rate=0.05)
    losses = np.asarray(result.losses)
    assert losses.shape == (3,) and np.all(np.isfinite(losses))
    np.testing.assert_allclose(
        jnp.linalg.norm(result.final.coeffs), jnp.linalg.norm(activation.coeffs), rtol=1e-12
    )
    assert not np.allclose(result.final.coeffs, activation.coeffs)
    # The trajectory after is the solve of the problem with the final activation, built anew.
    again = sst.solve(
        sst.FiniteDimODE(sst.Problem(target, result.final, 0.1)), init.state, TS, throw=False
    )
    np.testing.assert_allclose(result.after.risk, again.risk, rtol=1e-10)
    np.testing.assert_allclose(losses[-1], sst.risk_at(again, 1.0), rtol=1e-10)
    np.testing.assert_allclose(losses[0], sst.risk_at(result.before, 1.0), rtol=1e-10)


def test_optimize_activation_rejects_bad_requests():
    y0 = sst.quadrature_particles(4)
    model = sst.MeanFieldODE(PROBLEM)
    with pytest.raises(ValueError, match="objective must be one of"):
        sst.optimize_activation(model, y0, TS, objective="loss")
    with pytest.raises(ValueError, match="needs the risk level"):
        sst.optimize_activation(model, y0, TS, objective="time")
    relu = sst.MeanFieldODE(sst.Problem(PROBLEM.target, sst.relu(), 1e-2))
    with pytest.raises(ValueError, match="finite series"):
        sst.optimize_activation(relu, y0, TS)
    with pytest.raises(ValueError, match=r"model must be a model of a Problem \(e\.g\."):
        sst.optimize_activation(PROBLEM, y0, TS)
