"""The SGD noise matrix and the noisy finite-dimensional ODE (docs: sgd_noise.md).

Independent truths: a tensor Gauss-Hermite rule over all `k + m` Gaussian coordinates after a
Cholesky factor (exact for polynomials), Monte Carlo, Gauss-Hermite quadrature of the erf
integrals, online SGD itself, and a tight explicit solve of the noisy ODE.
"""

import math

import diffrax
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import geometry
from scipy.integrate import quad
from scipy.special import erf
from scipy.stats import norm

import sst
from sst._noise import _orthant_moment, _orthant_probability, erf_i4, noise_matrix

ACTIVATION = sst.Hermite([0.5, 1.0, 0.7, 0.4])
TARGETS = {
    1: sst.Hermite([0.2, 1.0, 0.5, 0.3]),
    3: sst.Target.from_monomials({(1, 0, 0): 1.0, (1, 1, 0): 1.0, (0, 1, 1): 0.5, (0, 0, 2): 0.3}),
}
WIDTHS = {1: 3, 3: 2}


def _gauss_hermite(dim, nodes):
    x, w = np.polynomial.hermite_e.hermegauss(nodes)
    w = w / w.sum()
    grid = np.stack(np.meshgrid(*([x] * dim), indexing="ij"), axis=-1).reshape(-1, dim)
    weight = np.prod(np.stack(np.meshgrid(*([w] * dim), indexing="ij")), axis=0).reshape(-1)
    return grid, weight


def _per_sample(problem, a, zs, z):
    """`a_i a_j (e^2 + noise^2) sigma'(z_i) sigma'(z_j)` per sample (numpy), `e = phi - f`."""
    m = a.shape[0]
    phi = np.asarray(problem.phi(jnp.asarray(zs)))
    f = np.asarray(problem.activation(jnp.asarray(z))) @ a / m
    ds = np.asarray(problem.activation.derivative(jnp.asarray(z))) * a
    return (
        ((phi - f) ** 2 + float(problem.noise) ** 2)[:, None, None]
        * ds[:, :, None]
        * ds[:, None, :]
    )


def _tensor_rule(problem, a, W, U, nodes):
    """`N` by a tensor Gauss-Hermite rule in the `k + m` coordinates of `(z*, z)`."""
    k = U.shape[1]
    V = np.concatenate([U.T, W])
    L = np.linalg.cholesky(V @ V.T)
    xi, weight = _gauss_hermite(V.shape[0], nodes)
    Z = xi @ L.T
    return np.einsum("N,Nij->ij", weight, _per_sample(problem, a, Z[:, :k], Z[:, k:]))


def _N(problem, a, W, U):
    S, Q = (jnp.asarray(v) for v in (W @ U, W @ W.T))
    return np.asarray(noise_matrix(problem, jnp.asarray(a), S, Q))


@pytest.mark.slow
@pytest.mark.parametrize("k", [1, 3])
def test_polynomial_noise_matrix_matches_a_tensor_gauss_hermite_rule(k):
    problem = sst.Problem(TARGETS[k], ACTIVATION, 0.1, noise=0.3)
    a, W, U = geometry(k, WIDTHS[k])
    # Degree of (phi - f)^2 sigma' sigma' is at most 2 * 3 + 2 * 2 = 10: 6 nodes are exact.
    reference = _tensor_rule(problem, a, W, U, nodes=6)
    N = _N(problem, a, W, U)
    assert np.max(np.abs(N - reference)) < 1e-12 * np.max(np.abs(reference))
    assert np.max(np.abs(N - N.T)) < 1e-12 * np.max(np.abs(N))


@pytest.mark.slow
@pytest.mark.parametrize("k", [1, 3, "erf", "erf-k3", "relu"])
def test_noise_matrix_within_five_standard_errors_of_monte_carlo(k):
    if k in ("erf", "relu"):
        g = sst.erf() if k == "erf" else sst.relu()
        problem, k = sst.Problem(g, g, 0.1, noise=0.2), 1
    elif k == "erf-k3":
        problem, k = sst.Problem(TARGETS[3], sst.erf(), 0.1, noise=0.3), 3
    else:
        problem = sst.Problem(TARGETS[k], ACTIVATION, 0.1, noise=0.3)
    a, W, U = geometry(k, 3, seed=1)
    x = np.random.default_rng(2).normal(size=(200_000, W.shape[1]))
    samples = _per_sample(problem, a, x @ U, x @ W.T)
    mean, se = samples.mean(0), samples.std(0, ddof=1) / math.sqrt(samples.shape[0])
    z = np.abs(_N(problem, a, W, U) - mean) / se
    assert z.max() < 5.0, z.max()


@pytest.mark.slow
def test_erf_four_point_function_matches_quadrature_to_1e_10():
    rng = np.random.default_rng(3)
    xi, weight = _gauss_hermite(4, 40)
    for _ in range(3):
        V = rng.normal(size=(4, 6))
        V /= np.linalg.norm(V, axis=1, keepdims=True)
        C = V @ V.T
        Z = xi @ np.linalg.cholesky(C).T
        dg = math.sqrt(2 / math.pi) * np.exp(-(Z[:, :2] ** 2) / 2)
        g = erf(Z[:, 2:] / math.sqrt(2))
        reference = np.sum(weight * dg[:, 0] * dg[:, 1] * g[:, 0] * g[:, 1])
        assert abs(float(erf_i4(jnp.asarray(C))) - reference) < 1e-10


@pytest.mark.slow
@pytest.mark.parametrize("target", [sst.erf(), TARGETS[1]], ids=["erf", "polynomial"])
def test_erf_noise_matrix_matches_quadrature_to_1e_10(target):
    # The polynomial target goes through the quadrature over z* with the tilt in closed form; the
    # reference integrates all k + m coordinates on a tensor rule.
    problem = sst.Problem(target, sst.erf(), 0.1, noise=0.2)
    a, W, U = geometry(1, 2, seed=4)
    reference = _tensor_rule(problem, a, W, U, nodes=60)
    assert np.max(np.abs(_N(problem, a, W, U) - reference)) < 1e-10


def _relu_kernel(q):
    """`E[relu(X) relu(Y)]` for unit variances and correlation `q` (Cho and Saul's arc-cosine
    kernel)."""
    return (np.sqrt(1 - q**2) + (np.pi - np.arccos(q)) * q) / (2 * np.pi)


def _random_correlation(rng, p):
    V = rng.normal(size=(p, p + 2))
    V /= np.linalg.norm(V, axis=1, keepdims=True)
    return V @ V.T


def test_relu_orthant_terms_against_closed_forms_and_coincident_limits():
    # P(X > 0) is 1/(p + 1) for equal correlations 1/2, a product for independent blocks, and
    # the closed form of p = 3 where two arguments coincide.
    half = np.full((4, 4), 0.5) + 0.5 * np.eye(4)
    assert abs(float(_orthant_probability(jnp.asarray(half))) - 0.2) < 1e-13
    rng = np.random.default_rng(6)
    blocks = np.eye(4)
    blocks[[0, 1], [1, 0]], blocks[[2, 3], [3, 2]] = 0.3, -0.8
    pairs = [0.25 + np.arcsin(r) / (2 * np.pi) for r in (0.3, -0.8)]
    assert abs(float(_orthant_probability(jnp.asarray(blocks))) - pairs[0] * pairs[1]) < 1e-13
    R = _random_correlation(rng, 4)
    R[1], R[:, 1] = R[0], R[:, 0]  # argument 1 is argument 0
    three = 1 / 8 + sum(np.arcsin(R[a, b]) for a, b in [(0, 2), (0, 3), (2, 3)]) / (4 * np.pi)
    assert abs(float(_orthant_probability(jnp.asarray(R))) - three) < 3e-9
    # The moments there are those of the three distinct arguments: E[X_0 X_1 ...] is
    # E[X_0^2 ...], and E[X_0 X_2 ...] is taken with the arguments ordered (0, 2, 1, 3).
    reduced = jnp.asarray(R[np.ix_([0, 2, 3], [0, 2, 3])])
    swap = [0, 2, 1, 3]
    for C, w, w3 in ((R, 0, 0), (R, 1, 0), (R[np.ix_(swap, swap)], 1, 1)):
        moment = float(_orthant_moment(jnp.asarray(C), w))
        assert abs(moment - float(_orthant_moment(reduced, w3))) < 3e-9
    # p = 2: the arc-cosine kernel and its diagonal form.
    q = 0.37
    C2 = jnp.asarray([[1.0, q], [q, 1.0]])
    assert abs(float(_orthant_moment(C2, 1)) - _relu_kernel(q)) < 1e-15
    second = 0.25 + (np.arcsin(q) + q * np.sqrt(1 - q**2)) / (2 * np.pi)
    assert abs(float(_orthant_moment(C2, 0)) - second) < 1e-15


def _one_factor(loads, moment):
    """`P(X > 0)` (`moment=None`) or `E[X_0 X_w 1{X > 0}]` (`moment=w`) for `X_k = l_k Z +
    sqrt(1 - l_k^2) e_k`, `Z`, `e_k` independent standard normals: given `Z` the `X_k` are
    independent, with closed-form truncated moments; then adaptive quadrature over `Z`, with
    breakpoints where a nearly coincident `X_k` makes the integrand change over a short range."""

    def truncated(mean, sd):  # E[1{Y > 0}], E[Y 1{Y > 0}], E[Y^2 1{Y > 0}], Y ~ N(mean, sd^2)
        h = mean / sd
        cdf, pdf = norm.cdf(h), norm.pdf(h)
        return cdf, mean * cdf + sd * pdf, (mean**2 + sd**2) * cdf + mean * sd * pdf

    def integrand(z):
        t = [truncated(l * z, math.sqrt(1 - l * l)) for l in loads]
        if moment is None:
            value = np.prod([x[0] for x in t])
        elif moment == 0:
            value = t[0][2] * np.prod([x[0] for x in t[1:]])
        else:
            value = t[0][1] * t[1][1] * np.prod([x[0] for x in t[2:]])
        return norm.pdf(z) * value

    width = min(math.sqrt(1 - l * l) for l in loads)
    edges = sorted({-40.0, 0.0, 40.0} | {s * width * 10**e for s in (-1, 1) for e in range(8)})
    edges = [e for e in edges if abs(e) <= 40.0]
    return sum(
        quad(integrand, lo, hi, epsabs=1e-15, epsrel=1e-13, limit=200)[0]
        for lo, hi in zip(edges[:-1], edges[1:], strict=True)
    )


@pytest.mark.parametrize(
    "loads",
    [(0.9, 0.5, -0.3, 0.7), (0.2, -0.8, 0.6), (math.sqrt(1 - 1e-10),) * 3 + (0.6,)],
    ids=["p4", "p3", "three-nearly-equal"],
)
def test_relu_orthant_terms_match_a_one_factor_model(loads):
    # Correlations l_a l_b: an independent formula by conditioning on the common factor.
    C = np.outer(loads, loads)
    np.fill_diagonal(C, 1.0)
    C = jnp.asarray(C)
    assert abs(float(_orthant_probability(C)) - _one_factor(loads, None)) < 1e-12
    for w in (0, 1):
        assert abs(float(_orthant_moment(C, w)) - _one_factor(loads, w)) < 1e-11


@pytest.mark.slow
def test_relu_noise_matrix_of_equal_and_aligned_neurons():
    # Where w_0 = w_1 the indicators are equal, so N_01 / (a_0 a_1) = N_00 / a_0^2 = N_11 / a_1^2.
    problem = sst.Problem(sst.relu(), sst.relu(), 0.1, noise=0.2)
    a, W, U = geometry(1, 3, seed=2)
    W[1] = W[0]
    N = _N(problem, a, W, U) / np.outer(a, a)
    assert np.all(np.isfinite(N))
    assert abs(N[0, 1] - N[0, 0]) < 1e-8 and abs(N[1, 1] - N[0, 0]) < 1e-8
    # The overlaps as a single-index state stores them, (m,), give the same matrix.
    vector = noise_matrix(problem, jnp.asarray(a), jnp.asarray(W @ U[:, 0]), jnp.asarray(W @ W.T))
    assert np.array_equal(np.asarray(vector) / np.outer(a, a), N)
    # Every neuron within 1e-5 of the target (1 - s about 1e-10), as late in training: the
    # Jacobian a stiff solver takes is finite.
    W = U.T + 1e-5 * np.random.default_rng(3).normal(size=W.shape)
    W /= np.linalg.norm(W, axis=1, keepdims=True)
    args = (jnp.asarray(v) for v in (a, W @ U, W @ W.T))
    jacobian = jax.jacfwd(lambda *x: noise_matrix(problem, *x), argnums=(0, 1, 2))(*args)
    assert all(np.all(np.isfinite(np.asarray(leaf))) for leaf in jacobian)


def _state(problem, k):
    a, W, U = geometry(k, WIDTHS[k], seed=5)
    init = sst.RandomInit.from_weights(a, W, U if k > 1 else U[:, 0])
    return init.state, (a, W, U)


@pytest.mark.slow
@pytest.mark.parametrize("k", [1, 3])
def test_noise_terms_of_the_vector_field(k):
    problem = sst.Problem(TARGETS[k], ACTIVATION, 0.1, noise=0.3)
    state, (a, W, U) = _state(problem, k)
    flow = sst.FiniteDimODE(problem)
    tau = 0.7
    noisy = sst.FiniteDimODE(problem, tau=tau)
    base, rate = flow.rate(0.0, state), noisy.rate(0.0, state)
    N = _tensor_rule(problem, a, W, U, nodes=6)
    S, Q = W @ U, W @ W.T
    dS = np.asarray(rate.s - base.s).reshape(S.shape)
    np.testing.assert_allclose(dS, -0.5 * tau * np.diag(N)[:, None] * S, rtol=1e-10, atol=1e-13)
    dQ = np.asarray(rate.Q - base.Q)
    expected = tau * (N - 0.5 * (np.diag(N)[:, None] + np.diag(N)[None, :]) * Q)
    np.fill_diagonal(expected, 0.0)
    np.testing.assert_allclose(dQ, expected, rtol=1e-10, atol=1e-12)
    assert np.array_equal(np.asarray(rate.a), np.asarray(base.a))


@pytest.mark.slow
def test_tau_zero_is_exactly_the_flow_also_when_traced():
    problem = sst.Problem(TARGETS[1], ACTIVATION, 0.1)
    state, _ = _state(problem, 1)
    model = sst.FiniteDimODE(problem)
    assert model.parameters()["tau"] == 0.0
    y, args = model.split(state)
    flow = model(0.0, y, args)
    # Under vmap tau is traced: the noise terms are evaluated and multiplied by zero.
    traced = jax.vmap(lambda tau: model.with_parameters(tau=tau)(0.0, y, args))(jnp.zeros(2))
    for f, t in zip(flow, traced, strict=True):
        assert np.array_equal(np.asarray(f), np.asarray(t[0]))


def test_bad_tau_and_unsupported_functions_are_refused():
    problem = sst.Problem(TARGETS[1], ACTIVATION, 0.1)
    with pytest.raises(ValueError, match="tau .* must be finite and >= 0"):
        sst.FiniteDimODE(problem, tau=-1.0)
    with pytest.raises(ValueError, match="tau > 0 needs a polynomial activation"):
        sst.FiniteDimODE(sst.Problem(TARGETS[1], sst.relu(), 0.1), tau=0.5)
    with pytest.raises(ValueError, match="tau > 0 needs a polynomial activation"):
        sst.FiniteDimODE(sst.Problem(sst.relu(), sst.erf(), 0.1), tau=0.5)
    sst.FiniteDimODE(sst.Problem(sst.relu(), sst.relu(), 0.1), tau=0.5)
    sst.FiniteDimODE(sst.Problem(TARGETS[1], sst.relu(), 0.1))  # the flow needs no noise matrix


@pytest.mark.slow
def test_noisy_jacobian_is_the_flows_for_a_w_method_and_exact_otherwise():
    problem = sst.Problem(TARGETS[1], ACTIVATION, 0.1, noise=0.3)
    state, _ = _state(problem, 1)
    y, args = sst.FiniteDimODE(problem).split(state)
    flow = sst.FiniteDimODE(problem).jacobian(0.0, y, args)
    noisy = sst.FiniteDimODE(problem, tau=0.7).jacobian(0.0, y, args)
    assert isinstance(noisy, sst.StiffJacobian)
    assert np.array_equal(np.asarray(noisy.stiff.matrix), np.asarray(flow.matrix))
    full = jax.jacfwd(
        lambda x: jax.flatten_util.ravel_pytree(
            sst.FiniteDimODE(problem, tau=0.7)(0.0, jax.flatten_util.ravel_pytree(y)[1](x), args)
        )[0]
    )(jax.flatten_util.ravel_pytree(y)[0])
    np.testing.assert_allclose(noisy.exact().matrix, full, rtol=1e-12, atol=1e-12)
    assert np.max(np.abs(full - flow.matrix)) > 1e-3  # the noise terms do change it


NOISY_TS = np.linspace(0.0, 4.0, 5)


@pytest.fixture(scope="module")
def noisy_reference():
    """A noisy problem of 3 neurons at eps = 1e-2 and its solve by Dopri8 at rtol 1e-12."""
    problem = sst.Problem(TARGETS[1], ACTIVATION, 1e-2, noise=0.3)
    state, _ = _state(problem, 1)
    model = sst.FiniteDimODE(problem, tau=0.7)
    ref = sst.solve(model, state, NOISY_TS, solver=diffrax.Dopri8(), rtol=1e-12, atol=1e-14)
    return model, state, ref


@pytest.mark.slow
def test_w_method_with_the_flows_jacobian_solves_the_noisy_ode(noisy_reference):
    model, state, ref = noisy_reference
    for solver in (sst.Ros34PW2(), sst.Rodas4()):
        traj = sst.solve(model, state, NOISY_TS, solver=solver, rtol=1e-8, atol=1e-10)
        for x, r in zip(jax.tree.leaves(traj.ys), jax.tree.leaves(ref.ys), strict=True):
            np.testing.assert_allclose(x, r, rtol=0, atol=1e-6)


@pytest.mark.slow
def test_gradient_of_a_noisy_solve_in_tau_and_eps_matches_finite_differences(noisy_reference):
    model, state, _ = noisy_reference
    ts = NOISY_TS[:3]

    def final_risk(tau, eps):
        noisy = model.with_parameters(tau=tau, eps=eps)
        traj = sst.solve(
            noisy,
            state,
            ts,
            solver=sst.Ros34PW2(),
            rtol=1e-10,
            atol=1e-12,
            adjoint=sst.grad_adjoint(),
        )
        return traj.risk[-1]

    grads = jax.jit(jax.grad(final_risk, argnums=(0, 1)))(0.7, 1e-2)
    # One compilation for the four solves of the central differences.
    risk = jax.jit(jax.vmap(final_risk))
    taus, epss = (
        jnp.array([0.7 + 1e-4, 0.7 - 1e-4, 0.7, 0.7]),
        jnp.array([1e-2, 1e-2, 1e-2 + 1e-6, 1e-2 - 1e-6]),
    )
    r = risk(taus, epss)
    fd_tau, fd_eps = (r[0] - r[1]) / 2e-4, (r[2] - r[3]) / 2e-6
    np.testing.assert_allclose(grads, (fd_tau, fd_eps), rtol=1e-4)


@pytest.mark.slow
def test_online_sgd_follows_the_noisy_ode_not_the_flow():
    # tau = eta d / B = 1 at d = 300: the renormalisation shrinks S at the rate (tau/2) N_ii and
    # the shared component of the steps grows q_ij = Q_ij - S_i . S_j at the rate tau N_ij.
    d, batch, tau, seeds = 300, 1, 1.0, 24
    problem = sst.Problem(sst.Hermite([0.0, 1.0, 0.5]), sst.Hermite([0.0, 1.0, 0.5]), 1.0)
    rng = np.random.default_rng(0)
    u = np.eye(d)[0]
    s0 = np.array([0.5, 0.3, -0.4])
    perp = rng.normal(size=(3, d))
    perp[:, 0] = 0.0
    perp /= np.linalg.norm(perp, axis=1, keepdims=True)
    W = s0[:, None] * u + np.sqrt(1 - s0[:, None] ** 2) * perp
    init = sst.RandomInit.from_weights(np.array([1.5, -1.0, 1.0]), W, u)
    ts = np.array([0.0, 0.3])
    runs = [
        sst.train(
            problem,
            init,
            ts,
            eta=tau * batch / d,
            estimator=sst.OnlineSGD(batch),
            key=jax.random.key(seed),
            progress=False,
        ).state(-1)
        for seed in range(seeds)
    ]

    def observables(state):
        s, Q = np.asarray(state.s), np.asarray(state.Q)
        q = Q - s[:, None] * s[None, :]
        return np.concatenate([s, q[np.triu_indices(3, 1)]])

    sgd = np.array([observables(r) for r in runs])
    mean, se = sgd.mean(0), sgd.std(0, ddof=1) / math.sqrt(seeds)
    ode = {t: sst.solve(sst.FiniteDimODE(problem, tau=t), init.state, ts) for t in (0.0, tau)}
    z = {t: (mean - observables(traj.state(-1))) / se for t, traj in ode.items()}
    assert np.max(np.abs(z[tau])) < 4.0, z[tau]
    assert np.max(np.abs(z[0.0])) > 10.0, z[0.0]
