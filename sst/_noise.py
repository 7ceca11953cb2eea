"""The noise matrix of online SGD at a finite step (docs: [online SGD at a finite
step][sgd-noise]).

Online SGD with `B` fresh samples per step and step `eta = tau B / d` adds to the
finite-dimensional ODE terms of order `tau` built from

`N_ij = a_i a_j ( E[(phi(z*) - f(x))^2 sigma'(z_i) sigma'(z_j)]
+ noise^2 E[sigma'(z_i) sigma'(z_j)] )`,

`f(x) = (1/m) sum_l a_l sigma(z_l)`, `z_i = <w_i, x>`, `z* = U*^T x`: Gaussian expectations of
products with at most four distinct neuron arguments and the target's `k` directions, with the
covariance `[[I, S^T], [S, Q]]`. They are computed exactly:

- for a polynomial activation and a polynomial target (any `sst.Target`, or an `sst.Hermite`
  finite series) by the diagram formula in its covariance form,
  `E[prod_a F_a(Y_a)] = sum_n prod_{u<v} C_uv^{n_uv} / n_uv! prod_a E[F_a^(deg_a n)(Y_a)]`
  (sum over edge multiplicities `n_uv >= 0` of the complete graph on the arguments, `deg_a n`
  the number of edge ends at `a`), which holds for any centred Gaussian vector, singular or not
  (two arguments may coincide); the target enters through an exact Gauss-Hermite rule over `z*`;
- for `erf(x / sqrt 2)` as both activation and target (one direction) by the closed form of the
  committee machine's four-point function `I4` (Saad and Solla, Phys. Rev. E 52, 4225 (1995);
  Biehl and Schwarze, J. Phys. A 28, 643 (1995)), see `erf_i4`;
- for the erf activation with a polynomial target: the `f^2` part by `I4`, the parts with the
  target in closed form given `z*` and a Gauss-Hermite rule over `z*`, to within 1e-13 of the
  largest entry (see `_erf_target_terms`);
- for ReLU as both activation and target (one direction) by second moments of Gaussian
  orthants, which integration by parts reduces to orthant probabilities: closed forms up to three
  arguments, and Plackett's one-dimensional integral on a Gauss-Legendre rule for four (to
  rounding, or within 2e-8 where two arguments nearly coincide; see `_orthant_probability`),
  less accurate where three arguments come within 1e-11 of each other (1e-3 where they are
  equal; docs).

ReLU with another target is refused: given `z*`, its terms are orthant integrals of Gaussians
with nonzero means.
"""

from __future__ import annotations

import functools
import itertools
import math

import jax
import jax.numpy as jnp
import jax.scipy.special as jsp
import numpy as np
from jaxtyping import Array, Float

from ._hermite import Hermite
from ._problem import Problem


def noise_supported(problem: Problem) -> bool:
    """Whether `noise_matrix` computes the expectations of `problem`: a polynomial activation
    with a polynomial target, `erf` with a polynomial or (single-index) `erf` target, or `relu`
    with a (single-index) `relu` target."""
    act, target = problem.activation, problem.target
    polynomial_target = not isinstance(target, Hermite) or target.is_polynomial
    if act.is_polynomial:
        return polynomial_target
    if act.closed_form == "relu":
        return isinstance(target, Hermite) and target.closed_form == "relu"
    erf_target = isinstance(target, Hermite) and target.closed_form == "erf"
    return act.closed_form == "erf" and (polynomial_target or erf_target)


def noise_matrix(
    problem: Problem,
    a: Float[Array, " m"],
    s: Float[Array, "m ..."],
    Q: Float[Array, "m m"],
) -> Float[Array, "m m"]:
    """The SGD noise matrix `N_ij` (docs: [online SGD at a finite step][sgd-noise]):

    `N_ij = a_i a_j ( E[(phi(z*) - f(x))^2 sigma'(z_i) sigma'(z_j)]
    + noise^2 E[sigma'(z_i) sigma'(z_j)] )`, `f(x) = (1/m) sum_l a_l sigma(z_l)`.

    **Arguments:** the `problem` (a polynomial activation and target, erf with a polynomial or
    erf target, or relu with a relu target), the second-layer weights `a`, the overlaps `s`
    with the target directions, `(m, k)` (or `(m,)` for an `sst.Hermite` target, as its
    states store them), and the overlap matrix `Q` (its diagonal is taken as exactly 1).

    **Returns:** `N`, `(m, m)`, symmetric positive semi-definite.
    """
    if not noise_supported(problem):
        raise ValueError(
            "problem needs a polynomial activation with a polynomial target, erf with a "
            "polynomial or erf target, or relu with a relu target for the SGD noise terms (got "
            f"sigma = {problem.activation}, phi = {problem.target}); use one of those, such as "
            "sst.Hermite(sst.relu(4).coeffs) as a polynomial stand-in for relu."
        )
    s = s[:, None] if s.ndim == 1 else s  # a single-index state's overlaps
    m = a.shape[0]
    eye = jnp.eye(m, dtype=Q.dtype)
    Q = Q * (1.0 - eye) + eye
    i, j, table = _neuron_pairs(m)
    if problem.activation.closed_form == "relu":
        T, T3 = _relu_error_moment(problem, a, s, Q)
        return (a[i] * a[j] * (T + problem.noise**2 * T3))[table]
    if problem.activation.closed_form == "erf":
        T, T3 = _erf_error_moment(problem, a, s, Q)
        return a[:, None] * a[None, :] * (T + problem.noise**2 * T3)
    F = _factorial_powers(Q, problem.activation.degree + 1)  # (K + 1, m, m)
    T = _polynomial_error_moment(problem, a, s, Q, F)
    T3 = _derivative_kernel(problem.activation, F[:, i, j])
    return (a[i] * a[j] * (T + problem.noise**2 * T3))[table]


# ------------------------------------------------------------------------ polynomial functions
#
# Every expectation is computed for the pairs i <= j only (`N` is symmetric) and by few large
# operations over static index tables: a vector field calls this at every stage, and at m = 8
# the cost of many small operations, not the arithmetic, was what limited a noisy solve.


@functools.cache
def _neuron_pairs(m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pairs `i <= j` of `m` neurons, as index arrays `(i, j)`, and the `(m, m)` table of
    the pair of each entry (`(i, j)` and `(j, i)` share one)."""
    i, j = np.triu_indices(m)
    table = np.empty((m, m), dtype=np.int64)
    table[i, j] = table[j, i] = np.arange(i.shape[0])
    return i, j, table


def _scaled(coeffs: Array, length: int) -> Array:
    """`sqrt(p!) c_p` (`= E[F^(p)(G)]` for `F = sum_p c_p h_p`), zero-padded to `length`."""
    n = min(coeffs.shape[0], length)
    root = np.sqrt([float(math.factorial(p)) for p in range(n)])
    return jnp.zeros(length, coeffs.dtype).at[:n].set(coeffs[:n] * root)


def _factorial_powers(C: Array, n: int) -> Array:
    """`C^x / x!` (elementwise) for `x < n`, stacked on a new leading axis."""
    out = [jnp.ones_like(C)]
    for x in range(1, n):
        out.append(out[-1] * C / x)
    return jnp.stack(out)


@functools.cache
def _edges_to_pair(K: int) -> np.ndarray:
    """The edge multiplicities `(y, z)` from one neuron `l` to the two derivative vertices
    `i, j`: each at most `K - 1` (the degree of `sigma'`), their sum at most `K`; ordered by
    the sum (the degree they give `l`)."""
    rows = [(y, z) for y in range(K) for z in range(K) if y + z <= K]
    return np.array(sorted(rows, key=lambda r: (sum(r), r)), dtype=np.int64)


@functools.cache
def _square_diagrams(K: int) -> tuple[list[tuple[int, int]], np.ndarray]:
    """The diagrams of `E[sigma'_i sigma'_j sigma_l sigma_n]`: edges `e` (i-j), `Y = (y, z)`
    (l to i, j), `x` (l-n) and `Z = (u, v)` (n to i, j), weighted by the vertex factors
    `E[sigma^(deg)(G)]` at the degrees `e + y + u + 1` (i), `e + z + v + 1` (j), `y + z + x`
    (l) and `u + v + x` (n), each at most `K`.

    **Returns:** the slices of `_edges_to_pair(K)` of each degree `y + z = 0..K`, and the
    `(4, K, X, Z)` vertex degrees per `e < K`, row `X = (Y, x)` (`x <= K - y - z`, ordered by
    `Y` then `x`) and column `Z`; a degree above `K`, whose factor is zero, is set to `K + 1`.
    """
    Y = _edges_to_pair(K)
    degree = Y.sum(axis=1)
    slices = [
        (int(np.searchsorted(degree, d)), int(np.searchsorted(degree, d, "right")))
        for d in range(K + 1)
    ]
    rows = np.array([(r, x) for r in range(len(Y)) for x in range(K + 1 - degree[r])])
    (y, z), x = Y[rows[:, 0]].T[:, :, None], rows[:, 1][:, None]
    u, v = Y[:, 0][None], Y[:, 1][None]
    e = np.arange(K)[:, None, None]
    degrees = np.stack(np.broadcast_arrays(e + y + u + 1, e + z + v + 1, y + z + x, u + v + x))
    return slices, np.where(np.all(degrees <= K, axis=0), degrees, K + 1)


@functools.cache
def _cross_diagrams(K: int) -> tuple[np.ndarray, np.ndarray]:
    """The diagrams of `E[sigma'_i sigma'_j sigma_l | z*]` with a nonzero weight: edges `e`
    (i-j) and `Y = (y, z)` (l to i, j) with `e + y + 1 <= K` and `e + z + 1 <= K`.

    **Returns:** `e` and the index of `Y` into `_edges_to_pair(K)` per diagram."""
    Y = _edges_to_pair(K)
    rows = [(e, p) for p in range(len(Y)) for e in range(K) if e + Y[p].max() < K]
    e, p = (np.array(c) for c in zip(*rows, strict=True))
    return e, p


def _derivative_kernel(activation: Hermite, F: Array) -> Array:
    """`E[sigma'(z_i) sigma'(z_j)] = sum_n E[sigma^(n+1)(G)]^2 Q_ij^n / n!` from the powers
    `F[n] = Q_ij^n / n!` of the pairs."""
    K = activation.degree
    hat = _scaled(activation.coeffs, K + 1)[1:]
    return hat**2 @ F[:K]


def _square_term(activation: Hermite, a: Array, F: Array) -> Array:
    """`sum_{l,n} a_l a_n E[sigma'(z_i) sigma'(z_j) sigma(z_l) sigma(z_n)]` on the pairs
    `i <= j`, by the diagram formula (`_square_diagrams`) with `F[x] = Q^x / x!`.

    With `L[p, Y, l] = a_l F[y]_il F[z]_jl` for the pair `p = (i, j)`, the sum over `l` is a
    product with `F[x]` for each degree of `Y` (only the `x` its vertex allows), the sum over `n`
    one product per pair, and the sums over `e` and the diagrams a product and a reduction: a few
    dense operations, O(m^4 K^5) in all."""
    K = activation.degree
    m = a.shape[0]
    i, j, _ = _neuron_pairs(m)
    Y = _edges_to_pair(K)
    slices, degrees = _square_diagrams(K)
    L = a * jnp.moveaxis(F[:, i][Y[:, 0]] * F[:, j][Y[:, 1]], 0, 1)  # (pair, Y, l)
    P = jnp.concatenate(
        [
            jnp.einsum("pYl,xln->pYxn", L[:, start:stop], F[: K + 1 - d]).reshape(i.size, -1, m)
            for d, (start, stop) in enumerate(slices)
        ],
        axis=1,
    )  # (pair, X, n): sum_l L[p, Y, l] Q_ln^x / x!
    B = jnp.einsum("pXn,pZn->pXZ", P, L)
    weights = jnp.prod(_scaled(activation.coeffs, K + 2)[degrees], axis=0)  # (e, X, Z)
    C = F[:K, i, j].T @ weights.reshape(K, -1)  # (pair, X Z): the sum over e
    return jnp.sum(C * B.reshape(C.shape), axis=1)


def _target_degrees(target) -> tuple[int, ...]:
    """The target's degree in each direction."""
    if isinstance(target, Hermite):
        return (target.degree,)
    return tuple(int(d) for d in np.max(np.asarray(target.indices), axis=0))


def _gauss_hermite_rule(counts: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """The tensor Gauss-Hermite rule over `N(0, I_k)` with `counts[r]` nodes in direction `r`:
    nodes `(N, k)` and weights `(N,)`."""
    rules = []
    for n in counts:
        nodes, weights = np.polynomial.hermite_e.hermegauss(n)
        rules.append((nodes, weights / weights.sum()))
    grid = np.stack(np.meshgrid(*(r[0] for r in rules), indexing="ij"), axis=-1)
    weight = np.prod(np.stack(np.meshgrid(*(r[1] for r in rules), indexing="ij")), axis=0)
    return grid.reshape(-1, len(rules)), weight.reshape(-1)


def _target_rule(problem: Problem) -> tuple[np.ndarray, np.ndarray]:
    """Tensor Gauss-Hermite nodes `(N, k)` and weights `(N,)` over `z* ~ N(0, I_k)`, exact for
    the target terms: in direction `r` the integrands are polynomials of degree at most
    `max(2 d_r + 2 K - 2, d_r + 3 K - 2)` (`d_r` the target's degree in `z*_r`, `K` the
    activation's)."""
    K = problem.activation.degree
    return _gauss_hermite_rule(
        [max(2 * d + 2 * K - 2, d + 3 * K - 2) // 2 + 1 for d in _target_degrees(problem.target)]
    )


def _smoothed_derivatives(activation: Hermite, mean: Array, c: Array) -> Array:
    """`E[sigma^(n)(mean + sqrt(1 - c) G)]` for `n = 0..K`, on a new last axis.

    `sigma^(n) = sum_p sigma_p sqrt(p!) / (p - n)! He_{p-n}`, and `E[He_q(mu + sqrt(1 - c) G)]
    = H_q(mu)` with `H_0 = 1`, `H_1 = mu`, `H_{q+1} = mu H_q - q c H_{q-1}` (the Hermite
    polynomials of variance `c`): no division, so `c = 0` and `c = 1` are as exact as the rest.
    """
    K = activation.degree
    H = [jnp.ones_like(mean), mean]
    for q in range(1, K):
        H.append(mean * H[q] - q * c * H[q - 1])
    H = jnp.stack(H[: K + 1], axis=-1)  # (..., K + 1) over q
    sigma = activation.coeffs
    n, q = np.meshgrid(np.arange(K + 1), np.arange(K + 1), indexing="ij")
    p = n + q
    inside = p <= K
    factor = np.where(
        inside,
        np.sqrt([[float(math.factorial(v)) for v in row] for row in np.minimum(p, K)])
        / np.array([[float(math.factorial(v)) for v in row] for row in q]),
        0.0,
    )
    coef = jnp.where(inside, sigma[np.minimum(p, K)], 0.0) * factor  # (n, q)
    return jnp.einsum("nq,...q->...n", coef, H)


def _polynomial_error_moment(problem: Problem, a: Array, s: Array, Q: Array, F: Array) -> Array:
    """`E[(phi(z*) - f(x))^2 sigma'(z_i) sigma'(z_j)]` for polynomial functions, on the pairs
    `i <= j`, with `F[x] = Q^x / x!`.

    The `f^2` part is `_square_term` (no target). The parts with the target are, given `z*`, a
    two- and a three-point function of the neurons, whose arguments `z_l = mu_l + Y_l` have
    means `mu_l = s_l . z*` and the covariance `P = Q - S S^T` of their perpendicular parts:
    the covariance form of the diagram formula with the smoothed derivatives
    `D_l[n] = E[sigma^(n)(z_l) | z*]`, then an exact Gauss-Hermite rule over `z*`.
    """
    act = problem.activation
    K = act.degree
    m = a.shape[0]
    i, j, _ = _neuron_pairs(m)
    nodes, weights = _target_rule(problem)
    nodes = jnp.asarray(nodes, s.dtype)
    phi = problem.phi(nodes)  # (N,)
    w = jnp.asarray(weights, s.dtype)
    D = _smoothed_derivatives(act, nodes @ s.T, jnp.sum(s * s, axis=1))  # (N, m, K + 1)
    P = _factorial_powers(Q - s @ s.T, K + 1)  # (K + 1, m, m)
    Di, Dj = D[:, i], D[:, j]  # (N, pair, K + 1)
    # Two-point: sum_e P_ij^e / e! D_i[e + 1] D_j[e + 1].
    target_square = jnp.einsum("N,ep,Npe,Npe->p", w * phi**2, P[:K, i, j], Di[..., 1:], Dj[..., 1:])
    # Three-point with the sum over l: edges e (i-j), Y = (y, z) (i-l, j-l).
    Y = _edges_to_pair(K)
    e, c = _cross_diagrams(K)
    Pl = P[:, i][Y[:, 0]] * P[:, j][Y[:, 1]]  # (Y, pair, l)
    lam = jnp.einsum("NlY,l,Ypl->NYp", D[:, :, Y.sum(axis=1)], a, Pl)
    cross = jnp.einsum(
        "N,cp,Npc,Npc,Ncp->p",
        w * phi,
        P[e][:, i, j],
        Di[..., e + Y[c, 0] + 1],
        Dj[..., e + Y[c, 1] + 1],
        lam[:, c],
    )
    return target_square - (2.0 / m) * cross + _square_term(act, a, F) / m**2


# ------------------------------------------------------------------------------------------ erf


def erf_i4(C: Float[Array, "... 4 4"]) -> Float[Array, ...]:
    """`E[g'(u) g'(v) g(w) g(y)]` for `g(x) = erf(x / sqrt 2)` and `(u, v, w, y)` a centred
    Gaussian vector of covariance `C` (any positive semi-definite `C`; arguments may
    coincide): the committee machine's `I4` (Saad and Solla, Phys. Rev. E 52, 4225 (1995), eq.
    (A5); Biehl and Schwarze, J. Phys. A 28, 643 (1995)).

    Derivation: `g'(u) g'(v) = (2/pi) exp(-(u^2 + v^2)/2)` tilts the Gaussian law. With
    `A = C[uv, uv]`, `E[exp(-(u^2 + v^2)/2) F(w, y)] = det(I + A)^(-1/2) E'[F]`, `E'` the centred
    law of `(w, y)` of covariance `C' = C[wy, wy] - C[wy, uv] (I + A)^(-1) C[uv, wy]`
    (Woodbury on `C^(-1) + diag(1, 1, 0, 0)`), and `E'[g(w) g(y)] = (2/pi) arcsin(C'_wy /
    sqrt((1 + C'_ww)(1 + C'_yy)))`. So

    `I4 = (4 / pi^2) det(I + A)^(-1/2) arcsin(C'_wy / sqrt((1 + C'_ww)(1 + C'_yy)))`,

    which is Saad and Solla's `(4/pi^2) Lambda_4^(-1/2) arcsin(Lambda_0 / sqrt(Lambda_1
    Lambda_2))` (`Lambda_4 = det(I + A)`, `Lambda_0 = Lambda_4 C'_wy`, `Lambda_1 = Lambda_4
    (1 + C'_ww)`).
    """
    A = C[..., :2, :2]
    X = C[..., :2, 2:]  # (uv, wy)
    det = (1.0 + A[..., 0, 0]) * (1.0 + A[..., 1, 1]) - A[..., 0, 1] * A[..., 1, 0]
    inv = (
        jnp.stack(
            [
                jnp.stack([1.0 + A[..., 1, 1], -A[..., 0, 1]], axis=-1),
                jnp.stack([-A[..., 1, 0], 1.0 + A[..., 0, 0]], axis=-1),
            ],
            axis=-2,
        )
        / det[..., None, None]
    )
    tilted = C[..., 2:, 2:] - jnp.swapaxes(X, -1, -2) @ inv @ X
    ratio = tilted[..., 0, 1] / jnp.sqrt((1.0 + tilted[..., 0, 0]) * (1.0 + tilted[..., 1, 1]))
    return 4.0 / math.pi**2 / jnp.sqrt(det) * jnp.arcsin(ratio)


def erf_i2(C: Float[Array, "... 2 2"]) -> Float[Array, ...]:
    """`E[g'(u) g'(v)] = (2/pi) det(I + C)^(-1/2)` for `g(x) = erf(x / sqrt 2)` (the tilt of
    `erf_i4` without the last two arguments)."""
    det = (1.0 + C[..., 0, 0]) * (1.0 + C[..., 1, 1]) - C[..., 0, 1] * C[..., 1, 0]
    return 2.0 / math.pi / jnp.sqrt(det)


def _erf_error_moment(problem: Problem, a: Array, s: Array, Q: Array) -> tuple[Array, Array]:
    """`E[(phi - f)^2 g'(z_i) g'(z_j)]` and `E[g'(z_i) g'(z_j)]` for `sigma = g`, with `phi = g`
    (one direction) or a polynomial target.

    `phi = g`: `phi - f = sum_u b_u g(z_u)` over the units `u = (*, 1..m)` with `b = (1, -a/m)`,
    one `I4` per `(i, j, u, v)`, `m^2 (m + 1)^2` of them, on the Gram matrix
    `[[1, s^T], [s, Q]]`, exact. A polynomial target: the `f^2` part the same over the neurons,
    the parts with the target by `_erf_target_terms`."""
    m = a.shape[0]
    if isinstance(problem.target, Hermite) and problem.target.closed_form == "erf":
        G = jnp.block([[jnp.ones((1, 1), Q.dtype), s.T], [s, Q]])  # (m+1, m+1)
        T = _i4_sum(G, jnp.concatenate([jnp.ones(1, a.dtype), -a / m]), first=1)
    else:
        T = _erf_target_terms(problem, a, s, Q) + _i4_sum(Q, -a / m, first=0)
    idx = np.arange(m)
    pair = np.stack(np.meshgrid(idx, idx, indexing="ij"), axis=-1)
    T3 = erf_i2(Q[pair[..., :, None], pair[..., None, :]])
    return T, T3


def _i4_sum(G: Array, b: Array, first: int) -> Array:
    """`sum_{u,v} b_u b_v I4(i, j, u, v)` over all units `u, v` of the Gram matrix `G`, for the
    neurons `i, j >= first`."""
    idx = np.arange(first, G.shape[0])
    units = np.arange(G.shape[0])
    i, j, u, v = np.meshgrid(idx, idx, units, units, indexing="ij")
    args = np.stack([i, j, u, v], axis=-1)
    return jnp.einsum("u,v,ijuv->ij", b, b, erf_i4(G[args[..., :, None], args[..., None, :]]))


#: Gauss-Hermite nodes per target direction added to the target's degree in `_erf_target_terms`.
_ERF_TARGET_NODES = 24


def _erf_target_terms(problem: Problem, a: Array, s: Array, Q: Array) -> Array:
    """`E[phi^2 g'_i g'_j] - (2/m) sum_l a_l E[phi g_l g'_i g'_j]` for `g = erf(x / sqrt 2)`
    and a polynomial target `phi`, `g_i = g(z_i)`.

    Given `z*`, the neurons are Gaussian with means `mu = S z*` and covariance `P = Q - S S^T`,
    and `g'_i g'_j = (2/pi) exp(-(z_i^2 + z_j^2)/2)` tilts their law: with `M = I + P[ij, ij]`,
    `E[g'_i g'_j | z*] = (2/pi) det(M)^(-1/2) exp(-mu_ij^T M^-1 mu_ij / 2)`, and under the tilt
    `z_l` is Gaussian with mean `mu_l - P[l, ij] M^-1 mu_ij` and variance
    `P_ll - P[l, ij] M^-1 P[ij, l]`, so `E[g_l | z*, tilt] = erf(mean / sqrt(2 (1 + variance)))`.
    A tensor Gauss-Hermite rule over `z*` of `degree + _ERF_TARGET_NODES` nodes per direction
    finishes the sum: its integrands are a polynomial times a Gaussian of width at least 1 and an
    erf of slope at most `1/sqrt 2`, which it integrates to within 1e-13 of the value (relative
    to the largest entry of `N`), measured against 4 times as many nodes.
    """
    m = a.shape[0]
    nodes, weights = _gauss_hermite_rule(
        [d + _ERF_TARGET_NODES for d in _target_degrees(problem.target)]
    )
    nodes = jnp.asarray(nodes, s.dtype)
    w = jnp.asarray(weights, s.dtype)
    phi = problem.phi(nodes)  # (N,)
    mu = nodes @ s.T  # (N, m)
    P = Q - s @ s.T
    Pd = jnp.diagonal(P)
    det = (1.0 + Pd[:, None]) * (1.0 + Pd[None, :]) - P**2  # det(M) for the pair (i, j)
    mi, mj = mu[:, :, None], mu[:, None, :]
    # r = M^-1 mu_ij, by the 2 x 2 inverse.
    ri = ((1.0 + Pd[None, None, :]) * mi - P * mj) / det
    rj = ((1.0 + Pd[None, :, None]) * mj - P * mi) / det
    tilt = 2.0 / math.pi / jnp.sqrt(det) * jnp.exp(-0.5 * (mi * ri + mj * rj))  # (N, i, j)
    Pil, Pjl = P[:, None, :], P[None, :, :]  # (i, j, l)
    variance = (
        jnp.diagonal(P)[None, None, :]
        - (
            (1.0 + Pd[None, :, None]) * Pil**2
            - 2.0 * P[:, :, None] * Pil * Pjl
            + (1.0 + Pd[:, None, None]) * Pjl**2
        )
        / det[:, :, None]
    )
    mean = mu[:, None, None, :] - Pil * ri[..., None] - Pjl * rj[..., None]  # (N, i, j, l)
    g = jsp.erf(mean / jnp.sqrt(2.0 * (1.0 + variance)))
    square = jnp.einsum("N,Nij->ij", w * phi**2, tilt)
    cross = jnp.einsum("N,Nij,Nijl,l->ij", w * phi, tilt, g, a)
    return square - 2.0 * cross / m


# ----------------------------------------------------------------------------------------- relu
#
# With `relu' = 1{x > 0}`, every term is `E[X_u X_v 1{X_c > 0 for every c}]` over a centred
# Gaussian vector of the distinct arguments among `(z_u, z_v, z_i, z_j)`: a second moment of an
# orthant, which Gaussian integration by parts reduces to orthant probabilities of dimension at
# most four (`_orthant_moment`). Only the four-dimensional one needs a quadrature.

#: Gauss-Legendre nodes of the one-dimensional integral in `_orthant_probability` (p = 4).
_ORTHANT_NODES = 32
#: The largest |correlation| the orthant terms take: where two arguments coincide (identical
#: neurons, or a neuron on the target) integration by parts divides zero by zero; at
#: 1 - 1e-15 the terms are within 2e-9 of their limit where two arguments coincide (where three
#: do, see the module's docstring).
_MAX_CORRELATION = 1.0 - 1e-15


def _clip_correlations(C: Array) -> Array:
    """`C` (`..., p, p`) with its off-diagonal entries clipped to `+-_MAX_CORRELATION`."""
    eye = np.eye(C.shape[-1], dtype=bool)
    return jnp.where(eye, C, jnp.clip(C, -_MAX_CORRELATION, _MAX_CORRELATION))


def _complements(pairs: list[tuple[int, int]]) -> np.ndarray:
    """The other two of four arguments of each pair, in increasing order: `(2, pairs)`."""
    return np.array([sorted({0, 1, 2, 3} - set(pair)) for pair in pairs]).T


def _partial_correlation(C: Array, c, e, f, g, t: Array | None = None) -> Array:
    """The correlation of `X_f` and `X_g` given `X_c = X_e = 0`, for `X` of correlation matrix
    `C` (`..., p, p`; `c, e, f, g` index arrays of one length `n`), or of `I + t (C - I)` with
    `t` `(..., n, T)` on a new last axis.

    Conditioned on one argument, then the other (the Schur complements of a Cholesky factor):
    where three arguments nearly coincide the conditional variance is the difference of two
    small terms, not of terms of order 1, and keeps its accuracy. A variance below rounding
    (zero or negative) gives the correlation 0."""

    def r(x, y) -> Array:
        value = C[..., x, y]
        return value if t is None else value[..., None] * t

    def one_minus_square(x: Array) -> Array:
        return (1.0 - x) * (1.0 + x)  # exact where |x| is near 1

    r_ce, r_fc, r_gc = r(c, e), r(f, c), r(g, c)
    ce = one_minus_square(r_ce)  # the variance of X_e given X_c
    fe = r(f, e) - r_fc * r_ce  # covariances given X_c
    ge = r(g, e) - r_gc * r_ce
    fg = r(f, g) - r_fc * r_gc
    var_f = one_minus_square(r_fc) - fe**2 / ce
    var_g = one_minus_square(r_gc) - ge**2 / ce
    positive = (var_f > 0) & (var_g > 0)
    root = jnp.sqrt(jnp.where(positive, var_f * var_g, 1.0))
    rho = jnp.where(positive, (fg - fe * ge / ce) / root, 0.0)
    return jnp.clip(rho, -1.0, 1.0)  # rounding can leave |rho| a few ulps above 1


def _orthant_probability(R: Array, nodes: int = _ORTHANT_NODES) -> Array:
    """`P(X > 0)` for `X` centred Gaussian with correlation matrix `R` (`..., p, p`), `p <= 4`.

    `p <= 3`: `2^-p + sum_{a<b} arcsin(R_ab) / (2^(p-1) pi)`. `p = 4` by Plackett's reduction
    (Biometrika 41, 351 (1954)): `dP/dR_ab = phi_2(0, 0; R_ab) P(X_f, X_g > 0 | X_a = X_b = 0)`
    along `R(t) = I + t (R - I)` gives, with `t R_ab = sin(theta_ab lam)`,
    `theta_ab = arcsin R_ab`,

    `P = 1/16 + sum_{a<b} arcsin(R_ab) / (8 pi) + sum_{a<b} theta_ab / (4 pi^2)
    int_0^1 arcsin(rho_{fg|ab}(R(t))) dlam`,

    the integral on `nodes` Gauss-Legendre nodes after `lam = 1 - (1 - v)^2`, which resolves
    the rapid change near `lam = 1` where two arguments nearly coincide
    (`benchmarks/sgd_noise.py` measures the error of 32 nodes against 400)."""
    R = _clip_correlations(R)
    p = R.shape[-1]
    if p < 2:
        return jnp.full(R.shape[:-2], 0.5**p, R.dtype)
    pairs = list(itertools.combinations(range(p), 2))
    first, second = np.array(pairs).T
    theta = jnp.arcsin(R[..., first, second])  # (..., pairs)
    base = 0.5**p + jnp.sum(theta, axis=-1) / (2 ** (p - 1) * math.pi)
    if p < 4:
        return base
    rest = _complements(pairs)
    x, weights = np.polynomial.legendre.leggauss(nodes)
    v = (x + 1.0) / 2.0
    lam, weights = 1.0 - (1.0 - v) ** 2, weights * (1.0 - v)  # dlam = 2 (1 - v) dv, dv = dx / 2
    angle = theta[..., None]
    small = jnp.abs(angle) < 1e-8
    safe = jnp.where(small, 1.0, angle)
    t = jnp.where(small, lam, jnp.sin(safe * lam) / jnp.sin(safe))  # -> lam as theta -> 0
    rho = _partial_correlation(R, first, second, rest[0], rest[1], t)
    integral = jnp.sum(theta * (jnp.arcsin(rho) @ weights), axis=-1)
    return base + integral / (4.0 * math.pi**2)


def _orthant_moment(C: Array, w: int) -> Array:
    """`E[X_0 X_w 1{X > 0}]` (`w` 0 or 1) for `X` centred Gaussian with correlation matrix `C`
    (`..., p, p`, `p <= 4`).

    Integration by parts, `E[X_0 g(X)] = sum_c C_0c E[d_c g(X)]`, twice:

    `C_0w P_p(C) + 1/(2 pi) sum_{c != w} sum_{e != c} C_0c (C_we - C_wc C_ce) / sqrt(1 - C_ce^2)
    P(X_rest > 0 | X_c = X_e = 0)`,

    the last an orthant probability of the `p - 2` remaining arguments (1, 1/2, or `1/4 +
    arcsin(rho) / (2 pi)` with their partial correlation `rho`)."""
    C = _clip_correlations(C)
    p = C.shape[-1]
    out = C[..., 0, w] * _orthant_probability(C)
    terms = [(c, e) for c, e in itertools.permutations(range(p), 2) if c != w]
    if not terms:
        return out
    c, e = np.array(terms).T
    if p == 4:
        rho = _partial_correlation(C, c, e, *_complements(terms))
        given = 0.25 + jnp.arcsin(rho) / (2.0 * math.pi)
    else:
        given = 0.5 ** (p - 2)
    r_ce = C[..., c, e]
    gap = (C[..., w, e] - C[..., w, c] * r_ce) / jnp.sqrt((1.0 - r_ce) * (1.0 + r_ce))
    return out + jnp.sum(C[..., 0, c] * gap * given, axis=-1) / (2.0 * math.pi)


@functools.cache
def _relu_quadruples(m: int) -> dict[tuple[int, int], tuple[np.ndarray, ...]]:
    """The terms `E[relu(z_u) relu(z_v) 1{z_i > 0} 1{z_j > 0}]` of `N`'s pairs `i <= j` over
    the unit pairs `u <= v` (units `0` the target, `1..m` the neurons), grouped by the number
    `p` of distinct arguments and whether `u = v`: per group, the distinct arguments `(n, p)`
    ordered `u, v, ...` (so the term is `_orthant_moment` with `w = 0` if `u = v`, else 1),
    the pair index, `u`, `v`, and the multiplicity (2 for `u < v`, as `(u, v)` and `(v, u)`)."""
    i, j, _ = _neuron_pairs(m)
    groups: dict[tuple[int, int], list] = {}
    for pair, (ni, nj) in enumerate(zip(i + 1, j + 1, strict=True)):
        for u, v in itertools.combinations_with_replacement(range(m + 1), 2):
            args = list(dict.fromkeys([u, v, ni, nj]))
            w = 0 if u == v else 1
            groups.setdefault((len(args), w), []).append((args, pair, u, v, 2.0 - (u == v)))
    return {
        key: (
            np.array([r[0] for r in rows]),
            *(np.array([r[n] for r in rows]) for n in range(1, 5)),
        )
        for key, rows in groups.items()
    }


def _relu_error_moment(problem: Problem, a: Array, s: Array, Q: Array) -> tuple[Array, Array]:
    """`E[(phi - f)^2 1{z_i > 0} 1{z_j > 0}]` and `E[1{z_i > 0} 1{z_j > 0}]` on the pairs
    `i <= j` for `sigma = phi = relu` (one direction).

    `phi - f = sum_u b_u relu(z_u)` over the units `u = (*, 1..m)`, `b = (1, -a/m)`, on the
    Gram matrix `[[1, s^T], [s, Q]]`: one `_orthant_moment` per `(i, j, u, v)`. The second is
    the kernel's derivative `U'(Q_ij)` (Price's theorem)."""
    m = a.shape[0]
    G = jnp.block([[jnp.ones((1, 1), Q.dtype), s.T], [s, Q]])
    b = jnp.concatenate([jnp.ones(1, a.dtype), -a / m])
    i, j, _ = _neuron_pairs(m)
    T = jnp.zeros(i.shape[0], Q.dtype)
    for (_, w), (args, pair, u, v, count) in _relu_quadruples(m).items():
        moment = _orthant_moment(G[args[:, :, None], args[:, None, :]], w)
        T = T + jax.ops.segment_sum(count * b[u] * b[v] * moment, pair, i.shape[0])
    # U'(1) = 1/2 on the diagonal, where arccos has an infinite derivative: taken at 0 there.
    diagonal = i == j
    T3 = problem.activation.kernel_grad(jnp.where(diagonal, 0.0, Q[i, j]))
    return T, jnp.where(diagonal, 0.5, T3)
