"""sst: learning time-scales of two-layer networks, as solvable, batchable, differentiable ODEs.

Implements the order-parameter dynamics of Berthier, Montanari and Zhou, "Learning time-scales in
two-layers neural networks" (arXiv:2303.00055). See THEORY.md for the equations.
"""

import jax

# The ODEs span time scales from eps to 1 with eps down to 1e-12: float64 is the default.
jax.config.update("jax_enable_x64", True)

from .batch import batch_mesh, shard_batch, solve_batch  # noqa: E402
from .grad import grad_adjoint, hitting_time, log_time_area, risk_at  # noqa: E402
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
from .optimize import OptimizeResult, optimize_activation  # noqa: E402
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
    "OptimizeResult",
    "ParticleJacobian",
    "ParticleRun",
    "Problem",
    "RandomInit",
    "Rodas4",
    "Trajectory",
    "batch_mesh",
    "cross_kernel",
    "cross_kernel_grad",
    "crossing_time",
    "default_solver",
    "detect_phases",
    "erf",
    "fit_exponent",
    "fit_scalings",
    "full_batch_gd",
    "grad_adjoint",
    "hermite_basis",
    "hitting_time",
    "learning_times",
    "load_trajectory",
    "local_exponents",
    "log_time_area",
    "online_sgd",
    "optimize_activation",
    "particles_from_law",
    "population_gd",
    "quadrature_particles",
    "random_init",
    "relu",
    "risk_at",
    "save_trajectory",
    "shard_batch",
    "solve",
    "solve_batch",
]
