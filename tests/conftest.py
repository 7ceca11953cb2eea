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

import helpers  # noqa: E402
import pytest  # noqa: E402

import sst  # noqa: E402

# Test files by decreasing run time on 2 cores (measured); the others follow in their order.
_SLOWEST_FIRST = (
    "test_notebooks.py",
    "test_readme.py",
    "test_multi_mean_field.py",
    "test_functionals.py",
    "test_batch.py",
    "test_distributed.py",
    "test_finite_dim.py",
    "test_bad_inputs.py",
    "test_solve.py",
    "test_cli.py",
    "test_model.py",
    "test_multi_cli.py",
    "test_multi_train.py",
    "test_multi_finite_dim.py",
    "test_optimize.py",
)


def pytest_configure(config):
    # Under pytest-xdist (`make test` runs -n 2) hand each worker whole files: the tests of a
    # file share their compiled solves, which the default "load" mode deals out one test to each
    # worker in turn, and so compiles twice. The slowest files go first (in the order above, not
    # xdist's "most tests first"), so that no worker is left alone with a long file at the end.
    if getattr(config.option, "dist", "no") == "load":
        config.option.dist = "loadfile"
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(_SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable within files


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


@pytest.fixture(scope="session")
def finite_dim_reference() -> sst.Trajectory:
    """FiniteDimODE of helpers.small_problem() from helpers.random_network() on TRAIN_TS, to
    1e-12 (Dopri8): the flow that gradient descent on the weights converges to."""
    init = helpers.random_network()
    model = sst.FiniteDimODE(helpers.small_problem())
    return sst.solve(model, init.state, helpers.TRAIN_TS, **helpers.FD_REFERENCE)
