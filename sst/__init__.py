"""sst: learning time-scales of two-layer networks, as solvable, batchable, differentiable ODEs.

Implements the order-parameter dynamics of Berthier, Montanari and Zhou, "Learning time-scales in
two-layers neural networks" (arXiv:2303.00055). The equations are on the docs' [model
page][setting].
`sst` needs float64 and never changes JAX's configuration: call
`jax.config.update("jax_enable_x64", True)` first.
"""

from ._batch import batch_mesh as batch_mesh, shard_batch as shard_batch, solve_batch as solve_batch
from ._control import (
    ModelErrorController as ModelErrorController,
    scaled_rms_error as scaled_rms_error,
)
from ._finite_dim import FiniteDimODE as FiniteDimODE, FiniteDimState as FiniteDimState
from ._fluctuations import Fluctuations as Fluctuations, fluctuations as fluctuations
from ._functionals import (
    crossing_time as crossing_time,
    grad_adjoint as grad_adjoint,
    hitting_time as hitting_time,
    log_time_area as log_time_area,
    risk_at as risk_at,
)
from ._hermite import Hermite as Hermite, erf as erf, hermite_basis as hermite_basis, relu as relu
from ._init import (
    RandomInit as RandomInit,
    particles_from_law as particles_from_law,
    quadrature_particles as quadrature_particles,
    random_init as random_init,
)
from ._io import load_trajectory as load_trajectory, save_trajectory as save_trajectory
from ._linear import (
    AbstractJacobian as AbstractJacobian,
    BorderedJacobian as BorderedJacobian,
    DenseJacobian as DenseJacobian,
    ParticleJacobian as ParticleJacobian,
    SchurSolver as SchurSolver,
    WoodburySolver as WoodburySolver,
)
from ._mean_field import MeanFieldODE as MeanFieldODE, MeanFieldState as MeanFieldState
from ._model import (
    AbstractModel as AbstractModel,
    ModelTerm as ModelTerm,
    WithDenseJacobian as WithDenseJacobian,
)
from ._noise import erf_i4 as erf_i4, noise_matrix as noise_matrix
from ._optimize import OptimizeResult as OptimizeResult, optimize_activation as optimize_activation
from ._plot import (
    plot_ode_vs_network as plot_ode_vs_network,
    plot_particles as plot_particles,
    plot_risk as plot_risk,
    plot_scaling as plot_scaling,
)
from ._problem import AbstractProblemModel as AbstractProblemModel, Problem as Problem
from ._rosenbrock import (
    RODAS4 as RODAS4,
    ROS34PW2 as ROS34PW2,
    AbstractRosenbrock as AbstractRosenbrock,
    Rodas4 as Rodas4,
    Ros34PW2 as Ros34PW2,
    RosenbrockInterpolation as RosenbrockInterpolation,
    RosenbrockTableau as RosenbrockTableau,
    StiffJacobian as StiffJacobian,
)
from ._solution import (
    RESULTS as RESULTS,
    TrainingRecord as TrainingRecord,
    Trajectory as Trajectory,
)
from ._solve import (
    EPS_MIN as EPS_MIN,
    ProjectedInterpolation as ProjectedInterpolation,
    ProjectedSolver as ProjectedSolver,
    default_solver as default_solver,
    solve as solve,
)
from ._target import (
    Target as Target,
    format_index as format_index,
    graded_indices as graded_indices,
)
from ._timescales import (
    Phase as Phase,
    ScalingFit as ScalingFit,
    detect_phases as detect_phases,
    fit_exponent as fit_exponent,
    fit_scalings as fit_scalings,
    heuristic_exponent as heuristic_exponent,
    label_name as label_name,
    learning_times as learning_times,
    local_exponents as local_exponents,
)
from ._train import (
    AbstractEstimator as AbstractEstimator,
    FixedSamples as FixedSamples,
    OnlineSGD as OnlineSGD,
    PopulationGradient as PopulationGradient,
    train as train,
)
