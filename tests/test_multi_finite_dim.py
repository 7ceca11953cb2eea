"""The exact finite-d ODE of a multi-index target (sst/_multi_finite_dim.py) against projected
gradient flow in weight space, Monte Carlo of the network's loss, and FiniteDimODE at k = 1."""

import jax

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_dtype_promotion", "strict")

import math  # noqa: E402

import diffrax as dfx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import sst  # noqa: E402

TARGET = sst.MultiIndexTarget.from_monomials({(0, 0): 0.3, (1, 0): 1.0, (1, 1): 1.0})
PROBLEM = sst.MultiIndexProblem(TARGET, sst.Hermite([0.5, 1.0, 1.0, 1.0]), eps=0.5)


def _quadrature_V(problem, s, nodes=6):
    """`E[phi(z) sigma(s . z + sqrt(1 - |s|^2) xi)]` by tensor Gauss-Hermite quadrature over
    `(z, xi)` in `k + 1` dimensions: exact for these polynomials, and independent of the
    kernel formula `V(s) = sum c_alpha b_alpha s^alpha` of sst."""
    x, w = np.polynomial.hermite_e.hermegauss(nodes)
    w = w / w.sum()
    k = s.shape[-1]
    grid = np.stack(np.meshgrid(*([x] * (k + 1)), indexing="ij"), -1).reshape(-1, k + 1)
    weight = np.prod(np.stack(np.meshgrid(*([w] * (k + 1)), indexing="ij"), -1), -1).ravel()
    z, xi = jnp.asarray(grid[:, :k]), jnp.asarray(grid[:, k])
    phi = problem.target(z)
    proj = z @ s.T + jnp.sqrt(1.0 - jnp.sum(s**2, -1)) * xi[:, None]  # (points, m)
    return jnp.asarray(weight) @ (phi[:, None] * problem.activation(proj))


def _weight_space_risk(problem, a, W, U):
    m = a.shape[0]
    V = _quadrature_V(problem, W @ U)
    return (
        0.5 * problem.target.norm2
        - jnp.sum(a * V) / m
        + 0.5 * a @ problem.activation.kernel(W @ W.T) @ a / m**2
    )


def _weight_space_flow(problem, a, W, U, T, n_steps):
    """Explicit Euler on the projected gradient flow in weight space, rows renormalised."""
    m = a.shape[0]
    grad = jax.grad(_weight_space_risk, argnums=(1, 2))
    h = T / n_steps

    def step(carry, _):
        a, W = carry
        ga, gW = grad(problem, a, W, U)
        gW = gW - jnp.sum(gW * W, axis=1, keepdims=True) * W
        return (a - h * m * ga / problem.eps, _normalise(W - h * m * gW)), None

    return jax.lax.scan(step, (a, W), None, length=n_steps)[0]


def _normalise(W):
    return W / jnp.linalg.norm(W, axis=1, keepdims=True)


def test_matches_projected_gradient_flow_in_weight_space():
    init = sst.random_init_multi_index(jax.random.PRNGKey(3), m=4, d=12, k=2)
    T = 1.0
    ode = sst.solve(
        sst.MultiIndexFiniteDimODE(PROBLEM),
        init.state,
        jnp.array([0.0, T]),
        solver=dfx.Dopri8(),
        rtol=1e-12,
        atol=1e-12,
    )
    end = ode.state(-1)
    errors = []
    for n in (200, 400, 800):
        a, W = _weight_space_flow(PROBLEM, init.state.a, init.W, init.U, T, n)
        errors.append(
            max(
                float(jnp.max(jnp.abs(a - end.a))),
                float(jnp.max(jnp.abs(W @ init.U - end.s))),
                float(jnp.max(jnp.abs(W @ W.T - end.Q))),
            )
        )
    ratios = [errors[i] / errors[i + 1] for i in range(2)]
    assert all(1.8 < r < 2.2 for r in ratios), (errors, ratios)
    assert errors[-1] < 2e-3
    assert float(jnp.max(jnp.abs(end.s))) > 0.3  # the overlaps did move


def test_risk_matches_monte_carlo_network_loss():
    init = sst.random_init_multi_index(jax.random.PRNGKey(5), m=6, d=7, k=2)
    # Overlaps of order one: rotate the first neurons towards the target directions.
    W = _normalise(init.W.at[:3, :2].add(jnp.array([[1.0, 0.5], [-0.5, 1.0], [0.7, 0.7]])))
    init = sst.MultiIndexRandomInit.from_weights(3.0 * init.state.a, W, init.U)
    for activation in (PROBLEM.activation, sst.relu()):
        model = sst.MultiIndexFiniteDimODE(sst.MultiIndexProblem(TARGET, activation, 1.0, 0.1))
        n = 400_000
        kx, kn = jax.random.split(jax.random.PRNGKey(6))
        x = jax.random.normal(kx, (n, 7))
        y = TARGET(x @ init.U) + 0.1 * jax.random.normal(kn, (n,))
        f = jnp.mean(init.state.a * activation(x @ init.W.T), axis=1)
        loss = 0.5 * (y - f) ** 2
        stderr = float(jnp.std(loss)) / math.sqrt(n)
        assert abs(float(jnp.mean(loss)) - float(model.risk(init.state))) < 5 * stderr


def test_k1_is_the_single_index_finite_dim_ode():
    phi, sigma = sst.Hermite([0.2, 1.0, 0.5, -0.4]), sst.Hermite([0.5, 1.0, 1.0, 1.0])
    single = sst.FiniteDimODE(sst.Problem(phi, sigma, 0.1))
    multi = sst.MultiIndexFiniteDimODE(
        sst.MultiIndexProblem(sst.MultiIndexTarget.from_hermite(phi), sigma, 0.1)
    )
    init = sst.random_init(jax.random.PRNGKey(7), m=5, d=3)
    state = sst.MultiIndexFiniteDimState(init.state.a, init.state.s[:, None], init.state.Q)
    rates = single(0.0, *single.split(init.state))
    rates_multi = multi(0.0, *multi.split(state))
    for x, y in zip(rates, rates_multi, strict=True):
        np.testing.assert_allclose(y.reshape(x.shape), x, rtol=1e-13, atol=1e-14)
    assert float(multi.risk(state)) == pytest.approx(float(single.risk(init.state)), rel=1e-14)
    np.testing.assert_allclose(multi.residuals(state), single.residuals(init.state), atol=1e-15)
    assert multi.residual_labels == ((0,), (1,), (2,), (3,))


def test_random_init_is_consistent_with_its_weights():
    init = sst.random_init_multi_index(jax.random.PRNGKey(2), m=7, d=50, k=3)
    np.testing.assert_allclose(jnp.linalg.norm(init.W, axis=1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(init.state.s, init.W @ init.U, rtol=1e-12)
    np.testing.assert_allclose(init.U.T @ init.U, jnp.eye(3), atol=1e-15)
    assert init.mean_field().s.shape == (7, 3)
    with pytest.raises(ValueError, match="d > k"):
        sst.random_init_multi_index(jax.random.PRNGKey(2), m=7, d=3, k=3)


def test_particles_for_the_infinite_dimensional_limit():
    quadrature = sst.multi_index_particles(6, k=3, law="uniform")
    assert quadrature.s.shape == (6, 3) and float(jnp.max(jnp.abs(quadrature.s))) == 0.0
    np.testing.assert_allclose(jnp.sum(quadrature.weights * quadrature.a**2), 1 / 3, rtol=1e-12)
    sampled = sst.multi_index_particles(500, k=2, law="uniform", key=jax.random.PRNGKey(0))
    np.testing.assert_allclose(sampled.weights, 1 / 500)
    assert float(jnp.max(jnp.abs(sampled.a))) <= 1.0 and sampled.s.shape == (500, 2)
    with pytest.raises(ValueError, match="law must be one of"):
        sst.multi_index_particles(4, k=2, law="cauchy", key=jax.random.PRNGKey(0))


@pytest.mark.parametrize(
    ("state", "match"),
    [
        (sst.FiniteDimState(np.ones(2), np.zeros(2), np.eye(2)), "needs a MultiIndexFiniteDim"),
        (sst.MultiIndexFiniteDimState(np.ones(2), np.zeros((2, 3)), np.eye(2)), "k=2 directions"),
        (sst.MultiIndexFiniteDimState(np.ones(2), np.zeros(2), np.eye(2)), r"s of shape \(m, k\)"),
        (sst.MultiIndexFiniteDimState(np.ones(2), np.ones((2, 2)), np.eye(2)), "norm <= 1"),
        (sst.MultiIndexFiniteDimState(np.ones(2), np.zeros((2, 2)), 2 * np.eye(2)), "unit diag"),
    ],
)
def test_check_state(state, match):
    with pytest.raises(ValueError, match=match):
        sst.MultiIndexFiniteDimODE(PROBLEM).check_state(state)
