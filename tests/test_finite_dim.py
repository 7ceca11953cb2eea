"""FiniteDimODE: the exact order-parameter ODE against gradient flow on the weights themselves,
its risk against Monte Carlo, its mean-field limit, monotone risk, validation."""

import math

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import FD_M, TRAIN_TS, TS, max_abs, random_network, small_problem
from hypothesis import HealthCheck, given, settings, strategies as st

import sst


def _weight_space_risk(problem, a, W, u):
    """Population risk as a function of the raw weights (docs: model, #gradient-flow)."""
    m = a.shape[0]
    Q = W @ W.T
    return (
        0.5 * problem.target.norm2
        - jnp.sum(a * problem.V(W @ u)) / m
        + 0.5 * a @ problem.U(Q) @ a / m**2
    )


def _weight_space_velocity(problem, a, W, u):
    """`(da/dt, dW/dt)` of the projected gradient flow on the weights."""
    m = a.shape[0]
    ga, gW = jax.grad(_weight_space_risk, argnums=(1, 2))(problem, a, W, u)
    gW = gW - jnp.sum(gW * W, axis=1, keepdims=True) * W  # tangent to the sphere
    return -m * ga / problem.eps, -m * gW


def _weight_space_flow(problem, a, W, u, T, n_steps):
    """Explicit Euler on the projected gradient flow in weight space, rows renormalised."""
    h = T / n_steps

    def step(carry, _):
        a, W = carry
        da, dW = _weight_space_velocity(problem, a, W, u)
        W = W + h * dW
        return (a + h * da, W / jnp.linalg.norm(W, axis=1, keepdims=True)), None

    (a, W), _ = jax.lax.scan(step, (a, W), None, length=n_steps)
    return a, W


def test_vector_field_is_the_weight_space_flow_at_a_point():
    # d(a, W u, W W^T)/dt of the flow on the weights, by autodiff of the raw risk.
    problem = small_problem(0.3)
    init = random_network(m=5, d=6, seed=7)
    a, W, u = init.state.a, init.W, init.u
    da, dW = _weight_space_velocity(problem, a, W, u)
    rate = sst.FiniteDimODE(problem).rate(0.0, init.state)
    np.testing.assert_allclose(rate.a, da, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(rate.s, dW @ u, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(rate.Q, dW @ W.T + W @ dW.T, rtol=1e-11, atol=1e-13)


def test_finite_dim_ode_matches_weight_space_gradient_flow(finite_dim_reference):
    problem, init, T = small_problem(), random_network(), float(TRAIN_TS[-1])
    ode = finite_dim_reference.state(-1)
    errors = []
    for n in (200, 400, 800):
        a, W = _weight_space_flow(problem, init.state.a, init.W, init.u, T, n)
        errors.append(max(max_abs(a, ode.a), max_abs(W @ init.u, ode.s), max_abs(W @ W.T, ode.Q)))
    # First-order integrator: the error halves with the step, down to agreement at 1e-3 or better.
    ratios = [errors[i] / errors[i + 1] for i in range(2)]
    assert all(1.8 < r < 2.2 for r in ratios), (errors, ratios)
    assert errors[-1] < 2e-3


def test_finite_dim_risk_matches_monte_carlo_network_risk():
    init = sst.random_init(jax.random.key(5), m=6, d=7)
    model = sst.FiniteDimODE(sst.Problem(sst.Hermite([0.2, 1.0, 0.5]), sst.relu(), eps=1.0))
    n = 400_000
    x = jax.random.normal(jax.random.key(6), (n, 7))
    f = jnp.mean(init.state.a * model.problem.activation(x @ init.W.T), axis=1)
    loss = 0.5 * (model.problem.target(x @ init.u) - f) ** 2
    stderr = float(jnp.std(loss)) / math.sqrt(n)
    assert abs(float(jnp.mean(loss)) - float(model.risk(init.state))) < 5 * stderr


def test_residuals_use_equal_weights():
    init = random_network()
    model = sst.FiniteDimODE(small_problem())
    a, s = np.asarray(init.state.a), np.asarray(init.state.s)
    moments = [np.mean(a * s**k) for k in range(4)]
    expected = np.array([0.0, 1.0, 0.5, 0.5]) - np.array([0.2, 1.0, 0.5, 0.5]) * moments
    np.testing.assert_allclose(model.residuals(init.state), expected, rtol=1e-12, atol=1e-15)
    assert isinstance(model.jacobian(0.0, *model.split(init.state)), sst.DenseJacobian)


@eqx.filter_jit
def _risk_gap(problem, init, ts):
    """max_t |R_finite_dim - R_mean_field| from the same network (one compilation per size)."""
    options = dict(solver=dfx.Tsit5(), rtol=1e-7, atol=1e-9)
    fd = sst.solve(sst.FiniteDimODE(problem), init.state, ts, **options)
    mf = sst.solve(sst.MeanFieldODE(problem), init.mean_field(), ts, **options)
    return jnp.max(jnp.abs(fd.risk - mf.risk))


def test_mean_field_is_the_large_d_large_m_limit_of_finite_dim():
    # Q_ij -> s_i s_j as d grows and the self-interaction is O(1/m): the gap shrinks jointly.
    ts = jnp.linspace(0.0, 2.0, 11)
    problem = sst.Problem(sst.Hermite([0.0, 1.0, 0.5, 0.5]), sst.Hermite([0.5, 1.0, 1.0, 1.0]), 0.1)
    gaps = []
    for m, d in ((8, 64), (32, 1024), (128, 16384)):
        init = sst.random_init(jax.random.key(1), m, d)
        gaps.append(float(_risk_gap(problem, init, ts)))
    assert gaps[1] < 0.5 * gaps[0] and gaps[2] < 0.5 * gaps[1], gaps
    assert gaps[2] < 0.05, gaps


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(log_eps=st.floats(-2.0, 0.0), seed=st.integers(0, 2**16))
def test_risk_never_increases_finite_dim(log_eps, seed):
    problem = sst.Problem(sst.Hermite([0.3, 1.0, 0.6]), sst.erf(), eps=10.0**log_eps)
    init = random_network(seed=seed)
    traj = sst.solve(sst.FiniteDimODE(problem), init.state, TS)
    assert float(jnp.max(jnp.diff(traj.risk))) <= 1e-9


def test_trajectory_keeps_the_gram_structure(finite_dim_trajectory):
    Q = np.asarray(finite_dim_trajectory.ys.Q)
    assert Q.shape == (TS.size, FD_M, FD_M)
    np.testing.assert_allclose(Q, np.swapaxes(Q, 1, 2), atol=1e-14)
    np.testing.assert_allclose(np.diagonal(Q, axis1=1, axis2=2), 1.0, atol=1e-14)
    assert finite_dim_trajectory.residual_labels == (0, 1, 2, 3)


@pytest.mark.parametrize(
    "Q, match",
    [
        ([[1.0, 0.2], [0.3, 1.0]], "symmetric with unit diagonal"),
        ([[1.0, 0.2], [0.2, 0.9]], "symmetric with unit diagonal"),
        ([[1.0, float("nan")], [float("nan"), 1.0]], "Q contains NaN or inf"),
        ([[1.0, 0.2, 0.0], [0.2, 1.0, 0.0], [0.0, 0.0, 1.0]], r"Q of shape \(m, m\)"),
        ([[1.0, 1.5], [1.5, 1.0]], "must lie in"),
    ],
    ids=["asymmetric", "diagonal", "nan", "shape", "overlap>1"],
)
def test_bad_finite_dim_state_raises(Q, match):
    model = sst.FiniteDimODE(small_problem())
    with pytest.raises(ValueError, match=match):
        sst.solve(model, sst.FiniteDimState([0.1, 0.2], [0.0, 0.1], Q), TS)
    with pytest.raises(ValueError, match="needs a FiniteDimState"):
        sst.solve(model, sst.MeanFieldState([0.1, 0.2], [0.0, 0.1]), TS)
