"""Time scales per multi-index and the multi-index figures (sst/_multi_plot.py)."""

import jax

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_dtype_promotion", "strict")

import matplotlib  # noqa: E402

matplotlib.use("Agg")

import jax.numpy as jnp  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import sst  # noqa: E402

TARGET = sst.MultiIndexTarget.from_monomials({(1, 0): 1.0, (1, 1): 1.0})
PROBLEM = sst.MultiIndexProblem(TARGET, sst.Hermite([0.0, 1.0, 1.0, 0.5]), eps=0.2)


@pytest.fixture(scope="module")
def run():
    # Population gradient descent is the cheapest multi-index trajectory to compile.
    init = sst.random_init_multi_index(jax.random.PRNGKey(0), m=4, d=6, k=2)
    init = sst.MultiIndexRandomInit.from_weights(3.0 * init.state.a, init.W, init.U)
    ts = jnp.concatenate([jnp.zeros(1), jnp.geomspace(0.05, 20.0, 25)])
    return sst.train(PROBLEM, init, ts, eta=5e-3)


def test_learning_times_by_label(run):
    times = sst.learning_times_by_label(run)
    assert (1, 0) in times and (1, 1) in times
    assert all(isinstance(label, tuple) for label in times)
    raw = sst.learning_times(run)
    for label, t in times.items():
        j = run.residual_labels.index(label)
        assert t == raw[j] or (np.isnan(t) and np.isnan(raw[j]))
    learned = sst.learning_times_by_label(run, learned_only=True)
    assert all(np.isfinite(t) for t in learned.values())


def test_plot_monomials(run):
    fig = sst.plot_monomials(run)
    labels = [line.get_label() for line in fig.axes[0].get_lines()]
    assert "risk" in labels and any("z1 z2" in label for label in labels)
    plt.close(fig)
    with pytest.raises(ValueError, match="not a residual label"):
        sst.plot_monomials(run, labels=[(5, 5)])


def test_plot_overlaps(run):
    fig = sst.plot_overlaps(run)
    assert len(fig.axes) == 2 + 1 + 1  # two directions, the plane, the colour bar
    plt.close(fig)
    single = sst.train(
        sst.Problem(sst.Hermite([0.0, 1.0]), PROBLEM.activation, 0.2),
        sst.random_init(jax.random.PRNGKey(0), 4, 6),
        jnp.linspace(0.0, 0.1, 3),
        eta=1e-2,
    )
    with pytest.raises(ValueError, match="shape \\(T, m, k\\)"):
        sst.plot_overlaps(single)


def test_plot_learning_times_fits_slopes():
    eps = np.array([1e-2, 1e-4, 1e-6])
    fig = sst.plot_learning_times(eps, {(1, 0): eps**0.5, (1, 1): eps**0.25})
    labels = [line.get_label() for line in fig.axes[0].get_lines()]
    assert any("slope 0.500" in label for label in labels)
    assert any("slope 0.250" in label for label in labels)
    plt.close(fig)
