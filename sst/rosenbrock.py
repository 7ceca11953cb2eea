"""A Rosenbrock (linearly implicit) stiff solver for diffrax, with structured linear algebra.

Why not diffrax's ESDIRK solvers: on the singularly perturbed ODEs of THEORY.md section 8 their
Newton iterations fail or crawl once the second-layer weights are large (eps <= 1e-6), and the
unfiltered embedded error estimate rejects about half the steps. A Rosenbrock method needs no
Newton iteration at all: each step solves `s` linear systems with one matrix
`I / (h gamma) - J`, `J` the exact Jacobian at the start of the step. Rodas4 (Hairer and
Wanner, Solving ODEs II, section IV.7) is stiffly accurate and L-stable, and its embedded error
estimate is the last stage, which is damped in the stiff components.

The linear systems are solved either densely (LU of the flattened Jacobian, O(n^3)), or, for
models that expose a particle structure, with the Woodbury identity (`ParticleJacobian`):
every particle's derivative depends on its own coordinates and on a few global quantities
(the Hermite residuals), so `J = D + B R` with `D` block diagonal and `B R` of rank `K + 1`.
Then a solve costs O(m K^2) instead of O(m^3).
"""

from __future__ import annotations

from typing import ClassVar

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Float

# Rodas4 in the convention of Hairer and Wanner's RODAS code:
#   (I / (h gamma) - J) k_i = f(t0 + c_i h, y0 + sum_j a_ij k_j) + sum_j (C_ij / h) k_j
#                             + gamma_i h df/dt,
#   y1 = y0 + sum_j a_6j k_j + k_6 (stiffly accurate), error estimate k_6.
_A = (
    (),
    (1.544,),
    (0.9466785280815826, 0.2557011698983284),
    (3.314825187068521, 2.896124015972201, 0.9986419139977817),
    (1.221224509226641, 6.019134481288629, 12.53708332932087, -0.687886036105895),
    (1.221224509226641, 6.019134481288629, 12.53708332932087, -0.687886036105895, 1.0),
)
_C = (
    (),
    (-5.6688,),
    (-2.430093356833875, -0.2063599157091915),
    (-0.1073529058151375, -9.594562251023355, -20.47028614809616),
    (7.496443313967647, -10.24680431464352, -33.99990352819905, 11.7089089320616),
    (
        8.083246795921522,
        -7.981132988064893,
        -31.52159432874371,
        16.31930543123136,
        -6.058818238834054,
    ),
)
_STAGE_TIMES = (0.0, 0.386, 0.21, 0.63, 1.0, 1.0)
_GAMMA = 0.25
_STAGE_GAMMAS = (0.25, -0.1043, 0.1035, -0.0362, 0.0, 0.0)


class ParticleJacobian(eqx.Module):
    """The Jacobian `J = D + B R` of a particle system with low-rank global coupling.

    The state is `p` coordinate arrays of `m` particles each (for `MeanFieldODE`, `(a, theta)`),
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

    def shifted_solver(self, c: Float[Array, ""]) -> Woodbury:
        """Factors for solving `(c I - J) x = b` (and its transpose) by the Woodbury identity.

        `(A - B R)^{-1} = A^{-1} + A^{-1} B (I - R A^{-1} B)^{-1} R A^{-1}` with `A = c I - D`
        block diagonal: O(m p^3 + m p n^2 + n^3) work, all of it elementwise or matrix-vector
        products over particles. The factors are not differentiated: `Rodas4` differentiates
        its solves implicitly through `shifted_matvec`.
        """
        p, n = self.B.shape[:2]
        D, B, R, c = jax.lax.stop_gradient((self.D, self.B, self.R, c))
        A_inv = _small_inverse(c * jnp.eye(p)[:, :, None] - D)
        A_inv_B = [sum(A_inv[i][j] * B[j] for j in range(p)) for i in range(p)]
        R_A_inv = [sum(R[i] * A_inv[i][j] for i in range(p)) for j in range(p)]
        capacitance = jnp.eye(n) - sum(R[i] @ A_inv_B[i].T for i in range(p))
        return Woodbury(A_inv, A_inv_B, _gauss_jordan_inverse(capacitance), R_A_inv)

    def shifted_matvec(self, c: Float[Array, ""], x_flat: Array) -> Array:
        """`(c I - J) x` for flat `x`: what implicit differentiation of the solve needs."""
        p = self.B.shape[0]
        x = x_flat.reshape(p, -1)
        # Reductions rather than dots (unlike the solve): only derivatives use this product, and
        # with dots a gradient of benchmarks/batch.py's setup cost ~15% more.
        global_part = sum(jnp.sum(self.R[j] * x[j], axis=-1) for j in range(p))
        return jnp.concatenate(
            [
                c * x[i]
                - sum(self.D[i, j] * x[j] for j in range(p))
                - jnp.sum(global_part[:, None] * self.B[i], axis=0)
                for i in range(p)
            ]
        )


class Woodbury(eqx.Module):
    """Factored `c I - J = A - B R` (from `ParticleJacobian.shifted_solver`): `A^{-1}` as nested
    lists of per-particle entries, `A^{-1} B` and `R A^{-1}` per coordinate, and the inverse of
    the small capacitance matrix `I - R A^{-1} B`."""

    A_inv: list[list[Array]]
    A_inv_B: list[Array]
    cap_inv: Array
    R_A_inv: list[Array]

    def solve(self, b: Array) -> Array:
        """`(c I - J)^{-1} b`."""
        return _woodbury(self.A_inv, self.A_inv_B, self.cap_inv, self.R_A_inv, b)

    def transpose_solve(self, b: Array) -> Array:
        """`(c I - J)^{-T} b`: the same identity with every factor transposed."""
        p = len(self.A_inv)
        A_inv_T = [[self.A_inv[j][i] for j in range(p)] for i in range(p)]
        return _woodbury(A_inv_T, self.R_A_inv, self.cap_inv.T, self.A_inv_B, b)


class DenseLU(eqx.Module):
    """Pivoted LU of a dense `c I - J`."""

    lu: Array
    pivots: Array

    def solve(self, b: Array) -> Array:
        return jsl.lu_solve((self.lu, self.pivots), b)

    def transpose_solve(self, b: Array) -> Array:
        return jsl.lu_solve((self.lu, self.pivots), b, trans=1)


def _woodbury(
    A_inv: list[list[Array]], left: list[Array], cap_inv: Array, right: list[Array], b_flat: Array
) -> Array:
    """`A^{-1} b + left cap_inv (right . b)`, the Woodbury solve (or its transpose)."""
    p = len(left)
    b = b_flat.reshape(p, -1)
    z = cap_inv @ sum(right[j] @ b[j] for j in range(p))
    return jnp.concatenate(
        [sum(A_inv[i][j] * b[j] for j in range(p)) + z @ left[i] for i in range(p)]
    )


def _gauss_jordan_inverse(M: Float[Array, "n n"]) -> Float[Array, "n n"]:
    """Inverse of a small matrix by Gauss-Jordan elimination with partial pivoting, unrolled.

    Written with elementwise operations only: LAPACK's LU of a 4 x 4 capacitance matrix and its
    solves cost more than the rest of a 64-particle step, and under vmap they ran once per
    batch member.
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

    Batched LU of many tiny matrices is slow on CPU; 1x1 and 2x2 blocks get the formula.
    """
    p = A.shape[0]
    if p == 1:
        return [[1.0 / A[0, 0]]]
    if p == 2:
        det = A[0, 0] * A[1, 1] - A[0, 1] * A[1, 0]
        return [[A[1, 1] / det, -A[0, 1] / det], [-A[1, 0] / det, A[0, 0] / det]]
    inv = jnp.linalg.inv(jnp.moveaxis(A, -1, 0))
    return [[inv[:, i, j] for j in range(p)] for i in range(p)]


class Rodas4(dfx.AbstractAdaptiveSolver):
    """Rodas4: 4th-order stiffly accurate L-stable Rosenbrock method with a 3rd-order embedded
    error estimate, as a diffrax solver (pass it as `solver=` to `diffrax.diffeqsolve`).

    **Fields:**

    - `linear_solver`: `"auto"` uses the Woodbury solve when the vector field is a bound method
      of a model that provides `particle_jacobian(y, args)` (returning a `ParticleJacobian`, or
      `None` where it has no such structure), else a dense LU; `"dense"` forces the dense LU.

    Needs the exact Jacobian, taken with `jax.jacfwd` (dense) or from the model (structured).
    Differentiable with diffrax's default `RecursiveCheckpointAdjoint` and with `ForwardMode`.
    """

    linear_solver: str = eqx.field(static=True, default="auto")

    term_structure: ClassVar = dfx.AbstractTerm
    interpolation_cls: ClassVar = dfx.LocalLinearInterpolation

    def __check_init__(self):
        if self.linear_solver not in ("auto", "dense"):
            raise ValueError(
                f"linear_solver must be 'auto' or 'dense', got {self.linear_solver!r}."
            )

    def order(self, terms):
        return 4

    def error_order(self, terms):
        # The error estimate is the difference to the embedded 3rd-order solution: O(h^4).
        return 4

    def init(self, terms, t0, t1, y0, args):
        return None

    def func(self, terms, t0, y0, args):
        return terms.vf(t0, y0, args)

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        h = t1 - t0
        flat0, unravel = ravel_pytree(y0)

        def rate(t, y_flat):
            return ravel_pytree(terms.vf(t, unravel(y_flat), args))[0]

        f0, dfdt = jax.jvp(lambda t: rate(t, flat0), (t0,), (jnp.ones_like(t0),))
        matvec, factor = self._linear_system(terms, rate, t0, y0, flat0, args, 1.0 / (h * _GAMMA))

        # The solves differentiate implicitly: the derivative of x = M^{-1} b is
        # M^{-1} (db - dM x), with dM x from the cheap product M x, and reverse mode solves with
        # the transpose. Differentiating through the factorisation's own operations instead cost
        # 1.3x more per gradient (the setup of benchmarks/batch.py).
        def solve(b):
            return jax.lax.custom_linear_solve(
                matvec,
                b,
                lambda _, rhs: factor.solve(rhs),
                lambda _, rhs: factor.transpose_solve(rhs),
            )

        ks = []
        for i in range(6):
            y_i = flat0 + sum(a * k for a, k in zip(_A[i], ks, strict=True)) if i else flat0
            f_i = f0 if i == 0 else rate(t0 + _STAGE_TIMES[i] * h, y_i)
            rhs = f_i + sum((c / h) * k for c, k in zip(_C[i], ks, strict=True)) if i else f_i
            if _STAGE_GAMMAS[i] != 0.0:
                rhs = rhs + (_STAGE_GAMMAS[i] * h) * dfdt
            ks.append(solve(rhs))
        y1_flat = y_i + ks[-1]
        y1 = unravel(y1_flat)
        y_error = unravel(ks[-1])
        dense_info = dict(y0=y0, y1=y1)
        return y1, y_error, dense_info, None, dfx.RESULTS.successful

    def _linear_system(self, terms, rate, t0, y0, flat0, args, c):
        """`x -> (c I - J) x` (differentiable in the model and the state) and its factors."""
        if self.linear_solver == "auto":
            model = getattr(_vector_field(terms), "__self__", None)
            structure = getattr(model, "particle_jacobian", None)
            parts = structure(y0, args) if structure is not None else None
            if parts is not None:
                return (lambda x: parts.shifted_matvec(c, x)), parts.shifted_solver(c)
        J = jax.jacfwd(lambda y: rate(t0, y))(flat0)
        lu, pivots = jsl.lu_factor(jax.lax.stop_gradient(c * jnp.eye(flat0.shape[0]) - J))
        return (lambda x: c * x - J @ x), DenseLU(lu, pivots)


def _vector_field(terms):
    # diffrax wraps ODETerms (e.g. in a WrapTerm for the progress meter or time direction).
    while hasattr(terms, "term"):
        terms = terms.term
    return getattr(terms, "vector_field", None)
