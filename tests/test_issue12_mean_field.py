"""MeanFieldODE's error measure and its solves at tiny eps (issue 12).

(To be merged into tests/test_mean_field.py.) The staircase problem is issue 12's reference
problem with 16 particles and 201 saves; tolerances are passed as arrays, so that every solve of
it shares one compilation.
"""

import hypothesis.strategies as st
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

import sst
from sst._control import scaled_rms_error

MAX_STEPS = 200_000


def _staircase(eps):
    """phi = h1 + h2 + h3 + h4, sigma = h0/2 + h1 + ... + h4, 16 Gauss-Legendre particles."""
    problem = sst.Problem(sst.Hermite([0, 1, 1, 1, 1]), sst.Hermite([0.5, 1, 1, 1, 1]), eps)
    ts = np.concatenate([[0.0], np.logspace(np.log10(eps / 100), 2, 201)])
    return sst.MeanFieldODE(problem), sst.quadrature_particles(16, law="uniform"), ts


def _solve(eps, rtol):
    model, y0, ts = _staircase(eps)
    rtol = jnp.asarray(rtol)
    return sst.solve(model, y0, ts, rtol=rtol, atol=rtol / 100, max_steps=MAX_STEPS)


def _risk_rise(risk):
    """`max_t [R(t) - min_{t' <= t} R(t')]`: how far the risk ever climbs back."""
    risk = np.asarray(risk)
    return float(np.max(risk - np.minimum.accumulate(risk)))


def test_error_norm_parts():
    model, state, _ = _staircase(1e-6)
    s = 0.3 * jnp.sin(jnp.arange(16.0))
    state = sst.MeanFieldState(state.a, s, state.weights)
    y, weights = model.split(state)
    rtol, atol = 1e-8, 1e-10
    sigma = np.array([0.5, 1, 1, 1, 1])
    # An error of one weight: residual part from dr_k = sigma_k p_j s_j^k da_j.
    err_a = jnp.zeros(16).at[3].set(1e-9)
    p, a_np, s_np = (np.asarray(x) for x in (weights, state.a, s))
    gross = np.array([np.sum(p * np.abs(a_np) * np.abs(s_np) ** k) for k in range(5)])
    tol_r = atol + rtol * 2.0 + 2**-53 * sigma * gross  # |phi| = 2
    dr = sigma * p[3] * s_np[3] ** np.arange(5.0) * 1e-9
    part_a = np.mean((err_a / (atol + rtol * np.abs(state.a))) ** 2)
    expected = np.sqrt((np.mean((dr / tol_r) ** 2) + part_a) / 3)
    got = model.error_norm(y, y, (err_a, jnp.zeros(16)), weights, rtol, atol)
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    # An error of a that leaves the moments unchanged counts only as a relative error of a.
    null = jnp.linalg.svd(jnp.stack([s**k for k in range(5)]) * weights)[2][-1]
    err_a = 1e-9 * null
    part_a = np.mean((err_a / (atol + rtol * np.abs(state.a))) ** 2)
    got = model.error_norm(y, y, (err_a, jnp.zeros(16)), weights, rtol, atol)
    np.testing.assert_allclose(got, np.sqrt(part_a / 3), rtol=1e-6)


def test_error_norm_of_the_dense_path_is_diffraxs():
    model = sst.MeanFieldODE(sst.Problem(sst.Hermite([0.0, 1.0]), sst.relu(6), 1e-3))
    y, weights = model.split(sst.quadrature_particles(4, law="uniform"))
    error = (1e-7 * jnp.arange(4.0), 1e-9 * jnp.ones(4))
    np.testing.assert_array_equal(
        model.error_norm(y, y, error, weights, 1e-6, 1e-9),
        scaled_rms_error(y, y, error, 1e-6, 1e-9),
    )


def test_an_error_at_the_rounding_floor_of_the_moments_passes():
    # Weights of 1e10: an error of u |a_i| in every weight (what rounding alone leaves) moves
    # the moments by 1e-6, 50 times the tolerance of 2e-8 but at their rounding floor.
    model, state, _ = _staircase(1e-20)
    a = 1e10 * jnp.sign(state.a)
    state = sst.MeanFieldState(a, jnp.full(16, 0.1), state.weights)
    y, weights = model.split(state)
    error = (1.1e-16 * jnp.abs(a), jnp.zeros(16))
    assert float(model.error_norm(y, y, error, weights, 1e-8, 1e-10)) < 1.0


def test_default_control_at_eps_1e_12_against_a_much_tighter_reference():
    default, reference = _solve(1e-12, 1e-8), _solve(1e-12, 1e-10)
    t, t_ref = sst.learning_times(default)[1:], sst.learning_times(reference)[1:]
    # Measured: learning times within 2e-9 relative, residuals within 1e-8 (rtol = 1e-8).
    np.testing.assert_allclose(t, t_ref, rtol=1e-7)
    np.testing.assert_allclose(default.residuals, reference.residuals, rtol=0, atol=1e-7)
    np.testing.assert_allclose(default.risk, reference.risk, rtol=0, atol=1e-7)
    assert _risk_rise(default.risk) < 1e-13


@pytest.mark.parametrize("eps", [1e-20, sst.EPS_MIN])
def test_learning_times_converge_with_the_tolerance_at_tiny_eps(eps):
    rtols = (1e-6, 1e-7, 1e-8)
    runs = [_solve(eps, rtol) for rtol in rtols]
    times = np.array([sst.learning_times(traj)[1:] for traj in runs])
    assert np.all(np.isfinite(times))
    coarse = np.abs(times[0] / times[1] - 1)
    fine = np.abs(times[1] / times[2] - 1)
    # Learning times are the crossing of a steep drop: a local error of rtol moves them by up
    # to ~400 rtol (measured: 4e-5 for t_3 at eps = 1e-21 between rtol 1e-6 and 1e-7).
    assert np.all(coarse < 1e3 * rtols[0]) and np.all(fine < 1e3 * rtols[1])
    assert np.all(fine < coarse / 3)  # and the differences shrink with the tolerance
    for traj in runs:
        assert _risk_rise(traj.risk) < 1e-13


coefficient = st.one_of(st.just(0.0), st.floats(-1.0, 1.0))


@settings(max_examples=10, deadline=None)
@given(
    target=st.lists(coefficient, min_size=7, max_size=7),
    activation=st.lists(coefficient, min_size=7, max_size=7),
    a0=st.lists(st.floats(-2.0, 2.0), min_size=8, max_size=8),
    log_eps=st.floats(np.log10(sst.EPS_MIN), -2.0),
)
def test_risk_never_rises_above_the_rounding_floor(target, activation, a0, log_eps):
    # Degree <= 6 polynomial target and activation (same shapes: one compilation), bounded
    # a(0), s(0) = 0, default settings.
    eps = 10.0**log_eps
    problem = sst.Problem(sst.Hermite(target), sst.Hermite(activation), eps)
    ts = np.concatenate([[0.0], np.logspace(log_eps - 2, 2, 201)])
    traj = sst.solve(sst.MeanFieldODE(problem), sst.MeanFieldState(a0, np.zeros(8)), ts)
    # The risk is |r|^2 / 2 with r = phi - sigma m rounded at u sum_i p_i |a_i s_i^k|: its
    # rounding floor is far below 1e-13 here (measured rises: 0 to 3e-16).
    assert _risk_rise(traj.risk) < 1e-13
