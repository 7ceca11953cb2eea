import json
import os
import subprocess
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sst

TS = jnp.concatenate([jnp.zeros(1), jnp.logspace(-4, 1, 30)])
TARGET = sst.Hermite([0.5, 1.0, 1.0, 1.0])
ACTIVATION = sst.Hermite([1.0, 1.0, 1.0, 1.0])
EPS = np.array([1e-1, 1e-3, 1e-2, 3e-3, 3e-2, 3e-4])


def _model(eps=1e-2, target=TARGET, activation=ACTIVATION):
    return sst.MeanFieldODE(sst.Problem(target, activation, eps))


def _states(n, m=4):
    keys = jax.random.split(jax.random.PRNGKey(0), n)
    a = jax.vmap(lambda k: jax.random.normal(k, (m,)))(keys)
    s = jax.vmap(lambda k: 0.2 * jax.random.uniform(k, (m,), minval=-1.0, maxval=1.0))(
        jax.random.split(jax.random.PRNGKey(1), n)
    )
    return sst.MeanFieldState(a, s)


def _member(tree, i):
    return jax.tree_util.tree_map(lambda x: x[i], tree)


def _assert_same(batched, single):
    assert bool(batched.success) and bool(single.success)
    np.testing.assert_allclose(batched.risk, single.risk, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(batched.a, single.a, rtol=1e-9, atol=1e-12)


def test_vmap_over_states_equals_single_solves():
    y0s = _states(3)
    model = _model()
    batch = jax.jit(jax.vmap(lambda y0: sst.solve(model, y0, TS, throw=False)))(y0s)
    assert batch.risk.shape == (3, TS.shape[0])
    for i in range(3):
        _assert_same(_member(batch, i), sst.solve(model, _member(y0s, i), TS))


def test_vmap_over_eps_equals_single_solves():
    y0 = sst.quadrature_particles(4)

    def one(eps):
        return sst.solve(_model(eps), y0, TS, throw=False)

    batch = jax.jit(jax.vmap(one))(jnp.asarray(EPS[:3]))
    for i in range(3):
        _assert_same(_member(batch, i), sst.solve(_model(EPS[i]), y0, TS))


def test_solve_batch_groups_mixed_eps_and_keeps_input_order():
    y0 = sst.quadrature_particles(4)
    grouped = sst.solve_batch(_model(), y0, TS, eps=EPS, group_size=2)
    whole = sst.solve_batch(_model(), y0, TS, eps=EPS, group_size=len(EPS))
    for i, eps in enumerate(EPS):
        single = sst.solve(_model(eps), y0, TS)
        _assert_same(_member(grouped, i), single)
        _assert_same(_member(whole, i), single)


def test_solve_batch_over_states_and_activation_coefficients():
    y0s = _states(3)
    rows = np.array([[1.0, 1.0, 1.0, 1.0], [0.5, 1.2, 0.8, 0.3], [1.0, 0.7, 0.0, 1.1]])
    batch = sst.solve_batch(_model(), y0s, TS, activation=rows)
    for i in range(3):
        single = sst.solve(_model(activation=sst.Hermite(rows[i])), _member(y0s, i), TS)
        _assert_same(_member(batch, i), single)


def test_failed_member_is_flagged_without_touching_the_others():
    # The stiffest member needs more steps than the budget; the others need fewer.
    y0 = sst.quadrature_particles(4)
    steps = np.asarray(sst.solve_batch(_model(), y0, TS, eps=EPS).num_steps)
    budget = int(np.sort(steps)[-2])
    assert budget < steps.max()
    with pytest.warns(RuntimeWarning, match="1 of 6 solves failed"):
        batch = sst.solve_batch(_model(), y0, TS, eps=EPS, max_steps=budget)
    failed = int(np.argmax(steps))
    assert not bool(batch.success[failed])
    valid = np.asarray(batch.valid[failed])
    assert valid[0] and not valid[-1]
    assert np.all(np.isnan(np.asarray(batch.risk[failed])[~valid]))
    for i, eps in enumerate(EPS):
        if i != failed:
            _assert_same(_member(batch, i), sst.solve(_model(eps), y0, TS))


def test_solve_batch_rejects_bad_batches():
    y0 = sst.quadrature_particles(4)
    with pytest.raises(ValueError, match="eps must be a finite positive"):
        sst.solve_batch(_model(), y0, TS, eps=[1e-2, -1.0])
    with pytest.raises(ValueError, match="same batch size"):
        sst.solve_batch(_model(), _states(3), TS, eps=[1e-2, 1e-3])
    with pytest.raises(ValueError, match="Nothing is batched"):
        sst.solve_batch(_model(), y0, TS)
    with pytest.raises(ValueError, match="do not pass throw"):
        sst.solve_batch(_model(), y0, TS, eps=[1e-2], throw=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bad = sst.MeanFieldState(jnp.ones((2, 4)), jnp.full((2, 4), 1.5))
        with pytest.raises(ValueError, match="Overlaps s must lie"):
            sst.solve_batch(_model(), bad, TS)


_SHARDED_SCRIPT = """
import json, jax, numpy as np, sst
from tests.test_batch import EPS, TS, _model, _states
y0s = _states(6)
mesh = sst.batch_mesh()
plain = sst.solve_batch(_model(), y0s, TS, eps=EPS, group_size=4)
sharded = sst.solve_batch(_model(), y0s, TS, eps=EPS, group_size=4, mesh=mesh)
members = {"eps": jax.numpy.asarray(EPS[:4])}
placed = sst.shard_batch(members, mesh)
print(json.dumps({
    "devices": len(jax.devices()),
    "mesh": int(mesh.devices.size),
    "placed_on": len(placed["eps"].sharding.device_set),
    "max_diff": float(np.max(np.abs(np.asarray(plain.risk) - np.asarray(sharded.risk)))),
    "a_rel_diff": float(np.max(np.abs(np.asarray(plain.a) - np.asarray(sharded.a)))
                        / np.max(np.abs(np.asarray(plain.a)))),
    "same_steps": bool(np.array_equal(np.asarray(plain.num_steps), np.asarray(sharded.num_steps))
                       and np.array_equal(np.asarray(plain.num_rejected_steps),
                                          np.asarray(sharded.num_rejected_steps))),
    "success": bool(np.all(np.asarray(sharded.success))),
}))
"""


def test_sharded_batch_equals_unsharded_on_four_host_devices():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", PYTHONPATH=root)
    out = subprocess.run(
        [sys.executable, "-c", _SHARDED_SCRIPT],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["devices"] == result["mesh"] == result["placed_on"] == 4
    assert result["success"], result
    # The same step sequence per member, and values equal up to the last bits: the partitioned
    # program may round differently (1 ulp) from the single-device one, nothing more.
    assert result["same_steps"], result
    assert result["max_diff"] <= 1e-13 and result["a_rel_diff"] <= 1e-13, result
