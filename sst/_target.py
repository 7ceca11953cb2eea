"""Targets of `k` directions: multivariate Hermite coefficients, monomials and their indices.

The target is `phi(z) = sum_alpha c_alpha h_alpha(z)` with `z = U*^T x` (`k` standard normals),
`h_alpha(z) = prod_r h_{alpha_r}(z_r)` (docs: [multi-index targets][multi-index-setting]). A
neuron with overlaps `s = U*^T w` in the unit ball of `R^k` sees it through the kernel

`V(s) = E[phi(z) sigma(<w, x>)] = sum_alpha c_alpha sigma_|alpha| sqrt(|alpha|!/alpha!) s^alpha`,

and the network function's projection on `h_alpha(z)` is `sigma_|alpha| sqrt(|alpha|!/alpha!)
mu_alpha` with the moments `mu_alpha = sum_i p_i a_i s_i^alpha`: the residuals
`r_alpha = c_alpha - b_alpha mu_alpha`, `b_alpha = sigma_|alpha| sqrt(|alpha|!/alpha!)`.

Multi-indices are ordered by degree, then with the first direction first (`graded_indices`), so
the indices of degree `<= K` are a prefix of those of any higher degree.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Mapping, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from ._hermite import Hermite, _np_hermite_basis, hermite_basis
from ._validate import is_traced

MultiIndex = tuple[int, ...]


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


@functools.cache
def graded_indices(k: int, degree: int) -> tuple[MultiIndex, ...]:
    """All multi-indices of `N^k` with `|alpha| <= degree`, by degree, then lexicographically
    descending (`(1, 0, 0)` before `(0, 1, 0)`): `C(degree + k, k)` of them."""
    out = []
    for n in range(degree + 1):
        out.extend(
            sorted(
                (a for a in itertools.product(range(n + 1), repeat=k) if sum(a) == n), reverse=True
            )
        )
    return tuple(out)


def kernel_factors(indices: Sequence[MultiIndex]) -> np.ndarray:
    """`sqrt(|alpha|! / alpha!)` for each multi-index.

    `(s . s')^n = sum_{|alpha|=n} (n!/alpha!) s^alpha s'^alpha` and
    `E[h_alpha(z) h_n(<w, x>)] = delta_{n,|alpha|} sqrt(n!/alpha!) s^alpha`.
    """
    return np.array(
        [
            math.sqrt(math.factorial(sum(a)) / math.prod(math.factorial(j) for j in a))
            for a in indices
        ]
    )


def monomials(s: Float[Array, "k ..."], indices: Sequence[MultiIndex]) -> Float[Array, "N ..."]:
    """`s^alpha` for each multi-index, with the `k` coordinates on the leading axis of `s`.

    Powers by repeated products, then one product over the directions: for `k = 1` and the
    indices `(0,), (1,), ...` these are exactly the powers.
    """
    table = np.asarray(indices, dtype=np.int64).reshape(len(indices), s.shape[0])
    factors = _select(_powers(s, int(table.max(initial=0)) + 1), table)
    out = factors[0]
    for r in range(1, s.shape[0]):
        out = out * factors[r]
    return out


def _select(powers: Float[Array, "n k ..."], table: np.ndarray) -> Float[Array, "k N ..."]:
    """`powers[table[t, r], r]` for each multi-index `t` and direction `r`: one gather with a
    static index table (a 0/1 product costs `n` times the flops, stacked slices a kernel each),
    the powers themselves where every column of `table` is `0, 1, ..., n - 1`."""
    if all(np.array_equal(table[:, r], np.arange(powers.shape[0])) for r in range(table.shape[1])):
        return jnp.moveaxis(powers, 1, 0)
    k = table.shape[1]
    flat = powers.reshape((-1,) + powers.shape[2:])
    return jnp.take(flat, table.T * k + np.arange(k)[:, None], axis=0)


def derivative_indices(
    indices: Sequence[MultiIndex], lower: Sequence[MultiIndex]
) -> tuple[np.ndarray, np.ndarray]:
    """How `d/ds_r sum_alpha w_alpha s^alpha = sum_beta d_{r,beta} s^beta` reindexes `w`.

    **Returns:** `source` `(k, len(lower))` with the position in `indices` of `beta + e_r` (or
    `-1` where absent) and `factor` `(k, len(lower))` the exponent `beta_r + 1`, so that
    `d_{r,beta} = factor * w[source]` (zero where `source = -1`).
    """
    position = {a: i for i, a in enumerate(indices)}
    k = len(indices[0])
    source = np.full((k, len(lower)), -1, dtype=np.int64)
    factor = np.zeros((k, len(lower)))
    for j, beta in enumerate(lower):
        for r in range(k):
            up = beta[:r] + (beta[r] + 1,) + beta[r + 1 :]
            if up in position:
                source[r, j] = position[up]
                factor[r, j] = beta[r] + 1
    return source, factor


def _is_index(alpha, k: int | None) -> bool:
    return (
        isinstance(alpha, tuple | list)
        and len(alpha) >= 1
        and (k is None or len(alpha) == k)
        and all(
            isinstance(j, int | np.integer) and not isinstance(j, bool) and j >= 0 for j in alpha
        )
    )


class Target(eqx.Module):
    """A target of `k` directions, `phi(z) = sum_t coeffs[t] h_{indices[t]}(z)` with
    `h_alpha(z) = prod_r h_{alpha_r}(z_r)` normalised multivariate Hermite polynomials
    (orthonormal under `N(0, I_k)`; docs: [multi-index targets][multi-index-setting]).

    **Fields:**

    - `indices`: the multi-indices carried (static: a tuple of `k`-tuples of non-negative ints).
    - `coeffs`: their coefficients `c_alpha`, `(T,)`, a JAX array (batched or differentiated by
      `solve_batch` and `jax.grad` as the `"target"` parameter).

    Build one with `Target(indices, coeffs)`, `from_terms({alpha: c})`, `committee`,
    `from_monomials` (sums of products of powers such as `z_1 z_2`), `from_callable` (tensor
    Gauss quadrature of any function of `k` variables) or `from_hermite` (`k = 1`).
    """

    indices: tuple[MultiIndex, ...] = eqx.field(static=True)
    coeffs: Float[Array, " T"]

    def __init__(self, indices: Sequence[Sequence[int]], coeffs: Float[ArrayLike, " T"]):
        indices = list(indices)
        if not indices or not all(_is_index(a, None) for a in indices):
            raise ValueError(
                "Target needs a non-empty list of multi-indices, each a non-empty "
                f"tuple of non-negative integers such as (1, 0, 2); got {indices!r}."
            )
        k = len(indices[0])
        if any(len(a) != k for a in indices):
            raise ValueError(
                f"All multi-indices of a target need the same length k; got lengths "
                f"{sorted({len(a) for a in indices})}."
            )
        self.indices = tuple(tuple(int(j) for j in a) for a in indices)
        if len(set(self.indices)) != len(self.indices):
            raise ValueError(
                "A multi-index appears twice in the target; add the coefficients of repeated "
                "terms together (Target.from_terms does)."
            )
        self.coeffs = jnp.asarray(coeffs, dtype=float)

    def __check_init__(self):
        if jnp.shape(self.coeffs) != (len(self.indices),):
            raise ValueError(
                f"Target needs one coefficient per multi-index: {len(self.indices)} "
                f"indices, coefficients of shape {jnp.shape(self.coeffs)}."
            )
        if not is_traced(self.coeffs) and not np.all(np.isfinite(np.asarray(self.coeffs))):
            raise ValueError("The target's coefficients contain NaN or inf; pass finite numbers.")

    @property
    def k(self) -> int:
        """The number of directions."""
        return len(self.indices[0])

    def __str__(self) -> str:
        """The target in words, e.g. `z1 + z1 z2 - 0.5 h2(z1) z3` (see `format_index`)."""
        if is_traced(self.coeffs):
            return "Target(traced)"
        terms = []
        for alpha, c in zip(self.indices, np.asarray(self.coeffs), strict=True):
            if c != 0:
                name = format_index(alpha)
                size = "" if abs(c) == 1 and name != "1" else f"{abs(c):.3g} "
                terms.append(("- " if c < 0 else "+ ") + (size + name if name != "1" else size))
        return " ".join(t.strip() for t in terms).removeprefix("+ ") if terms else "0"

    @property
    def degree(self) -> int:
        """The highest total degree `|alpha|` carried."""
        return max(sum(a) for a in self.indices)

    @property
    def norm2(self) -> Float[Array, ""]:
        """`E[phi(z)^2] = sum_alpha c_alpha^2`."""
        return jnp.sum(self.coeffs**2)

    def __call__(self, z: Float[ArrayLike, "... k"]) -> Float[Array, ...]:
        """Evaluate `phi(z)` at points `z` with the `k` coordinates on the last axis."""
        z = jnp.asarray(z)
        if z.shape[-1:] != (self.k,):
            raise ValueError(
                f"phi(z) needs z with a last axis of length k={self.k}, got {z.shape}."
            )
        basis = hermite_basis(z, self.degree)  # (..., k, D + 1)
        table = np.asarray(self.indices)
        terms = basis[..., 0, table[:, 0]]
        for r in range(1, self.k):
            terms = terms * basis[..., r, table[:, r]]
        return terms @ self.coeffs.astype(terms.dtype)

    def coefficient(self, alpha: Sequence[int]) -> Float[Array, ""]:
        """`c_alpha` (zero for a multi-index not carried)."""
        alpha = tuple(alpha)
        if alpha in self.indices:
            return self.coeffs[self.indices.index(alpha)]
        return jnp.zeros((), self.coeffs.dtype)

    def dense_coeffs(self, indices: Sequence[MultiIndex]) -> Float[Array, " N"]:
        """The coefficients on a list of multi-indices (zero where not carried; terms of the
        target missing from `indices` are left out)."""
        position = {a: i for i, a in enumerate(indices)}
        rows = [(position[a], t) for t, a in enumerate(self.indices) if a in position]
        out = jnp.zeros(len(indices), self.coeffs.dtype)
        if not rows:
            return out
        dst, src = (np.asarray(v) for v in zip(*rows, strict=True))
        return out.at[dst].set(self.coeffs[src])

    # ----------------------------------------------------------------------------- constructors

    @classmethod
    def from_terms(
        cls, terms: Mapping[Sequence[int], float] | Sequence[tuple[Sequence[int], float]]
    ) -> Target:
        """From `{alpha: c_alpha}` or a list of `(alpha, c_alpha)` pairs (repeats are added)."""
        pairs = list(terms.items()) if isinstance(terms, Mapping) else list(terms)
        if not pairs or not all(isinstance(p, tuple | list) and len(p) == 2 for p in pairs):
            raise ValueError(
                "from_terms needs a non-empty mapping {alpha: c} or list of (alpha, c) pairs; "
                f"got {terms!r}."
            )
        summed: dict[MultiIndex, float] = {}
        for alpha, c in pairs:
            if not _is_index(alpha, None):
                raise ValueError(
                    f"Multi-index {alpha!r} must be a tuple of non-negative integers, e.g. (1, 0)."
                )
            key = tuple(int(j) for j in alpha)
            summed[key] = summed.get(key, 0.0) + float(c)
        return cls(list(summed), list(summed.values()))

    @classmethod
    def from_hermite(cls, target: Hermite) -> Target:
        """The single-index polynomial target `sum_j phi_j h_j` as a target with `k = 1`."""
        if not isinstance(target, Hermite) or not target.is_polynomial:
            raise ValueError(
                "from_hermite needs a polynomial sst.Hermite (a finite series); for relu/erf "
                "pass sst.Hermite(relu().coeffs) to use the truncated series explicitly."
            )
        return cls([(j,) for j in range(target.degree + 1)], target.coeffs)

    @classmethod
    def committee(
        cls,
        g: Hermite | Sequence[float] | Sequence[Hermite | Sequence[float]],
        k: int | None = None,
    ) -> Target:
        """The committee `sum_r g_r(z_r)`: one function `g` for all `k` directions (pass `k`),
        or a list of `k` functions. Each `g_r` is an `sst.Hermite` polynomial or a sequence of
        its Hermite coefficients; the constant parts add up in `c_0`."""
        funcs = _committee_functions(g, k)
        k = len(funcs)
        terms: list[tuple[MultiIndex, float]] = []
        for r, coeffs in enumerate(funcs):
            for j, c in enumerate(coeffs):
                alpha = (0,) * k if j == 0 else (0,) * r + (j,) + (0,) * (k - r - 1)
                terms.append((alpha, float(c)))
        return cls.from_terms(terms)

    @classmethod
    def from_monomials(
        cls, terms: Mapping[Sequence[int], float] | Sequence[tuple[Sequence[int], float]]
    ) -> Target:
        """The polynomial `sum_beta c_beta z^beta` (`z^beta = prod_r z_r^beta_r`), converted
        exactly: e.g. `{(1, 0, 0): 1, (1, 1, 0): 1, (1, 1, 1): 1}` is the staircase
        `z_1 + z_1 z_2 + z_1 z_2 z_3`, `{(2, 0): 1}` is `z_1^2 = h_0 + sqrt(2) h_2(z_1)`."""
        monomial_terms = cls.from_terms(terms)
        summed: dict[MultiIndex, float] = {}
        for beta, c in zip(monomial_terms.indices, np.asarray(monomial_terms.coeffs), strict=True):
            # z^b in normalised Hermite polynomials, one direction at a time, then the tensor
            # product of the k one-dimensional expansions.
            factors = [Hermite.from_monomials([0.0] * b + [1.0]).coeffs for b in beta]
            for alpha in itertools.product(*(range(len(f)) for f in factors)):
                value = c * math.prod(float(f[j]) for f, j in zip(factors, alpha, strict=True))
                if value != 0.0:
                    summed[alpha] = summed.get(alpha, 0.0) + value
        if not summed:
            summed[(0,) * monomial_terms.k] = 0.0
        return cls(list(summed), list(summed.values()))

    @classmethod
    def from_callable(
        cls,
        fn: Callable[[np.ndarray], ArrayLike],
        k: int,
        degree: int,
        nodes: int = 40,
        drop: float = 1e-12,
    ) -> Target:
        """`c_alpha = E[fn(z) h_alpha(z)]` for `|alpha| <= degree`, by tensor Gauss-Hermite
        quadrature with `nodes` points per direction (`nodes^k` evaluations; exact for a
        polynomial `fn` of degree `< 2 nodes - degree`).

        **Arguments:** `fn` maps a float64 array of points `(..., k)` to values `(...)`;
        coefficients with `|c_alpha| <= drop` are left out (quadrature rounding of absent
        terms). For kinked functions of one direction prefer `committee` with
        `sst.Hermite.from_callable`, which integrates kinks accurately.
        """
        if not (isinstance(k, int) and k >= 1 and isinstance(degree, int) and degree >= 0):
            raise ValueError(
                f"from_callable needs integers k >= 1 and degree >= 0; got {k}, {degree}."
            )
        x, w = np.polynomial.hermite_e.hermegauss(nodes)
        w = w / w.sum()
        grid = np.stack(np.meshgrid(*([x] * k), indexing="ij"), axis=-1)
        values = np.asarray(fn(grid), dtype=float)
        if values.shape != grid.shape[:-1] or not np.all(np.isfinite(values)):
            raise ValueError(
                "from_callable needs a vectorised fn mapping points of shape (..., k) to finite "
                f"values of shape (...); got shape {values.shape} for points {grid.shape}."
            )
        weighted_basis = w[:, None] * _np_hermite_basis(x, degree)  # (nodes, D + 1)
        tensor = values
        for _ in range(k):
            # Contract the leading quadrature axis; the new Hermite axis goes last.
            tensor = np.tensordot(tensor, weighted_basis, axes=([0], [0]))
        terms = [(a, tensor[a]) for a in graded_indices(k, degree) if abs(tensor[a]) > drop]
        return cls.from_terms(terms or [((0,) * k, 0.0)])


def _committee_functions(g, k) -> list[np.ndarray]:
    def coefficients(f) -> np.ndarray:
        if isinstance(f, Hermite):
            if not f.is_polynomial:
                raise ValueError(
                    "committee needs polynomial sst.Hermite functions (a finite series); for "
                    "relu/erf pass sst.Hermite(relu().coeffs) to use the truncated series."
                )
            return np.asarray(f.coeffs)
        return np.asarray(f, dtype=float)

    single = isinstance(g, Hermite) or (
        (isinstance(g, Sequence) or (isinstance(g, np.ndarray) and g.ndim == 1))
        and all(isinstance(c, int | float | np.floating | np.integer) for c in g)
    )
    if single:
        if not isinstance(k, int) or k < 1:
            raise ValueError(
                f"committee with one function g needs the number of directions k >= 1; got {k!r}."
            )
        funcs = [coefficients(g)] * k
    else:
        funcs = [coefficients(f) for f in g]
        if not funcs or (k is not None and len(funcs) != k):
            raise ValueError(f"committee needs k functions g_1..g_k; got {len(funcs)} for k={k!r}.")
    if any(f.ndim != 1 or f.size == 0 for f in funcs):
        raise ValueError("Each committee function needs a non-empty 1-d list of coefficients.")
    return funcs


def format_index(alpha: Sequence[int]) -> str:
    """A readable name of `h_alpha(z)`: `"z1 z2"` for `(1, 1, 0)`, `"h2(z1) z3"` for
    `(2, 0, 1)`, `"1"` for the constant."""
    parts = []
    for r, j in enumerate(alpha):
        if j == 1:
            parts.append(f"z{r + 1}")
        elif j > 1:
            parts.append(f"h{j}(z{r + 1})")
    return " ".join(parts) or "1"
