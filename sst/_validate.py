"""Checks shared by the entry points: concrete or traced inputs, save times, float64."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike


def is_traced(tree: Any) -> bool:
    """Whether any leaf of `tree` is a tracer (inside jit, vmap, grad): then no concrete check."""
    return any(isinstance(x, jax.core.Tracer) for x in jax.tree_util.tree_leaves(tree))


T = TypeVar("T")


def require(x: T, bad: ArrayLike, message: str, detail: Callable[[], str] | None = None) -> T:
    """`x`, checked against `bad`: a concrete `bad` raises `ValueError(message)` (and `detail()`,
    the offending value) at once; a traced one raises when the program runs (`eqx.error_if`),
    so that the check holds under `jax.jit` and `jax.vmap` too."""
    if is_traced(bad):
        return eqx.error_if(x, bad, message)
    if np.any(np.asarray(bad)):
        raise ValueError(message if detail is None else f"{message[:-1]}; {detail()}.")
    return x


def array_values(*xs: Any) -> tuple[Any, tuple[Any, ...]]:
    """The array module for `xs` and `xs` in it: `jax.numpy` and the arrays themselves if any is
    traced, else `numpy` and numpy arrays (checked at once, without JAX's dispatch)."""
    if is_traced(xs):
        return jnp, xs
    return np, tuple(np.asarray(x) for x in xs)


def check_times_shape(ts: ArrayLike) -> None:
    """Save times must be a 1-d array of at least two times (a static check, traced or not)."""
    shape = np.shape(ts)
    if len(shape) != 1 or shape[0] < 2:
        raise ValueError(f"ts must be a 1-d array of at least two times, got shape {shape}.")


def check_times(ts: ArrayLike) -> np.ndarray:
    """Validate save times: a finite, strictly increasing 1-d array of at least two times."""
    ts_np = np.asarray(ts, dtype=float)
    check_times_shape(ts_np)
    if not np.all(np.isfinite(ts_np)):
        raise ValueError("ts contains NaN or inf; pass finite save times.")
    if np.any(np.diff(ts_np) <= 0):
        raise ValueError("ts must be strictly increasing; sort it and drop duplicates.")
    return ts_np


def require_x64(where: str) -> None:
    """Raise if float64 is off: the ODEs span time scales from eps to 100 with eps far below the
    float32 resolution. `sst` never changes JAX's configuration itself."""
    if not jax.config.jax_enable_x64:
        raise RuntimeError(
            f"{where} needs float64: add `jax.config.update('jax_enable_x64', True)` right after "
            "`import jax`, before creating any array."
        )


def check_count(name: str, value: Any, low: int = 1) -> int:
    """A whole number `>= low` (Python or numpy integer, not bool), as a Python int."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}.")
    return int(value)


def check_key(key: Any) -> None:
    """A JAX PRNG key: `jax.random.key(seed)` or the legacy `jax.random.PRNGKey(seed)`."""
    typed = isinstance(key, jax.Array) and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
    legacy = isinstance(key, jax.Array) and key.dtype == np.uint32 and key.shape == (2,)
    if not (typed or legacy):
        raise ValueError(
            f"key must be a JAX PRNG key such as jax.random.key(0), got {type(key).__name__} "
            f"{key!r:.40}."
        )


def show_progress(progress: bool | None) -> bool:
    """`progress`, or when `None` whether a person is watching: a terminal or a notebook."""
    if progress is None:
        # In a notebook tqdm draws with ipywidgets, and without them only warns.
        notebook = "ipykernel" in sys.modules and importlib.util.find_spec("ipywidgets") is not None
        return sys.stderr.isatty() or notebook
    return bool(progress)


def check_eps_and_noise(eps: Any, noise: Any) -> None:
    """A problem's `eps` (finite, positive) and label `noise` (finite, non-negative) scalars,
    when concrete."""
    if not is_traced(eps):
        eps = np.asarray(eps)
        if eps.ndim != 0 or not np.isfinite(eps) or eps <= 0:
            raise ValueError(
                f"eps must be a finite positive scalar (the relative learning rate), got {eps}."
            )
    if not is_traced(noise):
        noise = np.asarray(noise)
        if noise.ndim != 0 or not np.isfinite(noise) or noise < 0:
            raise ValueError(
                f"noise must be a finite non-negative standard deviation, got {noise}."
            )


def float_array(x: ArrayLike) -> jax.Array:
    """`x` as a float64 array (float32 where x64 is off): the converter of the state fields."""
    return jnp.asarray(x, dtype=float)


def particle_weights(a: jax.Array, weights: ArrayLike | None) -> jax.Array:
    """The particle weights of a state: `weights`, or `1/m` each for `m` particles."""
    if weights is None:
        m = a.shape[-1] if a.ndim else 1
        return jnp.full(a.shape, 1.0 / m, dtype=float)
    return float_array(weights)


def check_weights(w: Array) -> Array:
    """Particle weights `w`, checked: finite where concrete, non-negative and summing to 1 (under
    jit too)."""
    xp, (v,) = array_values(w)
    if xp is np and not np.all(np.isfinite(v)):
        raise ValueError("Particle weights contain NaN or inf; pass finite weights.")
    return require(
        w,
        xp.any(v < 0) | (xp.abs(xp.sum(v) - 1.0) > 1e-10),
        "Particle weights must be non-negative and sum to 1; normalise them with "
        "weights / weights.sum().",
        lambda: f"got sum {float(np.sum(v)):.12g}, min {float(np.min(v)):.3g}",
    )


def check_overlaps(problem: Any, a: Array, s: Array, name: str) -> Array:
    """Overlaps `s` of a state of `problem` with second-layer weights `a` `(m,)`, checked: `s` of
    shape `(m,)` for an `sst.Hermite` target, `(m, k)` for an `sst.Target`, finite where concrete,
    rows in the closed unit ball (under jit too)."""
    shape = (a.shape[0], problem.k) if problem.vector_overlaps else a.shape
    if a.ndim != 1 or s.shape != shape:
        expected = "(m, k)" if problem.vector_overlaps else "(m,)"
        raise ValueError(
            f"{name} needs a of shape (m,) and s of shape {expected} for this target "
            f"(k={problem.k}); got {a.shape} and {s.shape}."
        )
    if a.shape[0] == 0:
        raise ValueError("The state has no particles; pass at least one.")
    xp, (u, v) = array_values(a, s)
    # A traced NaN is no error: the solve stops at once and says `nonfinite`.
    if xp is np and not (np.all(np.isfinite(u)) and np.all(np.isfinite(v))):
        raise ValueError("The state contains NaN or inf in a or s; pass finite values.")
    norms = xp.sqrt(xp.sum(xp.reshape(v, (a.shape[0], -1)) ** 2, axis=1))
    return require(
        s,
        xp.max(norms) > 1.0 + 1e-12,
        "Overlaps are those of unit vectors with orthonormal target directions: each s_i "
        "must have norm <= 1.",
        lambda: f"got max |s_i| = {float(np.max(norms)):.6g}",
    )
