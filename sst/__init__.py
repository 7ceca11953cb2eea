"""sst: learning time-scales of two-layer networks, as solvable, batchable, differentiable ODEs.

Implements the order-parameter dynamics of Berthier, Montanari and Zhou, "Learning time-scales in
two-layers neural networks" (arXiv:2303.00055). See THEORY.md for the equations.
"""

import jax

# The ODEs span time scales from eps to 1 with eps down to 1e-12: float64 is the default.
jax.config.update("jax_enable_x64", True)

from .hermite import Hermite, cross_kernel, cross_kernel_grad, erf, hermite_basis, relu  # noqa: E402
from .io import load_trajectory, save_trajectory  # noqa: E402
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
from .rosenbrock import ParticleJacobian, Rodas4  # noqa: E402
from .solve import Trajectory, default_solver, solve  # noqa: E402
from .timescales import (  # noqa: E402
    crossing_time,
    detect_phases,
    fit_exponent,
    fit_scalings,
    learning_times,
    local_exponents,
)

__all__ = [
    "FiniteDimODE",
    "FiniteDimState",
    "Hermite",
    "MeanFieldODE",
    "MeanFieldState",
    "ParticleJacobian",
    "ParticleRun",
    "Problem",
    "RandomInit",
    "Rodas4",
    "Trajectory",
    "cross_kernel",
    "cross_kernel_grad",
    "crossing_time",
    "default_solver",
    "detect_phases",
    "erf",
    "fit_exponent",
    "fit_scalings",
    "full_batch_gd",
    "hermite_basis",
    "learning_times",
    "load_trajectory",
    "local_exponents",
    "online_sgd",
    "particles_from_law",
    "population_gd",
    "quadrature_particles",
    "random_init",
    "relu",
    "save_trajectory",
    "solve",
]
