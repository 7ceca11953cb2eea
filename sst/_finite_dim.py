"""The exact finite-dimensional order-parameter ODE (docs: [the finite-dimensional
ODE][finite-dimensional-ode])."""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ._linear import DenseJacobian
from ._noise import noise_matrix, noise_supported
from ._problem import AbstractProblemModel, Problem, overlap_matrix, state_overlaps
from ._rosenbrock import StiffJacobian
from ._target import _powers, graded_indices, monomials
from ._validate import array_values, check_overlaps, float_array, is_traced, require


class FiniteDimState(eqx.Module):
    """State of the exact finite-dimensional ODE (docs: [the finite-dimensional
    ODE][finite-dimensional-ode]).

    **Fields:** `a` second-layer weights `(m,)`; `s` the overlaps `S = W U*` with the target
    directions, `(m,)` for an `sst.Hermite` target and `(m, k)` for an `sst.Target`; `Q` the
    overlap matrix `W W^T` `(m, m)`, symmetric with unit diagonal.
    """

    a: Float[Array, " m"] = eqx.field(converter=float_array)
    s: Float[Array, " m *k"] = eqx.field(converter=float_array)
    Q: Float[Array, "m m"] = eqx.field(converter=float_array)


class FiniteDimODE(AbstractProblemModel):
    """The exact order-parameter ODE of population gradient flow (docs: [the finite-dimensional
    ODE][finite-dimensional-ode]), with `g_i = grad V(s_i)` in `R^k`:

    `eps da_i/dt = V(s_i) - (1/m) sum_j a_j U(Q_ij)`,
    `ds_i/dt = a_i [g_i - (s_i . g_i) s_i] - (a_i/m) sum_{j!=i} a_j U'(Q_ij) (s_j - Q_ij s_i)`,
    `dQ_ij/dt = M_ij + M_ji`, `M_ij = a_i [g_i . s_j - (s_i . g_i) Q_ij]
    - (a_i/m) sum_{l!=i} a_l U'(Q_il) (Q_lj - Q_il Q_ij)`.

    Exact for any `d` and `m`: `d` enters only through the initial condition.

    With `tau > 0` it is the limit of online SGD at the noise level `tau = eta d / B` (step
    `eta`, `B` fresh samples per step, `d -> infinity` at fixed `tau`; docs: [online SGD at a
    finite step][sgd-noise]): with the noise matrix `N` of `sst.noise_matrix`,

    `ds_i/dt += -(tau/2) N_ii s_i`, `dQ_ij/dt += tau N_ij - (tau/2) (N_ii + N_jj) Q_ij`,

    and `a` unchanged. `tau = 0` (the default) is population gradient flow.

    **Fields:** `problem`, the `sst.Problem`; `tau`, the SGD noise level, a JAX scalar (a
    parameter: batched by `solve_batch`, differentiated by `jax.grad`). Noise terms need a
    polynomial activation and target, erf with a polynomial or erf target, or relu with a
    relu target (`sst.noise_matrix`). Solve a noisy model with a Rosenbrock-W method
    (`Ros34PW2`), which takes the flow's Jacobian.
    """

    problem: Problem
    tau: Float[Array, ""]
    # Whether the noise terms are evaluated: False only for a concrete tau = 0, so that the flow
    # is exactly the flow (and compiles without them) even where jit later traces tau.
    noisy: bool = eqx.field(static=True)

    def __init__(self, problem: Problem, tau: float | Float[Array, ""] = 0.0):
        self.problem = problem
        self.tau = jnp.asarray(tau, dtype=float)
        self.noisy = is_traced(self.tau) or bool(np.asarray(self.tau) != 0.0)

    def __check_init__(self):
        if not isinstance(self.problem, Problem):
            raise ValueError(
                f"FiniteDimODE needs an sst.Problem, got {type(self.problem).__name__}."
            )
        if jnp.shape(self.tau) != ():
            raise ValueError(f"tau must be a scalar, got shape {jnp.shape(self.tau)}.")
        # Checked in numpy: under jit even an operation on a concrete array is staged.
        tau = None if is_traced(self.tau) else np.asarray(self.tau)
        if tau is not None and not (np.isfinite(tau) and tau >= 0.0):
            raise ValueError(
                f"tau (the SGD noise level eta d / B) must be finite and >= 0, got {self.tau}."
            )
        if self.noisy and not noise_supported(self.problem):
            raise ValueError(
                "tau > 0 needs a polynomial activation with a polynomial target, erf with a "
                "polynomial or erf target, or relu with a relu target (got sigma = "
                f"{self.problem.activation}, phi = {self.problem.target}); use one of those, such "
                "as sst.Hermite(sst.relu(4).coeffs) as a polynomial stand-in for relu (docs: "
                "online SGD at a finite step), or tau = 0."
            )

    def parameters(self) -> dict[str, Array]:
        """The problem's parameters (`eps`, `target`, `activation`) and `tau`."""
        return {**super().parameters(), "tau": self.tau}

    def with_parameters(self, **values) -> FiniteDimODE:
        """This model with some of `eps`, `target`, `activation` and `tau` replaced."""
        tau = values.pop("tau", self.tau)
        problem = self.problem.with_parameters(**values) if values else self.problem
        return FiniteDimODE(problem, tau)

    def check_state(self, state: FiniteDimState) -> FiniteDimState:
        """`state`, checked as an `(a, s, Q)` for this problem: a `ValueError` now if concrete
        and invalid; under jit, an error when run if its values are not those of unit vectors."""
        if not isinstance(state, FiniteDimState):
            raise ValueError(f"FiniteDimODE needs a FiniteDimState, got {type(state).__name__}.")
        a, Q = state.a, state.Q
        s = check_overlaps(self.problem, a, state.s, "FiniteDimState")
        m = a.shape[0]
        if Q.shape != (m, m):
            raise ValueError(f"Q must be a ({m}, {m}) matrix (W W^T); got shape {Q.shape}.")
        xp, (S, V) = array_values(s, Q)
        if xp is np and not np.all(np.isfinite(V)):
            raise ValueError("Q contains NaN or inf; pass the finite overlap matrix W @ W.T.")
        Q = require(
            Q,
            (xp.max(xp.abs(V - V.T)) > 1e-10) | (xp.max(xp.abs(xp.diag(V) - 1.0)) > 1e-10),
            "Q must be symmetric with unit diagonal (the Gram matrix of unit vectors); "
            "symmetrise it and set its diagonal to 1.",
        )
        Q = require(
            Q,
            xp.max(xp.abs(V)) > 1.0 + 1e-12,
            "Entries of Q are overlaps of unit vectors and must lie in [-1, 1].",
        )
        if self.problem.activation.closed_form == "relu":
            off = V - xp.eye(m)
            Q = require(
                Q,
                (xp.max(xp.abs(off)) >= 1.0) | (xp.max(xp.abs(S)) >= 1.0),
                "ReLU's kernel has no derivative where two neurons are equal (|Q_ij| = 1) or a "
                "neuron lies on a target direction (|s| = 1), so a stiff solver's Jacobian is "
                "infinite there; perturb those weights (by 1e-8, say) or use a polynomial "
                "activation.",
            )
        # (S, Q) come from unit vectors w_i and orthonormal directions U*: [[I, S^T], [S, Q]] is
        # their Gram matrix, so positive semi-definite. W W^T in float64 carries rounding of at
        # most d u ~ 1e-10 per entry up to d = 1e6, which moves an eigenvalue by at most
        # (m + k) times that: below -(m + k) 1e-9 no set of unit vectors produced this state.
        S = S.reshape(m, -1)
        k = S.shape[1]
        gram = xp.block([[xp.eye(k), S.T], [S, V]])
        smallest = xp.linalg.eigvalsh(0.5 * (gram + gram.T))[0]
        Q = require(
            Q,
            smallest < -(m + k) * 1e-9,
            "(s, Q) is not the Gram matrix of unit vectors and the target directions "
            "([[I, s^T], [s, Q]] has a negative eigenvalue); build the state from unit vectors "
            "W (rows) and directions U as s = W @ U, Q = W @ W.T (sst.RandomInit.from_weights).",
            lambda: f"its smallest eigenvalue is {float(smallest):.3g}",
        )
        return FiniteDimState(a, s, Q)

    def split(self, state: FiniteDimState) -> tuple[tuple[Array, Array, Array], None]:
        """Evolving part `(a, s, Q)` and constant `args` (none) of a state."""
        return (state.a, state.s, state.Q), None

    def merge(self, y: tuple[Array, Array, Array], args: None) -> FiniteDimState:
        """Inverse of `split`."""
        return FiniteDimState(*y)

    def __call__(self, t, y: tuple[Array, Array, Array], args=None):
        """Time derivative of `(a, s, Q)`."""
        da, ds, dQ = self._flow(t, y, args)
        if not self.noisy:
            return da, ds, dQ
        noise_ds, noise_dQ = self._noise(y, noise_matrix(self.problem, *self._parts(y)))
        return da, ds + noise_ds, dQ + noise_dQ

    def _parts(self, y):
        a, s, Q = y
        return a, overlap_matrix(self.problem, s), Q

    def _noise(self, y, N):
        """The noise terms `(ds, dQ)` for the noise matrix `N` (zero on Q's diagonal)."""
        a, s, Q = self._parts(y)
        off = 1.0 - jnp.eye(a.shape[0])
        diag = jnp.diagonal(N)
        ds = -(0.5 * self.tau) * diag[:, None] * s
        dQ = self.tau * (N - 0.5 * (diag[:, None] + diag[None, :]) * (Q * off)) * off
        return state_overlaps(self.problem, ds), dQ

    def _flow(self, t, y: tuple[Array, Array, Array], args=None):
        """The gradient-flow part of the vector field."""
        a, s_stored, Q = y
        p = self.problem
        s = overlap_matrix(p, s_stored)  # (m, k)
        m = a.shape[0]
        off = 1.0 - jnp.eye(m)
        Q_off = Q * off  # the diagonal is 1 by construction; U is never differentiated there
        U = p.U(Q_off) * off + p.U(1.0) * jnp.eye(m)
        G = (a[None, :] * p.dU(Q_off)) * off  # G_il = a_l U'(Q_il), l != i
        pull = jnp.sum(G * Q_off, axis=1)
        da = (p.V(s) - U @ a / m) / p.eps
        ag = a[:, None] * p.dV(s)  # (m, k)
        radial = jnp.sum(s * ag, axis=1)  # a_i (s_i . g_i)
        ds = ag - radial[:, None] * s - (a / m)[:, None] * (G @ s - pull[:, None] * s)
        M = (ag @ s.T - radial[:, None] * Q_off) - (a / m)[:, None] * (
            G @ Q - Q_off * pull[:, None]
        )
        dQ = (M + M.T) * off
        return da, state_overlaps(p, ds), dQ

    def jacobian(self, t, y, args=None) -> DenseJacobian | StiffJacobian:
        """The dense Jacobian of the vector field (every pair of neurons interacts through Q),
        by forward-mode differentiation. With noise, a `StiffJacobian`: the flow's Jacobian for
        a Rosenbrock-W method (the noise terms are O(tau) and not stiff; the exact Jacobian of
        the O(m^4) noise matrix costs about 250 vector fields), the exact one for the others
        (docs: [online SGD at a finite step][sgd-noise])."""
        flow = DenseJacobian.of(self._flow, t, y, args)
        return StiffJacobian(flow, self, t, y, args) if self.noisy else flow

    def moments(self, state: FiniteDimState) -> Float[Array, " N"]:
        """`mu_alpha = (1/m) sum_i a_i s_i^alpha` on the residual labels."""
        s = overlap_matrix(self.problem, state.s).T
        return monomials(s, self.problem.labels) @ state.a / state.a.shape[0]

    def risk(self, state: FiniteDimState) -> Float[Array, ""]:
        """`R = |phi|^2/2 - (1/m) sum_i a_i V(s_i) + (1/2m^2) sum_ij a_i a_j U(Q_ij)` (+ noise).

        For a polynomial activation of degree `K`, as a sum of non-negative parts: degree `n`
        of the network is `sigma_n (1/m) sum_i a_i w_i^(x)n`, whose part in the span of the
        symmetrised `U*`-tensors gives the residuals `r_alpha = c_alpha - b_alpha mu_alpha`
        (`|alpha| = n`) and whose orthogonal part has squared norm
        `sigma_n^2 a^T (Q^n - (S S^T)^n) a / m^2` (powers elementwise; `(s_i . s_j)^n =
        sum_{|alpha|=n} (n!/alpha!) s_i^alpha s_j^alpha`), so `R = [sum_alpha r_alpha^2 +
        sum_n sigma_n^2 a^T (Q^n - (S S^T)^n) a / m^2] / 2` plus the target beyond the
        activation's degree and the noise.
        """
        p = self.problem
        a, Q = state.a, state.Q
        s = overlap_matrix(p, state.s)  # (m, k)
        m = a.shape[0]
        eye = jnp.eye(m)
        if not p.activation.is_polynomial:
            U = p.U(Q * (1 - eye)) * (1 - eye) + p.U(1.0) * eye
            return p.baseline_risk - jnp.sum(a * p.V(s)) / m + 0.5 * (a @ U @ a) / m**2
        n = max(p.activation.degree, p.target.degree) + 1
        indices = graded_indices(p.k, n - 1)
        r = p.residuals(monomials(s.T, indices) @ a / m, indices)
        Q_exact = Q * (1 - eye) + eye  # the diagonal is 1 by construction
        gap = _powers(Q_exact, n) - _powers(s @ s.T, n)
        perpendicular = jnp.einsum("i,kij,j->k", a, gap, a)
        sigma = (
            jnp.zeros(n, a.dtype).at[: p.activation.coeffs.shape[0]].set(p.activation.coeffs[:n])
        )
        beyond = p.target.norm2 - jnp.sum(p.target_coeffs(indices) ** 2)
        parts = jnp.sum(r**2) + jnp.sum(sigma**2 * perpendicular) / m**2
        return 0.5 * (parts + beyond + p.noise**2)
