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

from collections.abc import Callable
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

    def shifted_solver(self, c: Float[Array, ""]) -> Callable[[Array], Array]:
        """A function solving `(c I - J) x = b` for flat `b` by the Woodbury identity.

        `(A - B R)^{-1} = A^{-1} + A^{-1} B (I - R A^{-1} B)^{-1} R A^{-1}` with `A = c I - D`
        block diagonal: O(m p^3 + m p n^2 + n^3) work, all of it elementwise or matrix-vector
        products over particles.
        """
        p, n = self.B.shape[:2]
        A_inv = _small_inverse(c * jnp.eye(p)[:, :, None] - self.D)
        A_inv_B = [sum(A_inv[i][j] * self.B[j] for j in range(p)) for i in range(p)]
        # Contractions over particles as reductions, not dots: under vmap a dot becomes one
        # small LAPACK/Eigen call per batch member on CPU.
        capacitance = jnp.eye(n) - sum(
            jnp.sum(self.R[i][:, None, :] * A_inv_B[i][None, :, :], axis=-1) for i in range(p)
        )
        cap_inv = _gauss_jordan_inverse(capacitance)

        def solve(b_flat: Array) -> Array:
            b = b_flat.reshape(p, -1)
            x0 = [sum(A_inv[i][j] * b[j] for j in range(p)) for i in range(p)]
            v = sum(jnp.sum(self.R[i] * x0[i], axis=-1) for i in range(p))
            z = jnp.sum(cap_inv * v, axis=-1)
            return jnp.concatenate(
                [x0[i] + jnp.sum(z[:, None] * A_inv_B[i], axis=0) for i in range(p)]
            )

        return solve


def _gauss_jordan_inverse(M: Float[Array, "n n"]) -> Float[Array, "n n"]:
    """Inverse of a small matrix by Gauss-Jordan elimination with partial pivoting, unrolled.

    Written with elementwise operations only, so that under vmap a batch of capacitance
    matrices is inverted in a few fused loops instead of one LAPACK call per member.
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
        solve = self._shifted_solver(terms, rate, t0, y0, flat0, args, 1.0 / (h * _GAMMA))
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

    def _shifted_solver(self, terms, rate, t0, y0, flat0, args, c):
        if self.linear_solver == "auto":
            model = getattr(_vector_field(terms), "__self__", None)
            structure = getattr(model, "particle_jacobian", None)
            parts = structure(y0, args) if structure is not None else None
            if parts is not None:
                return parts.shifted_solver(c)
        J = jax.jacfwd(lambda y: rate(t0, y))(flat0)
        lu = jsl.lu_factor(c * jnp.eye(flat0.shape[0]) - J)
        return lambda b: jsl.lu_solve(lu, b)


def _vector_field(terms):
    # diffrax wraps ODETerms (e.g. in a WrapTerm for the progress meter or time direction).
    while hasattr(terms, "term"):
        terms = terms.term
    return getattr(terms, "vector_field", None)
