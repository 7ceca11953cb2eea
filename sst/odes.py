"""The two order-parameter ODEs of gradient flow on a two-layer network (THEORY.md sections 3-5).

- `FiniteDimODE`: exact dynamics of `(a, s, Q)` for any `d` and `m` (section 4).
- `MeanFieldODE`: the reduced `d -> infinity` dynamics of weighted particles `(a, s)` (section 5).

Both are `eqx.Module`s callable as diffrax vector fields on their state, and both expose the
population risk of a state and its Hermite residuals `r_k = phi_k - sigma_k m_k`.

For the solvers each model also exposes a split of its state into the evolving part `y` (a
tuple of arrays) and constant `args` (the particle weights), so that implicit solvers never carry
constants through their linear algebra.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from .hermite import Hermite, cross_kernel, cross_kernel_grad, power_series, power_series_grad
from .rosenbrock import ParticleJacobian


def _concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


class Problem(eqx.Module):
    """A learning problem: single-index target, activation, relative learning rate, label noise.

    **Fields:**

    - `target`: the target link `phi` as a `Hermite`.
    - `activation`: the activation `sigma` as a `Hermite`.
    - `eps`: the relative learning rate of the first layer (THEORY.md section 3); the second
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
        if _concrete(self.eps):
            eps = np.asarray(self.eps)
            if eps.ndim != 0 or not np.isfinite(eps) or eps <= 0:
                raise ValueError(
                    f"eps must be a finite positive scalar (the relative learning rate), got {eps}."
                )
        if _concrete(self.noise):
            noise = np.asarray(self.noise)
            if noise.ndim != 0 or not np.isfinite(noise) or noise < 0:
                raise ValueError(
                    f"noise must be a finite non-negative standard deviation, got {noise}."
                )

    def V(self, s: Float[ArrayLike, ...]) -> Float[Array, ...]:
        """`V(s) = sum_k phi_k sigma_k s^k` (THEORY.md section 2)."""
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
    def n_residuals(self) -> int:
        """Number of Hermite residuals reported: the degrees carried by the target."""
        return self.target.degree + 1

    def residuals_from_moments(self, moments: Float[Array, "... K"]) -> Float[Array, "... R"]:
        """`r_k = phi_k - sigma_k m_k` for `k` up to the target's degree (THEORY.md section 5).

        `moments[..., k] = sum_i p_i a_i s_i^k`. This is exact for any activation: the
        projection of the network function on `h_k(<u*, x>)` is `sigma_k m_k`.
        """
        n = self.n_residuals
        sigma = _pad(self.activation.coeffs, n)
        return self.target.coeffs - sigma * moments[..., :n]


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
    """`m_k = sum_i p_i a_i s_i^k` for `k < n`."""
    return _powers(s, n) @ (weights * a)


def _check_common(a: np.ndarray, s: np.ndarray) -> None:
    if a.shape[0] == 0:
        raise ValueError("The state has no particles; pass at least one.")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(s))):
        raise ValueError("The state contains NaN or inf in a or s; pass finite values.")
    if np.max(np.abs(s)) > 1.0:
        raise ValueError(
            f"Overlaps s must lie in [-1, 1] (they are <u*, w_i> for unit vectors); got "
            f"max |s| = {np.max(np.abs(s)):.6g}."
        )


class MeanFieldState(eqx.Module):
    """Weighted particles of the reduced ODE (THEORY.md section 5).

    **Fields:** `a` second-layer weights, `s` overlaps with the target direction, `weights`
    particle weights `p_i` (non-negative, summing to 1); all of shape `(m,)`.
    """

    a: Float[Array, " m"]
    s: Float[Array, " m"]
    weights: Float[Array, " m"]

    def __init__(self, a, s, weights=None):
        self.a = jnp.asarray(a, dtype=float)
        self.s = jnp.asarray(s, dtype=float)
        m = self.a.shape[-1] if self.a.ndim else 1
        self.weights = (
            jnp.full(self.a.shape, 1.0 / m)
            if weights is None
            else jnp.asarray(weights, dtype=float)
        )


class FiniteDimState(eqx.Module):
    """State of the exact finite-dimensional ODE (THEORY.md section 4).

    **Fields:** `a` second-layer weights `(m,)`, `s` overlaps `<u*, w_i>` `(m,)`, `Q` the overlap
    matrix `<w_i, w_j>` `(m, m)`, symmetric with unit diagonal.
    """

    a: Float[Array, " m"]
    s: Float[Array, " m"]
    Q: Float[Array, "m m"]

    def __init__(self, a, s, Q):
        self.a = jnp.asarray(a, dtype=float)
        self.s = jnp.asarray(s, dtype=float)
        self.Q = jnp.asarray(Q, dtype=float)


class MeanFieldODE(eqx.Module):
    """The reduced mean-field ODE for weighted particles (THEORY.md section 5):

    `eps da_i/dt = V(s_i) - sum_j p_j a_j U(s_i s_j)`,
    `ds_i/dt = (1 - s_i^2) a_i [V'(s_i) - sum_j p_j a_j s_j U'(s_i s_j)]`.

    For a polynomial activation the interaction goes through the Hermite moments
    `m_k = sum_j p_j a_j s_j^k` and costs O(m K); otherwise the dense O(m^2) sums are used.
    `interaction="dense"` forces the O(m^2) path (a cross-check of the moment path).
    """

    problem: Problem
    interaction: str = eqx.field(static=True, default="auto")

    def __check_init__(self):
        if self.interaction not in ("auto", "moments", "dense"):
            raise ValueError(
                f"interaction must be 'auto', 'moments' or 'dense', got {self.interaction!r}."
            )
        if self.interaction == "moments" and not self.problem.activation.is_polynomial:
            raise ValueError(
                "interaction='moments' needs a polynomial activation (a finite Hermite series); "
                "use 'dense' or 'auto' for ReLU or erf."
            )

    def check_state(self, state: MeanFieldState) -> None:
        """Raise `ValueError` if `state` is not a valid set of weighted particles."""
        if not isinstance(state, MeanFieldState):
            raise ValueError(f"MeanFieldODE needs a MeanFieldState, got {type(state).__name__}.")
        a, s, w = (np.asarray(x) for x in (state.a, state.s, state.weights))
        if a.ndim != 1 or s.shape != a.shape or w.shape != a.shape:
            raise ValueError(
                "MeanFieldState needs a, s and weights of the same shape (m,); got "
                f"{a.shape}, {s.shape} and {w.shape}."
            )
        _check_common(a, s)
        if not np.all(np.isfinite(w)) or np.any(w < 0) or abs(w.sum() - 1.0) > 1e-10:
            raise ValueError(
                "Particle weights must be finite, non-negative and sum to 1 (got sum "
                f"{w.sum():.12g}, min {w.min():.3g}); normalise them with weights / weights.sum()."
            )

    @property
    def uses_moments(self) -> bool:
        """Whether the O(m K) moment path is used."""
        if self.interaction == "auto":
            return self.problem.activation.is_polynomial
        return self.interaction == "moments"

    def split(self, state: MeanFieldState) -> tuple[tuple[Array, Array], Array]:
        """Solver coordinates `(a, theta)` with `s = sin(theta)`, and constant `args` (weights).

        The angle keeps every overlap inside [-1, 1] whatever the step: in `s` itself an implicit
        step can overshoot the invariant boundary `|s| = 1`, beyond which it is repelling.
        """
        return (state.a, jnp.arcsin(state.s)), state.weights

    def merge(self, y: tuple[Array, Array], args: Array) -> MeanFieldState:
        """Inverse of `split` (works on batched `y` too)."""
        a, theta = y
        return MeanFieldState(a, jnp.sin(theta), jnp.broadcast_to(args, a.shape))

    def _residual_vector(self, moments: Array) -> Array:
        """`r_k = phi_k - sigma_k m_k` for `k` up to the activation's degree (moment path)."""
        sigma = self.problem.activation.coeffs
        return _pad(self.problem.target.coeffs, sigma.shape[0]) - sigma * moments

    def _particle_rates(self, a: Array, s: Array, r: Array) -> tuple[Array, Array]:
        """`da/dt` and the bracket `g` of each particle given the residuals (moment path).

        `eps da_i/dt = sum_k sigma_k s_i^k r_k` and `g_i = sum_k k sigma_k s_i^(k-1) r_k`.
        """
        sr = self.problem.activation.coeffs * r
        return power_series(sr, s) / self.problem.eps, power_series_grad(sr, s)

    def _rates(self, a: Array, s: Array, weights: Array) -> tuple[Array, Array]:
        """`da/dt` and the bracket `g_i` in `ds_i/dt = (1 - s_i^2) a_i g_i`."""
        if self.uses_moments:
            n = self.problem.activation.coeffs.shape[0]
            return self._particle_rates(a, s, self._residual_vector(_moments(weights, a, s, n)))
        p = self.problem
        q = s[:, None] * s[None, :]
        pa = weights * a
        da = p.V(s) - p.U(q) @ pa
        bracket = p.dV(s) - p.dU(q) @ (pa * s)
        return da / p.eps, bracket

    def vector_field(self, t, y: tuple[Array, Array], weights: Array) -> tuple[Array, Array]:
        """Time derivative of the solver coordinates `(a, theta)`: `dtheta/dt = cos(theta) a g`."""
        a, theta = y
        da, bracket = self._rates(a, jnp.sin(theta), weights)
        return da, jnp.cos(theta) * a * bracket

    def particle_jacobian(self, y: tuple[Array, Array], weights: Array) -> ParticleJacobian | None:
        """Jacobian of `vector_field` as block-diagonal plus rank-(K+1) parts (moment path only).

        Each particle's rate depends on its own `(a_i, theta_i)` and on the residuals `r`, which
        are linear in the moments: `J = D + B R` (see `sst.rosenbrock`). With `s = sin(theta)`,
        `c = cos(theta)`, `A(s) = sum_k sigma_k r_k s^k` and `g = A'`: `da/dt = A(s) / eps` and
        `dtheta/dt = c a g(s)`, so the parts are closed-form and cost O(m K). Returns `None` for
        the dense O(m^2) path, which has no such structure.
        """
        if not self.uses_moments:
            return None
        a, theta = y
        s, c = jnp.sin(theta), jnp.cos(theta)
        sigma = self.problem.activation.coeffs
        n = sigma.shape[0]
        k = jnp.arange(n, dtype=s.dtype)
        powers = _powers(s, n)  # s^k, (n, m)
        d_powers = jnp.pad(powers[:-1], ((1, 0), (0, 0))) * k[:, None]  # k s^(k-1)
        sr = sigma * self._residual_vector(powers @ (weights * a))
        g = sr @ d_powers
        dg = power_series_grad(k[1:] * sr[1:], s)
        eps = self.problem.eps
        D = jnp.stack(
            [
                jnp.stack([jnp.zeros_like(a), c * g / eps]),
                jnp.stack([c * g, a * (c**2 * dg - s * g)]),
            ]
        )
        B = sigma[:, None] * jnp.stack([powers / eps, (c * a) * d_powers])
        R = -(sigma[:, None] * weights) * jnp.stack([powers, (a * c) * d_powers])
        return ParticleJacobian(D=D, B=B, R=R)

    def __call__(self, t, state: MeanFieldState, args=None) -> MeanFieldState:
        """Diffrax vector field on `MeanFieldState` (the weights have zero derivative)."""
        da, bracket = self._rates(state.a, state.s, state.weights)
        ds = (1.0 - state.s**2) * state.a * bracket
        return MeanFieldState(da, ds, jnp.zeros_like(state.weights))

    def moments(self, state: MeanFieldState) -> Float[Array, " R"]:
        """`m_k = sum_i p_i a_i s_i^k` for `k` up to the target's degree."""
        return _moments(state.weights, state.a, state.s, self.problem.n_residuals)

    def residuals(self, state: MeanFieldState) -> Float[Array, " R"]:
        """Hermite residuals `r_k = phi_k - sigma_k m_k` up to the target's degree."""
        return self.problem.residuals_from_moments(self.moments(state))

    def risk(self, state: MeanFieldState) -> Float[Array, ""]:
        """`R_mf = |phi|^2/2 - sum_i p_i a_i V(s_i) + sum_ij p_i p_j a_i a_j U(s_i s_j)/2`.

        Plus `noise^2 / 2`. Computed through the moments (exact, O(m K)) for polynomial
        activations, densely otherwise.
        """
        p = self.problem
        a, s, w = state.a, state.s, state.weights
        if self.uses_moments:
            sigma = p.activation.coeffs
            n = sigma.shape[0]
            mom = _moments(w, a, s, n)
            cross = jnp.sum(_pad(p.target.coeffs, n) * sigma * mom)
            self_term = jnp.sum((sigma * mom) ** 2)
        else:
            pa = w * a
            cross = jnp.sum(pa * p.V(s))
            self_term = pa @ p.U(s[:, None] * s[None, :]) @ pa
        return p.baseline_risk - cross + 0.5 * self_term


class FiniteDimODE(eqx.Module):
    """The exact order-parameter ODE of population gradient flow (THEORY.md section 4).

    `eps da_i/dt = V(s_i) - (1/m) sum_j a_j U(Q_ij)`,
    `ds_i/dt = a_i V'(s_i)(1 - s_i^2) - (a_i/m) sum_{j!=i} a_j U'(Q_ij)(s_j - Q_ij s_i)`,
    `dQ_ij/dt = M_ij + M_ji`, `M_ij = a_i V'(s_i)(s_j - s_i Q_ij)
    - (a_i/m) sum_{k!=i} a_k U'(Q_ik)(Q_kj - Q_ik Q_ij)`.

    Exact for any `d` and `m`: `d` enters only through the initial condition.
    """

    problem: Problem

    def check_state(self, state: FiniteDimState) -> None:
        """Raise `ValueError` if `state` is not a valid `(a, s, Q)`."""
        if not isinstance(state, FiniteDimState):
            raise ValueError(f"FiniteDimODE needs a FiniteDimState, got {type(state).__name__}.")
        a, s, Q = (np.asarray(x) for x in (state.a, state.s, state.Q))
        m = a.shape[0] if a.ndim == 1 else -1
        if a.ndim != 1 or s.shape != a.shape or Q.shape != (m, m):
            raise ValueError(
                "FiniteDimState needs a and s of shape (m,) and Q of shape (m, m); got "
                f"{a.shape}, {s.shape} and {Q.shape}."
            )
        _check_common(a, s)
        if not np.all(np.isfinite(Q)):
            raise ValueError("Q contains NaN or inf; pass the finite overlap matrix W @ W.T.")
        if np.max(np.abs(Q - Q.T)) > 1e-10 or np.max(np.abs(np.diag(Q) - 1.0)) > 1e-10:
            raise ValueError(
                "Q must be symmetric with unit diagonal (the Gram matrix of unit vectors); "
                "symmetrise it and set its diagonal to 1."
            )
        if np.max(np.abs(Q)) > 1.0 + 1e-12:
            raise ValueError("Entries of Q are overlaps of unit vectors and must lie in [-1, 1].")

    def split(self, state: FiniteDimState) -> tuple[tuple[Array, Array, Array], None]:
        """Evolving part `(a, s, Q)` and constant `args` (none) of a state."""
        return (state.a, state.s, state.Q), None

    def merge(self, y: tuple[Array, Array, Array], args: None) -> FiniteDimState:
        """Inverse of `split`."""
        return FiniteDimState(*y)

    def vector_field(self, t, y: tuple[Array, Array, Array], args=None):
        """Time derivative of `(a, s, Q)`."""
        a, s, Q = y
        p = self.problem
        m = a.shape[0]
        off = 1.0 - jnp.eye(m)
        Q_off = Q * off  # the diagonal is 1 by construction; never differentiate U there
        U = p.U(Q_off) * off + p.U(1.0) * jnp.eye(m)
        G = (a[None, :] * p.dU(Q_off)) * off  # G_ik = a_k U'(Q_ik), k != i
        da = (p.V(s) - U @ a / m) / p.eps
        aVp = a * p.dV(s)
        ds = aVp * (1.0 - s**2) - (a / m) * (G @ s - s * jnp.sum(G * Q_off, axis=1))
        M = aVp[:, None] * (s[None, :] - s[:, None] * Q_off) - (a / m)[:, None] * (
            G @ Q - Q_off * jnp.sum(G * Q_off, axis=1)[:, None]
        )
        dQ = (M + M.T) * off
        return da, ds, dQ

    def __call__(self, t, state: FiniteDimState, args=None) -> FiniteDimState:
        """Diffrax vector field on `FiniteDimState`."""
        return FiniteDimState(*self.vector_field(t, self.split(state)[0]))

    def moments(self, state: FiniteDimState) -> Float[Array, " R"]:
        """`m_k = (1/m) sum_i a_i s_i^k` for `k` up to the target's degree."""
        m = state.a.shape[0]
        return _moments(jnp.full(m, 1.0 / m), state.a, state.s, self.problem.n_residuals)

    def residuals(self, state: FiniteDimState) -> Float[Array, " R"]:
        """Hermite residuals `r_k = phi_k - sigma_k m_k` up to the target's degree."""
        return self.problem.residuals_from_moments(self.moments(state))

    def risk(self, state: FiniteDimState) -> Float[Array, ""]:
        """`R = |phi|^2/2 - (1/m) sum_i a_i V(s_i) + (1/2m^2) sum_ij a_i a_j U(Q_ij)` (+ noise)."""
        p = self.problem
        a, s, Q = state.a, state.s, state.Q
        m = a.shape[0]
        eye = jnp.eye(m)
        U = p.U(Q * (1 - eye)) * (1 - eye) + p.U(1.0) * eye
        return p.baseline_risk - jnp.sum(a * p.V(s)) / m + 0.5 * (a @ U @ a) / m**2


# --------------------------------------------------------------------------------------------
# Initial conditions


def quadrature_particles(
    m: int, law: str = "normal", scale: float = 1.0, mean: float = 0.0
) -> MeanFieldState:
    """Deterministic particles discretising the law of `a(0)`, `s(0) = 0` (THEORY.md section 5).

    **Arguments:**

    - `m`: number of particles.
    - `law`: `"normal"` (Gauss-Hermite nodes of N(mean, scale^2)), `"uniform"` (Gauss-Legendre
      nodes on [mean - scale, mean + scale]) or `"rademacher"` (mean +- scale with weight 1/2;
      `m` must be even, the two atoms are split into m/2 equal particles each).

    **Returns:** a `MeanFieldState` whose weights are the quadrature weights.
    """
    if not isinstance(m, int) or m < 1:
        raise ValueError(f"m must be a positive integer number of particles, got {m!r}.")
    if law == "normal":
        x, w = np.polynomial.hermite_e.hermegauss(m)
        w = w / w.sum()
    elif law == "uniform":
        x, w = np.polynomial.legendre.leggauss(m)
        w = w / 2.0
    elif law == "rademacher":
        if m % 2:
            raise ValueError(f"law='rademacher' needs an even number of particles, got m={m}.")
        x = np.repeat([-1.0, 1.0], m // 2)
        w = np.full(m, 1.0 / m)
    else:
        raise ValueError(f"law must be 'normal', 'uniform' or 'rademacher', got {law!r}.")
    return MeanFieldState(mean + scale * x, np.zeros(m), w)


def particles_from_law(
    nodes: Float[ArrayLike, " m"], weights: Float[ArrayLike, " m"]
) -> MeanFieldState:
    """Particles at given nodes `a(0)` with given weights and `s(0) = 0`."""
    nodes = np.asarray(nodes, dtype=float)
    return MeanFieldState(nodes, np.zeros_like(nodes), weights)


class RandomInit(eqx.Module):
    """A random initialisation of the network in dimension `d` and its order parameters.

    **Fields:** `state` (the exact `FiniteDimState`), `W` the first-layer weights `(m, d)` with
    unit rows, `u` the unit target direction `(d,)`. `state.s = W u` and `state.Q = W W^T`.
    """

    state: FiniteDimState
    W: Float[Array, "m d"]
    u: Float[Array, " d"]

    def mean_field(self) -> MeanFieldState:
        """The same particles `(a, s)` with equal weights, for `MeanFieldODE`."""
        return MeanFieldState(self.state.a, self.state.s)


def random_init(
    key: PRNGKeyArray, m: int, d: int, a_scale: float = 1.0, a_law: str = "normal"
) -> RandomInit:
    """Random unit first-layer weights in dimension `d` and random second-layer weights.

    `w_i` uniform on the sphere, `u* = e_1`; `a_i` i.i.d. normal with standard deviation
    `a_scale` (`a_law="normal"`), uniform on `[-a_scale, a_scale]` (`"uniform"`) or `+-a_scale`
    (`"rademacher"`). Overlaps are of order `1/sqrt(d)` (THEORY.md section 4).
    """
    if m < 1 or d < 2:
        raise ValueError(f"random_init needs m >= 1 and d >= 2, got m={m}, d={d}.")
    kw, ka = jax.random.split(key)
    W = jax.random.normal(kw, (m, d))
    W = W / jnp.linalg.norm(W, axis=1, keepdims=True)
    u = jnp.zeros(d).at[0].set(1.0)
    if a_law == "normal":
        a = a_scale * jax.random.normal(ka, (m,))
    elif a_law == "uniform":
        a = jax.random.uniform(ka, (m,), minval=-a_scale, maxval=a_scale)
    elif a_law == "rademacher":
        a = a_scale * jax.random.rademacher(ka, (m,)).astype(float)
    else:
        raise ValueError(f"a_law must be 'normal', 'uniform' or 'rademacher', got {a_law!r}.")
    Q = W @ W.T
    Q = 0.5 * (Q + Q.T)
    Q = Q.at[jnp.diag_indices(m)].set(1.0)
    return RandomInit(FiniteDimState(a, W @ u, Q), W, u)
