"""Multi-index targets: the staircase z1 + z1 z2 + z1 z2 z3 down to eps = 1e-30, a committee, a
leap of two, and what a step of k = 3 costs.

Mean-field model (`sst.MeanFieldODE`), activation `sigma = h0/2 + h1 + h2 + h3`, 64 Gauss-Legendre
particles for `a(0)` uniform on [-1, 1] with `s(0) = 0`, save times `t = 0` and 501 log-spaced
from eps/100 to 1e3, default solver and tolerances (rtol 1e-8, atol 1e-10), eps = 1e-2, 1e-4,
..., 1e-30 (`--quick`: 1e-2, 1e-16, 1e-20, 1e-30). Every sweep is run again at rtol 5e-9,
atol 5e-11: the spread of the exponents between the two is their accuracy.

- Staircase (k = 3): per eps the steps, the wall time of the solve after compilation, the risk's
  largest cumulative rise `max_t [R(t) - min_{t' <= t} R(t')]` against its rounding floor (twice
  the largest `risk_rounding_error` along the solve) and the half-learning time of each
  monomial; then per monomial the exponent of `t ~ eps^p` (least-squares slope of log t
  against log eps) over eps in [1e-10, 1e-2], [1e-20, 1e-10] and [1e-30, 1e-20].
- Committee (k = 2): the target `sigma(z1) + sigma(z2)`, a teacher of two neurons with the
  student's activation, the same sweep and table.
- Leap of two: `z1 + z1 z2 z3`. At `d = infinity` from `s(0) = 0` the residual of `z1 z2 z3`
  never moves (a saddle); `sst.FiniteDimODE` from random networks (`m = 8`, 3 seeds) in
  dimension d gives its learning time against d.
- Step cost: wall time per accepted step at m = 64 for the staircase (k = 3) and for the
  single-index target `h1 + h2 + h3` (k = 1), same activation, eps = 1e-8, measured side by side.
- k = 1 against the hand-written scalar model in `(a, theta, r)` of tests/test_mean_field.py,
  on the same fixed-step Rodas4 grid (16 particles, steps of 1e-3 up to t = 2, eps from 1e-2 to
  1e-6: below, steps of 1e-3 overflow the second layer in both models): the largest risk
  difference.

RESULT keys: `staircase_eps_min`, the smallest eps down to which every staircase solve succeeds
and learns z1, z1 z2, z1 z2 z3; `steps_max` and `solve_s_max` over those solves (targets 20 000
and 2 s on 2 CPU cores); `order_ok`, 1 if z1, z1 z2, z1 z2 z3 are half-learned in this order at
every eps and both tolerances; `exp_<monomial>`, the exponent over [1e-30, 1e-20];
`rise_over_floor_max`, the largest risk rise over (1e-13 + its rounding floor) (at most 1: any
rise is rounding); `leap2_drift`, the largest change of the residual of z1 z2 z3 at d = infinity
up to t = 1e3 (0: it never moves); `leap2_d_power`, the slope of log t against log d of its
learning time at finite d; `step_ratio_k3_k1` (target 3); `k1_max_diff` (target 1e-12).
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import diffrax as dfx
import equinox as eqx
import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from _common import Record, best_of, best_of_each, device_header, print_result  # noqa: E402

import sst  # noqa: E402

# The scalar model of k = 1 is the tests' (tests/test_mean_field.py): imported, not copied.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "tests"))

ACTIVATION = sst.Hermite([0.5, 1.0, 1.0, 1.0])  # h0/2 + h1 + h2 + h3
STAIRCASE = sst.Target.from_monomials({(1, 0, 0): 1.0, (1, 1, 0): 1.0, (1, 1, 1): 1.0})
STEPS = ((1, 0, 0), (1, 1, 0), (1, 1, 1))
# The leap of two, z1 + z1 z2 z3, as coefficients on STAIRCASE's multi-indices: it shares the
# staircase's compiled solve.
LEAP = jnp.array([1.0, 0.0, 1.0])
COMMITTEE = sst.Target.committee(ACTIVATION, k=2)
COMMITTEE_LABELS = ((0, 0), (1, 0), (0, 1), (2, 0), (0, 2), (3, 0), (0, 3))
M = 64
N_SAVES = 501
T_END = 1e3
RTOL, ATOL = 1e-8, 1e-10  # sst.solve's defaults
WINDOWS = ((1e-10, 1e-2), (1e-20, 1e-10), (1e-30, 1e-20))


def save_times(eps: float) -> np.ndarray:
    return np.concatenate([[0.0], np.geomspace(eps / 100, T_END, N_SAVES)])


def name(alpha: tuple[int, ...]) -> str:
    return sst.format_index(alpha).replace(" ", "")


def risk_rise(risk: np.ndarray) -> float:
    """`max_t [R(t) - min_{t' <= t} R(t')]` over the finite values."""
    risk = risk[np.isfinite(risk)]
    return float(np.max(risk - np.minimum.accumulate(risk))) if risk.size else float("nan")


@eqx.filter_jit
def rounding_floor(model: sst.MeanFieldODE, traj: sst.Trajectory) -> jax.Array:
    """Twice the largest `risk_rounding_error` over the valid saves: how far rounding alone
    can make the computed risk rise along the solve."""
    bound = jax.vmap(model.risk_rounding_error)(traj.ys)
    return 2 * jnp.max(jnp.where(traj.valid, bound, 0.0))


def solver_options(rtol: float, atol: float) -> dict:
    # As arrays, the tolerances are traced: both sweeps share one compilation.
    return dict(rtol=jnp.asarray(rtol), atol=jnp.asarray(atol), throw=False)


# ---------------------------------------------------------------------------- sweeps


def sweep(model, y0, eps_list, labels, rtol, atol, repeats) -> list[dict]:
    """One solve per eps (the first call compiles, untimed): steps, best wall time of
    `repeats`, risk rise and rounding floor, half-learning time of each label."""
    rows = []
    for i, eps in enumerate(eps_list):
        member = model.with_parameters(eps=jnp.asarray(eps))
        ts = save_times(eps)
        wall, traj = best_of(
            lambda member=member, ts=ts: sst.solve(member, y0, ts, **solver_options(rtol, atol)),
            repeats=repeats,
            warmup=i == 0,
        )
        times = sst.learning_times(traj, 0.5)
        index = list(traj.residual_labels)
        rows.append(
            {
                "eps": eps,
                "ok": bool(traj.success),
                "steps": int(traj.stats["num_steps"]),
                "wall": wall,
                "rise": risk_rise(np.asarray(traj.risk)),
                "floor": float(rounding_floor(member, traj)),
                "times": {a: float(times[index.index(a)]) for a in labels},
            }
        )
    return rows


def print_sweep(title: str, rows: list[dict], labels) -> None:
    print(title)
    head = " ".join(f"{sst.format_index(a):>10}" for a in labels)
    print(f"{'eps':>7} {'ok':>2} {'steps':>6} {'solve s':>7} {'rise':>8} {'floor':>8} {head}")
    for r in rows:
        cells = " ".join(f"{r['times'][a]:>10.4g}" for a in labels)
        print(
            f"{r['eps']:>7.0e} {'y' if r['ok'] else 'n':>2} {r['steps']:>6} {r['wall']:>7.2f} "
            f"{r['rise']:>8.1e} {r['floor']:>8.1e} {cells}"
        )


def exponent(rows: list[dict], label, window: tuple[float, float]) -> float:
    """Least-squares slope of log t against log eps over the eps of `window` (nan if fewer
    than two learned)."""
    lo, hi = window
    pts = [
        (r["eps"], r["times"][label])
        for r in rows
        if r["ok"]
        and lo * (1 - 1e-9) <= r["eps"] <= hi * (1 + 1e-9)
        and np.isfinite(r["times"][label])
    ]
    if len(pts) < 2:
        return float("nan")
    eps, t = np.array(pts).T
    return float(np.polyfit(np.log(eps), np.log(t), 1)[0])


def print_exponents(rows: list[dict], half: list[dict], labels) -> dict:
    """Exponents per label and window at the default tolerances, with |change| at rtol/2;
    returns those of the last window."""
    print("exponent p of t ~ eps^p per window of eps (|change| at rtol/2 in brackets)")
    print(f"{'monomial':>10} " + " ".join(f"{f'[{lo:.0e}, {hi:.0e}]':>26}" for lo, hi in WINDOWS))
    last = {}
    for a in labels:
        cells = []
        for window in WINDOWS:
            p, p_half = exponent(rows, a, window), exponent(half, a, window)
            cells.append(f"{p:>10.4f} ({abs(p - p_half):.1e})")
        last[a] = (exponent(rows, a, WINDOWS[-1]), exponent(half, a, WINDOWS[-1]))
        print(f"{sst.format_index(a):>10} " + " ".join(f"{c:>26}" for c in cells))
    return last


def staircase(eps_list, repeats) -> tuple[dict, sst.MeanFieldODE, sst.MeanFieldState]:
    model = sst.MeanFieldODE(sst.Problem(STAIRCASE, ACTIVATION, jnp.asarray(eps_list[0])))
    y0 = sst.quadrature_particles(M, law="uniform", k=3)
    start = time.perf_counter()
    rows = sweep(model, y0, eps_list, STEPS, RTOL, ATOL, repeats)
    half = sweep(model, y0, eps_list, STEPS, RTOL / 2, ATOL / 2, 1)
    total = time.perf_counter() - start
    print_sweep(f"staircase z1 + z1 z2 + z1 z2 z3, k = 3, {M} particles, rtol 1e-8:", rows, STEPS)
    print_sweep("the same at rtol 5e-9, atol 5e-11:", half, STEPS)
    print(f"(both sweeps, compilation included: {total:.0f} s)")
    last = print_exponents(rows, half, STEPS)
    in_order = all(
        r["ok"] and r["times"][STEPS[0]] < r["times"][STEPS[1]] < r["times"][STEPS[2]]
        for r in rows + half
    )
    learned = [r["ok"] and all(np.isfinite(list(r["times"].values()))) for r in rows]
    n_ok = learned.index(False) if False in learned else len(rows)
    good = rows[:n_ok]
    fields = {
        "staircase_eps_min": f"{rows[n_ok - 1]['eps']:g}" if n_ok else "nan",
        "steps_max": str(max(r["steps"] for r in good)) if good else "nan",
        "solve_s_max": f"{max(r['wall'] for r in good):.2f}" if good else "nan",
        "order_ok": str(int(in_order)),
        "rise_over_floor_max": f"{max(r['rise'] / (1e-13 + r['floor']) for r in rows):.2g}",
    }
    fields |= {f"exp_{name(a)}": f"{p:.4f}" for a, (p, _) in last.items()}
    return fields, model, y0


def committee(eps_list, repeats) -> None:
    model = sst.MeanFieldODE(sst.Problem(COMMITTEE, ACTIVATION, jnp.asarray(eps_list[0])))
    y0 = sst.quadrature_particles(M, law="uniform", k=2)
    rows = sweep(model, y0, eps_list, COMMITTEE_LABELS, RTOL, ATOL, repeats)
    half = sweep(model, y0, eps_list, COMMITTEE_LABELS, RTOL / 2, ATOL / 2, 1)
    print_sweep(
        f"committee sigma(z1) + sigma(z2), k = 2, {M} particles, rtol 1e-8:", rows, COMMITTEE_LABELS
    )
    print_exponents(rows, half, COMMITTEE_LABELS)


# --------------------------------------------------------------------------- leap two


def leap_two(model, y0, dims, seeds) -> dict:
    """z1 + z1 z2 z3: at d = infinity from s(0) = 0, then at finite d from random networks."""
    drift = 0.0
    j = list(model.residual_labels).index((1, 1, 1))
    for eps in (1e-2, 1e-30):
        member = model.with_parameters(eps=jnp.asarray(eps), target=LEAP)
        traj = sst.solve(member, y0, save_times(eps), **solver_options(RTOL, ATOL))
        r = np.asarray(traj.residuals)[:, j]
        change = float(np.max(np.abs(r - r[0])))
        drift = max(drift, change)
        print(
            f"leap two z1 + z1 z2 z3, d = infinity, s(0) = 0, eps = {eps:g}: "
            f"{'ok' if traj.success else 'FAILED'}, z1 learned at "
            f"{sst.learning_times(traj)[list(traj.residual_labels).index((1, 0, 0))]:.3g}, "
            f"max_t<=1e3 |r_z1z2z3(t) - r_z1z2z3(0)| = {change:.1e}, "
            f"risk {float(traj.risk[0]):.3f} -> {float(traj.risk[-1]):.3f}"
        )

    target = sst.Target.from_monomials({(1, 0, 0): 1.0, (1, 1, 1): 1.0})
    finite = sst.FiniteDimODE(sst.Problem(target, ACTIVATION, 1e-2))
    ts = np.concatenate([[0.0], np.geomspace(1e-4, T_END, 281)])
    labels = list(finite.residual_labels)
    print("leap two at finite d: FiniteDimODE, m = 8, eps = 1e-2, random networks")
    print(f"{'d':>6} {'t(z1)':>9} {'t(z1 z2 z3)':>30}  median")
    medians = []
    for d in dims:
        t1, t3 = [], []
        for seed in range(seeds):
            init = sst.random_init(jax.random.PRNGKey(seed), 8, d, k=3)
            traj = sst.solve(finite, init.state, ts, **solver_options(RTOL, ATOL))
            times = sst.learning_times(traj)
            t1.append(times[labels.index((1, 0, 0))])
            t3.append(times[labels.index((1, 1, 1))] if traj.success else np.nan)
        medians.append(float(np.median(t3)))
        cells = " ".join(f"{t:>9.4g}" for t in t3)
        print(f"{d:>6} {np.median(t1):>9.4g} {cells:>30}  {medians[-1]:.4g}")
    log_d, log_t = np.log(np.array(dims, dtype=float)), np.log(np.array(medians))
    power = float(np.polyfit(log_d, log_t, 1)[0])
    per_log = float(np.polyfit(log_d, np.array(medians), 1)[0])
    local = np.diff(log_t) / np.diff(log_d)
    print(
        f"t(z1 z2 z3) ~ d^{power:.3f} (local slopes {' '.join(f'{x:.3f}' for x in local)}); "
        f"as t = A + B log d: B = {per_log:.3g}"
    )
    return {"leap2_drift": f"{drift:.1e}", "leap2_d_power": f"{power:.3f}"}


# -------------------------------------------------------------------------- step cost


def step_ratio(model3, y0_3) -> float:
    eps = 1e-8
    ts = save_times(eps)
    model3 = model3.with_parameters(eps=jnp.asarray(eps))
    model1 = sst.MeanFieldODE(sst.Problem(sst.Hermite([0.0, 1.0, 1.0, 1.0]), ACTIVATION, eps))
    y0_1 = sst.quadrature_particles(M, law="uniform")
    options = solver_options(RTOL, ATOL)
    walls, (traj3, traj1) = best_of_each(
        lambda: sst.solve(model3, y0_3, ts, **options),
        lambda: sst.solve(model1, y0_1, ts, **options),
        repeats=3,
    )
    per_step = [
        w / int(t.stats["num_accepted_steps"]) for w, t in zip(walls, (traj3, traj1), strict=True)
    ]
    print(f"step cost at m = {M}, eps = {eps:g} (best of 3, after compilation):")
    for k, w, t, p in zip((3, 1), walls, (traj3, traj1), per_step, strict=True):
        steps = int(t.stats["num_accepted_steps"])
        print(f"  k = {k}: {w:.3f} s, {steps} accepted steps, {1e6 * p:.0f} us per step")
    return per_step[0] / per_step[1]


# ------------------------------------------------------------------------------ k = 1


def k1_max_diff(eps_list) -> float:
    """The general model at k = 1 (the Hermite target, and the same target as an sst.Target of
    one direction) against the hand-written scalar model in (a, theta, r) of
    tests/test_mean_field.py, all three on the same fixed-step Rodas4 grid: max |risk
    difference| over the run."""
    from test_mean_field import ScalarMeanField  # noqa: PLC0415

    phi = sst.Hermite([0.0, 1.0, 1.0, 1.0])
    y0 = sst.quadrature_particles(16, law="uniform")
    ts = np.linspace(0.0, 2.0, 21)
    fixed = dict(stepsize_controller=dfx.ConstantStepSize(), dt0=1e-3, max_steps=3000)
    worst = 0.0
    print("k = 1: MeanFieldODE against the scalar model, 16 particles, Rodas4 at steps of 1e-3")
    print(f"{'eps':>7} {'Hermite target':>15} {'Target, k = 1':>14} {'risk(2)':>9}")
    for eps in eps_list:
        scalar = ScalarMeanField(phi.coeffs, ACTIVATION.coeffs, jnp.asarray(eps))
        reference = np.asarray(sst.solve(scalar, y0, ts, **fixed).risk)
        diffs = []
        for target, k in ((phi, None), (sst.Target.from_hermite(phi), 1)):
            model = sst.MeanFieldODE(sst.Problem(target, ACTIVATION, jnp.asarray(eps)))
            start = sst.particles_from_law(y0.a, y0.weights, k=k)
            risk = np.asarray(sst.solve(model, start, ts, **fixed).risk)
            diffs.append(float(np.max(np.abs(risk - reference))))
        worst = float(np.max([worst, *diffs]))  # a NaN (a failed solve) propagates
        print(f"{eps:>7.0e} {diffs[0]:>15.2e} {diffs[1]:>14.2e} {reference[-1]:>9.2e}")
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="4 eps, fewer d, one timing each")
    args = parser.parse_args()
    record = Record(__file__, __doc__, "quick" if args.quick else "full")
    print(device_header())
    start = time.perf_counter()
    if args.quick:
        eps_list = [1e-2, 1e-16, 1e-20, 1e-30]
        dims, seeds, repeats = (16, 256), 1, 1
    else:
        eps_list = [float(10.0**-n) for n in range(2, 31, 2)]
        dims, seeds, repeats = (16, 64, 256, 1024, 4096), 3, 2
    fields, model, y0 = staircase(eps_list, repeats)
    committee(eps_list, repeats)
    fields |= leap_two(model, y0, dims, seeds)
    fields["step_ratio_k3_k1"] = f"{step_ratio(model, y0):.2f}"
    fields["k1_max_diff"] = (
        f"{k1_max_diff([1e-2, 1e-6] if args.quick else [1e-2, 1e-3, 1e-4, 1e-5, 1e-6]):.2g}"
    )
    print(f"total {time.perf_counter() - start:.0f} s")
    print_result(fields, record)


if __name__ == "__main__":
    main()
