"""`make demo`: the reduced ODE for a cubic target at eps = 1e-3, a table and a plot."""

from __future__ import annotations

import argparse
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np

import sst
from sst._solution import describe_steps


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="out/demo", help="output folder for risk.png")
    parser.add_argument("--eps", type=float, default=1e-3)
    parser.add_argument("--particles", type=int, default=32)
    args = parser.parse_args(argv)
    jax.config.update("jax_enable_x64", True)

    problem = sst.Problem(
        target=sst.Hermite([0.5, 1.0, 1.0, 1.0]),  # phi = h_0/2 + h_1 + h_2 + h_3
        activation=sst.Hermite([1.0, 1.0, 1.0, 1.0]),  # sigma = h_0 + h_1 + h_2 + h_3
        eps=args.eps,
    )
    y0 = sst.quadrature_particles(args.particles, law="normal")
    ts = jnp.concatenate([jnp.zeros(1), jnp.logspace(-6, 2, 400)])
    start = time.perf_counter()
    model = sst.MeanFieldODE(problem)
    traj = sst.solve(model, y0, ts)
    elapsed = time.perf_counter() - start

    t_half = sst.learning_times(traj, 0.5)
    t_90 = sst.learning_times(traj, 0.9)
    print(
        f"Reduced ODE, eps={args.eps:g}, {args.particles} normal quadrature particles, "
        f"rtol={traj.rtol:g}, atol={traj.atol:g}"
    )
    print(f"{describe_steps(traj.stats)}, {elapsed:.2f} s including compilation")
    labels = traj.residual_labels
    phi = problem.target_coeffs(labels)
    print(f"{'label':>10} {'phi':>8} {'t_half':>12} {'t_90%':>12}")
    for label, c, th, t9 in zip(labels, phi, t_half, t_90, strict=True):
        print(f"{sst.label_name(label):>10} {float(c):>8.3f} {th:>12.4g} {t9:>12.4g}")
    print(f"final risk R(t={float(ts[-1]):g}) = {float(traj.risk[-1]):.3e}")
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fig = sst.plot_risk(traj, model=model)
    fig.savefig(out / "risk.png", dpi=150)
    print(f"wrote {out / 'risk.png'}")
    if not np.all(np.isfinite(t_half)):
        raise SystemExit("some degree of the target was never half learned: see the plot")


if __name__ == "__main__":
    main()
