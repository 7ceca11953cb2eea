"""Throughput of batched solves against a Python loop, on 1, 2 and 4 host devices; gradient cost.

Setup: `n` initialisations of 64 sampled particles (a ~ N(0, 1), overlaps of
random unit vectors in d = 1000), eps = 1e-3, target h0/2 + h1 + h2 + h3, activation
h0 + h1 + h2 + h3, saves at 0 and 40 log-spaced times in [1e-4, 10], default solver, rtol 1e-8.

- `loop`: `sst.solve` called once per initialisation (compiled once, warm).
- `batch`: `sst.solve_batch` over all of them (one jit-compiled vmapped call, warm).
- `devices k`: the same batch split over k forced host devices (`XLA_FLAGS`, one subprocess each).
- `mixed eps`: eps log-uniform in [1e-4, 1e-1], grouped by stiffness (default) vs one plain vmap.
- `grad`: `jax.grad` of the risk at t = 10 with respect to eps, the activation's coefficients and
  the initial state (adjoint `sst.grad_adjoint()`, and diffrax's default for comparison), against
  the forward solve of the same function (all jitted, warm, best of 5, interleaved); then the
  same ratio with 256, 1024 and 4096 particles, one initialisation each (not in `--quick`, which
  also skips diffrax's default adjoint).

Prints tables and `RESULT batch_speedup=... grad_cost_ratio=... devices4_speedup=...`.
`--quick` shrinks the batch (scaled throughput) to finish in about a minute. On a GPU the batch is
16384 (quick 1024) and the gradient is also timed at 65536 particles (quick: 64 and 4096); the
forced host device rows keep the CPU's batch.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
from _common import Record, best_of_each, device_header, print_result, sized

import sst

jax.config.update("jax_enable_x64", True)

TS = jnp.concatenate([jnp.zeros(1), jnp.logspace(-4, 1, 40)])
TARGET = sst.Hermite([0.5, 1.0, 1.0, 1.0])
ACTIVATION = sst.Hermite([1.0, 1.0, 1.0, 1.0])


def model(eps: float = 1e-3) -> sst.MeanFieldODE:
    return sst.MeanFieldODE(sst.Problem(TARGET, ACTIVATION, eps))


def initialisations(n: int, m: int, d: int = 1000) -> sst.MeanFieldState:
    keys = jax.random.split(jax.random.PRNGKey(0), n)
    return jax.vmap(lambda k: sst.random_init(k, m, d).mean_field())(keys)


def member(tree, i):
    return jax.tree_util.tree_map(lambda x: x[i], tree)


def device_throughput(n: int, m: int) -> dict:
    """Run inside a subprocess whose XLA_FLAGS fixed the device count."""
    y0s = initialisations(n, m)
    mesh = sst.batch_mesh()
    (seconds,), _ = best_of_each(
        lambda: sst.solve_batch(model(), y0s, TS, mesh=mesh).risk, repeats=1
    )
    return {"devices": len(jax.devices()), "seconds": seconds, "per_second": n / seconds}


def run_devices(k: int, n: int, m: int) -> dict:
    # Host devices even on a machine with an accelerator, where the flag would not apply.
    env = dict(
        os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={k}", JAX_PLATFORMS="cpu"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root
    out = subprocess.run(
        [sys.executable, __file__, "--devices-worker", str(n), str(m)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def final_risk(theta, y0, adjoint=None):
    eps, sigma = theta
    problem = sst.Problem(TARGET, sst.Hermite(sigma), eps)
    return sst.solve(sst.MeanFieldODE(problem), y0, TS, adjoint=adjoint).risk[-1]


FORWARD = jax.jit(final_risk)
GRADIENT = jax.jit(jax.grad(final_risk, argnums=(0, 1)), static_argnums=2)


def grad_cost(m: int, with_default: bool) -> tuple[int, float, float, float]:
    """Best-of-5 times of the forward solve of the final risk, of its gradient with respect to
    (eps, sigma, a(0), s(0)) with `sst.grad_adjoint()`, and (if `with_default`, else NaN) with
    diffrax's default checkpoints, for one initialisation of `m` particles."""
    theta = (jnp.asarray(1e-3), ACTIVATION.coeffs)
    y0 = member(initialisations(1, m), 0)
    fns = [lambda: FORWARD(theta, y0), lambda: GRADIENT(theta, y0, sst.grad_adjoint())]
    if with_default:
        fns.append(lambda: GRADIENT(theta, y0, None))
    times, _ = best_of_each(*fns, repeats=5)
    return (m, times[0], times[1], times[2] if with_default else float("nan"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small batch, about a minute")
    parser.add_argument(
        "--n", type=int, default=None, help="batch size (default 1024, quick 32; GPU 16384, 1024)"
    )
    parser.add_argument("--loop", type=int, default=None, help="single solves timed (32; quick 8)")
    parser.add_argument("--m", type=int, default=64, help="particles per initialisation")
    parser.add_argument("--devices-worker", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.devices_worker:
        print(json.dumps(device_throughput(*args.devices_worker)))
        return
    record = Record(__file__, __doc__, "quick" if args.quick else "full")
    print(device_header())
    n_cpu = 32 if args.quick else 1024
    n = args.n or sized(n_cpu, 1024 if args.quick else 16384)
    n_loop = args.loop or (8 if args.quick else 32)
    m = args.m
    rows = []

    y0s = initialisations(n, m)
    mdl = model()
    singles = [member(y0s, i) for i in range(n_loop)]
    (loop_seconds, batch_seconds), _ = best_of_each(
        lambda: [sst.solve(mdl, y0, TS).risk for y0 in singles],
        lambda: sst.solve_batch(mdl, y0s, TS).risk,
        repeats=2,
    )
    loop_rate = n_loop / loop_seconds
    rows.append(("python loop of sst.solve", n_loop, loop_rate))
    batch_rate = n / batch_seconds
    rows.append(("sst.solve_batch (1 device)", n, batch_rate))

    device_rates = {}
    n_devices = min(n, n_cpu)  # these rows run on host CPU devices, also on a GPU machine
    for k in (1, 2, 4):
        result = run_devices(k, n_devices, m)
        device_rates[k] = result["per_second"]
        rows.append((f"solve_batch, {k} forced host device(s)", n_devices, device_rates[k]))

    n_mixed = min(n, 64)
    eps_mixed = 10.0 ** np.random.default_rng(0).uniform(-4, -1, n_mixed)
    y0_mixed = jax.tree_util.tree_map(lambda x: x[:n_mixed], y0s)
    (plain, grouped), _ = best_of_each(
        lambda: sst.solve_batch(mdl, y0_mixed, TS, eps=eps_mixed, group_size=n_mixed).risk,
        lambda: sst.solve_batch(mdl, y0_mixed, TS, eps=eps_mixed).risk,
        repeats=2,
    )
    rows.append(("mixed eps, one plain vmap", n_mixed, n_mixed / plain))
    rows.append(("mixed eps, grouped by decade of eps", n_mixed, n_mixed / grouped))

    # The gradient's cost relative to the forward solve, at the setup's m = 64 and for more
    # particles. At m = 64 a Rodas4 step is ~300 tiny XLA operations and its reverse ~940
    # (profiled), so on a CPU the ratio measures per-operation overhead more than arithmetic;
    # with more particles the arithmetic dominates.
    if args.quick:
        grad_ms = sized((m,), (m, 4096))
    else:
        grad_ms = sized((m, 256, 1024, 4096), (m, 4096, 65536))
    grad_rows = [grad_cost(mm, with_default=mm == m and not args.quick) for mm in grad_ms]
    t_forward, t_grad, t_grad_default = grad_rows[0][1:]
    grad_ratio = t_grad / t_forward

    print(
        f"\nbatch benchmark on {jax.default_backend()} (device rows: host CPU): m={m} particles, "
        f"eps=1e-3, rtol=1e-8, atol=1e-10, {len(TS)} saves"
    )
    print(f"{'configuration':42s} {'solves':>7s} {'solves/s':>10s} {'vs loop':>8s}")
    for name, count, rate in rows:
        print(f"{name:42s} {count:7d} {rate:10.2f} {rate / loop_rate:8.2f}")
    default = (
        f"{t_grad_default * 1e3:.1f} ms with diffrax's default checkpoints "
        f"(ratio {t_grad_default / t_forward:.2f})"
        if not args.quick
        else "diffrax's default checkpoints not timed in --quick"
    )
    print(
        f"forward solve {t_forward * 1e3:.1f} ms; grad of the final risk wrt (eps, sigma, a(0), "
        f"s(0)) {t_grad * 1e3:.1f} ms with sst.grad_adjoint() (ratio {grad_ratio:.2f}); {default}"
    )
    print(f"\n{'particles':>9s} {'forward ms':>11s} {'grad ms':>9s} {'grad/forward':>13s}")
    for mm, fwd, grd, _ in grad_rows:
        print(f"{mm:9d} {fwd * 1e3:11.1f} {grd * 1e3:9.1f} {grd / fwd:13.2f}")
    print_result(
        {
            "batch_speedup": f"{batch_rate / loop_rate:.3f}",
            "grad_cost_ratio": f"{grad_ratio:.3f}",
            "devices2_speedup": f"{device_rates[2] / device_rates[1]:.3f}",
            "devices4_speedup": f"{device_rates[4] / device_rates[1]:.3f}",
            "grouping_speedup": f"{plain / grouped:.3f}",
            "grad_cost_ratio_default": f"{t_grad_default / t_forward:.3f}",
            "loop_per_s": f"{loop_rate:.3f}",
            "batch_per_s": f"{batch_rate:.3f}",
        }
        | {f"grad_cost_ratio_m{mm}": f"{grd / fwd:.3f}" for mm, fwd, grd, _ in grad_rows[1:]}
        | {"n": n, "m": m},
        record,
    )


if __name__ == "__main__":
    main()
