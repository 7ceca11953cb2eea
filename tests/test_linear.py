"""Jacobian structures and their lineax solves: the Woodbury solver (particles coupled through a
low-rank term: a test model, the mean-field ODE on the particles alone) and the Schur solver
(particles bordered by global coordinates, MeanFieldODE for k = 1 and k = 3), and their
transposes, against dense solves of the same operator
(autodiff Jacobians); derivatives through solves against closed forms and finite differences;
the small dense helpers."""

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import pytest
from helpers import cubic_problem, random_particles
from jax.flatten_util import ravel_pytree

import sst
from sst._linear import _orthonormal_range, _small_inverse, _small_matrix_inverse, _Woodbury

WIDE_ACTIVATION = [0.3, 1.0, -0.5, 0.8, 0.2, 0.1, -0.3, 0.2, 0.1]


class ParticlesOnly(sst.AbstractModel):
    """`MeanFieldODE`'s vector field on the particles `(a, x)` alone, its residuals recomputed
    from them: particles coupled through the residuals only, so that the Jacobian is a
    `ParticleJacobian` `D + B R`, its blocks built here by autodiff (`D` the particles' own
    derivatives at fixed residuals, `B` those in the residuals, `R` the residuals' in the
    particles)."""

    model: sst.MeanFieldODE

    def split(self, state):
        (a, x, _), weights = self.model.split(state)
        return (a, x[0]), weights  # k = 1: x of shape (1, m)

    def merge(self, y, weights):
        return self.model.merge((y[0], y[1][None]), weights)

    def _residuals(self, y, weights):
        return self.model.split(self.merge(y, weights))[0][2]

    def _field(self, t, y, r, weights):
        da, dx, _ = self.model(t, (y[0], y[1][None], r), weights)
        return da, dx[0]

    def __call__(self, t, y, weights):
        return self._field(t, y, self._residuals(y, weights), weights)

    def jacobian(self, t, y, weights):
        r = self._residuals(y, weights)

        def particles(y, r):
            return jnp.stack(self._field(t, y, r, weights))  # (p, m)

        p = len(y)
        ones = [
            tuple(jnp.ones_like(y[j]) if i == j else jnp.zeros_like(y[j]) for j in range(p))
            for i in range(p)
        ]
        D = jnp.stack([jax.jvp(lambda v: particles(v, r), (y,), (e,))[1] for e in ones], axis=1)
        B = jnp.moveaxis(jax.jacfwd(lambda r: particles(y, r))(r), -1, 1)  # (p, n, m)
        R = jnp.stack(
            [
                jax.jacfwd(lambda v, j=j: self._residuals(y[:j] + (v,) + y[j + 1 :], weights))(y[j])
                for j in range(p)
            ]
        )
        return sst.ParticleJacobian(D=D.reshape(p, p, -1), B=B, R=R.reshape(p, r.shape[0], -1))

    def risk(self, state):
        return self.model.risk(state)

    def residuals(self, state):
        return self.model.residuals(state)

    @property
    def residual_labels(self):
        return self.model.residual_labels

    def check_state(self, state):
        return self.model.check_state(state)

    @property
    def eps(self):
        return self.model.eps

    def parameters(self):
        return self.model.parameters()

    def with_parameters(self, **values):
        return ParticlesOnly(self.model.with_parameters(**values))


def _model(structure, eps, activation=(1.0, 1.0, 1.0, 1.0), target=None, k=None):
    """A model whose Jacobian has the given structure, on the cubic problem by default (for
    `k = 3` the cubic target on the first direction): `ParticlesOnly` (a `ParticleJacobian`)
    or `MeanFieldODE` (a `BorderedJacobian`, its residuals carried in the state)."""
    problem = cubic_problem(eps).with_parameters(activation=jnp.array(activation))
    if target is not None:
        problem = problem.with_parameters(target=jnp.array(target))
    if k is not None:
        coeffs = np.asarray(problem.target.coeffs)
        terms = {(j,) + (0,) * (k - 1): c for j, c in enumerate(coeffs)}
        terms[(1,) * k] = 0.5  # and a term of every direction
        problem = sst.Problem(sst.Target.from_terms(terms), problem.activation, eps)
    model = sst.MeanFieldODE(problem)
    return ParticlesOnly(model) if structure == "woodbury" else model


def _state(model, a, s, weights, k=None):
    if k is not None:
        # Overlaps of norm |s_i| spread over the k directions.
        s = s[:, None] * jnp.asarray(
            np.cos(np.arange(k) + 1.0) / np.linalg.norm(np.cos(np.arange(k) + 1.0))
        )
    return sst.MeanFieldState(a, s, weights)


def _setup(model, m=7, seed=4, k=None):
    state = random_particles(m, seed=seed)
    y, weights = model.split(_state(model, state.a, state.s, state.weights, k))
    return y, weights, ravel_pytree(y)


STRUCTURES = {
    "woodbury": (sst.ParticleJacobian, sst.WoodburySolver),
    "schur": (sst.BorderedJacobian, sst.SchurSolver),
}


@eqx.filter_jit
def _structured_and_dense(model, y, weights, c, b):
    """For `c I - J`: the structured operator applied to b, materialised, its structured solve
    and transpose solve; and the dense Jacobian by autodiff of the vector field (independent of the
    closed form). One compilation per shape instead of one per operation."""
    operator, solver = model.jacobian(0.0, y, weights).shifted(c)
    x = lx.linear_solve(operator, b, solver).value
    state = solver.init(operator, {})
    x_t = solver.compute(solver.transpose(state, {})[0], b, {})[0]
    J = sst.DenseJacobian.of(model, 0.0, y, weights).matrix
    return operator.mv(b), operator.as_matrix(), x, x_t, J


@pytest.mark.slow
@pytest.mark.parametrize(
    ("structure", "k"),
    [("woodbury", None), ("schur", None), ("schur", 3)],
    ids=["woodbury", "schur", "schur-k3"],
)
@pytest.mark.parametrize("activation", [[1.0, 1.0, 1.0, 1.0], WIDE_ACTIVATION])
@pytest.mark.parametrize("eps", [1e-2, 1e-10])
def test_structured_solve_equals_dense_solve(structure, k, activation, eps, request):
    if k == 3 and eps == 1e-10 and activation[0] == 1.0:
        # Measured: normwise backward error 3.2e-11 of the Schur solve (LU: 1e-17), where k = 1
        # stays below 1e-12. Inverting the per-particle 4 x 4 blocks by Gauss-Jordan with partial
        # pivoting instead of their adjugate gave 2.6e-11: the blocks are not the cause.
        request.applymarker(
            pytest.mark.xfail(
                strict=True,
                reason=(
                    "known limitation: for k = 3 at eps = 1e-10 the Schur solve's backward error "
                    "is 3e-11 (LU's 1e-17; k = 1 stays below 1e-12); a pivoted inverse of the "
                    "4 x 4 per-particle blocks gives 2.6e-11, so the loss is elsewhere in the "
                    "Schur complement"
                ),
            )
        )
    model = _model(structure, eps, activation, k=k)
    y, weights, (flat, _) = _setup(model, k=k)
    b = np.random.default_rng(5).standard_normal(flat.shape)
    jacobian = model.jacobian(0.0, y, weights)
    jacobian_type, solver_type = STRUCTURES[structure]
    assert isinstance(jacobian, jacobian_type)
    assert isinstance(jacobian.shifted(jnp.asarray(1.0))[1], solver_type)
    for c in (0.7, 1e3, 1e12):
        mv, materialised, x, x_t, J = _structured_and_dense(model, y, weights, jnp.asarray(c), b)
        matrix = c * np.eye(flat.shape[0]) - np.asarray(J)
        np.testing.assert_allclose(mv, matrix @ b, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(materialised, matrix, rtol=1e-12, atol=1e-12 * c)
        # The transpose solve is what reverse-mode differentiation of a step uses.
        for M, solution in ((matrix, x), (matrix.T, x_t)):
            # Backward error: the solution solves a system within roundoff of M x = b.
            norm = np.linalg.norm(M, ord=np.inf)
            scale = norm * np.max(np.abs(solution)) + np.max(np.abs(b))
            assert float(np.max(np.abs(M @ solution - b)) / scale) < 1e-12
            if np.linalg.cond(M) < 1e8:
                np.testing.assert_allclose(solution, np.linalg.solve(M, b), rtol=1e-8)


@pytest.mark.slow
def test_dense_jacobian_solves_by_lu():
    model = sst.MeanFieldODE(cubic_problem(), interaction="dense")
    assert not model.uses_moments
    y, weights, (flat, unravel) = _setup(model)
    jacobian = model.jacobian(0.0, y, weights)
    assert isinstance(jacobian, sst.DenseJacobian)
    reference = jax.jacfwd(lambda f: ravel_pytree(model(0.0, unravel(f), weights))[0])(flat)
    np.testing.assert_allclose(jacobian.matrix, reference, rtol=1e-14, atol=1e-14)
    operator, solver = jacobian.shifted(jnp.asarray(2.0))
    assert isinstance(solver, lx.LU)
    b = jnp.arange(flat.shape[0], dtype=float)
    expected = np.linalg.solve(2.0 * np.eye(flat.shape[0]) - np.asarray(jacobian.matrix), b)
    np.testing.assert_allclose(lx.linear_solve(operator, b, solver).value, expected, rtol=1e-10)


def _solve_functional(model, weights, unravel, w):
    """`w . (c I - J(y))^{-1} b`, through the structure the model hands over."""

    def f(c, y_flat, b):
        operator, solver = model.jacobian(0.0, unravel(y_flat), weights).shifted(c)
        return w @ lx.linear_solve(operator, b, solver).value

    return f


@pytest.mark.slow
@pytest.mark.parametrize("structure", STRUCTURES)
def test_derivatives_through_a_structured_solve(structure):
    model = _model(structure, 1e-2)
    y, weights, (flat, unravel) = _setup(model)
    rng = np.random.default_rng(6)
    b, w = rng.standard_normal(flat.shape), rng.standard_normal(flat.shape)
    c = jnp.asarray(5.0)
    f = _solve_functional(model, weights, unravel, w)
    value_and_grad = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2)))
    J = np.asarray(sst.DenseJacobian.of(model, 0.0, y, weights).matrix)
    M = 5.0 * np.eye(flat.shape[0]) - J
    value, (d_c, d_y, d_b) = value_and_grad(c, flat, b)
    np.testing.assert_allclose(value, w @ np.linalg.solve(M, b), rtol=1e-10)
    # Closed forms: d/db = M^{-T} w and d/dc = -w^T M^{-2} b.
    np.testing.assert_allclose(d_b, np.linalg.solve(M.T, w), rtol=1e-9)
    np.testing.assert_allclose(d_c, -w @ np.linalg.solve(M, np.linalg.solve(M, b)), rtol=1e-9)
    # d/dy goes through the Jacobian's structure: central differences of the value,
    # and the same derivative through a dense LU solve of the autodiff Jacobian.
    h = 1e-6
    steps = h * np.eye(flat.shape[0])
    fd = np.array(
        [
            (value_and_grad(c, flat + e, b)[0] - value_and_grad(c, flat - e, b)[0]) / (2 * h)
            for e in steps
        ]
    )
    np.testing.assert_allclose(d_y, fd, rtol=1e-5, atol=1e-8 * np.max(np.abs(fd)))

    @jax.jit
    @jax.grad
    def dense(y_flat):
        matrix = sst.DenseJacobian.of(model, 0.0, unravel(y_flat), weights).matrix
        return w @ jnp.linalg.solve(5.0 * jnp.eye(flat.shape[0]) - matrix, b)

    np.testing.assert_allclose(d_y, dense(flat), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("solver", [sst.WoodburySolver(), sst.SchurSolver()])
def test_structured_solvers_only_take_their_operator(solver):
    name = type(solver).__name__
    with pytest.raises(ValueError, match=f"{name} solves only the operator of .*Jacobian.shifted"):
        lx.linear_solve(lx.MatrixLinearOperator(jnp.eye(3)), jnp.ones(3), solver)


@pytest.mark.slow
def test_small_matrix_inverse_pivots():
    # A zero (and a tiny) leading pivot break elimination without row exchanges; 12 x 12 is
    # above the unrolled elimination's size.
    swap = jnp.array([[0.0, 1.0, 2.0], [1.0, 0.0, 3.0], [4.0, 5.0, 0.0]])
    tiny = jnp.array([[1e-14, 1.0], [1.0, 1.0]])
    rng = np.random.default_rng(3)
    for M in (swap, tiny, *(jnp.asarray(rng.standard_normal((n, n))) for n in (6, 8, 12))):
        inv = _small_matrix_inverse(M)
        np.testing.assert_allclose(inv @ M, jnp.eye(M.shape[0]), atol=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("p", [3, 4])
def test_small_inverses_of_blocks_with_a_stiff_row(p):
    # Blocks of 1 + k coordinates (k = 2, 3) are inverted by their adjugate: as accurate as LU
    # up to each block's conditioning, also with one row scaled as the stiff a-rate's.
    A = np.random.default_rng(p).standard_normal((p, p, 200))
    A[0, 1:] *= 1e6
    got = np.moveaxis(np.array([[np.asarray(x) for x in row] for row in _small_inverse(A)]), -1, 0)
    blocks = np.moveaxis(A, -1, 0)
    error = np.max(np.abs(got - np.linalg.inv(blocks)), axis=(1, 2))
    scale = np.max(np.abs(np.linalg.inv(blocks)), axis=(1, 2))
    assert np.all(error <= 1e-14 * np.linalg.cond(blocks) * scale)


@pytest.mark.parametrize("p", [1, 2, 3, 4])
def test_small_inverse_of_each_block(p):
    A = np.random.default_rng(p).standard_normal((p, p, 5)) + 3.0 * np.eye(p)[:, :, None]
    A = jnp.asarray(A)
    inv = _small_inverse(A)
    for k in range(5):
        block = np.array([[float(inv[i][j][k]) for j in range(p)] for i in range(p)])
        np.testing.assert_allclose(block, np.linalg.inv(np.asarray(A[:, :, k])), rtol=1e-12)


# Solves at tiny eps.


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


def _learned_state(structure, eps):
    """A state as after learning at tiny eps: |a| ~ 1e8, |s| ~ 1e-2, residuals at rounding level.

    In `(a, theta)` its vector field is `B^T r` with `r` rounding noise: huge (1e10 in `da/dt`)
    and almost entirely in the range of the stiff low-rank part, the case the plain Woodbury
    formula solves with a backward error of order 1.
    """
    model = _model(structure, eps, activation=[0.5, 1, 1, 1, 1], target=[0, 1, 1, 1, 1])
    key_a, key_s = jax.random.split(jax.random.PRNGKey(0))
    m = 16
    s = 1e-2 * jax.random.uniform(key_s, (m,), minval=-1.0, maxval=1.0)
    a = 1e8 * jax.random.normal(key_a, (m,))
    weights = jnp.full(m, 1.0 / m)
    # Fit the moments to the target (minimum-norm corrections of a), to rounding.
    powers = jnp.stack([s**k for k in range(5)])
    sigma = jnp.array([0.5, 1, 1, 1, 1.0])
    for _ in range(4):
        r = model.residuals(_state(model, a, s, weights))
        a = a + jnp.linalg.lstsq(sigma[:, None] * powers * weights, r)[0]
    y, weights = model.split(_state(model, a, s, weights))
    return model, y, weights


@pytest.mark.slow
@pytest.mark.parametrize("structure", STRUCTURES)
@pytest.mark.parametrize("eps", [1e-2, 1e-10])
def test_structured_solves_equal_dense_solves_with_rank_deficient_coupling(structure, eps):
    # sigma_2 = 0 makes a column of B zero, and particles at s = 0 make the powers s^k
    # dependent: the QR of B^T then has zero columns, which must drop out of the solve.
    model = _model(structure, eps, activation=[0.3, 1.0, 0.0, 0.8])
    key_a, key_t, key_b = jax.random.split(jax.random.PRNGKey(4), 3)
    weights = jnp.full(7, 1.0 / 7)
    for theta in (jax.random.uniform(key_t, (7,), minval=-1.2, maxval=1.2), jnp.zeros(7)):
        state = _state(model, 3 * jax.random.normal(key_a, (7,)), jnp.sin(theta), weights)
        y, weights = model.split(state)
        jacobian = model.jacobian(0.0, y, weights)
        flat, unravel = ravel_pytree(y)
        J = jax.jacfwd(
            lambda f, unravel=unravel, weights=weights: ravel_pytree(
                model(0.0, unravel(f), weights)
            )[0]
        )(flat)
        b = jax.random.normal(key_b, flat.shape)
        for c in (0.7, 1e3, 1e12):
            M = c * jnp.eye(flat.shape[0]) - J
            operator = jacobian.shifted(jnp.asarray(c))[0]
            np.testing.assert_allclose(
                operator.as_matrix(), M, rtol=1e-12, atol=1e-12 * (c + jnp.abs(J).max())
            )
            for matrix, transpose in ((M, False), (M.T, True)):
                x = _solve(jacobian, c, b, transpose)
                assert _backward_error(matrix, x, b) < 1e-13
                if jnp.linalg.cond(matrix) < 1e8:
                    np.testing.assert_allclose(x, jnp.linalg.solve(matrix, b), rtol=1e-8)


@pytest.mark.slow
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


@pytest.mark.slow
@pytest.mark.parametrize("structure", STRUCTURES)
@pytest.mark.parametrize("eps", [1e-20, 1e-30])
def test_solves_are_backward_stable_when_the_right_hand_side_is_stiff(structure, eps):
    model, y, weights = _learned_state(structure, eps)
    jacobian = model.jacobian(0.0, y, weights)
    flat, unravel = ravel_pytree(y)
    J = jax.jacfwd(lambda f: ravel_pytree(model(0.0, unravel(f), weights))[0])(flat)
    b = ravel_pytree(model(0.0, y, weights))[0]
    assert jnp.max(jnp.abs(b)) > 1e6  # rounding noise of the residuals, divided by eps
    for h in (1e-3, 1e-1, 10.0):
        c = 1.0 / (0.25 * h)  # the Rodas4 stage matrix
        M = c * jnp.eye(b.shape[0]) - J
        # Within a few thousand roundings (2e-13 measured at eps 1e-20), or no worse than
        # LAPACK's LU with partial pivoting where that is worse (the bordered system at 1e-30:
        # 2e-6 .. 3e-4 measured for the Schur solve, 2e-5 .. 1.0 for LU).
        lu = _backward_error(M, jnp.linalg.solve(M, b), b)
        assert _backward_error(M, _solve(jacobian, c, b), b) < max(1e-11, lu)
        if structure == "woodbury":
            # The plain formula (no split of the right-hand side) is not backward stable here.
            operator, solver = jacobian.shifted(jnp.asarray(c))
            factors = solver.init(operator, {})[0]
            plain = _Woodbury(
                factors.A_inv, factors.A_inv_U, factors.cap_inv, factors.V_A_inv, None
            ).solve(b)
            assert _backward_error(M, plain, b) > 1e-3
