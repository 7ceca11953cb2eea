"""Multi-index targets and their problem (sst/_multi_index.py) against independent truth:
direct evaluation of polynomials, Gauss quadrature and Monte Carlo of the kernel V."""

import jax

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_dtype_promotion", "strict")

import math  # noqa: E402

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import (  # noqa: E402
    given,
    settings,
    strategies as st,  # noqa: E402
)

import sst  # noqa: E402

STAIRCASE = {(1, 0, 0): 1.0, (1, 1, 0): 1.0, (1, 1, 1): 1.0}
ACTIVATION = sst.Hermite([0.5, 1.0, 1.0, 1.0])


def test_graded_indices_order_and_count():
    indices = sst.graded_indices(3, 3)
    assert len(indices) == math.comb(6, 3)
    assert indices[:4] == ((0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1))
    assert [sum(a) for a in indices] == sorted(sum(a) for a in indices)
    # Lower degrees are a prefix: the interaction indices of the mean-field model rely on it.
    assert sst.graded_indices(3, 2) == indices[:10]


def test_from_monomials_is_exact():
    target = sst.MultiIndexTarget.from_monomials({(1, 1, 0): 1.0, (2, 0, 0): 3.0, (0, 0, 3): 0.5})
    z = jax.random.normal(jax.random.PRNGKey(0), (50, 3))
    direct = z[:, 0] * z[:, 1] + 3.0 * z[:, 0] ** 2 + 0.5 * z[:, 2] ** 3
    np.testing.assert_allclose(target(z), direct, rtol=1e-12, atol=1e-12)
    staircase = sst.MultiIndexTarget.from_monomials(STAIRCASE)
    # z_1, z_1 z_2 and z_1 z_2 z_3 are themselves normalised Hermite products.
    assert dict(zip(staircase.indices, np.asarray(staircase.coeffs), strict=True)) == STAIRCASE


def test_committee_sums_one_function_per_direction():
    g = [sst.Hermite([0.5, 1.0, 0.0, 1.0]), sst.Hermite([0.0, 0.5, 1.0])]
    target = sst.MultiIndexTarget.committee(g)
    z = jax.random.normal(jax.random.PRNGKey(1), (20, 2))
    np.testing.assert_allclose(target(z), g[0](z[:, 0]) + g[1](z[:, 1]), rtol=1e-12)
    same = sst.MultiIndexTarget.committee(np.array([0.0, 1.0, 0.0, 1.0]), k=3)
    assert same.k == 3 and float(same.norm2) == pytest.approx(6.0)
    with pytest.raises(ValueError, match="needs the number of directions k"):
        sst.MultiIndexTarget.committee([0.0, 1.0])
    with pytest.raises(ValueError, match="polynomial"):
        sst.MultiIndexTarget.committee(sst.relu(), k=2)


def test_from_callable_recovers_a_polynomial():
    exact = sst.MultiIndexTarget.from_monomials({(1, 1): 1.0, (3, 0): 0.5, (0, 2): -1.0})
    fitted = sst.MultiIndexTarget.from_callable(
        lambda z: z[..., 0] * z[..., 1] + 0.5 * z[..., 0] ** 3 - z[..., 1] ** 2, k=2, degree=4
    )
    assert set(fitted.indices) == set(exact.indices)
    for alpha in exact.indices:
        assert float(fitted.coefficient(alpha)) == pytest.approx(
            float(exact.coefficient(alpha)), abs=1e-12
        )


def test_from_hermite_is_the_single_index_target():
    phi = sst.Hermite([0.5, 1.0, -0.3, 0.2])
    target = sst.MultiIndexTarget.from_hermite(phi)
    x = jnp.linspace(-2.0, 2.0, 7)
    np.testing.assert_allclose(target(x[:, None]), phi(x), rtol=1e-13)


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: sst.MultiIndexTarget([], []), "non-empty list of multi-indices"),
        (lambda: sst.MultiIndexTarget([(1, 0), (1,)], [1.0, 1.0]), "same length k"),
        (lambda: sst.MultiIndexTarget([(1, -1)], [1.0]), "non-negative integers"),
        (lambda: sst.MultiIndexTarget([(1, 0), (1, 0)], [1.0, 2.0]), "appears twice"),
        (lambda: sst.MultiIndexTarget([(1, 0)], [1.0, 2.0]), "one coefficient per multi-index"),
        (lambda: sst.MultiIndexTarget([(1, 0)], [np.nan]), "NaN or inf"),
        (lambda: sst.MultiIndexTarget.from_terms({(1, 0.5): 1.0}), r"e\.g\. \(1, 0\)"),
        (lambda: sst.MultiIndexTarget.from_hermite(sst.relu()), "polynomial"),
    ],
)
def test_target_validation(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_problem_validation_and_parameters():
    target = sst.MultiIndexTarget.from_monomials(STAIRCASE)
    problem = sst.MultiIndexProblem(target, ACTIVATION, 1e-3)
    with pytest.raises(ValueError, match="eps must be a finite positive"):
        sst.MultiIndexProblem(target, ACTIVATION, -1.0)
    with pytest.raises(ValueError, match="noise must be"):
        sst.MultiIndexProblem(target, ACTIVATION, 1e-3, noise=-1.0)
    with pytest.raises(ValueError, match="needs `target` as an sst.MultiIndexTarget"):
        sst.MultiIndexProblem(sst.Hermite([0.0, 1.0]), ACTIVATION, 1e-3)
    with pytest.raises(ValueError, match="Unknown parameter 'sigma'"):
        problem.with_parameters(sigma=jnp.ones(4))
    other = problem.with_parameters(eps=jnp.asarray(0.5), target=jnp.array([1.0, 2.0, 3.0]))
    assert other.target.indices == target.indices and float(other.eps) == 0.5
    assert float(other.target.norm2) == pytest.approx(14.0)


def _monte_carlo_V(target, activation, s, n=400_000, seed=0):
    """`E[phi(z) sigma(<w, x>)]` sampled: `<w, x> = s . z + sqrt(1 - |s|^2) xi`."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, s.shape[0]))
    proj = z @ s + math.sqrt(1.0 - s @ s) * rng.standard_normal(n)
    values = np.asarray(target(jnp.asarray(z))) * np.asarray(activation(jnp.asarray(proj)))
    return values.mean(), values.std() / math.sqrt(n)


@pytest.mark.parametrize(
    "target",
    [
        sst.MultiIndexTarget.from_monomials(STAIRCASE),
        sst.MultiIndexTarget.committee([0.0, 1.0, 0.5, 0.5], k=3),
    ],
    ids=["staircase", "committee"],
)
def test_V_against_monte_carlo(target):
    problem = sst.MultiIndexProblem(target, ACTIVATION, 1e-2)
    for seed, s in enumerate([np.array([0.6, 0.5, -0.4]), np.array([0.1, -0.8, 0.3])]):
        mean, stderr = _monte_carlo_V(target, ACTIVATION, s, seed=seed)
        assert abs(float(problem.V(s)) - mean) < 5 * stderr


@settings(max_examples=20, deadline=None)
@given(
    s=st.lists(st.floats(-0.55, 0.55), min_size=3, max_size=3),
    coeffs=st.lists(st.floats(-2.0, 2.0), min_size=3, max_size=3),
)
def test_dV_is_the_gradient_of_V(s, coeffs):
    target = sst.MultiIndexTarget(list(STAIRCASE), coeffs)
    problem = sst.MultiIndexProblem(target, ACTIVATION, 1e-2)
    s = jnp.asarray(s)
    np.testing.assert_allclose(problem.dV(s), jax.grad(problem.V)(s), rtol=1e-12, atol=1e-13)


def test_residuals_are_exact_projections():
    # r_alpha = c_alpha - b_alpha mu_alpha: for one particle with a = 1 the network function is
    # sigma(<w, x>), whose projection on h_alpha(z) is sigma_|alpha| sqrt(|alpha|!/alpha!) s^alpha.
    target = sst.MultiIndexTarget.from_monomials(STAIRCASE)
    problem = sst.MultiIndexProblem(target, ACTIVATION, 1e-2)
    s = np.array([0.3, -0.2, 0.5])
    labels = problem.labels
    moments = jnp.asarray([np.prod(s ** np.asarray(a)) for a in labels])
    r = problem.residuals(moments, labels)
    one = sst.MultiIndexTarget([(1, 1, 0)], [1.0])
    projection = float(sst.MultiIndexProblem(one, ACTIVATION, 1e-2).V(s))
    assert float(r[labels.index((1, 1, 0))]) == pytest.approx(1.0 - projection, abs=1e-14)
    assert sst.format_index((1, 1, 0)) == "z1 z2" and sst.format_index((2, 0, 1)) == "h2(z1) z3"


def test_targets_and_problems_print_in_words():
    target = sst.MultiIndexTarget.from_terms({(1, 0): 1.0, (1, 1): -0.5, (0, 0): 2.0})
    assert str(target) == "z1 - 0.5 z1 z2 + 2"
    problem = sst.MultiIndexProblem(target, sst.Hermite([0.0, 1.0, 1.0]), 1e-3)
    assert str(problem) == "phi = z1 - 0.5 z1 z2 + 2, sigma = h1 + h2, eps = 0.001"
