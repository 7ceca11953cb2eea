"""Problem for a Hermite target (k = 1) and an sst.Target (k = 1, 3): validation, the kernels V
and U against their power series and Monte Carlo, grad V against autodiff, residuals of moments
against the moments of particles and exact projections, parameters; AbstractProblemModel."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import CUBIC_ACTIVATION, CUBIC_TARGET, cubic_problem, random_particles
from hypothesis import given, settings, strategies as st

import sst

ACTIVATION = sst.Hermite([0.5, 1.0, 1.0, 1.0])
STAIRCASE = sst.Target.from_monomials({(1, 0, 0): 1.0, (1, 1, 0): 1.0, (1, 1, 1): 1.0})
TARGETS = {
    "k1-hermite": sst.Hermite([0.3, -1.0, 0.5]),
    "k1-target": sst.Target.from_hermite(sst.Hermite([0.3, -1.0, 0.5])),
    "k3": STAIRCASE,
}


@pytest.mark.parametrize("kind", TARGETS)
@pytest.mark.parametrize("eps", [0.0, -1e-3, float("nan"), float("inf")])
def test_bad_eps_raises(kind, eps):
    with pytest.raises(ValueError, match="eps must be a finite positive scalar"):
        sst.Problem(TARGETS[kind], ACTIVATION, eps=eps)


@pytest.mark.parametrize("kind", TARGETS)
@pytest.mark.parametrize("noise", [-1.0, float("nan")])
def test_bad_noise_raises(kind, noise):
    with pytest.raises(ValueError, match="noise must be a finite non-negative"):
        sst.Problem(TARGETS[kind], ACTIVATION, eps=1.0, noise=noise)


def test_target_and_activation_types():
    with pytest.raises(ValueError, match=r"needs `target` as an sst.Hermite .* or an sst.Target"):
        sst.Problem([0.0, 1.0], ACTIVATION, eps=1.0)
    with pytest.raises(ValueError, match="needs `activation` as an sst.Hermite"):
        sst.Problem(STAIRCASE, [0.0, 1.0], eps=1.0)
    single, vector = (
        sst.Problem(TARGETS["k1-hermite"], ACTIVATION, 1.0),
        sst.Problem(STAIRCASE, ACTIVATION, 1.0),
    )
    assert (single.k, single.vector_overlaps) == (1, False)
    assert (vector.k, vector.vector_overlaps) == (3, True)
    assert sst.Problem(TARGETS["k1-target"], ACTIVATION, 1.0).vector_overlaps


def _overlaps(kind, s):
    """Overlaps on the last axis of length k: a column for k = 1."""
    return s[:, :1] if kind.startswith("k1") else s


@pytest.mark.parametrize("kind", ["k1-hermite", "k1-target"])
def test_kernels_are_the_hermite_power_series(kind):
    # Independent evaluation with numpy polynomials: V = sum phi_k sigma_k s^k, U = sum sigma_k^2.
    problem = sst.Problem(TARGETS[kind], sst.Hermite([1.0, 0.7, 0.4, 0.2]), 1.0)
    s = np.linspace(-0.9, 0.9, 7)
    phi, sigma = np.array([0.3, -1.0, 0.5, 0.0]), np.array([1.0, 0.7, 0.4, 0.2])
    V = np.polynomial.polynomial.Polynomial(phi * sigma)
    U = np.polynomial.polynomial.Polynomial(sigma**2)
    np.testing.assert_allclose(problem.V(s[:, None]), V(s), rtol=1e-13)
    np.testing.assert_allclose(problem.dV(s[:, None]), V.deriv()(s)[:, None], rtol=1e-13)
    np.testing.assert_allclose(problem.U(s), U(s), rtol=1e-13)
    np.testing.assert_allclose(problem.dU(s), U.deriv()(s), rtol=1e-13)


def _monte_carlo_V(problem, s, n=400_000, seed=0):
    """`E[phi(z) sigma(<w, x>)]` sampled: `<w, x> = s . z + sqrt(1 - |s|^2) xi`."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, s.shape[0]))
    proj = z @ s + math.sqrt(1.0 - s @ s) * rng.standard_normal(n)
    values = np.asarray(problem.phi(jnp.asarray(z))) * np.asarray(
        problem.activation(jnp.asarray(proj))
    )
    return values.mean(), values.std() / math.sqrt(n)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("target", "activation"),
    [
        (sst.Hermite([0.3, 1.0, 0.5, 0.4]), sst.relu()),
        (sst.Hermite([0.0, 1.0, 0.0, 0.6]), sst.erf()),
        (sst.Target.from_hermite(sst.Hermite([0.3, 1.0, 0.5, 0.4])), sst.relu()),
        (STAIRCASE, ACTIVATION),
        (sst.Target.committee([0.0, 1.0, 0.5, 0.5], k=3), ACTIVATION),
        (STAIRCASE, sst.relu()),
    ],
    ids=["k1-relu", "k1-erf", "k1-target-relu", "staircase", "committee", "staircase-relu"],
)
def test_V_against_monte_carlo(target, activation):
    problem = sst.Problem(target, activation, 1e-2)
    k = problem.k
    for seed, s in enumerate([np.array([0.6, 0.5, -0.4]), np.array([0.1, -0.8, 0.3])]):
        s = s[:k] if k > 1 else s[:1] * 1.3
        mean, stderr = _monte_carlo_V(problem, s, seed=seed)
        assert abs(float(problem.V(s)) - mean) < 5 * stderr


@pytest.mark.slow
@settings(max_examples=20, deadline=None)
@given(
    s=st.lists(st.floats(-0.55, 0.55), min_size=3, max_size=3),
    coeffs=st.lists(st.floats(-2.0, 2.0), min_size=3, max_size=3),
)
def test_dV_is_the_gradient_of_V(s, coeffs):
    s = jnp.asarray(s)
    problems = {
        "k3": sst.Problem(sst.Target(list(STAIRCASE.indices), coeffs), ACTIVATION, 1e-2),
        "k1-hermite": sst.Problem(sst.Hermite([0.0, *coeffs]), ACTIVATION, 1e-2),
        "k1-relu": sst.Problem(sst.Hermite([0.0, *coeffs]), sst.relu(), 1e-2),
    }
    for name, problem in problems.items():
        x = s if problem.k == 3 else s[:1]
        np.testing.assert_allclose(
            problem.dV(x), jax.grad(problem.V)(x), rtol=1e-12, atol=1e-13, err_msg=name
        )


def test_baseline_risk_and_labels():
    problem = cubic_problem(noise=0.3)
    np.testing.assert_allclose(problem.baseline_risk, 0.5 * (0.25 + 3.0 + 0.09), rtol=1e-14)
    assert problem.labels == ((0,), (1,), (2,), (3,))
    # A closed-form target reports the degrees of its truncated series.
    relu = sst.Problem(sst.relu(12), sst.relu(12), 1.0)
    assert relu.labels == tuple((j,) for j in range(13))
    np.testing.assert_allclose(relu.baseline_risk, 0.25, rtol=1e-14)  # E[relu(G)^2] = 1/2
    staircase = sst.Problem(STAIRCASE, ACTIVATION, 1.0, noise=0.3)
    assert staircase.labels == sst.graded_indices(3, 3)
    np.testing.assert_allclose(staircase.baseline_risk, 0.5 * (3.0 + 0.09), rtol=1e-14)


def test_residuals_of_moments_pad_and_truncate():
    problem = sst.Problem(sst.Hermite([0.5, 1.0, 1.0]), sst.Hermite([1.0, 2.0, 3.0, 4.0]), 1.0)
    m = jnp.array([0.1, 0.2, 0.3, 0.4, 0.5])
    # Degrees to 4: target padded with zeros, activation padded with zeros.
    five = [(j,) for j in range(5)]
    np.testing.assert_allclose(
        problem.residuals(m, five), [0.5 - 0.1, 1.0 - 0.4, 1.0 - 0.9, -1.6, 0.0], rtol=1e-14
    )
    # Degrees to 1: both truncated; leading axes are kept.
    batch = jnp.array([[0.1, 0.2], [1.0, -1.0]])
    np.testing.assert_allclose(
        problem.residuals(batch, five[:2]), [[0.4, 0.6], [-0.5, 3.0]], rtol=1e-15
    )
    # Two directions: b_alpha = sigma_|alpha| sqrt(|alpha|! / alpha!); (1, 1) carries sqrt(2).
    target = sst.Target.from_terms({(1, 0): 1.0, (1, 1): 2.0})
    vector = sst.Problem(target, sst.Hermite([1.0, 2.0, 3.0]), 1.0)
    indices = [(0, 0), (1, 0), (1, 1), (2, 0), (2, 1)]
    expected = [0.0 - 1.0 * 0.1, 1.0 - 2.0 * 0.2, 2.0 - 3.0 * math.sqrt(2) * 0.3, -3.0 * 0.4, 0.0]
    np.testing.assert_allclose(vector.residuals(m, indices), expected, rtol=1e-14, atol=1e-16)


def test_residuals_are_the_moments_of_the_particles(cubic_model):
    # m_k = sum_i p_i a_i s_i^k, computed here without sst.
    state = random_particles(7, seed=3)
    a, s, p = (np.asarray(x) for x in (state.a, state.s, state.weights))
    moments = np.array([np.sum(p * a * s**k) for k in range(4)])
    np.testing.assert_allclose(cubic_model.moments(state), moments, rtol=1e-12)
    expected = np.array(CUBIC_TARGET) - np.array(CUBIC_ACTIVATION) * moments
    np.testing.assert_allclose(cubic_model.residuals(state), expected, rtol=1e-12)
    assert cubic_model.residual_labels == ((0,), (1,), (2,), (3,))


@pytest.mark.parametrize("kind", ["k1-target", "k3"])
def test_residuals_are_exact_projections(kind):
    # r_alpha = c_alpha - b_alpha mu_alpha: for one particle with a = 1 the network function is
    # sigma(<w, x>), whose projection on h_alpha(z) is V(s) of the target h_alpha alone.
    problem = sst.Problem(TARGETS[kind], ACTIVATION, 1e-2)
    s = np.array([0.3, -0.2, 0.5])[: problem.k]
    labels = problem.labels
    moments = jnp.asarray([np.prod(s ** np.asarray(a)) for a in labels])
    r = problem.residuals(moments, labels)
    for alpha, r_alpha in zip(labels, np.asarray(r), strict=True):
        one = sst.Problem(sst.Target([alpha], [1.0]), ACTIVATION, 1e-2)
        c = (
            float(TARGETS[kind].coefficient(alpha))
            if kind == "k3"
            else float(problem.target_coeffs([alpha])[0])
        )
        assert r_alpha == pytest.approx(c - float(one.V(s)), abs=1e-14), alpha


@pytest.mark.parametrize("kind", TARGETS)
def test_with_parameters_replaces_and_validates(kind):
    problem = sst.Problem(TARGETS[kind], sst.relu(8), eps=1e-2, noise=0.1)
    size = TARGETS[kind].coeffs.shape[0]
    new = problem.with_parameters(eps=1e-3, activation=jnp.arange(9.0), target=jnp.ones(size))
    assert float(new.eps) == 1e-3 and float(new.noise) == pytest.approx(0.1)
    assert type(new.target) is type(problem.target)
    # relu's closed form stays; only its truncated series changes.
    assert new.activation.closed_form == "relu"
    np.testing.assert_array_equal(new.activation.coeffs, np.arange(9.0))
    np.testing.assert_array_equal(new.target.coeffs, np.ones(size))
    if kind != "k1-hermite":
        assert new.target.indices == problem.target.indices
    with pytest.raises(ValueError, match="Unknown parameter 'noise'"):
        problem.with_parameters(noise=0.0)
    with pytest.raises(ValueError, match="eps must be a finite positive"):
        problem.with_parameters(eps=-1.0)


def test_problem_model_parameters_round_trip(cubic_model):
    params = cubic_model.parameters()
    assert sorted(params) == ["activation", "eps", "target"]
    np.testing.assert_array_equal(params["target"], CUBIC_TARGET)
    doubled = cubic_model.with_parameters(eps=2 * params["eps"], target=2 * params["target"])
    assert isinstance(doubled, sst.MeanFieldODE)
    np.testing.assert_allclose(doubled.eps, 2e-2, rtol=1e-15)
    np.testing.assert_array_equal(doubled.problem.target.coeffs, 2 * np.array(CUBIC_TARGET))
    # Traced parameters are accepted (solve_batch vmaps over them) without concrete checks.
    eps = jax.jit(lambda e: cubic_model.with_parameters(eps=e).eps)(jnp.asarray(3e-2))
    np.testing.assert_allclose(eps, 3e-2, rtol=1e-15)


def test_problems_print_in_words():
    assert (
        str(cubic_problem()) == "phi = 0.5 h0 + h1 + h2 + h3, sigma = h0 + h1 + h2 + h3, eps = 0.01"
    )
    problem = sst.Problem(STAIRCASE, ACTIVATION, 1e-3)
    assert str(problem) == "phi = z1 + z1 z2 + z1 z2 z3, sigma = 0.5 h0 + h1 + h2 + h3, eps = 0.001"
