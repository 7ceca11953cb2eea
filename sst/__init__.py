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
from .rosenbrock import ParticleJacobian, Rodas4  # noqa: E402
from .solve import Trajectory, default_solver, solve  # noqa: E402
from .timescales import crossing_time, learning_times  # noqa: E402

__all__ = [
    "FiniteDimODE",
    "FiniteDimState",
    "Hermite",
    "MeanFieldODE",
    "MeanFieldState",
    "OptimizeResult",
    "ParticleJacobian",
    "Problem",
    "RandomInit",
    "Rodas4",
    "Trajectory",
    "batch_mesh",
    "cross_kernel",
    "crossing_time",
    "cross_kernel_grad",
    "default_solver",
    "erf",
    "grad_adjoint",
    "hermite_basis",
    "hitting_time",
    "learning_times",
    "log_time_area",
    "optimize_activation",
    "particles_from_law",
    "quadrature_particles",
    "random_init",
    "relu",
    "risk_at",
    "shard_batch",
    "solve",
    "solve_batch",
]
