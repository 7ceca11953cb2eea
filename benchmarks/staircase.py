"""The staircase of the reference problem: every degree's learning time, eps from 1e-8 down.

Reference problem: target `phi = h1 + h2 + h3 + h4`, activation
`sigma = h0/2 + h1 + h2 + h3 + h4`, mean-field ODE with 32 Gauss-Legendre particles (`a(0)`
uniform on [-1, 1]), `s(0) = 0`, 2001 save times log-spaced from eps/100 to 100, default solver
and settings, with the solver's dense output (`dense=True`). For eps = 1e-8, 1e-9, ...,
`sst.EPS_MIN` (`--quick`: every fourth decade and `EPS_MIN`) it prints the steps, the wall time
of the solve after compilation, the largest cumulative rise of the risk
`max_t [R(t) - min_{t' <= t} R(t')]` (absolute; R(0) = 2) and the half-learning time of each
degree (when `r_l^2` has fallen to half its initial value, located on the dense output), with the
risk's rounding floor (twice the largest `MeanFieldODE.risk_rounding_error` along the solve: how
far rounding alone can make the computed risk rise); then the fitted exponents per degree with
their local slopes, and two fits over eps <= 1e-18 of `log t_l` against `log eps`: a power law
`t = C eps^a`, and one with a logarithmic correction `t = C eps^a log(1/eps)^b` (degree 1 of
`t_1 / log(1/eps)` in both), each with the rms of its residuals in `log t`. eps = 1e-32, below
the supported range, is attempted too (the range check bypassed) to show what sets the limit.
Before the sweep, eps = 1e-12 is solved on 201 and on 2001 save times: the learning times on the
dense output agree whatever the save grid, those interpolated between saves do not.
`--figure` instead solves eps = `EPS_MIN` alone and writes `docs/figures/staircase.png`.

RESULT keys: `local_l`, the local slope of degree l's half-learning time between the two smallest
successful eps (degree 1 of `t_1 / log(1/eps)`); `a_l`, `b_l`, the exponents of the fit with a
logarithmic correction for degrees 3 and 4; `grid_201_vs_2001`, the largest relative difference of
`t_1..t_4` at 1e-12 between the two save grids, and `between_saves_2001`, that of the times
interpolated between the 2001 saves from those on the dense output; `steps_max`, `solve_s_max`
and `risk_rise_max` over the successful solves; `steps_per_decade`, the least-squares slope of
steps against log10(1/eps) over them; `eps_min`, the smallest successful eps;
`rise_over_floor_max`, the largest rise over (1e-13 + rounding floor), at most 1 when every rise
is within the bound.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
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


FIT_EPS_MAX = 1e-18  # the fits with and without a log correction: every degree has separated
FIGURE = pathlib.Path(__file__).resolve().parent.parent / "docs" / "figures" / "staircase.png"


def reference(
    eps: float, saves: int = 2001
) -> tuple[sst.MeanFieldODE, sst.MeanFieldState, np.ndarray]:
    """The reference problem at `eps`: model, initial particles, save times."""
    problem = sst.Problem(sst.Hermite([0, 1, 1, 1, 1]), sst.Hermite([0.5, 1, 1, 1, 1]), eps)
    ts = np.concatenate([[0.0], np.logspace(np.log10(eps / 100), 2, saves)])
    return sst.MeanFieldODE(problem), sst.quadrature_particles(32, law="uniform"), ts


def risk_rise(risk: np.ndarray) -> float:
    """`max_t [R(t) - min_{t' <= t} R(t')]` over the finite values."""
    risk = risk[np.isfinite(risk)]
    return float(np.max(risk - np.minimum.accumulate(risk))) if risk.size else float("nan")


def run(eps: float) -> dict:
    model, y0, ts = reference(eps)
    start = time.perf_counter()
    traj = sst.solve(model, y0, ts, throw=False, dense=True)
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


def save_grids() -> dict[str, str]:
    """t_1..t_4 at eps = 1e-12 on 201 and on 2001 saves, on the dense output and between saves."""
    eps = 1e-12
    times = {}
    for saves in (201, 2001):
        model, y0, ts = reference(eps, saves)
        traj = sst.solve(model, y0, ts, dense=True)
        times[saves] = sst.learning_times(traj)[list(DEGREES)]
        between = sst.learning_times(dataclasses.replace(traj, dense=None))[list(DEGREES)]
        times[saves, "between"] = between
        print(
            f"eps = 1e-12, {saves:>4} saves, {int(traj.stats['num_steps'])} steps: t_1..t_4 = "
            + " ".join(f"{t:.10g}" for t in times[saves])
            + "\n    interpolated between saves: "
            + " ".join(f"{t:.10g}" for t in between)
        )
    grids = np.max(np.abs(times[201] / times[2001] - 1))
    between = np.max(np.abs(times[2001, "between"] / times[2001] - 1))
    print(
        f"largest relative difference of t_1..t_4, 201 against 2001 saves: {grids:.1e} (dense "
        f"output); between the 2001 saves against the dense output: {between:.1e}"
    )
    return {"grid_201_vs_2001": f"{grids:.1e}", "between_saves_2001": f"{between:.1e}"}


def log_corrected_fits(eps: np.ndarray, times: np.ndarray) -> dict[str, str]:
    """Over eps <= FIT_EPS_MAX, per degree: `log t = c + a log eps` and
    `log t = c + a log eps + b log log(1/eps)` by least squares, with the rms of the residuals."""
    keep = eps <= FIT_EPS_MAX
    x, loglog = np.log(eps[keep]), np.log(np.log(1 / eps[keep]))
    print(
        f"fits over eps = {eps[keep].max():.0e} .. {eps[keep].min():.0e} ({keep.sum()} points): "
        "t = C eps^a, and t = C eps^a log(1/eps)^b (degree 1: of t_1 / log(1/eps))"
    )
    print(f"{'degree':>6} {'a':>8} {'rms':>8} {'a':>8} {'b':>8} {'rms':>8}  (rms of log t)")
    fields = {}
    for k in DEGREES:
        y = np.log(times[keep, k]) - (loglog if k == 1 else 0.0)
        power = np.stack([np.ones_like(x), x], axis=1)
        corrected = np.stack([np.ones_like(x), x, loglog], axis=1)
        (p, *_), (q, *_) = (np.linalg.lstsq(m, y, rcond=None) for m in (power, corrected))
        rms_p = np.sqrt(np.mean((y - power @ p) ** 2))
        rms_q = np.sqrt(np.mean((y - corrected @ q) ** 2))
        print(f"{k:>6} {p[1]:>8.4f} {rms_p:>8.1e} {q[1]:>8.4f} {q[2]:>8.3f} {rms_q:>8.1e}")
        if k in (3, 4):
            fields |= {f"a_{k}": f"{q[1]:.4f}", f"b_{k}": f"{q[2]:.3f}"}
    return fields


def figure() -> None:
    """The staircase at EPS_MIN: risk and squared residuals, drops shaded, rounding floor."""
    model, y0, _ = reference(sst.EPS_MIN)
    # From 1e-16, two decades before degree 1 is learned: the first 16 decades are one plateau.
    ts = np.concatenate([[0.0], np.logspace(-16, 2, 2001)])
    traj = sst.solve(model, y0, ts, dense=True)
    fig = sst.plot_risk(traj, model=model)
    fig.savefig(FIGURE, dpi=120)
    steps = f"{int(traj.stats['num_steps'])} steps"
    times = sst.learning_times(traj)[list(DEGREES)]
    print(f"wrote {FIGURE}: eps = {sst.EPS_MIN:g}, {steps}, t_1..t_4 = {times}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="every fourth decade and EPS_MIN")
    parser.add_argument("--figure", action="store_true", help=f"only write {FIGURE.name}")
    args = parser.parse_args()
    if args.figure:
        figure()
        return
    record = Record(__file__, __doc__, "quick" if args.quick else "full")
    print(device_header())
    decades = np.arange(8, int(round(-np.log10(sst.EPS_MIN))) + 1)
    if args.quick:
        decades = np.unique(np.concatenate([decades[::4], decades[-1:]]))
    eps_list = [float(10.0**-d) for d in decades]

    grids = save_grids()
    # One compilation serves every eps (eps is an array, the shapes are the same).
    jax.block_until_ready(sst.solve(*reference(eps_list[0]), throw=False, dense=True))
    rows = [run(eps) for eps in eps_list]
    with mock.patch.object(sst._solve, "EPS_MIN", 0.0):  # attempted below the supported range
        below = run(BELOW_RANGE)

    print(
        "reference problem: phi = h1+h2+h3+h4, sigma = h0/2+h1+h2+h3+h4, 32 Gauss-Legendre "
        "particles, s(0) = 0, default solver (rtol 1e-8, atol 1e-10, max_steps 100000), dense "
        "output; t_l: r_l^2 halved"
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
    fields |= log_corrected_fits(eps, times) | grids
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
