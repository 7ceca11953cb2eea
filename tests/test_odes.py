import math

import diffrax as dfx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sst

PROBLEM = sst.Problem(sst.Hermite([0.0, 1.0, 0.5, 0.5]), sst.Hermite([0.5, 1.0, 1.0, 1.0]), eps=0.5)


def _weight_space_risk(problem, a, W, u):
    """Population risk as a function of the raw weights (THEORY.md section 3)."""
    m = a.shape[0]
    Q = W @ W.T
    return (
        0.5 * problem.target.norm2
        - jnp.sum(a * problem.V(W @ u)) / m
        + 0.5 * a @ problem.U(Q) @ a / m**2
    )


def _weight_space_flow(problem, a, W, u, T, n_steps):
    """Explicit Euler on the projected gradient flow in weight space, rows renormalised."""
    m = a.shape[0]
    grad = jax.grad(_weight_space_risk, argnums=(1, 2))
    h = T / n_steps

    def step(carry, _):
        a, W = carry
        ga, gW = grad(problem, a, W, u)
        gW = gW - jnp.sum(gW * W, axis=1, keepdims=True) * W  # tangent to the sphere
        a = a - h * m * ga / problem.eps
        W = W - h * m * gW
        W = W / jnp.linalg.norm(W, axis=1, keepdims=True)
        return (a, W), None

    (a, W), _ = jax.lax.scan(step, (a, W), None, length=n_steps)
    return a, W


def test_finite_dim_ode_matches_weight_space_gradient_flow():
    init = sst.random_init(jax.random.PRNGKey(3), m=5, d=12)
    T = 1.0
    ode = sst.solve(
        sst.FiniteDimODE(PROBLEM),
        init.state,
        jnp.array([0.0, T]),
        solver=dfx.Dopri8(),
        rtol=1e-12,
        atol=1e-12,
    )
    errors = []
    for n in (200, 400, 800):
        a, W = _weight_space_flow(PROBLEM, init.state.a, init.W, init.u, T, n)
        err = max(
            float(jnp.max(jnp.abs(a - ode.a[-1]))),
            float(jnp.max(jnp.abs(W @ init.u - ode.s[-1]))),
            float(jnp.max(jnp.abs(W @ W.T - ode.Q[-1]))),
        )
        errors.append(err)
    # First-order integrator: the error halves with the step, down to agreement at 1e-3 or better.
    ratios = [errors[i] / errors[i + 1] for i in range(2)]
    assert all(1.8 < r < 2.2 for r in ratios), (errors, ratios)
    assert errors[-1] < 2e-3


def test_moment_path_equals_dense_path():
    key = jax.random.PRNGKey(0)
    ka, ks, kw = jax.random.split(key, 3)
    m = 23
    w = jax.random.uniform(kw, (m,))
    state = sst.MeanFieldState(
        jax.random.normal(ka, (m,)), jax.random.uniform(ks, (m,), minval=-1, maxval=1), w / w.sum()
    )
    fast = sst.MeanFieldODE(PROBLEM)
    dense = sst.MeanFieldODE(PROBLEM, interaction="dense")
    assert fast.uses_moments and not dense.uses_moments
    for x, y in zip(
        fast(0.0, state).__dict__.values(), dense(0.0, state).__dict__.values(), strict=True
    ):
        np.testing.assert_allclose(x, y, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(fast.risk(state), dense.risk(state), rtol=1e-12)


def test_mean_field_risk_is_half_sum_of_squared_residuals():
    state = sst.quadrature_particles(9)
    state = sst.MeanFieldState(state.a, jnp.linspace(-0.8, 0.8, 9), state.weights)
    model = sst.MeanFieldODE(PROBLEM)
    np.testing.assert_allclose(
        model.risk(state), 0.5 * jnp.sum(model.residuals(state) ** 2), rtol=1e-12
    )


def test_finite_dim_risk_matches_monte_carlo_network_risk():
    init = sst.random_init(jax.random.PRNGKey(5), m=6, d=7)
    model = sst.FiniteDimODE(sst.Problem(sst.Hermite([0.2, 1.0, 0.5]), sst.relu(), eps=1.0))
    n = 400_000
    x = jax.random.normal(jax.random.PRNGKey(6), (n, 7))
    f = jnp.mean(init.state.a * model.problem.activation(x @ init.W.T), axis=1)
    loss = 0.5 * (model.problem.target(x @ init.u) - f) ** 2
    stderr = float(jnp.std(loss)) / math.sqrt(n)
    assert abs(float(jnp.mean(loss)) - float(model.risk(init.state))) < 5 * stderr


def test_mean_field_is_the_large_d_large_m_limit_of_finite_dim():
    # Q_ij -> s_i s_j as d grows and the self-interaction is O(1/m): the gap shrinks jointly.
    ts = jnp.linspace(0.0, 2.0, 11)
    problem = sst.Problem(PROBLEM.target, PROBLEM.activation, eps=0.1)
    gaps = []
    for m, d in ((8, 64), (32, 1024), (128, 16384)):
        init = sst.random_init(jax.random.PRNGKey(1), m, d)
        options = dict(solver=dfx.Tsit5(), rtol=1e-7, atol=1e-9)
        fd = sst.solve(sst.FiniteDimODE(problem), init.state, ts, **options)
        mf = sst.solve(sst.MeanFieldODE(problem), init.mean_field(), ts, **options)
        gaps.append(float(jnp.max(jnp.abs(fd.risk - mf.risk))))
    assert gaps[1] < 0.5 * gaps[0] and gaps[2] < 0.5 * gaps[1], gaps
    assert gaps[2] < 0.05, gaps


def test_quadrature_particles_integrate_moments_of_the_law():
    normal = sst.quadrature_particles(10, "normal", scale=2.0)
    np.testing.assert_allclose(jnp.sum(normal.weights * normal.a**2), 4.0, rtol=1e-12)
    np.testing.assert_allclose(jnp.sum(normal.weights * normal.a**4), 3 * 16.0, rtol=1e-12)
    uniform = sst.quadrature_particles(6, "uniform")
    np.testing.assert_allclose(jnp.sum(uniform.weights * uniform.a**2), 1 / 3, rtol=1e-12)
    rad = sst.quadrature_particles(4, "rademacher")
    np.testing.assert_allclose(jnp.sum(rad.weights * rad.a**2), 1.0, rtol=1e-12)
    assert float(jnp.max(jnp.abs(normal.s))) == 0.0
    with pytest.raises(ValueError):
        sst.quadrature_particles(5, "rademacher")
    with pytest.raises(ValueError):
        sst.quadrature_particles(5, "cauchy")


def test_random_init_is_consistent_with_its_weights():
    init = sst.random_init(jax.random.PRNGKey(2), m=7, d=50)
    np.testing.assert_allclose(jnp.linalg.norm(init.W, axis=1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(init.state.s, init.W @ init.u, rtol=1e-12)
    np.testing.assert_allclose(init.state.Q, init.W @ init.W.T, atol=1e-12)
    sst.FiniteDimODE(PROBLEM).check_state(init.state)
