"""A learning problem (target, activation, eps, noise) and the Hermite moments of particles.

See the docs' [model page][setting] (`docs/model.md`): the kernels `V` and `U`
(#hermite-conventions) and
the residuals `r_k = phi_k - sigma_k m_k` of the mean-field ODE (#mean-field-ode).
"""

from __future__ import annotations

import abc
from collections.abc import Hashable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from ._hermite import Hermite, cross_kernel, cross_kernel_grad
from ._model import AbstractModel
from ._validate import check_eps_and_noise, is_traced, require_x64


class Problem(eqx.Module):
    """A learning problem: single-index target, activation, relative learning rate, label noise.

    **Fields:**

    - `target`: the target link `phi` as a `Hermite`.
    - `activation`: the activation `sigma` as a `Hermite`.
    - `eps`: the relative learning rate of the first layer (docs: [gradient flow][gradient-flow]);
    the second
      layer is `1/eps` times faster. Must be positive. A JAX scalar, so it can be vmapped over
      or differentiated.
    - `noise`: standard deviation of additive Gaussian label noise; it shifts the risk by
      `noise^2 / 2` and does not change the population dynamics.
    """

    target: Hermite
    activation: Hermite
    eps: Float[Array, ""]
    noise: Float[Array, ""]

    def __init__(
        self,
        target: Hermite,
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
        if not isinstance(self.target, Hermite) or not isinstance(self.activation, Hermite):
            raise ValueError(
                "Problem needs `target` and `activation` as sst.Hermite functions, e.g. "
                "sst.Hermite([0, 1, 1, 1]) or sst.relu()."
            )
        check_eps_and_noise(self.eps, self.noise)

    def __str__(self) -> str:
        """The problem in words, e.g. `phi = h1 + h2, sigma = relu, eps = 0.001`."""
        eps = "traced" if is_traced(self.eps) else f"{float(self.eps):.3g}"
        return f"phi = {self.target}, sigma = {self.activation}, eps = {eps}"

    def V(self, s: Float[ArrayLike, ...]) -> Float[Array, ...]:
        """`V(s) = sum_k phi_k sigma_k s^k` (docs: [Hermite conventions][hermite-conventions])."""
        return cross_kernel(self.target, self.activation, s)

    def dV(self, s: Float[ArrayLike, ...]) -> Float[Array, ...]:
        """`V'(s)`."""
        return cross_kernel_grad(self.target, self.activation, s)

    def U(self, q: Float[ArrayLike, ...]) -> Float[Array, ...]:
        """`U(q) = sum_k sigma_k^2 q^k`, the activation's kernel."""
        return self.activation.kernel(q)

    def dU(self, q: Float[ArrayLike, ...]) -> Float[Array, ...]:
        """`U'(q)`."""
        return self.activation.kernel_grad(q)

    @property
    def baseline_risk(self) -> Float[Array, ""]:
        """Risk of the zero network: `(|phi|^2 + noise^2) / 2`."""
        return 0.5 * (self.target.norm2 + self.noise**2)

    @property
    def degrees(self) -> tuple[int, ...]:
        """The Hermite degrees whose residuals are reported: those carried by the target."""
        return tuple(range(self.target.degree + 1))

    def residuals(self, moments: Float[Array, "... n"]) -> Float[Array, "... n"]:
        """`r_k = phi_k - sigma_k m_k` for `k < n` (docs: [the mean-field ODE][mean-field-ode]).

        `moments[..., k] = sum_i p_i a_i s_i^k`. This is exact for any activation: the
        projection of the network function on `h_k(<u*, x>)` is `sigma_k m_k`.
        """
        n = moments.shape[-1]
        return _pad(self.target.coeffs, n) - _pad(self.activation.coeffs, n) * moments

    def with_parameters(self, **values: Array) -> Problem:
        """This problem with `eps`, or the `target` or `activation` coefficients, replaced
        (closed-form kernels of `relu`/`erf` stay; only their truncated series change)."""
        unknown = sorted(set(values) - {"eps", "target", "activation"})
        if unknown:
            raise ValueError(
                f"Unknown parameter {unknown[0]!r}; a Problem's parameters are eps, target and "
                "activation."
            )
        target, activation = self.target, self.activation
        if "target" in values:
            target = Hermite(values["target"], target.closed_form)
        if "activation" in values:
            activation = Hermite(values["activation"], activation.closed_form)
        return Problem(target, activation, values.get("eps", self.eps), self.noise)


class AbstractProblemModel(AbstractModel):
    """A model of a `Problem` (target, activation, eps): its parameters are the problem's, its
    residuals the Hermite residuals of the degrees of the target."""

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
        return self.problem.degrees

    @abc.abstractmethod
    def moments(self, state) -> Float[Array, " n"]:
        """`m_k = sum_i p_i a_i s_i^k` for the degrees of the target."""

    def residuals(self, state):
        return self.problem.residuals(self.moments(state))


def _pad(c: Array, n: int) -> Array:
    return jnp.zeros(n, c.dtype).at[: min(n, c.shape[0])].set(c[:n])


# Above this many particles the powers s^k are built in a scan (see `_powers`).
_SCAN_POWERS_ABOVE = 2048


def _powers(s: Array, n: int) -> Array:
    """`s^k` for `k < n`, stacked along a new leading axis: shape `(n,) + s.shape`.

    Repeated products (exact-er than `pow` with an array of exponents). For many particles they
    run in a scan, which stops XLA from fusing the (transcendental) producer of `s` into each of
    the `n` powers and evaluating it `n` times (2x the cost of the whole vector field at
    m = 1e4); for few particles the scan's per-iteration overhead would dominate instead.
    """

    def multiply(acc, _):
        return acc * s, acc

    if s.size > _SCAN_POWERS_ABOVE:
        return jax.lax.scan(multiply, jnp.ones_like(s), length=n)[1]
    out = [jnp.ones_like(s)]
    for _ in range(n - 1):
        out.append(out[-1] * s)
    return jnp.stack(out)


def _moments(weights: Array, a: Array, s: Array, n: int) -> Array:
    """`m_k = sum_i p_i a_i s_i^k` for `k < n`: shape `(..., n)` for particles `(..., m)`."""
    return jnp.einsum("k...m,...m->...k", _powers(s, n), weights * a)
