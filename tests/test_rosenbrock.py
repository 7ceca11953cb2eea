import diffrax as dfx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import sst
from sst.rosenbrock import _gauss_jordan_inverse


def _fixed_step_error(field, y0, t1, exact, n_steps):
    sol = dfx.diffeqsolve(
        dfx.ODETerm(field),
        sst.Rodas4(),
        0.0,
        t1,
        t1 / n_steps,
        y0,
        stepsize_controller=dfx.ConstantStepSize(),
        max_steps=n_steps + 1,
    )
    return float(jnp.max(jnp.abs(sol.ys[-1] - exact)))


def test_rodas4_is_fourth_order_on_a_nonlinear_problem():
    # y' = -y^2, y(0) = 1 has y = 1 / (1 + t); the non-autonomous z' = -z + cos t + sin t,
    # z(0) = 1, has z = sin t + exp(-t) and exercises the df/dt terms of the stages.
    def field(t, y, args):
        return jnp.stack([-(y[0] ** 2), -y[1] + jnp.cos(t) + jnp.sin(t)])

    t1 = 2.0
    exact = jnp.array([1 / (1 + t1), jnp.sin(t1) + jnp.exp(-t1)])
    errors = [_fixed_step_error(field, jnp.array([1.0, 1.0]), t1, exact, n) for n in (10, 20, 40)]
    orders = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))
    assert np.all((orders > 3.7) & (orders < 4.6)), (errors, orders)


def test_rodas4_is_stable_and_accurate_on_a_very_stiff_problem():
    # Prothero-Robinson: y' = lam (y - sin t) + cos t, y(0) = 0, exact y = sin t, lam = -1e10.
    # An L-stable, stiffly accurate method stays on sin t with steps 1e9 times 1/|lam|.
    def field(t, y, args):
        return -1e10 * (y - jnp.sin(t)) + jnp.cos(t)

    err = _fixed_step_error(field, jnp.array([0.0]), 1.0, jnp.sin(1.0), 20)
    assert err < 1e-8, err


def _random_particles(key, m):
    ka, kt, kw = jax.random.split(key, 3)
    w = jax.random.uniform(kw, (m,), minval=0.1, maxval=1.0)
    return (
        (jax.random.normal(ka, (m,)) * 3, jax.random.uniform(kt, (m,), minval=-1.2, maxval=1.2)),
        w / w.sum(),
    )


@pytest.mark.parametrize(
    "activation", [[1.0, 1.0, 1.0, 1.0], [0.3, 1.0, -0.5, 0.8, 0.2, 0.1, -0.3, 0.2, 0.1]]
)
@pytest.mark.parametrize("eps", [1e-2, 1e-10])
def test_woodbury_solve_equals_dense_solve(activation, eps):
    model = sst.MeanFieldODE(
        sst.Problem(sst.Hermite([0.5, 1.0, 1.0, 1.0]), sst.Hermite(activation), eps)
    )
    y, weights = _random_particles(jax.random.PRNGKey(4), 7)
    flat, unravel = ravel_pytree(y)
    J = jax.jacfwd(lambda f: ravel_pytree(model.vector_field(0.0, unravel(f), weights))[0])(flat)
    b = jax.random.normal(jax.random.PRNGKey(5), flat.shape)
    parts = model.particle_jacobian(y, weights)
    for c in (0.7, 1e3, 1e12):
        M = c * jnp.eye(flat.shape[0]) - J
        np.testing.assert_allclose(parts.shifted_matvec(c, b), M @ b, rtol=1e-12, atol=1e-12)
        factor = parts.shifted_solver(c)
        # The transpose solve is what reverse-mode differentiation of a step uses.
        for matrix, x in ((M, factor.solve(b)), (M.T, factor.transpose_solve(b))):
            # Backward error: x solves a system within roundoff of matrix x = b.
            norm = jnp.linalg.norm(matrix, ord=jnp.inf)
            scale = norm * jnp.max(jnp.abs(x)) + jnp.max(jnp.abs(b))
            assert float(jnp.max(jnp.abs(matrix @ x - b)) / scale) < 1e-12
            if jnp.linalg.cond(matrix) < 1e8:
                np.testing.assert_allclose(x, jnp.linalg.solve(matrix, b), rtol=1e-8)


def test_gauss_jordan_inverse_pivots():
    # A zero (and a tiny) leading pivot break elimination without row exchanges.
    swap = jnp.array([[0.0, 1.0, 2.0], [1.0, 0.0, 3.0], [4.0, 5.0, 0.0]])
    tiny = jnp.array([[1e-14, 1.0], [1.0, 1.0]])
    random = jax.random.normal(jax.random.PRNGKey(3), (6, 6))
    for M in (swap, tiny, random):
        inv = _gauss_jordan_inverse(M)
        np.testing.assert_allclose(inv @ M, jnp.eye(M.shape[0]), atol=1e-12)


def test_dense_interaction_has_no_particle_structure():
    model = sst.MeanFieldODE(sst.Problem(sst.Hermite([1.0, 1.0]), sst.relu(), 1e-3))
    y, weights = _random_particles(jax.random.PRNGKey(0), 3)
    assert model.particle_jacobian(y, weights) is None


def test_structured_and_dense_rodas_give_the_same_trajectory():
    problem = sst.Problem(
        sst.Hermite([0.5, 1.0, 1.0, 1.0]), sst.Hermite([1.0, 1.0, 1.0, 1.0]), 1e-6
    )
    ts = jnp.concatenate([jnp.zeros(1), jnp.logspace(-9, 0, 19)])
    y0 = sst.quadrature_particles(6)
    fast = sst.solve(sst.MeanFieldODE(problem), y0, ts, solver=sst.Rodas4("auto"))
    dense = sst.solve(sst.MeanFieldODE(problem), y0, ts, solver=sst.Rodas4("dense"))
    np.testing.assert_allclose(fast.risk, dense.risk, rtol=1e-7, atol=1e-12)
    np.testing.assert_allclose(fast.s, dense.s, atol=1e-8)


def test_bad_linear_solver_raises():
    with pytest.raises(ValueError, match="linear_solver"):
        sst.Rodas4("woodbury-please")
