"""Shared fixtures. Importing sst turns on float64 (x64) for every test."""

import jax
import pytest

import sst

jax.config.update("jax_enable_x64", True)


@pytest.fixture(scope="session")
def cubic_problem() -> sst.Problem:
    """Cubic target with a degree-0 part, polynomial activation covering degrees 0..3."""
    return sst.Problem(
        sst.Hermite([0.5, 1.0, 1.0, 1.0]), sst.Hermite([1.0, 1.0, 1.0, 1.0]), eps=1e-2
    )
