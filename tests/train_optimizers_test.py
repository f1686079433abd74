"""Optimizer groups, the poly schedule and PyTorch SGD semantics (hfpl_jax.train.optimizers)."""

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from hfpl_jax.train import cam_config, optimizers

GOLDEN = os.path.join(os.path.dirname(__file__), "testdata", "optimizer_poly_golden.npz")
NAMES = ("backbone/kernel", "backbone/bias", "scratch/kernel", "scratch/bias", "frozen/kernel")


def _optim_config(**overrides):
    config = cam_config.base_config().optim
    config.lr_mults = ((r"^scratch/.*bias$", 20.0), (r"^scratch/", 10.0), (r"bias$", 2.0))
    config.wd_mults = ((r"bias$", 0.0),)
    config.frozen = (r"^frozen/",)
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def _nest(flat):
    nested = {}
    for path, value in flat.items():
        top, leaf = path.split("/")
        nested.setdefault(top, {})[leaf] = jnp.asarray(value)
    return nested


def _run(tx, params, grads_per_step):
    state = tx.init(params)
    update = jax.jit(tx.update)
    trajectory = []
    for grads in grads_per_step:
        updates, state = update(grads, state, params)
        params = optax.apply_updates(params, updates)
        trajectory.append(jax.tree.map(np.asarray, params))
    return trajectory


def test_matches_the_reference_poly_optimizer_golden():
    golden = np.load(GOLDEN)
    max_step = int(golden["max_step"])
    num_steps = golden["grads/backbone/kernel"].shape[0]
    params = _nest({name: golden[f"initial/{name}"] for name in NAMES})
    optimizer = optimizers.make_optimizer(_optim_config(), params, max_step=max_step)
    assert optimizer.momentum == pytest.approx(float(golden["momentum"]))  # the 5e-4 quirk
    grads = [
        _nest({name: golden[f"grads/{name}"][step] for name in NAMES}) for step in range(num_steps)
    ]
    trajectory = _run(optimizer.tx, params, grads)
    for step in range(num_steps):
        for name in NAMES:
            top, leaf = name.split("/")
            np.testing.assert_allclose(
                trajectory[step][top][leaf],
                golden[f"trajectory/{name}"][step],
                rtol=1e-6,
                atol=1e-7,
                err_msg=f"{name} after step {step}",
            )
    # The frozen weight never moves, bit for bit.
    np.testing.assert_array_equal(
        trajectory[-1]["frozen"]["kernel"], golden["initial/frozen/kernel"]
    )
    # The per-group rates the reference set at each step (x1, x2, x10, x20), as float32.
    mults = (1.0, 2.0, 10.0, 20.0)
    for step in range(num_steps):
        for group, mult in enumerate(mults):
            rate = optimizers.poly_learning_rate(step, 0.01 * mult, max_step, 0.9)
            assert rate == pytest.approx(golden["group_lrs"][step, group], rel=1e-15)


def test_poly_rates_against_spec_formula():
    # Spec §1.9: lr_t = lr·(1 − t/max_step)^0.9 for t < max_step, step 0 uses the full rate; VOC has
    # max_step = floor(10582/8)·8 = 10576.
    max_step = (10582 // 8) * 8
    assert max_step == 10576
    schedule = jax.jit(optimizers.make_schedule(0.01, schedule="poly", max_step=max_step))
    steps = np.array([0, 1, 2, 49, 50, 1321, 5288, 10000, 10574, 10575, 10576, 20000])
    expected = 0.01 * (1.0 - np.minimum(steps, max_step - 1) / max_step) ** 0.9
    got = np.array([float(schedule(jnp.int32(s))) for s in steps])
    np.testing.assert_array_equal(got, expected.astype(np.float32))
    assert got[0] == np.float32(0.01)
    assert got[-1] == got[-3]  # the rate freezes at its t = max_step − 1 value
    # The formula path (beyond the table length) agrees to float32 rounding.
    long = optimizers.make_schedule(0.01, schedule="poly", max_step=optimizers._MAX_TABLE_STEPS + 8)
    t = optimizers._MAX_TABLE_STEPS // 2
    want = 0.01 * (1 - t / (optimizers._MAX_TABLE_STEPS + 8)) ** 0.9
    assert float(long(jnp.int32(t))) == pytest.approx(want, rel=2e-6)
    constant = optimizers.make_schedule(0.5, schedule="constant", max_step=1)
    assert float(constant(jnp.int32(99))) == 0.5


def _numpy_sgd(params, grads_per_step, *, lr, wd, momentum, max_step, power, lr_mult, wd_mult):
    """Float64 PyTorch SGD from the spec: d = g + wd·p; v = m·v + d; p −= lr_t·v."""
    params = {k: v.astype(np.float64) for k, v in params.items()}
    buffers = {k: None for k in params}
    for step, grads in enumerate(grads_per_step):
        rate = lr * (1 - min(step, max_step - 1) / max_step) ** power
        for k in params:
            d = grads[k].astype(np.float64) + wd * wd_mult[k] * params[k]
            buffers[k] = d if buffers[k] is None else momentum * buffers[k] + d
            params[k] = params[k] - rate * lr_mult[k] * buffers[k]
    return params


@pytest.mark.parametrize("bug", [True, False])
def test_sgd_against_float64_numpy(bug):
    rng = np.random.default_rng(1)
    flat = {
        "backbone/kernel": rng.standard_normal((3, 3, 2, 4)).astype(np.float32),
        "scratch/kernel": rng.standard_normal((1, 1, 4, 3)).astype(np.float32),
        "scratch/bias": rng.standard_normal((3,)).astype(np.float32),
    }
    grads = [
        {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in flat.items()}
        for _ in range(6)
    ]
    config = _optim_config(reference_momentum_bug=bug, lr=0.05, weight_decay=1e-2)
    optimizer = optimizers.make_optimizer(config, _nest(flat), max_step=4)
    assert optimizer.momentum == (1e-2 if bug else 0.9)
    trajectory = _run(optimizer.tx, _nest(flat), [_nest(g) for g in grads])
    expected = _numpy_sgd(
        flat,
        grads,
        lr=0.05,
        wd=1e-2,
        momentum=1e-2 if bug else 0.9,
        max_step=4,
        power=0.9,
        lr_mult={"backbone/kernel": 1.0, "scratch/kernel": 10.0, "scratch/bias": 20.0},
        wd_mult={"backbone/kernel": 1.0, "scratch/kernel": 1.0, "scratch/bias": 0.0},
    )
    for name, want in expected.items():
        top, leaf = name.split("/")
        np.testing.assert_allclose(trajectory[-1][top][leaf], want, rtol=2e-6, atol=1e-6)


def test_seam_groups_of_the_reference_config():
    # Paths as the SEAM model names them (interfaces.md); shapes do not matter for grouping.
    paths = [
        "conv1a/kernel",
        "b2/conv_branch2a/kernel",
        "b2_2/bn_branch2a/scale",
        "b3/conv_branch1/kernel",
        "b4_3/bn_branch2a/scale",
        "b4_3/bn_branch2a/bias",
        "b7/conv_branch2b2/kernel",
        "bn7/scale",
        "bn7/bias",
        "fc8/kernel",
        "f8_3/kernel",
        "f8_4/kernel",
        "f9/kernel",
    ]
    params = _nest_deep({p: np.zeros((1,), np.float32) for p in paths})
    config = cam_config.base_config().optim
    _, groups = optimizers.param_groups(
        params, lr_mults=config.lr_mults, wd_mults=config.wd_mults, frozen=config.frozen
    )
    by_path = {path: group for group in groups for path in group.paths}
    for path in ("conv1a/kernel", "b2/conv_branch2a/kernel", "b2_2/bn_branch2a/scale"):
        assert by_path[path].frozen, path
    for path in ("b4_3/bn_branch2a/scale", "b4_3/bn_branch2a/bias", "bn7/scale", "bn7/bias"):
        assert by_path[path].frozen, path
    for path in ("b3/conv_branch1/kernel", "b7/conv_branch2b2/kernel"):
        assert (by_path[path].frozen, by_path[path].lr_mult, by_path[path].wd_mult) == (
            False,
            1.0,
            1.0,
        )
    for path in ("fc8/kernel", "f8_3/kernel", "f8_4/kernel", "f9/kernel"):
        assert (by_path[path].lr_mult, by_path[path].wd_mult) == (10.0, 1.0)


def _nest_deep(flat):
    nested = {}
    for path, value in flat.items():
        node = nested
        *parents, leaf = path.split("/")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = jnp.asarray(value)
    return nested


def test_frozen_parameters_get_no_update_and_no_decay():
    params = _nest({"frozen/kernel": np.ones((2, 2), np.float32), "x/kernel": np.ones((2,))})
    config = _optim_config(weight_decay=0.5, lr=1.0)
    optimizer = optimizers.make_optimizer(config, params, max_step=10)
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = optimizer.tx.update(grads, optimizer.tx.init(params), params)
    assert not np.any(np.asarray(updates["frozen"]["kernel"]))
    np.testing.assert_allclose(np.asarray(updates["x"]["kernel"]), -1.5)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("lr_mults", (("(", 2.0),), "optim.lr_mults\\[0\\]: invalid regex"),
        ("lr_mults", (("a",),), "optim.lr_mults\\[0\\] must be a"),
        ("wd_mults", (("a", "x"),), "optim.wd_mults\\[0\\]: multiplier"),
        ("frozen", ((1, 2),), "optim.frozen\\[0\\] must be a regex"),
        ("schedule", "cosine", "optim.schedule"),
        ("name", "adam", "optim.name"),
    ],
)
def test_bad_optimizer_config_names_the_field(field, value, message):
    config = ml_collections.ConfigDict(_optim_config().to_dict())
    config[field] = value
    with pytest.raises(ValueError, match=message):
        optimizers.make_optimizer(config, _nest({"x/kernel": np.ones(2)}), max_step=3)


def test_unmatched_rules_are_reported():
    missing = optimizers.unmatched_rules(
        _nest({"x/kernel": np.ones(2)}), lr_mults=(("^x/", 2.0), ("^typo/", 3.0)), frozen=("^y",)
    )
    assert missing == ["optim.lr_mults: '^typo/'", "optim.frozen: '^y'"]
