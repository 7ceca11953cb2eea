"""The Woodbury solve of `ParticleJacobian` stays backward stable at tiny eps (issue 12).

(To be merged into tests/test_linear.py.)
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import sst
from sst._linear import _orthonormal_range, _Woodbury


def _dense(jacobian: sst.ParticleJacobian) -> jnp.ndarray:
    """`J = D + B R` as a dense matrix in the coordinate-major layout of `ravel_pytree`."""
    D, B, R = jacobian.D, jacobian.B, jacobian.R
    p, _, m = B.shape
    rows = [
        jnp.concatenate([jnp.diag(D[i, j]) + B[i].T @ R[j] for j in range(p)], axis=1)
        for i in range(p)
    ]
    return jnp.concatenate(rows, axis=0)


def _backward_error(matrix, x, b) -> float:
    """Componentwise backward error (Oettli-Prager): the smallest relative change of each entry
    of `matrix` and `b` for which `x` is the exact solution."""
    scale = jnp.abs(matrix) @ jnp.abs(x) + jnp.abs(b)
    return float(jnp.max(jnp.abs(matrix @ x - b) / scale))


def _solve(jacobian, c, b, transpose=False):
    """`(c I - J)^{-1} b`, or `(c I - J)^{-T} b`, by the solver lineax uses for it."""
    operator, solver = jacobian.shifted(jnp.asarray(c))
    state = solver.init(operator, {})
    if transpose:
        state = solver.transpose(state, {})[0]
    return solver.compute(state, b, {})[0]


def _learned_state(eps):
    """A state as after learning at tiny eps: |a| ~ 1e8, |s| ~ 1e-2, residuals at rounding level.

    Its vector field is `B^T r` with `r` rounding noise: huge (1e10 in `da/dt`) and almost
    entirely in the range of the stiff low-rank part, the case the plain Woodbury formula
    solves with a backward error of order 1.
    """
    model = sst.MeanFieldODE(
        sst.Problem(sst.Hermite([0, 1, 1, 1, 1]), sst.Hermite([0.5, 1, 1, 1, 1]), eps)
    )
    key_a, key_s = jax.random.split(jax.random.PRNGKey(0))
    m = 16
    s = 1e-2 * jax.random.uniform(key_s, (m,), minval=-1.0, maxval=1.0)
    a = 1e8 * jax.random.normal(key_a, (m,))
    weights = jnp.full(m, 1.0 / m)
    # Fit the moments to the target (minimum-norm corrections of a), to rounding.
    powers = jnp.stack([s**k for k in range(5)])
    sigma = model.problem.activation.coeffs
    for _ in range(4):
        r = model.residuals(sst.MeanFieldState(a, s, weights))
        a = a + jnp.linalg.lstsq(sigma[:, None] * powers * weights, r)[0]
    return model, (a, jnp.arcsin(s)), weights


@pytest.mark.parametrize("eps", [1e-2, 1e-10])
def test_woodbury_solves_equal_dense_solves_with_rank_deficient_coupling(eps):
    # sigma_2 = 0 makes a column of B zero, and particles at s = 0 make the powers s^k
    # dependent: the QR of B^T then has zero columns, which must drop out of the solve.
    model = sst.MeanFieldODE(
        sst.Problem(sst.Hermite([0.5, 1.0, 1.0, 1.0]), sst.Hermite([0.3, 1.0, 0.0, 0.8]), eps)
    )
    key_a, key_t, key_b = jax.random.split(jax.random.PRNGKey(4), 3)
    weights = jnp.full(7, 1.0 / 7)
    for theta in (jax.random.uniform(key_t, (7,), minval=-1.2, maxval=1.2), jnp.zeros(7)):
        y = (3 * jax.random.normal(key_a, (7,)), theta)
        jacobian = model.jacobian(0.0, y, weights)
        flat, unravel = ravel_pytree(y)
        J = jax.jacfwd(lambda f, unravel=unravel: ravel_pytree(model(0.0, unravel(f), weights))[0])(
            flat
        )
        np.testing.assert_allclose(_dense(jacobian), J, rtol=1e-12, atol=1e-12 * jnp.abs(J).max())
        b = jax.random.normal(key_b, flat.shape)
        for c in (0.7, 1e3, 1e12):
            M = c * jnp.eye(flat.shape[0]) - J
            for matrix, transpose in ((M, False), (M.T, True)):
                x = _solve(jacobian, c, b, transpose)
                assert _backward_error(matrix, x, b) < 1e-13
                if jnp.linalg.cond(matrix) < 1e8:
                    np.testing.assert_allclose(x, jnp.linalg.solve(matrix, b), rtol=1e-8)


def test_orthonormal_range_factors_b():
    B = jax.random.normal(jax.random.PRNGKey(1), (2, 5, 9)).at[:, 3].set(0.0)
    B = B.at[:, 4].set(B[:, 0] - 2 * B[:, 1])  # a dependent column
    U, T = _orthonormal_range(B)
    U = jnp.stack(U)  # (p, n, m)
    flat_B, flat_U = B.transpose(1, 0, 2).reshape(5, -1), U.transpose(1, 0, 2).reshape(5, -1)
    np.testing.assert_allclose(flat_U.T @ T, flat_B.T, atol=1e-13)
    gram = flat_U @ flat_U.T
    np.testing.assert_allclose(gram, np.diag([1.0, 1.0, 1.0, 0.0, 0.0]), atol=1e-14)
    assert np.allclose(np.triu(T), T)


@pytest.mark.parametrize("eps", [1e-20, 1e-30])
def test_woodbury_is_backward_stable_when_the_right_hand_side_is_stiff(eps):
    model, y, weights = _learned_state(eps)
    jacobian = model.jacobian(0.0, y, weights)
    J = _dense(jacobian)
    b = ravel_pytree(model(0.0, y, weights))[0]
    assert jnp.max(jnp.abs(b)) > 1e6  # rounding noise of the residuals, divided by eps
    for h in (1e-3, 1e-1, 10.0):
        c = 1.0 / (0.25 * h)  # the Rodas4 stage matrix
        M = c * jnp.eye(b.shape[0]) - J
        # Within a few thousand roundings (a dense LU gets 1e-16; 2e-13 measured at eps 1e-20).
        assert _backward_error(M, _solve(jacobian, c, b), b) < 1e-11
        # The plain formula (no split of the right-hand side) is not backward stable here.
        operator, solver = jacobian.shifted(jnp.asarray(c))
        factors = solver.init(operator, {})[0]
        plain = _Woodbury(
            factors.A_inv, factors.A_inv_U, factors.cap_inv, factors.V_A_inv, None
        ).solve(b)
        assert _backward_error(M, plain, b) > 1e-3
