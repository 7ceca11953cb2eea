"""sst: learning time-scales of two-layer networks, as solvable, batchable, differentiable ODEs.

Implements the order-parameter dynamics of Berthier, Montanari and Zhou, "Learning time-scales in
two-layers neural networks" (arXiv:2303.00055). See THEORY.md for the equations.
"""

import jax

# The ODEs span time scales from eps to 1 with eps down to 1e-12: float64 is the default.
jax.config.update("jax_enable_x64", True)

from .hermite import Hermite, cross_kernel, cross_kernel_grad, erf, hermite_basis, relu  # noqa: E402
from .odes import (  # noqa: E402
    FiniteDimODE,
    FiniteDimState,
    MeanFieldODE,
    MeanFieldState,
    Problem,
    RandomInit,
    particles_from_law,
    quadrature_particles,
    random_init,
)
from .particles import ParticleRun, full_batch_gd, online_sgd, population_gd  # noqa: E402
from .solve import Trajectory, default_solver, solve  # noqa: E402
from .timescales import crossing_time, learning_times  # noqa: E402

__all__ = [
    "FiniteDimODE",
    "FiniteDimState",
    "Hermite",
    "MeanFieldODE",
    "MeanFieldState",
    "ParticleRun",
    "Problem",
    "RandomInit",
    "Trajectory",
    "cross_kernel",
    "crossing_time",
    "cross_kernel_grad",
    "default_solver",
    "erf",
    "full_batch_gd",
    "hermite_basis",
    "learning_times",
    "online_sgd",
    "particles_from_law",
    "population_gd",
    "quadrature_particles",
    "random_init",
    "relu",
    "solve",
]
