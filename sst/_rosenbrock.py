"""Rosenbrock (linearly implicit) stiff solvers for diffrax: a tableau as data, one stepper.

Why not diffrax's ESDIRK solvers: on the singularly perturbed ODEs of the docs' [solver
page][rodas4]
their Newton iterations fail or crawl once the second-layer weights are large (eps <= 1e-6),
and the unfiltered embedded error estimate rejects about half the steps. A Rosenbrock method
needs no Newton iteration: each step solves `s` linear systems with one matrix
`I / (h gamma) - J`, `J` the exact Jacobian at the start of the step. Rodas4 (Hairer and
Wanner, Solving ODEs II, section IV.7) is stiffly accurate and L-stable, its embedded error
estimate is damped in the stiff components, and it has a third-order dense output.

The solvers integrate an `sst.ModelTerm` (their `term_structure`): the Jacobian comes from the
model (`AbstractModel.jacobian`), which says explicitly whether it is dense or structured, and
each step ends with the model's projection (`AbstractModel.project`). The linear solves go
through `lineax.linear_solve`, which also differentiates them implicitly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, PyTree

from ._linear import AbstractJacobian, DenseJacobian
from ._model import ModelTerm


@dataclasses.dataclass(frozen=True)
class RosenbrockTableau:
    """Coefficients of an `s`-stage Rosenbrock method in the form of Hairer and Wanner's RODAS:

    `(I / (h gamma) - J) k_i = f(t0 + c_i h, y0 + sum_{j<i} a_ij k_j) + sum_{j<i} (C_ij / h) k_j
    + gamma_i h df/dt`,

    `y1 = y0 + sum_i b_i k_i`, error estimate `sum_i e_i k_i`, and dense output
    `y(t0 + theta h) = (1 - theta) y0 + theta (y1 + (1 - theta) (d1 + theta d2))` with
    `d1 = sum_i dense[0][i] k_i`, `d2 = sum_i dense[1][i] k_i`.

    **Fields:** `a` and `C` (row `i` has `i` entries), `c` stage times, `gamma` the diagonal,
    `gammas` the `df/dt` coefficients, `b`, `e`, `dense` (two rows of `s`, or `None`), `order`
    of the solution and `error_order` of the error estimate (the power of `h` it scales with),
    and `w_method`: whether `order` holds for any matrix `J` (a Rosenbrock-W method) or only for
    the exact Jacobian.
    """

    a: tuple[tuple[float, ...], ...]
    C: tuple[tuple[float, ...], ...]
    c: tuple[float, ...]
    gamma: float
    gammas: tuple[float, ...]
    b: tuple[float, ...]
    e: tuple[float, ...]
    dense: tuple[tuple[float, ...], tuple[float, ...]] | None
    order: int
    error_order: int
    w_method: bool = False

    def __post_init__(self):
        s = len(self.c)
        rows_ok = (
            len(self.a) == s
            and len(self.C) == s
            and all(len(self.a[i]) == i and len(self.C[i]) == i for i in range(s))
        )
        if not rows_ok:
            raise ValueError("RosenbrockTableau needs a and C with rows of 0, 1, ..., s-1 entries.")
        if not all(len(v) == s for v in (self.gammas, self.b, self.e, *(self.dense or ()))):
            raise ValueError(
                "RosenbrockTableau needs gammas, b, e and both dense rows of s entries."
            )
        if self.gamma <= 0:
            raise ValueError(f"RosenbrockTableau needs gamma > 0, got {self.gamma}.")

    @property
    def stages(self) -> int:
        return len(self.c)


_RODAS4_A_LAST = (1.221224509226641, 6.019134481288629, 12.53708332932087, -0.687886036105895)

#: Rodas4 (Hairer and Wanner's RODAS, method 1): stiffly accurate, so `b` is the last row of `a`
#: plus the last stage, and the error estimate is the last stage.
RODAS4 = RosenbrockTableau(
    a=(
        (),
        (1.544,),
        (0.9466785280815826, 0.2557011698983284),
        (3.314825187068521, 2.896124015972201, 0.9986419139977817),
        _RODAS4_A_LAST,
        (*_RODAS4_A_LAST, 1.0),
    ),
    C=(
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
    ),
    c=(0.0, 0.386, 0.21, 0.63, 1.0, 1.0),
    gamma=0.25,
    gammas=(0.25, -0.1043, 0.1035, -0.0362, 0.0, 0.0),
    b=(*_RODAS4_A_LAST, 1.0, 1.0),
    e=(0.0, 0.0, 0.0, 0.0, 0.0, 1.0),
    dense=(
        (
            10.12623508344586,
            -7.487995877610167,
            -34.80091861555747,
            -7.992771707568823,
            1.025137723295662,
            0.0,
        ),
        (
            -0.6762803392801253,
            6.087714651680015,
            16.43084320892478,
            24.76722511418386,
            -6.594389125716872,
            0.0,
        ),
    ),
    order=4,
    error_order=4,
)


def _from_standard_form(alpha, Gamma, b, b_hat, order: int, w_method: bool) -> RosenbrockTableau:
    """The tableau of the method published in the standard form `(I - h gamma_ii J) K_i =
    h f(y0 + sum_j alpha_ij K_j) + h J sum_{j<i} gamma_ij K_j`, `y1 = y0 + sum_i b_i K_i`
    (`b_hat` the embedded solution), in Hairer and Wanner's variables `k_i = sum_j Gamma_ij K_j
    / gamma`: `a = alpha Gamma^-1`, `C = diag(Gamma^-1) - Gamma^-1`, `b = b Gamma^-1`,
    `e = (b - b_hat) Gamma^-1`, `c_i = sum_j alpha_ij`, `gammas_i = sum_j Gamma_ij`; the dense
    output is the quadratic of `RosenbrockTableau`."""
    alpha, Gamma = np.asarray(alpha, dtype=float), np.asarray(Gamma, dtype=float)
    inverse = np.linalg.inv(Gamma)
    a = alpha @ inverse
    C = np.diag(np.diag(inverse)) - inverse
    s = alpha.shape[0]

    def rows(M):
        return tuple(tuple(float(M[i, j]) for j in range(i)) for i in range(s))

    def row(v):
        return tuple(float(x) for x in v)

    return RosenbrockTableau(
        a=rows(a),
        C=rows(C),
        c=row(alpha.sum(axis=1)),
        gamma=float(Gamma[0, 0]),
        gammas=row(Gamma.sum(axis=1)),
        b=row(np.asarray(b) @ inverse),
        e=row((np.asarray(b) - np.asarray(b_hat)) @ inverse),
        dense=None,
        order=order,
        error_order=order,
        w_method=w_method,
    )


_ROS34PW2_GAMMA = 0.435866521508459

#: ROS34PW2 (Rang and Angermann, BIT 45, 761 (2005)): a Rosenbrock-W method of order 3 for any
#: `J`, with an embedded solution of order 2, stiffly accurate and L-stable.
ROS34PW2 = _from_standard_form(
    alpha=(
        (0.0, 0.0, 0.0, 0.0),
        (0.87173304301691801, 0.0, 0.0, 0.0),
        (0.84457060015369423, -0.11299064236484185, 0.0, 0.0),
        (0.0, 0.0, 1.0, 0.0),
    ),
    Gamma=(
        (_ROS34PW2_GAMMA, 0.0, 0.0, 0.0),
        (-0.87173304301691801, _ROS34PW2_GAMMA, 0.0, 0.0),
        (-0.90338057013044082, 0.054180672388095326, _ROS34PW2_GAMMA, 0.0),
        (0.24212380706095346, -1.2232505839045147, 0.54526025533510214, _ROS34PW2_GAMMA),
    ),
    b=(0.24212380706095346, -1.2232505839045147, 1.5452602553351020, _ROS34PW2_GAMMA),
    b_hat=(0.37810903145819369, -0.096042292212423178, 0.5, 0.21793326075422950),
    order=3,
    w_method=True,
)


class StiffJacobian(AbstractJacobian):
    """The Jacobian of a vector field's stiff part, for a Rosenbrock-W method, and the exact
    Jacobian of the whole field, built only for a method that needs it.

    **Fields:** `stiff`, the Jacobian of the stiff part; `vector_field`, `t`, `y`, `args`, the
    field and the point of `exact`.
    """

    stiff: AbstractJacobian
    vector_field: Callable
    t: Any
    y: PyTree[Array]
    args: Any

    def exact(self) -> DenseJacobian:
        """The dense Jacobian of the whole field at `(t, y)`, by forward-mode autodiff."""
        return DenseJacobian.of(self.vector_field, self.t, self.y, self.args)

    def shifted(self, c):
        return self.exact().shifted(c)


class RosenbrockInterpolation(dfx.AbstractLocalInterpolation):
    """The dense output of a Rosenbrock step (see `RosenbrockTableau`), third order for Rodas4."""

    t0: Array
    t1: Array
    y0: PyTree[Array]
    y1: PyTree[Array]
    d1: PyTree[Array]
    d2: PyTree[Array]

    def evaluate(self, t0, t1=None, left: bool = True):
        del left
        if t1 is not None:
            return jax.tree_util.tree_map(jnp.subtract, self.evaluate(t1), self.evaluate(t0))
        theta = (t0 - self.t0) / (self.t1 - self.t0)
        return jax.tree_util.tree_map(
            lambda y0, y1, d1, d2: (
                (1 - theta) * y0 + theta * (y1 + (1 - theta) * (d1 + theta * d2))
            ),
            self.y0,
            self.y1,
            self.d1,
            self.d2,
        )


class AbstractRosenbrock(dfx.AbstractAdaptiveSolver):
    """A Rosenbrock method given by its `tableau`, as a diffrax solver.

    It integrates an `sst.ModelTerm(model)`: the model hands over its Jacobian
    (`AbstractModel.jacobian`, dense or structured) and so the linear solver, and moves every
    step's end back onto its invariant manifold (`AbstractModel.project`). Differentiable with
    diffrax's `RecursiveCheckpointAdjoint` and `ForwardMode`: the linear solves are
    differentiated implicitly by lineax.
    """

    tableau: eqx.AbstractClassVar[RosenbrockTableau]
    term_structure: ClassVar = ModelTerm
    interpolation_cls: ClassVar = RosenbrockInterpolation

    def order(self, terms):
        return self.tableau.order

    def error_order(self, terms):
        return self.tableau.error_order

    def init(self, terms, t0, t1, y0, args):
        return None

    def func(self, terms, t0, y0, args):
        return terms.vf(t0, y0, args)

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        tab = self.tableau
        model, direction = ModelTerm.unwrap(terms)
        h = t1 - t0
        flat0, unravel = ravel_pytree(y0)

        # diffeqsolve steps forward in s = direction * t: the field is g(s, y) = d f(d s, y), its
        # Jacobian d J, and the stage matrix I / (h gamma) - d J = d (d I / (h gamma) - J) is
        # solved with the model's `shifted` Jacobian and the right-hand sides times d (d = +-1).
        def rate(s, y_flat):
            return direction * ravel_pytree(model(direction * s, unravel(y_flat), args))[0]

        f0, dfdt = jax.jvp(lambda s: rate(s, flat0), (t0,), (jnp.ones_like(t0),))
        jacobian = model.jacobian(direction * t0, y0, args)
        if isinstance(jacobian, StiffJacobian):
            jacobian = jacobian.stiff if tab.w_method else jacobian.exact()
        operator, linear_solver = jacobian.shifted(direction / (h * tab.gamma))
        state = linear_solver.init(jax.lax.stop_gradient(operator), {})

        ks = []
        for i in range(tab.stages):
            y_i = flat0 + _combine(tab.a[i], ks)
            f_i = f0 if i == 0 else rate(t0 + tab.c[i] * h, y_i)
            rhs = f_i + _combine(tab.C[i], ks) / h
            if tab.gammas[i] != 0.0:
                rhs = rhs + (tab.gammas[i] * h) * dfdt
            # A non-finite stage (a trial step far too long) must reach the error estimate, which
            # rejects the step, rather than raise.
            solution = lx.linear_solve(
                operator, direction * rhs, linear_solver, state=state, throw=False
            )
            ks.append(solution.value)
        # The error estimate is that of the step itself; the projection (if the model has one)
        # removes drift off the model's invariant manifold, which the estimate does not measure.
        y1 = model.project(unravel(flat0 + _combine(tab.b, ks)), args)
        y_error = unravel(_combine(tab.e, ks))
        if tab.dense is None:
            d1 = h * f0 - (ravel_pytree(y1)[0] - flat0)
            d1, d2 = unravel(d1), unravel(jnp.zeros_like(d1))
        else:
            d1, d2 = (unravel(_combine(row, ks)) for row in tab.dense)
        dense_info = dict(y0=y0, y1=y1, d1=d1, d2=d2)
        return y1, y_error, dense_info, None, dfx.RESULTS.successful


def _combine(coeffs: tuple[float, ...], ks: list[Array]):
    """`sum_j coeffs[j] ks[j]` over the nonzero coefficients (0 for none)."""
    terms = [coef * k for coef, k in zip(coeffs, ks, strict=True) if coef != 0.0]
    return sum(terms[1:], terms[0]) if terms else 0.0


class Rodas4(AbstractRosenbrock):
    """Rodas4: 4th-order stiffly accurate L-stable Rosenbrock method with a 3rd-order embedded
    error estimate and a 3rd-order dense output (`RODAS4`), as a diffrax solver.

    Pass it as `solver=` to `sst.solve` (it is the default) or to `diffrax.diffeqsolve` with
    `sst.ModelTerm(model)`.
    """

    tableau: ClassVar[RosenbrockTableau] = RODAS4


class Ros34PW2(AbstractRosenbrock):
    """ROS34PW2: a 3rd-order stiffly accurate L-stable Rosenbrock-W method (`ROS34PW2`), with a
    2nd-order embedded error estimate and a 2nd-order dense output, as a diffrax solver.

    A W-method keeps its order with any matrix in place of the Jacobian, so the model may hand
    over an approximation (the Jacobian of the stiff part only).
    """

    tableau: ClassVar[RosenbrockTableau] = ROS34PW2
