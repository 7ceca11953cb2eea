"""Do the ODEs describe the network? Online SGD and population GD against the order-parameter ODEs.

Default problem (docs: model, SGD section): cubic target `phi = h1 + h2 + h3`, activation
`sigma = h1 + h2/2 + h3/2`, `eps = 1e-2`, `a(0) ~ N(0, 1)`, `w_i(0)` uniform on the sphere,
horizon `T = 1` (the plateau, the drop of the degree-1 part and the slower fit of degrees 2-3).
The activation's small higher coefficients keep `E[sigma'^2] = 2.25` (against 6 for
`h1 + h2 + h3`), which divides the SGD noise `eta d a^2 E[(f - y)^2 sigma'^2] / B` accordingly.
For each `(m, d)` one random initial point is shared by online SGD, `FiniteDimODE` (same
`(a, s, Q)`) and `MeanFieldODE` (same `(a, s)`, d = infinity). SGD runs in float32 with batch
`B = 10` at d = 100 and `B = 100` above; its noise level is `eta * d / B` (docs: model,
SGD section).
Its cost is dominated by drawing the `B x d` Gaussian inputs of every step (`T d^2 / (eta d / B)`
normals per run), which is why d = 10000 is run at the largest step only. The ODEs use diffrax
Tsit5 (explicit: at eps = 1e-2 the fast layer's rate U(1)/eps = 150 is not stiff on this
horizon) with rtol 1e-8, atol 1e-10. Population GD (float64) at m = 16, d = 1000 is compared with
`FiniteDimODE` at several step sizes for its convergence order.

Columns: sup-norm error of the risk curve against `FiniteDimODE` and against `MeanFieldODE`, the
max error of the overlaps `s` and `Q` against `FiniteDimODE`, the max relative error of the
half-learning times of the Hermite components, wall time of each method (compilation excluded:
each is run once to compile, then timed), and the cost ratio SGD time / ODE time.

`--quick` runs m = 16, d in {100, 1000} and two step sizes (about a minute); the full grid takes
about 11 minutes on 2 shared cores, 7 of them in the two smallest steps at d = 1000.
`--only-d1000 ETA ...` runs m = 16, d = 1000 alone (same initial point) at other step sizes.
On a GPU either grid adds m = 16, d = 100000 at eta = 1e-3 (an SGD step draws 10^7 normals).
"""

from __future__ import annotations

import argparse
import pathlib
import time

import diffrax as dfx
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from _common import Record, best_of, device_header, print_result, sized

import sst

jax.config.update("jax_enable_x64", True)

PROBLEM = sst.Problem(
    sst.Hermite([0.0, 1.0, 1.0, 1.0]), sst.Hermite([0.0, 1.0, 0.5, 0.5]), eps=1e-2
)
T = 1.0
ODE_OPTIONS = dict(solver=dfx.Tsit5(), rtol=1e-8, atol=1e-10)
# (m, d): (batch, step sizes)
FULL = {
    (16, 100): (10, (1e-3, 1e-4, 1e-5)),
    (16, 1000): (100, (1e-3, 1e-4, 1e-5, 5e-6)),
    (16, 10000): (100, (1e-3,)),
    (256, 100): (10, (1e-3, 1e-4, 1e-5)),
    (256, 1000): (100, (1e-3, 1e-4)),
    (256, 10000): (100, (1e-3,)),
}
QUICK = {(16, 100): (10, (1e-3, 1e-4)), (16, 1000): (100, (1e-3, 1e-4))}
GPU_EXTRA = {(16, 100_000): (100, (1e-3,))}
GD_ETAS = (1e-3, 5e-4, 2.5e-4, 1.25e-4)
TOLERANCE = 0.02


def _learning_time_error(run, ode) -> float:
    t_run = sst.learning_times(run, 0.5)
    t_ode = sst.learning_times(ode, 0.5)
    known = np.isfinite(t_ode)
    return float(np.max(np.abs(t_run[known] - t_ode[known]) / t_ode[known]))


def _fit_slope(x, y) -> float:
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])


def compare(m: int, d: int, batch: int, etas, ts, seed: int, progress: bool):
    """SGD at each eta, FiniteDimODE and MeanFieldODE from one initial point of size (m, d)."""
    init = sst.random_init(jax.random.PRNGKey(seed), m, d)
    t_ode, ode = best_of(
        lambda: sst.solve(sst.FiniteDimODE(PROBLEM), init.state, ts, **ODE_OPTIONS), repeats=3
    )
    t_mf, mf = best_of(
        lambda: sst.solve(sst.MeanFieldODE(PROBLEM), init.mean_field(), ts, **ODE_OPTIONS),
        repeats=3,
    )
    rows, runs = [], []
    for eta in etas:
        key = jax.random.PRNGKey(seed + 1)

        def sgd(ts=ts, eta=eta, key=key):
            return sst.train(
                PROBLEM,
                init,
                ts,
                eta=eta,
                estimator=sst.OnlineSGD(batch),
                key=key,
                dtype=jnp.float32,
                progress=progress,
            )

        # One step compiles the same step function; then the whole run is timed.
        sst.train(
            PROBLEM,
            init,
            jnp.array([0.0, eta]),
            eta=eta,
            estimator=sst.OnlineSGD(batch),
            key=key,
            dtype=jnp.float32,
        )
        start = time.perf_counter()
        run = sgd()
        jax.block_until_ready(run.risk)
        t_sgd = time.perf_counter() - start
        runs.append(run)
        rows.append(
            dict(
                m=m,
                d=d,
                eta=eta,
                B=batch,
                noise=eta * d / batch,
                err=float(jnp.max(jnp.abs(run.risk - ode.risk))),
                err_mf=float(jnp.max(jnp.abs(run.risk - mf.risk))),
                s_err=float(jnp.max(jnp.abs(run.ys.s - ode.ys.s))),
                Q_err=float(jnp.max(jnp.abs(run.ys.Q - ode.ys.Q))),
                t_half_err=_learning_time_error(run, ode),
                t_sgd=t_sgd,
                t_ode=t_ode,
                t_mf=t_mf,
                valid=bool(jnp.all(run.valid)),
            )
        )
    return init, ode, mf, runs, rows


def gd_convergence(ts):
    """Population GD against FiniteDimODE at m = 16, d = 1000: sup error of (risk, a, s, Q)."""
    init = sst.random_init(jax.random.PRNGKey(7), 16, 1000)
    ode = sst.solve(sst.FiniteDimODE(PROBLEM), init.state, ts, **ODE_OPTIONS)
    errors, risk_errors = [], []
    for eta in GD_ETAS:
        run = sst.train(PROBLEM, init, ts, eta=eta)
        risk_errors.append(float(jnp.max(jnp.abs(run.risk - ode.risk))))
        errors.append(
            max(
                risk_errors[-1],
                float(jnp.max(jnp.abs(run.ys.s - ode.ys.s))),
                float(jnp.max(jnp.abs(run.ys.Q - ode.ys.Q))),
                float(jnp.max(jnp.abs(run.ys.a - ode.ys.a))),
            )
        )
    return np.array(errors), np.array(risk_errors)


def _convergence_figure(rows, gd_errors):
    fig, (ax_sgd, ax_gd) = plt.subplots(1, 2, figsize=(10, 4))
    for m, d in sorted({(r["m"], r["d"]) for r in rows}):
        sel = [r for r in rows if (r["m"], r["d"]) == (m, d)]
        ax_sgd.loglog(
            [r["noise"] for r in sel], [r["err"] for r in sel], "o-", label=f"m={m}, d={d}"
        )
    ax_sgd.axhline(TOLERANCE, color="k", ls=":", lw=1)
    ax_sgd.set_xlabel("SGD noise level eta d / B")
    ax_sgd.set_ylabel("sup_t |R_SGD - R_FiniteDimODE|")
    ax_sgd.legend(fontsize=8)
    ax_gd.loglog(GD_ETAS, gd_errors, "o-", label="population GD")
    ax_gd.loglog(GD_ETAS, gd_errors[-1] * np.array(GD_ETAS) / GD_ETAS[-1], "k:", label="slope 1")
    ax_gd.set_xlabel("step eta")
    ax_gd.set_ylabel("max error of (risk, a, s, Q)")
    ax_gd.legend(fontsize=8)
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small grid, about a minute")
    parser.add_argument("--out", default="out/benchmarks")
    parser.add_argument(
        "--only-d1000",
        type=float,
        nargs="+",
        metavar="ETA",
        help="run only m=16, d=1000 (B=100) at these step sizes, e.g. smaller ones than the grid's",
    )
    args = parser.parse_args(argv)
    record = Record(__file__, __doc__, "quick" if args.quick else "full")
    print(device_header())
    grid = (QUICK if args.quick else FULL) | sized({}, GPU_EXTRA)
    if args.only_d1000:
        grid = {(16, 1000): (100, tuple(args.only_d1000))}
    ts = jnp.linspace(0.0, T, 101)

    rows, overlay = [], None
    for (m, d), (batch, etas) in grid.items():
        seed = list(FULL | GPU_EXTRA).index((m, d))  # the same initial point whichever grid runs
        init, ode, mf, runs, new = compare(m, d, batch, etas, ts, seed, progress=not args.quick)
        rows += new
        if (m, d) == (16, 1000):
            overlay = (ode, mf, runs)

    header = (
        f"{'m':>4} {'d':>6} {'eta':>7} {'B':>5} {'eta*d/B':>8} {'sup|dR|':>8} {'vs MF':>7} "
        f"{'max|ds|':>8} {'max|dQ|':>8} {'dt_half':>8} {'SGD s':>8} {'ODE s':>8} "
        f"{'MF s':>7} {'SGD/ODE':>8}"
    )
    print(
        f"Online SGD vs FiniteDimODE / MeanFieldODE, eps=1e-2, T={T}, ODEs: Tsit5 rtol=1e-8 "
        "atol=1e-10, SGD float32"
    )
    print(header)
    for r in rows:
        flag = "" if r["valid"] else "  DIVERGED"
        print(
            f"{r['m']:>4} {r['d']:>6} {r['eta']:>7.0e} {r['B']:>5} {r['noise']:>8.0e} "
            f"{r['err']:>8.4f} {r['err_mf']:>7.3f} {r['s_err']:>8.4f} {r['Q_err']:>8.4f} "
            f"{r['t_half_err']:>8.3f} {r['t_sgd']:>8.2f} {r['t_ode']:>8.3f} {r['t_mf']:>7.3f} "
            f"{r['t_sgd'] / r['t_ode']:>8.0f}{flag}"
        )

    # Error trend: fit err ~ (eta d / B)^p over the step sizes at each (m, d), and pooled.
    pooled = (
        _fit_slope([r["noise"] for r in rows], [r["err"] for r in rows])
        if len(rows) > 1
        else float("nan")
    )
    rates = {}
    for m, d in grid:
        sel = [r for r in rows if (r["m"], r["d"]) == (m, d)]
        if len(sel) >= 2:
            rates[(m, d)] = _fit_slope([r["eta"] for r in sel], [r["err"] for r in sel])
    print(
        "fitted rate p of sup|dR| ~ (eta d / B)^p: "
        + ", ".join(f"m={m} d={d}: {p:.2f}" for (m, d), p in rates.items())
        + f"; pooled over all runs: {pooled:.2f}"
    )

    d1000 = sorted((r for r in rows if (r["m"], r["d"]) == (16, 1000)), key=lambda r: r["eta"])
    sgd_err = d1000[0]["err"]
    # Equal accuracy: the cheapest SGD run within TOLERANCE of the ODE, against the ODE's time.
    agreeing = [r for r in d1000 if r["err"] <= TOLERANCE]
    reference = min(agreeing, key=lambda r: r["t_sgd"]) if agreeing else d1000[0]
    speedup = reference["t_sgd"] / reference["t_ode"]
    print(
        f"equal accuracy (sup|dR| <= {TOLERANCE}) at m=16 d=1000: SGD eta={reference['eta']:g} "
        f"{reference['t_sgd']:.2f} s vs FiniteDimODE {reference['t_ode']:.4f} s"
        + ("" if agreeing else " (no SGD run reached the tolerance: smallest eta used)")
    )

    gd_errors, gd_risk_errors = gd_convergence(ts)
    gd_order = _fit_slope(GD_ETAS, gd_errors)
    pairs = zip(GD_ETAS, gd_errors, gd_risk_errors, strict=True)
    print(
        "population GD vs FiniteDimODE (m=16, d=1000), max error of (risk, a, s, Q) [of the risk]: "
        + ", ".join(f"eta={e:g}: {x:.2e} [{y:.1e}]" for e, x, y in pairs)
        + f"; fitted order {gd_order:.2f}"
    )

    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ode, mf, runs = overlay
    fig = sst.plot_ode_vs_network(
        ode,
        runs,
        mean_field=mf,
        title="m=16, d=1000, eps=1e-2, B=100; ODEs Tsit5 rtol=1e-8 atol=1e-10",
    )
    fig.savefig(out / "ode_vs_particles.png", dpi=130)
    fig = _convergence_figure(rows, gd_errors)
    fig.savefig(out / "ode_vs_particles_convergence.png", dpi=130)
    print(f"wrote {out / 'ode_vs_particles.png'} and {out / 'ode_vs_particles_convergence.png'}")
    # SGD throughput at m = 16: steps per second of the longest run (smallest eta) at each d.
    longest = {r["d"]: r for r in sorted(rows, key=lambda r: -r["eta"]) if r["m"] == 16}
    print_result(
        {
            "sgd_sup_err_d1000": f"{sgd_err:.4g}",
            "ode_speedup": f"{speedup:.3g}",
            "gd_order": f"{gd_order:.3g}",
            "sgd_eta_rate_d1000": f"{rates.get((16, 1000), float('nan')):.3g}",
            "sgd_rate_pooled": f"{pooled:.3g}",
            "sgd_learning_time_err_d1000": f"{d1000[0]['t_half_err']:.3g}",
        }
        | {f"sgd_steps_per_s_d{d}": f"{T / r['eta'] / r['t_sgd']:.0f}" for d, r in longest.items()},
        record,
    )


if __name__ == "__main__":
    main()
