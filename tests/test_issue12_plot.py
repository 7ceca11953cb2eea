"""plot_scaling labels every degree's heuristic exponent 1/(2l) (issue 12).

(To be merged into tests/test_plot.py.)
"""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import sst  # noqa: E402


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
