"""The exact finite-dimensional ODE of a multi-index target on `(a, s, Q)` (docs: [the
finite-dimensional ODE of a multi-index target][multi-index-finite-dimensional-ode])."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ._finite_dim import neuron_interaction
from ._linear import DenseJacobian
from ._multi_index import AbstractMultiIndexModel, MultiIndexProblem, monomials
from ._validate import check_particles, float_array


class MultiIndexFiniteDimState(eqx.Module):
    """State of the exact finite-dimensional ODE of a multi-index target.

    **Fields:** `a` second-layer weights `(m,)`, `s` the overlaps `S = W U*` with the `k`
    target directions `(m, k)`, `Q` the overlap matrix `W W^T` `(m, m)`, symmetric with unit
    diagonal.
    """

    a: Float[Array, " m"] = eqx.field(converter=float_array)
    s: Float[Array, "m k"] = eqx.field(converter=float_array)
    Q: Float[Array, "m m"] = eqx.field(converter=float_array)


def check_overlap_state(model, state, state_type: type) -> tuple[np.ndarray, ...]:
    """The fields of a multi-index `state` (`a`, `s`, then `Q` or the weights) as numpy arrays,
    after checking its type, `a` and `s` (`check_overlaps`) and that `s` has a column per
    direction of `model`'s target."""
    if not isinstance(state, state_type):
        raise ValueError(
            f"{type(model).__name__} needs a {state_type.__name__}, got {type(state).__name__}."
        )
    a, s, rest = (np.asarray(x) for x in jax.tree_util.tree_leaves(state))
    check_overlaps(a, s, state_type.__name__)
    if s.shape[1] != model.problem.k:
        raise ValueError(
            f"The target has k={model.problem.k} directions but s has {s.shape[1]} columns."
        )
    return a, s, rest


def check_overlaps(a: np.ndarray, s: np.ndarray, name: str) -> None:
    """`a` of shape `(m,)`, `s` of shape `(m, k)` with rows in the closed unit ball."""
    if a.ndim != 1 or s.ndim != 2 or s.shape[0] != a.shape[0]:
        raise ValueError(
            f"{name} needs a of shape (m,) and s of shape (m, k); got {a.shape} and {s.shape}."
        )
    check_particles(a, np.zeros_like(a))
    if not np.all(np.isfinite(s)):
        raise ValueError("The state contains NaN or inf in s; pass finite values.")
    norms = np.linalg.norm(s, axis=1)
    if norms.size and np.max(norms) > 1.0 + 1e-12:
        raise ValueError(
            "Each row of s holds the overlaps U*^T w_i of a unit vector with orthonormal "
            f"directions and must have norm <= 1; got max |s_i| = {np.max(norms):.6g}."
        )


class MultiIndexFiniteDimODE(AbstractMultiIndexModel):
    """The exact order-parameter ODE of population gradient flow for a multi-index target
    (docs: [its equations][multi-index-finite-dimensional-ode]), with `g_i = grad V(s_i)` in `R^k`:

    `eps da_i/dt = V(s_i) - (1/m) sum_j a_j U(Q_ij)`,
    `ds_i/dt = a_i [g_i - (s_i . g_i) s_i] - (a_i/m) sum_{j!=i} a_j U'(Q_ij) (s_j - Q_ij s_i)`,
    `dQ_ij/dt = M_ij + M_ji`, `M_ij = a_i [g_i . s_j - (s_i . g_i) Q_ij]
    - (a_i/m) sum_{l!=i} a_l U'(Q_il) (Q_lj - Q_il Q_ij)`.

    Exact for any `d` and `m`; `d` enters only through the initial condition. For `k = 1` it
    is `sst.FiniteDimODE`.
    """

    problem: MultiIndexProblem

    def __check_init__(self):
        if not isinstance(self.problem, MultiIndexProblem):
            raise ValueError(
                "MultiIndexFiniteDimODE needs an sst.MultiIndexProblem; for a single-index "
                "sst.Problem use sst.FiniteDimODE."
            )

    def check_state(self, state: MultiIndexFiniteDimState) -> None:
        """Raise `ValueError` if `state` is not a valid `(a, s, Q)` for this problem."""
        a, s, Q = check_overlap_state(self, state, MultiIndexFiniteDimState)
        m = a.shape[0]
        if Q.shape != (m, m) or not np.all(np.isfinite(Q)):
            raise ValueError(f"Q must be a finite ({m}, {m}) matrix (W W^T); got shape {Q.shape}.")
        if np.max(np.abs(Q - Q.T)) > 1e-10 or np.max(np.abs(np.diag(Q) - 1.0)) > 1e-10:
            raise ValueError(
                "Q must be symmetric with unit diagonal (the Gram matrix of unit vectors); "
                "symmetrise it and set its diagonal to 1."
            )
        if np.max(np.abs(Q)) > 1.0 + 1e-12:
            raise ValueError("Entries of Q are overlaps of unit vectors and must lie in [-1, 1].")

    def split(self, state: MultiIndexFiniteDimState):
        """Evolving part `(a, s, Q)` and constant `args` (none)."""
        return (state.a, state.s, state.Q), None

    def merge(self, y, args=None) -> MultiIndexFiniteDimState:
        """Inverse of `split`."""
        return MultiIndexFiniteDimState(*y)

    def __call__(self, t, y, args=None):
        """Time derivative of `(a, s, Q)`."""
        a, s, Q = y
        m = a.shape[0]
        da, off, Q_off, G, pull = neuron_interaction(self.problem, a, s, Q)
        ag = a[:, None] * self.problem.dV(s)  # (m, k)
        radial = jnp.sum(s * ag, axis=1)  # a_i (s_i . g_i)
        ds = ag - radial[:, None] * s - (a / m)[:, None] * (G @ s - pull[:, None] * s)
        M = (ag @ s.T - radial[:, None] * Q_off) - (a / m)[:, None] * (
            G @ Q - Q_off * pull[:, None]
        )
        dQ = (M + M.T) * off
        return da, ds, dQ

    def jacobian(self, t, y, args=None) -> DenseJacobian:
        """The dense Jacobian (every pair of neurons interacts through `Q`)."""
        return DenseJacobian.of(self, t, y, args)

    def moments(self, state: MultiIndexFiniteDimState) -> Float[Array, " N"]:
        """`mu_alpha = (1/m) sum_i a_i s_i^alpha` on the residual labels."""
        P = monomials(state.s.T, self.problem.labels)
        return P @ state.a / state.a.shape[0]

    def risk(self, state: MultiIndexFiniteDimState) -> Float[Array, ""]:
        """`R = |phi|^2/2 - (1/m) sum_i a_i V(s_i) + (1/2m^2) sum_ij a_i a_j U(Q_ij)` (+ noise)."""
        p = self.problem
        a, s, Q = state.a, state.s, state.Q
        m = a.shape[0]
        eye = jnp.eye(m)
        U = p.U(Q * (1 - eye)) * (1 - eye) + p.U(1.0) * eye
        return p.baseline_risk - jnp.sum(a * p.V(s)) / m + 0.5 * (a @ U @ a) / m**2
