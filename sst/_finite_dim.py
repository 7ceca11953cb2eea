"""The exact finite-dimensional order-parameter ODE (docs: [the finite-dimensional
ODE][finite-dimensional-ode])."""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ._linear import DenseJacobian
from ._problem import AbstractProblemModel, Problem, _moments, _pad, _powers
from ._validate import check_particles, float_array


class FiniteDimState(eqx.Module):
    """State of the exact finite-dimensional ODE (docs: [the finite-dimensional
    ODE][finite-dimensional-ode]).

    **Fields:** `a` second-layer weights `(m,)`, `s` overlaps `<u*, w_i>` `(m,)`, `Q` the overlap
    matrix `<w_i, w_j>` `(m, m)`, symmetric with unit diagonal.
    """

    a: Float[Array, " m"] = eqx.field(converter=float_array)
    s: Float[Array, " m"] = eqx.field(converter=float_array)
    Q: Float[Array, "m m"] = eqx.field(converter=float_array)


class FiniteDimODE(AbstractProblemModel):
    """The exact order-parameter ODE of population gradient flow (docs:
    [the finite-dimensional ODE][finite-dimensional-ode]):

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
        check_particles(a, s)
        if not np.all(np.isfinite(Q)):
            raise ValueError("Q contains NaN or inf; pass the finite overlap matrix W @ W.T.")
        if np.max(np.abs(Q - Q.T)) > 1e-10 or np.max(np.abs(np.diag(Q) - 1.0)) > 1e-10:
            raise ValueError(
                "Q must be symmetric with unit diagonal (the Gram matrix of unit vectors); "
                "symmetrise it and set its diagonal to 1."
            )
        if np.max(np.abs(Q)) > 1.0 + 1e-12:
            raise ValueError("Entries of Q are overlaps of unit vectors and must lie in [-1, 1].")
        # (s, Q) come from unit vectors w_i and the unit target u: [[1, s^T], [s, Q]] is their
        # Gram matrix, so positive semi-definite. W W^T in float64 carries rounding of at most
        # d u ~ 1e-10 per entry up to d = 1e6, which moves an eigenvalue by at most (m+1) times
        # that: below -(m+1) 1e-9 no set of unit vectors produced this state.
        gram = np.block([[np.ones((1, 1)), s[None, :]], [s[:, None], Q]])
        smallest = float(np.linalg.eigvalsh(0.5 * (gram + gram.T))[0])
        if smallest < -(m + 1) * 1e-9:
            raise ValueError(
                "(s, Q) is not the Gram matrix of unit vectors and the target direction: "
                f"[[1, s^T], [s, Q]] has eigenvalue {smallest:.3g} < 0; build the state from "
                "unit vectors W (rows) and u as s = W @ u, Q = W @ W.T "
                "(sst.RandomInit.from_weights)."
            )

    def split(self, state: FiniteDimState) -> tuple[tuple[Array, Array, Array], None]:
        """Evolving part `(a, s, Q)` and constant `args` (none) of a state."""
        return (state.a, state.s, state.Q), None

    def merge(self, y: tuple[Array, Array, Array], args: None) -> FiniteDimState:
        """Inverse of `split`."""
        return FiniteDimState(*y)

    def __call__(self, t, y: tuple[Array, Array, Array], args=None):
        """Time derivative of `(a, s, Q)`."""
        a, s, Q = y
        m = a.shape[0]
        da, off, Q_off, G, pull = neuron_interaction(self.problem, a, s, Q)
        aVp = a * self.problem.dV(s)
        ds = aVp * (1.0 - s**2) - (a / m) * (G @ s - s * pull)
        M = aVp[:, None] * (s[None, :] - s[:, None] * Q_off) - (a / m)[:, None] * (
            G @ Q - Q_off * pull[:, None]
        )
        dQ = (M + M.T) * off
        return da, ds, dQ

    def jacobian(self, t, y, args=None) -> DenseJacobian:
        """The dense Jacobian of the vector field (every pair of neurons interacts through Q)."""
        return DenseJacobian.of(self, t, y, args)

    def moments(self, state: FiniteDimState) -> Float[Array, " R"]:
        """`m_k = (1/m) sum_i a_i s_i^k` for `k` up to the target's degree."""
        m = state.a.shape[0]
        return _moments(jnp.full(m, 1.0 / m), state.a, state.s, len(self.problem.degrees))

    def risk(self, state: FiniteDimState) -> Float[Array, ""]:
        """`R = |phi|^2/2 - (1/m) sum_i a_i V(s_i) + (1/2m^2) sum_ij a_i a_j U(Q_ij)` (+ noise).

        For a polynomial activation of degree `K`, as a sum of non-negative parts: degree `k` of
        the network is `sigma_k (1/m) sum_i a_i w_i^(x)k`, whose part along `u^(x)k` gives the
        residual `r_k = phi_k - sigma_k m_k` and whose orthogonal part has squared norm
        `sigma_k^2 a^T (Q^k - s^k s^kT) a / m^2` (`Q^k` elementwise: the Gram matrix of the
        `w_i^(x)k` minus their projections on `u^(x)k`), so
        `R = sum_k [r_k^2 + sigma_k^2 a^T (Q^k - s^k s^kT) a / m^2] / 2` plus the target beyond
        the activation's degree and the noise.
        """
        p = self.problem
        a, s, Q = state.a, state.s, state.Q
        m = a.shape[0]
        eye = jnp.eye(m)
        if not p.activation.is_polynomial:
            U = p.U(Q * (1 - eye)) * (1 - eye) + p.U(1.0) * eye
            return p.baseline_risk - jnp.sum(a * p.V(s)) / m + 0.5 * (a @ U @ a) / m**2
        n = max(p.activation.coeffs.shape[0], p.target.coeffs.shape[0])
        r = p.residuals(_moments(jnp.full(m, 1.0 / m), a, s, n))
        Q_exact = Q * (1 - eye) + eye  # the diagonal is 1 by construction
        Q_powers, s_powers = _powers(Q_exact, n), _powers(s, n)
        perpendicular = jnp.einsum("i,kij,j->k", a, Q_powers, a) - (s_powers @ a) ** 2
        sigma = _pad(p.activation.coeffs, n)
        beyond = p.target.norm2 - jnp.sum(p.target.coeffs**2)
        parts = jnp.sum(r**2) + jnp.sum(sigma**2 * perpendicular) / m**2
        return 0.5 * (parts + beyond + p.noise**2)


def neuron_interaction(problem, a: Array, s: Array, Q: Array) -> tuple[Array, ...]:
    """What the overlap matrix `Q` of `m` neurons contributes to the finite-d ODEs (single- and
    multi-index): `da/dt = (V(s) - U(Q) a / m) / eps`, the off-diagonal mask, `Q` with its
    diagonal zeroed (it is 1 by construction; `U` is never differentiated there),
    `G_il = a_l U'(Q_il)` for `l != i`, and `pull_i = sum_l G_il Q_il`."""
    m = a.shape[0]
    off = 1.0 - jnp.eye(m)
    Q_off = Q * off
    U = problem.U(Q_off) * off + problem.U(1.0) * jnp.eye(m)
    G = (a[None, :] * problem.dU(Q_off)) * off
    da = (problem.V(s) - U @ a / m) / problem.eps
    return da, off, Q_off, G, jnp.sum(G * Q_off, axis=1)
