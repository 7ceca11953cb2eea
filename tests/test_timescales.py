"""Learning times, phases and exponent fits against synthetic curves with known answers."""

import numpy as np
import pytest

import sst
from sst.timescales import (
    HEURISTIC_EXPONENTS,
    detect_phases,
    fit_exponent,
    fit_scalings,
    learning_times,
    local_exponents,
)

TS = np.concatenate([[0.0], np.geomspace(1e-9, 1e3, 3000)])


def _sigmoid_r2(ts, r0, t_k, p=3.0):
    # r_k^2(t) = r0^2 / (1 + (t/t_k)^p): half learned at t_k exactly, 90% learned at t_k 9^(1/p).
    return r0**2 / (1.0 + (ts / t_k) ** p)


def test_learning_times_of_known_sigmoids():
    t_known = np.array([1e-6, 3e-3, 0.2])
    r0 = np.array([0.7, 1.0, 2.0])
    r = np.sqrt(np.stack([_sigmoid_r2(TS, r0[k], t_known[k]) for k in range(3)], axis=1))
    r = np.concatenate([r, np.zeros((TS.size, 1))], axis=1)  # degree 3 absent from the target
    half = learning_times(TS, r, 0.5)
    ninety = learning_times(TS, r, 0.9)
    np.testing.assert_allclose(half[:3], t_known, rtol=1e-4)
    np.testing.assert_allclose(ninety[:3], t_known * 9 ** (1 / 3), rtol=1e-4)
    assert np.isnan(half[3]) and np.isnan(ninety[3])


def test_learning_time_nan_when_not_learned_or_only_rounding():
    r = np.stack(
        [
            np.sqrt(_sigmoid_r2(TS, 1.0, 1e5)),  # learned after the last save time
            np.full(TS.size, 1e-17),  # zero up to rounding: not carried by the target
            np.sqrt(_sigmoid_r2(TS, 1.0, 1e-2)),
        ],
        axis=1,
    )
    half = learning_times(TS, r, 0.5)
    assert np.isnan(half[0]) and np.isnan(half[1])
    np.testing.assert_allclose(half[2], 1e-2, rtol=1e-4)
    with pytest.raises(ValueError, match="fraction"):
        learning_times(TS, r, 1.0)


def _staircase(ts, drops, times, p=4.0):
    return 0.05 + sum(d / (1.0 + (ts / t) ** p) for d, t in zip(drops, times, strict=True))


def test_detect_phases_finds_the_staircase():
    times = [1e-6, 1e-3, 1e-1]
    drops = [0.1, 0.5, 0.5]
    risk = _staircase(TS, drops, times)
    phases = detect_phases(TS, risk)
    assert [p.kind for p in phases] == ["plateau", "drop"] * 3 + ["plateau"]
    found = [p for p in phases if p.kind == "drop"]
    assert len(found) == 3
    for p, t, d in zip(found, times, drops, strict=True):
        assert p.t_start < t < p.t_end
        # Each drop lasts a few decades at most and carries most of its component's decrease.
        assert np.log10(p.t_end / p.t_start) < 3
        assert 0.8 * d < p.risk_start - p.risk_end <= d
    # The phases tile the curve in time order.
    assert phases[0].t_start == TS[1] and phases[-1].t_end == TS[-1]
    for before, after in zip(phases[:-1], phases[1:], strict=True):
        assert before.t_end == after.t_start and before.kind != after.kind


def test_detect_phases_merges_close_drops_and_flat_curve():
    risk = _staircase(TS, [0.5, 0.5], [1e-3, 1.5e-3])
    assert [p.kind for p in detect_phases(TS, risk)] == ["plateau", "drop", "plateau"]
    flat = detect_phases(TS, np.ones_like(TS))
    assert [p.kind for p in flat] == ["plateau"]
    with pytest.raises(ValueError, match="same length"):
        detect_phases(TS, np.ones(3))


def test_fit_exponent_recovers_exact_power_laws():
    eps = np.logspace(-2, -10, 9)
    fit = fit_exponent(eps, 3.0 * eps**0.37)
    assert fit.exponent == pytest.approx(0.37, abs=1e-12)
    assert fit.prefactor == pytest.approx(3.0, rel=1e-10)
    assert fit.stderr < 1e-12
    logged = fit_exponent(eps, 2.0 * eps**0.5 * np.log(1 / eps), log_factor=True)
    assert logged.exponent == pytest.approx(0.5, abs=1e-12)
    np.testing.assert_allclose(logged.predict(eps), 2.0 * eps**0.5 * np.log(1 / eps), rtol=1e-10)
    # Without accounting for the log factor the apparent exponent is smaller than 1/2.
    assert fit_exponent(eps, 2.0 * eps**0.5 * np.log(1 / eps)).exponent < 0.45


def test_fit_exponent_stderr_matches_the_scatter_of_slopes():
    # Log-normal noise of known size: the reported standard error must match the spread of the
    # fitted slopes over independent replicates, and both the OLS formula sigma / sqrt(Sxx).
    rng = np.random.default_rng(0)
    eps = np.logspace(-2, -8, 7)
    sigma = 0.1
    x = np.log(eps)
    expected = sigma / np.sqrt(np.sum((x - x.mean()) ** 2))
    fits = [
        fit_exponent(eps, eps**0.25 * np.exp(sigma * rng.standard_normal(eps.size)))
        for _ in range(2000)
    ]
    slopes = np.array([f.exponent for f in fits])
    stderrs = np.array([f.stderr for f in fits])
    assert abs(slopes.mean() - 0.25) < 4 * expected / np.sqrt(len(fits))
    assert slopes.std() == pytest.approx(expected, rel=0.05)
    assert np.sqrt(np.mean(stderrs**2)) == pytest.approx(expected, rel=0.05)


def test_fit_exponent_rejects_bad_input():
    with pytest.raises(ValueError, match="two or more"):
        fit_exponent([1e-2, 1e-3], [0.1, np.nan])
    with pytest.raises(ValueError, match="positive"):
        fit_exponent([-1e-2, 1e-3], [0.1, 0.2])
    with pytest.raises(ValueError, match="below 1"):
        fit_exponent([2.0, 1e-3], [0.1, 0.2], log_factor=True)
    assert np.isnan(fit_exponent([1e-2, 1e-3], [0.1, 0.02]).stderr)


def test_fit_scalings_attaches_heuristics_and_log_factor():
    eps = np.logspace(-2, -6, 5)
    times = np.stack(
        [0.3 * eps, eps**0.5 * np.log(1 / eps), 2 * eps**0.25, np.full(eps.size, np.nan)], axis=1
    )
    fits = fit_scalings(eps, times)
    assert sorted(fits) == [0, 1, 2]
    for k in range(3):
        assert fits[k].exponent == pytest.approx(HEURISTIC_EXPONENTS[k], abs=1e-12)
        assert fits[k].heuristic == HEURISTIC_EXPONENTS[k]
        assert fits[k].log_factor == (k == 1)


def test_residuals_are_hermite_projections_for_relu():
    # For a closed-form activation the residuals must still be the Hermite projections of
    # phi - f on h_k(<u*, x>): check against 2-d Gauss-Hermite quadrature of the network.
    problem = sst.Problem(sst.Hermite([0.2, 1.0, 0.5, 0.3]), sst.relu(), eps=1e-2)
    state = sst.MeanFieldState(
        np.array([0.7, -1.2, 0.4]), np.array([0.3, -0.6, 0.9]), np.array([0.5, 0.3, 0.2])
    )
    x, w = np.polynomial.hermite_e.hermegauss(120)
    w = w / w.sum()
    z, v = np.meshgrid(x, x, indexing="ij")  # z = <u*, x>, v = the orthogonal direction
    ww = np.outer(w, w)
    a, s, p = (np.asarray(t) for t in (state.a, state.s, state.weights))
    f = sum(p[i] * a[i] * np.maximum(s[i] * z + np.sqrt(1 - s[i] ** 2) * v, 0) for i in range(3))
    basis = np.asarray(sst.hermite_basis(z, 3))
    projection = np.einsum("ij,ij,ijk->k", ww, f, basis)
    expected = np.asarray(problem.target.coeffs) - projection
    residuals = sst.MeanFieldODE(problem).residuals(state)
    np.testing.assert_allclose(residuals, expected, atol=1e-4)  # quadrature error ~3e-5


def test_local_exponents_follow_a_correction_to_scaling():
    # t = eps^(1/2) (1 + eps^(1/4)): the local slope between eps_a and eps_b is the exact
    # secant of log t, and it tends to 1/2 as eps -> 0.
    eps = np.logspace(-2, -10, 9)
    times = eps**0.5 * (1 + eps**0.25)
    slopes = local_exponents(eps[::-1], times[::-1])  # order of the input does not matter
    x = np.log(eps)
    expected = np.diff(0.5 * x + np.log1p(np.exp(0.25 * x))) / np.diff(x)
    np.testing.assert_allclose(slopes, expected, rtol=1e-12)
    assert np.all(np.diff(slopes) < 0) and abs(slopes[-1] - 0.5) < 0.01
    logged = local_exponents(eps, eps**0.5 * np.log(1 / eps), log_factor=True)
    np.testing.assert_allclose(logged, 0.5, rtol=1e-12)
