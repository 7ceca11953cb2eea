import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sst

TS = jnp.concatenate([jnp.zeros(1), jnp.logspace(-4, 1, 60)])


def test_linear_relaxation_matches_closed_form():
    # Degree 0 only: s never moves and m_0 relaxes as r_0(t) = r_0(0) exp(-sigma_0^2 t / eps).
    eps, sigma0 = 1e-2, 1.3
    problem = sst.Problem(sst.Hermite([0.7]), sst.Hermite([sigma0]), eps=eps)
    y0 = sst.quadrature_particles(6, "uniform")
    traj = sst.solve(sst.MeanFieldODE(problem), y0, TS)
    expected = 0.7 * np.exp(-(sigma0**2) * np.asarray(TS) / eps)
    np.testing.assert_allclose(traj.residuals[:, 0], expected, atol=1e-8)
    assert float(jnp.max(jnp.abs(traj.s))) == 0.0


def test_trajectory_fields_and_shapes(cubic_problem):
    y0 = sst.quadrature_particles(8)
    traj = sst.solve(sst.MeanFieldODE(cubic_problem), y0, TS)
    assert traj.a.shape == traj.s.shape == (TS.shape[0], 8)
    assert traj.Q is None and traj.residuals.shape == (TS.shape[0], 4)
    assert bool(traj.success) and bool(jnp.all(traj.valid))
    np.testing.assert_allclose(traj.risk, 0.5 * jnp.sum(traj.residuals**2, axis=1), rtol=1e-10)
    assert float(traj.risk[-1]) < 1e-3 * float(traj.risk[0])
    state = traj.state(-1)
    np.testing.assert_allclose(
        sst.MeanFieldODE(cubic_problem).risk(state), traj.risk[-1], rtol=1e-12
    )


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    target=st.lists(st.floats(-1.5, 1.5), min_size=4, max_size=4),
    activation=st.lists(st.floats(0.2, 1.5), min_size=4, max_size=4),
    log_eps=st.floats(-3.0, 0.0),
    scale=st.floats(0.1, 2.0),
)
def test_risk_never_increases_mean_field(target, activation, log_eps, scale):
    problem = sst.Problem(sst.Hermite(target), sst.Hermite(activation), eps=10.0**log_eps)
    y0 = sst.quadrature_particles(8, "normal", scale=scale)
    y0 = sst.MeanFieldState(y0.a, jnp.linspace(-0.1, 0.2, 8), y0.weights)
    traj = sst.solve(sst.MeanFieldODE(problem), y0, TS)
    increase = float(jnp.max(jnp.diff(traj.risk)))
    assert increase <= 1e-9 * max(1.0, float(traj.risk[0])), increase


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(log_eps=st.floats(-2.0, 0.0), seed=st.integers(0, 2**16))
def test_risk_never_increases_finite_dim(log_eps, seed):
    import jax

    problem = sst.Problem(sst.Hermite([0.3, 1.0, 0.6]), sst.erf(), eps=10.0**log_eps)
    init = sst.random_init(jax.random.PRNGKey(seed), m=4, d=10)
    traj = sst.solve(sst.FiniteDimODE(problem), init.state, TS)
    assert float(jnp.max(jnp.diff(traj.risk))) <= 1e-9


def test_step_budget_exhaustion_raises_with_advice(cubic_problem):
    with pytest.raises(RuntimeError, match="max_steps=5"):
        sst.solve(sst.MeanFieldODE(cubic_problem), sst.quadrature_particles(8), TS, max_steps=5)


def test_failure_without_throw_is_flagged_and_masked(cubic_problem):
    traj = sst.solve(
        sst.MeanFieldODE(cubic_problem), sst.quadrature_particles(8), TS, max_steps=5, throw=False
    )
    assert not bool(traj.success)
    valid = np.asarray(traj.valid)
    assert valid[0] and not valid[-1]
    assert np.all(np.isnan(np.asarray(traj.risk)[~valid]))
    assert np.all(np.isfinite(np.asarray(traj.risk)[valid]))


def _mf_state(**overrides):
    base = dict(a=[0.1, -0.2, 0.3], s=[0.0, 0.1, -0.1], weights=[0.2, 0.3, 0.5])
    base.update(overrides)
    return sst.MeanFieldState(**base)


@pytest.mark.parametrize(
    "state",
    [
        _mf_state(a=[0.1, 0.2]),
        _mf_state(weights=[0.5, 0.7, -0.2]),
        _mf_state(weights=[0.2, 0.3, 0.4]),
        _mf_state(s=[0.0, 1.2, 0.0]),
        _mf_state(a=[0.1, float("nan"), 0.3]),
        _mf_state(s=[0.0, float("inf"), 0.0]),
    ],
    ids=["shape", "negative-weight", "weights-sum", "overlap>1", "nan-a", "inf-s"],
)
def test_bad_mean_field_state_raises(cubic_problem, state):
    with pytest.raises(ValueError):
        sst.solve(sst.MeanFieldODE(cubic_problem), state, TS)


@pytest.mark.parametrize(
    "Q",
    [
        [[1.0, 0.2], [0.3, 1.0]],
        [[1.0, 0.2], [0.2, 0.9]],
        [[1.0, float("nan")], [float("nan"), 1.0]],
        [[1.0, 0.2, 0.0], [0.2, 1.0, 0.0], [0.0, 0.0, 1.0]],
    ],
    ids=["asymmetric", "diagonal", "nan", "shape"],
)
def test_bad_finite_dim_state_raises(cubic_problem, Q):
    with pytest.raises(ValueError):
        sst.solve(
            sst.FiniteDimODE(cubic_problem), sst.FiniteDimState([0.1, 0.2], [0.0, 0.1], Q), TS
        )


@pytest.mark.parametrize(
    "ts",
    [[0.0, 1.0, 0.5], [0.0, 0.0, 1.0], [0.0, float("nan")], [1.0]],
    ids=["decreasing", "repeated", "nan", "single"],
)
def test_bad_times_raise(cubic_problem, ts):
    with pytest.raises(ValueError):
        sst.solve(sst.MeanFieldODE(cubic_problem), sst.quadrature_particles(4), ts)


@pytest.mark.parametrize("eps", [0.0, -1e-3, float("nan"), float("inf")])
def test_bad_eps_raises(eps):
    with pytest.raises(ValueError, match="eps"):
        sst.Problem(sst.Hermite([1.0]), sst.Hermite([1.0]), eps=eps)


def test_bad_noise_and_model_raise():
    with pytest.raises(ValueError, match="noise"):
        sst.Problem(sst.Hermite([1.0]), sst.Hermite([1.0]), eps=1.0, noise=-1.0)
    with pytest.raises(ValueError, match="polynomial activation"):
        sst.MeanFieldODE(
            sst.Problem(sst.Hermite([1.0]), sst.relu(), eps=1.0), interaction="moments"
        )


def test_label_noise_shifts_risk_only(cubic_problem):
    noisy = sst.Problem(
        cubic_problem.target, cubic_problem.activation, eps=cubic_problem.eps, noise=0.3
    )
    y0 = sst.quadrature_particles(8)
    clean = sst.solve(sst.MeanFieldODE(cubic_problem), y0, TS)
    shifted = sst.solve(sst.MeanFieldODE(noisy), y0, TS)
    np.testing.assert_allclose(shifted.risk - clean.risk, 0.5 * 0.3**2, rtol=1e-9)
    np.testing.assert_allclose(shifted.a, clean.a, rtol=1e-12)


STIFF_PROBLEM_COEFFS = ([0.5, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0])


def _stiff_problem(eps):
    return sst.Problem(*(sst.Hermite(c) for c in STIFF_PROBLEM_COEFFS), eps=eps)


@pytest.mark.parametrize("eps", [1e-2, 1e-6, 1e-10, 1e-12])
def test_default_solver_matches_a_tight_reference_across_eps(eps):
    # Reference: 1000x tighter tolerances and dense LU instead of the Woodbury solves.
    ts = jnp.concatenate([jnp.zeros(1), jnp.logspace(-14, 0, 57)])
    model = sst.MeanFieldODE(_stiff_problem(eps))
    y0 = sst.quadrature_particles(8)
    traj = sst.solve(model, y0, ts)
    ref = sst.solve(model, y0, ts, solver=sst.Rodas4("dense"), rtol=1e-11, atol=1e-13)
    assert float(jnp.max(jnp.abs(traj.risk - ref.risk))) < 1e-6
    assert float(jnp.max(jnp.abs(traj.s - ref.s))) < 1e-6
    assert float(jnp.max(jnp.abs(traj.a - ref.a)) / jnp.max(jnp.abs(ref.a))) < 1e-6
    assert float(jnp.max(jnp.diff(traj.risk))) <= 1e-12 * float(traj.risk[0])


@pytest.mark.parametrize("eps", [1e-1, 1e-4, 1e-8, 1e-12])
def test_default_solver_integrates_to_t100_with_monotone_risk(eps):
    ts = jnp.concatenate([jnp.zeros(1), jnp.logspace(-14, 2, 81)])
    traj = sst.solve(sst.MeanFieldODE(_stiff_problem(eps)), sst.quadrature_particles(16), ts)
    assert bool(traj.success)
    assert float(jnp.max(jnp.diff(traj.risk))) <= 1e-12 * float(traj.risk[0])
    assert float(traj.risk[-1]) < 1e-6 * float(traj.risk[0])


def test_default_solver_matches_kvaerno5_in_overlap_coordinates():
    # A second formulation: the dense O(m^2) vector field in (a, s) itself, diffrax's ESDIRK.
    import diffrax as dfx

    ts = jnp.concatenate([jnp.zeros(1), jnp.logspace(-4, 1, 41)])
    problem = _stiff_problem(1e-2)
    y0 = sst.quadrature_particles(8)
    dense = sst.MeanFieldODE(problem, interaction="dense")

    def field(t, y, args):
        rate = dense(t, sst.MeanFieldState(y[0], y[1], y0.weights))
        return rate.a, rate.s

    sol = dfx.diffeqsolve(
        dfx.ODETerm(field),
        dfx.Kvaerno5(),
        ts[0],
        ts[-1],
        None,
        (y0.a, y0.s),
        saveat=dfx.SaveAt(ts=ts),
        stepsize_controller=dfx.ClipStepSizeController(
            dfx.PIDController(rtol=1e-11, atol=1e-13), step_ts=ts
        ),
        max_steps=100_000,
    )
    traj = sst.solve(sst.MeanFieldODE(problem), y0, ts)
    np.testing.assert_allclose(traj.s, sol.ys[1], atol=1e-7)
    np.testing.assert_allclose(traj.a, sol.ys[0], rtol=1e-7, atol=1e-7)
