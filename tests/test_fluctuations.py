"""sst.fluctuations: one sample's step against `sst.train`'s in weight space, its mean against
the noisy ODE, its covariance against weight-space Monte Carlo, the mean step's `1/d` term
against `sst.train`'s exact steps, the sparse rule against closed forms, and the covariance's
and the shift's growth against their short-time closed forms."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import geometry
from jax.flatten_util import ravel_pytree

import sst
from sst._fluctuations import (
    distinct_coordinates,
    drift_correction,
    half_curvature,
    increments,
    sparse_gauss_hermite,
    step_moments,
)
from sst._noise import _gauss_hermite_rule
from sst._train import _retract, batch_directions

ACTIVATION = sst.Hermite([0.0, 1.0, 0.5, 0.5])
TARGETS = {
    1: sst.Hermite([0.0, 1.0, 1.0, 1.0]),
    2: sst.Target.from_monomials([((1, 0), 1.0), ((1, 1), 1.0)]),
}
M_NEURONS = 3


def _order_parameters(problem, a, W, U):
    Q = W @ W.T
    return jnp.concatenate([a, (W @ U).ravel(), (Q * (1 - np.eye(W.shape[0]))).ravel()])


def _weight_space_steps(problem, a, W, U, x, y, eta=None):
    """Each sample's step of `sst.train` (one sample per step: `a += (eta/eps) da`, `W`
    retracted) in `(a, S, Q)` per unit time, from its descent directions in weight space: the
    first-order part, and the second-order part over `d` (`e^2` times the inner products of
    the projected directions `P_i dw_i`, over `d`); with `eta`, the exact step over `eta`."""
    n, d = W.shape
    off = 1.0 - jnp.eye(n)

    def one(xb, yb):
        da, dW = batch_directions(problem, a, W, xb[None], yb[None])
        if eta is not None:
            new = _order_parameters(problem, a + eta / problem.eps * da, _retract(W, dW, eta), U)
            return (new - _order_parameters(problem, a, W, U)) / eta
        P = dW - jnp.sum(dW * W, axis=1, keepdims=True) * W
        dQ = P @ W.T
        first = jnp.concatenate([da / problem.eps, (P @ U).ravel(), ((dQ + dQ.T) * off).ravel()])
        G = P @ P.T / d
        norms = jnp.diag(G)
        second = jnp.concatenate(
            [
                jnp.zeros(n),
                (-0.5 * norms[:, None] * (W @ U)).ravel(),
                ((G - 0.5 * (norms[:, None] + norms[None, :]) * (W @ W.T)) * off).ravel(),
            ]
        )
        return jnp.stack([first, second])

    out = np.asarray(jax.lax.map(lambda v: one(*v), (jnp.asarray(x), jnp.asarray(y))))
    return out if eta is not None else (out[:, 0], out[:, 1])


def _flat(parts, n):
    return np.concatenate([np.asarray(v).reshape(n, -1) for v in parts], axis=1)


@pytest.mark.parametrize("k", [1, 2])
def test_a_samples_step_matches_sst_train_in_weight_space(k):
    d, n, tau = 4000, 4, 0.5
    problem = sst.Problem(TARGETS[k], ACTIVATION, 0.1)
    # Correlated rows (Q_ij about 1/2): the terms of g proportional to Q are then not small.
    a, W, U = geometry(k, M_NEURONS, d, common=1.0)
    x = np.random.default_rng(1).normal(size=(n, d))
    y = np.asarray(problem.phi(jnp.asarray(x @ U)))
    e, h, g = increments(problem, a, W @ U, W @ W.T, x @ U, x @ W.T)
    e = np.asarray(e)[:, None]
    first, second = _weight_space_steps(problem, a, W, U, x, y)
    np.testing.assert_allclose(_flat(h, n) * e, first, rtol=0, atol=1e-12)
    # The expansion against the exact retraction at eta = tau / d: the third order is smaller by
    # eta tau e^2 u_i^2, below 1e-2 for these samples.
    exact = _weight_space_steps(problem, a, W, U, x, y, tau / d)
    np.testing.assert_allclose(first + tau * second, exact, rtol=0, atol=1e-2 * np.max(exact))
    # |P_i x|^2 and <P_i x, P_j x> are d (1 + O(d^-1/2)): within 10% of each block's largest.
    expected = _flat(g, n) * e**2
    for block in np.split(np.arange(expected.shape[1]), [M_NEURONS, M_NEURONS * (1 + k)])[1:]:
        scale = np.max(np.abs(expected[:, block]))
        assert np.max(np.abs(second[:, block] - expected[:, block])) < 0.1 * scale


@pytest.mark.slow
@pytest.mark.parametrize("k", [1, 2])
def test_step_mean_is_the_noisy_odes_vector_field(k):
    # The flow's terms from the closed forms of V and U, the noise terms from sst.noise_matrix's
    # diagrams: both against the exact rule's mean of e h + tau e^2 g, with label noise.
    problem = sst.Problem(TARGETS[k], ACTIVATION, 0.1, noise=0.3)
    a, W, U = geometry(k, M_NEURONS, 16)
    model = sst.FiniteDimODE(problem, tau=0.7)
    state = sst.RandomInit.from_weights(a, W, U if k > 1 else U[:, 0]).state
    y, _ = model.split(state)
    # The mean has degree at most 10: a rule exact for degree 11 suffices.
    mean, _ = step_moments(problem, model.tau, y, *sparse_gauss_hermite(k + M_NEURONS, 5))
    field = ravel_pytree(model(0.0, y))[0]
    # step_moments shifts the Gram matrix by 2e-9 (k + m) I, which moves these expectations by
    # about 1e-8 of their size.
    np.testing.assert_allclose(mean, field, rtol=0, atol=1e-7 * float(jnp.max(jnp.abs(field))))


@pytest.mark.slow
@pytest.mark.parametrize(("k", "m"), [(1, 3), (2, 2)])
def test_step_covariance_matches_a_tensor_rule_over_inputs_and_label_noise(k, m):
    # The steps e h + tau e^2 g with the label noise drawn as one more Gaussian coordinate,
    # their covariance by a tensor Gauss-Hermite rule exact for degree 21 in the k + m + 1
    # coordinates: against the sparse rule with the noise's moments in closed form.
    tau, noise = 0.7, 0.3
    problem = sst.Problem(TARGETS[k], ACTIVATION, 0.1, noise=noise)
    a, W, U = geometry(k, m, 16)
    s, Q = W @ U, W @ W.T
    grid, weight = _gauss_hermite_rule([11] * (k + m + 1))
    V = np.concatenate([U.T, W])
    Z = grid[:, :-1] @ np.linalg.cholesky(V @ V.T).T
    e, h, g = increments(problem, a, s, Q, Z[:, :k], Z[:, k:])
    e = np.asarray(e) + noise * grid[:, -1]
    n = grid.shape[0]
    steps = _flat(h, n) * e[:, None] + tau * _flat(g, n) * e[:, None] ** 2
    mean = weight @ steps
    expected = (steps - mean).T @ ((steps - mean) * weight[:, None])
    y = (jnp.asarray(a), sst._problem.state_overlaps(problem, jnp.asarray(s)), jnp.asarray(Q))
    _, got = step_moments(problem, jnp.asarray(tau), y, *sparse_gauss_hermite(k + m, 10))
    # step_moments shifts the Gram matrix by 2e-9 (k + m) I (a Cholesky factor that exists for
    # every valid state), which moves these degree-20 expectations by about 1e-7 of their size.
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6 * np.max(np.abs(expected)))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("k", "m", "batch", "noise"), [(1, 2, 1, 0.3), (2, 2, 2, 0.0), (1, 3, 3, 0.3)]
)
def test_drift_correction_is_the_eta_squared_term_of_sst_trains_mean_step(k, m, batch, noise):
    # sst.train's exact step (batch_directions, _retract) in a space of k + m + B dimensions:
    # the span of (U*, W), with U* and W the rows of the Gram matrix's Cholesky factor so that
    # an input's part there is the rule's node itself, and one axis per sample carrying the
    # rest of the input, of squared norm d - k - m with d = tau B / eta (its fluctuation and
    # the samples' cross products there enter the mean at eta^3 only). Over every batch drawn
    # from a pool of inputs and a Gauss-Hermite rule in the label noise, the mean step's eta^2
    # coefficient (extrapolated from three small eta) against drift_correction / (tau B) with
    # the pool as its rule: the same empirical measure, so no quadrature error enters.
    tau, pool_size = 0.7, {1: 32, 2: 12, 3: 6}[batch]
    problem = sst.Problem(TARGETS[k], ACTIVATION, 0.1, noise=noise)
    a, W, U = geometry(k, m, k + m, common=1.0)
    chol = np.linalg.cholesky(np.concatenate([U.T, W]) @ np.concatenate([U.T, W]).T)
    U, W = chol[:k].T, chol[k:]
    U, W = np.vstack([U, np.zeros((batch, k))]), np.hstack([W, np.zeros((m, batch))])
    pool = np.random.default_rng(3).normal(size=(pool_size, k + m))
    zeta, zeta_weight = _gauss_hermite_rule([3])  # exact for the label noise's degree 4
    inputs = np.array(list(itertools.product(range(pool_size), repeat=batch)))
    labels = np.array(list(itertools.product(range(3), repeat=batch)))
    xs = np.repeat(pool[inputs], len(labels), axis=0)  # (P, B, k + m)
    zs = np.tile(zeta[labels, 0], (len(inputs), 1))  # (P, B)
    weight = np.tile(np.prod(zeta_weight[labels], axis=1), len(inputs)) / len(inputs)
    before = _order_parameters(problem, a, W, U)

    def mean_step(eta):
        def one(x, zeta):
            rest = jnp.sqrt(tau * batch / eta - (k + m)) * jnp.eye(batch)
            x = jnp.concatenate([x, rest], axis=1)
            y = problem.phi(x @ U) + noise * zeta
            da, dW = batch_directions(problem, a, W, x, y)
            new = (a + eta / problem.eps * da, _retract(W, dW, eta))
            return _order_parameters(problem, *new, U) - before

        steps = jax.lax.map(lambda v: one(*v), (jnp.asarray(xs), jnp.asarray(zs)), batch_size=2048)
        return weight @ np.asarray(steps) / eta

    etas = np.array([1e-6, 5e-7, 2.5e-7])
    fit = np.linalg.solve(
        np.vander(etas, 3, increasing=True), np.stack([mean_step(e) for e in etas])
    )
    s = W @ U if k > 1 else (W @ U)[:, 0]
    y = (jnp.asarray(a), jnp.asarray(s), jnp.asarray(W @ W.T))
    got = drift_correction(problem, tau, batch, y, pool, np.full(pool_size, 1.0 / pool_size))
    expected = fit[1]
    np.testing.assert_allclose(
        got / (tau * batch), expected, rtol=0, atol=1e-5 * np.max(np.abs(expected))
    )


@pytest.mark.slow
@pytest.mark.parametrize("k", [1, 2])
def test_half_curvature_is_half_the_hessian_contracted_with_the_covariance(k):
    # A covariance of the flattened (a, s, Q) with both copies of each overlap equal (so from
    # the distinct coordinates' covariance), against the whole Hessian of the noisy field.
    problem = sst.Problem(TARGETS[k], ACTIVATION, 0.1, noise=0.3)
    a, W, U = geometry(k, M_NEURONS, 16, common=1.0)
    model = sst.FiniteDimODE(problem, tau=0.7)
    y, _ = model.split(sst.RandomInit.from_weights(a, W, U if k > 1 else U[:, 0]).state)
    x, unravel = ravel_pytree(y)

    def field(x):
        return ravel_pytree(model(0.0, unravel(x)))[0]

    distinct, index = distinct_coordinates(problem, M_NEURONS)
    B = np.random.default_rng(2).normal(size=(distinct.size, distinct.size))
    copies = np.where(index >= 0, 1.0, 0.0)[:, None] * np.eye(distinct.size)[np.maximum(index, 0)]
    C = copies @ (B @ B.T) @ copies.T  # (n, n), zero on Q's diagonal
    expected = 0.5 * np.einsum("ab,iab->i", C, np.asarray(jax.jit(jax.hessian(field))(x)))
    got = jax.jit(lambda x, C: half_curvature(problem, M_NEURONS, field, x, C))(x, jnp.asarray(C))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-10 * np.max(np.abs(expected)))


@pytest.mark.slow
@pytest.mark.parametrize(("dim", "level"), [(5, 6), (10, 6)])
def test_sparse_rule_integrates_polynomials_of_degree_2_level_plus_1_exactly(dim, level):
    nodes, weights = sparse_gauss_hermite(dim, level)
    rng = np.random.default_rng(0)
    for _ in range(40):
        alpha = np.zeros(dim, int)
        for axis in rng.integers(dim, size=rng.integers(0, 2 * level + 2)):
            alpha[axis] += 1
        # E z^alpha = prod (alpha_j - 1)!! for even alpha, 0 otherwise.
        even = np.all(alpha % 2 == 0)
        exact = np.prod([np.prod(np.arange(n - 1, 0, -2)) for n in alpha]) if even else 0.0
        got = np.sum(weights * np.prod(nodes**alpha, axis=1))
        assert abs(got - exact) <= 1e-10 * max(1.0, exact), (alpha, got, exact)
    assert nodes.shape[0] < (level + 1) ** dim  # sparse: fewer nodes than the tensor rule


@pytest.mark.slow
def test_covariance_and_shift_grow_as_their_short_time_closed_forms():
    # C(t) = tau Sigma t + O(t^2) and mu(t) = (F_1 - (tau B / 2) J F) t + O(t^2) (the curvature
    # term starts at t^2, with C): at t = 1e-5 the relative gaps are of order t |J| ~ 1e-4. J F
    # by central differences of the vector field along F.
    problem = sst.Problem(TARGETS[1], ACTIVATION, 0.1)
    a, W, U = geometry(1, M_NEURONS, 16)
    model = sst.FiniteDimODE(problem, tau=0.5)
    state = sst.RandomInit.from_weights(a, W, U[:, 0]).state
    t, batch = 1e-5, 3
    out = sst.fluctuations(model, state, np.array([0.0, t]), batch=batch)
    y, _ = model.split(state)
    rule = sparse_gauss_hermite(1 + M_NEURONS, 10)
    _, sigma = step_moments(problem, model.tau, y, *rule)
    expected = float(model.tau) * np.asarray(sigma) * t
    np.testing.assert_allclose(out.covariance[-1], expected, atol=1e-3 * np.max(expected))
    x, unravel = ravel_pytree(y)

    def field(x):
        return np.asarray(ravel_pytree(model(0.0, unravel(x)))[0])

    F, h = field(x), 1e-6
    JF = (field(x + h * F) - field(x - h * F)) / (2 * h)
    drift = np.asarray(drift_correction(problem, model.tau, batch, y, *rule))
    expected = (drift - 0.5 * float(model.tau) * batch * JF) * t
    np.testing.assert_allclose(out.shift[-1], expected, atol=1e-3 * np.max(np.abs(expected)))


def test_bad_inputs_are_refused():
    problem = sst.Problem(TARGETS[2], ACTIVATION, 0.1)
    a, W, U = geometry(2, 8, 16)
    state = sst.RandomInit.from_weights(a, W, U).state
    model = sst.FiniteDimODE(problem, tau=0.5)
    ts = np.array([0.0, 1.0])
    with pytest.raises(ValueError, match="sparse grid of .* nodes .*pass monte_carlo"):
        sst.fluctuations(model, state, ts, batch=1)
    with pytest.raises(ValueError, match="monte_carlo needs a key"):
        sst.fluctuations(model, state, ts, batch=1, monte_carlo=16)
    with pytest.raises(ValueError, match="key is for the Monte Carlo"):
        sst.fluctuations(model, state, ts, batch=1, key=jax.random.key(0))
    mc = dict(monte_carlo=16, key=jax.random.key(0))
    with pytest.raises(ValueError, match="rtol and atol must be finite"):
        sst.fluctuations(model, state, ts, batch=1, rtol=-1.0, **mc)
    with pytest.raises(ValueError, match=r"batch \(samples per step\) must be an integer >= 1"):
        sst.fluctuations(model, state, ts, batch=0, **mc)
    with pytest.raises(ValueError, match="ts must be strictly increasing"):
        sst.fluctuations(model, state, [1.0, 0.0], batch=1, **mc)
    with pytest.raises(ValueError, match="model must be an sst.FiniteDimODE"):
        sst.fluctuations(sst.MeanFieldODE(problem), state, np.array([0.0, 1.0]), batch=1)
    erf = sst.FiniteDimODE(sst.Problem(sst.erf(), sst.erf(), 0.1), tau=0.5)
    with pytest.raises(ValueError, match="model needs a polynomial activation and target"):
        sst.fluctuations(erf, sst.RandomInit.from_weights(a, W, U[:, 0]).state, [0.0, 1.0], batch=1)
