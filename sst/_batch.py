"""Many solves at once: batches of initial states and parameters, grouped by stiffness, sharded.

`jax.vmap(lambda y0: sst.solve(model, y0, ts, throw=False))(y0s)` already works: `sst.solve` is a
pure diffrax solve, and every parameter of a model (`model.parameters()`: `eps`, the Hermite
coefficients) is a JAX array that can be batched. `solve_batch` adds what a plain vmap lacks:

- **Stiffness groups.** A vmapped adaptive solve runs until its slowest member is done, and every
  member pays for every step. The step count grows as `eps` shrinks (docs: [time
  scales][time-scales]),
  so a batch mixing `eps = 1e-1` and `eps = 1e-4` makes the easy members pay for the stiff one.
  `solve_batch` sorts the members by `eps` and solves consecutive groups of `group_size` members
  as separate vmaps (all groups have the same shape, so they share one compilation).
- **Per-member failures.** Solves run with `throw=False`; a member that fails (step budget, NaN)
  has `result[i]` set (`success[i] = False`) and NaN rows masked by `valid[i]`; the other
  members are unaffected.
- **Devices.** With `mesh=`, each group is split across the devices of a one-axis mesh
  (`jax.sharding.NamedSharding`, `jit` of `vmap`); results are identical to one device.
  Implicit solvers fail under `pmap` and `shard_map` with these JAX versions, which is why the
  batch is sharded through `jit` and the compiler's partitioner instead.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec
from jaxtyping import Array, ArrayLike, Float
from tqdm.auto import tqdm

from ._model import AbstractModel
from ._solution import Trajectory
from ._solve import check_eps, solve
from ._validate import check_times, is_traced, require_x64, show_progress

BATCH_AXIS = "batch"


def batch_mesh(devices: list | None = None) -> Mesh:
    """A one-axis device mesh (axis `"batch"`, `AxisType.Auto`) over `devices` (default: all).

    On several hosts, call `jax.distributed.initialize()` first: `jax.devices()` then lists the
    devices of every host and the same mesh spans them all.
    """
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (BATCH_AXIS,), axis_types=(AxisType.Auto,))


def shard_batch(tree, mesh: Mesh):
    """Place every array of `tree` on `mesh`, split along its leading (batch) axis.

    The leading axis must be a multiple of the number of devices (`solve_batch` pads for you).
    """
    n = mesh.devices.size
    sharding = NamedSharding(mesh, PartitionSpec(BATCH_AXIS))

    def put(x):
        if x.shape[0] % n:
            raise ValueError(
                f"A batch of {x.shape[0]} members cannot be split evenly across {n} devices; "
                f"pad it to a multiple of {n}."
            )
        # Each process supplies only the slices its own devices hold: also right on several hosts.
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return jax.tree_util.tree_map(put, tree)


@eqx.filter_jit
def _solve_group(model: AbstractModel, y0, ts: Array, members: dict, options: dict):
    def one(member):
        parameters = {k: v for k, v in member.items() if k != "y0"}
        return solve(
            model.with_parameters(**parameters) if parameters else model,
            member["y0"] if y0 is None else y0,
            ts,
            throw=False,
            **options,
        )

    return jax.vmap(one)(members)


@eqx.filter_jit
def _replicate(tree, sharding):
    return jax.lax.with_sharding_constraint(tree, sharding)


def _check_members(
    model: AbstractModel, y0, parameters: dict[str, ArrayLike]
) -> tuple[dict[str, np.ndarray], Any, int]:
    """Validate the batch and return its per-member arrays, the shared `y0` (or None), size."""
    if is_traced((y0, parameters)):
        raise ValueError(
            "solve_batch groups members by their concrete eps and cannot be traced (jit, grad); "
            "inside a transformation use jax.vmap(lambda ...: sst.solve(..., throw=False))."
        )
    members: dict[str, Any] = {}
    single = jax.tree_util.tree_leaves(model.split(y0)[0])[0].ndim == 1
    if not single:
        members["y0"] = jax.tree_util.tree_map(np.asarray, y0)
    known = model.parameters()
    for name, value in parameters.items():
        if name not in known:
            raise ValueError(
                f"{type(model).__name__} has no parameter {name!r}; its parameters are "
                f"{sorted(known)}."
            )
        arr = np.asarray(value, dtype=float)
        ndim = np.ndim(known[name]) + 1
        if arr.ndim != ndim:
            raise ValueError(
                f"{name} must hold one value per batch member: shape (B,) + the model's "
                f"{np.shape(known[name])} with ndim {ndim}, got shape {arr.shape}."
            )
        members[name] = arr
    if not members:
        raise ValueError(
            "Nothing is batched: pass y0 with a leading batch axis, or eps or parameters= arrays "
            "with one entry per member."
        )
    sizes = {k: jax.tree_util.tree_leaves(v)[0].shape[0] for k, v in members.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"All batched inputs need the same batch size; got {sizes}.")
    size = next(iter(sizes.values()))
    if size == 0:
        raise ValueError("The batch is empty; pass at least one member.")
    # Every member must be a valid problem on its own: build (and so validate) each one.
    for i in range(size):
        member = {k: jax.tree_util.tree_map(lambda x, i=i: x[i], v) for k, v in members.items()}
        state = member.pop("y0", y0)
        (model.with_parameters(**member) if member else model).check_state(state)
    return members, (None if "y0" in members else y0), size


def solve_batch(
    model: AbstractModel,
    y0: Any,
    ts: Float[ArrayLike, " T"],
    *,
    eps: Float[ArrayLike, " B"] | None = None,
    parameters: dict[str, ArrayLike] | None = None,
    group_size: int | None = None,
    mesh: Mesh | None = None,
    warn: bool = True,
    progress: bool | None = None,
    **solve_options: Any,
) -> Trajectory:
    """Solve a batch of problems in as few jit-compiled vmapped calls as stiffness allows.

    **Arguments:**

    - `model`: the `sst.AbstractModel` shared by all members.
    - `y0`: one initial state shared by all members, or states with a leading batch axis
      (e.g. `a` and `s` of shape `(B, m)`).
    - `ts`: save times, shared.
    - `eps`: `(B,)` relative learning rates, one per member (default: the model's); the same
      as `parameters={"eps": eps}`.
    - `parameters`: any of `model.parameters()`, each with a leading batch axis, replacing the
      model's (`model.with_parameters`). For `MeanFieldODE` and `FiniteDimODE`: `"eps"`,
      `"target"` and `"activation"`, the latter two `(B, K)` Hermite coefficients, one row per
      member (for `relu`/`erf` the closed-form kernel stays; only the truncated series used
      for `V` and the residuals changes).
    - `group_size`: members per vmapped call. Members are sorted by `eps` and solved in groups
      of this size, so each group only pays for its own stiffest member. Default: the whole
      batch if all `eps` lie within a factor of 10, else one group per decade of `eps` spanned
      (groups of equal size; the last is padded with copies of its last member).
    - `mesh`: a `batch_mesh()` to split every group across its devices; `group_size` is then
      rounded up to a multiple of the number of devices.
    - `warn`: warn (listing the members) when some solves failed.
    - `progress`: progress bars, one per group of solves (in `log t`) and one over the groups
      (default: when a person is watching, in a terminal or a notebook).
    - `solve_options`: passed to `sst.solve` (`solver`, `rtol`, `atol`, `max_steps`, ...);
      `throw` is not accepted: failures are reported per member.

    Raises `ValueError` before compiling if any member's eps lies below `sst.EPS_MIN` (see
    `sst.solve`, "Supported eps").

    **Returns:** a `Trajectory` whose arrays carry a leading batch axis `B` in the input order;
    `result[i]` (`success[i]`) and `valid[i]` say how member `i` ended and which rows are
    valid. Member `i` alone is `traj[i]`.
    """
    if "throw" in solve_options:
        raise ValueError(
            "solve_batch reports failures per member (Trajectory.success); do not pass throw."
        )
    if not isinstance(model, AbstractModel):
        raise ValueError(
            "model must be an sst.AbstractModel (e.g. sst.MeanFieldODE), got "
            f"{type(model).__name__}."
        )
    require_x64("sst.solve_batch")
    check_times(ts)
    ts = jnp.asarray(ts, dtype=float)
    parameters = dict(parameters or {})
    if eps is not None:
        if "eps" in parameters:
            raise ValueError("Pass eps either as eps= or in parameters=, not both.")
        parameters["eps"] = eps
    members, shared_y0, size = _check_members(model, y0, parameters)

    eps_all = members.get("eps", np.full(size, float(model.eps)))
    check_eps(eps_all)
    order = np.argsort(eps_all, kind="stable")
    n_dev = 1 if mesh is None else mesh.devices.size
    if group_size is None:
        decades = max(1, math.ceil(np.log10(eps_all.max() / eps_all.min()) - 1e-9))
        group_size = math.ceil(size / decades)
    if group_size < 1:
        raise ValueError(f"group_size must be a positive integer, got {group_size}.")
    group_size = n_dev * math.ceil(min(group_size, size) / n_dev)

    watching = show_progress(progress)
    solve_options = {**solve_options, "progress": watching}
    pieces = []
    starts = range(0, size, group_size)
    for start in tqdm(starts, desc="groups", disable=not watching or len(starts) < 2):
        idx = order[start : start + group_size]
        # Pad with copies of a real member rather than dummies: a dummy could be the stiffest.
        idx = np.concatenate([idx, np.full(group_size - idx.size, idx[-1])])
        group = jax.tree_util.tree_map(lambda x, idx=idx: jnp.asarray(x[idx]), members)
        if mesh is not None:
            group = shard_batch(group, mesh)
        out = _solve_group(model, shared_y0, ts, group, solve_options)
        if mesh is not None:
            # Replicate so that every process (on several hosts) can read the whole group.
            out = _replicate(out, NamedSharding(mesh, PartitionSpec()))
        pieces.append(jax.tree_util.tree_map(np.asarray, out))
    stacked = jax.tree_util.tree_map(lambda *xs: np.concatenate(xs)[:size], *pieces)
    inverse = np.argsort(order, kind="stable")
    traj = jax.tree_util.tree_map(lambda x: jnp.asarray(x[inverse]), stacked)
    if warn and not bool(np.all(traj.success)):
        failed = np.flatnonzero(~np.asarray(traj.success))
        warnings.warn(
            f"{failed.size} of {size} solves failed (members {failed[:20].tolist()}"
            f"{' ...' if failed.size > 20 else ''}); their rows after the failure are NaN and "
            "masked by traj.valid. Raise max_steps or loosen rtol/atol for them.",
            RuntimeWarning,
            stacklevel=2,
        )
    return traj
