"""Stiff solving from eps = 1e-1 to 1e-12 (1e-30): sst.solve against SciPy, diffrax and CVODE.

Problem: cubic target phi = h0/2 + h1 + h2 + h3, activation sigma = h0 + h1 + h2 + h3, reduced
ODE with 16 normal quadrature particles, t in [0, 100], 161 save times (0 and a log grid from
1e-14), rtol 1e-8, atol 1e-10. Every method integrates the same dynamics (sst's solver
coordinates (a, x, r), s = sin x, r the Hermite residuals; SciPy also in (a, s)).
Errors are measured against a reference solve with 1000x tighter tolerances (rtol 1e-11,
atol 1e-13) and dense LU linear algebra. SUNDIALS CVODE (scikit-sundae, BDF with the model's
closed-form Jacobian) runs from eps = 1e-1 to 1e-30 (quick: 1e-2, 1e-6, 1e-12), at the same
tolerances as sst and 100x tighter ones; its speedups are ratios of CPU times.

Wall times are after compilation, best of a few repeats, measured side by side in one run;
SciPy runs get a time budget and are reported as lower bounds when they exceed it. The many
particle solves use 10 000 sampled particles (quick 500); on a GPU 1 000 000 (quick 100 000).

    python benchmarks/stiff.py [--quick]
"""

from __future__ import annotations

import argparse
import time

import diffrax as dfx
import jax
import jax.numpy as jnp
import numpy as np
from _common import Record, best_of, device_header, print_result, sized
from jax.flatten_util import ravel_pytree
from scipy.integrate import solve_ivp

import sst

jax.config.update("jax_enable_x64", True)

TARGET = [0.5, 1.0, 1.0, 1.0]
ACTIVATION = [1.0, 1.0, 1.0, 1.0]
ACTIVATION_K8 = [1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.3, 0.3, 0.2]
RTOL, ATOL = 1e-8, 1e-10
TS = jnp.concatenate([jnp.zeros(1), jnp.logspace(-14, 2, 161)])


def problem(eps: float, activation=ACTIVATION) -> sst.Problem:
    return sst.Problem(sst.Hermite(TARGET), sst.Hermite(activation), eps=eps)


def errors(traj: sst.Trajectory, ref: sst.Trajectory) -> tuple[float, float]:
    """Sup error of the risk curve, and of `a` relative to max |a| of the reference."""
    risk = float(jnp.max(jnp.abs(traj.risk - ref.risk)))
    a = float(jnp.max(jnp.abs(traj.ys.a - ref.ys.a)) / jnp.max(jnp.abs(ref.ys.a)))
    return risk, a


def run_sst(eps_list, y0, repeats):
    rows, compile_s = [], None
    for eps in eps_list:
        model = sst.MeanFieldODE(problem(eps))

        def call(model=model):
            return sst.solve(model, y0, TS, rtol=RTOL, atol=ATOL)

        if compile_s is None:
            start = time.perf_counter()
            jax.block_until_ready(call())
            first = time.perf_counter() - start
            wall, _ = best_of(call, repeats, warmup=False)
            compile_s = first - wall
        wall, traj = best_of(call, repeats, warmup=False)
        rows.append((eps, wall, traj, reference(eps, y0)))
    return rows, compile_s


class _Budget(Exception):
    pass


def run_scipy(
    method: str, eps: float, y0, ref: sst.Trajectory, budget: float, coords: str, exact_jac: bool
):
    """SciPy solve_ivp on jitted JAX callables, with the exact Jacobian or SciPy's finite
    differences (`exact_jac=False`, what an off-the-shelf call does).

    `coords="x"`: sst's solver coordinates (a, x, r). `coords="s"`: the equations as
    the docs' model page writes them, in (a, s).
    """
    model = sst.MeanFieldODE(problem(eps))
    y, weights = model.split(y0)
    if coords == "s":
        y = (y0.a, y0.s)

        def field(y):
            rate = model.rate(0.0, sst.MeanFieldState(y[0], y[1], weights))
            return rate.a, rate.s

        def to_state(ys):
            return sst.MeanFieldState(ys[0], ys[1], jnp.broadcast_to(weights, ys[0].shape))
    else:

        def field(y):
            return model(0.0, y, weights)

        def to_state(ys):
            return model.merge(ys, weights)

    flat0, unravel = ravel_pytree(y)

    def rate(f):
        return ravel_pytree(field(unravel(f)))[0]

    f_jit, jac_jit = jax.jit(rate), jax.jit(jax.jacfwd(rate))
    f_jit(flat0).block_until_ready()
    jac_jit(flat0).block_until_ready()
    deadline = time.perf_counter() + budget

    def fun(t, f):
        if time.perf_counter() > deadline:
            raise _Budget
        return np.asarray(f_jit(f))

    def jac(t, f):
        return np.asarray(jac_jit(f))

    start = time.perf_counter()
    try:
        sol = solve_ivp(
            fun,
            (0.0, 100.0),
            np.asarray(flat0),
            method=method,
            t_eval=np.asarray(TS),
            rtol=RTOL,
            atol=ATOL,
            jac=jac if exact_jac else None,
        )
    except _Budget:
        return dict(wall=time.perf_counter() - start, status="budget", nfev=None, err=None)
    wall = time.perf_counter() - start
    if not sol.success:
        return dict(wall=wall, status="failed", nfev=sol.nfev, err=None)
    ys = jax.vmap(unravel)(jnp.asarray(sol.y.T))
    risk = jax.vmap(model.risk)(to_state(ys))
    if not bool(jnp.all(jnp.isfinite(risk))):
        return dict(wall=wall, status="nan", nfev=sol.nfev, err=None)
    err = None if ref is None else float(jnp.max(jnp.abs(risk - ref.risk)))
    return dict(wall=wall, status="ok", nfev=sol.nfev, err=err)


class _CvodeProblem:
    """sst's vector field in its solver coordinates `(a, x, r)` for SUNDIALS CVODE.

    The right-hand side and the Jacobian are jitted JAX functions of the flat coordinates; the
    Jacobian is the model's closed-form `BorderedJacobian` written out as a dense matrix (the
    layout of `ravel_pytree`: `a`, `x`, then `r`), LU-factored by CVODE's dense solver. CVODE
    can neither project `a` onto the integrated residuals nor use sst's error norm: its
    tolerance is per component, `atol` on `a` and `x` and `atol + rtol |phi|` on the residuals
    (sst's absolute tolerance on them), with `rtol` on all.
    """

    def __init__(self, eps: float, y0: sst.MeanFieldState):
        self.model = model = sst.MeanFieldODE(problem(eps))
        y, weights = model.split(y0)
        self.flat0, unravel = ravel_pytree(y)
        m, n = weights.shape[0], y[2].shape[0]
        self.sizes = (m, n)

        def rate(flat):
            return ravel_pytree(model(0.0, unravel(flat), weights))[0]

        def dense_jacobian(flat):
            jac = model.jacobian(0.0, unravel(flat), weights)
            p = jac.D.shape[0]
            blocks = jnp.einsum("ijl,lq->iljq", jac.D, jnp.eye(m, dtype=flat.dtype))
            top = jnp.concatenate(
                [blocks.reshape(p * m, p * m), jnp.swapaxes(jac.B, 1, 2).reshape(p * m, n)],
                axis=1,
            )
            bottom = jnp.concatenate([jnp.swapaxes(jac.E, 0, 1).reshape(n, p * m), -jac.M], axis=1)
            return jnp.concatenate([top, bottom])

        def trajectory(ys_flat):
            states = model.merge(jax.vmap(unravel)(ys_flat), weights)
            return states, jax.vmap(model.risk)(states), jax.vmap(model.residuals)(states)

        self.rate, self.jacobian = jax.jit(rate), jax.jit(dense_jacobian)
        self.autodiff_jacobian = jax.jit(jax.jacfwd(rate))
        self._trajectory = jax.jit(trajectory)
        self.phi_norm = float(jnp.sqrt(model.problem.target.norm2))
        jax.block_until_ready((self.rate(self.flat0), self.jacobian(self.flat0)))

    def jacobian_mismatch(self) -> float:
        """Largest difference of the closed-form and the autodiff Jacobian at a perturbed
        state, relative to the largest entry."""
        flat = self.flat0 + 0.1 * jax.random.normal(jax.random.PRNGKey(0), self.flat0.shape)
        exact, auto = self.jacobian(flat), self.autodiff_jacobian(flat)
        return float(jnp.max(jnp.abs(exact - auto)) / jnp.max(jnp.abs(auto)))

    def solver(self, rtol: float, atol: float, deadline: list[float]):
        from sksundae.cvode import CVODE

        m, n = self.sizes
        atol_vec = np.concatenate([np.full(2 * m, atol), np.full(n, atol + rtol * self.phi_norm)])
        rate, jacobian = self.rate, self.jacobian

        def rhsfn(t, y, yp):
            if time.perf_counter() > deadline[0]:
                raise _Budget
            yp[:] = rate(y)

        def jacfn(t, y, yp, jj):
            jj[:, :] = jacobian(y)

        return CVODE(
            rhsfn,
            method="BDF",
            rtol=rtol,
            atol=atol_vec,
            linsolver="dense",
            jacfn=jacfn,
            max_num_steps=100_000,
        )

    def to_trajectory(self, t, y) -> sst.Trajectory:
        """CVODE's output at the save times as an `sst.Trajectory` (risk and residuals computed
        from the states as `sst.solve` computes them; rows after a failure NaN, not valid)."""
        ys = np.full((TS.shape[0], self.flat0.shape[0]), np.nan)
        ys[: len(t)] = y
        valid = jnp.arange(TS.shape[0]) < len(t)
        states, risk, residuals = self._trajectory(jnp.asarray(ys))
        return sst.Trajectory(
            ts=TS,
            ys=states,
            risk=risk,
            residuals=residuals,
            valid=valid,
            result=sst.RESULTS.successful,
            stats={},
            residual_labels=tuple(self.model.residual_labels),
        )


def cvode_steps(solver, y0: np.ndarray) -> tuple[int | None, int]:
    """CVODE's internal steps for the solve `solver.solve(TS, y0)` makes (scikit-sundae reports
    no step count): the same integration one step at a time (the first step aimed at `TS[1]`,
    as `solve` aims it, stopping at `TS[-1]`), interpolating onto each save time. Returns
    (steps, right-hand-side evaluations), steps `None` on failure."""
    ts = np.asarray(TS)
    solver.init_step(ts[0], y0)
    last, steps, res = ts[0], 0, None
    for tout in ts[1:]:
        while last < tout:
            res = solver.step(tout, "onestep", float(ts[-1]))
            if not res.success:
                return None, res.nfev
            if res.t > last:
                steps, last = steps + 1, res.t
        res = solver.step(tout, "normal", float(ts[-1]))
    return steps, res.nfev


def learning_time_error(traj: sst.Trajectory, ref: sst.Trajectory) -> float:
    """Largest relative error of the learning times (`sst.learning_times`, half of each
    `r_l^2` lost) against the reference; inf if one is learned and the other not."""
    t, t_ref = sst.learning_times(traj), sst.learning_times(ref)
    if np.any(np.isfinite(t) != np.isfinite(t_ref)):
        return float("inf")
    ok = np.isfinite(t_ref)
    return float(np.max(np.abs(t[ok] - t_ref[ok]) / t_ref[ok], initial=0.0))


def run_cvode_vs_sst(eps: float, y0, ref: sst.Trajectory, repeats: int, budget: float, tols):
    """CVODE at each of `tols` (rtol, atol) and sst.solve at RTOL, ATOL, timed side by side
    (interleaved, best of `repeats`, CPU and wall time); a CVODE run past `budget` seconds is
    stopped and reported as a lower bound. Returns {name: row}."""
    cv = _CvodeProblem(eps, y0)
    flat0, ts = np.asarray(cv.flat0), np.asarray(TS)
    deadline = [float("inf")]
    runs = {}

    def sst_call():
        return jax.block_until_ready(sst.solve(cv.model, y0, TS, rtol=RTOL, atol=ATOL, throw=False))

    runs["sst"] = dict(call=sst_call)
    for rtol, atol in tols:
        solver = cv.solver(rtol, atol, deadline)
        # Untimed: counts the steps, and allocates CVODE's memory before the timed solves.
        deadline[0] = time.perf_counter() + budget
        try:
            steps, step_nfev = cvode_steps(solver, flat0)
        except _Budget:
            steps, step_nfev = None, None

        def cvode_call(solver=solver):
            deadline[0] = time.perf_counter() + budget
            return solver.solve(ts, flat0)

        runs[f"cvode {rtol:.0e}"] = dict(call=cvode_call, steps=steps, step_nfev=step_nfev)
    sst_call()  # compiled for the first eps only; the rest is warm-up
    for row in runs.values():
        row.update(cpu=float("inf"), wall=float("inf"), budget=False)
    for _ in range(repeats):
        for row in runs.values():
            if row["budget"]:
                continue
            wall0, cpu0 = time.perf_counter(), time.process_time()
            try:
                row["out"] = row["call"]()
            except _Budget:
                row["budget"] = True
            row["cpu"] = min(row["cpu"], time.process_time() - cpu0)
            row["wall"] = min(row["wall"], time.perf_counter() - wall0)
    for name, row in runs.items():
        if row["budget"]:
            row.update(status="budget", traj=None)
            continue
        out = row["out"]
        if name == "sst":
            traj = out
            row.update(
                steps=int(traj.stats["num_accepted_steps"]),
                rejected=int(traj.stats["num_rejected_steps"]),
                status="ok" if bool(traj.success) else str(traj.result),
            )
        else:
            traj = cv.to_trajectory(out.t, out.y)
            finite = bool(jnp.all(jnp.isfinite(traj.risk)))
            status = "ok" if out.success and finite else ("nan" if out.success else "failed")
            row.update(nfev=out.nfev, njev=out.njev, status=status)
            # The step count is that of the same integration only if it evaluated f as often.
            row["same_run"] = row["step_nfev"] == out.nfev
            if not out.success:
                row["message"] = f"{out.message.strip()} (t = {out.t[-1]:.3g})"
        row["traj"] = traj
        if row["status"] == "ok":
            row["risk_err"], row["a_err"] = errors(traj, ref)
            row["t_err"] = learning_time_error(traj, ref)
    return runs, cv.jacobian_mismatch()


def reference(eps: float, y0) -> sst.Trajectory:
    """1000x tighter tolerances, and dense LU solves instead of the structured (Schur) solves."""
    return sst.solve(
        sst.WithDenseJacobian(sst.MeanFieldODE(problem(eps))),
        y0,
        TS,
        rtol=1e-11,
        atol=1e-13,
        max_steps=400_000,
    )


def sst_time(eps: float, y0) -> float:
    model = sst.MeanFieldODE(problem(eps))
    return best_of(lambda: sst.solve(model, y0, TS, rtol=RTOL, atol=ATOL), 2, warmup=False)[0]


def run_kvaerno5(eps: float, y0, max_steps: int):
    """Off-the-shelf diffrax: Kvaerno5 with its default chord root finder and a PID controller."""
    model = sst.MeanFieldODE(problem(eps))

    def call():
        return sst.solve(
            model,
            y0,
            TS,
            solver=dfx.Kvaerno5(),
            rtol=RTOL,
            atol=ATOL,
            max_steps=max_steps,
            throw=False,
        )

    start = time.perf_counter()
    jax.block_until_ready(call())
    first = time.perf_counter() - start
    wall, traj = best_of(call, 1, warmup=False)
    return dict(wall=wall, compile=first - wall, traj=traj)


def run_many_particles(m: int, eps: float, activation) -> tuple[float, sst.Trajectory]:
    """m sampled particles (a(0) ~ N(0, 1), s(0) = 0): Schur solves cost O(m K^2)."""
    a0 = jax.random.normal(jax.random.PRNGKey(0), (m,))
    y0 = sst.MeanFieldState(a0, jnp.zeros(m))
    ts = jnp.concatenate([jnp.zeros(1), jnp.logspace(-14, 2, 41)])
    model = sst.MeanFieldODE(problem(eps, activation))

    def call():
        return sst.solve(model, y0, ts, rtol=RTOL, atol=ATOL)

    return best_of(call, 1)  # the first, untimed call compiles


def dense_output_rows(y0, refs: dict) -> float:
    """Stepping onto the save times (the default) against free steps and the 3rd-order dense
    output, at two tolerances: steps and saved-risk error. Returns the ratio of free steps to
    clipped steps at the free tolerance that matches the default's error (rtol 1e-9 vs 1e-8)."""
    print("save times: stepped onto (default) vs dense output between free steps")
    print(
        f"{'eps':>8} {'rtol':>6} {'clip_steps':>10} {'clip_err':>9} "
        f"{'free_steps':>10} {'free_err':>9}"
    )
    ratios = []
    for eps in (1e-3, 1e-6):
        model = sst.MeanFieldODE(problem(eps))
        ref = refs[eps] if eps in refs else reference(eps, y0)
        steps = {}
        for rtol in (1e-8, 1e-9):
            clip = sst.solve(model, y0, TS, rtol=rtol, atol=rtol / 100)
            free = sst.solve(
                model,
                y0,
                TS,
                stepsize_controller=dfx.PIDController(rtol=rtol, atol=rtol / 100),
            )
            steps[rtol] = (int(clip.stats["num_steps"]), int(free.stats["num_steps"]))
            print(
                f"{eps:8.0e} {rtol:6.0e} {steps[rtol][0]:10d} {errors(clip, ref)[0]:9.1e} "
                f"{steps[rtol][1]:10d} {errors(free, ref)[0]:9.1e}"
            )
        ratios.append(steps[1e-9][1] / steps[1e-8][0])
    print()
    return float(np.mean(ratios))


def cvode_rows(y0, refs: dict, eps_list, tight_eps, repeats: int, budget: float) -> dict:
    """The CVODE table: per eps, sst.solve and CVODE at the same tolerances (and at `tight_eps`
    also CVODE at 100x tighter ones), side by side. Returns the CPU-time ratios CVODE / sst at
    the same tolerances and the smallest eps where CVODE succeeded."""
    tight = (RTOL / 100, ATOL / 100)
    print(
        "SUNDIALS CVODE (scikit-sundae: BDF, dense LU, closed-form Jacobian, jitted callbacks) "
        f"and sst.solve side by side, best of {repeats}; CVODE budget {budget:.0f} s per solve"
    )
    print(
        "CVODE: the same vector field in (a, x, r), no projection; per-component atol (atol on "
        "a and x, atol + rtol |phi| on r), rtol on all. cvode/sst: ratio of CPU (wall) times."
    )
    print(
        "steps: accepted steps (CVODE's counted in a separate one-step run of the same "
        "integration; '?' where its f evaluations differ); rej: rejected steps (sst only: "
        "scikit-sundae does not report CVODE's)."
    )
    print(
        f"{'eps':>8} {'solver':>11} {'cpu_s':>7} {'wall_s':>7} {'steps':>6} {'rej':>4} {'nfev':>6} "
        f"{'njev':>5} {'risk_err':>9} {'a_relerr':>9} {'t_relerr':>9} {'cvode/sst':>14} "
        f"{'status':>7}"
    )
    ratios, succeeded, mismatch = {}, [], 0.0
    for eps in eps_list:
        ref = refs[eps] if eps in refs else reference(eps, y0)
        tols = [(RTOL, ATOL)] + ([tight] if eps in tight_eps else [])
        runs, jac_err = run_cvode_vs_sst(eps, y0, ref, repeats, budget, tols)
        mismatch = max(mismatch, jac_err)
        own = runs["sst"]
        for name, row in runs.items():
            bound = ">" if row["status"] == "budget" else ""
            steps = "-" if row.get("steps") is None else str(row["steps"])
            steps += "" if row.get("same_run", True) else "?"
            rejected = str(row["rejected"]) if "rejected" in row else "-"
            nfev = str(row["nfev"]) if "nfev" in row else "-"
            njev = str(row["njev"]) if "njev" in row else "-"
            errs = [
                f"{row[k]:9.1e}" if k in row else f"{'-':>9}"
                for k in ("risk_err", "a_err", "t_err")
            ]
            ratio = ""
            if name != "sst":
                cpu_ratio = row["cpu"] / own["cpu"]
                ratio = f"{bound}{cpu_ratio:.1f}x ({bound}{row['wall'] / own['wall']:.1f}x)"
                if name == f"cvode {RTOL:.0e}":
                    ratios[eps] = f"{bound}{cpu_ratio:.1f}"
                    if row["status"] == "ok":
                        succeeded.append(eps)
            print(
                f"{eps:8.0e} {name:>11} {bound}{row['cpu']:6.3f} {bound}{row['wall']:6.3f} "
                f"{steps:>6} {rejected:>4} {nfev:>6} {njev:>5} {' '.join(errs)} {ratio:>14} "
                f"{row['status']:>7}"
            )
            if "message" in row:
                print(f"{'':>8} {'':>11} CVODE: {row['message']}")
    print(
        f"closed-form dense Jacobian against jax.jacfwd of the vector field: largest relative "
        f"difference {mismatch:.1e}"
    )
    print(
        "t_relerr: largest relative error of the learning times (half of each r_l^2 lost, "
        "sst.learning_times on the save times); errors against the reference solve.\n"
    )
    return dict(ratios=ratios, eps_min=min(succeeded) if succeeded else None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer eps, small budgets (~1 min)")
    args = parser.parse_args()
    record = Record(__file__, __doc__, "quick" if args.quick else "full")
    quick = args.quick
    eps_list = [1e-2, 1e-6, 1e-12] if quick else [10.0**-k for k in range(1, 13)]
    scipy_eps = [1e-2, 1e-6] if quick else [1e-2, 1e-4, 1e-6, 1e-8, 1e-10, 1e-12]
    budget = 3.0 if quick else 60.0
    kvaerno_eps = [1e-2, 1e-6] if quick else [1e-2, 1e-4, 1e-6, 1e-8]
    m_large = sized(500, 100_000) if quick else sized(10_000, 1_000_000)
    y0 = sst.quadrature_particles(16, "normal")

    print(device_header())
    print(__doc__.split("\n\n")[1].replace("\n", " "), "\n")
    rows, compile_s = run_sst(eps_list, y0, repeats=2 if quick else 3)
    print(f"sst.solve (Rodas4, Schur), compile {compile_s:.2f} s")
    print(f"{'eps':>8} {'wall_s':>8} {'steps':>6} {'rejected':>8} {'risk_err':>9} {'a_relerr':>9}")
    refs = {}
    for eps, wall, traj, ref in rows:
        refs[eps] = ref
        r_err, a_err = errors(traj, ref)
        print(
            f"{eps:8.0e} {wall:8.3f} {int(traj.stats['num_steps']):6d} "
            f"{int(traj.stats['num_rejected_steps']):8d} "
            f"{r_err:9.1e} {a_err:9.1e}"
        )
    steps = np.array([int(r[2].stats["num_steps"]) for r in rows])
    slope = np.polyfit(np.log10(1 / np.array(eps_list)), steps, 1)[0]
    print(f"steps ~ {slope:.0f} per decade of 1/eps (log-linear fit)\n")

    print(f"SciPy solve_ivp, budget {budget:.0f} s per solve (> marks a lower bound)")
    print(
        f"{'method':>6} {'coords':>6} {'jacobian':>8} {'eps':>8} {'wall_s':>9} {'nfev':>9} "
        f"{'risk_err':>9} {'vs sst':>9} {'status':>7}"
    )
    sst_wall = {eps: wall for eps, wall, _, _ in rows}
    speedups = {}
    configs = [
        ("BDF", "s", False),
        ("BDF", "s", True),
        ("Radau", "s", True),
        ("LSODA", "s", True),
        ("BDF", "x", True),
    ]
    for method, coords, exact_jac in configs:
        for eps in scipy_eps:
            ref = refs[eps] if eps in refs else reference(eps, y0)
            own = sst_wall[eps] if eps in sst_wall else sst_time(eps, y0)
            res = run_scipy(method, eps, y0, ref, budget, coords, exact_jac)
            bound = ">" if res["status"] == "budget" else ""
            ratio = res["wall"] / own
            nfev = "-" if res["nfev"] is None else str(res["nfev"])
            err = "-" if res["err"] is None else f"{res['err']:.1e}"
            jac_name = "exact" if exact_jac else "fd"
            print(
                f"{method:>6} {coords:>6} {jac_name:>8} {eps:8.0e} {bound}{res['wall']:8.2f} "
                f"{nfev:>9} {err:>9} {bound}{ratio:8.1f}x {res['status']:>7}"
            )
            speedups[(method, coords, exact_jac, eps)] = f"{bound}{ratio:.1f}"
    print()

    print("diffrax Kvaerno5 off the shelf (VeryChord root finder, PID controller)")
    print(f"{'eps':>8} {'wall_s':>8} {'compile_s':>9} {'steps':>7} {'rejected':>8} {'success':>7}")
    for i, eps in enumerate(kvaerno_eps):
        res = run_kvaerno5(eps, y0, max_steps=4096 if quick else 20_000)
        traj = res["traj"]
        compiled = f"{res['compile']:9.2f}" if i == 0 else f"{'(cached)':>9}"
        print(
            f"{eps:8.0e} {res['wall']:8.2f} {compiled} {int(traj.stats['num_steps']):7d} "
            f"{int(traj.stats['num_rejected_steps']):8d} {bool(traj.success)!s:>7}"
        )
    print()

    cvode_eps = [1e-2, 1e-6, 1e-12] if quick else [10.0**-k for k in range(1, 31)]
    tight_eps = (1e-6,) if quick else (1e-6, 1e-12, 1e-20, 1e-30)
    cvode = cvode_rows(y0, refs, cvode_eps, tight_eps, repeats=2 if quick else 3, budget=budget)

    m_mid = 200 if quick else 1000
    y_mid = sst.MeanFieldState(jax.random.normal(jax.random.PRNGKey(1), (m_mid,)), jnp.zeros(m_mid))
    own = sst_time(1e-6, y_mid)
    res = run_scipy("BDF", 1e-6, y_mid, None, budget, "s", True)
    bound = ">" if res["status"] == "budget" else ""
    print(
        f"m = {m_mid} sampled particles, eps = 1e-6: sst.solve {own:.2f} s, SciPy BDF (exact dense "
        f"Jacobian) {bound}{res['wall']:.2f} s [{res['status']}]: {bound}{res['wall'] / own:.1f}x"
    )
    large = {}
    for label, activation in (("K3", ACTIVATION), ("K8", ACTIVATION_K8)):
        wall_m, traj_m = run_many_particles(m_large, 1e-6, activation)
        large[label] = wall_m
        print(
            f"m = {m_large} sampled particles, activation of degree {label[1]}, eps = 1e-6, "
            f"[0, 100], 41 saves: {wall_m:.2f} s, {int(traj_m.stats['num_steps'])} steps "
            f"({int(traj_m.stats['num_rejected_steps'])} rejected), "
            f"final risk {float(traj_m.risk[-1]):.2e}"
        )
    dense_ratio = dense_output_rows(y0, refs)
    max_solve = max(wall for _, wall, _, _ in rows)
    tag = "m1e4" if m_large == 10_000 else f"m{m_large}"
    print_result(
        {
            "max_solve_s": f"{max_solve:.3f}",
            "max_steps": steps.max(),
            "speedup_vs_scipy_bdf_1e-6": speedups[("BDF", "s", False, 1e-6)],
            "speedup_vs_scipy_bdf_exactjac_1e-6": speedups[("BDF", "s", True, 1e-6)],
            "speedup_vs_cvode_1e-6": cvode["ratios"][1e-6],
            "speedup_vs_cvode_1e-12": cvode["ratios"][1e-12],
            "cvode_eps_min": "none" if cvode["eps_min"] is None else f"{cvode['eps_min']:.0e}",
            f"{tag}_s": f"{large['K8']:.2f}",
            f"{tag}_k3_s": f"{large['K3']:.2f}",
            f"speedup_vs_scipy_bdf_m{m_mid}": f"{bound}{res['wall'] / own:.1f}",
            "compile_s": f"{compile_s:.2f}",
            "steps_per_decade": f"{slope:.0f}",
            "free_vs_clip_steps": f"{dense_ratio:.2f}",
            "quick": quick,
        },
        record,
    )


if __name__ == "__main__":
    main()
