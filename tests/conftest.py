"""Shared configuration, as diffrax's test suite has it: float64 and strict dtype promotion.

`import sst` changes nothing in JAX's configuration (tests/test_validate.py checks it), so the
tests turn float64 on themselves, before any array is created. Strict promotion makes every
implicit mixing of dtypes an error, so a float32 leak in sst shows up here.

The standard problems, save grids and models live in `helpers.py`; the fixtures below hand out
the few that several files solve, so that each distinct shape is compiled once per worker.
"""

import jax

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_dtype_promotion", "strict")

import pytest  # noqa: E402

import helpers  # noqa: E402
import sst  # noqa: E402


@pytest.fixture(scope="session")
def cubic_problem() -> sst.Problem:
    """The cubic problem (helpers.cubic_problem) at eps = 1e-2."""
    return helpers.cubic_problem(1e-2)


@pytest.fixture(scope="session")
def cubic_model(cubic_problem) -> sst.MeanFieldODE:
    return sst.MeanFieldODE(cubic_problem)


@pytest.fixture(scope="session")
def cubic_trajectory(cubic_model) -> sst.Trajectory:
    """The default solve of the cubic problem: M particles on the standard grid TS."""
    return sst.solve(cubic_model, helpers.particles(), helpers.TS)


@pytest.fixture(scope="session")
def finite_dim_trajectory() -> sst.Trajectory:
    """The default solve of FiniteDimODE for the small problem from helpers.random_network()."""
    init = helpers.random_network()
    return sst.solve(sst.FiniteDimODE(helpers.small_problem()), init.state, helpers.TS)
