"""The staircase of the reference problem: every degree's learning time, eps from 1e-8 down.

Reference problem: target `phi = h1 + h2 + h3 + h4`, activation
`sigma = h0/2 + h1 + h2 + h3 + h4`, mean-field ODE with 32 Gauss-Legendre particles (`a(0)`
uniform on [-1, 1]), `s(0) = 0`, 2001 save times log-spaced from eps/100 to 100, default solver
and settings. For eps = 1e-8, 1e-9, ..., `sst.EPS_MIN` (`--quick`: every fourth decade and
`EPS_MIN`) it prints the steps, the wall time of the solve after compilation, the largest
cumulative rise of the risk `max_t [R(t) - min_{t' <= t} R(t')]` (absolute; R(0) = 2) and the
half-learning time of each degree, with the risk's rounding floor (twice the largest
`MeanFieldODE.risk_rounding_error` along the solve: how far rounding alone can make the computed
risk rise); then the fitted exponents per degree with their local slopes. eps = 1e-32, below the
supported range, is attempted too (the range check bypassed) to show what sets the limit.

RESULT keys: `local_l`, the local slope of degree l's half-learning time between the two smallest
successful eps (degree 1 of `t_1 / log(1/eps)`); `steps_max`, `solve_s_max` and `risk_rise_max`
over the successful solves; `steps_per_decade`, the least-squares slope of steps against
log10(1/eps) over them; `eps_min`, the smallest successful eps; `rise_over_floor_max`, the
largest rise over (1e-13 + rounding floor), at most 1 when every rise is within the bound.
"""

from __future__ import annotations

import argparse
import time
from unittest import mock

import jax

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402
from _common import Record, device_header, print_result  # noqa: E402

import sst  # noqa: E402
import sst._solve  # noqa: E402

DEGREES = (1, 2, 3, 4)
BELOW_RANGE = 1e-32


def reference(eps: float) -> tuple[sst.MeanFieldODE, sst.MeanFieldState, np.ndarray]:
    """The reference problem at `eps`: model, initial particles, save times."""
    problem = sst.Problem(sst.Hermite([0, 1, 1, 1, 1]), sst.Hermite([0.5, 1, 1, 1, 1]), eps)
    ts = np.concatenate([[0.0], np.logspace(np.log10(eps / 100), 2, 2001)])
    return sst.MeanFieldODE(problem), sst.quadrature_particles(32, law="uniform"), ts


def risk_rise(risk: np.ndarray) -> float:
    """`max_t [R(t) - min_{t' <= t} R(t')]` over the finite values."""
    risk = risk[np.isfinite(risk)]
    return float(np.max(risk - np.minimum.accumulate(risk))) if risk.size else float("nan")


def run(eps: float) -> dict:
    model, y0, ts = reference(eps)
    start = time.perf_counter()
    traj = sst.solve(model, y0, ts, throw=False)
    jax.block_until_ready(traj)
    wall = time.perf_counter() - start
    valid = np.asarray(traj.valid)
    floor = jax.vmap(model.risk_rounding_error)(traj.ys)
    return {
        "eps": eps,
        "ok": bool(traj.success),
        "steps": int(traj.stats["num_steps"]),
        "rejected": int(traj.stats["num_rejected_steps"]),
        "wall": wall,
        "rise": risk_rise(np.asarray(traj.risk)),
        "floor": 2 * float(np.max(np.asarray(floor)[valid])) if valid.any() else float("nan"),
        "t_end": float(np.asarray(traj.ts)[valid][-1]) if valid.any() else float("nan"),
        "times": sst.learning_times(traj)[list(DEGREES)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="every fourth decade and EPS_MIN")
    args = parser.parse_args()
    record = Record(__file__, __doc__, "quick" if args.quick else "full")
    print(device_header())
    decades = np.arange(8, int(round(-np.log10(sst.EPS_MIN))) + 1)
    if args.quick:
        decades = np.unique(np.concatenate([decades[::4], decades[-1:]]))
    eps_list = [float(10.0**-d) for d in decades]

    # One compilation serves every eps (eps is an array, the shapes are the same).
    jax.block_until_ready(sst.solve(*reference(eps_list[0]), max_steps=100_000, throw=False))
    rows = [run(eps) for eps in eps_list]
    with mock.patch.object(sst._solve, "EPS_MIN", 0.0):  # attempted below the supported range
        below = run(BELOW_RANGE)

    print(
        "reference problem: phi = h1+h2+h3+h4, sigma = h0/2+h1+h2+h3+h4, 32 Gauss-Legendre "
        "particles, s(0) = 0, default solver (rtol 1e-8, atol 1e-10, max_steps 100000)"
    )
    header = " ".join(f"{'t_' + str(k):>10}" for k in DEGREES)
    print(
        f"{'eps':>7} {'ok':>2} {'steps':>7} {'rej':>5} {'solve s':>7} {'risk rise':>9} "
        f"{'floor':>7} {header}"
    )
    for r in rows + [below]:
        cells = " ".join(f"{t:>10.4g}" for t in r["times"])
        print(
            f"{r['eps']:>7.0e} {'y' if r['ok'] else 'n':>2} {r['steps']:>7} {r['rejected']:>5} "
            f"{r['wall']:>7.2f} {r['rise']:>9.1e} {r['floor']:>7.1e} {cells}"
        )
    print(
        f"eps = {BELOW_RANGE:g} is below sst.EPS_MIN = {sst.EPS_MIN:g}: "
        + (
            f"it succeeds, but the risk rises by {below['rise']:.1e} in rounding"
            if below["ok"]
            else f"failed after {below['steps']} steps at t = {below['t_end']:.3g}"
        )
    )

    ok = [r for r in rows if r["ok"]]
    eps = np.array([r["eps"] for r in ok])
    times = np.full((eps.size, max(DEGREES) + 1), np.nan)
    times[:, list(DEGREES)] = np.array([r["times"] for r in ok])
    fits = sst.fit_scalings(eps, times)
    print(f"{'degree':>6} {'exponent':>9} {'stderr':>7} {'local':>7} {'1/(2l)':>7}  local slopes")
    fields = {}
    for k in DEGREES:
        fit = fits[k]
        local = sst.local_exponents(eps, times[:, k], log_factor=fit.log_factor)
        how = "  (of t/log(1/eps))" if fit.log_factor else ""
        print(
            f"{k:>6} {fit.exponent:>9.3f} {fit.stderr:>7.1e} {local[-1]:>7.3f} "
            f"{fit.heuristic:>7.3f}  {' '.join(f'{x:.3f}' for x in local)}{how}"
        )
        fields[f"local_{k}"] = f"{local[-1]:.3f}"
    steps = np.array([r["steps"] for r in ok])
    slope = np.polyfit(-np.log10(eps), steps, 1)[0]
    print("local: slopes between successive eps, the last between the two smallest")
    fields |= {
        "steps_max": str(int(steps.max())),
        "solve_s_max": f"{max(r['wall'] for r in ok):.2f}",
        "risk_rise_max": f"{max(r['rise'] for r in ok):.1e}",
        "steps_per_decade": f"{slope:.0f}",
        "eps_min": f"{eps.min():g}",
        "rise_over_floor_max": f"{max(r['rise'] / (1e-13 + r['floor']) for r in ok):.2g}",
    }
    print_result(fields, record)


if __name__ == "__main__":
    main()
