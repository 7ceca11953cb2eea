"""optimize_activation: Adam through the solve at fixed norm lowers the objective, and the
losses it records are the objectives of the trajectories it returns."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import log_grid

import sst

TS = log_grid(1e-4, 10.0, 30)
PROBLEM = sst.Problem(sst.Hermite([0.5, 1.0, 1.0, 1.0]), sst.Hermite([0.5, 0.5, 0.5, 0.5]), 1e-2)


def test_optimised_activation_keeps_its_norm_and_lowers_the_risk():
    y0 = sst.quadrature_particles(4)
    # optax's Adam raises its Python-float decay to its int32 step count, which strict
    # promotion (conftest) refuses: optax's code, not sst's, needs standard promotion.
    with jax.numpy_dtype_promotion("standard"):
        result = sst.optimize_activation(PROBLEM, y0, TS, t=1.0, steps=6, learning_rate=0.1)
    losses = np.asarray(result.losses)
    assert losses.shape == (7,) and np.all(np.isfinite(losses))
    np.testing.assert_allclose(jnp.linalg.norm(result.final.coeffs), 1.0, rtol=1e-12)
    # The recorded losses are the risks of the trajectories returned, before and after.
    np.testing.assert_allclose(losses[0], sst.risk_at(result.before, 1.0), rtol=1e-10)
    np.testing.assert_allclose(losses[-1], sst.risk_at(result.after, 1.0), rtol=1e-10)
    assert losses[-1] < 0.5 * losses[0]


def test_optimize_activation_rejects_bad_requests():
    y0 = sst.quadrature_particles(4)
    with pytest.raises(ValueError, match="objective must be one of"):
        sst.optimize_activation(PROBLEM, y0, TS, objective="loss")
    with pytest.raises(ValueError, match="needs the risk level"):
        sst.optimize_activation(PROBLEM, y0, TS, objective="time")
    relu = sst.Problem(PROBLEM.target, sst.relu(), 1e-2)
    with pytest.raises(ValueError, match="finite series"):
        sst.optimize_activation(relu, y0, TS)
