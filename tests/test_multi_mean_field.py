"""The mean-field ODE of a multi-index target (sst/_multi_mean_field.py): coordinates on the
ball, moments against the dense O(m^2) sums, the Woodbury Jacobian against autodiff, the risk
against Monte Carlo of a network realising the particles, k = 1 against MeanFieldODE, and
solve_batch and jax.grad against single solves and finite differences."""

import jax

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_dtype_promotion", "strict")

import math  # noqa: E402

import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import lineax as lx  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import (  # noqa: E402
    given,
    settings,
    strategies as st,  # noqa: E402
)

import sst  # noqa: E402
from sst._multi_mean_field import _radial_factors, ball, ball_inverse  # noqa: E402

ACTIVATION = sst.Hermite([0.5, 1.0, 1.0, 1.0])
STAIRCASE = sst.MultiIndexTarget.from_monomials({(1, 0, 0): 1.0, (1, 1, 0): 1.0, (1, 1, 1): 1.0})
# The solves of this file share one shape: 4 particles, k = 2, these save times and tolerances.
TARGET2 = sst.MultiIndexTarget.from_monomials({(0, 0): 0.5, (1, 0): 1.0, (1, 1): 1.0})
TS = jnp.concatenate([jnp.zeros(1), jnp.logspace(-4, 0.5, 40)])
OPTIONS = dict(rtol=1e-11, atol=1e-13)


def _random_state(key, m, k, radius=0.9):
    ka, ks, kw = jax.random.split(key, 3)
    s = jax.random.normal(ks, (m, k))
    s = radius * s / jnp.maximum(1.0, jnp.linalg.norm(s, axis=1, keepdims=True))
    w = jax.random.uniform(kw, (m,), minval=0.1)
    return sst.MultiIndexMeanFieldState(jax.random.normal(ka, (m,)), s, w / w.sum())


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(-3.0, 3.0), min_size=3, max_size=3))
def test_ball_coordinates(x):
    x = jnp.asarray(x)[:, None]
    s = ball(x)
    assert float(jnp.linalg.norm(s)) <= 1.0 + 1e-15
    r = float(jnp.linalg.norm(x))
    np.testing.assert_allclose(jnp.linalg.norm(s), abs(math.sin(r)), atol=1e-15)
    if r < math.pi / 2:
        np.testing.assert_allclose(ball_inverse(s), x, rtol=1e-9, atol=1e-12)


def test_ball_is_sin_for_k1_and_smooth_at_zero():
    x = jnp.linspace(-1.5, 1.5, 7)[None]
    assert bool(jnp.all(ball(x) == jnp.sin(x)))
    # Series and closed form meet smoothly where the series stops (|x|^2 = 1e-4).
    for q in (0.999e-4, 1.001e-4):
        y = jnp.array([[math.sqrt(q)], [0.0]])
        np.testing.assert_allclose(ball(y)[0, 0], math.sin(math.sqrt(q)), rtol=1e-15)
        np.testing.assert_allclose(ball_inverse(ball(y)), y, rtol=1e-13)
    jac = jax.jacfwd(lambda v: ball(v[:, None])[:, 0])(jnp.zeros(3))
    np.testing.assert_allclose(jac, jnp.eye(3), atol=1e-15)


def test_radial_factors_against_extended_precision():
    # psi = r / sin r and phi = (cos r - r / sin r) / r^2 of the rate in x, on both sides of the
    # switch to the series; the reference in long double has little cancellation left.
    q = np.array([1e-8, 0.99e-4, 1.01e-4, 1e-2, 1.0])
    r = np.sqrt(q.astype(np.longdouble))
    psi_ref = r / np.sin(r)
    phi_ref = (np.cos(r) - psi_ref) / r**2
    psi, phi = _radial_factors(jnp.asarray(q))
    np.testing.assert_allclose(psi, psi_ref.astype(float), rtol=1e-15)
    np.testing.assert_allclose(phi, phi_ref.astype(float), rtol=3e-12)


def test_rates_match_the_equations_and_the_dense_path():
    state = _random_state(jax.random.PRNGKey(0), 7, 3)
    problem = sst.MultiIndexProblem(STAIRCASE, ACTIVATION, 0.1)
    fast = sst.MultiIndexMeanFieldODE(problem)
    dense = sst.MultiIndexMeanFieldODE(problem, interaction="dense")
    assert fast.uses_moments and not dense.uses_moments
    # The equations of docs/multi_index.md, written out directly in s.
    a, s, p = state.a, state.s, state.weights
    q = s @ s.T
    g = problem.dV(s) - (problem.dU(q) * (p * a)[None, :]) @ s
    ds = a[:, None] * (g - jnp.sum(s * g, axis=1, keepdims=True) * s)
    da = (problem.V(s) - problem.U(q) @ (p * a)) / problem.eps
    for model in (fast, dense):
        rate = eqx.filter_jit(model.rate)(0.0, state)
        np.testing.assert_allclose(rate.a, da, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(rate.s, ds, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(fast.risk(state), dense.risk(state), rtol=1e-12)
    np.testing.assert_allclose(
        fast.risk(state), 0.5 * jnp.sum(fast.residuals(state) ** 2), rtol=1e-12
    )


@pytest.mark.parametrize("at_zero", [False, True])
def test_particle_jacobian_solves_like_the_dense_jacobian(at_zero):
    state = _random_state(jax.random.PRNGKey(1), 6, 3)
    if at_zero:  # where every particle of the d = infinity limit starts
        state = sst.MultiIndexMeanFieldState(state.a, jnp.zeros_like(state.s), state.weights)
    model = sst.MultiIndexMeanFieldODE(sst.MultiIndexProblem(STAIRCASE, ACTIVATION, 0.01))
    y, args = model.split(state)
    dense = eqx.filter_jit(sst.DenseJacobian.of)(model, 0.0, y, args).matrix
    jacobian = eqx.filter_jit(model.jacobian)(0.0, y, args)
    assert isinstance(jacobian, sst.ParticleJacobian)
    assert jacobian.D.shape == (4, 4, 6) and jacobian.B.shape == (4, 20, 6)
    c = 7.0
    operator, solver = jacobian.shifted(c)
    shifted = c * jnp.eye(dense.shape[0]) - dense
    matrix = jax.vmap(operator.mv, out_axes=1)(jnp.eye(dense.shape[0]))
    np.testing.assert_allclose(matrix, shifted, atol=1e-12 * float(jnp.max(jnp.abs(dense))))
    b = jnp.sin(jnp.arange(dense.shape[0], dtype=float))
    x = lx.linear_solve(operator, b, solver).value
    np.testing.assert_allclose(shifted @ x, b, atol=1e-10)


def test_risk_matches_monte_carlo_of_a_network_realising_the_particles():
    # w_i = U s_i + sqrt(1 - |s_i|^2) e_{k+i}: distinct neurons overlap by s_i . s_j, as in
    # the mean-field limit, so the network's loss is the mean-field risk (equal weights) up to
    # the self-interaction, U(1) for a neuron against U(|s_i|^2) for a particle.
    m, k = 5, 3
    state = _random_state(jax.random.PRNGKey(2), m, k, radius=0.95)
    state = sst.MultiIndexMeanFieldState(2.0 * state.a, state.s)
    d = k + m
    W = jnp.concatenate(
        [state.s, jnp.diag(jnp.sqrt(1.0 - jnp.sum(state.s**2, axis=1)))], axis=1
    )  # (m, d)
    model = sst.MultiIndexMeanFieldODE(sst.MultiIndexProblem(STAIRCASE, ACTIVATION, 1.0))
    n = 400_000
    x = jax.random.normal(jax.random.PRNGKey(3), (n, d))
    f = jnp.mean(state.a * ACTIVATION(x @ W.T), axis=1)
    loss = 0.5 * (STAIRCASE(x[:, :k]) - f) ** 2
    stderr = float(jnp.std(loss)) / math.sqrt(n)
    diagonal = 0.5 * jnp.sum(
        (state.a / m) ** 2
        * (ACTIVATION.kernel(1.0) - ACTIVATION.kernel(jnp.sum(state.s**2, axis=1)))
    )
    risk = float(model.risk(state) + diagonal)
    assert abs(float(jnp.mean(loss)) - risk) < 5 * stderr


def test_staircase_and_symmetry_at_s0():
    zero = sst.multi_index_particles(4, 2)
    # z1 z2 alone: grad V(0) = 0, so no particle leaves s = 0.
    product = sst.MultiIndexTarget.from_monomials({(1, 1): 1.0})
    rate = sst.MultiIndexMeanFieldODE(sst.MultiIndexProblem(product, ACTIVATION, 0.1)).rate(
        0.0, zero
    )
    assert float(jnp.max(jnp.abs(rate.s))) == 0.0
    # Equal committee: on the line s ~ (1, 1) every rate stays on the line.
    committee = sst.MultiIndexTarget.committee([0.0, 1.0, 0.5, 0.5], k=2)
    model = sst.MultiIndexMeanFieldODE(sst.MultiIndexProblem(committee, ACTIVATION, 0.1))
    line = sst.MultiIndexMeanFieldState(zero.a, 0.3 * jnp.outer(zero.a, jnp.ones(2)), zero.weights)
    rate = model.rate(0.0, line).s
    np.testing.assert_allclose(rate[:, 0], rate[:, 1], rtol=1e-14)
    assert float(jnp.max(jnp.abs(rate))) > 0.1


def test_k1_agrees_with_the_single_index_model():
    phi = sst.Hermite([0.5, 1.0, 1.0, 1.0])
    y0 = sst.quadrature_particles(4, "uniform")
    ts = jnp.concatenate([jnp.zeros(1), jnp.logspace(-6, 1, 40)])
    single_model = sst.MeanFieldODE(sst.Problem(phi, ACTIVATION, 1e-4))
    problem = sst.MultiIndexProblem(sst.MultiIndexTarget.from_hermite(phi), ACTIVATION, 1e-4)
    multi_model = sst.MultiIndexMeanFieldODE(problem)
    # The same vector field in (a, s), to rounding, at states off the quadrature grid ...
    state = sst.MeanFieldState(
        jnp.array([1.3, -0.4, 2.0, 0.7]), jnp.array([0.3, -0.8, 0.05, 0.6]), y0.weights
    )
    as_multi = sst.MultiIndexMeanFieldState(state.a, state.s[:, None], state.weights)
    rate, rate_multi = single_model.rate(0.0, state), multi_model.rate(0.0, as_multi)
    np.testing.assert_allclose(rate_multi.a, rate.a, rtol=1e-12)
    np.testing.assert_allclose(rate_multi.s[:, 0], rate.s, rtol=1e-12, atol=1e-14)
    # ... and the same solves within their integration errors: the single-index model
    # integrates its residuals too, so the two take different steps (measured at rtol 1e-10:
    # risks within 1.5e-11, overlaps within 2.8e-10; both shrink with the tolerance).
    options = dict(rtol=1e-10, atol=1e-12)
    single = sst.solve(single_model, y0, ts, **options)
    multi = sst.solve(
        multi_model, sst.MultiIndexMeanFieldState(y0.a, y0.s[:, None], y0.weights), ts, **options
    )
    assert float(jnp.max(jnp.abs(multi.risk - single.risk))) <= 1e-10
    assert float(single.risk[-1]) < 1e-3 * float(single.risk[0])  # the run does learn
    np.testing.assert_allclose(multi.ys.s[..., 0], single.ys.s, atol=2e-9)


def _model(eps=1e-2, coeffs=None):
    target = TARGET2 if coeffs is None else sst.MultiIndexTarget(TARGET2.indices, coeffs)
    return sst.MultiIndexMeanFieldODE(sst.MultiIndexProblem(target, ACTIVATION, eps))


Y0 = sst.multi_index_particles(4, 2)


def test_solve_learns_and_the_risk_never_increases():
    traj = sst.solve(_model(), Y0, TS, **OPTIONS)
    assert bool(traj.success)
    assert np.all(np.diff(np.asarray(traj.risk)) <= 1e-12)
    assert float(traj.risk[-1]) < 0.1 * float(traj.risk[0])
    times = sst.learning_times(traj)
    labels = traj.residual_labels
    # z1 before z1 z2 (the staircase), and the constant first.
    assert times[labels.index((0, 0))] < times[labels.index((1, 0))] < times[labels.index((1, 1))]


def test_solve_batch_matches_single_solves():
    eps = np.array([1e-2, 3e-2])
    coeffs = np.array([[0.5, 1.0, 1.0], [0.0, 1.0, 0.5]])
    batch = sst.solve_batch(_model(), Y0, TS, parameters={"eps": eps, "target": coeffs}, **OPTIONS)
    assert batch.batch_size == 2 and bool(np.all(batch.success))
    for i in range(2):
        single = sst.solve(_model(eps[i], coeffs[i]), Y0, TS, **OPTIONS)
        np.testing.assert_allclose(batch[i].risk, single.risk, rtol=1e-10, atol=1e-14)
    with pytest.raises(ValueError, match="no parameter 'sigma'"):
        sst.solve_batch(_model(), Y0, TS, parameters={"sigma": coeffs})


def _functionals(theta):
    eps, c11, a0 = theta
    model = _model(eps, TARGET2.coeffs.at[2].set(c11))
    y0 = sst.MultiIndexMeanFieldState(Y0.a.at[0].set(a0), Y0.s, Y0.weights)
    # The solve of test_solve_learns...: its compilation is reused by the finite differences.
    traj = sst.solve(model, y0, TS, **OPTIONS)
    return sst.risk_at(traj, 0.5) + 0.1 * sst.log_time_area(traj)


def test_grad_matches_central_differences():
    theta = jnp.array([1e-2, 1.0, float(Y0.a[0])])
    g = jax.grad(_functionals)(theta)
    for i in range(3):
        h = 1e-4 * abs(float(theta[i]))
        e = jnp.zeros(3).at[i].set(h)
        fd = (_functionals(theta + e) - _functionals(theta - e)) / (2 * h)
        assert abs(float(g[i]) - float(fd)) <= 1e-6 * abs(float(fd)), (i, float(g[i]), float(fd))


@pytest.mark.parametrize(
    ("state", "match"),
    [
        (sst.MeanFieldState(np.ones(2), np.zeros(2)), "needs a MultiIndexMeanFieldState"),
        (sst.MultiIndexMeanFieldState(np.ones(2), np.zeros((2, 3))), "k=2 directions"),
        (sst.MultiIndexMeanFieldState(np.ones(2), np.ones((2, 2))), "norm <= 1"),
        (sst.MultiIndexMeanFieldState(np.ones(2), np.zeros((2, 2)), [0.2, 0.2]), "sum to 1"),
        (sst.MultiIndexMeanFieldState([np.nan, 1.0], np.zeros((2, 2))), "NaN or inf"),
    ],
)
def test_check_state(state, match):
    with pytest.raises(ValueError, match=match):
        _model().check_state(state)
    with pytest.raises(ValueError, match="polynomial activation"):
        sst.MultiIndexMeanFieldODE(
            sst.MultiIndexProblem(TARGET2, sst.relu(), 0.1), interaction="moments"
        )


@pytest.mark.parametrize("p", [3, 4])
def test_small_block_inverses_of_the_woodbury_solver(p):
    # Blocks of 1 + k coordinates (k = 2, 3) are inverted by their adjugate: as accurate as LU
    # up to each block's conditioning, also with one row scaled as the stiff a-rate's.
    from sst._linear import _small_inverse

    A = np.random.default_rng(p).standard_normal((p, p, 200))
    A[0, 1:] *= 1e6
    got = np.moveaxis(np.array([[np.asarray(x) for x in row] for row in _small_inverse(A)]), -1, 0)
    blocks = np.moveaxis(A, -1, 0)
    error = np.max(np.abs(got - np.linalg.inv(blocks)), axis=(1, 2))
    scale = np.max(np.abs(np.linalg.inv(blocks)), axis=(1, 2))
    assert np.all(error <= 1e-14 * np.linalg.cond(blocks) * scale)
