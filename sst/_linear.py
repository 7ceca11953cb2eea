"""Jacobian structures of the models, and the lineax operators and solvers for `c I - J`.

A Rosenbrock step solves linear systems with the matrix `c I - J`, `J` the Jacobian of the
vector field (see the docs' [solver page][rodas4]). Every model says explicitly how its Jacobian is
built (`AbstractModel.jacobian`) by returning one of these structures; each structure gives
the lineax operator `c I - J` and the lineax solver for it. Implicit differentiation of the
solves comes from `lineax.linear_solve`.

- `DenseJacobian`: the flattened Jacobian as a matrix, solved by LU (O(n^3) per step).
- `ParticleJacobian`: particles coupled only through a few global quantities (the Hermite
  residuals): `J = D + B R` with `D` block diagonal over particles and `B R` of low rank, solved
  by the Woodbury identity in O(m p^3 + m p n^2 + n^3). lineax has no Woodbury solver, hence
  `WoodburySolver` here.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any

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
        structure = jax.ShapeDtypeStruct((p * m,), self.B.dtype)
        operator = lx.FunctionLinearOperator(
            _ShiftedParticleMatvec(c, self), structure, closure_convert=False
        )
        return operator, WoodburySolver()


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
    """Factored `c I - J = A - B R`: `A^{-1}` as nested lists of per-particle entries,
    `A^{-1} B` and `R A^{-1}` per coordinate, and the inverse of the small capacitance matrix
    `I - R A^{-1} B`."""

    A_inv: list[list[Array]]
    A_inv_B: list[Array]
    cap_inv: Array
    R_A_inv: list[Array]

    def solve(self, b_flat: Array) -> Array:
        """`A^{-1} b + (A^{-1} B) cap_inv (R A^{-1}) b`."""
        p = len(self.A_inv_B)
        b = b_flat.reshape(p, -1)
        z = self.cap_inv @ sum(self.R_A_inv[j] @ b[j] for j in range(p))
        return jnp.concatenate(
            [sum(self.A_inv[i][j] * b[j] for j in range(p)) + z @ self.A_inv_B[i] for i in range(p)]
        )

    def transpose(self) -> _Woodbury:
        """The factors of `(c I - J)^T`: the same identity with every factor transposed."""
        p = len(self.A_inv)
        A_inv_T = [[self.A_inv[j][i] for j in range(p)] for i in range(p)]
        return _Woodbury(A_inv_T, self.R_A_inv, self.cap_inv.T, self.A_inv_B)


class WoodburySolver(lx.AbstractLinearSolver):
    """lineax solver for the operator of `ParticleJacobian.shifted`, by the Woodbury identity.

    `(A - B R)^{-1} = A^{-1} + A^{-1} B (I - R A^{-1} B)^{-1} R A^{-1}` with `A = c I - D`
    block diagonal: all of it elementwise or matrix-vector products over particles.
    """

    def init(self, operator, options):
        del options
        fn = getattr(operator, "fn", None)
        if not isinstance(fn, _ShiftedParticleMatvec):
            raise ValueError(
                "WoodburySolver solves only the operator of ParticleJacobian.shifted; use "
                "lineax.LU() for other operators."
            )
        c, D, B, R = fn.c, fn.jacobian.D, fn.jacobian.B, fn.jacobian.R
        p, n = B.shape[:2]
        A_inv = _small_inverse(c * jnp.eye(p, dtype=D.dtype)[:, :, None] - D)
        A_inv_B = [sum(A_inv[i][j] * B[j] for j in range(p)) for i in range(p)]
        R_A_inv = [sum(R[i] * A_inv[i][j] for i in range(p)) for j in range(p)]
        capacitance = jnp.eye(n, dtype=D.dtype) - sum(R[i] @ A_inv_B[i].T for i in range(p))
        factors = _Woodbury(A_inv, A_inv_B, _gauss_jordan_inverse(capacitance), R_A_inv)
        return factors, eqxi.Static(False)

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


def _gauss_jordan_inverse(M: Float[Array, "n n"]) -> Float[Array, "n n"]:
    """Inverse of a small matrix by Gauss-Jordan elimination with partial pivoting, unrolled.

    Elementwise operations only: LAPACK's LU of a 4 x 4 capacitance matrix and its solves cost
    more than the rest of a 64-particle step, and under vmap they ran once per batch member.
    """
    n = M.shape[0]
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
