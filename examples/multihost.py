"""`sst.solve_batch` on one device mesh that spans several processes (hosts), via jax.distributed.

Start the same command on every host, changing only `--process-id` (0 on the coordinator's host,
whose address and a free port every process is given):

    python examples/multihost.py --coordinator host0:1234 --num-processes 2 --process-id 0
    python examples/multihost.py --coordinator host0:1234 --num-processes 2 --process-id 1

Under a cluster manager (SLURM, Kubernetes) pass `--cluster` instead: `jax.distributed.initialize()`
then reads the coordinator and the ranks from the environment. Without either, it runs in one
process. Every process builds the same batch (same seeds); each group of members is split across
all devices of all processes, and every process receives the whole result, which it prints (and
writes to `--out`, e.g. `--out result-$RANK.npz`).

On one machine with CPUs only, two processes of two host devices each (this is what
tests/test_distributed.py runs):

    export JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=2
    python examples/multihost.py --coordinator 127.0.0.1:1234 --num-processes 2 --process-id 0 &
    python examples/multihost.py --coordinator 127.0.0.1:1234 --num-processes 2 --process-id 1
"""

from __future__ import annotations

import argparse

import jax
import numpy as np

MEMBERS, PARTICLES = 8, 8
EPS = np.geomspace(1e-1, 1.5e-2, MEMBERS)  # within one decade: a single group of 8 members


def batch_inputs():
    """The batch, identical on every process: model, initial states (B, m), save times, eps."""
    import sst

    model = sst.MeanFieldODE(
        sst.Problem(sst.Hermite([0.5, 1.0, 1.0, 1.0]), sst.Hermite([1.0, 1.0, 1.0, 1.0]), 1e-2)
    )
    rng = np.random.default_rng(0)
    y0 = sst.MeanFieldState(
        rng.normal(size=(MEMBERS, PARTICLES)),
        rng.uniform(-0.2, 0.2, size=(MEMBERS, PARTICLES)),
    )
    ts = np.concatenate([[0.0], np.geomspace(1e-3, 10.0, 20)])
    return model, y0, ts, EPS


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--coordinator", help="HOST:PORT of process 0, e.g. host0:1234")
    parser.add_argument("--num-processes", type=int, help="number of processes in all")
    parser.add_argument("--process-id", type=int, help="this process's rank, 0 .. n-1")
    parser.add_argument("--cluster", action="store_true", help="ranks from SLURM, Kubernetes, ...")
    parser.add_argument("--out", help="write this process's copy of the result to this .npz")
    args = parser.parse_args(argv)
    if args.coordinator is not None:
        jax.distributed.initialize(
            coordinator_address=args.coordinator,
            num_processes=args.num_processes,
            process_id=args.process_id,
        )
    elif args.cluster:
        jax.distributed.initialize()
    jax.config.update("jax_enable_x64", True)  # sst's ODEs need float64
    import sst  # after initialize: jax.devices() now lists the devices of every process

    mesh = sst.batch_mesh()
    model, y0, ts, eps = batch_inputs()
    traj = sst.solve_batch(model, y0, ts, eps=eps, mesh=mesh)
    print(
        f"process {jax.process_index()} of {jax.process_count()}: mesh of {mesh.devices.size} "
        f"devices ({jax.local_device_count()} here); final risks "
        + " ".join(f"{r:.6e}" for r in np.asarray(traj.risk)[:, -1])
    )
    if args.out:
        np.savez(
            args.out,
            risk=np.asarray(traj.risk),
            a=np.asarray(traj.ys.a),
            s=np.asarray(traj.ys.s),
            num_steps=np.asarray(traj.stats["num_steps"]),
            success=np.asarray(traj.success),
            process_count=jax.process_count(),
            process_index=jax.process_index(),
            mesh_devices=mesh.devices.size,
            local_devices=jax.local_device_count(),
        )


if __name__ == "__main__":
    main()
