"""sst.solve: the Trajectory it returns, accuracy against tight references across eps (also with
an explicit step-size controller), failures (raised, or flagged and masked), validation, and the
model's projection applied whichever diffrax solver integrates it."""

import diffrax as dfx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import (
    CUBIC_ACTIVATION,
    CUBIC_TARGET,
    REFERENCE_TOLERANCES,
    REFERENCE_TS,
    STIFF_TS,
    TS,
    M,
    Point,
    Relaxation,
    cubic_problem,
    max_abs,
    particles,
)
from jaxtyping import Array, Float

import sst
from sst._solve import ProjectedSolver, check_eps


def _reference(eps):
    """1000 times tighter tolerances than the default, and a dense Jacobian (autodiff, LU)
    instead of the closed-form structured one and its Woodbury solves."""
    model = sst.WithDenseJacobian(sst.MeanFieldODE(cubic_problem(eps)))
    return sst.solve(model, particles(), REFERENCE_TS, **REFERENCE_TOLERANCES)


def test_trajectory_fields_and_shapes(cubic_model, cubic_trajectory):
    traj = cubic_trajectory
    T = TS.shape[0]
    assert isinstance(traj.ys, sst.MeanFieldState)
    assert traj.ys.a.shape == traj.ys.s.shape == traj.ys.weights.shape == (T, M)
    assert traj.residuals.shape == (T, 4) and traj.residual_labels == ((0,), (1,), (2,), (3,))
    assert bool(traj.success) and traj.result == sst.RESULTS.successful
    assert bool(jnp.all(traj.valid)) and traj.batch_size is None
    assert (traj.rtol, traj.atol) == (1e-8, 1e-10) and traj.training is None
    assert set(traj.stats) == {"num_steps", "num_accepted_steps", "num_rejected_steps"}
    stats = {k: int(v) for k, v in traj.stats.items()}
    assert stats["num_steps"] == stats["num_accepted_steps"] + stats["num_rejected_steps"] > 0
    np.testing.assert_array_equal(traj.ts, TS)
    np.testing.assert_allclose(traj.risk, 0.5 * jnp.sum(traj.residuals**2, axis=1), rtol=1e-10)
    assert float(traj.risk[-1]) < 1e-3 * float(traj.risk[0])
    state = traj.state(-1)
    np.testing.assert_allclose(cubic_model.risk(state), traj.risk[-1], rtol=1e-12)
    np.testing.assert_array_equal(traj.state(0).a, particles().a)
    with pytest.raises(ValueError, match="not batched; use traj.state"):
        traj[0]


@pytest.mark.slow
@pytest.mark.parametrize("eps", [1e-2, 1e-6, 1e-10, 1e-12])
def test_default_solver_matches_a_tight_reference_across_eps(eps):
    traj = sst.solve(sst.MeanFieldODE(cubic_problem(eps)), particles(), REFERENCE_TS)
    ref = _reference(eps)
    assert max_abs(traj.risk, ref.risk) < 1e-6
    assert max_abs(traj.ys.s, ref.ys.s) < 1e-6
    assert max_abs(traj.ys.a, ref.ys.a) / float(jnp.max(jnp.abs(ref.ys.a))) < 1e-6
    assert float(jnp.max(jnp.diff(traj.risk))) <= 1e-12 * float(traj.risk[0])


@pytest.mark.slow
@pytest.mark.parametrize("eps", [1e-1, 1e-4, 1e-8, 1e-12])
def test_default_solver_integrates_to_t100_with_monotone_risk(eps):
    # 16 particles: 8 learn the target only to 1e-5 of the initial risk at eps = 0.1.
    traj = sst.solve(sst.MeanFieldODE(cubic_problem(eps)), particles(16), STIFF_TS)
    assert bool(traj.success) and float(traj.ts[-1]) == 100.0
    assert float(jnp.max(jnp.diff(traj.risk))) <= 1e-12 * float(traj.risk[0])
    assert float(traj.risk[-1]) < 1e-6 * float(traj.risk[0])


@pytest.mark.slow
def test_explicit_controller_keeps_the_accuracy_between_steps():
    # An explicit controller does not clip the steps onto the save times: the saved values come
    # from Rodas4's dense output. With the linear interpolation it had before, the saved risk
    # was off by 5e-5 here; with the third-order dense output it keeps the solver's accuracy.
    # (1.5e-9 measured against the reference, itself within 1e-13 of one at rtol = 1e-12.)
    eps = 1e-3
    controller = dfx.PIDController(rtol=1e-8, atol=1e-10)
    # rtol/atol of solve only build the default controller: the trajectory must record the
    # tolerances of the controller passed instead.
    traj = sst.solve(
        sst.MeanFieldODE(cubic_problem(eps)),
        particles(),
        REFERENCE_TS,
        stepsize_controller=controller,
        rtol=1e-6,
        atol=1e-7,
    )
    ref = _reference(eps)
    assert bool(traj.success)
    assert (traj.rtol, traj.atol) == (1e-8, 1e-10)
    assert max_abs(traj.risk, ref.risk) < 1e-8
    assert max_abs(traj.ys.s, ref.ys.s) < 1e-7


def test_step_budget_exhaustion_raises_with_advice(cubic_model):
    with pytest.raises(RuntimeError, match="failed after 5 steps.*raise max_steps"):
        sst.solve(cubic_model, particles(), TS, max_steps=5)


def test_failure_without_throw_is_flagged_and_masked(cubic_model):
    traj = sst.solve(cubic_model, particles(), TS, max_steps=5, throw=False)
    assert not bool(traj.success) and traj.result == sst.RESULTS.max_steps_reached
    assert int(traj.stats["num_steps"]) == 5
    valid = np.asarray(traj.valid)
    assert valid[0] and not valid[-1]
    assert np.all(np.isnan(np.asarray(traj.risk)[~valid]))
    assert np.all(np.isnan(np.asarray(traj.ys.a)[~valid]))
    assert np.all(np.isfinite(np.asarray(traj.risk)[valid]))


@pytest.mark.slow
def test_a_nonfinite_start_under_jit_ends_the_solve_at_once(cubic_model):
    # Every step from a NaN state is rejected: without the stop at the start the controller
    # shrank the step until the budget ran out (100,000 rejected steps).
    y0 = particles()

    @jax.jit
    def solve(a):
        return sst.solve(cubic_model, sst.MeanFieldState(a, y0.s, y0.weights), TS, throw=False)

    traj = solve(y0.a.at[0].set(jnp.nan))
    assert traj.result == sst.RESULTS.nonfinite and int(traj.stats["num_steps"]) <= 5
    assert not bool(jnp.any(traj.valid))
    assert solve(y0.a).result == sst.RESULTS.successful


@pytest.mark.slow
def test_reverse_mode_through_overflowing_rejected_steps_is_finite_and_right():
    # At eps = 1e-12 trial steps of the default solve overflow and are rejected; differentiating
    # them met 0 * inf and raised lineax's non-finite-input error (not at 1e-10, where none
    # overflows). Their outputs reach nothing, so the gradient is that of the accepted steps:
    # central differences of the solve (measured to agree to 2e-6).
    y0 = particles()

    def area(theta, adjoint=None):
        scale, phi_3 = theta
        target = sst.Hermite(jnp.array(CUBIC_TARGET).at[3].set(phi_3))
        model = sst.MeanFieldODE(sst.Problem(target, sst.Hermite(CUBIC_ACTIVATION), 1e-12))
        y = sst.MeanFieldState(scale * y0.a, y0.s, y0.weights)
        return sst.log_time_area(sst.solve(model, y, TS, adjoint=adjoint))

    theta = jnp.array([1.0, 1.0])
    grad = np.asarray(jax.grad(area)(theta, sst.grad_adjoint()))
    for i in range(2):
        h = jnp.zeros(2).at[i].set(1e-3)
        fd = float(area(theta + h) - area(theta - h)) / 2e-3
        assert abs(grad[i] - fd) <= 1e-4 * abs(fd), (i, grad[i], fd)


@pytest.mark.parametrize(
    "ts, match",
    [
        ([0.0, 1.0, 0.5], "strictly increasing"),
        ([0.0, 0.0, 1.0], "strictly increasing"),
        ([0.0, float("nan")], "NaN or inf"),
        ([1.0], "at least two times"),
    ],
    ids=["decreasing", "repeated", "nan", "single"],
)
def test_bad_times_raise(cubic_model, ts, match):
    with pytest.raises(ValueError, match=match):
        sst.solve(cubic_model, particles(), ts)


@pytest.mark.slow
def test_checks_of_a_traced_solve_run_with_the_program():
    # Under jit the concrete checks cannot run; eqx.error_if raises when the program does.
    @jax.jit
    def final_risk(eps, ts, dt0):
        model = sst.MeanFieldODE(cubic_problem(eps))
        return sst.solve(model, particles(), ts, dt0=dt0, throw=False).risk[-1]

    assert np.isfinite(float(final_risk(1e-2, TS, 1e-5)))
    with pytest.raises(Exception, match=r"eps is below the range sst supports, eps >= 1e-30"):
        jax.block_until_ready(final_risk(1e-31, TS, 1e-5))
    with pytest.raises(Exception, match=r"ts must be finite and strictly increasing"):
        jax.block_until_ready(final_risk(1e-2, np.where(np.arange(TS.size) == 3, TS[2], TS), 1e-5))
    with pytest.raises(Exception, match=r"dt0 must be a finite positive initial step"):
        jax.block_until_ready(final_risk(1e-2, TS, -1e-5))
    with pytest.raises(ValueError, match=r"ts must be a 1-d array of at least two times"):
        final_risk(1e-2, TS[:1], 1e-5)  # shapes are static: refused while tracing
    with pytest.raises(ValueError, match=r"rtol and atol must be concrete numbers"):
        jax.jit(
            lambda rtol: (
                sst.solve(sst.MeanFieldODE(cubic_problem()), particles(), TS, rtol=rtol).risk
            )
        )(1e-8)


@pytest.mark.slow
def test_state_checks_of_a_traced_solve_run_with_the_program():
    # Traced, a state with |s_i| > 1 would be clamped onto the sphere by the chart (arcsin of
    # min(|s|, 1)) and solved silently; its checks are eqx.error_if.
    y0 = particles()

    @jax.jit
    def mean_field(s, weights):
        model = sst.MeanFieldODE(cubic_problem(1e-2))
        return sst.solve(model, sst.MeanFieldState(y0.a, s, weights), TS[:4], throw=False).risk

    assert np.all(np.isfinite(np.asarray(mean_field(y0.s, y0.weights))))
    with pytest.raises(Exception, match=r"each s_i must have norm <= 1"):
        jax.block_until_ready(mean_field(y0.s.at[0].set(1.5), y0.weights))
    with pytest.raises(Exception, match=r"Particle weights must be non-negative and sum to 1"):
        jax.block_until_ready(mean_field(y0.s, 2 * y0.weights))

    m = 3
    problem = sst.Problem(sst.Hermite([0.0, 1.0]), sst.Hermite([0.0, 1.0, 0.5]), eps=1.0)

    @jax.jit
    def finite_dim(s, Q):
        state = sst.FiniteDimState(jnp.ones(m), s, Q)
        return sst.solve(sst.FiniteDimODE(problem), state, TS[:4], throw=False).risk

    s = jnp.full(m, 0.1)
    assert np.all(np.isfinite(np.asarray(finite_dim(s, jnp.eye(m)))))
    with pytest.raises(Exception, match=r"Q must be symmetric with unit diagonal"):
        jax.block_until_ready(finite_dim(s, jnp.eye(m).at[0, 1].set(0.5)))
    with pytest.raises(Exception, match=r"is not the Gram matrix of unit vectors"):
        jax.block_until_ready(finite_dim(jnp.full(m, 0.9), jnp.eye(m)))


def test_model_must_be_an_sst_model():
    with pytest.raises(ValueError, match="model must be an sst.AbstractModel"):
        sst.solve(lambda t, y, args: -y, particles(), TS)


@pytest.mark.parametrize("tau", [0.0, 0.5])
def test_default_solver_refuses_huge_dense_jacobians(tau):
    # tau > 0: the noisy model's StiffJacobian, whose exact Jacobian Rodas4 factors.
    problem = sst.Problem(sst.Hermite([0.0, 1.0]), sst.Hermite([0.0, 1.0, 0.5]), eps=1.0)
    m = 60  # 60 + 60 + 3600 unknowns
    state = sst.FiniteDimState(jnp.zeros(m), jnp.zeros(m), jnp.eye(m))
    with pytest.raises(ValueError, match="factor a dense 3720 x 3720 Jacobian"):
        sst.solve(sst.FiniteDimODE(problem, tau=tau), state, TS)


# Error control and solves at tiny eps.


def _model(eps):
    return sst.MeanFieldODE(
        sst.Problem(sst.Hermite([0.0, 1.0, 1.0]), sst.Hermite([0.5, 1.0, 1.0]), eps)
    )


SHORT_TS = np.array([0.0, 1e-3, 1.0])


def test_solve_refuses_eps_below_the_supported_range():
    with pytest.raises(ValueError, match=r"eps = 1e-32 is below the range sst supports"):
        sst.solve(_model(1e-32), sst.quadrature_particles(4, law="uniform"), SHORT_TS)


def test_solve_batch_refuses_a_member_below_the_supported_range():
    with pytest.raises(ValueError, match=rf"eps = 1e-31 is below the range .* >= {sst.EPS_MIN:g}"):
        sst.solve_batch(
            _model(1e-2), sst.quadrature_particles(4, law="uniform"), SHORT_TS, eps=[1e-2, 1e-31]
        )


def test_the_smallest_supported_eps_and_traced_eps_pass_the_check():
    check_eps(sst.EPS_MIN)
    check_eps(np.array([1.0, sst.EPS_MIN]))
    check_eps(10.0**-30)  # rounds to just below 1e-30
    with pytest.raises(ValueError, match="below the range"):
        check_eps(0.999999 * sst.EPS_MIN)


# The model's projection under any diffrax solver.


class Rotor(sst.AbstractModel):
    """A model with a redundant coordinate, as MeanFieldODE has its residuals: `z` in R^2
    rotates at angular speed `omega`, and `r = |z|^2` (constant) is integrated alongside. No
    Runge-Kutta method keeps `|z|^2 = r` (a quadratic invariant): `project` rescales `z` onto
    it, so the invariant holds to rounding exactly when the projection is applied."""

    omega: Float[Array, ""]

    def split(self, state):
        return state, None

    def merge(self, y, args):
        return y

    def __call__(self, t, y, args):
        z, r = y
        return self.omega * jnp.stack([-z[1], z[0]]), jnp.zeros_like(r)

    def jacobian(self, t, y, args):
        return sst.DenseJacobian.of(self, t, y, args)

    def project(self, y, args):
        z, r = y
        return z * jnp.sqrt(r / jnp.sum(z**2)), r

    def risk(self, state):
        return 0.5 * jnp.sum(state[0] ** 2)

    def residuals(self, state):
        return state[0]

    @property
    def residual_labels(self):
        return ("x", "y")

    def check_state(self, state):
        return state

    @property
    def eps(self):
        return jnp.asarray(1.0)

    def parameters(self):
        return {"eps": self.eps}

    def with_parameters(self, **values):
        return self


ROTOR_Y0 = (jnp.array([3.0, 4.0]), jnp.asarray(25.0))
# Four turns, loose tolerances: unprojected, the invariant drifts by 1e-8 to 1e-6 relative.
ROTOR_TS = np.linspace(0.0, 8 * np.pi, 17)
ROTOR_TOLERANCES = dict(rtol=1e-6, atol=1e-9)


def _invariant_drift(ys) -> float:
    z, r = ys
    return float(jnp.max(jnp.abs(jnp.sum(z**2, axis=-1) / r - 1)))


@pytest.mark.slow
@pytest.mark.parametrize("solver", [dfx.Tsit5(), dfx.Kvaerno5(), sst.Rodas4()], ids=type)
def test_solve_applies_the_models_projection_with_any_solver(solver):
    model = Rotor(jnp.asarray(1.0))
    traj = sst.solve(model, ROTOR_Y0, ROTOR_TS, solver=solver, **ROTOR_TOLERANCES)
    assert bool(traj.success)
    assert _invariant_drift(traj.ys) < 1e-14
    # Projected, the solution is still the rotation, to the tolerances.
    angle = jnp.asarray(ROTOR_TS)
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    exact = jnp.stack([3 * cos - 4 * sin, 3 * sin + 4 * cos], axis=-1)
    assert max_abs(traj.ys[0], exact) < 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("solver", [dfx.Tsit5(), dfx.Kvaerno5()], ids=type)
def test_without_the_projection_the_invariant_drifts(solver):
    # The same solve by diffrax alone: what the test above would see if sst.solve skipped the
    # projection.
    sol = dfx.diffeqsolve(
        dfx.ODETerm(Rotor(jnp.asarray(1.0))),
        solver,
        ROTOR_TS[0],
        ROTOR_TS[-1],
        None,
        ROTOR_Y0,
        saveat=dfx.SaveAt(ts=ROTOR_TS),
        stepsize_controller=dfx.PIDController(**ROTOR_TOLERANCES),
    )
    assert _invariant_drift(sol.ys) > 1e-9


@pytest.mark.slow
def test_an_identity_projection_leaves_diffrax_solvers_as_they_are():
    # Relaxation keeps AbstractModel's projection (y itself): ProjectedSolver then steps exactly
    # as the solver it wraps, first-same-as-last rates included.
    model, x0 = Relaxation([1.0, 2.0], [0.5, -0.5], 1e-2), jnp.array([1.0, 1.0])
    controller = dfx.PIDController(rtol=1e-8, atol=1e-10)
    ours = sst.solve(model, Point(x0), TS, solver=dfx.Tsit5(), stepsize_controller=controller)
    theirs = dfx.diffeqsolve(
        dfx.ODETerm(model),
        dfx.Tsit5(),
        TS[0],
        TS[-1],
        None,
        x0,
        saveat=dfx.SaveAt(ts=TS),
        stepsize_controller=controller,
    )
    assert int(ours.stats["num_steps"]) == int(theirs.stats["num_steps"])
    np.testing.assert_array_equal(ours.ys.x, theirs.ys)


def test_projected_solver_is_seen_through_and_needs_a_solver():
    solver = ProjectedSolver(dfx.Kvaerno5())
    assert isinstance(solver, dfx.AbstractImplicitSolver)
    assert solver.root_finder is solver.solver.root_finder
    assert not isinstance(ProjectedSolver(dfx.Tsit5()), sst.AbstractRosenbrock)
    with pytest.raises(ValueError, match="ProjectedSolver needs a diffrax solver instance"):
        ProjectedSolver("tsit5")
