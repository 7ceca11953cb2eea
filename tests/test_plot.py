"""Figures build, carry the expected artists, and show exactly the data they were given, for
residuals labelled by degrees (a target of one direction, overlaps s of shape (m,)) and by
multi-indices (k = 2 directions, s of shape (m, k))."""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import pytest
from helpers import TRAIN_TS, cubic_problem, random_network, small_problem, synthetic_trajectory

import sst
from sst import (
    detect_phases,
    fit_scalings,
    learning_times,
    plot_ode_vs_network,
    plot_particles,
    plot_risk,
    plot_scaling,
)

DEGREES = ((0,), (1,), (2,))
FLOOR = "rounding floor of $R$\n(below: rounding noise)"
# Labels of a target of k = 2 directions: the constant, z1 and z1 z2.
MULTI = ((0, 0), (1, 0), (1, 1))


def _synthetic(k: int) -> sst.Trajectory:
    """A hand-made trajectory: residuals with known learning times, one row masked invalid;
    overlaps of shape (m,) for k = 1 (labels DEGREES), (m, k) otherwise (labels MULTI)."""
    ts = np.concatenate([[0.0], np.geomspace(1e-6, 10, 200)])
    t_k = np.array([1e-5, 1e-2, 0.3])
    r0 = np.array([0.5, 1.0, 1.0])
    r = r0 / np.sqrt(1 + (ts[:, None] / t_k) ** 4)
    risk = 0.5 * np.sum(r**2, axis=1)
    m = 5
    a0 = np.linspace(-1, 1, m)
    a = a0[None, :] * (1 + ts[:, None])
    s = np.tanh(ts[:, None] * a0[None, :])
    if k > 1:
        s = np.stack([s * (r + 1) / k for r in range(k)], axis=-1)
    valid = np.ones(ts.size, bool)
    valid[-1] = False
    ys = sst.MeanFieldState(a, s, np.full(a.shape, 1 / m))
    traj = synthetic_trajectory(
        ts, r, risk, ys=ys, valid=valid, result=sst.RESULTS.max_steps_reached
    )
    return dataclasses.replace(traj, residual_labels=DEGREES if k == 1 else MULTI)


@pytest.fixture(scope="module")
def synthetic() -> sst.Trajectory:
    return _synthetic(1)


@pytest.fixture(scope="module", params=[1, 2], ids=["k=1", "k=2"])
def either(request) -> sst.Trajectory:
    return _synthetic(request.param)


def test_plot_risk_shows_the_inputs(either):
    synthetic = either
    fig = plot_risk(synthetic)
    (ax,) = fig.axes
    keep = np.asarray(synthetic.valid) & (np.asarray(synthetic.ts) > 0)
    ts = np.asarray(synthetic.ts)[keep]
    lines = {line.get_label(): line for line in ax.get_lines()}
    np.testing.assert_array_equal(lines["risk $R$"].get_xdata(), ts)
    np.testing.assert_array_equal(lines["risk $R$"].get_ydata(), np.asarray(synthetic.risk)[keep])
    r = np.asarray(synthetic.residuals)[keep]
    names = [sst.label_name(label) for label in synthetic.residual_labels]
    for j, name in enumerate(names):
        np.testing.assert_array_equal(lines[f"$r^2/2$, {name}"].get_ydata(), 0.5 * r[:, j] ** 2)
    # One dotted vertical line per half-learning time, at the known times.
    vlines = sorted(line.get_xdata()[0] for line in ax.get_lines() if line.get_linestyle() == ":")
    np.testing.assert_allclose(vlines, learning_times(synthetic, 0.5), rtol=1e-12)
    np.testing.assert_allclose(vlines, [1e-5, 1e-2, 0.3], rtol=1e-3)
    # One legend entry per quantity: the risk, each residual, the dotted lines, the floor and
    # each kind of shaded phase, outside the axes.
    legend = ax.get_legend()
    entries = [text.get_text() for text in legend.get_texts()]
    assert sorted(entries) == sorted(
        ["risk $R$", FLOOR, r"half learned ($r^2$ halved)", "drop", "descent"]
        + [f"$r^2/2$, {name}" for name in names]
    )
    fig.canvas.draw()
    assert legend.get_window_extent().x0 >= ax.get_window_extent().x1
    # The drops (three) and the final descent are shaded.
    kinds = [p.kind for p in detect_phases(synthetic) if p.kind != "plateau"]
    assert kinds == ["drop"] * 3 + ["descent"] and len(ax.patches) == 4
    assert "rtol=1e-08" in ax.get_title()
    # Every valid point of every drawn curve above the rounding floor is in the vertical range.
    drawn = np.concatenate([np.asarray(synthetic.risk)[keep], 0.5 * r.ravel() ** 2])
    floor = 8 * np.finfo(float).eps * drawn.max()
    low, high = ax.get_ylim()
    assert low <= drawn[drawn > floor].min() and drawn.max() <= high
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    plt.close(fig)


def test_plot_risk_stops_at_the_rounding_floor(synthetic):
    # A residual that falls into rounding noise (1e-40 of its start) is drawn, but the axis
    # stops just below the risk's floor, 16 u max R without a model, drawn dashed.
    r = np.asarray(synthetic.residuals).copy()
    r[:, 0] = np.where(np.asarray(synthetic.ts) < 1e-3, r[:, 0], 1e-20)
    traj = dataclasses.replace(synthetic, residuals=jnp.asarray(r))
    fig = plot_risk(traj)
    ax = fig.axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    floor = 16 * np.finfo(float).eps / 2 * float(np.nanmax(np.asarray(traj.risk)))
    np.testing.assert_allclose(lines[FLOOR].get_ydata(), floor, rtol=1e-12)
    assert lines[FLOOR].get_linestyle() == "--"
    assert ax.get_ylim()[0] == pytest.approx(0.3 * floor, rel=1e-12)
    plt.close(fig)


def test_plot_risk_floor_of_a_mean_field_model(cubic_model, cubic_trajectory):
    # The moment path bounds its own rounding: the floor is twice that bound at every save.
    fig = plot_risk(cubic_trajectory, model=cubic_model)
    lines = {line.get_label(): line for line in fig.axes[0].get_lines()}
    keep = np.asarray(cubic_trajectory.ts) > 0
    bound = [cubic_model.risk_rounding_error(cubic_trajectory.state(i)) for i in range(len(keep))]
    np.testing.assert_allclose(lines[FLOOR].get_ydata(), 2 * np.asarray(bound)[keep], rtol=1e-12)
    assert str(cubic_model.problem) in fig.axes[0].get_title()
    plt.close(fig)


def test_plot_risk_draws_on_a_given_axis(synthetic):
    fig, axes = plt.subplots(1, 2)
    assert plot_risk(synthetic, ax=axes[1], phases=False) is fig
    assert not axes[0].get_lines() and axes[1].get_lines()
    assert not axes[1].patches
    plt.close(fig)


def test_plot_particles_one_line_per_particle(either):
    synthetic = either
    fig = plot_particles(synthetic)
    valid = np.asarray(synthetic.valid)
    ts = np.asarray(synthetic.ts)[valid]
    a = np.asarray(synthetic.ys.a)[valid]
    s = np.asarray(synthetic.ys.s)[valid]
    k = 1 if s.ndim == 2 else s.shape[2]
    s = s.reshape(s.shape[0], s.shape[1], k)
    # The (a, s_1) plane, one panel of s_ir(t) per direction, for k >= 2 the (s_1, s_2) plane,
    # and the colour bar.
    assert len(fig.axes) == 1 + k + (k >= 2) + 1
    plane, time_axes, colourbar = fig.axes[0], fig.axes[1 : 1 + k], fig.axes[-1]
    paths = [line for line in plane.get_lines() if line.get_label() != "final"]
    assert len(paths) == a.shape[1]
    for i, line in enumerate(paths):
        np.testing.assert_array_equal(line.get_xdata(), a[:, i])
        np.testing.assert_array_equal(line.get_ydata(), s[:, i, 0])
    for r, ax in enumerate(time_axes):
        assert len(ax.get_lines()) == a.shape[1]
        for i, line in enumerate(ax.get_lines()):
            np.testing.assert_array_equal(line.get_xdata(), ts[ts > 0])
            np.testing.assert_array_equal(line.get_ydata(), s[ts > 0, i, r])
    if k >= 2:
        paths = fig.axes[1 + k].get_lines()[: a.shape[1]]
        for i, line in enumerate(paths):
            np.testing.assert_array_equal(line.get_xdata(), s[:, i, 0])
            np.testing.assert_array_equal(line.get_ydata(), s[:, i, 1])
    (final,) = [line for line in plane.get_lines() if line.get_label() == "final"]
    np.testing.assert_array_equal(final.get_xdata(), a[-1])
    # Colours follow a(0): the lowest and highest a(0) sit at the two ends of the colour map.
    cmap = plt.get_cmap("coolwarm")
    np.testing.assert_allclose(paths[0].get_color(), cmap(0.0))
    np.testing.assert_allclose(paths[-1].get_color(), cmap(1.0))
    assert colourbar.get_ylabel() == "$a(0)$"
    plt.close(fig)


def test_plot_scaling_shows_times_and_fits():
    eps = np.logspace(-2, -6, 5)
    times = np.stack([0.3 * eps, eps**0.5 * np.log(1 / eps), 2 * eps**0.25], axis=1)
    times[1, 2] = np.nan  # a degree not learned at one eps is left out, not plotted as 0
    fits = fit_scalings(eps, times)
    fig = plot_scaling(eps, times, fits)
    (ax,) = fig.axes
    markers = [line for line in ax.get_lines() if line.get_linestyle() == "None"]
    fitted = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
    assert len(markers) == 3 and len(fitted) == 3
    for k, line in enumerate(markers):
        ok = np.isfinite(times[:, k])
        np.testing.assert_array_equal(line.get_xdata(), eps[ok])
        np.testing.assert_array_equal(line.get_ydata(), times[ok, k])
    for k, line in enumerate(fitted):
        # The fitted lines go through the exact power laws used to make the data.
        x = np.asarray(line.get_xdata())
        truth = [0.3 * x, x**0.5 * np.log(1 / x), 2 * x**0.25][k]
        np.testing.assert_allclose(line.get_ydata(), truth, rtol=1e-9)
        assert "heuristic" in line.get_label()
    assert [line.get_label() for line in markers] == ["degree 0", "degree 1", "degree 2"]
    plt.close(fig)


def test_plot_scaling_of_multi_indices():
    # Columns labelled by multi-indices: named by format_index, fitted without a log factor,
    # and with no heuristic stated.
    eps = np.logspace(-2, -6, 4)
    times = np.stack([2 * eps, eps**0.5, 3 * eps**0.25], axis=1)
    fits = fit_scalings(eps, times, MULTI)
    assert sorted(fits) == [0, 1, 2]
    for j, exponent in enumerate((1.0, 0.5, 0.25)):
        assert fits[j].exponent == pytest.approx(exponent, abs=1e-12)
        assert not fits[j].log_factor and np.isnan(fits[j].heuristic)
    fig = plot_scaling(eps, times, fits, labels=MULTI)
    (ax,) = fig.axes
    markers = [line for line in ax.get_lines() if line.get_linestyle() == "None"]
    assert [line.get_label() for line in markers] == ["1", "z1", "z1 z2"]
    for j, line in enumerate(markers):
        np.testing.assert_array_equal(line.get_ydata(), times[:, j])
    fitted = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
    assert len(fitted) == 3
    for line, law in zip(fitted, (lambda x: 2 * x, np.sqrt, lambda x: 3 * x**0.25), strict=True):
        # Through the exact power laws used to make the data.
        np.testing.assert_allclose(line.get_ydata(), law(np.asarray(line.get_xdata())), rtol=1e-9)
        assert "heuristic" not in line.get_label()
    plt.close(fig)
    with pytest.raises(ValueError, match="labels must name each of the 3 columns"):
        plot_scaling(eps, times, labels=MULTI[:2])


def test_plot_risk_sums_high_degrees(either):
    # Three more residual columns, all of degree 3: with max_degree=2 one line shows their sum.
    r = np.asarray(either.residuals)
    wide = np.concatenate([r, 0.1 * r], axis=1)
    high = ((3,), (4,), (5,)) if len(either.residual_labels[0]) == 1 else ((2, 1), (1, 2), (3, 0))
    traj = dataclasses.replace(
        either, residuals=jnp.asarray(wide), residual_labels=either.residual_labels + high
    )
    fig = plot_risk(traj, max_degree=2)
    lines = {line.get_label(): line for line in fig.axes[0].get_lines()}
    assert not any(sst.label_name(label) in name for label in high for name in lines)
    keep = np.asarray(traj.valid) & (np.asarray(traj.ts) > 0)
    np.testing.assert_allclose(
        lines["$r^2/2$, degree > 2"].get_ydata(), 0.5 * np.sum(wide[keep, 3:] ** 2, axis=1)
    )
    plt.close(fig)


def test_plot_risk_draws_the_chosen_labels(either):
    labels = either.residual_labels
    fig = plot_risk(either, labels=[labels[2], labels[0]])
    names = [line.get_label() for line in fig.axes[0].get_lines()]
    curves = [name for name in names if name.startswith("$r^2/2$")]
    assert curves == [f"$r^2/2$, {sst.label_name(labels[j])}" for j in (2, 0)]
    plt.close(fig)
    with pytest.raises(ValueError, match=r"labels: \(5, 5\) is not a residual label"):
        plot_risk(either, labels=[(5, 5)])


def test_plot_risk_names_the_problem_and_refuses_empty_curves(synthetic):
    model = sst.MeanFieldODE(cubic_problem())
    fig = plot_risk(synthetic, model=model)
    title = fig.axes[0].get_title()
    assert str(model.problem) in title and "rtol=1e-08" in title
    plt.close(fig)
    valid = np.zeros(synthetic.ts.shape, bool)
    valid[:2] = True  # t = 0 and one save: nothing to draw on a log axis
    cut = eqx.tree_at(lambda t: t.valid, synthetic, jnp.asarray(valid))
    with pytest.raises(ValueError, match="Nothing to draw on a log time axis"):
        plot_risk(cut)
    batch = jax.tree_util.tree_map(lambda x: jnp.stack([x, x]), synthetic)
    with pytest.raises(ValueError, match="plot_particles needs a single trajectory"):
        plot_particles(batch)


@pytest.mark.slow
def test_plot_ode_vs_network_shows_the_runs(finite_dim_reference):
    init = random_network()
    runs = [
        sst.train(small_problem(), init, TRAIN_TS, eta=eta, estimator=estimator, key=key)
        for eta, estimator, key in (
            (1e-2, sst.PopulationGradient(), None),
            (5e-3, sst.OnlineSGD(16), jax.random.key(0)),  # as in test_train
        )
    ]
    mean_field = synthetic_trajectory(TRAIN_TS, np.ones((5, 1)), np.linspace(1.0, 0.5, 5))
    fig = plot_ode_vs_network(finite_dim_reference, runs, mean_field, title="ode vs network")
    ax_r, ax_s = fig.axes
    lines = {line.get_label(): line for line in ax_r.get_lines()}
    np.testing.assert_array_equal(lines["FiniteDimODE"].get_ydata(), finite_dim_reference.risk)
    np.testing.assert_array_equal(lines["MeanFieldODE"].get_ydata(), mean_field.risk)
    np.testing.assert_array_equal(lines["PopulationGradient, eta=0.01"].get_ydata(), runs[0].risk)
    np.testing.assert_array_equal(lines["OnlineSGD, eta=0.005"].get_ydata(), runs[1].risk)
    # Right: each neuron's overlap, the ODE solid and the run with the smallest step dotted.
    solid = [line for line in ax_s.get_lines() if line.get_linestyle() == "-"]
    dotted = [line for line in ax_s.get_lines() if line.get_linestyle() == ":"]
    assert len(solid) == len(dotted) == 4
    for i in range(4):
        np.testing.assert_array_equal(solid[i].get_ydata(), finite_dim_reference.ys.s[:, i])
        np.testing.assert_array_equal(dotted[i].get_ydata(), runs[1].ys.s[:, i])
    assert "eta=0.005" in ax_s.get_ylabel() and fig._suptitle.get_text() == "ode vs network"
    plt.close(fig)


def test_plot_scaling_labels_the_heuristic_of_degrees_3_and_4():
    eps = np.logspace(-8, -20, 5)
    times = np.stack([np.full(5, np.nan)] + [eps ** (1 / (2 * k)) for k in range(1, 5)], axis=1)
    times[:, 1] *= np.log(1 / eps)
    fits = sst.fit_scalings(eps, times)
    fig = sst.plot_scaling(eps, times, fits)
    labels = [line.get_label() for line in fig.axes[0].get_lines()]
    for k, fraction in ((1, "1/2"), (2, "1/4"), (3, "1/6"), (4, "1/8")):
        np.testing.assert_allclose(fits[k].exponent, 1 / (2 * k), atol=1e-12)
        assert any(f"heuristic {fraction})" in label for label in labels), labels
    plt.close(fig)
