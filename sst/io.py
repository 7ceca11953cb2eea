"""Saving and loading trajectories as `.npz` files."""

from __future__ import annotations

import pathlib

import jax.numpy as jnp
import numpy as np

from .solve import Trajectory

_ARRAYS = (
    "ts",
    "a",
    "s",
    "weights",
    "risk",
    "residuals",
    "valid",
    "success",
    "num_steps",
    "num_accepted_steps",
    "num_rejected_steps",
)


def save_trajectory(path: str | pathlib.Path, traj: Trajectory) -> None:
    """Write every field of `traj` to an uncompressed `.npz` file (`Q` only when present)."""
    arrays = {name: np.asarray(getattr(traj, name)) for name in _ARRAYS}
    if traj.Q is not None:
        arrays["Q"] = np.asarray(traj.Q)
    arrays["tolerances"] = np.array([traj.rtol, traj.atol])
    np.savez(path, **arrays)


def load_trajectory(path: str | pathlib.Path) -> Trajectory:
    """Read a trajectory written by `save_trajectory`."""
    with np.load(path) as data:
        missing = sorted(set(_ARRAYS) - set(data.files))
        if missing:
            raise ValueError(
                f"{path} is not a trajectory written by sst.io.save_trajectory (missing "
                f"{missing}); rewrite it with save_trajectory."
            )
        fields = {name: jnp.asarray(data[name]) for name in _ARRAYS}
        q = jnp.asarray(data["Q"]) if "Q" in data.files else None
        rtol, atol = (float(x) for x in data["tolerances"])
    return Trajectory(Q=q, rtol=rtol, atol=atol, **fields)
