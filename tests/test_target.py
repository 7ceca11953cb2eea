"""sst.Target, the target of k directions, against independent truth: direct evaluation of
polynomials, Gauss quadrature of functions; its multi-indices and their names."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sst

STAIRCASE = {(1, 0, 0): 1.0, (1, 1, 0): 1.0, (1, 1, 1): 1.0}


def test_graded_indices_order_and_count():
    indices = sst.graded_indices(3, 3)
    assert len(indices) == math.comb(6, 3)
    assert indices[:4] == ((0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1))
    assert [sum(a) for a in indices] == sorted(sum(a) for a in indices)
    # Lower degrees are a prefix: the interaction indices of the mean-field model rely on it.
    assert sst.graded_indices(3, 2) == indices[:10]
    # k = 1: the degrees, the labels of a Hermite target's residuals.
    assert sst.graded_indices(1, 3) == ((0,), (1,), (2,), (3,))


def test_from_monomials_is_exact():
    target = sst.Target.from_monomials({(1, 1, 0): 1.0, (2, 0, 0): 3.0, (0, 0, 3): 0.5})
    z = jax.random.normal(jax.random.key(0), (50, 3))
    direct = z[:, 0] * z[:, 1] + 3.0 * z[:, 0] ** 2 + 0.5 * z[:, 2] ** 3
    np.testing.assert_allclose(target(z), direct, rtol=1e-12, atol=1e-12)
    staircase = sst.Target.from_monomials(STAIRCASE)
    # z_1, z_1 z_2 and z_1 z_2 z_3 are themselves normalised Hermite products.
    assert dict(zip(staircase.indices, np.asarray(staircase.coeffs), strict=True)) == STAIRCASE


def test_committee_sums_one_function_per_direction():
    g = [sst.Hermite([0.5, 1.0, 0.0, 1.0]), sst.Hermite([0.0, 0.5, 1.0])]
    target = sst.Target.committee(g)
    z = jax.random.normal(jax.random.key(1), (20, 2))
    np.testing.assert_allclose(target(z), g[0](z[:, 0]) + g[1](z[:, 1]), rtol=1e-12)
    same = sst.Target.committee(np.array([0.0, 1.0, 0.0, 1.0]), k=3)
    assert same.k == 3 and float(same.norm2) == pytest.approx(6.0)
    with pytest.raises(ValueError, match="needs the number of directions k"):
        sst.Target.committee([0.0, 1.0])
    with pytest.raises(ValueError, match="polynomial"):
        sst.Target.committee(sst.relu(), k=2)


def test_from_callable_recovers_a_polynomial():
    exact = sst.Target.from_monomials({(1, 1): 1.0, (3, 0): 0.5, (0, 2): -1.0})
    fitted = sst.Target.from_callable(
        lambda z: z[..., 0] * z[..., 1] + 0.5 * z[..., 0] ** 3 - z[..., 1] ** 2, k=2, degree=4
    )
    assert set(fitted.indices) == set(exact.indices)
    for alpha in exact.indices:
        assert float(fitted.coefficient(alpha)) == pytest.approx(
            float(exact.coefficient(alpha)), abs=1e-12
        )


def test_from_hermite_is_the_single_index_target():
    phi = sst.Hermite([0.5, 1.0, -0.3, 0.2])
    target = sst.Target.from_hermite(phi)
    assert target.k == 1 and target.indices == ((0,), (1,), (2,), (3,))
    x = jnp.linspace(-2.0, 2.0, 7)
    np.testing.assert_allclose(target(x[:, None]), phi(x), rtol=1e-13)


def test_dense_coeffs_and_coefficient():
    target = sst.Target.from_terms({(1, 0): 2.0, (0, 2): -1.0})
    indices = sst.graded_indices(2, 1)  # (0, 0), (1, 0), (0, 1): (0, 2) is left out
    np.testing.assert_array_equal(target.dense_coeffs(indices), [0.0, 2.0, 0.0])
    assert float(target.coefficient((0, 2))) == -1.0 and float(target.coefficient((5, 5))) == 0.0


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: sst.Target([], []), "non-empty list of multi-indices"),
        (lambda: sst.Target([(1, 0), (1,)], [1.0, 1.0]), "same length k"),
        (lambda: sst.Target([(1, -1)], [1.0]), "non-negative integers"),
        (lambda: sst.Target([(1, 0), (1, 0)], [1.0, 2.0]), "appears twice"),
        (lambda: sst.Target([(1, 0)], [1.0, 2.0]), "one coefficient per multi-index"),
        (lambda: sst.Target([(1, 0)], [np.nan]), "NaN or inf"),
        (lambda: sst.Target.from_terms({(1, 0.5): 1.0}), r"e\.g\. \(1, 0\)"),
        (lambda: sst.Target.from_hermite(sst.relu()), "polynomial"),
        (
            lambda: sst.Target.from_terms({(1, 0): 1.0})(jnp.zeros((4, 3))),
            "last axis of length k=2",
        ),
    ],
)
def test_target_validation(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_targets_print_in_words():
    target = sst.Target.from_terms({(1, 0): 1.0, (1, 1): -0.5, (0, 0): 2.0})
    assert str(target) == "z1 - 0.5 z1 z2 + 2"
    problem = sst.Problem(target, sst.Hermite([0.0, 1.0, 1.0]), 1e-3)
    assert str(problem) == "phi = z1 - 0.5 z1 z2 + 2, sigma = h1 + h2, eps = 0.001"
    assert sst.format_index((1, 1, 0)) == "z1 z2" and sst.format_index((2, 0, 1)) == "h2(z1) z3"
    assert sst.format_index((0, 0)) == "1"
