"""What every order-parameter model provides: `AbstractModel`."""

from __future__ import annotations

import abc
from collections.abc import Hashable
from typing import Any, Generic, TypeVar

import diffrax as dfx
import equinox as eqx
import jax

# diffeqsolve's own wrapper of every term it hands a solver (not exported by diffrax; its
# Langevin solvers unwrap it the same way to reach their terms' fields).
from diffrax._term import WrapTerm
from jaxtyping import Array, Float, Int, PyTree

from ._control import scaled_rms_error
from ._linear import AbstractJacobian, DenseJacobian

State = TypeVar("State")


class AbstractModel(eqx.Module, Generic[State]):
    """An ODE for the order parameters of a learning problem, as `sst.solve` integrates it.

    A model has two views of its state: the user-facing state (an `eqx.Module` such as
    `MeanFieldState`) and the solver coordinates `y` with constant `args` (`split`/`merge`),
    chosen so that implicit steps stay inside the domain (e.g. `s = sin(theta)`). Calling the
    model is its vector field in solver coordinates, `model(t, y, args) = dy/dt`, so that
    `ModelTerm(model)` integrates it and a Rosenbrock solver can ask for `jacobian`.

    Concrete models implement every abstract method below; `solve`, `solve_batch`, the gradient
    functionals and the plots use nothing else.
    """

    @abc.abstractmethod
    def split(self, state: State) -> tuple[PyTree[Array], Any]:
        """Solver coordinates `y` and constant `args` of a state."""

    @abc.abstractmethod
    def merge(self, y: PyTree[Array], args: Any) -> State:
        """Inverse of `split` (also on `y` with leading batch or time axes)."""

    @abc.abstractmethod
    def __call__(self, t: Any, y: PyTree[Array], args: Any) -> PyTree[Array]:
        """The vector field `dy/dt` in solver coordinates."""

    @abc.abstractmethod
    def jacobian(self, t: Any, y: PyTree[Array], args: Any) -> AbstractJacobian:
        """The Jacobian of `__call__` in `y`, as a structure that solves with `c I - J`
        (`DenseJacobian.of(self, t, y, args)` where there is no structure to exploit)."""

    @abc.abstractmethod
    def risk(self, state: State) -> Float[Array, ""]:
        """The population risk of a state."""

    @abc.abstractmethod
    def residuals(self, state: State) -> Float[Array, " R"]:
        """The components of the target not yet learned, labelled by `residual_labels`."""

    @property
    @abc.abstractmethod
    def residual_labels(self) -> tuple[Hashable, ...]:
        """What each residual is (a Hermite degree, a multi-index)."""

    @abc.abstractmethod
    def check_state(self, state: State) -> State:
        """`state`, validated: raise `ValueError` (one sentence naming the fix) if a concrete
        state is invalid; a traced one (under jit, vmap, grad) is returned with its value checks
        attached by `eqx.error_if`, which raise when the program runs."""

    @property
    @abc.abstractmethod
    def eps(self) -> Float[Array, ""]:
        """The relative learning rate: solves are grouped by it (stiffness grows as it shrinks)."""

    @abc.abstractmethod
    def parameters(self) -> dict[str, Array]:
        """The arrays a batch of solves may vary, by name (always `"eps"`)."""

    @abc.abstractmethod
    def with_parameters(self, **values: Array) -> AbstractModel[State]:
        """This model with some `parameters()` replaced (validated when concrete)."""

    def error_norm(
        self,
        y0: PyTree[Array],
        y1: PyTree[Array],
        y_error: PyTree[Array],
        args: Any,
        rtol: float | Float[Array, ""],
        atol: float | Float[Array, ""],
    ) -> Float[Array, ""]:
        """The size of a step's local error estimate `y_error` (from `y0` to the candidate `y1`,
        in solver coordinates) relative to the tolerances: the default controller of `solve`
        (`ModelErrorController`) accepts the step when it is below 1 and steers the step size to
        keep it near 1.

        Default: diffrax's measure, `scaled_rms_error` (the RMS of
        `y_error / (atol + rtol max(|y0|, |y1|))`). Override it when the dynamics depends on
        combinations of the coordinates far smaller than the coordinates themselves.
        """
        del args
        return scaled_rms_error(y0, y1, y_error, rtol, atol)

    def project(self, y: PyTree[Array], args: Any) -> PyTree[Array]:
        """The solver coordinates `y` moved back onto the model's invariant manifold, if its
        coordinates carry redundant quantities (`MeanFieldODE` carries its residuals); the
        Rosenbrock solvers, and `ProjectedSolver` around any other diffrax solver, call it at the
        end of every step. Default: `y` itself, unchanged."""
        del args
        return y

    def rate(self, t: Any, state: State) -> State:
        """`d state / dt`, the vector field carried from solver coordinates to the state."""
        y, args = self.split(state)
        return jax.jvp(lambda y: self.merge(y, args), (y,), (self(t, y, args),))[1]


class WithDenseJacobian(AbstractModel[State]):
    """`model` itself, but handing the solver its Jacobian dense (forward-mode autodiff, LU
    solves) whatever structure the model declares: a reference for structured (Woodbury) solves
    of the same vector field, or a fallback to compare against. O(n^3) per step.

    **Fields:** `model`, the wrapped model (everything but `jacobian` is delegated to it).
    """

    model: AbstractModel[State]

    def split(self, state):
        return self.model.split(state)

    def merge(self, y, args):
        return self.model.merge(y, args)

    def __call__(self, t, y, args):
        return self.model(t, y, args)

    def jacobian(self, t, y, args):
        return DenseJacobian.of(self.model, t, y, args)

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
        return WithDenseJacobian(self.model.with_parameters(**values))

    def error_norm(self, y0, y1, y_error, args, rtol, atol):
        return self.model.error_norm(y0, y1, y_error, args, rtol, atol)

    def project(self, y, args):
        return self.model.project(y, args)

    def rate(self, t, state):
        return self.model.rate(t, state)


class ModelTerm(dfx.ODETerm):
    """The `diffrax.ODETerm` of an `sst.AbstractModel`: what solvers that need more of the model
    than its vector field are given.

    A Rosenbrock solver needs the model's `jacobian` and `project`, `sst.ProjectedSolver` its
    `project`: they declare `ModelTerm` as their `term_structure`, so that `diffrax.diffeqsolve`
    refuses any other term before compiling, and reach the model with `ModelTerm.unwrap`.
    Any other diffrax ODE solver integrates a `ModelTerm` as the `ODETerm` it is.

    **Fields:** `vector_field`, the model (`model(t, y, args)` is `dy/dt`).
    """

    vector_field: AbstractModel

    def __check_init__(self):
        if not isinstance(self.vector_field, AbstractModel):
            raise ValueError(
                "ModelTerm needs an sst.AbstractModel as its vector field, got "
                f"{type(self.vector_field).__name__}; wrap a plain vector field in a subclass "
                "of sst.AbstractModel, or use diffrax.ODETerm with a diffrax solver."
            )

    @staticmethod
    def unwrap(terms: dfx.AbstractTerm) -> tuple[AbstractModel, int | Int[Array, ""]]:
        """The model of the `ModelTerm` a solver is given, and the direction of time.

        `diffrax.diffeqsolve` hands its solver every term wrapped so that the solver always
        steps forward: solving from `t0 > t1` it integrates `dy/ds = -f(-s, y)` in `s = -t`,
        with direction `-1`.

        **Arguments:** `terms`, the terms a solver's `step` receives: a `ModelTerm`, or one
        wrapped by `diffeqsolve`.

        **Returns:** `(model, direction)`, `direction` 1 or -1 (1 for a bare `ModelTerm`).
        """
        direction = 1
        if isinstance(terms, WrapTerm):
            terms, direction = terms.term, terms.direction
        if not isinstance(terms, ModelTerm):
            raise ValueError(
                f"terms must be an sst.ModelTerm(model), got {type(terms).__name__}; pass "
                "sst.ModelTerm(model) to diffrax.diffeqsolve."
            )
        return terms.vector_field, direction
