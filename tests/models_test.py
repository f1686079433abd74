"""Tests of hfpl_jax.models: shapes, names, BN/dropout semantics, stop-gradients, param groups.

Parity with the PyTorch reference is in parity_test.py (golden fixtures); here the references are
float64 NumPy written from the spec.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hfpl_jax import models
from hfpl_jax.models import affinity, layers, seam

TINY = dict(width=0.125, blocks=(1, 1, 1, 1))
NUM_CLASSES = 5


def _paths(tree):
    return sorted(
        "/".join(str(k.key) for k in p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]
    )


@pytest.fixture(scope="module")
def tiny_seam():
    model = models.build("seam", NUM_CLASSES, **TINY)
    variables = models.init_variables("seam", NUM_CLASSES, jax.random.key(0), **TINY)
    return model, variables


@pytest.mark.parametrize(
    "arch,hw,expected",
    [
        ("seam", (64, 64), {"cam": (2, 64, 64, 6), "cam_rv": (2, 64, 64, 6),
                            "logits": (2, 8, 8, 6)}),
        ("seam", (75, 61), {"cam": (2, 75, 61, 6), "cam_rv": (2, 75, 61, 6),
                            "logits": (2, 10, 8, 6)}),
        ("affinity", (64, 64), {"features": (2, 8, 8, 56), "affinity": (2, 12, 24)}),
        ("deeplab_largefov", (75, 61), {"logits": (2, 75, 61, 6)}),
        ("resnet50_cam", (75, 61), {"cam": (2, 75, 61, 6), "logits": (2, 5, 4, 6)}),
    ],
)  # fmt: skip
def test_output_shapes(arch, hw, expected):
    model = models.build(arch, NUM_CLASSES, **TINY)
    images = jax.ShapeDtypeStruct((2, *hw, 3), jnp.float32)
    variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), images)
    out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, images)
    assert {k: v.shape for k, v in out.items()} == expected
    assert all(v.dtype == jnp.float32 for v in out.values())


def test_seam_parameter_paths_mirror_torch_names(tiny_seam):
    _, variables = tiny_seam
    paths = _paths(variables["params"])
    for expected in ["conv1a/kernel", "b2/conv_branch1/kernel", "b2/bn_branch2a/scale",
                     "b5/conv_branch2b1/kernel", "b6/conv_branch2b2/kernel", "bn7/scale",
                     "b7/bn_branch2b2/bias", "fc8/kernel", "f8_3/kernel", "f8_4/kernel",
                     "f9/kernel"]:  # fmt: skip
        assert expected in paths
    stats = _paths(variables["batch_stats"])
    assert "b4/bn_branch2a/mean" in stats and "bn7/var" in stats
    assert "bn7/num_batches_tracked" in stats
    # Same-shape blocks have no projection.
    full = models.build("seam", 20)
    shapes = jax.eval_shape(lambda: full.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
    full_paths = _paths(shapes["params"])
    assert "b2_1/conv_branch1/kernel" not in full_paths
    assert "b4_5/conv_branch2a/kernel" in full_paths
    flat = dict(zip(full_paths, jax.tree.leaves(shapes["params"]), strict=True))
    assert flat["fc8/kernel"].shape == (1, 1, 4096, 21)
    assert flat["f9/kernel"].shape == (1, 1, 195, 192)
    assert flat["b6/conv_branch2b1/kernel"].shape == (3, 3, 512, 1024)
    assert flat["b5/conv_branch2a/kernel"].shape == (3, 3, 512, 512)
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes["params"]))
    assert n_params == _spec_seam_parameter_count()  # 105,358,208, as the torch model


def _spec_seam_parameter_count():
    """Conv weights + BN weight/bias of SEAM, counted from the spec's layer table (§1.3, §2.1)."""

    def res_block(cin, mid, cout, same):
        return 2 * cin + cin * mid * 9 + 2 * mid + mid * cout * 9 + (0 if same else cin * cout)

    def bottleneck(cin, cout):
        q, h = cout // 4, cout // 2
        return 2 * cin + cin * cout + cin * q + 2 * q + q * h * 9 + 2 * h + h * cout

    total = 3 * 64 * 9
    total += res_block(64, 128, 128, False) + 2 * res_block(128, 128, 128, True)
    total += res_block(128, 256, 256, False) + 2 * res_block(256, 256, 256, True)
    total += res_block(256, 512, 512, False) + 5 * res_block(512, 512, 512, True)
    total += res_block(512, 512, 1024, False) + 2 * res_block(1024, 512, 1024, True)
    total += bottleneck(1024, 2048) + bottleneck(2048, 4096) + 2 * 4096
    return total + 4096 * 21 + 512 * 64 + 1024 * 128 + 195 * 192


def _np_bn_frozen(x, p, s):
    return (x - s["mean"]) / np.sqrt(s["var"] + 1e-5) * p["scale"] + p["bias"]


def test_batchnorm_batch_mode_matches_torch_rules():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3, 5, 7)).astype(np.float32) * 3 + 1
    bn = layers.BatchNorm(momentum=0.9997)
    variables = bn.init(jax.random.key(0), jnp.asarray(x), use_running_average=False)
    variables = jax.tree.map(np.asarray, variables)
    assert int(variables["batch_stats"]["num_batches_tracked"]) == 0  # init does not update
    variables["params"]["scale"] = rng.uniform(0.5, 1.5, 7).astype(np.float32)
    variables["batch_stats"]["mean"] = rng.uniform(-1, 1, 7).astype(np.float32)
    y, updates = bn.apply(variables, jnp.asarray(x), use_running_average=False,
                          mutable=["batch_stats"])  # fmt: skip
    x64 = x.astype(np.float64)
    mean, var = x64.mean((0, 1, 2)), x64.var((0, 1, 2))
    want = (x64 - mean) / np.sqrt(var + 1e-5) * variables["params"]["scale"]
    np.testing.assert_allclose(np.asarray(y), want, atol=2e-5)
    new = updates["batch_stats"]
    n = 4 * 3 * 5
    np.testing.assert_allclose(
        new["mean"], 0.9997 * variables["batch_stats"]["mean"] + 0.0003 * mean, rtol=1e-6
    )
    np.testing.assert_allclose(new["var"], 0.9997 * 1.0 + 0.0003 * var * n / (n - 1), rtol=1e-6)
    assert int(new["num_batches_tracked"]) == 1
    # Frozen: running statistics, nothing to update.
    y2 = bn.apply(variables, jnp.asarray(x), use_running_average=True)
    np.testing.assert_allclose(
        np.asarray(y2),
        _np_bn_frozen(x64, variables["params"], variables["batch_stats"]),
        atol=1e-5,
    )


def test_frozen_batch_norm_ignores_train_and_batch_mode_updates(tiny_seam):
    model, variables = tiny_seam
    images = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    rngs = {"dropout": jax.random.key(2)}
    # Frozen BN: train=True only turns dropout on; no batch_stats collection is mutable or needed.
    out_train = model.apply(variables, images, train=True, rngs=rngs)
    assert out_train["cam"].shape == (2, 32, 32, 6)
    batch_model = models.build("seam", NUM_CLASSES, batch_norm="batch", **TINY)
    _, updates = batch_model.apply(variables, images, train=True, rngs=rngs,
                                   mutable=["batch_stats"])  # fmt: skip
    before, after = variables["batch_stats"]["bn7"], updates["batch_stats"]["bn7"]
    assert not np.allclose(before["mean"], after["mean"])
    assert int(after["num_batches_tracked"]) == 1


def test_dropout2d_is_channelwise_and_scaled():
    x = jnp.ones((16, 5, 6, 64))
    y = layers.Dropout2d(0.3).apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(3)})
    y = np.asarray(y)
    # Each (sample, channel) plane is all zero or all 1/(1-p).
    planes = y.reshape(16, 30, 64)
    assert np.all(planes.min(axis=1) == planes.max(axis=1))
    values = np.unique(planes[:, 0, :])
    np.testing.assert_allclose(sorted(values), [0.0, 1 / 0.7], rtol=1e-6)
    drop_rate = np.mean(planes[:, 0, :] == 0)
    assert 0.2 < drop_rate < 0.4
    assert np.array_equal(
        np.asarray(layers.Dropout2d(0.3).apply({}, x, deterministic=True)), np.asarray(x)
    )


def test_seam_dropout_active_only_in_train(tiny_seam):
    model, variables = tiny_seam
    images = jax.random.normal(jax.random.key(1), (1, 32, 32, 3))
    a = model.apply(variables, images, train=False)["logits"]
    b = model.apply(variables, images, train=True, rngs={"dropout": jax.random.key(0)})["logits"]
    c = model.apply(variables, images, train=True, rngs={"dropout": jax.random.key(1)})["logits"]
    assert not np.allclose(a, b) and not np.allclose(b, c)


def _np_cam_d_norm(cam):
    cam = np.maximum(cam.astype(np.float64), 0)
    norm = np.maximum(cam - 1e-5, 0) / (cam.max(axis=(1, 2), keepdims=True) + 1e-5)
    fg = norm[..., 1:].copy()
    fg_max = fg.max(-1, keepdims=True)
    fg[fg < fg_max] = 0
    return np.concatenate([1 - fg_max, fg], -1)


def _np_pcm(cam, g):
    n, h, w, c = cam.shape
    g = g.astype(np.float64).reshape(n, h * w, -1)
    g = g / (np.linalg.norm(g, axis=-1, keepdims=True) + 1e-5)
    aff = np.maximum(np.einsum("nid,njd->nij", g, g), 0)
    aff = aff / (aff.sum(axis=1, keepdims=True) + 1e-5)
    return np.einsum("nic,nij->njc", cam.reshape(n, h * w, c), aff).reshape(n, h, w, c)


def test_pcm_pieces_match_float64_spec():
    rng = np.random.default_rng(5)
    logits = rng.standard_normal((2, 6, 7, 4)).astype(np.float32)
    logits[0, :, :, 2] = 0.3  # ties in the foreground max keep every tied channel
    logits[0, :, :, 3] = 0.3
    got = np.asarray(seam.normalized_cam_for_pcm(jnp.asarray(logits)))
    np.testing.assert_allclose(got, _np_cam_d_norm(logits), atol=1e-6)
    g = rng.standard_normal((2, 6, 7, 9)).astype(np.float32)
    got_rv = np.asarray(seam.pixel_correlation(jnp.asarray(got), jnp.asarray(g)))
    np.testing.assert_allclose(got_rv, _np_pcm(got, g), atol=1e-5)


def test_seam_gradient_paths(tiny_seam):
    """cam/logits reach backbone + fc8 only; cam_rv reaches f8_3, f8_4, f9 only (spec §2.4)."""
    model, variables = tiny_seam
    images = jax.random.normal(jax.random.key(1), (1, 32, 32, 3))

    @jax.jit
    def all_grads(params):
        def loss(params, output):
            out = model.apply({**variables, "params": params}, images, train=False)[output]
            return jnp.sum(out * jnp.cos(jnp.arange(out.size)).reshape(out.shape))

        return [jax.grad(loss)(params, o) for o in ("cam", "cam_rv", "logits")]

    def per_layer(g):
        return {
            k: float(sum(jnp.sum(jnp.abs(x)) for x in jax.tree.leaves(v))) for k, v in g.items()
        }

    g_cam, g_rv, g_logits = map(per_layer, all_grads(variables["params"]))
    pcm = {"f8_3", "f8_4", "f9"}
    for name in g_cam:
        if name in pcm:
            assert g_cam[name] == 0 and g_logits[name] == 0, name
            assert g_rv[name] > 0, name
        else:
            assert g_rv[name] == 0, name
    assert g_cam["fc8"] > 0 and g_cam["b3"] > 0 and g_logits["conv1a"] > 0


def test_affinity_pairs_match_spec():
    offsets = affinity.search_offsets(5)
    assert len(offsets) == 34
    assert offsets[:5] == [(0, 1), (0, 2), (0, 3), (0, 4), (1, -4)]
    from_idx, to_idx = affinity.pair_indices(5, (56, 56))
    assert from_idx.shape == (52 * 48,) and to_idx.shape == (34 * 52 * 48,)
    assert from_idx[0] == 4 and from_idx[48] == 56 + 4
    # "to" pixel of offset k is the from pixel shifted by (dy, dx).
    k = offsets.index((3, -2))
    np.testing.assert_array_equal(to_idx[k * 2496 : (k + 1) * 2496], from_idx + 3 * 56 - 2)
    assert affinity.radius_for((56, 56)) == 5 and affinity.radius_for((8, 9)) == 3
    with pytest.raises(ValueError, match="too small"):
        affinity.pair_indices(3, (2, 3))


def test_affinity_values_and_dense_matrix():
    rng = np.random.default_rng(6)
    f = rng.standard_normal((1, 7, 9, 4)).astype(np.float32)
    from_idx, to_idx = affinity.pair_indices(3, (7, 9))
    aff = np.asarray(affinity.pair_affinities(jnp.asarray(f), from_idx, to_idx))
    flat = f.reshape(1, 63, 4).astype(np.float64)
    k_count = len(affinity.search_offsets(3))
    want = np.exp(-np.abs(flat[0, to_idx.reshape(k_count, -1)] - flat[0, from_idx]).mean(-1))
    np.testing.assert_allclose(aff[0], want, rtol=1e-6)
    dense = np.asarray(affinity.dense_affinity(jnp.asarray(aff), from_idx, to_idx, 63))[0]
    np.testing.assert_array_equal(dense, dense.T)
    np.testing.assert_array_equal(np.diag(dense), 1.0)
    assert np.count_nonzero(dense) == 63 + 2 * aff.size


def test_resnet50_max_pool_pads_with_minus_inf():
    from hfpl_jax.models.resnet50_cam import max_pool_3x3_s2

    x = -np.abs(np.random.default_rng(0).standard_normal((1, 5, 6, 2))).astype(np.float32) - 1
    got = np.asarray(max_pool_3x3_s2(jnp.asarray(x)))
    pad = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
    want = np.stack(
        [np.stack([pad[0, 2 * i : 2 * i + 3, 2 * j : 2 * j + 3].max((0, 1)) for j in range(3)])
         for i in range(3)]
    )  # fmt: skip
    np.testing.assert_array_equal(got[0], want)


def test_param_labels_seam():
    get = lambda p: models.param_label(p, "seam")  # noqa: E731
    assert get("conv1a/kernel") == "frozen"
    assert get("b2_2/conv_branch2a/kernel") == "frozen"
    assert get("b3/conv_branch2a/kernel") == "weight"
    assert get("b3/bn_branch2a/scale") == "frozen"
    assert get("bn7/bias") == "frozen"
    assert get("fc8/kernel") == "scratch_weight" and get("f9/kernel") == "scratch_weight"
    assert models.param_label("cls_conv/bias", "deeplab_largefov") == "scratch_bias"
    assert models.param_label("backbone/conv1a/kernel", "deeplab_largefov") == "weight"
    assert models.param_label("layer2/0/downsample/1/scale", "resnet50_cam") == "frozen"
    assert models.param_label("layer2/0/downsample/0/kernel", "resnet50_cam") == "weight"
    assert models.param_label("layer1/0/conv1/kernel", "resnet50_cam") == "frozen"
    for arch in models.ARCHS:
        for pattern in models.FROM_SCRATCH_PATTERNS[arch] + models.NOT_TRAINING_PATTERNS[arch]:
            re.compile(pattern)


def test_build_errors():
    with pytest.raises(ValueError, match="arch"):
        models.build("unet", 20)
    with pytest.raises(ValueError, match="batch_norm"):
        models.build("seam", 20, batch_norm="sync")
    with pytest.raises(ValueError, match="num_classes"):
        models.build("seam", 0)
    model = models.build("seam", 20, width=0.125, blocks=(1, 1))
    with pytest.raises(ValueError, match="blocks"):
        model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    with pytest.raises(ValueError, match="images"):
        models.build("seam", 20, **TINY).init(jax.random.key(0), jnp.zeros((1, 32, 32)))


def test_arch_specs_are_registered_once_and_drive_build():
    """Each model module's SPEC is registered under its name; build uses its module and the
    stage's BatchNorm defaults (the reference: DeepLab batch statistics, momentum 0.0003)."""
    assert models.ARCHS == tuple(models.SPECS) == ("seam", "affinity", "deeplab_largefov",
                                                   "resnet50_cam")  # fmt: skip
    for name, spec in models.SPECS.items():
        assert spec.name == name and models.get_spec(name) is spec
        model = models.build(name, 5, **TINY)
        assert type(model) is spec.module
        assert (model.batch_norm, model.bn_momentum) == (spec.default_batch_norm,
                                                         spec.default_bn_momentum)  # fmt: skip
        assert models.FROM_SCRATCH_PATTERNS[name] == spec.from_scratch
        assert models.NOT_TRAINING_PATTERNS[name] == spec.not_training
    deeplab = models.get_spec("deeplab_largefov")
    assert (deeplab.default_batch_norm, deeplab.default_bn_momentum) == ("batch", 0.9997)
    assert (deeplab.backbone_prefix, deeplab.backbone.name) == ("backbone.", "resnet38")
    assert models.get_spec("seam").default_batch_norm == "frozen"
    assert not models.get_spec("affinity").has_classes  # num_classes 0 is allowed
    models.build("affinity", 0, **TINY)
    with pytest.raises(ValueError, match=r"arch must be one of .*'unet'"):
        models.get_spec("unet")


def test_build_from_config_names_the_bad_field():
    config = {"arch": "seam", "width": 0.125, "blocks": (1, 1, 1, 1), "batch_norm": "frozen",
              "dropout": False, "conv_init": "he_normal", "compute_dtype": "bfloat16"}  # fmt: skip
    model = models.build_from_config(config, 5)
    assert (model.width, model.blocks, model.dtype, model.dropout, model.conv_init) == (
        0.125, (1, 1, 1, 1), jnp.bfloat16, False, "he_normal")  # fmt: skip
    for key, value in (("arch", "unet"), ("batch_norm", "sync"), ("conv_init", "xavier"),
                       ("compute_dtype", "float16")):  # fmt: skip
        with pytest.raises(ValueError, match=rf"model\.{key} must be one of .*'{value}'"):
            models.build_from_config({**config, key: value}, 5)


def test_initializers_match_torch_formulas(tiny_seam):
    # fc8: xavier U(+-sqrt(6/(fan_in+fan_out))); f9: gain 4; f8_*: untruncated kaiming normal
    # N(0, 2/fan_in); backbone convs: PyTorch default U(+-1/sqrt(fan_in)). Tiny widths, same rules.
    p = tiny_seam[1]["params"]
    fc8 = np.asarray(p["fc8"]["kernel"])  # (1, 1, 512, 6)
    bound = np.sqrt(6 / (512 + 6))
    assert bound * 0.95 < np.abs(fc8).max() <= bound
    f9 = np.asarray(p["f9"]["kernel"])  # (1, 1, 3 + 8 + 16, 24)
    bound = 4 * np.sqrt(6 / (27 + 24))
    assert bound * 0.9 < np.abs(f9).max() <= bound
    f8_4 = np.asarray(p["f8_4"]["kernel"])  # (1, 1, 128, 16)
    np.testing.assert_allclose(f8_4.std(), np.sqrt(2 / 128), rtol=0.05)
    assert np.abs(f8_4).max() > 2.5 * np.sqrt(2 / 128)  # not truncated at 2 std
    conv = np.asarray(p["b4"]["conv_branch2a"]["kernel"])  # (3, 3, 32, 64)
    bound = 1 / np.sqrt(32 * 9)
    assert bound * 0.99 < np.abs(conv).max() <= bound
    bn = p["b4"]["bn_branch2a"]
    assert np.all(np.asarray(bn["scale"]) == 1) and np.all(np.asarray(bn["bias"]) == 0)


def test_param_labels_drive_optax_groups(tiny_seam):
    """``param_labels`` + ``optax.multi_transform``: frozen tensors never move; lr multipliers."""
    import optax

    _, variables = tiny_seam
    params = variables["params"]
    labels = models.param_labels(params, "seam")
    lr = 0.1
    tx = optax.multi_transform(
        {label: optax.sgd(lr * mult) if mult else optax.set_to_zero()
         for label, mult in models.LR_MULTIPLIERS.items()},
        labels,
    )  # fmt: skip
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    assert np.all(np.asarray(updates["conv1a"]["kernel"]) == 0)
    assert np.all(np.asarray(updates["b3"]["bn_branch2a"]["scale"]) == 0)
    np.testing.assert_allclose(np.asarray(updates["b3"]["conv_branch2a"]["kernel"]), -lr)
    np.testing.assert_allclose(np.asarray(updates["fc8"]["kernel"]), -10 * lr)
    assert models.WEIGHT_DECAY["weight"] and not models.WEIGHT_DECAY["frozen"]


def test_bfloat16_compute_keeps_float32_params_and_outputs(tiny_seam):
    _, variables = tiny_seam
    model = models.build("seam", NUM_CLASSES, dtype=jnp.bfloat16, **TINY)
    images = jax.random.normal(jax.random.key(1), (1, 32, 32, 3))
    out = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, images)
    assert all(v.dtype == jnp.float32 for v in out.values())
    full = models.build("seam", NUM_CLASSES, **TINY).apply(variables, images, train=False)
    # bfloat16 convolutions: ~3 significant digits.
    assert float(jnp.max(jnp.abs(out["cam"] - full["cam"]))) < 0.05 * float(
        jnp.max(jnp.abs(full["cam"]))
    )


def test_batch_statistics_are_global_under_data_sharding():
    """BN batch statistics over a batch sharded across devices equal the unsharded ones."""
    from jax.sharding import NamedSharding, PartitionSpec

    devices = jax.devices()
    if len(devices) < 2:
        pytest.skip("needs several (fake) devices")
    mesh = jax.make_mesh((len(devices),), ("data",))
    x = np.random.default_rng(0).standard_normal((2 * len(devices), 3, 5, 4)).astype(np.float32)
    x[: len(devices)] += 3.0  # per-device statistics would differ from the global ones
    bn = layers.BatchNorm(momentum=0.5)
    variables = bn.init(jax.random.key(0), x, use_running_average=False)
    apply = jax.jit(lambda v, x: bn.apply(v, x, use_running_average=False, mutable=["batch_stats"]))
    sharded = jax.device_put(x, NamedSharding(mesh, PartitionSpec("data")))
    y_sharded, stats_sharded = apply(variables, sharded)
    y, stats = apply(variables, x)
    np.testing.assert_allclose(np.asarray(y_sharded), np.asarray(y), atol=1e-5)
    np.testing.assert_allclose(stats_sharded["batch_stats"]["mean"], 0.5 * x.mean((0, 1, 2)),
                               rtol=1e-5, atol=1e-6)  # fmt: skip
    np.testing.assert_allclose(stats_sharded["batch_stats"]["var"],
                               stats["batch_stats"]["var"], rtol=1e-5)  # fmt: skip
