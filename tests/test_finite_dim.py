"""FiniteDimODE for targets of k = 1 and k = 3 directions: the exact order-parameter ODE against
projected gradient flow on the weights themselves (kernels by Gauss quadrature, independent of
sst's), its risk against Monte Carlo of the network's loss, a Hermite target against the same
target as an sst.Target of k = 1, its mean-field limit, monotone risk, validation."""

import math

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import (
    FD_M,
    FD_REFERENCE,
    SMALL_ACTIVATION,
    SMALL_TARGET,
    TRAIN_TS,
    TS,
    D,
    max_abs,
    random_network,
)
from hypothesis import HealthCheck, given, settings, strategies as st

import sst

# The problem of the finite-dimensional tests for each kind of target: helpers.small_problem(),
# and a staircase of three directions with the same activation.
STAIRCASE = sst.Target.from_terms({(1, 0, 0): 1.0, (1, 1, 0): 0.5, (1, 1, 1): 0.5})
KINDS = ["k1-hermite", "k3"]


def _problem(kind, eps=0.1, activation=None, noise=0.0):
    activation = sst.Hermite(SMALL_ACTIVATION) if activation is None else activation
    target = sst.Hermite(SMALL_TARGET) if kind == "k1-hermite" else STAIRCASE
    return sst.Problem(target, activation, eps, noise)


def _network(kind, m=FD_M, d=D, seed=0):
    """helpers.random_network() for a Hermite target; the same with k = 3 directions."""
    if kind == "k1-hermite":
        return random_network(m, d, seed)
    return sst.random_init(jax.random.key(seed), m, d, k=3)


def _quadrature_V(problem, s, nodes=6):
    """`E[phi(z) sigma(s . z + sqrt(1 - |s|^2) xi)]` by tensor Gauss-Hermite quadrature over
    `(z, xi)` in `k + 1` dimensions (`s` of shape `(m, k)`): exact for these polynomials, and
    independent of the kernel formula `V(s) = sum c_alpha b_alpha s^alpha` of sst."""
    x, w = np.polynomial.hermite_e.hermegauss(nodes)
    w = w / w.sum()
    k = s.shape[-1]
    grid = np.stack(np.meshgrid(*([x] * (k + 1)), indexing="ij"), -1).reshape(-1, k + 1)
    weight = np.prod(np.stack(np.meshgrid(*([w] * (k + 1)), indexing="ij"), -1), -1).ravel()
    z, xi = jnp.asarray(grid[:, :k]), jnp.asarray(grid[:, k])
    phi = problem.phi(z)
    proj = z @ s.T + jnp.sqrt(1.0 - jnp.sum(s**2, -1)) * xi[:, None]  # (points, m)
    return jnp.asarray(weight) @ (phi[:, None] * problem.activation(proj))


def _weight_space_risk(problem, a, W, U):
    """Population risk as a function of the raw weights (docs: model, #gradient-flow)."""
    m = a.shape[0]
    return (
        0.5 * problem.target.norm2
        - jnp.sum(a * _quadrature_V(problem, W @ U)) / m
        + 0.5 * a @ problem.activation.kernel(W @ W.T) @ a / m**2
    )


def _weight_space_velocity(problem, a, W, U):
    """`(da/dt, dW/dt)` of the projected gradient flow on the weights."""
    m = a.shape[0]
    ga, gW = jax.grad(_weight_space_risk, argnums=(1, 2))(problem, a, W, U)
    gW = gW - jnp.sum(gW * W, axis=1, keepdims=True) * W  # tangent to the sphere
    return -m * ga / problem.eps, -m * gW


@eqx.filter_jit
def _weight_space_flow(problem, a, W, U, T, n_steps):
    """Explicit Euler on the projected gradient flow in weight space, rows renormalised."""
    h = T / n_steps

    def step(carry, _):
        a, W = carry
        da, dW = _weight_space_velocity(problem, a, W, U)
        W = W + h * dW
        return (a + h * da, W / jnp.linalg.norm(W, axis=1, keepdims=True)), None

    (a, W), _ = jax.lax.scan(step, (a, W), None, length=n_steps)
    return a, W


def _overlaps(init, W):
    """`W U` as the state stores it."""
    return (W @ init.U).reshape(init.state.s.shape)


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_vector_field_is_the_weight_space_flow_at_a_point(kind):
    # d(a, W U, W W^T)/dt of the flow on the weights, by autodiff of the raw risk.
    problem = _problem(kind, 0.3)
    init = _network(kind, m=5, d=6, seed=7)
    a, W = init.state.a, init.W
    da, dW = _weight_space_velocity(problem, a, W, init.U)
    rate = sst.FiniteDimODE(problem).rate(0.0, init.state)
    np.testing.assert_allclose(rate.a, da, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(rate.s, _overlaps(init, dW), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(rate.Q, dW @ W.T + W @ dW.T, rtol=1e-11, atol=1e-13)


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_finite_dim_ode_matches_weight_space_gradient_flow(kind, finite_dim_reference):
    problem, init, T = _problem(kind), _network(kind), float(TRAIN_TS[-1])
    if kind == "k1-hermite":
        ode = finite_dim_reference.state(-1)
    else:
        ode = sst.solve(sst.FiniteDimODE(problem), init.state, TRAIN_TS, **FD_REFERENCE).state(-1)
    assert max_abs(ode.s, init.state.s) > 0.1  # the overlaps did move
    errors = []
    for n in (200, 400, 800):
        a, W = _weight_space_flow(problem, init.state.a, init.W, init.U, T, n)
        errors.append(
            max(max_abs(a, ode.a), max_abs(_overlaps(init, W), ode.s), max_abs(W @ W.T, ode.Q))
        )
    # First-order integrator: the error halves with the step, down to agreement at 1e-3 or better.
    ratios = [errors[i] / errors[i + 1] for i in range(2)]
    assert all(1.8 < r < 2.2 for r in ratios), (errors, ratios)
    assert errors[-1] < 2e-3


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_finite_dim_risk_matches_monte_carlo_network_risk(kind):
    init = _network(kind, m=6, d=7, seed=5)
    k = init.U.shape[1]
    # Overlaps of order one: rotate the first neurons towards the target directions.
    turn = (
        jnp.zeros((3, 7))
        .at[:, :k]
        .set(jnp.array([[1.0, 0.5, 0.3], [-0.5, 1.0, 0.2], [0.7, 0.7, -0.6]])[:, :k])
    )
    W = init.W.at[:3].add(turn)
    W = W / jnp.linalg.norm(W, axis=1, keepdims=True)
    U = init.U[:, 0] if kind == "k1-hermite" else init.U
    init = sst.RandomInit.from_weights(3.0 * init.state.a, W, U)
    n = 400_000
    kx, kn = jax.random.split(jax.random.key(6))
    x = jax.random.normal(kx, (n, 7))
    for activation in (sst.Hermite(SMALL_ACTIVATION), sst.relu()):
        problem = _problem(kind, 1.0, activation, noise=0.1)
        y = problem.phi(x @ init.U) + 0.1 * jax.random.normal(kn, (n,))
        f = jnp.mean(init.state.a * activation(x @ init.W.T), axis=1)
        loss = 0.5 * (y - f) ** 2
        stderr = float(jnp.std(loss)) / math.sqrt(n)
        risk = float(sst.FiniteDimODE(problem).risk(init.state))
        assert abs(float(jnp.mean(loss)) - risk) < 5 * stderr


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_residuals_use_equal_weights(kind):
    init = _network(kind)
    model = sst.FiniteDimODE(_problem(kind))
    a = np.asarray(init.state.a)
    s = np.asarray(init.state.s).reshape(FD_M, -1)
    labels = model.problem.labels
    moments = np.array([np.mean(a * np.prod(s ** np.array(alpha), axis=1)) for alpha in labels])
    factors = np.array(
        [
            SMALL_ACTIVATION[sum(alpha)]
            * math.sqrt(math.factorial(sum(alpha)) / math.prod(map(math.factorial, alpha)))
            for alpha in labels
        ]
    )
    target = np.asarray(model.problem.target_coeffs(labels))
    np.testing.assert_allclose(model.moments(init.state), moments, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(
        model.residuals(init.state), target - factors * moments, rtol=1e-12, atol=1e-15
    )
    assert isinstance(model.jacobian(0.0, *model.split(init.state)), sst.DenseJacobian)


def test_hermite_target_and_target_of_k1_are_the_same_ode():
    phi, sigma = sst.Hermite([0.2, 1.0, 0.5, -0.4]), sst.Hermite([0.5, 1.0, 1.0, 1.0])
    single = sst.FiniteDimODE(sst.Problem(phi, sigma, 0.1))
    vector = sst.FiniteDimODE(sst.Problem(sst.Target.from_hermite(phi), sigma, 0.1))
    init = sst.random_init(jax.random.key(7), m=5, d=3)
    state = sst.FiniteDimState(init.state.a, init.state.s[:, None], init.state.Q)
    again = sst.random_init(jax.random.key(7), m=5, d=3, k=1).state
    np.testing.assert_array_equal(again.s, state.s)
    rates = single(0.0, *single.split(init.state))
    rates_vector = vector(0.0, *vector.split(state))
    for x, y in zip(rates, rates_vector, strict=True):
        np.testing.assert_allclose(y.reshape(x.shape), x, rtol=1e-13, atol=1e-14)
    assert float(vector.risk(state)) == pytest.approx(float(single.risk(init.state)), rel=1e-14)
    np.testing.assert_allclose(vector.residuals(state), single.residuals(init.state), atol=1e-15)
    assert vector.residual_labels == single.residual_labels == ((0,), (1,), (2,), (3,))


def _risk_gap(problem, init, ts):
    """max_t |R_finite_dim - R_mean_field| from the same network.

    Not under one jit: XLA compiles the two solves inlined into one program four times slower
    than each on its own."""
    options = dict(solver=dfx.Tsit5(), rtol=1e-7, atol=1e-9)
    fd = sst.solve(sst.FiniteDimODE(problem), init.state, ts, **options)
    mf = sst.solve(sst.MeanFieldODE(problem), init.mean_field(), ts, **options)
    return jnp.max(jnp.abs(fd.risk - mf.risk))


@pytest.mark.slow
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


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(log_eps=st.floats(-2.0, 0.0), seed=st.integers(0, 2**16))
def test_risk_never_increases_finite_dim(kind, log_eps, seed):
    problem = _problem(kind, 10.0**log_eps, sst.erf())
    init = _network(kind, seed=seed)
    traj = sst.solve(sst.FiniteDimODE(problem), init.state, TS)
    assert float(jnp.max(jnp.diff(traj.risk))) <= 1e-9


@pytest.mark.slow
def test_trajectory_keeps_the_gram_structure(finite_dim_trajectory):
    Q = np.asarray(finite_dim_trajectory.ys.Q)
    assert Q.shape == (TS.size, FD_M, FD_M)
    np.testing.assert_allclose(Q, np.swapaxes(Q, 1, 2), atol=1e-14)
    np.testing.assert_allclose(np.diagonal(Q, axis1=1, axis2=2), 1.0, atol=1e-14)
    assert finite_dim_trajectory.residual_labels == ((0,), (1,), (2,), (3,))


@pytest.mark.parametrize(
    "Q, match",
    [
        ([[1.0, 0.2], [0.3, 1.0]], "symmetric with unit diagonal"),
        ([[1.0, 0.2], [0.2, 0.9]], "symmetric with unit diagonal"),
        ([[1.0, float("nan")], [float("nan"), 1.0]], "Q contains NaN or inf"),
        ([[1.0, 0.2, 0.0], [0.2, 1.0, 0.0], [0.0, 0.0, 1.0]], r"Q must be a \(2, 2\) matrix"),
        ([[1.0, 1.5], [1.5, 1.0]], r"must lie in \[-1, 1\]"),
    ],
    ids=["asymmetric", "diagonal", "nan", "shape", "overlap>1"],
)
@pytest.mark.parametrize("kind", KINDS)
def test_bad_finite_dim_state_raises(kind, Q, match):
    model = sst.FiniteDimODE(_problem(kind))
    s = np.array([0.0, 0.1]) if kind == "k1-hermite" else np.array([[0.0, 0.1, 0.0], [0.1, 0, 0]])
    with pytest.raises(ValueError, match=match):
        sst.solve(model, sst.FiniteDimState([0.1, 0.2], s, Q), TS)


def test_relu_states_with_equal_neurons_or_a_neuron_on_the_target_raise():
    # ReLU's kernel U(q) has U''(q) = 1 / (2 pi sqrt(1 - q^2)): infinite at q = 1.
    model = sst.FiniteDimODE(sst.Problem(sst.relu(), sst.relu(), 0.1))
    equal = np.ones((2, 2))
    with pytest.raises(ValueError, match=r"two neurons are equal \(\|Q_ij\| = 1\)"):
        model.check_state(sst.FiniteDimState([0.1, 0.2], [0.3, 0.3], equal))
    with pytest.raises(ValueError, match=r"lies on a target direction \(\|s\| = 1\)"):
        model.check_state(sst.FiniteDimState([0.1, 0.2], [1.0, 0.0], np.eye(2)))
    model.check_state(sst.FiniteDimState([0.1, 0.2], [0.3, 0.3], np.eye(2) * 0.2 + 0.8))


def test_bad_overlaps_and_state_types_raise():
    single, vector = (sst.FiniteDimODE(_problem(kind)) for kind in KINDS)
    with pytest.raises(ValueError, match="needs a FiniteDimState"):
        single.check_state(sst.MeanFieldState([0.1, 0.2], [0.0, 0.1]))
    with pytest.raises(ValueError, match=r"s of shape \(m, k\) for this target \(k=3\)"):
        vector.check_state(sst.FiniteDimState(np.ones(2), np.zeros((2, 2)), np.eye(2)))
    with pytest.raises(ValueError, match=r"s of shape \(m, k\) for this target \(k=3\)"):
        vector.check_state(sst.FiniteDimState(np.ones(2), np.zeros(2), np.eye(2)))
    with pytest.raises(ValueError, match=r"s of shape \(m,\) for this target \(k=1\)"):
        single.check_state(sst.FiniteDimState(np.ones(2), np.zeros((2, 1)), np.eye(2)))
    with pytest.raises(ValueError, match="norm <= 1"):
        vector.check_state(sst.FiniteDimState(np.ones(2), np.full((2, 3), 0.7), np.eye(2)))
    with pytest.raises(ValueError, match="FiniteDimODE needs an sst.Problem"):
        sst.FiniteDimODE(STAIRCASE)
