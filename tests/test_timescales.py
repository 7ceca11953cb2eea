"""Learning times, phases and exponent fits against synthetic curves with known answers."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
from helpers import (
    CUBIC_ACTIVATION,
    CUBIC_TARGET,
    Point,
    Relaxation,
    log_grid,
    synthetic_trajectory,
)

import sst
from sst import (
    detect_phases,
    fit_exponent,
    fit_scalings,
    heuristic_exponent,
    label_name,
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
    traj = synthetic_trajectory(TS, r)
    half = learning_times(traj, 0.5)
    ninety = learning_times(traj, 0.9)
    assert isinstance(half, np.ndarray) and half.shape == (4,)
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
    traj = synthetic_trajectory(TS, r)
    # Only the residual that is carried but not learned warns; the absent one is nan silently.
    with pytest.warns(UserWarning, match=r"0 not 50% learned by the last valid save t = 1e\+03"):
        half = learning_times(traj, 0.5)
    assert np.isnan(half[0]) and np.isnan(half[1])
    np.testing.assert_allclose(half[2], 1e-2, rtol=1e-4)
    with pytest.raises(ValueError, match="fraction must lie strictly between 0 and 1"):
        learning_times(traj, 1.0)


def test_learning_times_read_only_valid_saves():
    # After a failure the rows are NaN and masked: a component learned only in the masked part
    # is not learned.
    r = np.sqrt(np.stack([_sigmoid_r2(TS, 1.0, 1e-6), _sigmoid_r2(TS, 1.0, 1.0)], axis=1))
    valid = TS < 1e-2
    r[~valid] = np.nan
    traj = synthetic_trajectory(TS, r, valid=valid, result=sst.RESULTS.max_steps_reached)
    with pytest.warns(UserWarning, match="1 not 50% learned by the last valid save t = 0.00996"):
        half = learning_times(traj, 0.5)
    np.testing.assert_allclose(half[0], 1e-6, rtol=1e-4)
    assert np.isnan(half[1])
    none = synthetic_trajectory(TS, r, valid=np.zeros(TS.size, bool))
    assert np.all(np.isnan(learning_times(none, 0.5)))


# Relaxation: residual j is r_j(t) = c_j exp(-d_j t) in closed form (eps = 1); the third starts
# at its target (nothing to learn).
DECAY = np.array([1.0, 20.0, 5.0])
R0 = np.array([1.0, 0.3, 0.0])
RELAXATION_TS = log_grid(1e-3, 6.0, 10)  # 1.6 saves per decade


def _closed_form_risk(t):
    return 0.5 * np.sum(R0**2 * np.exp(-2 * DECAY * t))


def _closed_form_rate(t):
    # -dR / d log10(t), exactly.
    return t * np.log(10.0) * np.sum(DECAY * R0**2 * np.exp(-2 * DECAY * t))


@pytest.fixture(scope="module")
def relaxation():
    model = Relaxation(DECAY, R0, 1.0)
    return sst.solve(model, Point(jnp.zeros(3)), RELAXATION_TS, dense=True)


@pytest.mark.slow
def test_learning_times_on_the_dense_output_match_the_closed_form(relaxation):
    # r_j^2 halves at t = ln 2 / (2 d_j), far from any of the few saves.
    exact = np.log(2.0) / (2 * DECAY[:2])
    dense = learning_times(relaxation)
    np.testing.assert_allclose(dense[:2], exact, rtol=1e-6)
    assert np.isnan(dense[2])
    # Between saves the same crossings are off by far more than the solver's tolerance.
    grid = learning_times(dataclasses.replace(relaxation, dense=None))
    assert np.all(np.abs(grid[:2] / exact - 1) > 1e-3)


def test_detect_phases_boundaries_on_the_dense_output_match_the_closed_form(relaxation):
    # The drop of the risk's two exponentials is where the closed-form rate exceeds 2% of the
    # total decrease per decade; then the risk keeps falling by orders of magnitude: a descent.
    ts = RELAXATION_TS[1:]
    risk = np.array([_closed_form_risk(t) for t in ts])
    total = risk[0] - risk.min()
    excess = lambda t: _closed_form_rate(t) / total - 0.02  # noqa: E731
    start = scipy.optimize.brentq(excess, 1e-4, 1e-2, xtol=1e-15, rtol=1e-14)
    end = scipy.optimize.brentq(excess, 1.0, 6.0, xtol=1e-15, rtol=1e-14)
    phases = detect_phases(relaxation)
    assert [p.kind for p in phases] == ["plateau", "drop", "descent"]
    drop, descent = phases[1], phases[2]
    np.testing.assert_allclose([drop.t_start, drop.t_end], [start, end], rtol=1e-6)
    np.testing.assert_allclose(
        [drop.risk_start, drop.risk_end],
        [_closed_form_risk(start), _closed_form_risk(end)],
        rtol=1e-6,
    )
    assert descent.t_start == drop.t_end and descent.t_end == ts[-1]
    # Without the dense output the boundaries are save times (on this coarse grid the finite
    # differences put the drop's end at the last save).
    grid = detect_phases(dataclasses.replace(relaxation, dense=None))
    assert all(p.t_start in ts and p.t_end in ts for p in grid)
    assert abs(grid[1].t_start / start - 1) > 1e-3


@pytest.mark.slow
def test_detect_phases_calls_the_final_convergence_a_descent():
    # The first solve of the README: after the last drop the risk falls from about 5e-3 to
    # 2e-10 over two and a half decades of time, too slowly for a drop (relative to the total
    # decrease of 1.6) and far too fast for a plateau.
    problem = sst.Problem(sst.Hermite(CUBIC_TARGET), sst.Hermite(CUBIC_ACTIVATION), eps=1e-3)
    y0 = sst.quadrature_particles(32, law="normal")
    traj = sst.solve(sst.MeanFieldODE(problem), y0, log_grid(1e-6, 100.0, 100))
    phases = detect_phases(traj)
    assert [p.kind for p in phases] == ["plateau", "drop", "plateau", "drop", "descent"]
    last = phases[-1]
    assert 0.2 < last.t_start < 0.4 and last.t_end == 100.0
    assert 3e-3 < last.risk_start < 7e-3 and last.risk_end < 1e-9
    # The plateaus are flat on log time: they lose less than a tenth of their risk.
    for p in phases:
        if p.kind == "plateau":
            assert p.risk_end > 0.9 * p.risk_start


def test_analysis_needs_one_trajectory():
    traj = synthetic_trajectory(TS, np.ones((TS.size, 2)))
    batch = jax.tree_util.tree_map(lambda x: jnp.stack([x, x]), traj)
    for fn in (learning_times, detect_phases):
        with pytest.raises(ValueError, match="needs a single trajectory, got a batch of 2"):
            fn(batch)
        with pytest.raises(ValueError, match="needs an sst.Trajectory"):
            fn(np.ones(3))


def _staircase(ts, drops, times, p=4.0):
    return 0.05 + sum(d / (1.0 + (ts / t) ** p) for d, t in zip(drops, times, strict=True))


def test_detect_phases_finds_the_staircase():
    times = [1e-6, 1e-3, 1e-1]
    drops = [0.1, 0.5, 0.5]
    risk = _staircase(TS, drops, times)
    phases = detect_phases(synthetic_trajectory(TS, np.ones((TS.size, 1)), risk))
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


def _curve(risk, ts=TS, **kwargs):
    return synthetic_trajectory(ts, np.ones((ts.size, 1)), risk, **kwargs)


def test_detect_phases_merges_close_drops_and_flat_curve():
    risk = _staircase(TS, [0.5, 0.5], [1e-3, 1.5e-3])
    assert [p.kind for p in detect_phases(_curve(risk))] == ["plateau", "drop", "plateau"]
    flat = detect_phases(_curve(np.ones_like(TS)))
    assert [p.kind for p in flat] == ["plateau"]
    assert detect_phases(_curve(np.ones(3), ts=np.array([0.0, 1.0, 2.0]))) == []
    # Only the valid part of a failed run counts: the staircase cut after its first drop.
    valid = TS < 1e-2
    cut = detect_phases(_curve(np.where(valid, risk, np.nan), valid=valid))
    assert [p.kind for p in cut] == ["plateau", "drop", "plateau"]
    assert cut[-1].t_end == TS[valid][-1]


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
        assert fits[k].exponent == pytest.approx(heuristic_exponent(k), abs=1e-12)
        assert fits[k].heuristic == heuristic_exponent(k)
        assert fits[k].log_factor == (k == 1)


def test_fit_scalings_of_multi_indices_states_no_heuristic():
    # Labels of two directions: the degree-1 heuristic (log factor, 1/(2l)) is stated for a
    # single direction only; a degree (l,) of a target of one direction keeps it.
    eps = np.logspace(-2, -6, 5)
    times = np.stack([eps**0.5, eps**0.5 * np.log(1 / eps), 2 * eps**0.25], axis=1)
    fits = fit_scalings(eps, times, [(1, 0), (1,), (1, 1)])
    assert fits[0].exponent == pytest.approx(0.5, abs=1e-12) and not fits[0].log_factor
    assert np.isnan(fits[0].heuristic) and np.isnan(fits[2].heuristic)
    assert fits[1].log_factor and fits[1].exponent == pytest.approx(0.5, abs=1e-12)
    assert fits[1].heuristic == 0.5
    assert fits[2].exponent == pytest.approx(0.25, abs=1e-12)
    with pytest.raises(ValueError, match="labels must name each of the 3 columns of times"):
        fit_scalings(eps, times, [(1, 0)])


def test_label_names():
    assert [label_name((j,)) for j in range(3)] == ["degree 0", "degree 1", "degree 2"]
    assert [label_name(a) for a in ((0, 0), (1, 0), (1, 1))] == ["1", "z1", "z1 z2"]
    assert label_name((2, 0, 1)) == "h2(z1) z3"


def test_heuristic_exponents():
    assert [heuristic_exponent(k) for k in range(5)] == [1.0, 0.5, 0.25, 1 / 6, 0.125]


def test_fit_scalings_needs_three_learned_points():
    # Two points give a slope without a standard error: such a degree is left out.
    eps = np.logspace(-2, -6, 5)
    times = np.stack([0.3 * eps, 2 * eps**0.25], axis=1)
    times[2:, 1] = np.nan
    assert sorted(fit_scalings(eps, times)) == [0]
    with pytest.raises(ValueError, match=r"times must have shape \(len\(eps\), R\)"):
        fit_scalings(eps, times[:3])


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
