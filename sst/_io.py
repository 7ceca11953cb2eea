"""Saving and loading trajectories as `.npz` files, walking the `Trajectory` generically.

Every array of the trajectory (whatever the model's state type) goes into the archive under its
path (e.g. `ys.a`); everything else (class names, static fields such as the tolerances and
residual labels) goes into a JSON header, so that loading rebuilds the same pytree without
pickle. A file is data: loading rebuilds only classes it already knows (sst's own result types,
and those of a `like` the caller passes), never imports a module the file names, and runs each
rebuilt class's checks.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

import jax.numpy as jnp
import numpy as np

from ._finite_dim import FiniteDimState
from ._mean_field import MeanFieldState
from ._solution import RESULTS, TrainingRecord, Trajectory
from ._train import FixedSamples, OnlineSGD, PopulationGradient

_HEADER = "__sst_header__"
_KINDS = ("array", "value", "tuple", "list", "dict", "type", "class")

# What a trajectory of sst's own models and training runs is made of (a result code is an item
# of RESULTS, of its own class).
_SST_TYPES = (
    Trajectory,
    TrainingRecord,
    MeanFieldState,
    FiniteDimState,
    PopulationGradient,
    OnlineSGD,
    FixedSamples,
    RESULTS,
    type(RESULTS.successful),
)


def save_trajectory(path: str | pathlib.Path, traj: Trajectory) -> None:
    """Write every field of `traj` (a solve or a training run) to an uncompressed `.npz` file.

    The solver's dense output (`sst.solve(..., dense=True)`) is not written: it holds the model
    and the solver's interpolants, which a data file does not rebuild.
    """
    if not isinstance(traj, Trajectory):
        raise ValueError(f"save_trajectory needs an sst.Trajectory, got {type(traj).__name__}.")
    if traj.dense is not None:
        raise ValueError(
            "save_trajectory does not write the solver's dense output (it holds the model and "
            "its interpolants); save dataclasses.replace(traj, dense=None)."
        )
    arrays: dict[str, np.ndarray] = {}
    header = _encode(traj, "", arrays)
    arrays[_HEADER] = np.asarray(json.dumps(header))
    try:
        with open(path, "wb") as file:
            np.savez(file, **arrays)
    except OSError as err:
        raise ValueError(
            f"Cannot write {path}: {err.strerror}; pass a path in an existing, writable folder."
        ) from None


def load_trajectory(path: str | pathlib.Path, like: Any = None) -> Trajectory:
    """Read a trajectory written by `save_trajectory`.

    A file is data: the classes it names are looked up among those `load_trajectory` knows,
    never imported. It knows sst's own (`Trajectory`, `TrainingRecord`, `MeanFieldState`,
    `FiniteDimState`, the estimators, `RESULTS`) and, as equinox's `tree_deserialise_leaves`
    takes a `like`, every class in `like`: pass a trajectory of the same kind (e.g. from a short
    solve of the same model) to load the states of a model of your own. Each rebuilt object's
    checks (`__check_init__`) run as on construction; a file naming any other class is refused.
    """
    known = {_qualified(cls): cls for cls in _SST_TYPES}
    if like is not None:
        _collect_classes(like, known)
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise ValueError(f"Cannot read {path} as a trajectory file: {err}.") from None
    with archive as data:
        if _HEADER not in data.files:
            raise ValueError(
                f"{path} is not a trajectory written by sst.save_trajectory (no header); "
                "rewrite it with save_trajectory."
            )
        header = json.loads(str(data[_HEADER]))
        traj = _decode(header, {name: data[name] for name in data.files}, known, path)
    if not isinstance(traj, Trajectory):
        raise ValueError(f"{path} holds a {type(traj).__name__}, not an sst.Trajectory.")
    return traj


def _encode(value: Any, path: str, arrays: dict[str, np.ndarray]) -> Any:
    """The JSON description of `value`; its arrays go into `arrays` under their paths."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {
            f.name: _encode(getattr(value, f.name), f"{path}.{f.name}", arrays)
            for f in dataclasses.fields(value)
        }
        return {"class": _qualified(type(value)), "fields": fields}
    if isinstance(value, type):
        return {"type": _qualified(value)}
    if isinstance(value, dict):
        return {"dict": {k: _encode(v, f"{path}.{k}", arrays) for k, v in value.items()}}
    if isinstance(value, tuple | list):
        items = [_encode(v, f"{path}[{i}]", arrays) for i, v in enumerate(value)]
        return {"tuple" if isinstance(value, tuple) else "list": items}
    if value is None or isinstance(value, bool | int | float | str):
        return {"value": value}
    arrays[path] = np.asarray(value)
    return {"array": path}


def _decode(node: Any, arrays: dict[str, np.ndarray], known: dict[str, type], path: Any) -> Any:
    def decode(value):
        return _decode(value, arrays, known, path)

    kind = next((k for k in _KINDS if k in node), None) if isinstance(node, dict) else None
    if kind == "array" and node["array"] in arrays:
        return jnp.asarray(arrays[node["array"]])
    if kind == "value":
        return node["value"]
    if kind == "tuple":
        return tuple(decode(v) for v in node["tuple"])
    if kind == "list":
        return [decode(v) for v in node["list"]]
    if kind == "dict":
        return {k: decode(v) for k, v in node["dict"].items()}
    if kind == "type":
        return _known(node["type"], known, path)
    if kind == "class" and isinstance(node.get("fields"), dict):
        cls = _known(node["class"], known, path)
        # Fields as saved, without __init__ (which may convert them); then the class's checks,
        # as equinox runs them after __init__.
        obj = object.__new__(cls)
        for name, field in node["fields"].items():
            object.__setattr__(obj, name, decode(field))
        for base in reversed(cls.__mro__):
            if "__check_init__" in vars(base):
                base.__check_init__(obj)
        return obj
    raise ValueError(f"{path} has a malformed header; rewrite it with sst.save_trajectory.")


def _known(name: Any, known: dict[str, type], path: Any) -> type:
    if name not in known:
        raise ValueError(
            f"{path} names the class {name!r}, which load_trajectory does not rebuild (it never "
            "imports what a file names); pass like= a trajectory holding that class."
        )
    return known[name]


def _collect_classes(value: Any, known: dict[str, type]) -> None:
    """Add to `known` every class of a dataclass in the pytree `value`, and every class in it."""
    if isinstance(value, type):
        known[_qualified(value)] = value
    elif dataclasses.is_dataclass(value):
        known[_qualified(type(value))] = type(value)
        for field in dataclasses.fields(value):
            _collect_classes(getattr(value, field.name), known)
    elif isinstance(value, dict):
        for item in value.values():
            _collect_classes(item, known)
    elif isinstance(value, tuple | list):
        for item in value:
            _collect_classes(item, known)


def _qualified(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"
