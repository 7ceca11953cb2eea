"""sst: learning time-scales of two-layer networks, as solvable, batchable, differentiable ODEs.

Implements the order-parameter dynamics of Berthier, Montanari and Zhou, "Learning time-scales in
two-layers neural networks" (arXiv:2303.00055). The equations are on the docs' [model
page][setting].
`sst` needs float64 and never changes JAX's configuration: call
`jax.config.update("jax_enable_x64", True)` first.
"""

from ._batch import batch_mesh as batch_mesh
from ._batch import shard_batch as shard_batch
from ._batch import solve_batch as solve_batch
from ._control import ModelErrorController as ModelErrorController
from ._control import scaled_rms_error as scaled_rms_error
from ._finite_dim import FiniteDimODE as FiniteDimODE
from ._finite_dim import FiniteDimState as FiniteDimState
from ._functionals import (
    crossing_time as crossing_time,
)
from ._functionals import (
    grad_adjoint as grad_adjoint,
)
from ._functionals import (
    hitting_time as hitting_time,
)
from ._functionals import (
    log_time_area as log_time_area,
)
from ._functionals import (
    risk_at as risk_at,
)
from ._hermite import Hermite as Hermite
from ._hermite import erf as erf
from ._hermite import hermite_basis as hermite_basis
from ._hermite import relu as relu
from ._init import (
    RandomInit as RandomInit,
)
from ._init import (
    particles_from_law as particles_from_law,
)
from ._init import (
    quadrature_particles as quadrature_particles,
)
from ._init import (
    random_init as random_init,
)
from ._io import load_trajectory as load_trajectory
from ._io import save_trajectory as save_trajectory
from ._linear import (
    AbstractJacobian as AbstractJacobian,
)
from ._linear import (
    DenseJacobian as DenseJacobian,
)
from ._linear import (
    ParticleJacobian as ParticleJacobian,
)
from ._linear import (
    WoodburySolver as WoodburySolver,
)
from ._mean_field import MeanFieldODE as MeanFieldODE
from ._mean_field import MeanFieldState as MeanFieldState
from ._model import AbstractModel as AbstractModel

# Multi-index targets (docs/multi_index.md).
from ._multi_finite_dim import MultiIndexFiniteDimODE as MultiIndexFiniteDimODE
from ._multi_finite_dim import MultiIndexFiniteDimState as MultiIndexFiniteDimState
from ._multi_index import AbstractMultiIndexModel as AbstractMultiIndexModel
from ._multi_index import MultiIndexProblem as MultiIndexProblem
from ._multi_index import MultiIndexTarget as MultiIndexTarget
from ._multi_index import format_index as format_index
from ._multi_index import graded_indices as graded_indices
from ._multi_init import MultiIndexRandomInit as MultiIndexRandomInit
from ._multi_init import multi_index_particles as multi_index_particles
from ._multi_init import random_init_multi_index as random_init_multi_index
from ._multi_mean_field import MultiIndexMeanFieldODE as MultiIndexMeanFieldODE
from ._multi_mean_field import MultiIndexMeanFieldState as MultiIndexMeanFieldState
from ._multi_plot import learning_times_by_label as learning_times_by_label
from ._multi_plot import plot_learning_times as plot_learning_times
from ._multi_plot import plot_monomials as plot_monomials
from ._multi_plot import plot_overlaps as plot_overlaps
from ._optimize import OptimizeResult as OptimizeResult
from ._optimize import optimize_activation as optimize_activation
from ._plot import (
    plot_ode_vs_network as plot_ode_vs_network,
)
from ._plot import (
    plot_particles as plot_particles,
)
from ._plot import (
    plot_risk as plot_risk,
)
from ._plot import (
    plot_scaling as plot_scaling,
)
from ._problem import AbstractProblemModel as AbstractProblemModel
from ._problem import Problem as Problem
from ._rosenbrock import (
    RODAS4 as RODAS4,
)
from ._rosenbrock import (
    AbstractRosenbrock as AbstractRosenbrock,
)
from ._rosenbrock import (
    Rodas4 as Rodas4,
)
from ._rosenbrock import (
    RosenbrockInterpolation as RosenbrockInterpolation,
)
from ._rosenbrock import (
    RosenbrockTableau as RosenbrockTableau,
)
from ._solution import (
    RESULTS as RESULTS,
)
from ._solution import (
    TrainingRecord as TrainingRecord,
)
from ._solution import (
    Trajectory as Trajectory,
)
from ._solve import EPS_MIN as EPS_MIN
from ._solve import default_solver as default_solver
from ._solve import solve as solve
from ._timescales import (
    Phase as Phase,
)
from ._timescales import (
    ScalingFit as ScalingFit,
)
from ._timescales import (
    detect_phases as detect_phases,
)
from ._timescales import (
    fit_exponent as fit_exponent,
)
from ._timescales import (
    fit_scalings as fit_scalings,
)
from ._timescales import (
    heuristic_exponent as heuristic_exponent,
)
from ._timescales import (
    learning_times as learning_times,
)
from ._timescales import (
    local_exponents as local_exponents,
)
from ._train import (
    AbstractEstimator as AbstractEstimator,
)
from ._train import (
    FixedSamples as FixedSamples,
)
from ._train import (
    OnlineSGD as OnlineSGD,
)
from ._train import (
    PopulationGradient as PopulationGradient,
)
from ._train import (
    train as train,
)
