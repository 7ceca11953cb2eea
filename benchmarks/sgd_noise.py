"""Online SGD at a finite step against the noisy finite-dimensional ODE and against the flow.

Part 1 (the noise terms): online SGD as `sst.train(..., estimator=sst.OnlineSGD(B))` runs it
(float32, 16 seeds vmapped over the step of `sst.train`, one shared initial point; seed 0 is
checked against `sst.train` itself) against `sst.FiniteDimODE(problem, tau=tau)` (the noisy ODE,
`tau = eta d / B`) and `tau = 0` (the flow), from the same `(a, S, Q)`. Activation
`h1 + h2/2 + h3/2`; targets: the single-index `h1 + h2 + h3` at m = 4, and the staircase
`z1 + z1 z2` (k = 2) at m = 8. The initial point is the same at every d: `a` uniform in
[-2, 2], overlaps `S` uniform in [-0.3, 0.3], perpendicular parts orthonormal (`Q_ij = S_i . S_j`).
B = 1, t in [0, 0.5], d = 500, 2000, 8000 (and 4000 at the target points, eps = 1e-2 with
tau = 0.5 and 2, for the error's trend in d), tau = 0.1, 0.5, 2, eps = 0.1 and 1e-2. A point is kept
only inside the conditions of the docs (`d >> tau m / eps`: `tau m / (eps d) <= 0.5`; the fast
layer's stability: `tau B U(1) / (eps d) <= 0.2`) and the CPU budget (`steps x d <= 7e7`:
d = 8000 at tau = 0.1 would take about 10 minutes a point; d = 8000 only at eps = 1e-2); the
others are listed. Each point prints the SGD cost (`steps = t_max d / (tau B)`), the sup-norm
error of the seed-mean risk against each ODE, the standard error there, the noisy ODE against the
risk at the seed-mean `(a, S, Q)`, the seeds' spread where the noisy error is largest (the
mean risk minus the risk at the mean state, and its second-order estimate `1/2 tr(H C)`, `H` the
risk's Hessian in `(a, S, Q)`, `C` the seeds' covariance), and the largest error of the mean
`(S, Q)`. The ODEs use
diffrax Tsit5 at rtol 1e-8, atol 1e-10 (at these eps the noisy problem is not stiff, and Tsit5
is the faster solver: see `solve_s`). Why the noisy ODE misses at a finite d: a fit
`err = c/d + e_inf` over d at the target points (finite-d bias: e_inf near 0), and the first
target point rerun in float64 (float32 accumulation).

Part 2 (the 4-point expectations): `sst.erf_i4` against the published closed form of the
committee machine's `I4` (Saad and Solla 1995, eq. (A5), its Lambda's) on random covariances;
`sst.noise_matrix` against Monte Carlo (2e5 samples, label noise 0.3) for a polynomial
activation and the k = 2 staircase target at random `(a, S, Q)`; since ReLU with a polynomial
target is refused, how far the noise matrix of its Hermite series truncated at degree 2, 4, 6, 8
is from Monte Carlo (1e6 samples) of ReLU itself at that point. ReLU as activation and target:
the four-dimensional orthant probability of its noise terms on 32 nodes against 400 (random
correlation matrices, and two arguments at 1 - C_01 = 1e-2 .. 1e-16), its orthant moments with
three arguments that close against their limit, its noise matrix against
Monte Carlo (1e6 samples, random `(a, S, Q)`), and online SGD against the noisy ODE and the flow
as in part 1 (m = 4, eps = 1e-2, t in [0, 5], where its noise shows; tau = 0.5 and 2, d = 2000
and 8000; figure `sgd_noise_relu.png`).

Part 3 (the staircase under SGD): m = 8, `a(0)` uniform in [-1, 1], overlaps from
`sst.random_init` at d = 300 (small and random), target `h1 + h2 + h3 + h4`, activation
`h0/2 + h1 + h2 + h3 + h4`. The noisy ODE (Tsit5, rtol 1e-6, atol 1e-8) gives the half-learning
time of each degree against eps in [0.03, 0.3] (6 points) at tau = 0.001, 0.0015, 0.003, to
t_max = 100. Under noise `r_l^2` does not fall to zero but settles on a plateau, and for these
degrees the plateau sits near half its initial value, where a noisy curve crosses 1/2 by chance:
a half-learning time is no threshold for SGD. So both are compared through the plateau `P_l`,
the mean of `r_l^2 / r_l^2(0)` over t in [5, 10] (the SGD's horizon t = 10): a degree counts as
learned where `P_l < 1/2`. The noisy ODE's `P_3` jumps across 1/2 between two grid eps (one
trajectory either escapes its saddle or not); its threshold is refined by bisection. SGD (16
seeds, B = 20, d = 300, tau = 0.0015: 100,000 steps a point) runs at the four middle grid eps;
its threshold is where the seed-mean `P_3` crosses 1/2, linear in log eps between grid points.
`--staircase-d D` runs part 3 alone (SGD at the grid eps `--sgd-eps`), from `sst.random_init`
at `d = D`, with `--overlap-scale C` each `w_i`'s first coordinate times `C` before
renormalising (initial overlaps about `C` times larger); it prints its RESULT and writes no
result file.

The 1/d term (`sst.fluctuations`, at eps = 1e-2, B = 1): SGD's covariance about the noisy ODE
from the linear-noise expansion, the shift of its mean state, and the mean risk's 1/d term
(`1/2 tr(H C)` for the spread, the risk's gradient along the shift), added to the noisy ODE
(columns `fl err`, `fl sprd`, `fl shft`); exact Gaussian expectations at m = 4, k = 1, Monte
Carlo (2^17 samples, two keys compared) at m = 8, k = 2. Its covariance and shift are checked
against 128 seeds at the largest d (h1+h2+h3, tau = 0.5): each distinct coordinate's variance
over the seeds against the prediction, and the seeds' mean state against the noisy ODE's with
and without the shift.

RESULT keys: `noisy_sup_err_d8000` and `flow_sup_err_d8000`, the largest sup-norm error of the
noisy ODE and of the flow over the target points (tau = 0.5, 2, eps = 1e-2) at the largest d;
`noisy_within`, whether each target point's noisy error is <= 0.01 + 2 SE; the same with the
1/d term, `fluct_sup_err_d8000` and `fluct_within`; `fluct_var_ratio`, the mean of the
seeds' variance over the predicted one (128 seeds at d = 8000; 64 at d = 2000 with --quick);
`fluct_shift_z2`, the mean squared z-score of the seeds' mean state against the noisy ODE's
plus the predicted shift (about 1 where it is right);
`err_ratio_d500_d8000`,
the noisy ODE's error at d = 500 over that at the largest d, at the target points kept at both;
`i4_erf_max_diff`; `mc_z_max`, the largest |Monte Carlo - exact| / SE; `relu_trunc_err_deg4`,
the degree-4 truncation's largest error over the largest entry of ReLU's noise matrix;
`relu_p4_err`, the largest error of the 32-node orthant probability; `relu_mc_z_max`;
`relu_noisy_err_d8000` and `relu_flow_err_d8000`, the largest sup-norm error of the noisy ODE
and of the flow against SGD for ReLU at the largest d (d = 2000 with --quick);
`stop_eps_pred` and `stop_eps_sgd`, the thresholds of part 3; `solve_s`, the wall time (best of
3 after compilation) of a noisy solve at m = 8, k = 2, eps = 1e-2, tau = 0.5 to t = 10 with the
Rosenbrock-W method `Ros34PW2` (rtol 1e-6, atol 1e-8), `solve_s_tsit5` the same with Tsit5 (the
full run also times both to t = 100). `--quick` (about four minutes of CPU) runs part 1
at d = 500 and 2000 (keys still named d8000), tau = 0.5, 2, eps = 1e-2, and part 3's ODE at two
eps without its SGD (`stop_eps_sgd=nan`); the 1/d term only for h1+h2+h3.
"""

from __future__ import annotations

import argparse
import functools
import math
import pathlib
import time
import warnings

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from _common import Record, best_of, device_header, print_result
from jax.flatten_util import ravel_pytree
from matplotlib.ticker import NullFormatter

import sst
import sst._fluctuations as sst_fluctuations
import sst._train as sst_train

jax.config.update("jax_enable_x64", True)

ROOT = pathlib.Path(__file__).resolve().parent.parent
SIGMA = sst.Hermite([0.0, 1.0, 0.5, 0.5])
TARGETS = {
    "h1+h2+h3": (sst.Hermite([0.0, 1.0, 1.0, 1.0]), 4),
    "z1+z1z2": (sst.Target.from_monomials([((1, 0), 1.0), ((1, 1), 1.0)]), 8),
}
SEEDS = 16
BATCH = 1
T_MAX = 0.5
C_A, C_FAST = 0.5, 0.2  # the bounds that make "<<" of the two conditions concrete
COST_MAX = 7e7  # steps x d a point may cost (d = 8000 at tau = 0.5 is 6.4e7)
ODE = dict(solver=dfx.Tsit5(), rtol=1e-8, atol=1e-10)
PART1_TS = np.linspace(0.0, T_MAX, 26)
FLUCT_SAMPLES = 2**17
RELU_M, RELU_T_MAX = 4, 5.0  # ReLU as activation and target: its noise shows over t ~ 5

ST_TARGET = sst.Hermite([0.0, 1.0, 1.0, 1.0, 1.0])
ST_SIGMA = sst.Hermite([0.5, 1.0, 1.0, 1.0, 1.0])
ST_M, ST_D, ST_BATCH, ST_T_SGD, ST_T_MAX = 8, 300, 20, 10.0, 100.0
ST_OVERLAP_SCALE = 1.0  # --overlap-scale: the first coordinate of each w_i times this, renormalised
ST_TAU = 0.0015  # where degree 3's threshold (t_max = 10) falls inside eps in [0.03, 0.3]
ST_ODE = dict(solver=dfx.Tsit5(), rtol=1e-6, atol=1e-8, max_steps=400_000, throw=False)
ST_EPS = np.geomspace(0.03, 0.3, 6)  # the eps grid of part 3


# --------------------------------------------------------------------------- online SGD, vmapped


@eqx.filter_jit
def _advance(estimator, sim, a, W, U, keys, start, n_steps, eta):
    """`sst.train`'s steps for every seed at once (each seed's own key, same record grid)."""

    def one(a, W, key):
        return sst_train._advance(estimator, sim, a, W, U, None, key, start, n_steps, eta)

    return jax.vmap(one)(a, W, keys)


@eqx.filter_jit
def _observe(problem, sim, a, W, U):
    state, risk, residuals, _ = jax.vmap(
        lambda a, W: sst_train._observe(problem, sim, a, W, U, None)
    )(a, W)
    return state, risk, residuals


def sgd_seeds(problem, init, ts, eta, batch, seeds, key, dtype=jnp.float32):
    """Online SGD from `init` for `seeds` keys split off `key`, exactly as `sst.train(...,
    estimator=sst.OnlineSGD(batch), key=k, dtype=dtype)` for each key `k`: the record
    times (rounded to whole steps), and per seed the states, risks and residuals."""
    steps = sst_train._record_steps(np.asarray(ts, float), eta)
    sim = sst_train._cast(problem, dtype)
    a, W, U = (jnp.asarray(v, dtype) for v in (init.state.a, init.W, init.U))
    keys = jax.random.split(key, seeds)
    step_keys = jax.vmap(lambda k: jax.random.split(k)[0])(keys)  # as sst.train splits its key
    a, W = jnp.broadcast_to(a, (seeds,) + a.shape), jnp.broadcast_to(W, (seeds,) + W.shape)
    estimator = sst.OnlineSGD(batch)
    eta_d = jnp.asarray(eta, dtype)
    records = [_observe(problem, sim, a, W, U)]
    for start, stop in zip(steps[:-1], steps[1:], strict=True):
        a, W = _advance(
            estimator, sim, a, W, U, step_keys, jnp.asarray(start), jnp.asarray(stop - start), eta_d
        )
        records.append(_observe(problem, sim, a, W, U))
    states, risk, residuals = jax.tree_util.tree_map(lambda *r: jnp.stack(r, axis=1), *records)
    return steps * eta, keys, states, np.asarray(risk), np.asarray(residuals)


def mean_se(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return x.mean(0), x.std(0, ddof=1) / math.sqrt(x.shape[0])


# ------------------------------------------------------------------------------ part 1: the noise


def fixed_init(k: int, m: int, d: int) -> sst.RandomInit:
    """The same `(a, S, Q)` at every d: perpendicular parts along orthonormal coordinates."""
    rng = np.random.default_rng(1)
    a = rng.uniform(-2.0, 2.0, m)
    S = rng.uniform(-0.3, 0.3, (m, k))
    U = np.eye(d, k)
    W = S @ U.T + np.sqrt(1.0 - np.sum(S**2, axis=1))[:, None] * np.eye(d)[k : k + m]
    return sst.RandomInit.from_weights(a, W, U if k > 1 else U[:, 0])


def conditions(problem, tau: float, m: int, d: int, batch: int) -> tuple[float, float]:
    eps = float(problem.eps)
    return tau * m / (eps * d), tau * batch * float(problem.U(1.0)) / (eps * d)


def flat_states(states) -> np.ndarray:
    """The seeds' `(a, S, Q)` at each record, flattened as `sst.fluctuations` flattens them
    (`ravel_pytree`): `(seeds, records, n)`, float64."""
    flat = jax.vmap(jax.vmap(lambda a, s, Q: ravel_pytree((a, s, Q))[0]))
    return np.asarray(flat(states.a, states.s, states.Q), float)


def spread_quadratic(problem, states, i) -> float:
    """`1/2 tr(H C)` at record `i`: `H` the Hessian of the population risk in `(a, S, Q)` at the
    seed-mean state, `C` the seeds' covariance of `(a, S, Q)`. To second order in the seeds'
    spread it is the mean risk minus the risk at the mean state."""
    x = flat_states(states)[:, i]
    one = (states.a, states.s, states.Q)
    _, unravel = ravel_pytree(tuple(np.asarray(v[0, i], float) for v in one))
    model = sst.FiniteDimODE(problem)

    def risk(v):
        return model.risk(sst.FiniteDimState(*unravel(v)))

    H = jax.hessian(risk)(jnp.asarray(x.mean(0)))
    # The 1/N covariance: the mean of R(x_i) - R(mean x) is 1/2 tr(H C) for a quadratic R.
    return 0.5 * float(np.sum(np.asarray(H) * np.cov(x, rowvar=False, bias=True)))


@functools.cache
def fluctuations(name, eps, tau, seed=7):
    """`sst.fluctuations` on part 1's record grid (independent of d: it returns d times the
    covariance), and its wall time (of the first call): exact expectations at m = 4, k = 1 (a
    sparse grid of 115,813 nodes in 5 dimensions); Monte Carlo (`FLUCT_SAMPLES` drawn from
    `seed`) at m = 8, k = 2, where the exact grid would have 3e7 nodes."""
    target, m = TARGETS[name]
    model = sst.FiniteDimODE(sst.Problem(target, SIGMA, eps), tau=tau)
    mc = dict(monte_carlo=FLUCT_SAMPLES, key=jax.random.key(seed))
    start = time.perf_counter()
    out = sst.fluctuations(
        model,
        fixed_init(model.problem.k, m, 100).state,
        PART1_TS,
        batch=BATCH,
        **(mc if m > 4 else {}),
    )
    return out, time.perf_counter() - start


def compare_point(problem, m, tau, d, key, dtype=jnp.float32, fluct=None, ts=PART1_TS):
    init = fixed_init(problem.k, m, d)
    eta = tau * BATCH / d
    start = time.perf_counter()
    ts, _, states, risk, _ = sgd_seeds(problem, init, ts, eta, BATCH, SEEDS, key, dtype)
    wall = time.perf_counter() - start
    mean, se = mean_se(risk)
    S_mean = np.asarray(states.s).mean(0)
    Q_mean = np.asarray(states.Q).mean(0)
    # The risk at the seed-mean order parameters: mean risk minus it is the part of the SGD
    # mean risk that comes from the spread of the seeds (second order in the fluctuations,
    # O(1/d)), which no ODE on the means describes.
    mean_state = jax.tree_util.tree_map(lambda v: jnp.asarray(v).mean(0), states)
    at_mean = np.asarray(jax.vmap(sst.FiniteDimODE(problem).risk)(mean_state))
    out = {"wall": wall, "ts": ts, "mean": mean, "se": se, "at_mean": at_mean}
    for label, t in (("noisy", tau), ("flow", 0.0)):
        traj = sst.solve(sst.FiniteDimODE(problem, tau=t), init.state, ts, **ODE)
        diff = np.abs(mean - np.asarray(traj.risk))
        i = int(np.argmax(diff))
        out[label] = {
            "err": float(diff[i]),
            "se": float(se[i]),
            "err_at_mean": float(np.max(np.abs(at_mean - np.asarray(traj.risk)))),
            "sq": float(
                max(
                    np.max(np.abs(S_mean - np.asarray(traj.ys.s))),
                    np.max(np.abs(Q_mean - np.asarray(traj.ys.Q))),
                )
            ),
            "risk": np.asarray(traj.risk),
            "ys": traj.ys,
        }
    # The part of the noisy error that is the seeds' spread, where it is largest.
    i = int(np.argmax(np.abs(mean - out["noisy"]["risk"])))
    out["noisy"]["spread"] = float(mean[i] - at_mean[i])
    out["noisy"]["quadratic"] = spread_quadratic(problem, states, i)
    # The risk at the seed-mean state minus the noisy ODE's: the mean state's shift's part.
    out["noisy"]["shift"] = float(at_mean[i] - out["noisy"]["risk"][i])
    if fluct is not None:
        # The noisy ODE plus its 1/d term (sst.fluctuations: spread and shift).
        diff = np.abs(mean - np.asarray(fluct.mean_risk(d)))
        j = int(np.argmax(diff))
        out["noisy"] |= {
            "fluct_err": float(diff[j]),
            "fluct_se": float(se[j]),
            "fluct_spread": float(fluct.spread[i]) / d,
            "fluct_shift": float(fluct.correction[i] - fluct.spread[i]) / d,
            "fluct_risk": np.asarray(fluct.mean_risk(d)),
        }
    return out


def covariance_check(d, seeds, key):
    """`sst.fluctuations` against many SGD seeds at h1+h2+h3, eps = 1e-2, tau = 0.5: the
    variance of each distinct coordinate of (a, S, Q) over the seeds against the predicted
    `covariance / d`; the seeds' mean state against the noisy ODE's, alone and with the
    predicted `shift / d` (the mean over the coordinates of the squared z-score, each against
    its standard error: about 1 where the prediction is right); and the seed-mean risk against
    the noisy ODE alone, with the spread's part of the 1/d term, and with all of it. Returns the
    mean variance ratio and the mean squared z-score with the shift (over the coordinates and
    the three times)."""
    name, eps, tau = "h1+h2+h3", 1e-2, 0.5
    target, m = TARGETS[name]
    problem = sst.Problem(target, SIGMA, eps)
    fl, _ = fluctuations(name, eps, tau)
    start = time.perf_counter()
    _, _, states, risk, _ = sgd_seeds(
        problem, fixed_init(1, m, d), PART1_TS, tau * BATCH / d, BATCH, seeds, key
    )
    wall = time.perf_counter() - start
    X = flat_states(states)
    ode = np.asarray(
        jax.vmap(lambda a, s, Q: ravel_pytree((a, s, Q))[0])(fl.state.a, fl.state.s, fl.state.Q)
    )
    distinct, _ = sst_fluctuations.distinct_coordinates(problem, m)
    print(
        f"sst.fluctuations against {seeds} SGD seeds ({wall:.0f} s), {name}, eps = {eps:g}, "
        f"tau = {tau:g}, d = {d}: the seeds' variance of a, S and Q_ij (i < j) over the predicted "
        f"covariance / d (one ratio's SE about {math.sqrt(2 / (seeds - 1)):.2f} for Gaussian "
        "seeds); the mean squared z-score of the seeds' mean state against the noisy ODE's "
        "alone and plus shift / d; the seed-mean risk against the noisy ODE alone, plus the "
        "spread's part of the 1/d term and plus all of it"
    )
    print(
        f"{'t':>5} {'ratio mean':>10} {'min':>5} {'max':>5} {'z2 ODE':>7} {'z2 +shift':>9} "
        f"{'SGD risk':>9} {'SE':>7} {'noisy ODE':>9} {'+ spread':>9} {'+ 1/d term':>10}"
    )
    ratios, z2 = [], []
    mean, se = mean_se(risk)
    for i in (5, 15, 25):
        x = X[:, i][:, distinct]
        var = np.var(x, axis=0, ddof=1)
        ratio = var / (np.diag(np.asarray(fl.covariance[i]))[distinct] / d)
        ratios.append(ratio)
        gap = x.mean(0) - ode[i, distinct]
        shifted = gap - np.asarray(fl.shift[i])[distinct] / d
        scale = var / seeds
        z2.append(np.mean(shifted**2 / scale))
        print(
            f"{PART1_TS[i]:>5.2f} {ratio.mean():>10.2f} {ratio.min():>5.2f} {ratio.max():>5.2f} "
            f"{np.mean(gap**2 / scale):>7.2f} {z2[-1]:>9.2f} "
            f"{mean[i]:>9.4f} {se[i]:>7.4f} {float(fl.risk[i]):>9.4f} "
            f"{float(fl.risk[i] + fl.spread[i] / d):>9.4f} {float(fl.mean_risk(d)[i]):>10.4f}"
        )
    return float(np.mean(ratios)), float(np.mean(z2))


def part1(ds, taus, epss, key, trend_d=None, fluct_targets=tuple(TARGETS)):
    """The grid of points; `trend_d`, an extra d at the target points only (eps = min(epss),
    tau >= 0.5), for the error's trend in d; `sst.fluctuations` at eps = min(epss) for the
    targets `fluct_targets`."""
    print(
        f"part 1: online SGD (float32, {SEEDS} seeds, B = {BATCH}, t in [0, {T_MAX}]) against the "
        "noisy ODE and the flow (Tsit5, rtol 1e-8, atol 1e-10); errors are sup-norms over the 26 "
        "record times of the seed-mean risk (SE: its standard error there); 'at mean': the noisy "
        "ODE against the risk at the seed-mean (a, S, Q); 'spread': the mean risk minus the risk "
        "at the mean state where the noisy error is largest, and 'trHC/2' its second-order "
        "estimate 1/2 tr(H C) from the Hessian H of the risk and the seeds' covariance C of "
        "(a, S, Q); 'shift': the risk at the mean state minus the noisy ODE's there; 'fl err': "
        "the noisy ODE plus its 1/d term (sst.fluctuations, Tsit5, rtol 1e-6, atol 1e-8) "
        "against the mean risk, 'fl sprd' and 'fl shft' its predictions of 'spread' and "
        "'shift' (at eps = 1e-2); S,Q: largest error of the mean S and Q"
    )
    print(
        f"{'target':>9} {'m':>2} {'eps':>6} {'tau':>4} {'d':>5} {'steps':>7} "
        f"{'sgd s':>6} {'noisy err':>9} {'SE':>7} {'at mean':>7} {'spread':>7} {'trHC/2':>7} "
        f"{'shift':>7} {'fl err':>7} {'SE':>7} {'fl sprd':>7} {'fl shft':>7} {'flow err':>8} "
        f"{'SE':>7} "
        f"{'noisy S,Q':>9} {'flow S,Q':>8}"
    )
    rows, dropped, fluct_walls = [], [], []
    all_d = sorted(set(ds) | ({trend_d} if trend_d else set()))
    for name, (target, m) in TARGETS.items():
        for eps in epss:
            problem = sst.Problem(target, SIGMA, eps)
            for tau in taus:
                fluct = None
                if eps == min(epss) and name in fluct_targets:
                    fluct, wall = fluctuations(name, eps, tau)
                    fluct_walls.append((name, tau, wall))
                for d in all_d:
                    if d not in ds and not (eps == min(epss) and tau >= 0.5):
                        continue  # the trend's extra d only at the target points
                    steps = int(round(T_MAX * d / (tau * BATCH)))
                    c_a, c_fast = conditions(problem, tau, m, d, BATCH)
                    why = []
                    if c_a > C_A:
                        why.append(f"tau m/(eps d) = {c_a:.2g} > {C_A}")
                    if c_fast > C_FAST:
                        why.append(f"tau B U(1)/(eps d) = {c_fast:.2g} > {C_FAST}")
                    if steps * d > COST_MAX:
                        why.append(f"cost steps x d = {steps * d:.1e} > {COST_MAX:.1e}")
                    if eps != min(epss) and d == max(ds) and len(ds) > 2:
                        why.append("the largest d only at the target eps (CPU budget)")
                    point = dict(target=name, m=m, eps=eps, tau=tau, d=d, steps=steps)
                    if why:
                        dropped.append(point | {"why": "; ".join(why)})
                        continue
                    r = compare_point(problem, m, tau, d, key, fluct=fluct)
                    rows.append(point | r)
                    n, f = r["noisy"], r["flow"]
                    fl = (
                        f"{n['fluct_err']:>7.4f} {n['fluct_se']:>7.4f} {n['fluct_spread']:>7.4f} "
                        f"{n['fluct_shift']:>7.4f}"
                        if "fluct_err" in n
                        else f"{'-':>7} {'-':>7} {'-':>7} {'-':>7}"
                    )
                    print(
                        f"{name:>9} {m:>2} {eps:>6g} {tau:>4g} {d:>5} {steps:>7} "
                        f"{r['wall']:>6.1f} {n['err']:>9.4f} {n['se']:>7.4f} "
                        f"{n['err_at_mean']:>7.4f} {n['spread']:>7.4f} {n['quadratic']:>7.4f} "
                        f"{n['shift']:>7.4f} {fl} {f['err']:>8.4f} "
                        f"{f['se']:>7.4f} {n['sq']:>9.4f} {f['sq']:>8.4f}",
                        flush=True,
                    )
    print("dropped points (outside the conditions or the CPU budget):")
    for p in dropped:
        print(
            f"  {p['target']:>9} m={p['m']} eps={p['eps']:g} tau={p['tau']:g} d={p['d']} "
            f"steps={p['steps']}: {p['why']}"
        )
    print(
        "sst.fluctuations wall time (compilation included): "
        + ", ".join(f"{name} tau = {tau:g}: {wall:.0f} s" for name, tau, wall in fluct_walls)
    )
    return rows


def trend(rows, eps):
    """Per target point (eps, tau >= 0.5): the least-squares fit err(d) = c / d + e_inf of the
    noisy ODE's error over the d with tau m / (eps d) <= 0.2 (nearer the bound the second
    layer's noise is no longer a small correction); e_inf is what would be left as d grows, the
    part that a term missing from the limit ODE would leave."""
    print(
        "the noisy ODE's error against d at the target points; fit err = c/d + e_inf over the d "
        "with tau m/(eps d) <= 0.2"
    )
    out = []
    for name in TARGETS:
        for tau in sorted({r["tau"] for r in rows}):
            pts = [r for r in rows if (r["target"], r["eps"], r["tau"]) == (name, eps, tau)]
            if tau < 0.5 or not pts:
                continue
            cells = ", ".join(
                f"d={r['d']}: {r['noisy']['err']:.4f} (x d: {r['d'] * r['noisy']['err']:.0f}"
                + (
                    f"; with the 1/d term {r['noisy']['fluct_err']:.4f})"
                    if "fluct_err" in r["noisy"]
                    else ")"
                )
                for r in pts
            )
            fit = [r for r in pts if tau * r["m"] / (eps * r["d"]) <= 0.2]
            c = e_inf = float("nan")
            if len(fit) >= 2:
                d = np.array([r["d"] for r in fit], float)
                err = np.array([r["noisy"]["err"] for r in fit])
                (c, e_inf), *_ = np.linalg.lstsq(np.stack([1 / d, np.ones_like(d)], 1), err)
            print(f"  {name} tau = {tau:g}: {cells}; fit c = {c:.0f}, e_inf = {e_inf:.4f}")
            out.append(dict(target=name, tau=tau, c=float(c), e_inf=float(e_inf)))
    return out


def relu_part(ds, taus, key):
    """ReLU as activation and target (exact noise terms): online SGD against the noisy ODE and
    the flow at eps = 1e-2, m = RELU_M, t in [0, RELU_T_MAX], as part 1 runs its points."""
    problem = sst.Problem(sst.relu(), sst.relu(), 1e-2)
    ts = np.linspace(0.0, RELU_T_MAX, 26)
    print(
        f"ReLU as activation and target, m = {RELU_M}, eps = 1e-2, t in [0, {RELU_T_MAX:g}]: "
        f"online SGD (float32, {SEEDS} seeds, B = {BATCH}) against the noisy ODE and the flow "
        "(sup-norm errors of the seed-mean risk, SE at the same time; min 1-C: the smallest "
        "1 - |overlap| between the target and the neurons or two neurons along the noisy ODE)"
    )
    print(
        f"{'tau':>4} {'d':>5} {'steps':>7} {'conditions':>12} {'sgd s':>6} {'noisy err':>9} "
        f"{'SE':>7} {'at mean':>7} {'flow err':>8} {'SE':>7} {'min 1-C':>9}"
    )
    rows = []
    for tau in taus:
        for d in ds:
            steps = int(round(RELU_T_MAX * d / (tau * BATCH)))
            c_a, c_fast = conditions(problem, tau, RELU_M, d, BATCH)
            if c_a > C_A or c_fast > C_FAST:
                print(f"{tau:>4g} {d:>5} dropped: outside the conditions ({c_a:.2f}, {c_fast:.3f})")
                continue
            r = compare_point(problem, RELU_M, tau, d, key, ts=ts)
            rows.append(dict(target="relu", m=RELU_M, eps=1e-2, tau=tau, d=d, steps=steps) | r)
            n, f = r["noisy"], r["flow"]
            # How close the noisy ODE's units come: the smallest 1 - |C| over the pairs of the
            # target and the neurons (ReLU's noise terms lose accuracy where three are within
            # about 1e-11 of each other).
            s, Q = np.asarray(n["ys"].s), np.asarray(n["ys"].Q)
            off = Q[:, *np.triu_indices(RELU_M, 1)]
            closest = min(np.min(1 - np.abs(s)), np.min(1 - np.abs(off)))
            print(
                f"{tau:>4g} {d:>5} {steps:>7} {c_a:>5.2f},{c_fast:>6.3f} {r['wall']:>6.1f} "
                f"{n['err']:>9.4f} {n['se']:>7.4f} {n['err_at_mean']:>7.4f} {f['err']:>8.4f} "
                f"{f['se']:>7.4f} {closest:>9.1e}",
                flush=True,
            )
    return rows


def check_against_train(key) -> float:
    """Seed 0 of `sgd_seeds` against `sst.train` itself (a small point)."""
    problem = sst.Problem(TARGETS["h1+h2+h3"][0], SIGMA, 1e-2)
    init = fixed_init(1, 4, 200)
    ts = np.linspace(0.0, 0.1, 3)
    _, keys, _, risk, _ = sgd_seeds(problem, init, ts, 0.5 / 200, 1, 2, key)
    run = sst.train(
        problem,
        init,
        ts,
        eta=0.5 / 200,
        estimator=sst.OnlineSGD(1),
        key=keys[0],
        dtype=jnp.float32,
        progress=False,
    )
    return float(np.max(np.abs(np.asarray(run.risk) - risk[0])))


# ------------------------------------------------------------------ part 2: 4-point expectations


def saad_solla_i4(C: np.ndarray) -> float:
    """The committee machine's `I4` as published (Saad and Solla 1995, eq. (A5)), from the
    covariance `C` of `(u, v, w, y)` (indices 1..4 there)."""
    c = lambda i, j: C[i - 1, j - 1]  # noqa: E731
    lam4 = (1 + c(1, 1)) * (1 + c(2, 2)) - c(1, 2) ** 2
    lam0 = (
        lam4 * c(3, 4)
        - c(2, 3) * c(2, 4) * (1 + c(1, 1))
        - c(1, 3) * c(1, 4) * (1 + c(2, 2))
        + c(1, 2) * c(1, 3) * c(2, 4)
        + c(1, 2) * c(1, 4) * c(2, 3)
    )
    lam1 = lam4 * (1 + c(3, 3)) - c(2, 3) ** 2 * (1 + c(1, 1)) - c(1, 3) ** 2 * (1 + c(2, 2))
    lam1 += 2 * c(1, 2) * c(1, 3) * c(2, 3)
    lam2 = lam4 * (1 + c(4, 4)) - c(2, 4) ** 2 * (1 + c(1, 1)) - c(1, 4) ** 2 * (1 + c(2, 2))
    lam2 += 2 * c(1, 2) * c(1, 4) * c(2, 4)
    return 4 / np.pi**2 / np.sqrt(lam4) * np.arcsin(lam0 / np.sqrt(lam1 * lam2))


def i4_check(n: int = 200) -> float:
    rng = np.random.default_rng(0)
    worst = 0.0
    for _ in range(n):
        X = rng.normal(size=(4, 6)) * rng.uniform(0.2, 1.5, size=(4, 1))
        C = X @ X.T / 6
        worst = max(worst, abs(float(sst.erf_i4(jnp.asarray(C))) - saad_solla_i4(C)))
    return worst


def _noise_against_samples(activations, sampled, samples: int, m: int = 4, target=None):
    """`sst.noise_matrix` with each of `activations` against the Monte Carlo mean (and its
    standard error) of the noise matrix of the activation `sampled` (a callable and its
    derivative), at a random `(a, S, Q)` with `target` (the `z1 + z1 z2` staircase if None) and
    label noise 0.3."""
    target = TARGETS["z1+z1z2"][0] if target is None else target
    problems = [sst.Problem(target, activation, 1e-2, 0.3) for activation in activations]
    rng = np.random.default_rng(2)
    k, noise = problems[0].k, problems[0].noise
    dim = k + m + 2
    W = rng.normal(size=(m, dim))
    W /= np.linalg.norm(W, axis=1, keepdims=True)
    a = rng.normal(size=m) * 1.5
    S, Q = (jnp.asarray(v) for v in (W[:, :k], W @ W.T))
    exact = [np.asarray(sst.noise_matrix(p, jnp.asarray(a), S, Q)).ravel() for p in problems]
    x = jax.random.normal(jax.random.key(3), (samples, dim))
    z = x @ W.T
    function, derivative = sampled
    e = problems[0].phi(x[:, :k]) - function(z) @ a / m
    g = a * derivative(z)  # a_i sigma'(z_i)
    values = np.asarray((e**2 + noise**2)[:, None, None] * g[:, :, None] * g[:, None, :]).reshape(
        samples, -1
    )
    mean, se = mean_se(values)
    return exact, mean, se


def mc_check(samples: int = 200_000) -> float:
    (exact,), mean, se = _noise_against_samples([SIGMA], (SIGMA, SIGMA.derivative), samples)
    return float(np.max(np.abs(mean - exact) / se))


def orthant_check(per_gap: int = 20) -> tuple[dict[str, float], dict[str, float]]:
    """ReLU's orthant terms where arguments nearly coincide (`1 - C` about the gap, and 0).
    The four-dimensional orthant probability on its 32-node rule against a 400-node rule, two
    arguments close; and the moments `E[X_0 X_w 1{X > 0}]` with three arguments close and a
    fourth apart against their limit, the moments of the two distinct arguments (which they
    approach as `sqrt(gap)`, so a loss of accuracy shows as a departure from that trend)."""
    from sst._noise import _orthant_moment, _orthant_probability

    rng = np.random.default_rng(4)
    nodes, limit = {}, {}
    for gap in (None, 1e-2, 1e-4, 1e-6, 1e-8, 1e-10, 1e-12, 1e-14, 1e-16):
        V = rng.normal(size=(per_gap, 4, 6))
        close = V.copy()
        if gap is not None:
            V[:, 1] = V[:, 0] + math.sqrt(gap) * rng.normal(size=(per_gap, 6))
            close[:, 1:3] = close[:, :1] + math.sqrt(gap) * rng.normal(size=(per_gap, 2, 6))
        V /= np.linalg.norm(V, axis=2, keepdims=True)
        C = jnp.asarray(V @ np.swapaxes(V, 1, 2))
        diff = jnp.abs(_orthant_probability(C) - _orthant_probability(C, nodes=400))
        name = "random" if gap is None else f"{gap:.0e}"
        nodes[name] = float(jnp.max(diff))
        if gap is None:
            continue
        close /= np.linalg.norm(close, axis=2, keepdims=True)
        C = jnp.asarray(close @ np.swapaxes(close, 1, 2))
        two = C[:, [0, 3]][:, :, [0, 3]]
        limit[name] = max(
            float(jnp.max(jnp.abs(_orthant_moment(C, w) - _orthant_moment(two, 0)))) for w in (0, 1)
        )
    return nodes, limit


def relu_mc_check(samples: int = 1_000_000) -> float:
    """ReLU's exact noise matrix (ReLU target) against Monte Carlo: the largest |z|."""
    relu = (jax.nn.relu, lambda z: (z > 0).astype(z.dtype))
    (exact,), mean, se = _noise_against_samples([sst.relu()], relu, samples, target=sst.relu())
    return float(np.max(np.abs(mean - exact) / se))


def relu_truncation_check(degrees=(2, 4, 6, 8), samples: int = 1_000_000) -> dict[int, float]:
    """The noise matrix of ReLU's Hermite series truncated at each degree against Monte Carlo
    of ReLU itself with the `z1 + z1 z2` target: the largest entry's error over the largest
    entry (ReLU with a polynomial target is refused, and the truncation is the stand-in its
    error message names)."""
    relu = (jax.nn.relu, lambda z: (z > 0).astype(z.dtype))
    truncations = [sst.Hermite(sst.relu(degree).coeffs) for degree in degrees]
    exact, mean, se = _noise_against_samples(truncations, relu, samples)
    scale = np.max(np.abs(mean))
    out = {}
    for degree, values in zip(degrees, exact, strict=True):
        out[degree] = float(np.max(np.abs(values - mean)) / scale)
        print(
            f"  degree {degree}: largest error {out[degree]:.3f} of the largest entry "
            f"(Monte Carlo SE {np.max(se) / scale:.3f})"
        )
    return out


# ------------------------------------------------------------------ part 3: staircase under SGD


def st_setup(eps, tau):
    problem = sst.Problem(ST_TARGET, ST_SIGMA, eps)
    init = sst.random_init(jax.random.key(7), ST_M, ST_D, a_scale=1.0, a_law="uniform")
    if ST_OVERLAP_SCALE != 1.0:
        W = init.W.at[:, 0].multiply(ST_OVERLAP_SCALE)
        W = W / jnp.linalg.norm(W, axis=1, keepdims=True)
        init = sst.RandomInit.from_weights(init.state.a, W, init.U[:, 0])  # k = 1: U is (d, 1)
    return problem, init, sst.FiniteDimODE(problem, tau=tau)


def relative(r2: np.ndarray) -> np.ndarray:
    """`r^2 / r^2(0)` along the time axis (the one before the last) of squared residuals; 0 for a
    degree whose initial residual is 0."""
    start = r2[..., :1, :]
    return np.where(start > 0, r2 / np.where(start > 0, start, 1.0), 0.0)


def half_times(ts: np.ndarray, r2: np.ndarray) -> np.ndarray:
    """Per degree (columns of `r2`, a curve of squared residuals), the first time `r^2` falls to
    half its initial value, linear in log t between saves; inf where it never does."""
    out = np.full(r2.shape[1], np.inf)
    for j, ratio in enumerate(relative(r2).T):
        below = np.nonzero(ratio <= 0.5)[0]
        if below.size and below[0] > 0:
            i = below[0]
            lt = np.log(ts[i - 1 : i + 1])
            f = (ratio[i - 1] - 0.5) / (ratio[i - 1] - ratio[i])
            out[j] = float(np.exp(lt[0] + f * (lt[1] - lt[0])))
    return out


def st_ts(t_max):
    return np.concatenate([[0.0], np.geomspace(1e-3, t_max, 120)])


def plateau(ts: np.ndarray, r2: np.ndarray, t_max: float) -> np.ndarray:
    """Where `r_l^2 / r_l^2(0)` has settled by `t_max`: its mean over the saves in
    `[t_max / 2, t_max]`, per column of `r2` (a curve, or seeds by curve)."""
    late = (ts >= t_max / 2) & (ts <= t_max)
    return relative(r2)[..., late, :].mean(-2)


def st_ode_run(eps, tau):
    """The noisy ODE of part 3 to `ST_T_MAX`: half-learning times and the plateau at the SGD's
    horizon `ST_T_SGD`, per degree."""
    problem, init, model = st_setup(eps, tau)
    ts = st_ts(ST_T_MAX)
    traj = sst.solve(model, init.state, ts, **ST_ODE)
    if not bool(traj.success):
        raise RuntimeError(
            f"The noisy ODE at eps = {eps:g}, tau = {tau:g} stopped before t = {ST_T_MAX:g}: "
            f"{traj.result}; the plateau and the thresholds need the whole run (raise "
            "ST_ODE's max_steps, or use a stiff solver if it ran out of steps)."
        )
    r2 = np.asarray(traj.residuals) ** 2
    return half_times(ts, r2), plateau(ts, r2, ST_T_SGD)


def crossing(eps_grid, levels):
    """Going down an increasing eps grid from its top: the first pair of neighbours on either
    side of level 1/2 (learned below it, not above), and the eps where the level crosses 1/2,
    linear in log eps between them (nan, -1 if none). Usually the smaller eps is the one that
    does not learn; from larger initial overlaps it can be the other way round."""
    learned = levels < 0.5
    for i in range(len(eps_grid) - 2, -1, -1):
        if learned[i + 1] != learned[i]:
            f = (0.5 - levels[i]) / (levels[i + 1] - levels[i])
            return float(np.exp(np.log(eps_grid[i]) + f * np.log(eps_grid[i + 1] / eps_grid[i]))), i
    return float("nan"), -1


def bisect_stop(eps_lo, eps_hi, tau, degree, n=3):
    """Refine the ODE's threshold between neighbours `eps_lo < eps_hi`, one with its plateau
    of the degree below 1/2 and the other above."""
    hi_learns = st_ode_run(eps_hi, tau)[1][degree] < 0.5
    for _ in range(n):
        mid = math.sqrt(eps_hi * eps_lo)
        if (st_ode_run(mid, tau)[1][degree] < 0.5) == hi_learns:
            eps_hi = mid
        else:
            eps_lo = mid
    return math.sqrt(eps_hi * eps_lo)


def part3(taus, eps_grid, sgd_tau, sgd_degree, sgd_eps, run_sgd, key, figure):
    print(
        f"part 3: staircase h1+h2+h3+h4, sigma = h0/2+h1+..+h4, m = {ST_M}, a(0) uniform in "
        f"[-1, 1], overlaps of sst.random_init at d = {ST_D}; noisy ODE by Tsit5 (rtol 1e-6, "
        f"atol 1e-8) to t = {ST_T_MAX:g}; half-learning times (inf: not learned by t_max) and "
        f"the plateau P_l, the mean of r_l^2 / r_l^2(0) over t in [{ST_T_SGD / 2:g}, "
        f"{ST_T_SGD:g}]"
    )
    print(
        f"{'tau':>6} {'eps':>7} "
        + " ".join(f"{'t_' + str(k):>8}" for k in range(1, 5))
        + " "
        + " ".join(f"{'P_' + str(k):>6}" for k in range(1, 5))
    )
    table, levels = {}, {}
    for tau in taus:
        runs = [st_ode_run(eps, tau) for eps in eps_grid]
        table[tau] = np.array([t for t, _ in runs])
        levels[tau] = np.array([p for _, p in runs])
        for eps, t, p in zip(eps_grid, table[tau], levels[tau], strict=True):
            print(
                f"{tau:>6g} {eps:>7.3g} "
                + " ".join(f"{x:>8.3g}" for x in t[1:5])
                + " "
                + " ".join(f"{x:>6.3f}" for x in p[1:5]),
                flush=True,
            )
    print(f"ODE: eps (from the top) where the plateau P_l at t = {ST_T_SGD:g} crosses 1/2")
    for tau in taus:
        cells = [f"degree {k}: {crossing(eps_grid, levels[tau][:, k])[0]:.3g}" for k in (2, 3, 4)]
        print(f"  tau = {tau:g}: " + ", ".join(cells))

    # The prediction at the SGD's horizon: on the grid, then refined by bisection.
    coarse, i = crossing(eps_grid, levels[sgd_tau][:, sgd_degree])
    if i < 0:
        print(f"no threshold of degree {sgd_degree} at tau = {sgd_tau:g} on the eps grid")
        return float("nan"), float("nan"), float("nan"), table, None
    pred = bisect_stop(eps_grid[i], eps_grid[i + 1], sgd_tau, sgd_degree)
    print(
        f"predicted threshold of degree {sgd_degree} at tau = {sgd_tau:g}: P_{sgd_degree} = 1/2 "
        f"at eps = {pred:.3g} by bisection (interpolated on the grid: {coarse:.3g})"
    )
    if not run_sgd:
        print("SGD of part 3 skipped (--quick)")
        return pred, coarse, float("nan"), table, None
    eta = sgd_tau * ST_BATCH / ST_D
    sgd_grid = eps_grid[sgd_eps]
    print(
        f"SGD: {SEEDS} seeds, B = {ST_BATCH}, d = {ST_D}, tau = {sgd_tau:g} (eta = {eta:.2g}), "
        f"to t = {ST_T_SGD:g}, at eps = {', '.join(f'{e:.3g}' for e in sgd_grid)}: the plateau "
        "P_l of each seed, mean +- SE over seeds, the fraction of seeds with P_l < 1/2, and the "
        "noisy ODE's P_l"
    )
    print(
        f"{'eps':>7} {'steps':>7} {'tau m/(eps d)':>13} {'tau B U(1)/(eps d)':>18} {'sgd s':>6} "
        + " ".join(f"{'P_' + str(k):>13}" for k in range(1, 5))
        + f" {'seeds P_' + str(sgd_degree) + '<1/2':>13} "
        + " ".join(f"{'ode P_' + str(k):>8}" for k in range(1, 5))
    )
    sgd_levels, sgd_se = [], []
    for eps, p_ode in zip(sgd_grid, levels[sgd_tau][sgd_eps], strict=True):
        problem, init, _ = st_setup(eps, sgd_tau)
        start = time.perf_counter()
        # The record grid in whole steps (the first geometric times are below one step).
        ts = np.unique(np.rint(st_ts(ST_T_SGD) / eta)) * eta
        ts, _, _, _, res = sgd_seeds(problem, init, ts, eta, ST_BATCH, SEEDS, key)
        wall = time.perf_counter() - start
        per_seed = plateau(ts, res**2, ST_T_SGD)  # (seeds, degrees)
        mean, se = mean_se(per_seed)
        sgd_levels.append(mean)
        sgd_se.append(se)
        c_a, c_fast = conditions(problem, sgd_tau, ST_M, ST_D, ST_BATCH)
        print(
            f"{eps:>7.3g} {int(round(ST_T_SGD / eta)):>7} {c_a:>13.3g} {c_fast:>18.3g} "
            f"{wall:>6.1f} "
            + " ".join(f"{m:>7.3f}+-{e:.3f}" for m, e in zip(mean[1:5], se[1:5], strict=True))
            + f" {np.mean(per_seed[:, sgd_degree] < 0.5):>13.2f} "
            + " ".join(f"{x:>8.3f}" for x in p_ode[1:5]),
            flush=True,
        )
    sgd_levels, sgd_se = np.array(sgd_levels), np.array(sgd_se)
    measured, _ = crossing(sgd_grid, sgd_levels[:, sgd_degree])
    flags = lambda p: "".join("L" if x < 0.5 else "-" for x in p)  # noqa: E731
    print(
        f"degree {sgd_degree} learned by t = {ST_T_SGD:g} (L: P < 1/2) or not (-), eps upwards: "
        f"SGD {flags(sgd_levels[:, sgd_degree])}, noisy ODE "
        f"{flags(levels[sgd_tau][sgd_eps, sgd_degree])}"
    )
    print(
        f"SGD threshold of degree {sgd_degree}: eps = {measured:.3g} (the seed-mean P crosses "
        f"1/2, interpolated in log eps), predicted {pred:.3g}; ratio "
        f"{math.exp(abs(math.log(pred / measured))):.2f}"
    )
    if figure is not None:
        fig, axes = plt.subplots(1, len(taus) + 1, figsize=(4 * (len(taus) + 1), 3.6))
        for ax, tau in zip(axes[:-1], taus, strict=True):
            for k in range(1, 5):
                times = np.minimum(table[tau][:, k], 2 * ST_T_MAX)  # not learned: drawn at 2 t_max
                ax.loglog(eps_grid, times, "o-", ms=3, color=f"C{k - 1}", label=f"degree {k}")
            ax.axhline(ST_T_MAX, color="k", ls=":", lw=0.8)
            ax.set_title(f"noisy ODE, tau = {tau:g}", fontsize=9)
        axes[0].set_ylabel("half-learning time (2 t_max: never)")
        axes[0].legend(fontsize=7)
        ax = axes[-1]
        for k in range(1, 5):
            ax.semilogx(eps_grid, levels[sgd_tau][:, k], ".-", color=f"C{k - 1}", lw=1)
            ax.errorbar(
                sgd_grid, sgd_levels[:, k], yerr=sgd_se[:, k], fmt="x", color=f"C{k - 1}", ms=6
            )
        ax.axhline(0.5, color="k", ls=":", lw=0.8)
        ax.axvline(pred, color=f"C{sgd_degree - 1}", ls="--", lw=0.8)
        ax.set_ylabel(f"plateau: mean r_l^2 / r_l^2(0), t in [{ST_T_SGD / 2:g}, {ST_T_SGD:g}]")
        for ax in axes:
            ax.set_xlabel(r"$\varepsilon$")
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xticks([0.03, 0.1, 0.3], ["0.03", "0.1", "0.3"])
        ax.set_title(f"tau = {sgd_tau:g}: noisy ODE (lines), SGD (x, +- SE)", fontsize=9)
        fig.suptitle(
            f"staircase under noise: noisy ODE (Tsit5 rtol 1e-6 atol 1e-8) and SGD ({SEEDS} "
            f"seeds, d = {ST_D}, B = {ST_BATCH}, float32); dashed: predicted threshold of degree "
            f"{sgd_degree}",
            fontsize=8,
        )
        fig.tight_layout()
        fig.savefig(figure, dpi=130)
        plt.close(fig)
    return pred, coarse, measured, table, sgd_levels


# ---------------------------------------------------------------------------------------- main


def risk_figure(rows, d, path):
    chosen = [r for r in rows if r["d"] == d and r["eps"] == 1e-2 and r["tau"] in (0.5, 2.0)]
    if not chosen:
        return
    fig, axes = plt.subplots(1, len(chosen), figsize=(3.6 * len(chosen), 3.4), sharey=False)
    for ax, r in zip(np.atleast_1d(axes), chosen, strict=True):
        ax.plot(r["ts"], r["flow"]["risk"], "k--", label="flow (tau = 0)")
        ax.plot(r["ts"], r["noisy"]["risk"], "C1", label="noisy ODE")
        if "fluct_risk" in r["noisy"]:
            ax.plot(r["ts"], r["noisy"]["fluct_risk"], "C2", label="noisy ODE + 1/d term")
        ax.errorbar(r["ts"], r["mean"], 2 * r["se"], fmt=".", color="C0", ms=3, label="SGD ± 2 SE")
        ax.set_title(f"{r['target']}, m = {r['m']}, tau = {r['tau']:g}", fontsize=9)
        ax.set_xlabel("t")
    np.atleast_1d(axes)[0].set_ylabel("population risk")
    np.atleast_1d(axes)[0].legend(fontsize=7)
    fig.suptitle(
        f"online SGD (float32, {SEEDS} seeds, B = 1, d = {d}, eps = 1e-2) against the ODEs "
        "(Tsit5, rtol 1e-8, atol 1e-10)",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def staircase_only(d: int, scale: float, sgd_eps: str) -> None:
    """Part 3 alone at another `d` and initial overlaps: whether SGD's threshold moves."""
    global ST_D, ST_OVERLAP_SCALE
    fields = sgd_eps.split(",")
    indices = [int(i) for i in fields if i.strip().isdigit()]
    if len(indices) != len(fields) or indices != sorted(set(indices)) or indices[-1] >= len(ST_EPS):
        raise SystemExit(
            f"--sgd-eps must be increasing indices into the eps grid (0 to {len(ST_EPS) - 1}), "
            f"such as 1,2,3,4; got {sgd_eps!r}."
        )
    ST_D, ST_OVERLAP_SCALE = d, scale
    print(device_header())
    overlaps = np.asarray(st_setup(0.1, 0.0)[1].state.s)
    print(f"part 3 only: d = {d}, overlap scale {scale:g}, initial s = {np.round(overlaps, 3)}")
    pred, _, measured, _, _ = part3(
        (ST_TAU,), ST_EPS, ST_TAU, 3, indices, True, jax.random.key(0), None
    )
    print_result(
        {
            "stop_eps_pred": f"{pred:.3g}",
            "stop_eps_sgd": f"{measured:.3g}",
            "staircase_d": str(d),
            "overlap_scale": f"{scale:g}",
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller d and grids, about a minute")
    parser.add_argument(
        "--staircase-d",
        type=int,
        help="run part 3 only, from sst.random_init at this d (no result file)",
    )
    parser.add_argument(
        "--overlap-scale",
        type=float,
        default=1.0,
        help="with --staircase-d: each w_i's first coordinate times this, renormalised",
    )
    parser.add_argument(
        "--sgd-eps", default="1,2,3,4", help="with --staircase-d: eps grid indices of the SGD runs"
    )
    args = parser.parse_args()
    if args.staircase_d is not None:
        staircase_only(args.staircase_d, args.overlap_scale, args.sgd_eps)
        return
    record = Record(__file__, __doc__, "quick" if args.quick else "full")
    print(device_header())
    warnings.simplefilter("ignore", RuntimeWarning)  # learning_times' "not learned" warnings
    key = jax.random.key(0)

    i4 = i4_check()
    mc = mc_check()
    print(f"erf I4 against Saad and Solla's closed form, 200 random covariances: max diff {i4:.1e}")
    print(f"noise_matrix against Monte Carlo (2e5 samples): max |z| = {mc:.2f}")
    orthant, coincident = orthant_check()
    print(
        "ReLU's four-dimensional orthant probability, 32 nodes against 400 (20 matrices each; "
        "by 1 - C_01): " + ", ".join(f"{k} {v:.1e}" for k, v in orthant.items())
    )
    print(
        "ReLU's orthant moments with three arguments within 1 - C of each other against their "
        "limit (largest difference; sqrt(gap) expected): "
        + ", ".join(f"{k} {v:.1e}" for k, v in coincident.items())
    )
    relu_mc = relu_mc_check()
    print(
        "ReLU's noise_matrix (ReLU target) against Monte Carlo (1e6 samples): "
        f"max |z| = {relu_mc:.2f}"
    )
    print("ReLU's truncated Hermite series against Monte Carlo of ReLU (1e6 samples):")
    relu_errors = relu_truncation_check((4,) if args.quick else (2, 4, 6, 8))
    print(f"vmapped SGD seed 0 against sst.train: max risk diff {check_against_train(key):.1e}")

    if args.quick:
        # sst.fluctuations at m = 8, k = 2 takes about a minute: the single-index target only.
        ds, taus, epss, trend_d = (500, 2000), (0.5, 2.0), (1e-2,), None
        fluct_targets = ("h1+h2+h3",)
    else:
        ds, taus, epss, trend_d = (500, 2000, 8000), (0.1, 0.5, 2.0), (0.1, 1e-2), 4000
        fluct_targets = tuple(TARGETS)
    rows = part1(ds, taus, epss, key, trend_d, fluct_targets)
    d_max = max(ds)
    goal = [r for r in rows if r["eps"] == 1e-2 and r["tau"] in (0.5, 2.0)]
    top = [r for r in goal if r["d"] == d_max]
    noisy = max(r["noisy"]["err"] for r in top)
    flow = max(r["flow"]["err"] for r in top)
    within = all(
        r["noisy"]["err"] <= 0.01 + 2 * r["noisy"]["se"] for r in top if r["flow"]["err"] >= 0.05
    )
    fluct_top = [r for r in top if "fluct_err" in r["noisy"]]
    fluct = max((r["noisy"]["fluct_err"] for r in fluct_top), default=float("nan"))
    fluct_within = bool(fluct_top) and all(
        r["noisy"]["fluct_err"] <= 0.01 + 2 * r["noisy"]["fluct_se"]
        for r in fluct_top
        if r["flow"]["err"] >= 0.05
    )
    for r in top:
        n = r["noisy"]
        line = (
            f"target point {r['target']} tau = {r['tau']:g} d = {d_max}: noisy error "
            f"{n['err']:.4f} against 0.01 + 2 SE = {0.01 + 2 * n['se']:.4f} "
            f"({'within' if n['err'] <= 0.01 + 2 * n['se'] else 'outside'})"
        )
        if "fluct_err" in n:
            bound = 0.01 + 2 * n["fluct_se"]
            line += (
                f"; with the 1/d term {n['fluct_err']:.4f} against {bound:.4f} "
                f"({'within' if n['fluct_err'] <= bound else 'outside'})"
            )
        print(f"{line}; flow error {r['flow']['err']:.4f}")
    ratios = []
    for r in goal:
        if r["d"] == min(ds):
            big = [s for s in top if (s["target"], s["tau"]) == (r["target"], r["tau"])]
            if big:
                ratios.append(r["noisy"]["err"] / big[0]["noisy"]["err"])
                print(
                    f"{r['target']} tau = {r['tau']:g}: noisy error d = {min(ds)} / d = {d_max}: "
                    f"{ratios[-1]:.2f}"
                )
    ratio = min(ratios) if ratios else float("nan")
    trend(rows, 1e-2)
    if not args.quick:
        # The Monte Carlo of sst.fluctuations at m = 8: the z1+z1z2 target point again with
        # another key.
        fl = [fluctuations("z1+z1z2", 1e-2, 2.0, seed)[0] for seed in (7, 8)]
        c = [np.asarray(f.correction) for f in fl]
        print(
            f"sst.fluctuations' Monte Carlo ({FLUCT_SAMPLES} samples), z1+z1z2 tau = 2: the 1/d "
            f"term with two keys differs by at most {np.max(np.abs(c[0] - c[1])):.2f} (its "
            f"largest value {np.max(np.abs(c[0])):.1f}; at d = {d_max}: "
            f"{np.max(np.abs(c[0] - c[1])) / d_max:.5f})"
        )
    relu_rows = relu_part((2000,) if args.quick else (2000, d_max), (0.5, 2.0), key)
    relu_top = [r for r in relu_rows if r["d"] == max((r["d"] for r in relu_rows), default=0)]
    relu_noisy = max((r["noisy"]["err"] for r in relu_top), default=float("nan"))
    relu_flow = max((r["flow"]["err"] for r in relu_top), default=float("nan"))
    var_ratio, shift_z2 = covariance_check(*((2000, 64) if args.quick else (d_max, 128)), key)
    if not args.quick:
        # Float32 accumulation: the first target point again in float64 (same keys; the
        # normals of another precision are other draws, so compare within the SEs).
        r32 = next(r for r in top if (r["target"], r["tau"]) == ("h1+h2+h3", 0.5))
        target, m = TARGETS["h1+h2+h3"]
        r64 = compare_point(sst.Problem(target, SIGMA, 1e-2), m, 0.5, d_max, key, jnp.float64)
        gap = np.abs(r64["mean"] - r32["mean"])
        i = 1 + int(np.argmax((gap / np.hypot(r64["se"], r32["se"]))[1:]))  # t = 0: no spread
        print(
            f"float64 rerun of h1+h2+h3 tau = 0.5 d = {d_max} ({r64['wall']:.0f} s): noisy "
            f"error {r64['noisy']['err']:.4f} (SE {r64['noisy']['se']:.4f}; float32 "
            f"{r32['noisy']['err']:.4f}), at the seed-mean state "
            f"{r64['noisy']['err_at_mean']:.4f}; "
            f"largest |float64 - float32| of the mean risk over the combined SE: "
            f"{gap[i]:.4f} / {np.hypot(r64['se'][i], r32['se'][i]):.4f} at t = {r32['ts'][i]:.2f}"
        )

    # A noisy solve at m = 8, k = 2, eps = 1e-2 after compilation, with the Rosenbrock-W
    # method (the model hands it the flow's Jacobian) and with Tsit5.
    problem = sst.Problem(TARGETS["z1+z1z2"][0], SIGMA, 1e-2)
    init = fixed_init(2, 8, 100)
    model = sst.FiniteDimODE(problem, tau=0.5)
    print(
        "noisy solve, m = 8, k = 2, eps = 1e-2, tau = 0.5, rtol 1e-6, atol 1e-8, best of 3 after "
        "compilation:"
    )
    solve_times = {}
    for t_end in (10.0,) if args.quick else (10.0, 100.0):
        ts = np.linspace(0.0, t_end, 26)
        for name, solver in (("Ros34PW2", sst.Ros34PW2()), ("Tsit5", dfx.Tsit5())):
            fn = lambda solver=solver, ts=ts: sst.solve(  # noqa: E731
                model, init.state, ts, solver=solver, rtol=1e-6, atol=1e-8, max_steps=100_000
            )
            seconds, traj = best_of(fn)
            solve_times[name, t_end] = seconds
            print(
                f"  t <= {t_end:g}, {name}: {seconds:.2f} s, {int(traj.stats['num_steps'])} "
                f"steps, risk(t_end) = {float(traj.risk[-1]):.8f}"
            )
    solve_s = solve_times["Ros34PW2", 10.0]

    figures = None if args.quick else ROOT / "docs" / "benchmarks"
    if figures is not None:
        risk_figure(rows, d_max, figures / "sgd_noise_risk.png")
        risk_figure(rows, d_max, ROOT / "docs" / "figures" / "sgd_noise.png")
        risk_figure(relu_rows, d_max, figures / "sgd_noise_relu.png")
    if args.quick:
        st = dict(taus=(ST_TAU,), eps_grid=ST_EPS[3:5], sgd_eps=[])
    else:
        # SGD at the four middle eps only (CPU budget: 100,000 steps, about 100 s a point).
        st = dict(taus=(0.001, ST_TAU, 0.003), eps_grid=ST_EPS, sgd_eps=[1, 2, 3, 4])
    pred, _, measured, _, _ = part3(
        st["taus"],
        st["eps_grid"],
        ST_TAU,
        3,
        st["sgd_eps"],
        not args.quick,
        key,
        None if figures is None else figures / "sgd_noise_staircase.png",
    )
    fields = {
        "noisy_sup_err_d8000": f"{noisy:.4f}",
        "flow_sup_err_d8000": f"{flow:.4f}",
        "noisy_within": str(within),
        "fluct_sup_err_d8000": f"{fluct:.4f}",
        "fluct_within": str(fluct_within),
        "fluct_var_ratio": f"{var_ratio:.2f}",
        "fluct_shift_z2": f"{shift_z2:.2f}",
        "err_ratio_d500_d8000": f"{ratio:.2f}",
        "i4_erf_max_diff": f"{i4:.1e}",
        "mc_z_max": f"{mc:.2f}",
        "relu_trunc_err_deg4": f"{relu_errors[4]:.3f}",
        "relu_p4_err": f"{max(orthant.values()):.1e}",
        "relu_mc_z_max": f"{relu_mc:.2f}",
        "relu_noisy_err_d8000": f"{relu_noisy:.4f}",
        "relu_flow_err_d8000": f"{relu_flow:.4f}",
        "stop_eps_pred": f"{pred:.3g}",
        "stop_eps_sgd": f"{measured:.3g}",
        "solve_s": f"{solve_s:.2f}",
        "solve_s_tsit5": f"{solve_times['Tsit5', 10.0]:.2f}",
    }
    print_result(fields, record)


if __name__ == "__main__":
    main()
