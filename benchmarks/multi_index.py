"""Multi-index targets: correctness against independent truth, the
staircase, and the cost of mean-field solves.

Keys of the `RESULT k1_max_diff=.. weight_space_err=.. mc_risk_z=.. sgd_sup_err=..
staircase_order=.. solve_s_max=..` line (then `backend` and `device`, as every benchmark's):

- `k1_max_diff`: max |risk| difference over the run between MultiIndexMeanFieldODE at k = 1 and
  MeanFieldODE (16 Gauss-Legendre particles, eps 1e-2 .. 1e-8 (`--quick`: 1e-2, 1e-5), Rodas4
  at the default tolerances); target <= 1e-12. The finite-d pair (m = 8, d = 20, Tsit5) is
  printed next to the spread of FiniteDimODE against itself with every rate perturbed by one
  ulp: its trajectories amplify rounding (about 1e4 over the run), so "to rounding" there means
  that spread, not 1e-12.
- `weight_space_err`: the finite-d multi-index ODE (Dopri8, rtol 1e-12) against explicit Euler
  on the projected gradient flow in weight space (d = 12, m = 4, k = 2, T = 1), whose kernel
  `V` is computed by Gauss-Hermite quadrature of `phi(z) sigma(s . z + sqrt(1 - |s|^2) xi)`,
  independently of sst's formula: max error of `(a, s, Q)` at the finest Euler step; the table
  shows it halving with the step (first order).
- `mc_risk_z`: |risk of MultiIndexFiniteDimODE - Monte Carlo mean of the network's loss| in
  standard errors (k = 3 staircase, d = 20, m = 8; at the initial network and after population
  gradient descent), the larger of the two; target within 5.
- `sgd_sup_err`: online SGD (float32, batch 100) against the finite-d ODE from the same
  initial point, sup-norm error of the risk over [0, T], at the smallest step affordable here:
  target `z1 + z1 z2`, m = 16, d = 1000, eps = 1e-2, T = 1, step 1e-4 (noise level
  eta d / B = 1e-3; `--quick`: step 5e-4).
- `staircase_order`: 1 if `z1`, `z1 z2`, `z1 z2 z3` are half-learned in this order at every eps
  tried (mean-field, activation `h0/2 + h1 + h2 + h3`, 64 Gauss-Legendre particles for
  `a(0)` uniform on [-1, 1], `s(0) = 0`, eps 1e-2 .. 1e-8), else 0.
- `solve_s_max`: the worst over eps of the wall time of those mean-field solves (m = 64, k = 3,
  K = 3, t up to 1e3; after compilation, best of 3); target under 1 s.

Figures go to out/benchmarks/multi_index/, the result file to docs/benchmarks/multi_index.json
(`benchmarks/_common.py`). On 2 shared cores `--quick` takes about 1.5 minutes
and the full run 2 minutes (half of it compilation).
"""

from __future__ import annotations

import argparse
import math
import pathlib
import time

import diffrax as dfx
import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from _common import Record, best_of, device_header, print_result  # noqa: E402

import sst  # noqa: E402

jax.config.update("jax_enable_x64", True)

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "out" / "benchmarks" / "multi_index"
ACTIVATION = sst.Hermite([0.5, 1.0, 1.0, 1.0])  # h0/2 + h1 + h2 + h3
STAIRCASE = sst.MultiIndexTarget.from_monomials({(1, 0, 0): 1.0, (1, 1, 0): 1.0, (1, 1, 1): 1.0})
STEPS = ((1, 0, 0), (1, 1, 0), (1, 1, 1))


def _log_grid(t_min: float, t_max: float, n: int) -> jax.Array:
    return jnp.concatenate([jnp.zeros(1), jnp.geomspace(t_min, t_max, n)])


# ----------------------------------------------------------------------------- k = 1


def k1_max_diff(eps_list) -> float:
    phi = sst.Hermite([0.5, 1.0, 1.0, 1.0])
    y0 = sst.quadrature_particles(16, "uniform")
    multi_y0 = sst.MultiIndexMeanFieldState(y0.a, y0.s[:, None], y0.weights)
    target = sst.MultiIndexTarget.from_hermite(phi)
    worst = 0.0
    print(f"{'k = 1':>10} {'eps':>8} {'max |dR|':>10} {'steps':>7} {'steps k=1':>9}")
    for eps in eps_list:
        ts = _log_grid(eps / 100, 100.0, 200)
        single = sst.solve(sst.MeanFieldODE(sst.Problem(phi, ACTIVATION, eps)), y0, ts)
        model = sst.MultiIndexMeanFieldODE(sst.MultiIndexProblem(target, ACTIVATION, eps))
        multi = sst.solve(model, multi_y0, ts)
        diff = float(jnp.max(jnp.abs(multi.risk - single.risk)))
        worst = max(worst, diff)
        steps = (int(single.stats["num_steps"]), int(multi.stats["num_steps"]))
        print(f"{'mean-field':>10} {eps:>8.0e} {diff:>10.2e} {steps[0]:>7} {steps[1]:>9}")
    init = sst.random_init(jax.random.PRNGKey(0), 8, 20)
    ts = _log_grid(1e-4, 10.0, 100)
    options = dict(solver=dfx.Tsit5(), rtol=1e-10, atol=1e-12)
    single = sst.solve(
        sst.FiniteDimODE(sst.Problem(phi, ACTIVATION, 0.1)), init.state, ts, **options
    )
    state = sst.MultiIndexFiniteDimState(init.state.a, init.state.s[:, None], init.state.Q)
    model = sst.MultiIndexFiniteDimODE(sst.MultiIndexProblem(target, ACTIVATION, 0.1))
    multi = sst.solve(model, state, ts, **options)
    diff = float(jnp.max(jnp.abs(multi.risk - single.risk)))
    ulp = sst.solve(_Perturbed(sst.Problem(phi, ACTIVATION, 0.1)), init.state, ts, **options)
    spread = float(jnp.max(jnp.abs(ulp.risk - single.risk)))
    print(f"{'finite-d':>10} {0.1:>8.0e} {diff:>10.2e} (FiniteDimODE, rates +1 ulp: {spread:.2e})")
    return worst


class _Perturbed(sst.FiniteDimODE):
    """FiniteDimODE with every rate moved by one ulp: the size of rounding along a run."""

    def __call__(self, t, y, args=None):
        rates = super().__call__(t, y, args)
        return jax.tree_util.tree_map(lambda r: jnp.nextafter(r, jnp.inf), rates)


# ------------------------------------------------------------------ weight-space flow


def _quadrature_V(problem, s, nodes=6):
    """`E[phi(z) sigma(s . z + sqrt(1 - |s|^2) xi)]` by tensor Gauss-Hermite quadrature."""
    x, w = np.polynomial.hermite_e.hermegauss(nodes)
    w = w / w.sum()
    k = s.shape[-1]
    mesh = np.meshgrid(*([x] * (k + 1)), indexing="ij")
    grid = np.stack(mesh, -1).reshape(-1, k + 1)
    weight = np.prod(np.stack(np.meshgrid(*([w] * (k + 1)), indexing="ij"), -1), -1).ravel()
    z, xi = jnp.asarray(grid[:, :k]), jnp.asarray(grid[:, k])
    proj = z @ s.T + jnp.sqrt(1.0 - jnp.sum(s**2, -1)) * xi[:, None]
    return jnp.asarray(weight) @ (problem.target(z)[:, None] * problem.activation(proj))


def _weight_space_flow(problem, a, W, U, T, n_steps):
    m = a.shape[0]

    def risk(a, W):
        V = _quadrature_V(problem, W @ U)
        kernel = problem.activation.kernel(W @ W.T)
        return 0.5 * problem.target.norm2 - jnp.sum(a * V) / m + 0.5 * a @ kernel @ a / m**2

    grad = jax.grad(risk, argnums=(0, 1))
    h = T / n_steps

    def step(carry, _):
        a, W = carry
        ga, gW = grad(a, W)
        gW = gW - jnp.sum(gW * W, axis=1, keepdims=True) * W
        W = W - h * m * gW
        return (a - h * m * ga / problem.eps, W / jnp.linalg.norm(W, axis=1, keepdims=True)), None

    return jax.jit(lambda a, W: jax.lax.scan(step, (a, W), None, length=n_steps)[0])(a, W)


def weight_space_err(steps) -> float:
    target = sst.MultiIndexTarget.from_monomials({(0, 0): 0.3, (1, 0): 1.0, (1, 1): 1.0})
    problem = sst.MultiIndexProblem(target, ACTIVATION, eps=0.5)
    init = sst.random_init_multi_index(jax.random.PRNGKey(3), m=4, d=12, k=2)
    T = 1.0
    ode = sst.solve(
        sst.MultiIndexFiniteDimODE(problem),
        init.state,
        jnp.array([0.0, T]),
        solver=dfx.Dopri8(),
        rtol=1e-12,
        atol=1e-12,
    )
    end = ode.state(-1)
    print(f"{'Euler steps':>11} {'max error (a, s, Q)':>20} {'ratio':>6}")
    errors = []
    for n in steps:
        a, W = _weight_space_flow(problem, init.state.a, init.W, init.U, T, n)
        err = max(
            float(jnp.max(jnp.abs(a - end.a))),
            float(jnp.max(jnp.abs(W @ init.U - end.s))),
            float(jnp.max(jnp.abs(W @ W.T - end.Q))),
        )
        ratio = errors[-1] / err if errors else math.nan
        errors.append(err)
        print(f"{n:>11} {err:>20.3e} {ratio:>6.2f}")
    return errors[-1]


# ----------------------------------------------------------------------- Monte Carlo


def mc_risk_z(n_samples: int) -> float:
    problem = sst.MultiIndexProblem(STAIRCASE, ACTIVATION, eps=0.1, noise=0.1)
    init = sst.random_init_multi_index(jax.random.PRNGKey(5), m=8, d=20, k=3, a_scale=2.0)
    run = sst.train(problem, init, jnp.array([0.0, 2.0]), eta=2e-3)
    trained = sst.MultiIndexRandomInit.from_weights(run.ys.a[-1], run.training.W, init.U)
    model = sst.MultiIndexFiniteDimODE(problem)
    worst = 0.0
    for name, net in (("initial", init), ("trained", trained)):
        kx, kn = jax.random.split(jax.random.PRNGKey(6))
        chunks = []
        for key in jax.random.split(kx, n_samples // 100_000):
            x = jax.random.normal(key, (100_000, 20))
            y = STAIRCASE(x @ net.U) + 0.1 * jax.random.normal(
                jax.random.fold_in(kn, 0), (100_000,)
            )
            f = jnp.mean(net.state.a * ACTIVATION(x @ net.W.T), axis=1)
            chunks.append(0.5 * (y - f) ** 2)
        loss = jnp.concatenate(chunks)
        mean, stderr = float(jnp.mean(loss)), float(jnp.std(loss)) / math.sqrt(loss.size)
        risk = float(model.risk(net.state))
        z = abs(risk - mean) / stderr
        worst = max(worst, z)
        print(
            f"Monte Carlo ({name}): risk {risk:.6f}, sampled {mean:.6f} +- {stderr:.1e}, z={z:.2f}"
        )
    return worst


# ------------------------------------------------------------------------ online SGD


def sgd_sup_err(d: int, eta: float) -> float:
    target = sst.MultiIndexTarget.from_monomials({(1, 0): 1.0, (1, 1): 1.0})
    problem = sst.MultiIndexProblem(target, ACTIVATION, eps=1e-2)
    init = sst.random_init_multi_index(jax.random.PRNGKey(7), m=16, d=d, k=2)
    ts = jnp.linspace(0.0, 1.0, 21)
    start = time.perf_counter()
    ode = sst.solve(
        sst.MultiIndexFiniteDimODE(problem), init.state, ts, solver=dfx.Tsit5(), rtol=1e-8
    )
    ode_s = time.perf_counter() - start
    start = time.perf_counter()
    run = sst.train(
        problem,
        init,
        ts,
        eta=eta,
        estimator=sst.OnlineSGD(100),
        key=jax.random.key(0),
        dtype=jnp.float32,
    )
    sgd_s = time.perf_counter() - start
    err = float(jnp.max(jnp.abs(run.risk - ode.risk)))
    print(
        f"online SGD, d={d}, m=16, B=100, eta={eta:g} (eta d/B = {eta * d / 100:g}): sup |dR| "
        f"{err:.4f} (risk {float(ode.risk[0]):.3f} -> {float(ode.risk[-1]):.3f}); SGD {sgd_s:.1f} "
        f"s, ODE {ode_s:.1f} s"
    )
    return err


# ------------------------------------------------------------------------- staircase


def staircase(eps_list, m: int = 64) -> tuple[int, float]:
    y0 = sst.multi_index_particles(m, 3, law="uniform")
    ts = _log_grid(1e-10, 1e3, 300)
    model = sst.MultiIndexMeanFieldODE(sst.MultiIndexProblem(STAIRCASE, ACTIVATION, 1e-2))
    solve = jax.jit(lambda model: sst.solve(model, y0, ts, throw=False))
    start = time.perf_counter()
    jax.block_until_ready(solve(model))
    compile_s = time.perf_counter() - start
    print(f"staircase, {m} particles, k = 3: compile + first solve {compile_s:.1f} s")
    print(
        f"{'eps':>8} {'wall s':>7} {'steps':>6} {'ok':>3} "
        + " ".join(f"{sst.format_index(a):>10}" for a in STEPS)
    )
    in_order, worst = 1, 0.0
    times = {a: [] for a in STEPS}
    last = None
    for eps in eps_list:
        member = model.with_parameters(eps=jnp.asarray(eps))
        wall, traj = best_of(lambda member=member: solve(member), repeats=3, warmup=False)
        worst = max(worst, wall)
        by_label = sst.learning_times_by_label(traj)
        t = [by_label.get(a, math.nan) for a in STEPS]
        for a, ta in zip(STEPS, t, strict=True):
            times[a].append(ta)
        ok = bool(traj.success) and all(np.isfinite(t)) and t[0] < t[1] < t[2]
        in_order = in_order if ok else 0
        print(
            f"{eps:>8.0e} {wall:>7.2f} {int(traj.stats['num_steps']):>6} "
            f"{'y' if traj.success else 'n':>3} " + " ".join(f"{x:>10.4g}" for x in t)
        )
        last = traj
    fig = sst.plot_monomials(
        last, labels=[(0, 0, 0), *STEPS], title=f"staircase, eps={eps_list[-1]:g}"
    )
    fig.savefig(OUT / "staircase_monomials.png", dpi=120)
    plt.close(fig)
    fig = sst.plot_learning_times(np.asarray(eps_list), times)
    fig.savefig(OUT / "staircase_learning_times.png", dpi=120)
    plt.close(fig)
    return in_order, worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer eps, a larger SGD step")
    args = parser.parse_args()
    record = Record(__file__, __doc__, "quick" if args.quick else "full")
    print(device_header())
    OUT.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    k1 = k1_max_diff([1e-2, 1e-5] if args.quick else [1e-2, 1e-4, 1e-6, 1e-8])
    ws = weight_space_err((100, 200, 400) if args.quick else (200, 400, 800, 1600))
    z = mc_risk_z(400_000 if args.quick else 2_000_000)
    sgd = sgd_sup_err(1000, 5e-4 if args.quick else 1e-4)
    order, solve_s = staircase(
        [1e-2, 1e-4, 1e-6, 1e-8] if args.quick else [1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8]
    )
    print(f"total {time.perf_counter() - start:.0f} s; figures in {OUT}")
    fields = {
        "k1_max_diff": f"{k1:.3g}",
        "weight_space_err": f"{ws:.3g}",
        "mc_risk_z": f"{z:.2f}",
        "sgd_sup_err": f"{sgd:.4g}",
        "staircase_order": str(order),
        "solve_s_max": f"{solve_s:.3f}",
    }
    print_result(fields, record)


if __name__ == "__main__":
    main()
