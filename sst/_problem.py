"""A learning problem (target of `k` directions, activation, eps, noise) and what every model of
it shares: the kernels `V` and `U`, the residuals `r_alpha = c_alpha - b_alpha mu_alpha` of the
Hermite moments (docs: [the model page][setting], [targets of k directions][multi-index-setting]).

A single-index target is an `sst.Hermite` (`k = 1`, any function, closed-form kernels for relu and
erf); a target of `k` directions is an `sst.Target`. Residuals are labelled by multi-indices
`alpha` in `N^k`: the degree `l` of a single-index target is the multi-index `(l,)`.
"""

from __future__ import annotations

import abc
from collections.abc import Hashable, Sequence

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from ._hermite import Hermite, cross_kernel, cross_kernel_grad
from ._model import AbstractModel
from ._target import (
    MultiIndex,
    Target,
    derivative_indices,
    graded_indices,
    kernel_factors,
    monomials,
)
from ._validate import check_eps_and_noise, is_traced, require_x64


class Problem(eqx.Module):
    """A learning problem: target, activation, relative learning rate, label noise.

    **Fields:**

    - `target`: the target link `phi`: an `sst.Hermite` for a single-index target
      `phi(<u*, x>)` (`k = 1`), or an `sst.Target` of `k` directions `phi(U*^T x)`.
    - `activation`: the activation `sigma` as an `sst.Hermite`.
    - `eps`: the relative learning rate of the first layer (docs: [gradient
      flow][gradient-flow]); the second layer is `1/eps` times faster. Must be positive. A JAX
      scalar, so it can be vmapped over or differentiated.
    - `noise`: standard deviation of additive Gaussian label noise; it shifts the risk by
      `noise^2 / 2` and does not change the population dynamics.

    The overlaps of a state have shape `(m,)` for an `sst.Hermite` target and `(m, k)` for an
    `sst.Target` (also when `k = 1`).
    """

    target: Hermite | Target
    activation: Hermite
    eps: Float[Array, ""]
    noise: Float[Array, ""]

    def __init__(
        self,
        target: Hermite | Target,
        activation: Hermite,
        eps: float | Float[ArrayLike, ""],
        noise: float | Float[ArrayLike, ""] = 0.0,
    ):
        require_x64("sst.Problem")
        self.target = target
        self.activation = activation
        self.eps = jnp.asarray(eps, dtype=float)
        self.noise = jnp.asarray(noise, dtype=float)

    def __check_init__(self):
        if not isinstance(self.target, Hermite | Target):
            raise ValueError(
                "Problem needs `target` as an sst.Hermite (one direction, e.g. "
                "sst.Hermite([0, 1, 1, 1])) or an sst.Target (k directions, e.g. "
                "sst.Target.from_monomials({(1, 0): 1.0, (1, 1): 1.0})); got "
                f"{type(self.target).__name__}."
            )
        if not isinstance(self.activation, Hermite):
            raise ValueError(
                "Problem needs `activation` as an sst.Hermite, e.g. sst.Hermite([0.5, 1, 1, 1]) "
                f"or sst.relu(); got {type(self.activation).__name__}."
            )
        check_eps_and_noise(self.eps, self.noise)

    def __str__(self) -> str:
        """The problem in words, e.g. `phi = h1 + h2, sigma = relu, eps = 0.001`."""
        eps = "traced" if is_traced(self.eps) else f"{float(self.eps):.3g}"
        return f"phi = {self.target}, sigma = {self.activation}, eps = {eps}"

    @property
    def k(self) -> int:
        """The number of target directions."""
        return 1 if isinstance(self.target, Hermite) else self.target.k

    @property
    def vector_overlaps(self) -> bool:
        """Whether states carry overlaps of shape `(m, k)` (an `sst.Target`) rather than `(m,)`
        (an `sst.Hermite` target)."""
        return isinstance(self.target, Target)

    @property
    def labels(self) -> tuple[MultiIndex, ...]:
        """The multi-indices whose residuals are reported: all of degree up to the target's
        (for an `sst.Hermite` target the degrees `(0,), (1,), ...`)."""
        return graded_indices(self.k, self.target.degree)

    def target_coeffs(self, indices: Sequence[MultiIndex]) -> Float[Array, " N"]:
        """The target's coefficients `c_alpha` on `indices` (zero where not carried)."""
        if isinstance(self.target, Target):
            return self.target.dense_coeffs(indices)
        degrees = np.array([alpha[0] for alpha in indices], dtype=np.int64)
        c = self.target.coeffs
        return jnp.where(degrees <= self.target.degree, c[np.minimum(degrees, c.shape[0] - 1)], 0.0)

    def factors(self, indices: Sequence[MultiIndex]) -> Float[Array, " N"]:
        """`b_alpha = sigma_|alpha| sqrt(|alpha|!/alpha!)` (zero beyond the activation's
        coefficients): the network's projection on `h_alpha(z)` is `b_alpha mu_alpha`."""
        sigma = self.activation.coeffs
        degrees = np.array([sum(a) for a in indices], dtype=np.int64)
        inside = degrees <= self.activation.degree
        per_degree = jnp.where(inside, sigma[np.minimum(degrees, sigma.shape[0] - 1)], 0.0)
        return per_degree * kernel_factors(indices)

    def residuals(
        self, moments: Float[Array, "... N"], indices: Sequence[MultiIndex]
    ) -> Float[Array, "... N"]:
        """`r_alpha = c_alpha - b_alpha mu_alpha` on `indices`, given `moments[..., j] =
        mu_{indices[j]} = sum_i p_i a_i s_i^alpha` (exact for any activation: the projection of
        the network function on `h_alpha(U*^T x)` is `b_alpha mu_alpha`)."""
        return self.target_coeffs(indices) - self.factors(indices) * moments

    def V(self, s: Float[ArrayLike, "... k"]) -> Float[Array, ...]:
        """`V(s) = E[phi(z) sigma(<w, x>)] = sum_alpha c_alpha b_alpha s^alpha` for overlaps `s`
        on the last axis (docs: [Hermite conventions][hermite-conventions]; closed form when
        target and activation are the same relu or erf)."""
        s = jnp.asarray(s)
        if isinstance(self.target, Hermite):
            return cross_kernel(self.target, self.activation, s[..., 0])
        P = monomials(jnp.moveaxis(s, -1, 0), self.target.indices)
        weights = self.target.coeffs * self.factors(self.target.indices)
        return jnp.tensordot(weights, P, axes=1)

    def dV(self, s: Float[ArrayLike, "... k"]) -> Float[Array, "... k"]:
        """`grad V(s)`, on the last axis."""
        s = jnp.asarray(s)
        if isinstance(self.target, Hermite):
            return cross_kernel_grad(self.target, self.activation, s[..., 0])[..., None]
        indices = self.target.indices
        lower = graded_indices(self.k, max(self.target.degree - 1, 0))
        source, factor = derivative_indices(indices, lower)
        weights = self.target.coeffs * self.factors(indices)
        d = jnp.where(source >= 0, factor * weights[np.maximum(source, 0)], 0.0)  # (k, N')
        P = monomials(jnp.moveaxis(s, -1, 0), lower)
        return jnp.moveaxis(jnp.tensordot(d, P, axes=1), 0, -1)

    def U(self, q: Float[ArrayLike, ...]) -> Float[Array, ...]:
        """`U(q) = sum_n sigma_n^2 q^n`, the activation's kernel (closed form for relu/erf)."""
        return self.activation.kernel(q)

    def dU(self, q: Float[ArrayLike, ...]) -> Float[Array, ...]:
        """`U'(q)`."""
        return self.activation.kernel_grad(q)

    def phi(self, z: Float[ArrayLike, "... k"]) -> Float[Array, ...]:
        """The target function at projections `z = U*^T x` on the last axis."""
        z = jnp.asarray(z)
        return self.target(z[..., 0]) if isinstance(self.target, Hermite) else self.target(z)

    @property
    def baseline_risk(self) -> Float[Array, ""]:
        """Risk of the zero network: `(|phi|^2 + noise^2) / 2`."""
        return 0.5 * (self.target.norm2 + self.noise**2)

    def with_parameters(self, **values: Array) -> Problem:
        """This problem with `eps`, the target's coefficients (same multi-indices) or the
        activation's coefficients replaced (closed-form kernels of relu/erf stay; only their
        truncated series change)."""
        unknown = sorted(set(values) - {"eps", "target", "activation"})
        if unknown:
            raise ValueError(
                f"Unknown parameter {unknown[0]!r}; a Problem's parameters are eps, target and "
                "activation."
            )
        target, activation = self.target, self.activation
        if "target" in values:
            if isinstance(target, Hermite):
                target = Hermite(values["target"], target.closed_form)
            else:
                target = Target(target.indices, values["target"])
        if "activation" in values:
            activation = Hermite(values["activation"], activation.closed_form)
        return Problem(target, activation, values.get("eps", self.eps), self.noise)


class AbstractProblemModel(AbstractModel):
    """A model of a `Problem`: its parameters are the problem's, its residuals `r_alpha`
    labelled by the multi-indices of degree up to the target's (`Problem.labels`)."""

    problem: eqx.AbstractVar[Problem]

    @property
    def eps(self):
        return self.problem.eps

    def parameters(self) -> dict[str, Array]:
        p = self.problem
        return {"eps": p.eps, "target": p.target.coeffs, "activation": p.activation.coeffs}

    def with_parameters(self, **values):
        return eqx.tree_at(lambda m: m.problem, self, self.problem.with_parameters(**values))

    @property
    def residual_labels(self) -> tuple[Hashable, ...]:
        return self.problem.labels

    @abc.abstractmethod
    def moments(self, state) -> Float[Array, " N"]:
        """`mu_alpha = sum_i p_i a_i s_i^alpha` for the multi-indices of `residual_labels`."""

    def residuals(self, state):
        return self.problem.residuals(self.moments(state), self.problem.labels)


def overlap_matrix(problem: Problem, s: Float[Array, "... m"]) -> Float[Array, "... m k"]:
    """A state's overlaps with the directions on the last axis: `(..., m, 1)` for an
    `sst.Hermite` target (stored as `(..., m)`), unchanged for an `sst.Target`."""
    return s if problem.vector_overlaps else s[..., None]


def state_overlaps(problem: Problem, s: Float[Array, "... m k"]) -> Float[Array, "... m"]:
    """The inverse of `overlap_matrix`: the overlaps as a state stores them."""
    return s if problem.vector_overlaps else s[..., 0]
