"""Saving and loading trajectories as `.npz` files, walking the `Trajectory` generically.

Every array of the trajectory (whatever the model's state type) goes into the archive under its
path (e.g. `ys.a`); everything else (classes, static fields such as the tolerances and residual
labels) goes into a JSON header, so that loading rebuilds the same pytree without pickle.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import pathlib
from typing import Any

import jax.numpy as jnp
import numpy as np

from ._solution import Trajectory

_HEADER = "__sst_header__"


def save_trajectory(path: str | pathlib.Path, traj: Trajectory) -> None:
    """Write every field of `traj` (a solve or a training run) to an uncompressed `.npz` file."""
    if not isinstance(traj, Trajectory):
        raise ValueError(f"save_trajectory needs an sst.Trajectory, got {type(traj).__name__}.")
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


def load_trajectory(path: str | pathlib.Path) -> Trajectory:
    """Read a trajectory written by `save_trajectory`."""
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
        traj = _decode(header, {name: data[name] for name in data.files})
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


def _decode(node: dict[str, Any], arrays: dict[str, np.ndarray]) -> Any:
    if "array" in node:
        return jnp.asarray(arrays[node["array"]])
    if "value" in node:
        return node["value"]
    if "tuple" in node:
        return tuple(_decode(v, arrays) for v in node["tuple"])
    if "list" in node:
        return [_decode(v, arrays) for v in node["list"]]
    if "dict" in node:
        return {k: _decode(v, arrays) for k, v in node["dict"].items()}
    if "type" in node:
        return _import(node["type"])
    cls = _import(node["class"])
    if not dataclasses.is_dataclass(cls):
        raise ValueError(f"Cannot rebuild {node['class']}: it is not a dataclass or eqx.Module.")
    # Rebuild without __init__ (which may convert or validate): the fields are what was saved.
    obj = object.__new__(cls)
    for name, field in node["fields"].items():
        object.__setattr__(obj, name, _decode(field, arrays))
    return obj


def _qualified(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _import(name: str) -> Any:
    module, _, qualname = name.partition(":")
    obj = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj
