"""Functions of a standard Gaussian written in normalised Hermite polynomials.

Conventions follow the docs' [Hermite conventions][hermite-conventions]: `h_k = He_k / sqrt(k!)`
are orthonormal under
`N(0, 1)`, a function is `f = sum_k c_k h_k`, and for standard Gaussians `G, G'` with
correlation `q`, `E[h_k(G) h_l(G')] = delta_kl q^k`. From the coefficients follow the two
kernels the order-parameter ODEs need:

- `U(q) = E[sigma(G) sigma(G')] = sum_k sigma_k^2 q^k` (the activation's kernel),
- `V(s) = E[phi(G) sigma(G')] = sum_k phi_k sigma_k s^k` (target against activation).

ReLU and `erf(x / sqrt 2)` carry closed-form kernels (docs: [Hermite
conventions][hermite-conventions]), since their series
converge slowly; polynomials have finite, exact series.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.scipy.special as jsp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from ._validate import check_count, is_traced

_CLOSED_FORMS = ("relu", "erf")


def hermite_basis(x: Float[ArrayLike, ...], degree: int) -> Float[Array, "... degree+1"]:
    """Evaluate `h_0(x), ..., h_degree(x)` (normalised probabilists' Hermite polynomials).

    Uses the three-term recurrence `h_{k+1} = (x h_k - sqrt(k) h_{k-1}) / sqrt(k+1)`, which is
    stable at high degree, unlike monomial evaluation of `He_k`.

    **Returns:** an array with a trailing axis of length `degree + 1`.
    """
    x = jnp.asarray(x)
    values = [jnp.ones_like(x), x]
    for k in range(1, degree):
        values.append((x * values[k] - math.sqrt(k) * values[k - 1]) / math.sqrt(k + 1))
    return jnp.stack(values[: degree + 1], axis=-1)


def _np_hermite_basis(x: np.ndarray, degree: int) -> np.ndarray:
    # The numpy twin of `hermite_basis`, used at construction time in float64 regardless of
    # JAX's precision setting.
    out = np.empty(x.shape + (degree + 1,))
    out[..., 0] = 1.0
    if degree >= 1:
        out[..., 1] = x
    for k in range(1, degree):
        out[..., k + 1] = (x * out[..., k] - math.sqrt(k) * out[..., k - 1]) / math.sqrt(k + 1)
    return out


def _gaussian_panels(breakpoints: Sequence[float], degree: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights integrating `g(x) phi(x) dx` over the real line, `phi` the N(0,1) density.

    Composite Gauss-Legendre on short panels whose edges include `breakpoints`: each panel sees a
    smooth integrand whenever the function's kinks are among the breakpoints, so convergence is
    exponential even for ReLU or |x|. The range covers the oscillatory region of `h_degree`
    (|x| < 2 sqrt(degree)) plus a margin where the Gaussian tail is below 1e-20.
    """
    half_width = 2.0 * math.sqrt(degree + 1) + 12.0
    edges = np.linspace(-half_width, half_width, int(4 * half_width) + 1)
    inner = [b for b in breakpoints if -half_width < b < half_width]
    edges = np.unique(np.concatenate([edges, np.asarray(inner, dtype=float)]))
    gl_x, gl_w = np.polynomial.legendre.leggauss(24)
    lo, hi = edges[:-1, None], edges[1:, None]
    nodes = 0.5 * (hi - lo) * gl_x + 0.5 * (hi + lo)
    weights = 0.5 * (hi - lo) * gl_w * np.exp(-0.5 * nodes**2) / math.sqrt(2 * math.pi)
    return nodes.ravel(), weights.ravel()


def _relu_coefficients(degree: int) -> np.ndarray:
    # E[relu(G) He_k(G)] = He_{k-2}(0) / sqrt(2 pi) for k >= 2, with He_n(0) = (-1)^(n/2) (n-1)!!.
    c = np.zeros(degree + 1)
    c[0] = 1 / math.sqrt(2 * math.pi)
    if degree >= 1:
        c[1] = 0.5
    he_at_zero = 1.0  # He_0(0)
    for k in range(2, degree + 1, 2):
        n = k - 2
        if n > 0:
            he_at_zero *= -(n - 1)
        c[k] = he_at_zero / math.sqrt(2 * math.pi * math.factorial(k))
    return c


def _erf_coefficients(degree: int) -> np.ndarray:
    # U(q) = (2/pi) arcsin(q/2) = sum_k c_k^2 q^k, and erf is odd with positive c_1, alternating
    # signs: c_{2n+1} = (-1)^n sqrt((2/pi) (2n)! / (4^n n!^2 (2n+1) 2^(2n+1))).
    c = np.zeros(degree + 1)
    for k in range(1, degree + 1, 2):
        n = (k - 1) // 2
        taylor = math.comb(2 * n, n) / (4**n * (2 * n + 1) * 2 ** (2 * n + 1))
        c[k] = (-1) ** n * math.sqrt(2 / math.pi * taylor)
    return c


class Hermite(eqx.Module):
    """A function of a standard Gaussian, `f = sum_k coeffs[k] h_k` (docs: [Hermite
    conventions][hermite-conventions]).

    **Fields:**

    - `coeffs`: normalised Hermite coefficients `c_0, ..., c_K`. For a polynomial this is the
      exact expansion; for a closed-form function (`relu`, `erf`) it is the truncation used
      wherever a series is unavoidable (`V` against a non-polynomial partner, residuals).
    - `closed_form`: `None` for a finite series, else `"relu"` or `"erf"`; then `__call__`,
      `kernel`, `kernel_grad` and `norm2` are exact.

    Build one with `Hermite(coeffs)`, `Hermite.from_monomials`, `Hermite.from_callable`, `relu()`
    or `erf()`.
    """

    coeffs: Float[Array, " K"]
    closed_form: str | None = eqx.field(static=True, default=None)

    def __check_init__(self):
        if self.closed_form is not None and self.closed_form not in _CLOSED_FORMS:
            raise ValueError(
                f"closed_form must be None or one of {_CLOSED_FORMS}, got {self.closed_form!r}."
            )
        if jnp.ndim(self.coeffs) != 1 or jnp.shape(self.coeffs)[0] == 0:
            raise ValueError(
                "Hermite coefficients must be a non-empty 1-d sequence c_0, ..., c_K; got shape "
                f"{jnp.shape(self.coeffs)}."
            )
        if _is_concrete(self.coeffs) and not np.all(np.isfinite(np.asarray(self.coeffs))):
            raise ValueError("Hermite coefficients contain NaN or inf; pass finite numbers.")

    def __init__(self, coeffs: Float[ArrayLike, " K"], closed_form: str | None = None):
        self.coeffs = jnp.asarray(coeffs, dtype=float)
        self.closed_form = closed_form

    def __str__(self) -> str:
        """The function in words, e.g. `0.5 h0 + h1 - 2 h3`, or `relu` / `erf`."""
        if self.closed_form is not None or is_traced(self.coeffs):
            return self.closed_form or "Hermite(traced)"
        terms = []
        for k, c in enumerate(np.asarray(self.coeffs)):
            if c != 0:
                size = "" if abs(c) == 1 else f"{abs(c):.3g} "
                terms.append(("- " if c < 0 else "+ ") + f"{size}h{k}")
        return " ".join(terms).removeprefix("+ ") if terms else "0"

    @property
    def degree(self) -> int:
        """Highest degree carried in `coeffs`."""
        return self.coeffs.shape[0] - 1

    @property
    def is_polynomial(self) -> bool:
        """Whether `coeffs` is the exact, finite expansion."""
        return self.closed_form is None

    def __call__(self, x: Float[ArrayLike, ...]) -> Float[Array, ...]:
        """Evaluate the function itself at `x`."""
        x = jnp.asarray(x)
        if self.closed_form == "relu":
            return jnp.maximum(x, 0.0)
        if self.closed_form == "erf":
            return jsp.erf(x / math.sqrt(2.0))
        return hermite_basis(x, self.degree) @ self.coeffs

    def derivative(self, x: Float[ArrayLike, ...]) -> Float[Array, ...]:
        """Evaluate `f'(x)` (for ReLU, the step function with `f'(0) = 0`)."""
        x = jnp.asarray(x)
        if self.closed_form == "relu":
            return jnp.where(x > 0, 1.0, 0.0)
        if self.closed_form == "erf":
            return jnp.sqrt(2.0 / math.pi) * jnp.exp(-0.5 * x**2)
        # He_k' = k He_{k-1}, hence h_k' = sqrt(k) h_{k-1}.
        k = jnp.arange(1, self.degree + 1, dtype=self.coeffs.dtype)
        return hermite_basis(x, max(self.degree - 1, 0))[..., : self.degree] @ (
            jnp.sqrt(k) * self.coeffs[1:]
        )

    def kernel(self, q: Float[ArrayLike, ...]) -> Float[Array, ...]:
        """`U(q) = E[f(G) f(G')]` for unit Gaussians with correlation `q` (docs: [Hermite
        conventions][hermite-conventions])."""
        q = jnp.asarray(q)
        if self.closed_form == "relu":
            q = jnp.clip(q, -1.0, 1.0)
            return (jnp.sqrt(1.0 - q**2) + (jnp.pi - jnp.arccos(q)) * q) / (2 * jnp.pi)
        if self.closed_form == "erf":
            return (2.0 / jnp.pi) * jnp.arcsin(jnp.clip(q, -1.0, 1.0) / 2.0)
        return power_series(self.coeffs**2, q)

    def kernel_grad(self, q: Float[ArrayLike, ...]) -> Float[Array, ...]:
        """`U'(q)`, the derivative of `kernel`."""
        q = jnp.asarray(q)
        if self.closed_form == "relu":
            return (jnp.pi - jnp.arccos(jnp.clip(q, -1.0, 1.0))) / (2 * jnp.pi)
        if self.closed_form == "erf":
            return 2.0 / (jnp.pi * jnp.sqrt(4.0 - jnp.clip(q, -1.0, 1.0) ** 2))
        return power_series_grad(self.coeffs**2, q)

    @property
    def norm2(self) -> Float[Array, ""]:
        """`E[f(G)^2] = U(1)`, exact also for closed forms."""
        return self.kernel(jnp.asarray(1.0))

    @classmethod
    def from_monomials(cls, monomials: Sequence[float]) -> Hermite:
        """The polynomial `sum_j monomials[j] x^j`, converted exactly to Hermite coefficients."""
        he = np.polynomial.hermite_e.poly2herme(np.asarray(monomials, dtype=float))
        scale = np.sqrt([math.factorial(k) for k in range(len(he))])
        return cls(he * scale)

    @classmethod
    def from_callable(
        cls,
        fn: Callable[[np.ndarray], ArrayLike],
        degree: int,
        breakpoints: Sequence[float] = (0.0,),
    ) -> Hermite:
        """Hermite coefficients `c_k = E[fn(G) h_k(G)]`, `k <= degree`, by quadrature.

        **Arguments:**

        - `fn`: vectorised function of a float64 numpy array.
        - `degree`: highest degree to compute.
        - `breakpoints`: points where `fn` has kinks or jumps. Panels of composite Gauss-Legendre
          quadrature end there, so that kinked functions (ReLU, |x|) are integrated to about 1e-12
          instead of the slow algebraic convergence of Gauss-Hermite rules.

        The result is a truncated series: its kernel `U` is exact only if `fn` is a polynomial of
        degree at most `degree`.
        """
        degree = check_count("degree", degree, low=0)
        x, w = _gaussian_panels(breakpoints, degree)
        try:
            values = np.asarray(fn(x), dtype=float)
        except TypeError as err:
            raise ValueError(
                "from_callable calls fn on a numpy array of nodes, and fn failed on it "
                f"({err}); pass a vectorised function, e.g. numpy.tanh, or numpy.vectorize(fn)."
            ) from None
        if values.shape != x.shape or not np.all(np.isfinite(values)):
            raise ValueError(
                "from_callable needs a vectorised function returning finite values of the same "
                f"shape as its input; got shape {values.shape} for input shape {x.shape}."
            )
        return cls((w * values) @ _np_hermite_basis(x, degree))


def relu(degree: int = 32) -> Hermite:
    """ReLU, with the exact kernel `U(q) = (sqrt(1-q^2) + (pi - arccos q) q) / (2 pi)`.

    `degree` sets the truncation of the coefficients used only where a series is unavoidable.
    """
    return Hermite(_relu_coefficients(check_count("degree", degree, 0)), closed_form="relu")


def erf(degree: int = 33) -> Hermite:
    """`erf(x / sqrt 2)`, with the exact kernel `U(q) = (2/pi) arcsin(q/2)`.

    `degree` sets the truncation of the coefficients used only where a series is unavoidable.
    """
    return Hermite(_erf_coefficients(check_count("degree", degree, 0)), closed_form="erf")


def cross_kernel(
    target: Hermite, activation: Hermite, s: Float[ArrayLike, ...]
) -> Float[Array, ...]:
    """`V(s) = E[phi(G) sigma(G')] = sum_k phi_k sigma_k s^k` (docs: [Hermite
    conventions][hermite-conventions]).

    Exact when either function is a polynomial, or when both are the same closed form (then
    `V = U`); otherwise the product of the two truncated series.
    """
    if _same_closed_form(target, activation):
        return activation.kernel(s)
    return power_series(_cross_coeffs(target, activation), jnp.asarray(s))


def cross_kernel_grad(
    target: Hermite, activation: Hermite, s: Float[ArrayLike, ...]
) -> Float[Array, ...]:
    """`V'(s)`, the derivative of `cross_kernel`."""
    if _same_closed_form(target, activation):
        return activation.kernel_grad(s)
    return power_series_grad(_cross_coeffs(target, activation), jnp.asarray(s))


def _same_closed_form(target: Hermite, activation: Hermite) -> bool:
    return target.closed_form is not None and target.closed_form == activation.closed_form


def _cross_coeffs(target: Hermite, activation: Hermite) -> Array:
    n = min(target.degree, activation.degree) + 1
    return target.coeffs[:n] * activation.coeffs[:n]


def power_series(c: Array, q: Array) -> Array:
    """`sum_k c_k q^k` by Horner's rule (zero for an empty `c`)."""
    if c.shape[0] == 0:
        return jnp.zeros_like(q)
    out = jnp.zeros_like(q) + c[-1]
    for ck in c[-2::-1]:
        out = out * q + ck
    return out


def power_series_grad(c: Array, q: Array) -> Array:
    """Derivative of `power_series(c, q)` with respect to `q`."""
    return power_series(jnp.arange(1, c.shape[0], dtype=c.dtype) * c[1:], q)


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)
