"""Jacobian structures of the models, and the lineax operators and solvers for `c I - J`.

A Rosenbrock step solves linear systems with the matrix `c I - J`, `J` the Jacobian of the
vector field (see the docs' [solver page][rodas4]). Every model says explicitly how its Jacobian is
built (`AbstractModel.jacobian`) by returning one of these structures; each structure gives
the lineax operator `c I - J` and the lineax solver for it. Implicit differentiation of the
solves comes from `lineax.linear_solve`.

- `DenseJacobian`: the flattened Jacobian as a matrix, solved by LU (O(n^3) per step).
- `ParticleJacobian`: particles coupled only through a few global quantities (the Hermite
  residuals): `J = D + B R` with `D` block diagonal over particles and `B R` of low rank, solved
  by the Woodbury identity in O(m p^3 + m p n^2 + n^3), with the part of the right-hand side in
  the range of the low-rank term solved separately (backward stable at tiny eps, where the plain
  formula is not). lineax has no Woodbury solver, hence `WoodburySolver` here.
- `BorderedJacobian`: particles coupled through a few global coordinates that are part of the
  state (`MeanFieldODE` carries its Hermite residuals): `J = [[D, B], [E, -M]]`, solved by the
  Schur complement on the global coordinates (`SchurSolver`) in O(m p^3 + m p n^2 + n^3).
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any, ClassVar

import equinox as eqx
import equinox.internal as eqxi
import jax
import jax.numpy as jnp
import lineax as lx
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Float, PyTree


class AbstractJacobian(eqx.Module):
    """The Jacobian of a model's vector field with respect to its flattened solver coordinates
    (laid out as `jax.flatten_util.ravel_pytree` lays out the coordinates), in a form that
    knows how to solve with `c I - J`."""

    @abc.abstractmethod
    def shifted(
        self, c: Float[Array, ""]
    ) -> tuple[lx.AbstractLinearOperator, lx.AbstractLinearSolver]:
        """The operator `c I - J` on flat vectors, and the lineax solver to use for it."""


class DenseJacobian(AbstractJacobian):
    """A dense Jacobian matrix `(n, n)`, solved by LU.

    Build it with `DenseJacobian.of(vector_field, t, y, args)`.
    """

    matrix: Float[Array, "n n"]

    @classmethod
    def of(cls, vector_field: Callable, t: Any, y: PyTree[Array], args: Any) -> DenseJacobian:
        """The Jacobian of `vector_field(t, y, args)` in `y`, by forward-mode autodiff."""
        flat, unravel = ravel_pytree(y)

        def rate(x):
            return ravel_pytree(vector_field(t, unravel(x), args))[0]

        return cls(jax.jacfwd(rate)(flat))

    def shifted(self, c):
        n = self.matrix.shape[0]
        return lx.MatrixLinearOperator(
            c * jnp.eye(n, dtype=self.matrix.dtype) - self.matrix
        ), lx.LU()


class ParticleJacobian(AbstractJacobian):
    """The Jacobian `J = D + B R` of a particle system with low-rank global coupling.

    The coordinates are `p` arrays of `m` particles each (for `MeanFieldODE`, `(a, theta)`),
    flattened coordinate-major as `ravel_pytree` lays out such a tuple.

    **Fields:**

    - `D`: `(p, p, m)`; `D[i, j]` is the derivative of each particle's rate of coordinate `i`
      with respect to its own coordinate `j`, the global quantities held fixed.
    - `B`: `(p, n, m)`; derivative of each particle's rates with respect to the `n` global
      quantities (the Hermite residuals).
    - `R`: `(p, n, m)`; derivative of the global quantities with respect to every coordinate.
    """

    D: Float[Array, "p p m"]
    B: Float[Array, "p n m"]
    R: Float[Array, "p n m"]

    def shifted(self, c):
        p, _, m = self.B.shape
        return _operator(_ShiftedParticleMatvec(c, self), p * m, self.B.dtype), WoodburySolver()


class _ShiftedParticleMatvec(eqx.Module):
    """`x -> (c I - J) x` for a `ParticleJacobian`: the operator lineax differentiates."""

    c: Float[Array, ""]
    jacobian: ParticleJacobian

    def __call__(self, x_flat: Array) -> Array:
        D, B, R = self.jacobian.D, self.jacobian.B, self.jacobian.R
        p = B.shape[0]
        x = x_flat.reshape(p, -1)
        # Reductions rather than dots (unlike the solve): only derivatives use this product, and
        # with dots a gradient of benchmarks/batch.py's setup cost ~15% more.
        global_part = sum(jnp.sum(R[j] * x[j], axis=-1) for j in range(p))
        return jnp.concatenate(
            [
                self.c * x[i]
                - sum(D[i, j] * x[j] for j in range(p))
                - jnp.sum(global_part[:, None] * B[i], axis=0)
                for i in range(p)
            ]
        )


class _Woodbury(eqx.Module):
    """Factored `c I - J = A - U V` (`U V = B R`): `A^{-1}` as nested lists of per-particle
    entries, `A^{-1} U` and `V A^{-1}` per coordinate, the inverse of the small capacitance
    matrix `I - V A^{-1} U`, and optionally `U` itself with orthonormal columns (`range_basis`).

    With `range_basis`, the part `U g` of the right-hand side in the range of `U` is split off
    and solved by `(A - U V)^{-1} U = A^{-1} U (I - V A^{-1} U)^{-1}`, so it never goes through
    `A^{-1} b`. That matters when the right-hand side lies almost in the range of the stiff
    low-rank part, as the vector field of `MeanFieldODE` does (`f = B^T r`): there the plain
    formula forms the solution as the difference of two terms up to 1e15 times larger than it
    (at eps = 1e-20), and its rounding errors are not those of any nearby matrix.
    """

    A_inv: list[list[Array]]
    A_inv_U: list[Array]
    cap_inv: Array
    V_A_inv: list[Array]
    range_basis: list[Array] | None

    def solve(self, b_flat: Array) -> Array:
        """`A^{-1} b' + (A^{-1} U) cap_inv (g + (V A^{-1}) b')` with `b = U g + b'`
        (`g = 0` without `range_basis`; two projection passes, as in Gram-Schmidt, leave
        `b'` orthogonal to the range to rounding)."""
        p = len(self.A_inv_U)
        b = b_flat.reshape(p, -1)
        g = 0.0
        if self.range_basis is not None:
            for _ in range(2):
                g_pass = sum(self.range_basis[j] @ b[j] for j in range(p))
                b = jnp.stack([b[i] - g_pass @ self.range_basis[i] for i in range(p)])
                g = g + g_pass
        z = self.cap_inv @ (g + sum(self.V_A_inv[j] @ b[j] for j in range(p)))
        return jnp.concatenate(
            [sum(self.A_inv[i][j] * b[j] for j in range(p)) + z @ self.A_inv_U[i] for i in range(p)]
        )

    def transpose(self) -> _Woodbury:
        """The factors of `(c I - J)^T = A^T - V^T U^T`: the same identity with every factor
        transposed (plain, without the split: the range of `V^T` is not at hand)."""
        p = len(self.A_inv)
        A_inv_T = [[self.A_inv[j][i] for j in range(p)] for i in range(p)]
        return _Woodbury(A_inv_T, self.V_A_inv, self.cap_inv.T, self.A_inv_U, None)


class _AbstractFactoredSolver(lx.AbstractLinearSolver):
    """A lineax solver for the one operator type `operator_type` (a structured `c I - J`): it
    factors the operator once (`factor`) and solves, or solves with the transpose, by the
    factors' `solve` and `transpose`. `structure` names the Jacobian whose `shifted` makes it."""

    operator_type: eqx.AbstractClassVar[type]
    structure: eqx.AbstractClassVar[str]

    @abc.abstractmethod
    def factor(self, fn) -> eqx.Module:
        """The factors of the operator whose matvec is `fn` (an `operator_type`)."""

    def init(self, operator, options):
        del options
        fn = getattr(operator, "fn", None)
        if not isinstance(fn, self.operator_type):
            raise ValueError(
                f"{type(self).__name__} solves only the operator of {self.structure}.shifted; "
                "use lineax.LU() for other operators."
            )
        return self.factor(fn), eqxi.Static(False)

    def compute(self, state, vector, options):
        del options
        factors, transposed = state
        factors = factors.transpose() if transposed.value else factors
        return factors.solve(vector), lx.RESULTS.successful, {}

    def transpose(self, state, options):
        factors, transposed = state
        return (factors, eqxi.Static(not transposed.value)), {}

    def conj(self, state, options):
        return state, {}

    def assume_full_rank(self):
        return True


class WoodburySolver(_AbstractFactoredSolver):
    """lineax solver for the operator of `ParticleJacobian.shifted`, by the Woodbury identity.

    `(A - U V)^{-1} = A^{-1} + A^{-1} U (I - V A^{-1} U)^{-1} V A^{-1}` with `A = c I - D`
    block diagonal and `B R = U V` from a QR factorisation `B^T = U T` (`U` orthonormal
    columns, `V = T R`): all of it elementwise or matrix-vector products over particles,
    O(m p^3 + m p n^2 + n^3). The right-hand side's part in the range of `U` is solved
    separately (see `_Woodbury`), which keeps the solve backward stable when that part
    dominates.
    """

    operator_type: ClassVar[type] = _ShiftedParticleMatvec
    structure: ClassVar[str] = "ParticleJacobian"

    def factor(self, fn: _ShiftedParticleMatvec) -> _Woodbury:
        c, D, B, R = fn.c, fn.jacobian.D, fn.jacobian.B, fn.jacobian.R
        p, n, m = B.shape
        U, T = _orthonormal_range(B)
        V = [T @ R[i] for i in range(p)]
        A_inv = _small_inverse(c * jnp.eye(p, dtype=D.dtype)[:, :, None] - D)
        A_inv_U = [sum(A_inv[i][j] * U[j] for j in range(p)) for i in range(p)]
        V_A_inv = [sum(V[i] * A_inv[i][j] for i in range(p)) for j in range(p)]
        capacitance = jnp.eye(n, dtype=D.dtype) - sum(V[i] @ A_inv_U[i].T for i in range(p))
        return _Woodbury(A_inv, A_inv_U, _small_matrix_inverse(capacitance), V_A_inv, U)


class BorderedJacobian(AbstractJacobian):
    """The Jacobian of particles coupled through `n` global coordinates of the state itself.

    The coordinates are `p` arrays of `m` particles each, then the `n` global coordinates `r`
    (for `MeanFieldODE`, `(a, theta, r)`), flattened as `ravel_pytree` lays out such a tuple:

    `J = [[D, B], [E, -M]]`: each particle's rates depend on its own coordinates (`D`, block
    diagonal) and on `r` (`B`); the rate of `r` depends on every particle (`E`) and on `r`
    itself (`-M`).

    **Fields:**

    - `D`: `(p, p, m)`; `D[i, j]` is the derivative of each particle's rate of coordinate `i`
      with respect to its own coordinate `j`.
    - `B`: `(p, n, m)`; derivative of each particle's rates with respect to `r`.
    - `E`: `(p, n, m)`; derivative of the rate of `r` with respect to each particle coordinate.
    - `M`: `(n, n)`; minus the derivative of the rate of `r` with respect to `r`.
    """

    D: Float[Array, "p p m"]
    B: Float[Array, "p n m"]
    E: Float[Array, "p n m"]
    M: Float[Array, "n n"]

    def shifted(self, c):
        p, n, m = self.B.shape
        return _operator(_ShiftedBorderedMatvec(c, self), p * m + n, self.B.dtype), SchurSolver()


class _ShiftedBorderedMatvec(eqx.Module):
    """`x -> (c I - J) x` for a `BorderedJacobian`: the operator lineax differentiates."""

    c: Float[Array, ""]
    jacobian: BorderedJacobian

    def __call__(self, x_flat: Array) -> Array:
        D, B, E, M = self.jacobian.D, self.jacobian.B, self.jacobian.E, self.jacobian.M
        p, n, m = B.shape
        x, x_r = x_flat[: p * m].reshape(p, m), x_flat[p * m :]
        particles = [
            self.c * x[i] - sum(D[i, j] * x[j] for j in range(p)) - x_r @ B[i] for i in range(p)
        ]
        border = self.c * x_r + M @ x_r - sum(E[j] @ x[j] for j in range(p))
        return jnp.concatenate([*particles, border])


class _Schur(eqx.Module):
    """Factored `c I - J = [[A, -B], [-E, c I + M]]` with `A = c I - D`: `A^{-1}` per particle,
    `A^{-1} B` and `E A^{-1}` with the particle coordinates flattened (`(n, p m)`, one product
    each in a solve), and the inverse of the Schur complement `S = c I + M - E A^{-1} B`."""

    A_inv: list[list[Array]]
    A_inv_B: Float[Array, "n pm"]
    E_A_inv: Float[Array, "n pm"]
    S_inv: Float[Array, "n n"]

    def solve(self, b_flat: Array) -> Array:
        """`x_r = S^{-1} (b_r + E A^{-1} b)`, then `x = A^{-1} b + A^{-1} B x_r`."""
        p = len(self.A_inv)
        size = self.A_inv_B.shape[1]
        b_particles, b_r = b_flat[:size], b_flat[size:]
        b = b_particles.reshape(p, -1)
        # Not (S^{-1} E A^{-1}) b: at tiny eps that product order loses backward stability.
        x_r = self.S_inv @ (b_r + self.E_A_inv @ b_particles)
        particles = jnp.concatenate(
            [sum(self.A_inv[i][j] * b[j] for j in range(p)) for i in range(p)]
        )
        return jnp.concatenate([particles + x_r @ self.A_inv_B, x_r])

    def transpose(self) -> _Schur:
        """The factors of `(c I - J)^T`: the same elimination with `B` and `E` exchanged."""
        p = len(self.A_inv)
        A_inv_T = [[self.A_inv[j][i] for j in range(p)] for i in range(p)]
        return _Schur(A_inv_T, self.E_A_inv, self.A_inv_B, self.S_inv.T)


class SchurSolver(_AbstractFactoredSolver):
    """lineax solver for the operator of `BorderedJacobian.shifted`, by the Schur complement
    on the global coordinates: O(m p^3 + m p n^2 + n^3). lineax has no block elimination for
    this structure, hence this solver.

    Unlike the Woodbury identity it forms no difference of large particle vectors: the
    stiff coupling sits in the explicit `n x n` matrix `M` (docs: [the staircase
    solver][staircase-solver]).
    """

    operator_type: ClassVar[type] = _ShiftedBorderedMatvec
    structure: ClassVar[str] = "BorderedJacobian"

    def factor(self, fn: _ShiftedBorderedMatvec) -> _Schur:
        c, jac = fn.c, fn.jacobian
        p, n, _ = jac.B.shape
        A_inv = _small_inverse(c * jnp.eye(p, dtype=jac.D.dtype)[:, :, None] - jac.D)
        A_inv_B = jnp.concatenate(
            [sum(A_inv[i][j] * jac.B[j] for j in range(p)) for i in range(p)], axis=1
        )
        E_A_inv = jnp.concatenate(
            [sum(jac.E[i] * A_inv[i][j] for i in range(p)) for j in range(p)], axis=1
        )
        E = jac.E.transpose(1, 0, 2).reshape(n, -1)
        S = c * jnp.eye(n, dtype=jac.M.dtype) + jac.M - E @ A_inv_B.T
        return _Schur(A_inv, A_inv_B, E_A_inv, _small_matrix_inverse(S))


def _operator(matvec: eqx.Module, size: int, dtype) -> lx.FunctionLinearOperator:
    """The lineax operator of a structured `c I - J` on flat vectors of `size`."""
    return lx.FunctionLinearOperator(
        matvec, jax.ShapeDtypeStruct((size,), dtype), closure_convert=False
    )


def _orthonormal_range(B: Float[Array, "p n m"]) -> tuple[list[Array], Float[Array, "n n"]]:
    """`B^T = U T` with `U` (as `p` arrays `(n, m)`, rows the columns of `U`) orthonormal and
    `T` upper triangular: a thin QR factorisation of the `(p m, n)` matrix `B^T`.

    Modified Gram-Schmidt, twice ("twice is enough" for orthogonality to rounding), unrolled
    over the `n` columns with reductions over particles, as the rest of the solver. A column
    dependent on the previous ones to rounding (e.g. every `s_i^k` column at `s = 0`) gets
    `U`'s column zero: then `B^T = U T` still holds and the zero column drops out of the solve.
    """
    p, n, _ = B.shape
    rows: list[Array] = []
    columns: list[Array] = []  # of T
    for k in range(n):
        v = B[:, k]  # (p, m)
        coefs = [jnp.zeros((), B.dtype) for _ in rows]
        for _ in range(2):
            for j, q in enumerate(rows):
                coef = jnp.sum(q * v)
                coefs[j] = coefs[j] + coef
                v = v - coef * q
        norm0, norm = jnp.sqrt(jnp.sum(B[:, k] ** 2)), jnp.sqrt(jnp.sum(v**2))
        independent = norm > 64 * jnp.finfo(B.dtype).eps * norm0
        rows.append(jnp.where(independent, v / jnp.where(independent, norm, 1.0), 0.0))
        diagonal = jnp.where(independent, norm, 0.0)
        columns.append(jnp.stack(coefs + [diagonal] + [jnp.zeros((), B.dtype)] * (n - k - 1)))
    T = jnp.stack(columns, axis=1)
    U = jnp.stack(rows, axis=1)  # (p, n, m)
    return [U[i] for i in range(p)], T


# Up to this size `_small_matrix_inverse` eliminates unrolled; above, LAPACK's LU.
_UNROLL_INVERSE_UP_TO = 8


def _small_matrix_inverse(M: Float[Array, "n n"]) -> Float[Array, "n n"]:
    """Inverse of a small matrix: Gauss-Jordan elimination with partial pivoting, unrolled, up
    to `_UNROLL_INVERSE_UP_TO`; beyond, LU with partial pivoting (`jnp.linalg.inv`).

    Elementwise operations only for the smallest: LAPACK's LU of a 4 x 4 capacitance matrix and
    its solves cost more than the rest of a 64-particle step, and under vmap they ran once per
    batch member. The unrolled elimination grows as n^2 in program size and compile time (20 x
    20 for three directions of degree 3), where LAPACK's call does not.
    """
    n = M.shape[0]
    if n > _UNROLL_INVERSE_UP_TO:
        return jnp.linalg.inv(M)
    rows = jnp.arange(n)
    aug = jnp.concatenate([M, jnp.eye(n, dtype=M.dtype)], axis=1)
    for k in range(n):
        pivot = k + jnp.argmax(jnp.abs(aug[k:, k]))
        is_pivot = (rows == pivot)[:, None]
        pivot_row = jnp.sum(jnp.where(is_pivot, aug, 0.0), axis=0)
        aug = jnp.where(is_pivot, aug[k], aug).at[k].set(pivot_row / pivot_row[k])
        factors = jnp.where(rows == k, 0.0, aug[:, k])
        aug = aug - factors[:, None] * aug[k]
    return aug[:, n:]


def _small_inverse(A: Float[Array, "p p m"]) -> list[list[Array]]:
    """Inverse of each `(p, p)` block `A[:, :, k]`, as nested lists of `(m,)` arrays.

    Batched LU of many tiny matrices is slow on CPU; blocks up to 4x4 get the adjugate formula
    (its error is within the conditioning of each block, as LU's).
    """
    p = A.shape[0]
    if p == 1:
        return [[1.0 / A[0, 0]]]
    if p == 2:
        det = A[0, 0] * A[1, 1] - A[0, 1] * A[1, 0]
        return [[A[1, 1] / det, -A[0, 1] / det], [-A[1, 0] / det, A[0, 0] / det]]
    if p == 3:
        return _adjugate_inverse_3(A)
    if p == 4:
        return _adjugate_inverse_4(A)
    inv = jnp.linalg.inv(jnp.moveaxis(A, -1, 0))
    return [[inv[:, i, j] for j in range(p)] for i in range(p)]


def _adjugate_inverse_3(A: Float[Array, "3 3 m"]) -> list[list[Array]]:
    """Inverse of each 3x3 block by its adjugate (cofactors) over the determinant."""
    a = [[A[i, j] for j in range(3)] for i in range(3)]

    def cofactor(i, j):
        r, c = [x for x in range(3) if x != i], [x for x in range(3) if x != j]
        minor = a[r[0]][c[0]] * a[r[1]][c[1]] - a[r[0]][c[1]] * a[r[1]][c[0]]
        return minor if (i + j) % 2 == 0 else -minor

    cof = [[cofactor(i, j) for j in range(3)] for i in range(3)]
    det = a[0][0] * cof[0][0] + a[0][1] * cof[0][1] + a[0][2] * cof[0][2]
    return [[cof[j][i] / det for j in range(3)] for i in range(3)]


def _adjugate_inverse_4(A: Float[Array, "4 4 m"]) -> list[list[Array]]:
    """Inverse of each 4x4 block by its adjugate, built from the 2x2 minors `s` of the first two
    rows and `c` of the last two (Laplace expansion)."""
    a = [[A[i, j] for j in range(4)] for i in range(4)]

    def minor(r, i, j):
        return a[r][i] * a[r + 1][j] - a[r + 1][i] * a[r][j]

    s0, s1, s2, s3, s4, s5 = (minor(0, i, j) for i, j in _PAIRS)
    c0, c1, c2, c3, c4, c5 = (minor(2, i, j) for i, j in _PAIRS)
    det = s0 * c5 - s1 * c4 + s2 * c3 + s3 * c2 - s4 * c1 + s5 * c0
    adj = [
        [
            a[1][1] * c5 - a[1][2] * c4 + a[1][3] * c3,
            -a[0][1] * c5 + a[0][2] * c4 - a[0][3] * c3,
            a[3][1] * s5 - a[3][2] * s4 + a[3][3] * s3,
            -a[2][1] * s5 + a[2][2] * s4 - a[2][3] * s3,
        ],
        [
            -a[1][0] * c5 + a[1][2] * c2 - a[1][3] * c1,
            a[0][0] * c5 - a[0][2] * c2 + a[0][3] * c1,
            -a[3][0] * s5 + a[3][2] * s2 - a[3][3] * s1,
            a[2][0] * s5 - a[2][2] * s2 + a[2][3] * s1,
        ],
        [
            a[1][0] * c4 - a[1][1] * c2 + a[1][3] * c0,
            -a[0][0] * c4 + a[0][1] * c2 - a[0][3] * c0,
            a[3][0] * s4 - a[3][1] * s2 + a[3][3] * s0,
            -a[2][0] * s4 + a[2][1] * s2 - a[2][3] * s0,
        ],
        [
            -a[1][0] * c3 + a[1][1] * c1 - a[1][2] * c0,
            a[0][0] * c3 - a[0][1] * c1 + a[0][2] * c0,
            -a[3][0] * s3 + a[3][1] * s1 - a[3][2] * s0,
            a[2][0] * s3 - a[2][1] * s1 + a[2][2] * s0,
        ],
    ]
    return [[x / det for x in row] for row in adj]


# Column pairs of the 2x2 minors in `_adjugate_inverse_4`, in the order s0..s5 (c0..c5).
_PAIRS = ((0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3))
