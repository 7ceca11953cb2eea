import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special as sp

import sst
from sst._hermite import cross_kernel, hermite_basis


def test_orthonormality_against_gauss_hermite():
    # A 120-point Gauss-Hermite rule integrates polynomials of degree < 240 exactly.
    x, w = np.polynomial.hermite_e.hermegauss(120)
    w = w / w.sum()
    H = np.asarray(hermite_basis(x, 60))
    gram = (H * w[:, None]).T @ H
    np.testing.assert_allclose(gram, np.eye(61), atol=1e-10)


def test_basis_matches_numpy_hermite_e():
    x = np.linspace(-3, 3, 7)
    for k in range(8):
        he = np.polynomial.hermite_e.hermeval(x, [0] * k + [1]) / math.sqrt(math.factorial(k))
        np.testing.assert_allclose(
            np.asarray(hermite_basis(x, 8))[:, k], he, rtol=1e-12, atol=1e-12
        )


def test_relu_coefficients_from_callable_match_closed_form():
    fitted = sst.Hermite.from_callable(lambda x: np.maximum(x, 0.0), degree=40)
    # Independent closed form: c_k = E[relu(G) He_k(G)] / sqrt(k!) = He_{k-2}(0) / sqrt(2 pi k!).
    expected = [1 / math.sqrt(2 * math.pi), 0.5]
    for k in range(2, 41):
        he_km2_at_0 = np.polynomial.hermite_e.hermeval(0.0, [0] * (k - 2) + [1])
        expected.append(he_km2_at_0 / math.sqrt(2 * math.pi * math.factorial(k)))
    np.testing.assert_allclose(fitted.coeffs, expected, atol=1e-10)
    np.testing.assert_allclose(sst.relu(40).coeffs, expected, atol=1e-12)


@pytest.mark.parametrize(
    "fn, closed_kernel",
    [
        (
            lambda x: np.maximum(x, 0.0),
            lambda q: (np.sqrt(1 - q**2) + (np.pi - np.arccos(q)) * q) / (2 * np.pi),
        ),
        (lambda x: sp.erf(x / np.sqrt(2)), lambda q: 2 / np.pi * np.arcsin(q / 2)),
        (np.abs, lambda q: 2 / np.pi * (np.sqrt(1 - q**2) + q * np.arcsin(q))),
    ],
    ids=["relu", "erf", "abs"],
)
def test_callable_coefficients_reproduce_closed_form_kernels(fn, closed_kernel):
    # U(q) = sum_k c_k^2 q^k converges geometrically for |q| <= 0.6: truncation at 80 is < 1e-16.
    h = sst.Hermite.from_callable(fn, degree=80)
    q = np.linspace(-0.6, 0.6, 13)
    np.testing.assert_allclose(h.kernel(q), closed_kernel(q), atol=1e-10)


def test_abs_is_twice_relu_minus_identity():
    abs_h = sst.Hermite.from_callable(np.abs, degree=30)
    expected = 2 * sst.relu(30).coeffs - jnp.zeros(31).at[1].set(1.0)
    np.testing.assert_allclose(abs_h.coeffs, expected, atol=1e-10)


def test_smooth_callable_matches_high_order_gauss_hermite():
    x, w = np.polynomial.hermite_e.hermegauss(200)
    w = w / w.sum()
    H = np.asarray(hermite_basis(x, 30))
    expected = (w * np.tanh(x)) @ H
    got = sst.Hermite.from_callable(np.tanh, degree=30, breakpoints=()).coeffs
    np.testing.assert_allclose(got, expected, atol=1e-10)


def test_polynomials_are_exact():
    cube = sst.Hermite.from_monomials([0.0, 0.0, 0.0, 1.0])
    # x^3 = He_3 + 3 He_1 and h_3 = He_3 / sqrt(6).
    np.testing.assert_allclose(cube.coeffs, [0.0, 3.0, 0.0, math.sqrt(6.0)], atol=1e-14)
    fitted = sst.Hermite.from_callable(lambda x: x**3, degree=5)
    np.testing.assert_allclose(fitted.coeffs[:4], cube.coeffs, atol=1e-10)
    np.testing.assert_allclose(fitted.coeffs[4:], 0.0, atol=1e-10)
    x = jnp.linspace(-2, 2, 9)
    np.testing.assert_allclose(cube(x), x**3, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(cube.derivative(x), 3 * x**2, rtol=1e-12, atol=1e-12)
    # E[x^3 x'^3] with correlation q is 9q + 6q^3.
    np.testing.assert_allclose(cube.kernel(0.3), 9 * 0.3 + 6 * 0.3**3, rtol=1e-14)


@pytest.mark.parametrize(
    "h", [sst.relu(), sst.erf(), sst.Hermite([0.2, -0.5, 0.7, 0.3])], ids=["relu", "erf", "poly"]
)
def test_derivatives_match_autodiff(h):
    q = jnp.linspace(-0.9, 0.9, 7)
    np.testing.assert_allclose(h.kernel_grad(q), jax.vmap(jax.grad(h.kernel))(q), rtol=1e-10)
    x = jnp.array([-1.3, -0.4, 0.5, 2.1])
    np.testing.assert_allclose(h.derivative(x), jax.vmap(jax.grad(h))(x), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "target, activation",
    [
        (sst.Hermite([0.3, 1.0, 0.5, 0.4]), sst.relu()),
        (sst.Hermite([0.0, 1.0, 0.0, 0.6]), sst.erf()),
        (sst.Hermite([0.5, 1.0, 1.0]), sst.Hermite([1.0, 0.7, 0.4, 0.2])),
        (sst.relu(), sst.relu()),
    ],
    ids=["poly-relu", "poly-erf", "poly-poly", "relu-relu"],
)
def test_kernels_match_monte_carlo(target, activation):
    n = 400_000
    key1, key2 = jax.random.split(jax.random.key(0))
    g = jax.random.normal(key1, (n,))
    z = jax.random.normal(key2, (n,))
    for q in (-0.7, 0.2, 0.8):
        gp = q * g + math.sqrt(1 - q**2) * z
        for estimate_of, exact in (
            (activation(g) * activation(gp), activation.kernel(q)),
            (target(g) * activation(gp), cross_kernel(target, activation, q)),
        ):
            stderr = float(jnp.std(estimate_of)) / math.sqrt(n)
            assert abs(float(jnp.mean(estimate_of)) - float(exact)) < 5 * stderr


@pytest.mark.parametrize(
    "bad, match",
    [([], "non-empty 1-d"), ([[1.0, 2.0]], "non-empty 1-d"), ([1.0, float("nan")], "NaN or inf")],
    ids=["empty", "2-d", "nan"],
)
def test_bad_coefficients_raise(bad, match):
    with pytest.raises(ValueError, match=match):
        sst.Hermite(bad)


def test_bad_closed_form_raises():
    with pytest.raises(ValueError, match="closed_form must be None or one of"):
        sst.Hermite([1.0], closed_form="tanh")
