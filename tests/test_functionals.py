"""Differentiable functionals of a trajectory (risk_at, log_time_area, hitting_time,
crossing_time): their values against closed forms and their definitions, their derivatives
(reverse and forward mode through the solve) against central differences and closed forms."""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import log_grid, synthetic_trajectory

import sst

# Tight tolerances: the derivative of the discrete solve and central differences of it then both
# sit within ~1e-7 of the exact flow's derivative, far inside the 1e-5 being checked.
RTOL, ATOL = 1e-9, 1e-11
TS = log_grid(1e-5, 10**0.5, 110)
Y0 = sst.quadrature_particles(4)
LEVEL = 0.3
# Parameters differentiated: eps, the target's degree-2 coefficient phi_2, the activation's
# degree-1 coefficient sigma_1 and the first particle's initial second-layer weight a_1(0).
NAMES = ("eps", "phi_2", "sigma_1", "a_1(0)")


def _functionals(theta, adjoint=None):
    eps, phi2, sigma1, a0 = theta
    problem = sst.Problem(
        sst.Hermite(jnp.array([0.5, 1.0, 0.0, 0.0]).at[2].set(phi2)),
        sst.Hermite(jnp.array([1.0, 0.0, 1.0, 0.5]).at[1].set(sigma1)),
        eps,
    )
    y0 = sst.MeanFieldState(Y0.a.at[0].set(a0), Y0.s, Y0.weights)
    model = sst.MeanFieldODE(problem)
    traj = sst.solve(model, y0, TS, rtol=RTOL, atol=ATOL, adjoint=adjoint, dense=True)
    saves_only = eqx.tree_at(lambda t: t.dense, traj, None)
    return jnp.stack(
        [
            sst.risk_at(traj, 0.5),
            sst.log_time_area(traj),
            sst.hitting_time(saves_only, LEVEL, model),
            sst.hitting_time(traj, LEVEL),
        ]
    )


@functools.cache
def _compiled():
    """Values and tangents in one compiled forward-mode function (the values for the central
    differences too), and the reverse-mode Jacobian."""
    forward_mode = sst.grad_adjoint("forward")

    @jax.jit
    def value_and_tangent(theta, direction):
        return jax.jvp(lambda x: _functionals(x, forward_mode), (theta,), (direction,))

    reverse = jax.jit(jax.jacrev(lambda x: _functionals(x, sst.grad_adjoint("reverse"))))

    def forward(theta):
        return value_and_tangent(theta, jnp.zeros_like(theta))[0]

    def tangent(theta, direction):
        return value_and_tangent(theta, direction)[1]

    return forward, reverse, tangent


def _theta(eps):
    return jnp.array([eps, 0.6, 1.0, float(Y0.a[0])])


def _central_differences(forward, theta, k, rel=1e-4):
    # rel = 1e-4 balances the O(h^2) truncation against solver noise of order rtol / h.
    h = rel * abs(float(theta[k]))
    e = jnp.zeros_like(theta).at[k].set(h)
    return (forward(theta + e) - forward(theta - e)) / (2 * h)


@pytest.mark.slow
@pytest.mark.parametrize("eps", [1e-2, 1e-4])
def test_grad_and_jvp_match_central_differences(eps):
    forward, reverse, tangent = _compiled()
    theta = _theta(eps)
    values = np.asarray(forward(theta))
    assert np.all(np.isfinite(values)) and TS[1] < values[2] < TS[-1]
    # The hitting time between saves (the cubic with exact rates: 2.6e-5 off on this grid at
    # eps = 1e-2) and on the dense output (within 1e-9 of a solve at rtol 1e-12 on 3,000 saves).
    np.testing.assert_allclose(values[2], values[3], rtol=1e-4)
    jac = np.asarray(reverse(theta))
    for k, name in enumerate(NAMES):
        fd = np.asarray(_central_differences(forward, theta, k))
        np.testing.assert_allclose(jac[:, k], fd, rtol=1e-5, err_msg=f"d/d{name}, eps={eps}")
    direction = jnp.array([1.0, -0.5, 0.3, 2.0]) * jnp.array([eps, 1.0, 1.0, 1.0])
    jvp = np.asarray(tangent(theta, direction))
    fd_dir = sum(
        float(direction[k]) * np.asarray(_central_differences(forward, theta, k)) for k in range(4)
    )
    np.testing.assert_allclose(jvp, fd_dir, rtol=1e-5)
    # Forward and reverse mode differentiate the same discrete solve, so they agree to rounding
    # (3e-15 measured). Differentiating through the LU of the Woodbury capacitance instead of
    # implicitly (custom_linear_solve) made them differ by 5e-9 at eps = 1e-4.
    np.testing.assert_allclose(jvp, jac @ np.asarray(direction), rtol=1e-12)


def _relaxation(eps, ts=None, dense=False):
    # Degree 0 only: r_0(t) = r0 exp(-sigma0^2 t / eps) and risk = r_0^2 / 2 (closed form),
    # whatever the overlaps, which then stay put.
    model = sst.MeanFieldODE(sst.Problem(sst.Hermite([0.7]), sst.Hermite([1.3]), eps=eps))
    ts = log_grid(1e-4, 1.0, 801) if ts is None else ts
    y0 = sst.MeanFieldState([-0.5, 0.5], [0.3, -0.2])
    return model, sst.solve(model, y0, ts, dense=dense)


# Two save grids of one shape (one compilation): 201 log-spaced saves, 0.046 apart in log t, and
# one with no save between t = 5e-3 and 0.2, across the crossing of the test below at 0.016.
FINE = log_grid(1e-4, 1.0, 201)
GAPPED = np.concatenate([[0.0], np.geomspace(1e-4, 5e-3, 100), np.geomspace(0.2, 1.0, 101)])


@pytest.mark.slow
def test_hitting_time_and_its_eps_derivative_match_the_closed_form():
    eps, level, r0, sigma0 = 1e-2, 1e-3, 0.7, 1.3
    exact = eps / (2 * sigma0**2) * np.log(r0**2 / (2 * level))

    def hit(e, ts):
        # The three ways from one solve (and one compilation): on the dense output, and between
        # saves by the cubic with exact rates and linearly (the same trajectory without it).
        model, traj = _relaxation(e, ts, dense=True)
        saves_only = eqx.tree_at(lambda t: t.dense, traj, None)
        both = jnp.stack(
            [
                sst.hitting_time(traj, level),
                sst.hitting_time(saves_only, level, model),
                sst.hitting_time(saves_only, level),
            ]
        )
        return both, both

    derivative = jax.jit(jax.jacrev(hit, has_aux=True))
    for ts in (FINE, GAPPED):
        (dt_dense, dt_cubic, dt_lin), (t_dense, t_cubic, t_lin) = derivative(eps, ts)
        # On the dense output, to the solver's tolerance (1e-9 measured) whatever the saves, and
        # its derivative by the implicit function theorem.
        np.testing.assert_allclose(t_dense, exact, rtol=1e-7)
        np.testing.assert_allclose(dt_dense, exact / eps, rtol=1e-7)
        if ts is FINE:
            # Cubic Hermite with exact rates: O(h^4) location error.
            np.testing.assert_allclose(t_cubic, exact, rtol=1e-6)
            np.testing.assert_allclose(dt_cubic, exact / eps, rtol=1e-5)
            # The linear interpolant is second-order in the location, first-order in the
            # derivative.
            np.testing.assert_allclose(t_lin, exact, rtol=5e-3)
            np.testing.assert_allclose(dt_lin, exact / eps, rtol=1e-1)
        else:
            # Between saves 40 times apart, both interpolants miss it (by -29% and +1000%).
            assert abs(t_cubic / exact - 1) > 0.1 and abs(t_lin / exact - 1) > 0.1


@pytest.mark.slow
def test_functionals_agree_with_their_definitions_on_a_trajectory():
    _, traj = _relaxation(1e-2)
    ts, risk = np.asarray(traj.ts), np.asarray(traj.risk)
    assert float(sst.risk_at(traj, ts[300])) == risk[300]
    mid = np.sqrt(ts[300] * ts[301])
    np.testing.assert_allclose(sst.risk_at(traj, mid), 0.5 * (risk[300] + risk[301]), rtol=1e-12)
    level = 0.5 * risk[0]
    np.testing.assert_allclose(
        sst.hitting_time(traj, level), sst.crossing_time(ts, risk, level), rtol=1e-12
    )
    assert np.isnan(float(sst.hitting_time(traj, -1.0)))
    # Area: the closed form of int R d(log t) from ts[1] to ts[-1], R = r0^2/2 exp(-2 t/tau).
    tau = 1e-2 / 1.3**2
    fine = np.logspace(-4, 0, 200_001)
    exact = np.trapezoid(0.5 * 0.49 * np.exp(-2 * fine / tau), np.log(fine))
    np.testing.assert_allclose(sst.log_time_area(traj), exact, rtol=1e-4)


def _log_crossing(ts, values, level):
    """The first crossing of `level`, linear in log t between saves (in t from t = 0): numpy."""
    j = int(np.argmax(values <= level))
    x = (values[j - 1] - level) / (values[j - 1] - values[j])
    if ts[j - 1] == 0:
        return ts[j - 1] + x * (ts[j] - ts[j - 1])
    return float(np.exp(np.log(ts[j - 1]) + x * (np.log(ts[j]) - np.log(ts[j - 1]))))


def test_crossing_time_interpolates_in_log_time():
    ts = log_grid(1e-3, 10.0, 16)
    values = np.exp(-ts)
    for level in (0.9, 0.5, 1e-3):
        t = sst.crossing_time(ts, values, level)
        assert isinstance(t, jax.Array) and t.shape == ()
        np.testing.assert_allclose(t, _log_crossing(ts, values, level), rtol=1e-13)
        if level > 0.1:  # where exp(-t) is smooth on the grid's scale (0.2 decades)
            np.testing.assert_allclose(t, -np.log(level), rtol=0.05)
    # From the save at t = 0 the interpolation is in t.
    first = 0.5 * (values[0] + values[1])
    np.testing.assert_allclose(sst.crossing_time(ts, values, first), 0.5 * ts[1], rtol=1e-13)
    assert float(sst.crossing_time(ts, values, 2.0)) == ts[0]  # starts below the level
    assert np.isnan(float(sst.crossing_time(ts, values, -1.0)))  # never reaches it


def test_crossing_time_is_differentiable_in_the_level():
    # t* = exp(u0 + x du), x = (v0 - level) / (v0 - v1): dt*/dlevel = -t* du / (v0 - v1).
    ts = log_grid(1e-3, 10.0, 16)
    values = np.exp(-ts)
    level = 0.5
    t, slope = jax.value_and_grad(lambda lv: sst.crossing_time(ts, values, lv))(level)
    j = int(np.argmax(values <= level))
    du = np.log(ts[j]) - np.log(ts[j - 1])
    np.testing.assert_allclose(slope, -float(t) * du / (values[j - 1] - values[j]), rtol=1e-12)


def test_functionals_need_a_single_trajectory():
    traj = synthetic_trajectory(log_grid(1e-3, 1.0, 10), np.ones((11, 2)))
    batch = jax.tree_util.tree_map(lambda x: jnp.stack([x, x]), traj)
    with pytest.raises(ValueError, match="hitting_time needs a single trajectory"):
        sst.hitting_time(batch, 0.1)
    with pytest.raises(ValueError, match="mode must be 'reverse' or 'forward'"):
        sst.grad_adjoint("sideways")
