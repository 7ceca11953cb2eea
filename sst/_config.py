"""Run configurations of the `sst` command: a TOML file, validated key by key.

```toml
model = "mean_field"            # or "finite_dim"
[problem]
target = [0.5, 1.0, 1.0]        # Hermite coefficients, or "relu" / "erf"
activation = [1.0, 1.0, 1.0, 1.0]
eps = 1e-3                      # or a list: [1e-2, 1e-3, 1e-4]
noise = 0.0
tau = 0.0                       # finite_dim only: online SGD's noise level eta d / B
[init]                          # mean_field: particles, law, scale, mean
particles = 16                  # finite_dim: m, d, seed, law, scale
law = "uniform"
[times]
t_min = 1e-8                    # first positive save time (default min(eps) / 100)
t_max = 100.0
n_save = 200                    # log-spaced save times, plus t = 0
[solver]
rtol = 1e-8
atol = 1e-10
max_steps = 100000
```

A target of `k` directions (docs: multi-index targets) is a table of multi-indices and
coefficients; `k` is the length of the multi-indices (the same models, with particles at `s = 0`
in `R^k`, or `k` target directions in dimension `d`):

```toml
[problem.target]                # the staircase z1 + z1 z2 + z1 z2 z3
terms = [[[1, 0, 0], 1.0], [[1, 1, 0], 1.0], [[1, 1, 1], 1.0]]
basis = "hermite"               # c_alpha of h_alpha(z) (default), or "monomial": z^alpha
```

Every key is checked: an unknown key or a bad value raises `ValueError` naming the key and
the allowed values.
"""

from __future__ import annotations

import dataclasses
import pathlib
import tomllib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._finite_dim import FiniteDimODE
from ._hermite import Hermite, erf, relu
from ._init import quadrature_particles, random_init
from ._mean_field import MeanFieldODE
from ._problem import Problem
from ._target import Target

_LAWS = ("normal", "uniform", "rademacher")
_MODELS = ("mean_field", "finite_dim")
_FUNCTIONS = {"relu": relu, "erf": erf}


def _function(key: str, value: Any) -> Any:
    if isinstance(value, str) and value in _FUNCTIONS:
        return value
    if (
        isinstance(value, list)
        and value
        and all(isinstance(c, int | float) and not isinstance(c, bool) for c in value)
    ):
        return [float(c) for c in value]
    raise ValueError(
        f"{key} must be a non-empty list of Hermite coefficients [c_0, c_1, ...] or one of "
        f"{sorted(_FUNCTIONS)}; got {value!r}."
    )


def _number(low: float | None = None, strict: bool = True) -> Callable[[str, Any], float]:
    def check(key: str, value: Any) -> float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        ok = ok and np.isfinite(value)
        if ok and low is not None:
            ok = value > low if strict else value >= low
        if not ok:
            bound = "" if low is None else f" {'>' if strict else '>='} {low:g}"
            raise ValueError(f"{key} must be a finite number{bound}; got {value!r}.")
        return float(value)

    return check


def _integer(low: int) -> Callable[[str, Any], int]:
    def check(key: str, value: Any) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{key} must be an integer >= {low}; got {value!r}.")
        return value

    return check


def _choice(options: tuple[str, ...]) -> Callable[[str, Any], str]:
    def check(key: str, value: Any) -> str:
        if value not in options:
            raise ValueError(f"{key} must be one of {list(options)}; got {value!r}.")
        return value

    return check


def _eps(key: str, value: Any) -> float | list[float]:
    positive = _number(0.0)
    if isinstance(value, list):
        if not value:
            raise ValueError(f"{key} must be a positive number or a non-empty list of them.")
        return [positive(f"{key}[{i}]", v) for i, v in enumerate(value)]
    return positive(key, value)


_REQUIRED = object()

# Per table: key -> (validator, default). `None` defaults are filled from other keys.
_SCHEMA: dict[str, dict[str, tuple[Callable[[str, Any], Any], Any]]] = {
    "problem": {
        # `_target` is defined with the target table's keys at the end of this module.
        "target": (lambda key, value: _target(key, value), _REQUIRED),
        "activation": (_function, _REQUIRED),
        "eps": (_eps, _REQUIRED),
        "noise": (_number(0.0, strict=False), 0.0),
        "tau": (_number(0.0, strict=False), 0.0),
    },
    "init:mean_field": {
        "particles": (_integer(1), 16),
        "law": (_choice(_LAWS), "uniform"),
        "scale": (_number(0.0), 1.0),
        "mean": (_number(), 0.0),
    },
    "init:finite_dim": {
        "m": (_integer(1), 16),
        "d": (_integer(2), 100),
        "seed": (_integer(0), 0),
        "law": (_choice(_LAWS), "normal"),
        "scale": (_number(0.0), 1.0),
    },
    "times": {
        "t_min": (_number(0.0), None),
        "t_max": (_number(0.0), 100.0),
        "n_save": (_integer(2), 200),
    },
    "solver": {
        "rtol": (_number(0.0), 1e-8),
        "atol": (_number(0.0), 1e-10),
        "max_steps": (_integer(1), 100_000),
    },
}


def _table(name: str, schema_name: str, raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ValueError(f"[{name}] must be a table of keys, got {raw!r}.")
    schema = _SCHEMA[schema_name]
    unknown = sorted(set(raw) - set(schema))
    if unknown:
        raise ValueError(
            f"Unknown key {name}.{unknown[0]}; the allowed keys of [{name}] are {sorted(schema)}."
        )
    out = {}
    for key, (check, default) in schema.items():
        if key in raw:
            out[key] = check(f"{name}.{key}", raw[key])
        elif default is _REQUIRED:
            raise ValueError(f"Missing required key {name}.{key} in [{name}].")
        else:
            out[key] = default
    return out


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """A validated run configuration (see the module docstring for the keys).

    **Fields:** `model` and one validated dict per table (`problem`, `init`, `times`,
    `solver`), defaults filled in.
    """

    model: str
    problem: dict[str, Any]
    init: dict[str, Any]
    times: dict[str, Any]
    solver: dict[str, Any]

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> RunConfig:
        """Validate a parsed TOML document; raise `ValueError` naming any bad key."""
        allowed = ("init", "model", "problem", "solver", "times")
        unknown = sorted(set(raw) - set(allowed))
        if unknown:
            raise ValueError(
                f"Unknown top-level key {unknown[0]!r}; the allowed keys are {list(allowed)}."
            )
        model = _choice(_MODELS)("model", raw.get("model", "mean_field"))
        if "problem" not in raw:
            raise ValueError("Missing the [problem] table (target, activation, eps).")
        problem = _table("problem", "problem", raw["problem"])
        _check_tau(model, problem)
        init = _table("init", f"init:{model}", raw.get("init", {}))
        times = _table("times", "times", raw.get("times", {}))
        if times["t_min"] is None:
            times["t_min"] = min(np.atleast_1d(problem["eps"])) / 100.0
        if times["t_min"] >= times["t_max"]:
            raise ValueError(
                f"times.t_min must be below times.t_max; got {times['t_min']:g} >= "
                f"{times['t_max']:g}."
            )
        solver = _table("solver", "solver", raw.get("solver", {}))
        return cls(model, problem, init, times, solver)

    @classmethod
    def from_file(cls, path: str | pathlib.Path) -> RunConfig:
        """Read and validate a TOML file."""
        return cls.from_dict(read_toml(path))

    def to_dict(self) -> dict[str, Any]:
        """The configuration with defaults filled in (round-trips through `from_dict`)."""
        return dataclasses.asdict(self)

    @property
    def eps_list(self) -> list[float]:
        """The values of eps to run, in the order given."""
        return [float(e) for e in np.atleast_1d(self.problem["eps"])]

    def build_problem(self, eps: float) -> Problem:
        """The `Problem` at one value of eps."""
        p = self.problem
        spec = p["target"]
        target = _target_table(spec) if isinstance(spec, dict) else _hermite(spec)
        return Problem(target, _hermite(p["activation"]), eps, p["noise"])

    def build(self, eps: float) -> tuple[Any, Any, jax.Array]:
        """Model, initial state and save times for one member of the run."""
        problem = self.build_problem(eps)
        i = self.init
        k = problem.k if problem.vector_overlaps else None
        if self.model == "mean_field":
            model = MeanFieldODE(problem)
            y0 = quadrature_particles(i["particles"], i["law"], i["scale"], i["mean"], k=k)
        else:
            if i["d"] <= problem.k:
                raise ValueError(
                    f"init.d must exceed the k={problem.k} target directions; got {i['d']}."
                )
            model = FiniteDimODE(problem, tau=self.problem["tau"])
            key = jax.random.PRNGKey(i["seed"])
            y0 = random_init(key, i["m"], i["d"], i["scale"], i["law"], k=k).state
        t = self.times
        ts = jnp.concatenate([jnp.zeros(1), jnp.geomspace(t["t_min"], t["t_max"], t["n_save"])])
        return model, y0, ts


def _check_tau(model: str, problem: dict[str, Any]) -> None:
    """`problem.tau > 0` needs the finite-dimensional model and functions whose SGD noise is
    computed exactly (docs: online SGD at a finite step)."""
    if problem["tau"] == 0.0:
        return
    if model != "finite_dim":
        raise ValueError(
            'problem.tau > 0 needs model = "finite_dim" (the noisy dynamics do not close on '
            'the mean-field particles); set model = "finite_dim" or problem.tau = 0.'
        )
    functions = [problem["activation"]]
    if not isinstance(problem["target"], dict):
        functions.append(problem["target"])
    closed = [f for f in functions if isinstance(f, str)]
    if closed and functions not in (["erf", "erf"], ["relu", "relu"]):
        raise ValueError(
            "problem.tau > 0 needs a polynomial activation and target (lists of Hermite "
            'coefficients), or "erf" or "relu" as both; use one of those or set problem.tau = 0.'
        )


def read_toml(path: str | pathlib.Path) -> dict[str, Any]:
    """Parse a TOML file, turning syntax errors into `ValueError`."""
    path = pathlib.Path(path)
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{path} is not valid TOML: {err}.") from err


def _hermite(spec: str | list[float]) -> Hermite:
    return _FUNCTIONS[spec]() if isinstance(spec, str) else Hermite(spec)


# A target of `k` directions: `[problem.target]` as a table (see the module docstring).
_TARGET_KEYS = ("basis", "terms")
_BASES = ("hermite", "monomial")


def _target(key: str, value: Any) -> Any:
    if not isinstance(value, dict):
        return _function(key, value)
    unknown = sorted(set(value) - set(_TARGET_KEYS))
    if unknown:
        raise ValueError(
            f"Unknown key {key}.{unknown[0]}; the allowed keys of a multi-index target are "
            f"{list(_TARGET_KEYS)}."
        )
    basis = _choice(_BASES)(f"{key}.basis", value.get("basis", "hermite"))
    terms = value.get("terms")
    if not isinstance(terms, list) or not terms:
        raise ValueError(
            f"{key}.terms must be a non-empty list of [multi-index, coefficient] pairs, e.g. "
            f"[[[1, 0], 1.0], [[1, 1], 0.5]]; got {terms!r}."
        )
    out, k = [], None
    for n, term in enumerate(terms):
        name = f"{key}.terms[{n}]"
        ok = isinstance(term, list) and len(term) == 2 and isinstance(term[0], list)
        ok = (
            ok
            and bool(term[0])
            and all(isinstance(j, int) and not isinstance(j, bool) and j >= 0 for j in term[0])
        )
        if not ok:
            raise ValueError(
                f"{name} must be [multi-index, coefficient] with a non-empty list of "
                f"non-negative integers, e.g. [[1, 1, 0], 1.0]; got {term!r}."
            )
        k = len(term[0]) if k is None else k
        if len(term[0]) != k:
            raise ValueError(
                f"{name} has a multi-index of length {len(term[0])}; every term needs k={k}."
            )
        out.append([list(term[0]), _number()(name + "[1]", term[1])])
    if len({tuple(a) for a, _ in out}) != len(out):
        raise ValueError(f"{key}.terms lists a multi-index twice; add their coefficients.")
    return {"terms": out, "basis": basis}


def _target_table(spec: dict[str, Any]) -> Target:
    pairs = [(tuple(a), c) for a, c in spec["terms"]]
    if spec["basis"] == "monomial":
        return Target.from_monomials(pairs)
    return Target.from_terms(pairs)
