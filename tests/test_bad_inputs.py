"""Every bad input gets one clear error naming the argument and the fix, before any compilation
where the input is concrete; every failure says why; nothing is silently wrong.

The cases are the ones found by trying the API as a new user would, plus more of the same kind;
the fuzz at the end draws random states (Gram and not), tolerances and eps and asserts that the
outcome is either a clear error or a successful solve with a finite, non-negative, non-increasing
risk.
"""

import math
import warnings

import helpers
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

import sst

MODEL = sst.MeanFieldODE(helpers.cubic_problem())
Y0 = helpers.particles()
STAIRCASE = sst.Target.from_monomials({(1, 0, 0): 1.0, (1, 1, 0): 1.0, (1, 1, 1): 1.0})
MODEL_K3 = sst.MeanFieldODE(sst.Problem(STAIRCASE, sst.Hermite(helpers.CUBIC_ACTIVATION), 1e-2))
FD_MODEL = sst.FiniteDimODE(helpers.small_problem())


def finite_dim_state(s, Q) -> sst.FiniteDimState:
    s = np.asarray(s, dtype=float)
    return sst.FiniteDimState(np.ones_like(s), s, np.asarray(Q, dtype=float))


Q_NOT_PSD = np.full((3, 3), -0.99) + 1.99 * np.eye(3)


# (call, exception type, message pattern): each raises before any solve.
BAD_CALLS = {
    "Q not positive semi-definite": (
        lambda: sst.solve(FD_MODEL, finite_dim_state(np.zeros(3), Q_NOT_PSD), helpers.TS),
        ValueError,
        r"not the Gram matrix of unit vectors",
    ),
    "(s, Q) not a Gram matrix": (
        lambda: sst.solve(
            FD_MODEL, finite_dim_state([0.99, 0.99], [[1, -0.99], [-0.99, 1]]), helpers.TS
        ),
        ValueError,
        r"has a negative eigenvalue.*smallest eigenvalue is -",
    ),
    "Q not symmetric": (
        lambda: sst.solve(FD_MODEL, finite_dim_state([0, 0], [[1, 0.5], [0.4, 1]]), helpers.TS),
        ValueError,
        r"Q must be symmetric with unit diagonal",
    ),
    "negative rtol": (
        lambda: sst.solve(MODEL, Y0, helpers.TS, rtol=-1e-8),
        ValueError,
        r"rtol and atol must be finite and non-negative",
    ),
    "negative atol": (
        lambda: sst.solve(MODEL, Y0, helpers.TS, atol=-1.0),
        ValueError,
        r"rtol and atol must be finite and non-negative",
    ),
    "both tolerances zero": (
        lambda: sst.solve(MODEL, Y0, helpers.TS, rtol=0.0, atol=0.0),
        ValueError,
        r"not both zero",
    ),
    "NaN tolerance": (
        lambda: sst.solve(MODEL, Y0, helpers.TS, rtol=math.nan),
        ValueError,
        r"rtol and atol must be finite",
    ),
    "max_steps=0": (
        lambda: sst.solve(MODEL, Y0, helpers.TS, max_steps=0),
        ValueError,
        r"max_steps must be an integer >= 1, got 0",
    ),
    "fractional max_steps": (
        lambda: sst.solve(MODEL, Y0, helpers.TS, max_steps=1.5),
        ValueError,
        r"max_steps must be an integer >= 1, got 1.5",
    ),
    "solver given as a string": (
        lambda: sst.solve(MODEL, Y0, helpers.TS, solver="rodas4"),
        ValueError,
        r"solver must be a diffrax solver instance such as sst.Rodas4\(\)",
    ),
    "controller given as a string": (
        lambda: sst.solve(MODEL, Y0, helpers.TS, stepsize_controller="pid"),
        ValueError,
        r"stepsize_controller must be a diffrax step-size controller",
    ),
    "negative dt0": (
        lambda: sst.solve(MODEL, Y0, helpers.TS, dt0=-1e-3),
        ValueError,
        r"dt0 must be a finite positive initial step",
    ),
    "zero dt0": (
        lambda: sst.solve(MODEL, Y0, helpers.TS, dt0=0.0),
        ValueError,
        r"dt0 must be a finite positive initial step",
    ),
    "eps = 0": (
        lambda: sst.Problem(sst.Hermite([1.0]), sst.Hermite([1.0]), 0.0),
        ValueError,
        r"eps must be a finite positive scalar",
    ),
    "eps NaN": (
        lambda: sst.Problem(sst.Hermite([1.0]), sst.Hermite([1.0]), math.nan),
        ValueError,
        r"eps must be a finite positive scalar",
    ),
    "negative noise": (
        lambda: sst.Problem(sst.Hermite([1.0]), sst.Hermite([1.0]), 1e-2, noise=-1.0),
        ValueError,
        r"noise must be a finite non-negative",
    ),
    "target given as a string": (
        lambda: sst.Problem("relu", sst.relu(), 1e-2),
        ValueError,
        r"Problem needs `target` as an sst.Hermite \(one direction, e\.g\. .*\) or an sst\.Target",
    ),
    "key=0": (
        lambda: sst.random_init(0, 3, 10),
        ValueError,
        r"key must be a JAX PRNG key such as jax.random.key\(0\)",
    ),
    "relu(-1)": (lambda: sst.relu(-1), ValueError, r"degree must be an integer >= 0, got -1"),
    "erf(2.5)": (lambda: sst.erf(2.5), ValueError, r"degree must be an integer >= 0, got 2.5"),
    "non-vectorised function": (
        lambda: sst.Hermite.from_callable(math.tanh, 5),
        ValueError,
        r"pass a vectorised function, e\.g\. numpy\.tanh, or numpy\.vectorize\(fn\)",
    ),
    "negative degree": (
        lambda: sst.Hermite.from_callable(np.tanh, -1),
        ValueError,
        r"degree must be an integer >= 0",
    ),
    "empty coefficients": (
        lambda: sst.Hermite([]),
        ValueError,
        r"non-empty 1-d sequence",
    ),
    "NaN coefficient": (
        lambda: sst.Hermite([1.0, math.nan]),
        ValueError,
        r"contain NaN or inf",
    ),
    "zero particles": (
        lambda: sst.quadrature_particles(0),
        ValueError,
        r"m \(the number of particles\) must be an integer >= 1, got 0",
    ),
    "fractional particles": (
        lambda: sst.quadrature_particles(2.0),
        ValueError,
        r"must be an integer >= 1, got 2.0",
    ),
    "negative scale": (
        lambda: sst.quadrature_particles(4, scale=-1.0),
        ValueError,
        r"scale must be finite and positive",
    ),
    "unknown law": (
        lambda: sst.quadrature_particles(4, law="cauchy"),
        ValueError,
        r"law must be 'normal', 'uniform' or 'rademacher'",
    ),
    "odd rademacher": (
        lambda: sst.quadrature_particles(3, law="rademacher"),
        ValueError,
        r"even number of particles",
    ),
    "zero neurons": (
        lambda: sst.random_init(jax.random.key(0), 0, 10),
        ValueError,
        r"m \(the number of neurons\) must be an integer >= 1",
    ),
    "dimension 1": (
        lambda: sst.random_init(jax.random.key(0), 3, 1),
        ValueError,
        r"d \(the dimension\) must be an integer >= 2",
    ),
    "weights not normalised": (
        lambda: sst.solve(MODEL, sst.MeanFieldState(Y0.a, Y0.s, 2 * Y0.weights), helpers.TS),
        ValueError,
        r"weights / weights.sum\(\)",
    ),
    "overlap above 1": (
        lambda: sst.solve(MODEL, sst.MeanFieldState(Y0.a, 1.5 + 0 * Y0.s, Y0.weights), helpers.TS),
        ValueError,
        r"each s_i must have norm <= 1; got max \|s_i\| = 1\.5",
    ),
    "NaN in the state": (
        lambda: sst.solve(MODEL, sst.MeanFieldState(Y0.a * math.nan, Y0.s, Y0.weights), helpers.TS),
        ValueError,
        r"NaN or inf in a or s",
    ),
    "overlaps of one direction for a target of three": (
        lambda: sst.solve(MODEL_K3, Y0, helpers.TS),
        ValueError,
        r"MeanFieldState needs a of shape \(m,\) and s of shape \(m, k\) for this target \(k=3\)",
    ),
    "overlaps of three directions for a Hermite target": (
        lambda: sst.solve(MODEL, sst.quadrature_particles(4, k=3), helpers.TS),
        ValueError,
        r"s of shape \(m,\) for this target \(k=1\); got \(4,\) and \(4, 3\)",
    ),
    "overlap vector above 1": (
        lambda: sst.solve(
            MODEL_K3, sst.MeanFieldState(np.ones(2), np.full((2, 3), 0.6)), helpers.TS
        ),
        ValueError,
        r"each s_i must have norm <= 1",
    ),
    "dimension not above k": (
        lambda: sst.random_init(jax.random.key(0), 3, 3, k=3),
        ValueError,
        r"d must exceed the number of directions k=3; got d=3",
    ),
    "zero directions": (
        lambda: sst.quadrature_particles(4, k=0),
        ValueError,
        r"k \(the number of target directions\) must be an integer >= 1",
    ),
    "target with a repeated multi-index": (
        lambda: sst.Target([(1, 0), (1, 0)], [1.0, 2.0]),
        ValueError,
        r"A multi-index appears twice in the target",
    ),
    "target evaluated with the wrong k": (
        lambda: STAIRCASE(np.zeros((5, 2))),
        ValueError,
        r"phi\(z\) needs z with a last axis of length k=3",
    ),
    "state of the other model": (
        lambda: sst.solve(MODEL, helpers.random_network().state, helpers.TS),
        ValueError,
        r"MeanFieldODE needs a MeanFieldState, got FiniteDimState",
    ),
    "model not a model": (
        lambda: sst.solve(lambda t, y, args: y, Y0, helpers.TS),
        ValueError,
        r"model must be an sst.AbstractModel",
    ),
    "decreasing save times": (
        lambda: sst.solve(MODEL, Y0, helpers.TS[::-1]),
        ValueError,
        r"ts must be strictly increasing",
    ),
    "save times of the wrong shape": (
        lambda: sst.solve(MODEL, Y0, np.ones((2, 2))),
        ValueError,
        r"ts must be a 1-d array of at least two times",
    ),
    "NaN save time": (
        lambda: sst.solve(MODEL, Y0, np.array([0.0, math.nan])),
        ValueError,
        r"ts contains NaN or inf",
    ),
    "unknown interaction": (
        lambda: sst.MeanFieldODE(helpers.cubic_problem(), interaction="fast"),
        ValueError,
        r"interaction must be 'auto', 'moments' or 'dense'",
    ),
    "batch: unknown parameter": (
        lambda: sst.solve_batch(MODEL, Y0, helpers.TS, parameters={"foo": [1.0, 2.0]}),
        ValueError,
        r"MeanFieldODE has no parameter 'foo'",
    ),
    "batch: mismatched sizes": (
        lambda: sst.solve_batch(
            MODEL, Y0, helpers.TS, eps=[1e-2, 1e-3], parameters={"target": np.ones((3, 4))}
        ),
        ValueError,
        r"All batched inputs need the same batch size",
    ),
    "batch: throw passed": (
        lambda: sst.solve_batch(MODEL, Y0, helpers.TS, eps=[1e-2], throw=True),
        ValueError,
        r"do not pass throw",
    ),
    "batch: nothing batched": (
        lambda: sst.solve_batch(MODEL, Y0, helpers.TS),
        ValueError,
        r"Nothing is batched",
    ),
    "batch: eps twice": (
        lambda: sst.solve_batch(
            MODEL, Y0, helpers.TS, eps=[1e-2], parameters={"eps": np.array([1e-2])}
        ),
        ValueError,
        r"Pass eps either as eps= or in parameters=",
    ),
    "train: batch 0": (lambda: sst.OnlineSGD(0), ValueError, r"batch \(samples per step\)"),
    "train: n = 0": (lambda: sst.FixedSamples(0), ValueError, r"n \(training samples\)"),
    "train: negative eta": (
        lambda: sst.train(
            helpers.small_problem(), helpers.random_network(), helpers.TRAIN_TS, eta=-0.1
        ),
        ValueError,
        r"The step size eta must be a finite positive number",
    ),
    "train: no key for SGD": (
        lambda: sst.train(
            helpers.small_problem(),
            helpers.random_network(),
            helpers.TRAIN_TS,
            eta=1e-3,
            estimator=sst.OnlineSGD(4),
        ),
        ValueError,
        r"OnlineSGD draws samples: pass key=jax.random.key\(0\)",
    ),
    "train: record grid finer than eta": (
        lambda: sst.train(
            helpers.small_problem(), helpers.random_network(), helpers.TRAIN_TS, eta=0.5
        ),
        ValueError,
        r"The record grid is finer than the step",
    ),
    "train: not a RandomInit": (
        lambda: sst.train(helpers.small_problem(), Y0, helpers.TRAIN_TS, eta=1e-3),
        ValueError,
        r"init must be an sst.RandomInit",
    ),
    "train: estimator given as a string": (
        lambda: sst.train(
            helpers.small_problem(),
            helpers.random_network(),
            helpers.TRAIN_TS,
            eta=1e-3,
            estimator="sgd",
        ),
        ValueError,
        r"estimator must be an sst.AbstractEstimator",
    ),
    "save to a missing folder": (
        lambda: sst.save_trajectory(
            "/nonexistent/dir/x.npz", helpers.synthetic_trajectory([0, 1], [[1.0], [0.5]])
        ),
        ValueError,
        r"Cannot write /nonexistent/dir/x.npz: No such file or directory",
    ),
    "load a missing file": (
        lambda: sst.load_trajectory("/nonexistent.npz"),
        ValueError,
        r"Cannot read /nonexistent.npz as a trajectory file",
    ),
    "learning_times of a batch": (
        lambda: sst.learning_times(
            jax.tree_util.tree_map(
                lambda x: jnp.stack([x, x]), helpers.synthetic_trajectory([0, 1], [[1.0], [0.5]])
            )
        ),
        ValueError,
        r"learning_times needs a single trajectory, got a batch of 2; pass traj\[i\]",
    ),
    "learning_times fraction 1": (
        lambda: sst.learning_times(helpers.synthetic_trajectory([0, 1], [[1.0], [0.5]]), 1.0),
        ValueError,
        r"fraction must lie strictly between 0 and 1",
    ),
    "plot of a batch": (
        lambda: sst.plot_risk(
            jax.tree_util.tree_map(
                lambda x: jnp.stack([x, x]), helpers.synthetic_trajectory([0, 1], [[1.0], [0.5]])
            )
        ),
        ValueError,
        r"plot_risk needs a single trajectory, got a batch of 2",
    ),
    "plot of a curve with one point": (
        lambda: sst.plot_risk(helpers.synthetic_trajectory([0, 1], [[1.0], [0.5]])),
        ValueError,
        r"fewer than two valid saves at t > 0",
    ),
    "hitting_time of a batch": (
        lambda: sst.hitting_time(
            jax.tree_util.tree_map(
                lambda x: jnp.stack([x, x]), helpers.synthetic_trajectory([0, 1], [[1.0], [0.5]])
            ),
            0.1,
        ),
        ValueError,
        r"hitting_time needs a single trajectory",
    ),
    "fit from one point": (
        lambda: sst.fit_exponent([1e-2], [1.0]),
        ValueError,
        r"needs finite positive times at two or more distinct eps",
    ),
    "unknown adjoint mode": (
        lambda: sst.grad_adjoint("sideways"),
        ValueError,
        r"mode must be 'reverse' or 'forward'",
    ),
    "unknown objective": (
        lambda: sst.optimize_activation(helpers.cubic_problem(), Y0, helpers.TS, objective="speed"),
        ValueError,
        r"objective must be one of",
    ),
    "state(i) of a batch": (
        lambda: jax.tree_util.tree_map(
            lambda x: jnp.stack([x, x]), helpers.synthetic_trajectory([0, 1], [[1.0], [0.5]])
        ).state(0),
        ValueError,
        r"state\(index\) needs a single trajectory",
    ),
}


@pytest.mark.parametrize("name", sorted(BAD_CALLS))
def test_bad_input_is_one_clear_error(name):
    call, error, pattern = BAD_CALLS[name]
    with pytest.raises(error, match=pattern) as info:
        call()
    message = str(info.value)
    assert "\n" not in message.strip(), f"not one sentence: {message!r}"
    assert info.traceback[-1].path.name.startswith(("_", "helpers")) or "sst" in str(
        info.traceback[-1].path
    ), f"raised from {info.traceback[-1].path}, not from sst"


def test_numpy_integers_are_accepted_as_sizes():
    assert sst.quadrature_particles(np.int64(4)).a.shape == (4,)
    assert sst.random_init(jax.random.key(0), np.int64(3), np.int64(10)).W.shape == (3, 10)
    assert sst.OnlineSGD(np.int64(4)).batch == 4
    assert sst.relu(np.int64(5)).coeffs.shape == (6,)


@pytest.mark.slow
def test_non_finite_input_under_jit_says_why():
    def result(a):
        y0 = sst.MeanFieldState(a, Y0.s, Y0.weights)
        return sst.solve(MODEL, y0, helpers.TS, throw=False).result

    bad = jax.jit(result)(Y0.a.at[0].set(jnp.nan))
    assert bad == sst.RESULTS.nonfinite
    assert jax.jit(result)(Y0.a) == sst.RESULTS.successful
    # With throw=True the runtime error names the cause, not the step budget.
    with pytest.raises(Exception, match=r"NaN or inf: pass finite values"):
        jax.block_until_ready(
            jax.jit(
                lambda a: sst.solve(MODEL, sst.MeanFieldState(a, Y0.s, Y0.weights), helpers.TS).risk
            )(Y0.a.at[0].set(jnp.nan))
        )


@pytest.mark.slow
def test_step_budget_is_reported_as_such():
    traj = sst.solve(MODEL, Y0, helpers.TS, max_steps=5, throw=False)
    assert traj.result == sst.RESULTS.max_steps_reached
    assert not bool(traj.success)
    assert not bool(np.all(np.asarray(traj.valid)))
    with pytest.raises(RuntimeError, match=r"the step budget max_steps was exhausted"):
        sst.solve(MODEL, Y0, helpers.TS, max_steps=5)


def test_training_divergence_stops_flags_and_names_the_step_condition():
    problem, init = helpers.small_problem(), helpers.random_network()
    ts = np.linspace(0.0, 10.0, 5)
    with pytest.warns(RuntimeWarning, match=r"eta \* U\(1\) / eps = .* must stay well below 1"):
        run = sst.train(problem, init, ts, eta=0.5)
    assert run.result == sst.RESULTS.diverged
    assert "eta * U(1) / eps" in sst.RESULTS[run.result]
    valid = np.asarray(run.valid)
    assert valid[0] and not valid[-1]
    assert np.all(np.isnan(np.asarray(run.risk)[~valid]))
    # A sane step does not diverge (the same grid, the same initial point).
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert sst.train(problem, init, ts[:2], eta=1e-2).result == sst.RESULTS.successful


def test_mean_field_risk_is_a_sum_of_squares():
    # After learning, the risk is 1/2 |r|^2 (no cancellation of large terms): never negative.
    traj = sst.solve(MODEL, Y0, helpers.TS)
    risk = np.asarray(traj.risk)
    assert np.all(risk >= 0)
    np.testing.assert_allclose(
        risk, 0.5 * np.sum(np.asarray(traj.residuals) ** 2, axis=1), rtol=1e-12, atol=1e-300
    )


@pytest.mark.slow
@settings(max_examples=12, deadline=None, derandomize=True)
@given(
    a_scale=st.floats(0.1, 3.0),
    s_scale=st.floats(0.0, 1.2),
    q_off=st.floats(-1.2, 1.2),
    log_eps=st.floats(-8.0, 0.0),
    rtol=st.sampled_from([1e-6, 1e-8, -1e-8]),
)
def test_fuzz_finite_dim_states_error_or_honest_success(a_scale, s_scale, q_off, log_eps, rtol):
    """Random (s, Q), Gram or not, random eps and tolerances: a clear error, or a successful
    solve whose risk is finite, non-negative and non-increasing up to rounding."""
    m = helpers.FD_M
    s = s_scale * np.linspace(-1.0, 1.0, m)
    Q = np.full((m, m), q_off) + (1.0 - q_off) * np.eye(m)
    state = sst.FiniteDimState(a_scale * np.linspace(-1.0, 1.0, m) + 0.1, s, Q)
    model = sst.FiniteDimODE(helpers.small_problem(10.0**log_eps))
    try:
        traj = sst.solve(model, state, helpers.TS, rtol=rtol, atol=1e-10, throw=False)
    except ValueError as err:
        assert "\n" not in str(err).strip()
        return
    if not bool(traj.success):
        assert traj.result != sst.RESULTS.successful
        return
    risk = np.asarray(traj.risk)
    assert np.all(np.isfinite(risk))
    assert np.all(risk >= -1e-13)
    assert np.all(np.diff(risk) <= 1e-10 * max(1.0, risk[0])), np.max(np.diff(risk))
