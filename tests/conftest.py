"""Shared configuration, as diffrax's test suite has it: float64 and strict dtype promotion.

`import sst` changes nothing in JAX's configuration (tests/test_validate.py checks it), so the
tests turn float64 on themselves, before any array is created. Strict promotion makes every
implicit mixing of dtypes an error, so a float32 leak in sst shows up here.

The standard problems, save grids and models live in `helpers.py`; the fixtures below hand out
the few that several files solve, so that each distinct shape is compiled once per worker.
"""

import os

# XLA's CPU compiler without LLVM's optimisation passes and with its older loop emitters for
# fusions: the suite compiles hundreds of small programs and runs most of them for milliseconds,
# so compilation is most of its time. At optimisation level 0 a solve compiles about 30% faster
# and runs at most a little slower (measured on the cubic problem, its gradient, the README and
# notebooks 04-06); results stay IEEE float64 (no fast math) and agree with the default build to
# rounding (a whole adaptive solve: 1e-13 relative). Without the fusion emitters
# tests/test_mean_field.py takes 165 s instead of 220 s on 2 cores and the README 108 s instead of
# 134 s, but the Jacobian of notebook 04's functionals compiles twice as slowly (179 s against
# 98 s), so tests/test_notebooks.py runs that notebook without it (NOTEBOOK_XLA_FLAGS_DROPPED).
# --xla_llvm_disable_expensive_passes gains nothing more.
# Set here, before any computation starts the backend; the xdist workers, notebook kernels and
# subprocesses inherit it through the environment (test_distributed.py's two processes append
# their device count: they are compared with a solve of this process). The four-device
# subprocess of test_batch.py sets XLA_FLAGS itself and so keeps XLA's defaults, the build its
# rounding bound (sharded against unsharded) was measured with. SST_TEST_DEFAULT_XLA=1 runs
# everything with XLA's defaults.
FAST_COMPILE_XLA_FLAGS = (
    "--xla_backend_optimization_level=0",
    "--xla_cpu_use_fusion_emitters=false",
)
if os.environ.get("SST_TEST_DEFAULT_XLA") != "1":
    _flags = os.environ.get("XLA_FLAGS", "").split()
    os.environ["XLA_FLAGS"] = " ".join(
        _flags + [f for f in FAST_COMPILE_XLA_FLAGS if f not in _flags]
    )

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_dtype_promotion", "strict")

import helpers  # noqa: E402
import pytest  # noqa: E402

import sst  # noqa: E402

# Test files by decreasing run time on 2 cores (measured); the others follow in their order.
_SLOWEST_FIRST = (
    "test_notebooks.py",
    "test_readme.py",
    "test_mean_field.py",
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
    "test_optimize.py",
)
# The notebooks by decreasing run time (small mode, 2 cores, measured); each is a unit of its own.
_SLOWEST_NOTEBOOKS = (
    "04_gradients_optax.ipynb",
    "06_multi_index.ipynb",
    "03_ode_vs_sgd.ipynb",
    "05_staircase.ipynb",
    "01_quickstart.ipynb",
    "02_timescales.ipynb",
)


def pytest_configure(config):
    # Under pytest-xdist (`make test` runs -n 2) hand each worker whole files: the tests of a
    # file share their compiled solves, which the default "load" mode deals out one test to each
    # worker in turn, and so compiles twice (each notebook is a unit of its own, below). The
    # slowest go first (in the order above, not xdist's "most tests first"), so that no worker is
    # left alone with a long file at the end.
    if getattr(config.option, "dist", "no") == "load":
        config.option.dist = "loadfile"
        config.option.loadscopereorder = False


try:
    from xdist.scheduler import LoadFileScheduling
except ImportError:  # without pytest-xdist the suite runs in one process, in the order below
    pass
else:

    class _FilesAndNotebooks(LoadFileScheduling):
        """Whole files as units, except each notebook: they run in kernels of their own and
        share no compilation, and as one unit they were 4-5 minutes of one worker (a fifth to a
        third of the suite's time, measured) that the other could take no share of."""

        def _split_scope(self, nodeid: str) -> str:
            if "::test_notebook_runs[" in nodeid:
                return nodeid
            return super()._split_scope(nodeid)

    def pytest_xdist_make_scheduler(config, log):
        if config.option.dist == "loadfile":
            return _FilesAndNotebooks(config, log)
        return None


def _order(item) -> tuple[int, int]:
    """Files in the order of _SLOWEST_FIRST, within test_notebooks.py of _SLOWEST_NOTEBOOKS."""
    file, case = item.path.name, getattr(getattr(item, "callspec", None), "id", None)
    return (
        _SLOWEST_FIRST.index(file) if file in _SLOWEST_FIRST else len(_SLOWEST_FIRST),
        _SLOWEST_NOTEBOOKS.index(case) if case in _SLOWEST_NOTEBOOKS else len(_SLOWEST_NOTEBOOKS),
    )


def pytest_collection_modifyitems(config, items):
    items.sort(key=_order)  # stable: within a file, its own order


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
