"""Stiff solving from eps = 1e-1 to 1e-12: sst.solve against SciPy and off-the-shelf diffrax.

Problem: cubic target phi = h0/2 + h1 + h2 + h3, activation sigma = h0 + h1 + h2 + h3, reduced
ODE with 16 normal quadrature particles, t in [0, 100], 161 save times (0 and a log grid from
1e-14), rtol 1e-8, atol 1e-10. Every method integrates the same dynamics (sst's solver
coordinates (a, x, r), s = sin x, r the Hermite residuals; SciPy also in (a, s)).
Errors are measured against a reference solve with 1000x tighter tolerances (rtol 1e-11,
atol 1e-13) and dense LU linear algebra.

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
