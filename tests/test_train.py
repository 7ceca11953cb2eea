"""Training the network itself (sst.train with its estimators), for a target of one direction
(an sst.Hermite) and of k = 2 (an sst.Target): against the exact ODE it converges to, Monte
Carlo, autodiff of the network, the k = 1 target written both ways; determinism, divergence,
validation."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import FD_M, FD_REFERENCE, TRAIN_TS, D, max_abs, random_network, small_problem

import sst
from sst._train import batch_directions, network

PROBLEM = small_problem()
NOISY = small_problem(noise=0.3)
INIT = random_network()
# A target of two directions, z1 + z1 z2, with the activation of small_problem, on a network of
# the same size.
TARGET_K2 = sst.Target.from_monomials({(1, 0): 1.0, (1, 1): 1.0})
PROBLEM_K2 = sst.Problem(TARGET_K2, PROBLEM.activation, eps=PROBLEM.eps)
INIT_K2 = sst.random_init(jax.random.key(11), FD_M, D, k=2)
# One online-SGD and one small fixed-sample estimator throughout (their sizes are static: each
# distinct one compiles the training loop anew).
SGD = sst.OnlineSGD(16)
FEW = sst.FixedSamples(12)


def _train(problem=PROBLEM, ts=TRAIN_TS, **kwargs):
    return sst.train(problem, INIT, ts, **kwargs)


@pytest.mark.slow
@pytest.mark.parametrize("activation", [PROBLEM.activation, sst.erf(), sst.relu()])
def test_hand_gradient_matches_autodiff_of_the_network(activation):
    problem = sst.Problem(PROBLEM.target, activation, eps=0.1)
    kx, ky, ka = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (5, D))
    y = jax.random.normal(ky, (5,))
    a = jax.random.normal(ka, (FD_M,))

    def loss(a, W):
        f = jnp.mean(a * activation(x @ W.T), axis=1)  # (1/m) sum_i a_i sigma(<w_i, x>)
        return jnp.mean((y - f) ** 2) / 2

    ga, gW = jax.grad(loss, argnums=(0, 1))(a, INIT.W)
    da, dW = batch_directions(problem, a, INIT.W, x, y)
    np.testing.assert_allclose(da, -FD_M * ga, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(dW, -FD_M * gW, rtol=1e-12, atol=1e-14)


@pytest.fixture(scope="module")
def reference_k2() -> sst.Trajectory:
    """FiniteDimODE of PROBLEM_K2 from INIT_K2 on TRAIN_TS, to 1e-12 (Dopri8)."""
    return sst.solve(sst.FiniteDimODE(PROBLEM_K2), INIT_K2.state, TRAIN_TS, **FD_REFERENCE)


@pytest.mark.slow
@pytest.mark.parametrize("k", [1, 2])
def test_population_gradient_converges_to_finite_dim_ode_at_first_order(
    k, finite_dim_reference, reference_k2
):
    problem, init, ode = (
        (PROBLEM, INIT, finite_dim_reference) if k == 1 else (PROBLEM_K2, INIT_K2, reference_k2)
    )
    errors = []
    for eta in (2e-3, 1e-3, 5e-4):
        run = sst.train(problem, init, TRAIN_TS, eta=eta)
        pairs = ((run.ys.a, ode.ys.a), (run.ys.s, ode.ys.s), (run.ys.Q, ode.ys.Q))
        errors.append(max(max_abs(x, y) for x, y in pairs))
    ratios = [errors[i] / errors[i + 1] for i in range(2)]
    assert all(1.8 < r < 2.2 for r in ratios), (errors, ratios)
    np.testing.assert_allclose(run.risk[0], ode.risk[0], rtol=1e-12)
    assert max_abs(ode.ys.s[-1], ode.ys.s[0]) > 0.05  # the overlaps moved
    # The run is a Trajectory of FiniteDimState with its training record.
    assert isinstance(run.ys, sst.FiniteDimState) and run.result == sst.RESULTS.successful
    assert isinstance(run.training.estimator, sst.PopulationGradient)
    assert run.training.eta == 5e-4 and run.training.train_risk is None
    assert run.rtol is None and run.residual_labels == ode.residual_labels == problem.labels
    assert int(run.stats["num_steps"]) == 2000
    np.testing.assert_allclose(run.ts, TRAIN_TS, rtol=1e-12)
    # s = W U, stored as (m,) for a single direction and (m, k) for k directions.
    s = run.training.W @ init.U
    np.testing.assert_allclose(s[:, 0] if k == 1 else s, run.ys.s[-1], atol=1e-14)


def test_float32_population_gradient_tracks_float64():
    r64 = _train(eta=1e-2)
    r32 = _train(eta=1e-2, dtype=jnp.float32)
    assert r32.training.W.dtype == jnp.float32 and r32.risk.dtype == jnp.float64
    np.testing.assert_allclose(r32.risk, r64.risk, rtol=1e-4)
    np.testing.assert_allclose(r32.ys.s, r64.ys.s, atol=1e-5)


@pytest.mark.slow
def test_sgd_mean_over_seeds_matches_the_ode_within_statistical_error():
    # Label noise included: it must shift the population risk by noise^2 / 2 and nothing else.
    ode = sst.solve(sst.FiniteDimODE(NOISY), INIT.state, TRAIN_TS, **FD_REFERENCE)
    gd = _train(NOISY, eta=1e-3)
    risks = np.stack(
        [
            _train(NOISY, eta=1e-3, estimator=SGD, key=jax.random.key(seed)).risk
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
        run = _train(eta=5e-2, estimator=SGD, key=jax.random.key(1), dtype=dtype)
        W = run.training.W.astype(float)
        np.testing.assert_allclose(jnp.linalg.norm(W, axis=1), 1.0, atol=tol)
        np.testing.assert_allclose(run.ys.s[-1], W @ INIT.U[:, 0], atol=tol)
        assert bool(jnp.all(run.valid))


def test_same_seed_gives_the_same_run_whatever_the_record_grid():
    key = jax.random.key(5)
    sgd = SGD
    run = _train(eta=1e-2, estimator=sgd, key=key)
    again = _train(eta=1e-2, estimator=sgd, key=key)
    coarse = _train(ts=TRAIN_TS[::2], eta=1e-2, estimator=sgd, key=key)
    other = _train(eta=1e-2, estimator=sgd, key=jax.random.key(6))
    np.testing.assert_array_equal(run.ys.a, again.ys.a)
    np.testing.assert_array_equal(run.ys.Q, again.ys.Q)
    np.testing.assert_allclose(run.ys.a[::2], coarse.ys.a, rtol=1e-13)
    np.testing.assert_allclose(run.ys.s[::2], coarse.ys.s, rtol=1e-13, atol=1e-15)
    assert not np.allclose(run.ys.a[-1], other.ys.a[-1])
    # A legacy uint32 key gives the same samples as the typed key of the same seed.
    legacy = _train(eta=1e-2, estimator=sgd, key=jax.random.PRNGKey(5))
    np.testing.assert_array_equal(run.ys.a, legacy.ys.a)


@pytest.mark.slow
def test_fixed_samples_train_risk_is_an_unbiased_estimate_at_start_and_then_overfits():
    n = 4000
    big = _train(
        NOISY, np.array([0.0, 1e-2]), eta=1e-2, estimator=sst.FixedSamples(n), key=jax.random.key(2)
    )
    # At t = 0 the training samples are independent of the network: the empirical risk is a
    # Monte Carlo estimate of the exact population risk (standard error from a second sample).
    x = jax.random.normal(jax.random.key(3), (n, D))
    y = NOISY.target(x @ INIT.U[:, 0]) + 0.3 * jax.random.normal(jax.random.key(4), (n,))
    loss = 0.5 * (y - network(NOISY.activation, INIT.state.a, INIT.W, x)) ** 2
    stderr = float(jnp.std(loss)) / math.sqrt(n)
    assert abs(float(big.training.train_risk[0] - big.risk[0])) < 5 * stderr
    small = _train(NOISY, TRAIN_TS * 3, eta=1e-2, estimator=FEW, key=jax.random.key(2))
    train_risk = small.training.train_risk
    assert float(train_risk[-1]) < float(small.risk[-1])
    assert float(train_risk[-1]) < float(train_risk[0])


def test_divergence_is_flagged_and_masked_not_raised():
    # eta U(1) / eps = 31: the explicit second-layer step is unstable (one step per record).
    eta = 2.0
    ts = eta * np.arange(21.0)
    with pytest.warns(RuntimeWarning, match="sst.train diverged by t = .*lower eta"):
        run = _train(ts=ts, eta=eta)
    assert run.result == sst.RESULTS.diverged and not bool(run.success)
    valid = np.asarray(run.valid)
    first_bad = int(np.argmin(valid))
    assert 0 < first_bad and not valid[first_bad:].any() and valid[:first_bad].all()
    assert np.all(np.isnan(np.asarray(run.risk)[~valid]))
    assert np.all(np.isfinite(np.asarray(run.risk)[valid]))
    assert int(run.stats["num_steps"]) == first_bad
    assert "keep eta * U(1) / eps well below 1" in sst.RESULTS[run.result]


@pytest.mark.parametrize("estimator", [sst.OnlineSGD(4), sst.FixedSamples(10)])
def test_sampling_estimators_need_a_key(estimator):
    with pytest.raises(ValueError, match=f"{type(estimator).__name__} draws samples: pass key="):
        _train(eta=1e-2, estimator=estimator)
    with pytest.raises(ValueError, match="key must be a JAX PRNG key"):
        _train(eta=1e-2, estimator=estimator, key=0)


def test_bad_inputs_raise_value_errors():
    bad = sst.RandomInit(INIT.state, 2 * INIT.W, INIT.U)
    with pytest.raises(ValueError, match="unit vectors"):
        sst.train(PROBLEM, bad, TRAIN_TS, eta=1e-2)
    with pytest.raises(ValueError, match="finer than the step"):
        _train(ts=np.array([0.0, 1e-3, 2e-3]), eta=1e-2)
    with pytest.raises(ValueError, match="batch \\(samples per step\\) must be an integer >= 1"):
        sst.OnlineSGD(0)
    with pytest.raises(ValueError, match="n \\(training samples\\) must be an integer >= 1"):
        sst.FixedSamples(2.5)
    state = sst.FiniteDimState(INIT.state.a[:2], INIT.state.s, INIT.state.Q)
    short = sst.RandomInit(state, INIT.W, INIT.U)
    with pytest.raises(ValueError, match="shape"):
        sst.train(PROBLEM, short, TRAIN_TS, eta=1e-2)
    with pytest.raises(ValueError, match="eta must be a finite positive number"):
        _train(eta=-1.0)
    with pytest.raises(ValueError, match="estimator must be an sst.AbstractEstimator"):
        _train(eta=1e-2, estimator="sgd")
    with pytest.raises(ValueError, match="init must be an sst.RandomInit"):
        sst.train(PROBLEM, INIT.state, TRAIN_TS, eta=1e-2)
    with pytest.raises(ValueError, match="problem must be an sst.Problem"):
        sst.train(sst.FiniteDimODE(PROBLEM), INIT, TRAIN_TS, eta=1e-2)
    with pytest.raises(ValueError, match="dtype must be float32 or float64"):
        _train(eta=1e-2, dtype=jnp.float16)
    with pytest.raises(ValueError, match=r"U of shape \(d, k=2\) for this problem"):
        sst.train(PROBLEM_K2, INIT, TRAIN_TS, eta=1e-2)
    skew = sst.RandomInit(INIT_K2.state, INIT_K2.W, 2.0 * INIT_K2.U)
    with pytest.raises(ValueError, match="orthonormal columns"):
        sst.train(PROBLEM_K2, skew, TRAIN_TS, eta=1e-2)


@pytest.mark.slow
def test_sampling_estimators_on_k_directions():
    # Labels phi(U^T x) of two directions; the recorded overlaps are s = W U of the final weights.
    fixed = sst.train(PROBLEM_K2, INIT_K2, TRAIN_TS, eta=1e-2, estimator=FEW, key=jax.random.key(1))
    assert fixed.training.train_risk.shape == TRAIN_TS.shape
    assert bool(jnp.all(jnp.isfinite(fixed.training.train_risk)))
    sgd = sst.train(PROBLEM_K2, INIT_K2, TRAIN_TS, eta=1e-2, estimator=SGD, key=jax.random.key(2))
    assert bool(sgd.success) and sgd.ys.s.shape == (TRAIN_TS.size, FD_M, 2)
    np.testing.assert_allclose(sgd.ys.s[-1], sgd.training.W @ INIT_K2.U, atol=1e-13)


def test_k1_target_trains_as_the_hermite_target():
    # One direction written as an sst.Target (s of shape (m, 1)) and as an sst.Hermite (m,):
    # the same network, the same run.
    target = sst.Target.from_hermite(PROBLEM.target)
    as_target = sst.train(
        sst.Problem(target, PROBLEM.activation, PROBLEM.eps),
        sst.RandomInit.from_weights(INIT.state.a, INIT.W, INIT.U),
        TRAIN_TS,
        eta=1e-2,
    )
    hermite = _train(eta=1e-2)
    assert as_target.ys.s.shape == (TRAIN_TS.size, FD_M, 1)
    assert as_target.residual_labels == hermite.residual_labels
    np.testing.assert_allclose(as_target.risk, hermite.risk, rtol=1e-12)
    np.testing.assert_allclose(as_target.ys.s[..., 0], hermite.ys.s, atol=1e-13)
