"""Training the network on a multi-index target (sst.train with a MultiIndexProblem) against
the exact finite-d multi-index ODE and against the single-index path at k = 1."""

import jax

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_dtype_promotion", "strict")

import diffrax as dfx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import sst  # noqa: E402

TARGET = sst.MultiIndexTarget.from_monomials({(1, 0): 1.0, (1, 1): 1.0})
# eps = 0.1 keeps the explicit a-step eta U(1)/eps small at the step sizes used here.
PROBLEM = sst.MultiIndexProblem(TARGET, sst.Hermite([0.2, 1.0, 0.5, 0.5]), eps=0.1)
INIT = sst.random_init_multi_index(jax.random.PRNGKey(11), m=3, d=8, k=2)
TS = jnp.linspace(0.0, 1.0, 5)


def test_population_gd_converges_to_the_finite_dim_ode_at_first_order():
    ode = sst.solve(
        sst.MultiIndexFiniteDimODE(PROBLEM), INIT.state, TS, solver=dfx.Dopri8(), rtol=1e-11
    )
    errors = []
    for eta in (2e-3, 1e-3, 5e-4):
        run = sst.train(PROBLEM, INIT, TS, eta=eta)
        pairs = ((run.ys.a, ode.ys.a), (run.ys.s, ode.ys.s), (run.ys.Q, ode.ys.Q))
        errors.append(max(float(jnp.max(jnp.abs(x - y))) for x, y in pairs))
    ratios = [errors[i] / errors[i + 1] for i in range(2)]
    assert all(1.8 < r < 2.2 for r in ratios), (errors, ratios)
    np.testing.assert_allclose(run.risk[0], ode.risk[0], rtol=1e-12)
    assert run.residual_labels == ode.residual_labels
    assert float(jnp.max(jnp.abs(ode.ys.s[-1] - ode.ys.s[0]))) > 0.05  # the overlaps moved


def test_sampling_estimators_run_on_multi_index_labels():
    run = sst.train(
        PROBLEM, INIT, TS[:2], eta=1e-3, estimator=sst.FixedSamples(64), key=jax.random.key(1)
    )
    assert run.training.train_risk.shape == (2,)
    assert bool(jnp.all(jnp.isfinite(run.training.train_risk)))
    sgd = sst.train(
        PROBLEM, INIT, TS[:2], eta=1e-3, estimator=sst.OnlineSGD(16), key=jax.random.key(2)
    )
    assert bool(sgd.success) and sgd.ys.s.shape == (2, 3, 2)
    np.testing.assert_allclose(sgd.ys.s[-1], sgd.training.W @ INIT.U, atol=1e-6)


def test_k1_training_matches_the_single_index_path():
    phi, sigma = sst.Hermite([0.0, 1.0, 0.5]), PROBLEM.activation
    single_init = sst.random_init(jax.random.PRNGKey(3), m=3, d=8)
    multi_init = sst.MultiIndexRandomInit.from_weights(
        single_init.state.a, single_init.W, single_init.u[:, None]
    )
    single = sst.train(sst.Problem(phi, sigma, 0.1), single_init, TS[:2], eta=1e-2)
    multi_problem = sst.MultiIndexProblem(sst.MultiIndexTarget.from_hermite(phi), sigma, 0.1)
    multi = sst.train(multi_problem, multi_init, TS[:2], eta=1e-2)
    np.testing.assert_allclose(multi.risk, single.risk, rtol=1e-12)
    np.testing.assert_allclose(multi.ys.s[..., 0], single.ys.s, atol=1e-13)


def test_train_validates_the_pairing_of_problem_and_init():
    with pytest.raises(ValueError, match="MultiIndexRandomInit"):
        sst.train(PROBLEM, sst.random_init(jax.random.PRNGKey(0), 3, 8), TS, eta=1e-3)
    bad = sst.MultiIndexRandomInit(INIT.state, INIT.W, 2.0 * INIT.U)
    with pytest.raises(ValueError, match="orthonormal columns"):
        sst.train(PROBLEM, bad, TS, eta=1e-3)
    three = sst.random_init_multi_index(jax.random.PRNGKey(0), m=3, d=8, k=3)
    with pytest.raises(ValueError, match="k=2 target directions"):
        sst.train(PROBLEM, three, TS, eta=1e-3)
