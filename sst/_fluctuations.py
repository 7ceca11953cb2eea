"""Online SGD at a finite `d` to first order in `1/d` about the noisy ODE: its fluctuations,
the shift of its mean and its mean risk's `1/d` term (docs: [online SGD at a finite
step][sgd-fluctuations])."""

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
    """Online SGD at a finite `d` to first order in `1/d` about the noisy ODE: its covariance,
    the shift of its mean and its mean risk (docs: [online SGD at a finite
    step][sgd-fluctuations]), as `sst.fluctuations` returns them.

    **Fields:**

    - `ts`: the save times `(T,)`.
    - `state`: the noisy ODE's `FiniteDimState` at each save time (leading axis `T`): SGD's mean
      as `d -> infinity`.
    - `risk`: the population risk at `state`, `(T,)`.
    - `covariance`: `d` times the covariance of SGD's `(a, s, Q)`, `(T, n, n)`, with `(a, s, Q)`
      flattened as `jax.flatten_util.ravel_pytree` flattens the tuple (all of `Q`, so each
      off-diagonal overlap twice).
    - `shift`: `d` times SGD's mean `(a, s, Q)` minus `state`, flattened the same way, `(T, n)`.
    - `spread`: `1/2 tr(H covariance)`, `H` the Hessian of the risk in `(a, s, Q)`, `(T,)`:
      `d` times the mean risk of SGD's `(a, s, Q)` minus the risk at their mean.
    - `correction`: `spread` plus the risk's gradient times `shift`, `(T,)`: `d` times SGD's mean
      risk minus `risk`.
    """

    ts: Float[Array, " T"]
    state: FiniteDimState
    risk: Float[Array, " T"]
    covariance: Float[Array, "T n n"]
    shift: Float[Array, "T n"]
    spread: Float[Array, " T"]
    correction: Float[Array, " T"]

    def mean_risk(self, d: float) -> Float[Array, " T"]:
        """`risk + correction / d`: SGD's mean risk at dimension `d` to first order in `1/d`."""
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


def _projections(problem: Problem, y, nodes):
    """`(s, Q)`, the Cholesky factor `L` of the Gram matrix of `(U*, W)` and the projections
    `(z*, z) = L xi` at the `nodes` `xi` of a rule for `N(0, I_{k+m})`."""
    _, s_stored, Q = y
    s = overlap_matrix(problem, s_stored)
    m, k = s.shape
    gram = jnp.block([[jnp.eye(k), s.T], [s, Q * (1.0 - jnp.eye(m)) + jnp.eye(m)]])
    # The Cholesky factor moves continuously with (s, Q), so the expectations are smooth in
    # time for the step-size control (an eigendecomposition's root is not). The shift keeps it
    # defined where the Gram matrix is singular (a neuron on a target direction) or, by
    # rounding, slightly indefinite: check_state accepts eigenvalues down to -(m + k) 1e-9.
    L = jnp.linalg.cholesky(gram + 2e-9 * (k + m) * jnp.eye(k + m))
    return s, Q, L, nodes @ L.T


def _label_noise_moments(problem: Problem, e):
    """`E (e + noise xi)^p` for `p = 1..4` over the label noise `xi ~ N(0, 1)`."""
    n2 = problem.noise**2
    return e, e**2 + n2, e**3 + 3.0 * e * n2, e**4 + 6.0 * e**2 * n2 + 3.0 * n2**2


def step_moments(
    problem: Problem, tau, y, nodes, weights
) -> tuple[Float[Array, " n"], Float[Array, "n n"]]:
    """The mean and covariance of one sample's step `e h + tau e^2 g` (`increments`, flattened)
    over `x ~ N(0, I_d)` and the label noise, by the rule `(nodes, weights)` for
    `N(0, I_{k+m})`. With label noise `n` added to `e`, its moments are those of `e + n xi`."""
    a, _, _ = y
    s, Q, _, Z = _projections(problem, y, nodes)
    k = s.shape[1]
    e, h, g = increments(problem, a, s, Q, Z[:, :k], Z[:, k:])
    distinct, index = distinct_coordinates(problem, a.shape[0])

    def flat(parts):
        return jnp.concatenate([v.reshape(v.shape[0], -1) for v in parts], axis=1)[:, distinct]

    h, g = flat(h), tau * flat(g)
    _, e2, e3, e4 = _label_noise_moments(problem, e)
    mean = (weights * e) @ h + (weights * e2) @ g
    cross = (h.T * (weights * e3)) @ g
    second = (h.T * (weights * e2)) @ h + cross + cross.T + (g.T * (weights * e4)) @ g
    sigma = second - jnp.outer(mean, mean)
    mask = index >= 0
    pick = np.maximum(index, 0)
    both = mask[:, None] & mask[None, :]
    return jnp.where(mask, mean[pick], 0.0), jnp.where(both, sigma[pick][:, pick], 0.0)


def drift_correction(problem: Problem, tau, batch: int, y, nodes, weights) -> Float[Array, " n"]:
    """`F_1`, the `1/d` term of online SGD's mean step per unit time (`B = batch` samples a
    step, `eta = tau B / d`): `E[step] / eta = F + F_1 / d + O(d^-2)`, `F` the noisy ODE
    (docs: [online SGD at a finite step][sgd-fluctuations]). Flattened as `(a, s, Q)` in
    `ravel_pytree`'s order.

    It is `tau B` times the `eta^2` coefficient of the mean step: the retraction's terms
    `eta^3 |P_i x|^2` and `eta^4 |P_i x|^4`, the `O(1)` parts of `|P_i x|^2` and
    `<P_i x, P_j x>` beyond `d`, and the products of two samples' steps within a batch. With
    `xi` the input's part in the span of `(U*, W)` (whitened), `pi_i = xi - z_i l_i` its
    projection off `w_i` and `X_i = e u_i`, `u_i = a_i sigma'(z_i)`, the batch means `<.>`
    enter as `E<X><Y> = E[XY] / B + (1 - 1/B) E[X] E[Y]`."""
    a, _, _ = y
    m = a.shape[0]
    s, Q, L, Z = _projections(problem, y, nodes)
    k = s.shape[1]
    zs, z = Z[:, :k], Z[:, k:]
    e = problem.phi(zs) - problem.activation(z) @ a / m
    u = a * problem.activation.derivative(z)  # (M, m)
    u2, uz = u**2, u * z
    e1, e2, e3, e4 = _label_noise_moments(problem, e)
    one, pair = 1.0 / batch, 1.0 - 1.0 / batch
    off = 1.0 - jnp.eye(m)

    # Every expectation as a product of (M, .) factors, E[c f_i g_j] = (w c f)^T g: no
    # (M, m, m) array is formed (at 2^17 Monte Carlo samples they would dominate the cost).
    def gram(c, f, g):
        return (f * (weights * c)[:, None]).T @ g

    def both(v):
        return v[:, None] + v[None, :]

    alpha = (weights * e2) @ u2  # E[e^2 u_i^2]
    gamma = gram(e2, u, u)  # E[e^2 u_i u_j]
    # pi_i = xi - z_i l_i, the input's part in the span of (U*, W) off w_i (l_i: w_i's row of L);
    # pi_i . pi_j = |xi|^2 - z_i^2 - z_j^2 + z_i z_j (l_i . l_j).
    x_pi = gram(e1, u, nodes) - ((weights * e1) @ uz)[:, None] * L[k:]  # E[e u_i pi_i]
    z2 = gram(e2, u * z**2, u)
    xx_pipi = (
        gram(e2 * jnp.sum(nodes**2, axis=1), u, u) - z2 - z2.T + L[k:] @ L[k:].T * gram(e2, uz, uz)
    )
    # eta^2 terms of |v_i|^2 and <v_i, v_j> (the eta tau parts are the noise terms).
    v2 = one * xx_pipi + pair * x_pi @ x_pi.T - (k + m) * one * gamma
    eps2 = jnp.diag(v2)
    # E[eps1_i eps1_j] / tau^2, eps1_i = tau <e^2 u_i^2>.
    eps11 = one * gram(e4, u2, u2) + pair * jnp.outer(alpha, alpha)
    sq = jnp.diag(eps11)

    def h_s(c, f):  # E[c f_i h_s,ic], h_s,ic = u_i (z*_c - s_ic z_i)
        return gram(c, f * u, zs) - s * ((weights * c) @ (f * uz))[:, None]

    def h_Q(c, f):  # E[c (f_i + f_j) h_Q,ij], h_Q,ij = u_i z_j + u_j z_i - Q_ij (u_i z_i + u_j z_j)
        R = gram(c, f * u, z) + gram(c, u, f * z)
        T = both((weights * c) @ (f * uz)) + gram(c, f, uz) + gram(c, uz, f)
        return R + R.T - Q * T

    ones = jnp.ones_like(u)
    hs_eps = one * h_s(e3, u2) + pair * h_s(e1, ones) * alpha[:, None]
    d_s = -0.5 * s * eps2[:, None] - 0.5 * tau * hs_eps + 0.375 * tau**2 * s * sq[:, None]
    hq_eps = one * h_Q(e3, u2) + pair * 0.5 * h_Q(e1, ones) * both(alpha)
    vq_eps = one * (gram(e4, u2 * u, u) + gram(e4, u, u2 * u)) + pair * gamma * both(alpha)
    d_Q = (
        v2
        - 0.5 * Q * both(eps2)
        - 0.5 * tau * hq_eps
        - 0.5 * tau**2 * vq_eps
        + tau**2 * Q * (0.375 * both(sq) + 0.25 * eps11)
    ) * off
    parts = (jnp.zeros_like(a), state_overlaps(problem, d_s), d_Q)
    return tau * batch * ravel_pytree(parts)[0]


def half_curvature(problem: Problem, m: int, field, x, C) -> Float[Array, " n"]:
    """`1/2 F''[C] = 1/2 sum_ab C_ab d_a d_b F(x)` for a covariance `C` of the flattened
    `(a, s, Q)` of `m` neurons (both copies of each overlap; `field` maps it to `F`), as
    `1/2 sum_p F''[e_p, c_p]` over the distinct coordinates' directions `e_p` (both copies of
    an overlap at once) with `c_p` the column of `C` at one copy: one second-order directional
    derivative per distinct coordinate, not a whole Hessian."""
    distinct, index = distinct_coordinates(problem, m)
    units = jnp.asarray(index[None, :] == np.arange(distinct.size)[:, None], dtype=x.dtype)

    def second(unit, column):
        return jax.jvp(lambda x: jax.jvp(field, (x,), (column,))[1], (x,), (unit,))[1]

    return 0.5 * jnp.sum(jax.vmap(second)(units, C[:, distinct].T), axis=0)


@eqx.filter_jit
def _fluctuations(model: FiniteDimODE, batch, y0, ts, nodes, weights, rtol, atol, max_steps):
    x0, unravel = ravel_pytree(y0)
    problem, tau = model.problem, model.tau

    def field(x, t):
        return ravel_pytree(model(t, unravel(x)))[0]

    def rhs(t, v, args):
        x, C, mu = v
        fx, jvp = jax.linearize(lambda x: field(x, t), x)
        JC = jax.vmap(jvp, in_axes=1, out_axes=1)(C)
        y = unravel(x)
        _, sigma = step_moments(problem, tau, y, nodes, weights)
        spread = half_curvature(problem, y0[0].shape[0], lambda x: field(x, t), x, C)
        # The steps are Euler's with step eta = tau B / d: their mean lags the flow by
        # (eta / 2) dF/dt = (eta / 2) J F per unit time.
        drift = drift_correction(problem, tau, batch, y, nodes, weights)
        dmu = jvp(mu) + spread + drift - 0.5 * tau * batch * jvp(fx)
        return fx, JC + JC.T + tau * sigma, dmu

    sol = dfx.diffeqsolve(
        dfx.ODETerm(rhs),
        dfx.Tsit5(),
        ts[0],
        ts[-1],
        None,
        (x0, jnp.zeros((x0.size, x0.size)), jnp.zeros_like(x0)),
        saveat=dfx.SaveAt(ts=ts),
        stepsize_controller=dfx.PIDController(rtol=rtol, atol=atol),
        max_steps=max_steps,
        throw=False,
    )
    xs, Cs, shifts = sol.ys

    def risk(x):
        return model.risk(model.merge(unravel(x), None))

    H = jax.vmap(jax.hessian(risk))(xs)
    grad = jax.vmap(jax.grad(risk))(xs)
    states = jax.vmap(lambda x: model.merge(unravel(x), None))(xs)
    spread = 0.5 * jnp.sum(H * Cs, axis=(1, 2))
    correction = spread + jnp.sum(grad * shifts, axis=1)
    return (
        sol.result,
        sol.stats["num_steps"],
        states,
        jax.vmap(risk)(xs),
        Cs,
        shifts,
        spread,
        correction,
    )


def fluctuations(
    model: FiniteDimODE,
    state: FiniteDimState,
    ts: ArrayLike,
    *,
    batch: int,
    monte_carlo: int | None = None,
    key: PRNGKeyArray | None = None,
    rtol: float = 1e-6,
    atol: float = 1e-8,
    max_steps: int = 100_000,
) -> Fluctuations:
    """Online SGD at a finite `d` to first order in `1/d` about the noisy ODE (the
    linear-noise expansion): its covariance, the shift of its mean and its mean risk (docs:
    [online SGD at a finite step][sgd-fluctuations]).

    With `x = (a, s, Q)` following `dx/dt = F(x)` (`model`, at its `tau = eta d / B`), online
    SGD's `(a, s, Q)` has mean `x + mu / d` and covariance `C / d` up to `O(d^-2)`, with

    `dC/dt = J C + C J^T + tau Sigma(x)`,
    `dmu/dt = J mu + 1/2 F''[C] + F_1(x) - (tau B / 2) J F(x)`, `C(0) = 0`, `mu(0) = 0`,

    `J` the Jacobian of `F`, `Sigma` the covariance of one sample's step, `F_1` the `1/d` term
    of the mean step (the retraction at second order, and the products of a batch's samples),
    and the last term the lag of Euler steps of size `eta = tau B / d`. SGD's mean risk is
    `R(x) + (grad R . mu + tr(H C) / 2) / d`, `H` the risk's Hessian.

    **Arguments:**

    - `model`: the `FiniteDimODE` with a polynomial activation and target (at `tau = 0` the
      covariance and the shift are 0: SGD is then gradient flow).
    - `state`: the initial `FiniteDimState` (deterministic: `C(0) = 0`).
    - `ts`: save times, increasing; the first is the initial time.
    - `batch`: the samples per step `B` of the SGD (`sst.OnlineSGD(batch)`), whose step is then
      `eta = tau B / d` with `tau` the model's: `mean_risk(d)` is for that `eta`. It sets the
      shift, not the covariance.
    - `monte_carlo`, `key`: by default the Gaussian expectations are exact (a sparse
      Gauss-Hermite grid in the `k + m` projections, refused above a million nodes); with
      `monte_carlo = n`, Monte Carlo over `n` inputs drawn from `key` (the same at every time).
    - `rtol`, `atol`, `max_steps`: diffrax's Tsit5 on `(x, C, mu)` (explicit: at an `eps` where
      the second layer is stiff it needs many steps; reaching `max_steps` raises).

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
    batch = check_count("batch (samples per step)", batch)
    if monte_carlo is None:
        if key is not None:
            raise ValueError("key is for the Monte Carlo: pass monte_carlo too, or no key.")
        # Exact for the products of e h (degree E + S) and e^2 g (degree 2 E + 2 S - 2), and
        # for the mean step's second order (degree 4 E + 4 S - 4, e^4 u^4).
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
    result, steps, states, risk, C, shift, spread, correction = _fluctuations(
        model, batch, y0, ts, jnp.asarray(nodes), jnp.asarray(weights), rtol, atol, max_steps
    )
    if result == dfx.RESULTS.successful and not (
        np.all(np.isfinite(correction)) and np.all(np.isfinite(C)) and np.all(np.isfinite(shift))
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
    return Fluctuations(ts, states, risk, C, shift, spread, correction)
