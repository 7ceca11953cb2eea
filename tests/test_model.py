"""A model defined outside sst (helpers.Relaxation, a subclass of sst.AbstractModel with its own
state) goes through sst.solve, sst.solve_batch and jax.grad, checked against its closed form."""

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import TS, Point, Relaxation, log_grid, max_abs

import sst

DECAY = jnp.array([1.0, 2.0, 0.5])
TARGET = jnp.array([0.3, -1.0, 2.0])
X0 = Point(jnp.array([1.0, 1.0, -1.0]))


def _model(eps=1e-2):
    return Relaxation(DECAY, TARGET, eps)


@pytest.mark.slow
def test_solve_matches_the_closed_form():
    model = _model()
    traj = sst.solve(model, X0, TS)
    assert isinstance(traj.ys, Point) and traj.ys.x.shape == (TS.size, 3)
    assert bool(traj.success) and traj.residual_labels == ("x0", "x1", "x2")
    exact = model.exact(X0.x, TS)
    np.testing.assert_allclose(traj.ys.x, exact, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(traj.risk, 0.5 * np.sum((exact - TARGET) ** 2, axis=1), atol=1e-9)
    # The default rtol = 1e-8 of components of size 3.
    np.testing.assert_allclose(traj.residuals, TARGET - exact, atol=3e-8)
    # The analysis functions take any model's trajectory: r_k^2 halves at eps ln 2 / (2 decay),
    # up to the linear interpolation in log t between saves (0.3% on this grid); exactly, the
    # crossing of that interpolant of the exact samples.
    half = sst.learning_times(traj, 0.5)
    np.testing.assert_allclose(half, 1e-2 * np.log(2) / (2 * DECAY), rtol=5e-3)
    r2 = np.asarray(TARGET - exact) ** 2
    for k in range(3):
        j = int(np.argmax(r2[:, k] <= 0.5 * r2[0, k]))
        x = (r2[j - 1, k] - 0.5 * r2[0, k]) / (r2[j - 1, k] - r2[j, k])
        expected = np.exp(np.log(TS[j - 1]) + x * (np.log(TS[j]) - np.log(TS[j - 1])))
        np.testing.assert_allclose(half[k], expected, rtol=1e-6)


def test_rate_and_jacobian_of_an_outside_model():
    model = _model()
    np.testing.assert_allclose(model.rate(0.0, X0).x, -DECAY * (X0.x - TARGET) / 1e-2)
    jacobian = model.jacobian(0.0, *model.split(X0))
    assert isinstance(jacobian, sst.DenseJacobian)
    np.testing.assert_allclose(jacobian.matrix, np.diag(-DECAY / 1e-2), atol=1e-13)


def test_validation_goes_through_the_model():
    with pytest.raises(ValueError, match="Relaxation needs a Point of shape"):
        sst.solve(_model(), Point(jnp.ones(2)), TS)
    with pytest.raises(ValueError, match="Relaxation needs eps > 0"):
        sst.solve_batch(_model(), X0, TS, eps=[1e-2, -1.0])


def test_a_check_state_that_returns_nothing_is_one_clear_error():
    class Unchecked(Relaxation):
        def check_state(self, state):
            super().check_state(state)

    model = Unchecked([1.0, 2.0], [0.5, -0.5], 1e-2)
    with pytest.raises(ValueError, match=r"Unchecked.check_state returned None; it must return"):
        sst.solve(model, Point(jnp.array([1.0, 1.0])), TS)


@pytest.mark.slow
def test_solve_batch_over_eps_and_target_matches_the_closed_form():
    eps = np.array([1e-1, 1e-3, 1e-2, 1e-4])
    targets = np.stack([TARGET + i for i in range(4)])
    batch = sst.solve_batch(_model(), X0, TS, eps=eps, parameters={"target": targets})
    assert batch.batch_size == 4 and bool(jnp.all(batch.success))
    for i in range(4):
        exact = Relaxation(DECAY, targets[i], eps[i]).exact(X0.x, TS)
        np.testing.assert_allclose(batch[i].ys.x, exact, rtol=1e-7, atol=1e-8 * (1 + i))
    with pytest.raises(ValueError, match="Relaxation has no parameter 'activation'"):
        sst.solve_batch(_model(), X0, TS, parameters={"activation": np.ones((2, 4))})


@pytest.mark.slow
def test_grad_through_solve_matches_the_closed_form():
    # R(T) = sum_k (x0_k - c_k)^2 exp(-2 decay_k T / eps) / 2, differentiated in eps and in c.
    T = 0.02
    ts = log_grid(1e-4, T, 20)

    def risk_at_T(eps, target):
        traj = sst.solve(Relaxation(DECAY, target, eps), X0, ts, rtol=1e-10, atol=1e-12)
        return traj.risk[-1]

    def exact(eps, target):
        return 0.5 * jnp.sum((X0.x - target) ** 2 * jnp.exp(-2 * DECAY * T / eps))

    eps = jnp.asarray(1e-2)
    value, (d_eps, d_target) = jax.jit(jax.value_and_grad(risk_at_T, argnums=(0, 1)))(eps, TARGET)
    expected_value, (e_eps, e_target) = jax.value_and_grad(exact, argnums=(0, 1))(eps, TARGET)
    # The closed-form derivatives, written out: dR/deps = sum w_k (2 decay_k T / eps^2).
    w = 0.5 * (X0.x - TARGET) ** 2 * jnp.exp(-2 * DECAY * T / eps)
    np.testing.assert_allclose(e_eps, jnp.sum(w * 2 * DECAY * T / eps**2), rtol=1e-14)
    np.testing.assert_allclose(value, expected_value, rtol=1e-8)
    np.testing.assert_allclose(d_eps, e_eps, rtol=1e-7)
    np.testing.assert_allclose(d_target, e_target, rtol=1e-7)


@pytest.mark.slow
def test_result_codes_and_throw_inside_jit():
    @eqx.filter_jit
    def solve(eps, throw):
        return sst.solve(Relaxation(DECAY, TARGET, eps), X0, TS, max_steps=2, throw=throw)

    budget = solve(jnp.asarray(1e-2), False)
    assert budget.result == sst.RESULTS.max_steps_reached and not bool(budget.valid[-1])
    assert "step budget" in sst.RESULTS[budget.result]
    assert int(budget.stats["num_steps"]) == 2
    # A NaN parameter is told apart from an exhausted budget (concrete checks cannot see it
    # inside jit).
    nan = solve(jnp.asarray(jnp.nan), False)
    assert nan.result == sst.RESULTS.nonfinite and not bool(nan.success)
    with pytest.raises(eqx.EquinoxRuntimeError, match="step budget max_steps was exhausted"):
        solve(jnp.asarray(1e-2), True).ys.x.block_until_ready()


@pytest.mark.slow
def test_controller_without_tolerances_records_nan():
    traj = sst.solve(
        _model(1.0),
        X0,
        np.linspace(0.0, 1.0, 11),
        stepsize_controller=dfx.ConstantStepSize(),
        dt0=0.01,
    )
    assert bool(traj.success) and np.isnan(traj.rtol) and np.isnan(traj.atol)
    assert max_abs(traj.ys.x, _model(1.0).exact(X0.x, traj.ts)) < 1e-9


def test_an_incomplete_model_cannot_be_built():
    class Incomplete(sst.AbstractModel):
        def __call__(self, t, y, args):
            return y

    with pytest.raises(TypeError, match="abstract"):
        Incomplete()
