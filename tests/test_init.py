"""Initial conditions for k = 1 (overlaps (m,)) and k directions (overlaps (m, k)): quadrature
particles integrate the law of a(0); random networks are consistent with their weights."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sst


@pytest.mark.parametrize("k", [None, 1, 3])
def test_quadrature_particles_integrate_moments_of_the_law(k):
    normal = sst.quadrature_particles(10, "normal", scale=2.0, k=k)
    np.testing.assert_allclose(jnp.sum(normal.weights * normal.a**2), 4.0, rtol=1e-12)
    np.testing.assert_allclose(jnp.sum(normal.weights * normal.a**4), 3 * 16.0, rtol=1e-12)
    uniform = sst.quadrature_particles(6, "uniform", k=k)
    np.testing.assert_allclose(jnp.sum(uniform.weights * uniform.a**2), 1 / 3, rtol=1e-12)
    rad = sst.quadrature_particles(4, "rademacher", k=k)
    np.testing.assert_allclose(jnp.sum(rad.weights * rad.a**2), 1.0, rtol=1e-12)
    shifted = sst.quadrature_particles(5, "normal", scale=0.5, mean=1.0, k=k)
    np.testing.assert_allclose(jnp.sum(shifted.weights * shifted.a), 1.0, rtol=1e-12)
    np.testing.assert_allclose(jnp.sum(shifted.weights * (shifted.a - 1) ** 2), 0.25, rtol=1e-12)
    for state in (normal, uniform, rad, shifted):
        assert state.s.shape == (state.a.shape[0],) if k is None else (state.a.shape[0], k)
        assert float(jnp.max(jnp.abs(state.s))) == 0.0
        np.testing.assert_allclose(jnp.sum(state.weights), 1.0, rtol=1e-14)


@pytest.mark.parametrize(
    "args, match",
    [
        ((5, "rademacher"), "even number of particles"),
        ((5, "cauchy"), "law must be 'normal', 'uniform' or 'rademacher'"),
        ((0, "normal"), r"m \(the number of particles\) must be an integer >= 1"),
        ((2.0, "normal"), r"m \(the number of particles\) must be an integer >= 1"),
        ((4, "normal", 0.0), "scale must be finite and positive"),
        ((4, "normal", 1.0, 0.0, 0), r"k \(the number of target directions\) must be an integer"),
    ],
    ids=["odd-rademacher", "law", "zero", "float", "scale", "k"],
)
def test_bad_quadrature_requests_raise(args, match):
    with pytest.raises(ValueError, match=match):
        sst.quadrature_particles(*args)


def test_particles_from_law():
    state = sst.particles_from_law([-1.0, 2.0], [0.25, 0.75])
    np.testing.assert_array_equal(state.a, [-1.0, 2.0])
    np.testing.assert_array_equal(state.s, [0.0, 0.0])
    np.testing.assert_array_equal(state.weights, [0.25, 0.75])
    vector = sst.particles_from_law([-1.0, 2.0], [0.25, 0.75], k=3)
    np.testing.assert_array_equal(vector.s, np.zeros((2, 3)))
    equal = sst.MeanFieldState([1.0, 2.0, 3.0, 4.0], jnp.zeros(4))
    np.testing.assert_array_equal(equal.weights, 0.25)


@pytest.mark.slow
@pytest.mark.parametrize("k", [None, 1, 3])
def test_random_init_is_consistent_with_its_weights(k):
    init = sst.random_init(jax.random.key(2), m=7, d=50, k=k)
    directions = 1 if k is None else k
    np.testing.assert_allclose(jnp.linalg.norm(init.W, axis=1), 1.0, rtol=1e-12)
    # U = [e_1 .. e_k], always (d, k).
    np.testing.assert_array_equal(init.U, jnp.eye(50, directions))
    S = init.W @ init.U
    np.testing.assert_allclose(init.state.s, S[:, 0] if k is None else S, rtol=1e-12)
    np.testing.assert_allclose(init.state.Q, init.W @ init.W.T, atol=1e-12)
    target = sst.Hermite([0.0, 1.0]) if k is None else sst.Target.committee([0.0, 1.0], k=k)
    sst.FiniteDimODE(sst.Problem(target, sst.Hermite([0.0, 1.0]), 1.0)).check_state(init.state)
    mean_field = init.mean_field()
    np.testing.assert_array_equal(mean_field.a, init.state.a)
    np.testing.assert_array_equal(mean_field.s, init.state.s)
    np.testing.assert_array_equal(mean_field.weights, 1 / 7)
    if directions > 1:  # d >= 2 is checked first
        with pytest.raises(ValueError, match=f"d must exceed the number of directions k={k}"):
            sst.random_init(jax.random.key(2), m=7, d=directions, k=k)


@pytest.mark.slow
def test_random_init_overlaps_are_of_order_one_over_sqrt_d():
    # s_i = <w_i, e_1> with w_i uniform on the sphere: E[s^2] = 1/d.
    init = sst.random_init(jax.random.key(0), m=4000, d=100)
    mean_square = float(jnp.mean(init.state.s**2))
    assert abs(mean_square - 1 / 100) < 5 * np.sqrt(2 / 4000) / 100  # 5 standard errors


@pytest.mark.parametrize(
    "law, check",
    [
        ("normal", lambda a: abs(np.std(a) - 0.5) < 0.05),
        ("uniform", lambda a: np.all(np.abs(a) <= 0.5) and np.std(a) > 0.25),
        ("rademacher", lambda a: np.all(np.abs(a) == 0.5)),
    ],
)
def test_random_init_second_layer_laws(law, check):
    init = sst.random_init(jax.random.key(1), m=1000, d=3, a_scale=0.5, a_law=law)
    assert check(np.asarray(init.state.a))


@pytest.mark.parametrize("k", [None, 3])
def test_from_weights_rebuilds_the_order_parameters(k):
    init = sst.random_init(jax.random.key(3), m=3, d=5, k=k)
    # A single direction is given as a vector u (overlaps (m,)), k directions as U (d, k).
    again = sst.RandomInit.from_weights(init.state.a, init.W, init.U[:, 0] if k is None else init.U)
    for x, y in zip(jax.tree_util.tree_leaves(again), jax.tree_util.tree_leaves(init), strict=True):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(jnp.diagonal(again.state.Q), 1.0)
    with pytest.raises(ValueError, match=r"from_weights needs W of shape \(m, d\) and U of shape"):
        sst.RandomInit.from_weights(init.state.a, init.W, jnp.ones(4))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(m=0, d=5), r"m \(the number of neurons\) must be an integer >= 1"),
        (dict(m=3, d=1), r"d \(the dimension\) must be an integer >= 2"),
        (dict(m=3, d=5, a_law="cauchy"), "a_law must be"),
        (dict(m=3, d=5, a_scale=-1.0), "a_scale must be finite and positive"),
    ],
)
def test_bad_random_init_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sst.random_init(jax.random.key(0), **kwargs)
