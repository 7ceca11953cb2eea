"""`sst.RESULTS` items print by name: as class attributes, as the solver returns them (its
`where` inside jit, per member of a vmapped batch) and after a save and load."""

import equinox as eqx
import jax
import jax.numpy as jnp
import pytest
from helpers import TS, Point, Relaxation

import sst
from sst._solution import describe_steps

# The names of the codes, written out: what a user reads in the class body.
NAMES = ("successful", "max_steps_reached", "nonfinite", "solver_failed", "diverged")

DECAY = jnp.array([1.0, 2.0, 0.5])
TARGET = jnp.array([0.3, -1.0, 2.0])
X0 = Point(jnp.array([1.0, 1.0, -1.0]))


def test_every_code_prints_its_name():
    for name in NAMES:
        code = getattr(sst.RESULTS, name)
        assert repr(code) == str(code) == f"RESULTS.{name}"
    assert len(sst.RESULTS) == len(NAMES)
    # The message is still the item's text, for error messages.
    assert "step budget" in sst.RESULTS[sst.RESULTS.max_steps_reached]


@pytest.mark.slow
def test_solver_results_print_by_name(tmp_path):
    @eqx.filter_jit
    def solve(eps, max_steps):
        return sst.solve(Relaxation(DECAY, TARGET, eps), X0, TS, max_steps=max_steps, throw=False)

    assert str(solve(jnp.asarray(1e-2), 4096).result) == "RESULTS.successful"
    budget = solve(jnp.asarray(1e-2), 2)
    assert str(budget.result) == "RESULTS.max_steps_reached"
    # Printing the trajectory prints its result by name too.
    assert "result=RESULTS.max_steps_reached" in repr(budget)

    def member(eps):
        return sst.solve(Relaxation(DECAY, TARGET, eps), X0, TS, throw=False).result

    batch = jax.vmap(member)(jnp.array([1e-2, jnp.nan, 1e-1]))
    assert str(batch) == "RESULTS[successful, nonfinite, successful]"

    sst.save_trajectory(tmp_path / "budget.npz", budget)
    loaded = sst.load_trajectory(tmp_path / "budget.npz", like=budget)
    assert str(loaded.result) == "RESULTS.max_steps_reached"


@pytest.mark.slow
def test_steps_are_described_as_accepted_and_rejected():
    traj = sst.solve(Relaxation(DECAY, TARGET, 1e-2), X0, TS)
    n, accepted, rejected = (
        int(traj.stats[key]) for key in ("num_steps", "num_accepted_steps", "num_rejected_steps")
    )
    assert n == accepted + rejected and accepted > 0
    text = f"{n} steps ({accepted} accepted, {rejected} rejected)"
    assert describe_steps(traj.stats) == text
    # A summary file's copy (plain ints) reads the same; a training run counts steps only.
    assert describe_steps({k: int(v) for k, v in traj.stats.items()}) == text
    assert describe_steps({"num_steps": 500}) == "500 steps"
