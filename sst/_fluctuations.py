"""Online SGD's fluctuations about the noisy ODE at a finite `d`, and the part of its mean
risk's `1/d` term that they make (docs: [online SGD at a finite step][sgd-fluctuations])."""

from __future__ import annotations

import functools
import itertools
import math

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from ._finite_dim import FiniteDimODE, FiniteDimState
from ._noise import _gauss_hermite_rule, noise_supported
from ._problem import Problem, overlap_matrix, state_overlaps
from ._solve import _check_options
from ._validate import check_count, check_key, check_times, require_x64


class Fluctuations(eqx.Module):
    """Online SGD's covariance about the noisy ODE at a finite `d` and the fluctuation term of
    its mean risk (docs: [online SGD at a finite step][sgd-fluctuations]), as
    `sst.fluctuations` returns them.

    **Fields:**

    - `ts`: the save times `(T,)`.
    - `state`: the noisy ODE's `FiniteDimState` at each save time (leading axis `T`): SGD's mean
      to leading order.
    - `risk`: the population risk at `state`, `(T,)`.
    - `covariance`: `d` times the covariance of SGD's `(a, s, Q)`, `(T, n, n)`, with `(a, s, Q)`
      flattened as `jax.flatten_util.ravel_pytree` flattens the tuple (all of `Q`, so each
      off-diagonal overlap twice).
    - `correction`: the fluctuation term times `d`, `1/2 tr(H covariance)` with `H` the Hessian
      of the risk in `(a, s, Q)`, `(T,)`: the mean risk of SGD's `(a, s, Q)` minus the risk at
      their mean, to leading order.
    """

    ts: Float[Array, " T"]
    state: FiniteDimState
    risk: Float[Array, " T"]
    covariance: Float[Array, "T n n"]
    correction: Float[Array, " T"]

    def mean_risk(self, d: float) -> Float[Array, " T"]:
        """`risk + correction / d`: the noisy ODE's risk plus the fluctuation term at dimension
        `d` (without the `O(1/d)` shift of SGD's mean state)."""
        return self.risk + self.correction / d


def increments(
    problem: Problem,
    a: Float[Array, " m"],
    s: Float[Array, "m k"],
    Q: Float[Array, "m m"],
    zs: Float[Array, "M k"],
    z: Float[Array, "M m"],
) -> tuple[Float[Array, " M"], tuple[Array, Array, Array], tuple[Array, Array, Array]]:
    """One online-SGD sample's step in `(a, s, Q)` per unit time, `e h + tau e^2 g`, to second
    order in the step (docs: [online SGD at a finite step][sgd-fluctuations]), at the
    projections `z* = U*^T x` `(M, k)` and `z = W x` `(M, m)` of `M` samples: `e = phi(z*) -
    f(x)` (without label noise) and, with `u_i = a_i sigma'(z_i)`,

    `h_a,i = sigma(z_i) / eps`, `h_s,ic = u_i (z*_c - s_ic z_i)`,
    `h_Q,ij = u_i (z_j - Q_ij z_i) + u_j (z_i - Q_ij z_j)`;
    `g_a = 0`, `g_s,ic = -u_i^2 s_ic / 2`, `g_Q,ij = u_i u_j - (u_i^2 + u_j^2) Q_ij / 2`
    (`i != j`; `Q`'s diagonal does not move).

    Returns `e` `(M,)`, `h` and `g` (tuples shaped as `(a, s, Q)` with a leading `M`)."""
    m = a.shape[0]
    off = 1.0 - jnp.eye(m)
    act = problem.activation(z)
    e = problem.phi(zs) - act @ a / m
    u = a * problem.activation.derivative(z)  # (M, m)
    h_s = u[:, :, None] * (zs[:, None, :] - s[None] * z[:, :, None])
    half = u[:, :, None] * (z[:, None, :] - Q[None] * z[:, :, None])
    h_Q = (half + jnp.swapaxes(half, 1, 2)) * off
    u2 = u**2
    g_s = -0.5 * u2[:, :, None] * s[None]
    g_Q = (u[:, :, None] * u[:, None, :] - 0.5 * (u2[:, :, None] + u2[:, None, :]) * Q) * off
    h = (act / problem.eps, state_overlaps(problem, h_s), h_Q)
    return e, h, (jnp.zeros_like(act), state_overlaps(problem, g_s), g_Q)


MAX_NODES = 1_000_000  # the largest sparse grid (before merging shared nodes) fluctuations builds


def sparse_size(dim: int, level: int) -> int:
    """The number of nodes of `sparse_gauss_hermite(dim, level)` before shared nodes merge."""
    # sum over |i| of prod (1 + i_j): the coefficients of (sum_i (1 + i) x^i)^dim.
    count = np.ones(1, dtype=object)
    for _ in range(dim):
        count = np.convolve(count, np.arange(1, level + 2, dtype=object))[: level + 1]
    return int(count[max(0, level - dim + 1) :].sum())


@functools.cache
def sparse_gauss_hermite(dim: int, level: int) -> tuple[np.ndarray, np.ndarray]:
    """Smolyak's sparse grid of Gauss-Hermite rules for `N(0, I_dim)`: nodes `(P, dim)` and
    (signed) weights `(P,)`, exact for polynomials of total degree `2 level + 1`.

    The combination `sum_i (-1)^(L - |i|) C(dim - 1, L - |i|) G_i` over tensor rules `G_i` with
    `1 + i_j` nodes per axis (`L - dim < |i| <= L`): a monomial `z^alpha` with even `alpha`
    needs `i_j >= alpha_j / 2` on every axis, so `|i| <= L` for `|alpha| <= 2 L`, and every
    tensor rule integrates odd monomials to 0 by symmetry. A tensor rule of the same degree
    would need `(level + 1)^dim` nodes."""
    rules = [(x[:, 0], w) for x, w in (_gauss_hermite_rule([n]) for n in range(1, level + 2))]
    acc: dict[tuple[float, ...], float] = {}
    for excess in range(max(0, level - dim + 1), level + 1):
        coef = (-1) ** (level - excess) * math.comb(dim - 1, level - excess)
        # The compositions of `excess` into `dim` non-negative parts (stars and bars).
        for bars in itertools.combinations(range(excess + dim - 1), dim - 1):
            parts = np.diff((-1, *bars, excess + dim - 1)) - 1
            nodes = itertools.product(*(rules[i][0] for i in parts))
            weights = itertools.product(*(rules[i][1] for i in parts))
            for x, w in zip(nodes, weights, strict=True):
                # Rounded so that the nodes that several tensor rules share (0 above all) merge.
                key = tuple(np.round(x, 12).tolist())
                acc[key] = acc.get(key, 0.0) + coef * math.prod(w)
    nodes = np.array(list(acc), dtype=float).reshape(-1, dim)
    weights = np.array(list(acc.values()))
    keep = weights != 0.0
    return nodes[keep], weights[keep]


def distinct_coordinates(problem: Problem, m: int) -> tuple[np.ndarray, np.ndarray]:
    """The distinct coordinates of the flattened `(a, s, Q)` (`Q` by its upper triangle): their
    flattened positions, and for each flattened coordinate its distinct one (`-1` on `Q`'s
    diagonal)."""
    k = problem.k
    upper = np.triu_indices(m, 1)
    pair = np.full((m, m), -1)
    pair[upper] = pair.T[upper] = m + m * k + np.arange(upper[0].size)
    index = np.concatenate([np.arange(m + m * k), pair.ravel()])
    upper = m + m * k + np.ravel_multi_index(upper, (m, m))
    return np.concatenate([np.arange(m + m * k), upper]), index


def step_moments(
    problem: Problem, tau, y, nodes, weights
) -> tuple[Float[Array, " n"], Float[Array, "n n"]]:
    """The mean and covariance of one sample's step `e h + tau e^2 g` (`increments`, flattened)
    over `x ~ N(0, I_d)` and the label noise, by the rule `(nodes, weights)` for
    `N(0, I_{k+m})`. With label noise `n` added to `e`, its moments are those of `e + n xi`."""
    a, s_stored, Q = y
    s = overlap_matrix(problem, s_stored)
    m, k = s.shape
    gram = jnp.block([[jnp.eye(k), s.T], [s, Q * (1.0 - jnp.eye(m)) + jnp.eye(m)]])
    # The Cholesky factor moves continuously with (s, Q), so the expectations are smooth in
    # time for the step-size control (an eigendecomposition's root is not). The shift keeps it
    # defined where the Gram matrix is singular (a neuron on a target direction) or, by
    # rounding, slightly indefinite: check_state accepts eigenvalues down to -(m + k) 1e-9.
    Z = nodes @ jnp.linalg.cholesky(gram + 2e-9 * (k + m) * jnp.eye(k + m)).T
    e, h, g = increments(problem, a, s, Q, Z[:, :k], Z[:, k:])
    distinct, index = distinct_coordinates(problem, m)

    def flat(parts):
        return jnp.concatenate([v.reshape(v.shape[0], -1) for v in parts], axis=1)[:, distinct]

    h, g = flat(h), tau * flat(g)
    n2 = problem.noise**2
    e2 = e**2 + n2
    e3 = e**3 + 3.0 * e * n2
    e4 = e**4 + 6.0 * e**2 * n2 + 3.0 * n2**2
    mean = (weights * e) @ h + (weights * e2) @ g
    cross = (h.T * (weights * e3)) @ g
    second = (h.T * (weights * e2)) @ h + cross + cross.T + (g.T * (weights * e4)) @ g
    sigma = second - jnp.outer(mean, mean)
    mask = index >= 0
    pick = np.maximum(index, 0)
    both = mask[:, None] & mask[None, :]
    return jnp.where(mask, mean[pick], 0.0), jnp.where(both, sigma[pick][:, pick], 0.0)


@eqx.filter_jit
def _fluctuations(model: FiniteDimODE, y0, ts, nodes, weights, rtol, atol, max_steps):
    x0, unravel = ravel_pytree(y0)

    def field(x, t):
        return ravel_pytree(model(t, unravel(x)))[0]

    def rhs(t, v, args):
        x, C = v
        fx, jvp = jax.linearize(lambda x: field(x, t), x)
        JC = jax.vmap(jvp, in_axes=1, out_axes=1)(C)
        _, sigma = step_moments(model.problem, model.tau, unravel(x), nodes, weights)
        source = model.tau * sigma
        return fx, JC + JC.T + source

    sol = dfx.diffeqsolve(
        dfx.ODETerm(rhs),
        dfx.Tsit5(),
        ts[0],
        ts[-1],
        None,
        (x0, jnp.zeros((x0.size, x0.size))),
        saveat=dfx.SaveAt(ts=ts),
        stepsize_controller=dfx.PIDController(rtol=rtol, atol=atol),
        max_steps=max_steps,
        throw=False,
    )
    xs, Cs = sol.ys

    def risk(x):
        return model.risk(model.merge(unravel(x), None))

    H = jax.vmap(jax.hessian(risk))(xs)
    states = jax.vmap(lambda x: model.merge(unravel(x), None))(xs)
    correction = 0.5 * jnp.sum(H * Cs, axis=(1, 2))
    return sol.result, sol.stats["num_steps"], states, jax.vmap(risk)(xs), Cs, correction


def fluctuations(
    model: FiniteDimODE,
    state: FiniteDimState,
    ts: ArrayLike,
    *,
    monte_carlo: int | None = None,
    key: PRNGKeyArray | None = None,
    rtol: float = 1e-6,
    atol: float = 1e-8,
    max_steps: int = 100_000,
) -> Fluctuations:
    """Online SGD's covariance about the noisy ODE at a finite `d` (the linear-noise expansion)
    and the fluctuation term of its mean risk (docs: [online SGD at a finite
    step][sgd-fluctuations]).

    With `x = (a, s, Q)` following `dx/dt = F(x)` (`model`, at its `tau = eta d / B`), online
    SGD's `(a, s, Q)` is `x + O(1/sqrt(d))` with covariance `C / d`,

    `dC/dt = J C + C J^T + tau Sigma(x)`, `C(0) = 0`,

    `J` the Jacobian of `F` and `Sigma` the covariance of one sample's step to second order
    (`e h + tau e^2 g` of the docs), and its mean risk is `R(x) + tr(H C) / (2 d)` with `H`
    the risk's Hessian. The mean risk's `1/d` term has a second part, not computed here: SGD's
    mean state moves from `x` by `O(1/d)` too.

    **Arguments:**

    - `model`: the `FiniteDimODE` with a polynomial activation and target (at `tau = 0` the
      covariance is 0: SGD is then gradient flow).
    - `state`: the initial `FiniteDimState` (deterministic: `C(0) = 0`).
    - `ts`: save times, increasing; the first is the initial time.
    - `monte_carlo`, `key`: by default `Sigma`'s Gaussian expectations are exact (a sparse
      Gauss-Hermite grid in the `k + m` projections, refused above a million nodes); with
      `monte_carlo = n`, Monte Carlo over `n` inputs drawn from `key` (the same at every time).
    - `rtol`, `atol`, `max_steps`: diffrax's Tsit5 on `(x, C)` (explicit: at an `eps` where the
      second layer is stiff it needs many steps; reaching `max_steps` raises).

    **Returns:** a `Fluctuations`.
    """
    require_x64("sst.fluctuations")
    if not isinstance(model, FiniteDimODE):
        raise ValueError(
            f"model must be an sst.FiniteDimODE (with its tau), got {type(model).__name__}."
        )
    p = model.problem
    if not (p.activation.is_polynomial and noise_supported(p)):
        raise ValueError(
            "model needs a polynomial activation and target for fluctuations (a finite Hermite "
            f"series; got sigma = {p.activation}, phi = {p.target}): its Gaussian expectations "
            "are exact for polynomials only."
        )
    ts = jnp.asarray(check_times(ts))
    y0, _ = model.split(model.check_state(state))
    dim = p.k + y0[0].shape[0]
    max_steps = _check_options(None, rtol, atol, None, max_steps, None)
    if monte_carlo is None:
        if key is not None:
            raise ValueError("key is for the Monte Carlo: pass monte_carlo too, or no key.")
        # Exact for the products of e h (degree E + S) and e^2 g (degree 2 E + 2 S - 2).
        E, S = max(p.target.degree, p.activation.degree), p.activation.degree
        level = max(E + S, 2 * E + 2 * S - 2)
        size = sparse_size(dim, level)
        if size > MAX_NODES:
            raise ValueError(
                f"the exact expectations need a sparse grid of {size:,} nodes (degree "
                f"{2 * level + 1} in k + m = {dim} dimensions, more than {MAX_NODES:,}); pass "
                "monte_carlo (a number of samples, for example 2**17) and a key."
            )
        nodes, weights = sparse_gauss_hermite(dim, level)
    else:
        n = check_count("monte_carlo (samples)", monte_carlo, low=2)
        if key is None:
            raise ValueError("monte_carlo needs a key, such as jax.random.key(0).")
        check_key(key)
        nodes = np.asarray(jax.random.normal(key, (n, dim)))
        weights = np.full(n, 1.0 / n)
    result, steps, states, risk, C, correction = _fluctuations(
        model, y0, ts, jnp.asarray(nodes), jnp.asarray(weights), rtol, atol, max_steps
    )
    if result == dfx.RESULTS.successful and not (
        np.all(np.isfinite(correction)) and np.all(np.isfinite(C))
    ):
        raise RuntimeError(
            "fluctuations produced NaN or inf: the state left the valid (s, Q) or the noise "
            "overflowed; check model and state (a smaller tau or a larger eps)."
        )
    if result != dfx.RESULTS.successful:
        raise RuntimeError(
            f"fluctuations stopped after {int(steps)} steps of Tsit5 ({dfx.RESULTS[result]}); "
            "raise max_steps (an explicit solver: a small eps makes the second layer stiff)."
        )
    return Fluctuations(ts, states, risk, C, correction)
