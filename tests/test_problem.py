"""Problem: validation, kernels, residuals of moments, parameters; AbstractProblemModel."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import CUBIC_ACTIVATION, CUBIC_TARGET, cubic_problem, random_particles

import sst


@pytest.mark.parametrize("eps", [0.0, -1e-3, float("nan"), float("inf")])
def test_bad_eps_raises(eps):
    with pytest.raises(ValueError, match="eps must be a finite positive scalar"):
        sst.Problem(sst.Hermite([1.0]), sst.Hermite([1.0]), eps=eps)


@pytest.mark.parametrize("noise", [-1.0, float("nan")])
def test_bad_noise_raises(noise):
    with pytest.raises(ValueError, match="noise must be a finite non-negative"):
        sst.Problem(sst.Hermite([1.0]), sst.Hermite([1.0]), eps=1.0, noise=noise)


def test_target_and_activation_must_be_hermite():
    with pytest.raises(ValueError, match="as sst.Hermite functions"):
        sst.Problem([0.0, 1.0], sst.Hermite([1.0]), eps=1.0)


def test_kernels_are_the_hermite_power_series():
    # Independent evaluation with numpy polynomials: V = sum phi_k sigma_k s^k, U = sum sigma_k^2.
    problem = sst.Problem(sst.Hermite([0.3, -1.0, 0.5]), sst.Hermite([1.0, 0.7, 0.4, 0.2]), 1.0)
    s = np.linspace(-0.9, 0.9, 7)
    phi, sigma = np.array([0.3, -1.0, 0.5, 0.0]), np.array([1.0, 0.7, 0.4, 0.2])
    V = np.polynomial.polynomial.Polynomial(phi * sigma)
    U = np.polynomial.polynomial.Polynomial(sigma**2)
    np.testing.assert_allclose(problem.V(s), V(s), rtol=1e-13)
    np.testing.assert_allclose(problem.dV(s), V.deriv()(s), rtol=1e-13)
    np.testing.assert_allclose(problem.U(s), U(s), rtol=1e-13)
    np.testing.assert_allclose(problem.dU(s), U.deriv()(s), rtol=1e-13)


def test_baseline_risk_and_degrees():
    problem = cubic_problem(noise=0.3)
    np.testing.assert_allclose(problem.baseline_risk, 0.5 * (0.25 + 3.0 + 0.09), rtol=1e-14)
    assert problem.degrees == (0, 1, 2, 3)
    # A closed-form target reports the degrees of its truncated series.
    relu = sst.Problem(sst.relu(12), sst.relu(12), 1.0)
    assert relu.degrees == tuple(range(13))
    np.testing.assert_allclose(relu.baseline_risk, 0.25, rtol=1e-14)  # E[relu(G)^2] = 1/2


def test_residuals_of_moments_pad_and_truncate():
    problem = sst.Problem(sst.Hermite([0.5, 1.0, 1.0]), sst.Hermite([1.0, 2.0, 3.0, 4.0]), 1.0)
    m = jnp.array([0.1, 0.2, 0.3, 0.4, 0.5])
    # n = 5: target padded with zeros, activation padded with zeros.
    np.testing.assert_allclose(
        problem.residuals(m), [0.5 - 0.1, 1.0 - 0.4, 1.0 - 0.9, -1.6, 0.0], rtol=1e-14
    )
    # n = 2: both truncated; leading axes are kept.
    batch = jnp.array([[0.1, 0.2], [1.0, -1.0]])
    np.testing.assert_allclose(problem.residuals(batch), [[0.4, 0.6], [-0.5, 3.0]], rtol=1e-15)


def test_residuals_are_the_moments_of_the_particles(cubic_model):
    # m_k = sum_i p_i a_i s_i^k, computed here without sst.
    state = random_particles(7, seed=3)
    a, s, p = (np.asarray(x) for x in (state.a, state.s, state.weights))
    moments = np.array([np.sum(p * a * s**k) for k in range(4)])
    np.testing.assert_allclose(cubic_model.moments(state), moments, rtol=1e-12)
    expected = np.array(CUBIC_TARGET) - np.array(CUBIC_ACTIVATION) * moments
    np.testing.assert_allclose(cubic_model.residuals(state), expected, rtol=1e-12)
    assert cubic_model.residual_labels == (0, 1, 2, 3)


def test_with_parameters_replaces_and_validates():
    problem = sst.Problem(sst.Hermite([0.0, 1.0]), sst.relu(8), eps=1e-2, noise=0.1)
    new = problem.with_parameters(eps=1e-3, activation=jnp.arange(9.0), target=jnp.ones(2))
    assert float(new.eps) == 1e-3 and float(new.noise) == pytest.approx(0.1)
    # relu's closed form stays; only its truncated series changes.
    assert new.activation.closed_form == "relu"
    np.testing.assert_array_equal(new.activation.coeffs, np.arange(9.0))
    np.testing.assert_array_equal(new.target.coeffs, [1.0, 1.0])
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
