"""Step-size control with the model's own error measure: `ModelErrorController`.

diffrax's `PIDController` measures a step's local error `y_error` componentwise against
`atol + rtol |y|` and takes an RMS norm. That is the right measure when every coordinate matters
on its own scale, and the wrong one when the dynamics depends on a few large cancelling sums of
the coordinates: at tiny eps the second-layer weights `a_i` of `MeanFieldODE` reach 1e8 while the
Hermite moments `sum_i p_i a_i s_i^k`, which drive the dynamics and make the risk, stay O(1)
(docs: [error control][error-control]). Each model therefore says how its step errors are
measured (`AbstractModel.error_norm`, by default diffrax's measure), and `ModelErrorController`
runs diffrax's PID step-size logic on that measure instead of its own.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import diffrax as dfx
import jax
import jax.numpy as jnp
import optimistix as optx
from jaxtyping import Array, Float, PyTree

if TYPE_CHECKING:
    from ._model import AbstractModel


def scaled_rms_error(
    y0: PyTree[Array],
    y1: PyTree[Array],
    y_error: PyTree[Array],
    rtol: float | Float[Array, ""],
    atol: float | Float[Array, ""],
) -> Float[Array, ""]:
    """diffrax's error measure: the RMS over all components of
    `y_error / (atol + rtol max(|y0|, |y1|))`, `y1` replaced by `y0` in a leaf that holds NaN
    (as `diffrax.PIDController` computes it)."""

    def scale(y0, y1, err):
        y1 = jnp.where(jnp.isnan(y1).any(), y0, y1)
        return err / (atol + rtol * jnp.maximum(jnp.abs(y0), jnp.abs(y1)))

    return optx.rms_norm(jax.tree_util.tree_map(scale, y0, y1, y_error))


class ModelErrorController(dfx.AbstractAdaptiveStepSizeController):
    """diffrax's `PIDController` with the size of each step's error measured by the model.

    A step is accepted when `model.error_norm(y0, y1, y_error, args, rtol, atol) < 1`, and the
    next step size follows the PID rule of `controller` on that number; the initial step size,
    `dtmin`/`dtmax`, the PID coefficients and everything else are `controller`'s own. A
    non-finite error (a trial step far too long) rejects the step and shrinks the next one by
    `controller.factormin`. `sst.solve` uses it, clipped onto the save times, by default.

    **Fields:**

    - `model`: the `sst.AbstractModel` being integrated (its `error_norm`).
    - `controller`: a `diffrax.PIDController`: its tolerances go to `model.error_norm`, its
      `norm` only into the initial step size (and an implicit solver's root finder).
    """

    model: AbstractModel
    controller: dfx.PIDController

    def __check_init__(self):
        if not isinstance(self.controller, dfx.PIDController):
            raise ValueError(
                "ModelErrorController needs controller=diffrax.PIDController(rtol=..., atol=...), "
                f"got {type(self.controller).__name__}."
            )

    @property
    def rtol(self):
        return self.controller.rtol

    @property
    def atol(self):
        return self.controller.atol

    @property
    def norm(self):
        return self.controller.norm

    def wrap(self, direction):
        return dataclasses.replace(self, controller=self.controller.wrap(direction))

    def init(self, terms, t0, t1, y0, dt0, args, func, error_order):
        return self.controller.init(terms, t0, t1, y0, dt0, args, func, error_order)

    def adapt_step_size(
        self, t0, t1, y0, y1_candidate, args, y_error, error_order, controller_state
    ):
        error = self.model.error_norm(
            y0, y1_candidate, y_error, args, self.controller.rtol, self.controller.atol
        )
        error = jnp.where(jnp.isfinite(error), error, jnp.inf)
        # diffrax's PID rule on the one-component problem whose error is `error` and whose
        # tolerance is 1 (atol = 1, rtol = 0, state 0): its scaled error, max |error / 1|, is
        # exactly `error`, and the step-size update is `controller`'s own.
        unit = dataclasses.replace(self.controller, rtol=0.0, atol=1.0, norm=optx.max_norm)
        zero = jnp.zeros_like(error)
        return unit.adapt_step_size(t0, t1, zero, zero, args, error, error_order, controller_state)
