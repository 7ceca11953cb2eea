import math

import diffrax as dfx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sst
from sst.particles import batch_directions

# eps = 0.1 keeps the explicit a-step eta U(1)/eps small at the step sizes used here.
PROBLEM = sst.Problem(sst.Hermite([0.0, 1.0, 0.5, 0.5]), sst.Hermite([0.2, 1.0, 0.5, 0.5]), eps=0.1)
NOISY = sst.Problem(PROBLEM.target, PROBLEM.activation, eps=0.1, noise=0.3)
M, D = 3, 8
INIT = sst.random_init(jax.random.PRNGKey(11), M, D)
TS = jnp.linspace(0.0, 1.0, 5)
ODE_OPTIONS = dict(solver=dfx.Dopri8(), rtol=1e-11, atol=1e-12)


def _run(fn, problem=PROBLEM, ts=TS, *args, **kwargs):
    return fn(problem, INIT.state.a, INIT.W, INIT.u, ts, *args, **kwargs)


@pytest.fixture(scope="module")
def ode():
    return sst.solve(sst.FiniteDimODE(PROBLEM), INIT.state, TS, **ODE_OPTIONS)


@pytest.mark.parametrize("activation", [PROBLEM.activation, sst.erf(), sst.relu()])
def test_hand_gradient_matches_autodiff_of_the_network(activation):
    problem = sst.Problem(PROBLEM.target, activation, eps=0.1)
    kx, ky, ka = jax.random.split(jax.random.PRNGKey(0), 3)
    x = jax.random.normal(kx, (5, D))
    y = jax.random.normal(ky, (5,))
    a = jax.random.normal(ka, (M,))

    def loss(a, W):
        f = jnp.mean(a * activation(x @ W.T), axis=1)  # (1/m) sum_i a_i sigma(<w_i, x>)
        return jnp.mean((y - f) ** 2) / 2

    ga, gW = jax.grad(loss, argnums=(0, 1))(a, INIT.W)
    da, dW = batch_directions(problem, a, INIT.W, x, y)
    np.testing.assert_allclose(da, -M * ga, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(dW, -M * gW, rtol=1e-12, atol=1e-14)


def test_population_gd_converges_to_finite_dim_ode_at_first_order(ode):
    errors = []
    for eta in (2e-3, 1e-3, 5e-4):
        run = _run(sst.population_gd, PROBLEM, TS, eta)
        pairs = ((run.a, ode.a), (run.s, ode.s), (run.Q, ode.Q))
        errors.append(max(float(jnp.max(jnp.abs(x - y))) for x, y in pairs))
    ratios = [errors[i] / errors[i + 1] for i in range(2)]
    assert all(1.8 < r < 2.2 for r in ratios), (errors, ratios)
    np.testing.assert_allclose(run.risk[0], ode.risk[0], rtol=1e-12)


def test_float32_population_gd_tracks_float64():
    r64 = _run(sst.population_gd, PROBLEM, TS, 1e-2)
    r32 = _run(sst.population_gd, PROBLEM, TS, 1e-2, dtype=jnp.float32)
    assert r32.W.dtype == jnp.float32
    np.testing.assert_allclose(r32.risk, r64.risk, rtol=1e-4)
    np.testing.assert_allclose(r32.s, r64.s, atol=1e-5)


def test_sgd_mean_over_seeds_matches_the_ode_within_statistical_error():
    # Label noise included: it must shift the population risk by noise^2 / 2 and nothing else.
    ode = sst.solve(sst.FiniteDimODE(NOISY), INIT.state, TS, **ODE_OPTIONS)
    gd = _run(sst.population_gd, NOISY, TS, 1e-3)
    risks = np.stack(
        [
            _run(sst.online_sgd, NOISY, TS, 1e-3, jax.random.PRNGKey(seed), batch=16).risk
            for seed in range(48)
        ]
    )
    mean, stderr = risks.mean(0), risks.std(0, ddof=1) / math.sqrt(risks.shape[0])
    # The SGD mean differs from the flow by the same-step Euler error (measured by population
    # GD) plus the sampling error of the mean.
    gap = np.abs(mean - np.asarray(ode.risk))
    allowed = 4 * stderr + np.abs(np.asarray(gd.risk - ode.risk))
    assert np.all(gap[1:] <= allowed[1:]), (gap, allowed)
    # The check is sharp: the risk moves by far more than the tolerance over the run.
    assert float(ode.risk[0] - ode.risk[-1]) > 10 * allowed.max()


def test_renormalisation_keeps_unit_rows():
    for dtype, tol in ((jnp.float64, 1e-13), (jnp.float32, 1e-6)):
        run = _run(sst.online_sgd, PROBLEM, TS, 5e-2, jax.random.PRNGKey(1), dtype=dtype)
        np.testing.assert_allclose(jnp.linalg.norm(run.W.astype(float), axis=1), 1.0, atol=tol)
        np.testing.assert_allclose(run.s[-1], run.W.astype(float) @ INIT.u, atol=tol)
        assert bool(jnp.all(run.valid))


def test_same_seed_gives_the_same_run_whatever_the_record_grid():
    key = jax.random.PRNGKey(5)
    run = _run(sst.online_sgd, PROBLEM, TS, 1e-2, key)
    again = _run(sst.online_sgd, PROBLEM, TS, 1e-2, key)
    coarse = _run(sst.online_sgd, PROBLEM, TS[::2], 1e-2, key)
    other = _run(sst.online_sgd, PROBLEM, TS, 1e-2, jax.random.PRNGKey(6))
    np.testing.assert_array_equal(run.a, again.a)
    np.testing.assert_array_equal(run.Q, again.Q)
    np.testing.assert_allclose(run.a[::2], coarse.a, rtol=1e-13)
    np.testing.assert_allclose(run.s[::2], coarse.s, rtol=1e-13, atol=1e-15)
    assert not np.allclose(run.a[-1], other.a[-1])


def test_full_batch_gd_train_risk_is_an_unbiased_estimate_at_start_and_then_overfits():
    big = _run(sst.full_batch_gd, NOISY, jnp.array([0.0, 1e-2]), 1e-2, jax.random.PRNGKey(2), 4000)
    n = 4000
    # At t = 0 the training samples are independent of the network: the empirical risk is a
    # Monte Carlo estimate of the exact population risk (standard error from a second sample).
    x = jax.random.normal(jax.random.PRNGKey(3), (n, D))
    y = NOISY.target(x @ INIT.u) + 0.3 * jax.random.normal(jax.random.PRNGKey(4), (n,))
    loss = 0.5 * (y - sst.particles.network(NOISY.activation, INIT.state.a, INIT.W, x)) ** 2
    stderr = float(jnp.std(loss)) / math.sqrt(n)
    assert abs(float(big.train_risk[0] - big.risk[0])) < 5 * stderr
    small = _run(sst.full_batch_gd, NOISY, TS * 3, 1e-2, jax.random.PRNGKey(2), 12)
    assert float(small.train_risk[-1]) < float(small.risk[-1])
    assert float(small.train_risk[-1]) < float(small.train_risk[0])


def test_bad_inputs_raise_value_errors():
    with pytest.raises(ValueError, match="unit vectors"):
        sst.population_gd(PROBLEM, INIT.state.a, 2 * INIT.W, INIT.u, TS, 1e-2)
    with pytest.raises(ValueError, match="finer than the step"):
        _run(sst.population_gd, PROBLEM, jnp.array([0.0, 1e-3, 2e-3]), 1e-2)
    with pytest.raises(ValueError, match="batch"):
        _run(sst.online_sgd, PROBLEM, TS, 1e-2, jax.random.PRNGKey(0), batch=0)
    with pytest.raises(ValueError, match="shape"):
        sst.online_sgd(PROBLEM, INIT.state.a[:2], INIT.W, INIT.u, TS, 1e-2, jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="eta"):
        _run(sst.population_gd, PROBLEM, TS, -1.0)
