"""Rodas4: order of the solution and of its dense output, L-stability, the tableau's checks, the
structured (Woodbury) and dense Jacobians giving the same trajectory. ROS34PW2: third order with
any matrix in place of the Jacobian (a W-method), where Rodas4 loses its order."""

import dataclasses

import diffrax as dfx
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import STIFF_TS, FieldModel, cubic_problem, particles

import sst
from sst._model import ModelTerm


def _nonlinear(t, y, args):
    # y' = -y^2, y(0) = 1 has y = 1 / (1 + t); the non-autonomous z' = -z + cos t + sin t,
    # z(0) = 1, has z = sin t + exp(-t) and exercises the df/dt terms of the stages.
    return jnp.stack([-(y[0] ** 2), -y[1] + jnp.cos(t) + jnp.sin(t)])


def _nonlinear_exact(t):
    return np.stack([1 / (1 + t), np.sin(t) + np.exp(-t)], axis=-1)


def _fixed_steps(model, y0, ts, n_steps, max_steps=100, solver=None):
    """Rodas4 (or `solver`) with n_steps constant steps on [ts[0], ts[-1]], saved at ts (the
    step is traced, so that every n_steps shares one compilation)."""
    ts = jnp.asarray(ts)
    sol = dfx.diffeqsolve(
        ModelTerm(model),
        sst.Rodas4() if solver is None else solver,
        ts[0],
        ts[-1],
        (ts[-1] - ts[0]) / n_steps,
        y0,
        saveat=dfx.SaveAt(ts=ts),
        stepsize_controller=dfx.ConstantStepSize(),
        max_steps=max_steps,
    )
    assert int(sol.stats["num_steps"]) == n_steps
    return np.asarray(sol.ys)


@pytest.mark.slow
def test_rodas4_and_its_dense_output_are_fourth_order_on_a_nonlinear_problem():
    # Saves at the midpoints of the 10 coarse steps on [0, 2], and at t = 2. With 10, 30 and 90
    # steps these stay midpoints of steps (tripling the steps splits each step in three), so the
    # saved values there come from the dense output at theta = 1/2. A third-order dense output
    # (local error O(h^4)) keeps the global error there at fourth order: a factor 3^4 per
    # tripling. The linear interpolation Rodas4 had before gave order 2 there (measured 2.00).
    mid = np.arange(0.1, 2.0, 0.2)
    ts = np.concatenate([[0.0], mid, [2.0]])
    model = FieldModel(_nonlinear)
    errors = []
    for n in (10, 30, 90):
        ys = _fixed_steps(model, jnp.array([1.0, 1.0]), ts, n)
        error = np.max(np.abs(ys - _nonlinear_exact(ts)), axis=1)
        errors.append((error[1:-1].max(), error[-1]))
    errors = np.array(errors)
    orders = np.log(errors[:-1] / errors[1:]) / np.log(3.0)
    between, at_steps = orders[:, 0], orders[:, 1]
    assert np.all((at_steps > 3.7) & (at_steps < 4.6)), (errors, orders)
    assert np.all((between > 3.5) & (between < 4.6)), (errors, orders)
    assert errors[-1, 0] < 1e-8, errors


class _WrongJacobian(FieldModel):
    """`FieldModel` handing the solver `J / 2 + R` instead of its Jacobian `J` (`R` a rotation)."""

    def jacobian(self, t, y, args):
        exact = sst.DenseJacobian.of(self, t, y, args).matrix
        return sst.DenseJacobian(0.5 * exact + jnp.array([[0.0, 0.3], [-0.3, 0.0]]))


def _orders(solver, model):
    """Observed orders at the steps and at the midpoints (dense output) on `_nonlinear`, from
    10, 30 and 90 constant steps on [0, 2] (see the Rodas4 order test)."""
    ts = np.concatenate([[0.0], np.arange(0.1, 2.0, 0.2), [2.0]])
    errors = []
    for n in (10, 30, 90):
        ys = _fixed_steps(model, jnp.array([1.0, 1.0]), ts, n, solver=solver)
        error = np.max(np.abs(ys - _nonlinear_exact(ts)), axis=1)
        errors.append((error[1:-1].max(), error[-1]))
    errors = np.array(errors)
    return np.log(errors[:-1] / errors[1:]) / np.log(3.0)


@pytest.mark.slow
def test_ros34pw2_is_third_order_with_any_jacobian_and_rodas4_is_not():
    # The order conditions of a W-method hold for any matrix: with J / 2 + R the observed order
    # stays 3 (2.9-3.1 measured), at the steps and from the second-order dense output between
    # them (local error O(h^3)). Rodas4 with the same matrix drops to order 1 or below.
    for model in (FieldModel(_nonlinear), _WrongJacobian(_nonlinear)):
        orders = _orders(sst.Ros34PW2(), model)
        assert np.all((orders > 2.7) & (orders < 3.4)), orders
    assert np.all(_orders(sst.Rodas4(), _WrongJacobian(_nonlinear))[:, 1] < 1.5)


def test_ros34pw2_tableau_is_stiffly_accurate():
    tab = sst.ROS34PW2
    assert sst.Ros34PW2.tableau is tab and tab.stages == 4 and tab.w_method and tab.dense is None
    np.testing.assert_allclose(tab.b, (*tab.a[-1], 1.0), rtol=1e-14, atol=1e-14)
    assert tab.c[-1] == 1.0
    assert not sst.RODAS4.w_method


@pytest.mark.slow
@pytest.mark.parametrize(
    "solver, bound", [(sst.Rodas4(), 1e-8), (sst.Ros34PW2(), 1e-5)], ids=["rodas4", "ros34pw2"]
)
def test_rosenbrock_is_stable_and_accurate_on_a_very_stiff_problem(solver, bound):
    # Prothero-Robinson: y' = lam (y - sin t) + cos t, y(0) = 0, exact y = sin t, lam = -1e10.
    # An L-stable, stiffly accurate method stays on sin t with steps 1e9 times 1/|lam|, at the
    # steps and between them.
    def field(t, y, args):
        return -1e10 * (y - jnp.sin(t)) + jnp.cos(t)

    ts = np.linspace(0.0, 1.0, 41)
    ys = _fixed_steps(FieldModel(field), jnp.array([0.0]), ts, 20, solver=solver)
    err = np.max(np.abs(ys[:, 0] - np.sin(ts)))
    assert err < bound, err  # third order at h = 0.05: 2.6e-6 measured for ROS34PW2


def test_rosenbrock_needs_a_model_term():
    # Rodas4 declares sst.ModelTerm as its term structure: diffrax refuses a plain ODETerm (whose
    # vector field need not have a Jacobian) before compiling.
    model = FieldModel(lambda t, y, args: -y)
    with pytest.raises(ValueError, match=r"(?s)not compatible with solver.*ModelTerm"):
        dfx.diffeqsolve(dfx.ODETerm(model), sst.Rodas4(), 0.0, 1.0, 0.1, jnp.array([1.0]))
    with pytest.raises(ValueError, match="ModelTerm needs an sst.AbstractModel"):
        ModelTerm(lambda t, y, args: -y)
    with pytest.raises(ValueError, match=r"terms must be an sst.ModelTerm\(model\), got ODETerm"):
        ModelTerm.unwrap(dfx.ODETerm(model))
    assert ModelTerm.unwrap(ModelTerm(model)) == (model, 1)


@pytest.mark.slow
def test_rodas4_integrates_backward_in_time():
    # From t = 2 down to t = 0, diffeqsolve hands the solver dy/ds = -f(-s, y) in s = -t: the
    # Jacobian, the df/dt terms and the time must all change sign (with none changed, the
    # solution is off by O(1)).
    ts = np.linspace(2.0, 0.0, 5)
    ys = _fixed_steps(FieldModel(_nonlinear), jnp.asarray(_nonlinear_exact(2.0)), ts, 40)
    np.testing.assert_allclose(ys, _nonlinear_exact(ts), rtol=0, atol=1e-7)


def test_rodas4_tableau_is_stiffly_accurate():
    tab = sst.RODAS4
    assert sst.Rodas4.tableau is tab and tab.stages == 6
    # y1 is the last stage's input plus its increment, and the error estimate is that increment.
    assert tab.b == (*tab.a[-1], 1.0)
    assert tab.e == (0.0,) * 5 + (1.0,)
    assert tab.c[-1] == tab.c[-2] == 1.0
    assert (tab.order, tab.error_order) == (4, 4)


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(a=sst.RODAS4.a[:-1]), "a and C with rows of 0, 1, ..., s-1 entries"),
        (dict(C=((),) + sst.RODAS4.C[2:] + ((1.0,),)), "a and C with rows"),
        (dict(b=sst.RODAS4.b[:-1]), "gammas, b, e and both dense rows of s entries"),
        (dict(gammas=(*sst.RODAS4.gammas, 0.0)), "gammas, b, e and both dense rows"),
        (dict(dense=(sst.RODAS4.dense[0], sst.RODAS4.dense[1][:3])), "both dense rows"),
        (dict(gamma=0.0), "gamma > 0"),
        (dict(gamma=-0.25), "gamma > 0"),
    ],
    ids=["a-rows", "C-rows", "b", "gammas", "dense", "gamma-zero", "gamma-negative"],
)
def test_malformed_tableau_raises(change, match):
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(sst.RODAS4, **change)


@pytest.mark.slow
def test_structured_and_dense_jacobians_give_the_same_trajectory():
    # interaction="dense" hands Rodas4 a DenseJacobian (LU, and the O(m^2) vector field); the
    # default a ParticleJacobian (Woodbury solves of the moment path).
    problem = cubic_problem(1e-6)
    y0 = particles()
    fast = sst.solve(sst.MeanFieldODE(problem), y0, STIFF_TS)
    dense = sst.solve(sst.MeanFieldODE(problem, interaction="dense"), y0, STIFF_TS)
    np.testing.assert_allclose(fast.risk, dense.risk, rtol=1e-7, atol=1e-12)
    np.testing.assert_allclose(fast.ys.s, dense.ys.s, atol=1e-8)
