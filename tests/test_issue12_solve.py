"""The supported range of eps: a clear error before compiling below `sst.EPS_MIN` (issue 12).

(To be merged into tests/test_solve.py.)
"""

import numpy as np
import pytest

import sst
from sst._solve import check_eps


def _model(eps):
    return sst.MeanFieldODE(
        sst.Problem(sst.Hermite([0.0, 1.0, 1.0]), sst.Hermite([0.5, 1.0, 1.0]), eps)
    )


TS = np.array([0.0, 1e-3, 1.0])


def test_solve_refuses_eps_below_the_supported_range():
    with pytest.raises(ValueError, match=r"eps = 1e-25 is below the range sst supports"):
        sst.solve(_model(1e-25), sst.quadrature_particles(4, law="uniform"), TS)


def test_solve_batch_refuses_a_member_below_the_supported_range():
    with pytest.raises(ValueError, match=rf"eps = 1e-30 is below the range .* >= {sst.EPS_MIN:g}"):
        sst.solve_batch(
            _model(1e-2), sst.quadrature_particles(4, law="uniform"), TS, eps=[1e-2, 1e-30]
        )


def test_the_smallest_supported_eps_and_traced_eps_pass_the_check():
    check_eps(sst.EPS_MIN)
    check_eps(np.array([1.0, sst.EPS_MIN]))
    with pytest.raises(ValueError, match="below the range"):
        check_eps(np.nextafter(sst.EPS_MIN, 0.0))
