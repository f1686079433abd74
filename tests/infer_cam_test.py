"""Multi-scale CAM inference (hfpl_jax.inference.cam, cam_files, cam_run; `hfpl-jax infer-cam`).

Independent references: a float64 NumPy implementation of ``infer_cam_voc.py``'s procedure
written from its description (two bilinear stages, label mask, flips, sum, normalisation), and the
golden fixture ``golden_infer_cam.npz`` from the official script's own loop body
(``scripts/make_golden_infer_cam.py``).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from train_cam_helpers import shapes_dir  # noqa: F401 - a fixture

from hfpl_jax.inference import cam, cam_files, cam_run

TESTDATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "testdata")
HAS_JAX_CRF = importlib.util.find_spec("hfpl_jax.inference.crf") is not None


# --------------------------------------------------------------------------------------------------
# float64 NumPy reference, from the scripts' description


def _taps64(n_in, n_out, align_corners):
    """PyTorch's bilinear source coordinate, in float64."""
    dst = np.arange(n_out, dtype=np.float64)
    if n_in == n_out:
        src = dst
    elif align_corners:
        src = dst * ((n_in - 1) / (n_out - 1) if n_out > 1 else 0.0)
    else:
        src = np.maximum((dst + 0.5) * (n_in / n_out) - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(int), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w1 = src - i0
    return i0, i1, 1.0 - w1, w1


def resize64(x, out_hw, align_corners):
    """(N, H, W, C) float64 bilinear resize (PyTorch semantics)."""
    r0, r1, a0, a1 = _taps64(x.shape[1], out_hw[0], align_corners)
    c0, c1, b0, b1 = _taps64(x.shape[2], out_hw[1], align_corners)
    rows = a0[None, :, None, None] * x[:, r0] + a1[None, :, None, None] * x[:, r1]
    return b0[None, None, :, None] * rows[:, :, c0] + b1[None, None, :, None] * rows[:, :, c1]


def fuse64(maps, input_hws, labels, image_hw):
    """The script's fusion in float64: per input AC=True to the input size, AC=False to the image
    size, times the labels, flipped back for odd inputs; summed; normalised per class."""
    total = 0.0
    for i, (m, hw) in enumerate(zip(maps, input_hws, strict=True)):
        r = resize64(resize64(np.float64(m), hw, True), image_hw, False) * labels[:, None, None]
        total = total + (r[:, :, ::-1] if i % 2 else r)
    return normalize64(total)


def normalize64(s):
    s = np.where(s < 0, 0.0, s)
    hi = s.max(axis=(1, 2), keepdims=True)
    lo = s.min(axis=(1, 2), keepdims=True)
    s = np.where(s < lo + 1e-5, 0.0, s)
    return (s - lo - 1e-5) / (hi - lo + 1e-5)


def normalize_script_float32(sum_cam):
    """The script's lines verbatim on a (K, H, W) float32 array."""
    sum_cam = sum_cam.copy()
    sum_cam[sum_cam < 0] = 0
    cam_max = np.max(sum_cam, (1, 2), keepdims=True)
    cam_min = np.min(sum_cam, (1, 2), keepdims=True)
    sum_cam[sum_cam < cam_min + 1e-5] = 0
    return (sum_cam - cam_min - 1e-5) / (cam_max - cam_min + 1e-5)


# --------------------------------------------------------------------------------------------------
# Resizing, fusion, normalisation


@pytest.mark.parametrize(
    "net_hw,input_hw,image_hw",
    [((4, 5), (27, 34), (54, 68)), ((7, 9), (56, 70), (28, 35)), ((2, 2), (14, 10), (27, 21)),
     ((5, 3), (40, 21), (40, 21)), ((6, 6), (48, 44), (31, 57))],
)  # fmt: skip
def test_two_stage_resize_against_float64_and_the_full_two_stages(net_hw, input_hw, image_hw):
    x = np.random.default_rng(0).normal(size=(2, *net_hw, 3)).astype(np.float32)
    lazy = np.asarray(cam.two_stage_resize(x, input_hw, image_hw))
    full = cam.resize_bilinear_torch(
        cam.resize_bilinear_torch(x, input_hw, align_corners=True), image_hw, align_corners=False
    )
    # Stage 1 evaluated only where stage 2 reads it: the same operations on the same values.
    np.testing.assert_array_equal(lazy, np.asarray(full))
    expected = resize64(resize64(np.float64(x), input_hw, True), image_hw, False)
    # Bilinear weights are convex: float32 taps and products err by a few ulps of max|x|.
    np.testing.assert_allclose(lazy, expected, rtol=0, atol=8 * 2**-23 * np.abs(x).max())


def test_one_resize_matches_image_ops():
    x = np.random.default_rng(1).normal(size=(1, 9, 13, 2)).astype(np.float32)
    from hfpl_jax.image_ops import resize_bilinear

    for ac in (True, False):
        ours = cam.resize_bilinear_torch(x, (20, 7), align_corners=ac)
        np.testing.assert_allclose(
            ours, resize_bilinear(x, (20, 7), align_corners=ac), atol=4 * 2**-23 * 3
        )


def _random_maps(rng, image_hw, scales, num_classes, batch=1):
    hws = [hw for hw in cam.input_sizes(image_hw, scales) for _ in range(2)]
    maps = [
        rng.normal(size=(batch, max(1, -(-h // 8)), max(1, -(-w // 8)), num_classes)).astype(
            np.float32
        )
        for h, w in hws
    ]
    return maps, hws


def test_fusion_matches_float64_reference_with_absent_classes():
    rng = np.random.default_rng(2)
    image_hw = (27, 38)
    maps, hws = _random_maps(rng, image_hw, cam.DEFAULT_SCALES, 5, batch=2)
    labels = np.array([[1, 0, 1, 1, 0], [0, 1, 0, 0, 0]], np.float32)
    ours = np.asarray(cam.fuse_network_maps(maps, hws, labels, image_hw))
    expected = fuse64(maps, hws, labels, image_hw)
    # Normalised values: float32 sums of 8 maps (relative error ~8 ulps), divided by hi - lo.
    np.testing.assert_allclose(ours, expected, atol=2e-5)
    assert np.all(
        np.moveaxis(ours, 3, 1)[labels == 0] == -1.0
    )  # absent: (0 - 0 - 1e-5) / (0 - 0 + 1e-5)


def test_normalisation_is_the_scripts_float32_arithmetic_bit_for_bit():
    rng = np.random.default_rng(3)
    s = rng.normal(size=(2, 30, 41, 4)).astype(np.float32)
    s[0, ..., 1] = np.abs(s[0, ..., 1]) + 0.25  # positive everywhere: a minimum above 0
    s[1, ..., 2] = 0.0  # an absent class
    ours = np.asarray(jax.jit(cam.normalize_cam_sum)(s))
    for n in range(2):
        expected = normalize_script_float32(np.transpose(s[n], (2, 0, 1)))
        np.testing.assert_array_equal(ours[n], np.transpose(expected, (1, 2, 0)))


def test_normalisation_quirk_values():
    # A sum positive everywhere (min 2, max 5): the minimum's pixels fall below 0, to
    # -(lo + 1e-5) / (hi - lo + 1e-5); a sum touching 0 leaves them at -1e-5 / (hi + 1e-5).
    s = np.zeros((1, 2, 3, 3), np.float32)
    s[0, ..., 0] = [[2, 3, 5], [2, 4, 2.000001]]
    s[0, ..., 1] = [[0, 1, 2], [3, 0, -1]]
    out = np.asarray(cam.normalize_cam_sum(s))[0]
    f = np.float32
    assert out[0, 0, 0] == pytest.approx(-(2 + 1e-5) / (3 + 1e-5), rel=1e-6)
    assert out[1, 2, 0] == out[0, 0, 0]  # 2.000001 < 2 + 1e-5: set to 0 like the minimum
    assert out[0, 2, 0] == pytest.approx((5 - 2 - 1e-5) / (3 + 1e-5), rel=1e-6)
    assert out[1, 2, 1] == pytest.approx(-1e-5 / (3 + 1e-5), rel=1e-5)  # negative sum -> 0
    assert out[1, 0, 1] == f((f(3) - f(1e-5)) / (f(3) + f(1e-5)))
    np.testing.assert_array_equal(out[..., 2], -1.0)


def test_golden_fusion_and_crf_inputs_from_the_reference_script():
    g = np.load(os.path.join(TESTDATA, "golden_infer_cam.npz"))
    image_hw = g["image"].shape[:2]
    from hfpl_jax.data import transforms

    inputs = transforms.msf_cam_inputs(Image.fromarray(g["image"]))
    for i, x in enumerate(inputs):
        np.testing.assert_array_equal(x, g[f"inputs/{i}"])
    maps = [g[f"pcm/{i}"][None, ..., 1:] for i in range(8)]
    hws = [x.shape[:2] for x in inputs]
    ours = np.asarray(cam.fuse_network_maps(maps, hws, g["label"][None], image_hw))[0]
    # PyTorch's CPU kernels round a few products differently (FMA): ~ulps of the summed maps.
    np.testing.assert_allclose(ours, g["norm_cam"], atol=5e-6)
    assert (g["norm_cam"] < -1).any()  # this image shows the positive-sum quirk
    classes = np.flatnonzero(g["label"] > cam.LABEL_EPS)
    np.testing.assert_array_equal(classes, g["cam_classes"])
    for alpha in (1, 24):
        probs = np.asarray(cam.crf_probabilities(g["norm_cam"][..., classes], alpha))
        expected = g[f"crf_input_{alpha}"]
        # alpha 1: exact; 24: repeated multiplication vs powf, a few ulps.
        np.testing.assert_allclose(
            probs, expected, rtol=8 * 2**-23 if alpha > 1 else 0, atol=1e-30 if alpha > 1 else 0
        )  # (and XLA flushes float32 subnormals of x**24 to zero)


def test_crf_probabilities_against_float64():
    cams = np.random.default_rng(4).uniform(-0.1, 1.0, size=(5, 6, 3)).astype(np.float32)
    for alpha in (1.0, 24.0, 2.5):
        expected = np.concatenate(
            [(1 - np.float64(cams).max(-1, keepdims=True)) ** alpha, cams], axis=-1
        )
        np.testing.assert_allclose(
            cam.crf_probabilities(cams, alpha), expected, rtol=2e-6, atol=1e-12
        )


def test_predicted_labels_rule():
    scores = jnp.array([[2.0, -1.0, 0.1], [-3.0, -0.5, -2.0], [-3.0, -0.5, -2.0]])
    rule = cam.LabelRule(threshold=0.5, at_least_one=True)
    np.testing.assert_array_equal(
        cam.predicted_labels(scores, rule), [[1, 0, 1], [0, 1, 0], [0, 1, 0]]
    )
    np.testing.assert_array_equal(
        cam.predicted_labels(scores, cam.LabelRule(0.5, at_least_one=False)),
        [[1, 0, 1], [0, 0, 0], [0, 0, 0]],
    )
    with pytest.raises(ValueError, match="threshold"):
        cam.LabelRule(threshold=1.5)


# --------------------------------------------------------------------------------------------------
# The inferencer: batching, sharding, image scores (a tiny stand-in network compiles in ~1 s)


class TinyCamNet(nn.Module):
    """Stride-8 logits from two convs; ``cam`` is not used by cam_source='cam'."""

    num_classes: int

    @nn.compact
    def __call__(self, x, train=False):
        y = nn.relu(nn.Conv(6, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))(x))
        y = nn.Conv(self.num_classes + 1, (3, 3), strides=(4, 4), padding=((1, 1), (1, 1)))(y)
        return {"logits": y}


@pytest.fixture(scope="module")
def tiny_net():
    model = TinyCamNet(num_classes=4)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
    return model, variables


def _example_inputs(rng, image_hw, batch, scales=cam.DEFAULT_SCALES):
    inputs = []
    for h, w in cam.input_sizes(image_hw, scales):
        x = rng.normal(size=(batch, h, w, 3)).astype(np.float32)
        inputs.append(np.stack([x, x[:, :, ::-1]], axis=1))
    return inputs


def _per_image_reference(model, variables, inputs, labels, image_hw):
    """One image at a time, without the inferencer: network, then the float64 fusion."""
    out = []
    for n in range(labels.shape[0]):
        maps, hws = [], []
        for x in inputs:
            for f in range(2):
                logits = model.apply(variables, x[n : n + 1, f])["logits"]
                maps.append(np.asarray(logits)[..., 1:])
                hws.append(x.shape[2:4])
        out.append(fuse64(maps, hws, labels[n : n + 1], image_hw)[0])
    return np.stack(out)


def test_batched_sharded_inference_equals_per_image_runs(tiny_net):
    model, variables = tiny_net
    rng = np.random.default_rng(5)
    image_hw = (21, 30)
    inputs = _example_inputs(rng, image_hw, 8)
    labels = (rng.uniform(size=(8, 4)) > 0.4).astype(np.float32)
    results = {}
    for devices in (1, 8):
        mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:devices]), ("data",))
        inferencer = cam.CamInferencer(model, variables, mesh=mesh, cam_source="cam")
        results[devices] = jax.tree.map(np.asarray, inferencer(inputs, labels, image_hw))
        assert inferencer.compile_stats.compiles == 1
        inferencer(inputs, labels, image_hw)  # same size: no new compilation
        assert inferencer.compile_stats.compiles == 1
    # 8 shards == 1 device, up to the conv kernels' batch-size-dependent float rounding.
    np.testing.assert_allclose(results[1]["cams"], results[8]["cams"], atol=1e-6)
    expected = _per_image_reference(model, variables, inputs, labels, image_hw)
    np.testing.assert_allclose(results[8]["cams"], expected, atol=2e-5)
    np.testing.assert_array_equal(results[8]["labels"], labels)


def test_batch_rows_do_not_depend_on_their_neighbours(tiny_net):
    model, variables = tiny_net
    rng = np.random.default_rng(6)
    image_hw = (17, 12)
    inputs = _example_inputs(rng, image_hw, 2)
    labels = np.ones((2, 4), np.float32)
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1]), ("data",))
    inferencer = cam.CamInferencer(model, variables, mesh=mesh, cam_source="cam")
    both = np.asarray(inferencer(inputs, labels, image_hw)["cams"])
    alone = np.asarray(inferencer([x[:1].repeat(2, 0) for x in inputs], labels, image_hw)["cams"])
    np.testing.assert_array_equal(both[0], alone[0])  # a padded batch leaves real rows unchanged
    inferencer((*_example_inputs(rng, (9, 30), 2),), labels, (9, 30))
    assert inferencer.compile_stats.compiles == 2  # one per image size
    with pytest.raises(ValueError, match="must be"):
        inferencer(inputs, labels, (18, 12))


def test_predicted_labels_and_scores_follow_the_gap_of_the_upsampled_logits(tiny_net):
    model, variables = tiny_net
    rng = np.random.default_rng(7)
    image_hw = (19, 23)
    inputs = _example_inputs(rng, image_hw, 1)
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1]), ("data",))
    rule = cam.LabelRule(threshold=0.5)
    inferencer = cam.CamInferencer(model, variables, mesh=mesh, cam_source="cam", label_rule=rule)
    out = jax.tree.map(np.asarray, inferencer(inputs, np.zeros((1, 4), np.float32), image_hw))
    scores = []
    for x in inputs:
        for f in range(2):
            logits = np.float64(model.apply(variables, x[:, f])["logits"])[..., 1:]
            scores.append(resize64(logits, x.shape[2:4], True).mean(axis=(1, 2)))
    expected = np.mean(scores, axis=0)
    np.testing.assert_allclose(out["scores"], expected, atol=1e-5)
    np.testing.assert_array_equal(out["labels"], cam.predicted_labels(expected, rule))


def test_network_maps_of_seam_are_its_cam_rv_before_upsampling():
    from hfpl_jax import models
    from hfpl_jax.image_ops import resize_bilinear

    model = models.build("seam", 3, width=0.0625, blocks=(1, 1, 1, 1))
    variables = models.init_variables(
        "seam", 3, jax.random.key(1), width=0.0625, blocks=(1, 1, 1, 1)
    )
    x = jnp.asarray(np.random.default_rng(8).normal(size=(1, 24, 31, 3)), jnp.float32)

    @jax.jit
    def both(variables, x):
        maps, logits = cam.network_maps(model, variables, x)
        return maps, logits, model.apply(variables, x, train=False)

    maps, logits, outputs = both(variables, x)
    np.testing.assert_array_equal(logits, outputs["logits"])
    upsampled = resize_bilinear(maps, x.shape[1:3], align_corners=True)
    np.testing.assert_allclose(upsampled, outputs["cam_rv"], atol=1e-6)


# --------------------------------------------------------------------------------------------------
# CRF plumbing (a stand-in CRF; the JAX dense CRF when it exists)


def _initial_marginals(image, probs, iterations=10):
    """The mean field's starting point, softmax(log clip(P, 1e-5, 1)): a deterministic stand-in."""
    del image, iterations
    p = jnp.clip(probs, 1e-5, 1.0)
    return p / jnp.sum(p, axis=-1, keepdims=True)


def test_crf_inferencer_inputs_order_and_empty_labels():
    rng = np.random.default_rng(9)
    image = rng.integers(0, 256, size=(7, 9, 3), dtype=np.uint8)
    cams = rng.uniform(-0.2, 1.0, size=(7, 9, 2)).astype(np.float32)
    crf = cam.CrfInferencer((1.0, 24.0), crf_fn=_initial_marginals)
    out = np.asarray(crf(image, cams))
    assert out.shape == (2, 7, 9, 3)
    for a, alpha in enumerate((1.0, 24.0)):
        p = np.concatenate([(1 - np.float64(cams).max(-1, keepdims=True)) ** alpha, cams], -1)
        p = np.clip(p, 1e-5, 1.0)
        np.testing.assert_allclose(out[a], p / p.sum(-1, keepdims=True), rtol=1e-5)
    np.testing.assert_array_equal(crf(image, cams[..., :0]), np.ones((2, 7, 9, 1)))
    crf(image, cams)
    assert crf.compile_stats.compiles == 1


@pytest.mark.skipif(not HAS_JAX_CRF, reason="hfpl_jax.inference.crf not available yet")
def test_crf_inferencer_with_the_jax_dense_crf():
    rng = np.random.default_rng(10)
    image = rng.integers(0, 256, size=(12, 15, 3), dtype=np.uint8)
    cams = rng.uniform(0, 1, size=(12, 15, 2)).astype(np.float32)
    out = np.asarray(cam.CrfInferencer((1.0, 24.0))(image, cams))
    assert out.shape == (2, 12, 15, 3) and np.isfinite(out).all()
    np.testing.assert_allclose(out.sum(-1), 1.0, atol=1e-4)  # marginals


# --------------------------------------------------------------------------------------------------
# Files


def _record(rng, k=2, hw=(5, 6), alphas=(1.0, 24.0)):
    return cam_files.CamRecord(
        classes=np.array([1, 4][:k]),
        cams=rng.uniform(size=(k, *hw)).astype(np.float32),
        labels=np.eye(5, dtype=np.float32)[1] + np.eye(5, dtype=np.float32)[4],
        scores=rng.normal(size=5).astype(np.float32),
        crf_alphas=np.asarray(alphas, np.float32),
        crf=rng.uniform(size=(len(alphas), k + 1, *hw)).astype(np.float32),
    )


def test_files_round_trip_in_both_formats(tmp_path):
    record = _record(np.random.default_rng(11))
    paths = cam_files.write_outputs(str(tmp_path), "img", record, ("npz", "reference"))
    assert sorted(os.path.relpath(p, tmp_path) for p in paths) == [
        "cam/img.npy", "crf_1.0/img.npy", "crf_24.0/img.npy", "img.npz"]  # fmt: skip
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]
    back = cam_files.read_cam_file(str(tmp_path / "img.npz"))
    for field in ("classes", "cams", "labels", "scores", "crf_alphas", "crf"):
        np.testing.assert_array_equal(getattr(back, field), getattr(record, field))
    reference = np.load(tmp_path / "cam" / "img.npy", allow_pickle=True).item()
    assert sorted(reference) == [1, 4]
    np.testing.assert_array_equal(reference[4], record.cams[1])
    crf24 = np.load(tmp_path / "crf_24.0" / "img.npy", allow_pickle=True).item()
    assert sorted(crf24) == [0, 2, 5]
    np.testing.assert_array_equal(crf24[5], record.crf[1, 2])
    from_reference = cam_files.read_cam_file(str(tmp_path / "cam" / "img.npy"))
    np.testing.assert_array_equal(from_reference.cams, record.cams)
    for path in paths:
        assert cam_files.cam_file_complete(path, image_hw=(5, 6))
    assert not cam_files.cam_file_complete(paths[0], image_hw=(6, 5))


def test_corrupt_or_foreign_files_are_refused(tmp_path):
    path = cam_files.write_outputs(
        str(tmp_path), "a", _record(np.random.default_rng(12)), ("npz",)
    )[0]
    data = open(path, "rb").read()
    truncated = tmp_path / "b.npz"
    truncated.write_bytes(data[: len(data) // 2])
    assert not cam_files.cam_file_complete(str(truncated))
    with pytest.raises(ValueError, match="b.npz"):
        cam_files.read_cam_file(str(truncated))
    foreign = tmp_path / "c.npz"
    np.savez(foreign, cams=np.zeros((1, 2, 2), np.float32))
    assert not cam_files.cam_file_complete(str(foreign))
    with pytest.raises(ValueError, match="c.npz.*missing members"):
        cam_files.read_cam_file(str(foreign))
    with pytest.raises(FileNotFoundError, match="nothing.npz"):
        cam_files.read_cam_file(str(tmp_path / "nothing.npz"))
    with pytest.raises(ValueError, match="inconsistent"):
        bad = _record(np.random.default_rng(13))
        cam_files.write_outputs(
            str(tmp_path), "d", bad.__class__(**{**bad.__dict__, "crf": bad.crf[:, :2]}), ("npz",)
        )  # noqa: E501
    with pytest.raises(ValueError, match="file name"):
        cam_files.output_paths(str(tmp_path), "../x", ("npz",), ())


# --------------------------------------------------------------------------------------------------
# The command: a tiny random SEAM in a workdir, the generated shapes dataset


@pytest.fixture(scope="module")
def cam_workdir(shapes_dir, tmp_path_factory):  # noqa: F811
    from train_cam_helpers import TINY_DATA, tiny_config

    from hfpl_jax import data

    config = tiny_config(shapes_dir)
    num_classes = data.num_classes("hfpl_shapes", shapes_dir, **TINY_DATA)
    workdir = str(tmp_path_factory.mktemp("run"))
    _save_checkpoint(workdir, config.to_dict(), "seam", num_classes, random=True)
    return {"workdir": workdir, "data_dir": shapes_dir, "num_classes": num_classes,
            "config": config}  # fmt: skip


def _save_checkpoint(workdir, config_dict, arch, num_classes, random=False, **size):
    """A checkpoint of ``arch`` (random weights, or zeros of the right shapes: no compilation)."""
    from hfpl_jax import checkpoint, models

    size = size or {"width": 0.125, "blocks": (1, 1, 1, 1)}
    init = functools.partial(models.init_variables, arch, num_classes, jax.random.key(0), **size)
    if random:
        variables = init()
    else:
        variables = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), jax.eval_shape(init))
    manager = checkpoint.CheckpointManager(workdir, async_save=False)
    manager.save(1, params=variables["params"], batch_stats=variables["batch_stats"],
                 opt_state={"count": np.zeros(1)}, train_meta={"step": np.int32(1)},
                 config=config_dict)  # fmt: skip
    manager.close()


FAST = ["--config.scales=1.0", "--config.crf_alphas=()", "--config.max_images=3"]


def _infer(workdir, out, *extra):
    from hfpl_jax import cli

    return cli.main(["infer-cam", f"--workdir={workdir}", "--split=val", f"--out={out}", *FAST,
                     *extra])  # fmt: skip


def _summary(out):
    with open(os.path.join(out, "infer_cam_summary.process-0.json")) as f:
        return json.load(f)


@pytest.mark.slow
def test_command_writes_resumes_and_recomputes_only_missing_or_corrupt(cam_workdir, tmp_path):
    from hfpl_jax import checkpoint, data
    from hfpl_jax.data import transforms

    workdir, out = cam_workdir["workdir"], str(tmp_path / "out")
    assert _infer(workdir, out) == 0
    summary = _summary(out)
    assert summary["images_done"] == 3 and summary["cam_compiles"] == summary["distinct_sizes"]
    names = sorted(f[:-4] for f in os.listdir(out) if f.endswith(".npz"))
    assert len(names) == 3
    first = {n: cam_files.read_cam_file(os.path.join(out, n + ".npz")) for n in names}

    # The files hold what the library computes for each image.
    source = data.open_split("hfpl_shapes", cam_workdir["data_dir"], "val", **_tiny_data())
    model, variables, *_ = cam_run.load_network(workdir, cam_workdir["num_classes"])
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1]), ("data",))
    inferencer = cam.CamInferencer(model, variables, mesh=mesh, scales=(1.0,))
    by_name = {source[i]["name"]: source[i] for i in range(3)}
    for name, record in first.items():
        example = by_name[name]
        inputs = transforms.msf_cam_inputs(Image.fromarray(example["image"]), (1.0,))
        out_direct = inferencer([np.stack(inputs)[None]], example["labels"][None],
                                example["image"].shape[:2])  # fmt: skip
        present = np.flatnonzero(example["labels"] > 1e-5)
        np.testing.assert_array_equal(record.classes, present)
        np.testing.assert_allclose(
            record.cams, np.transpose(np.asarray(out_direct["cams"])[0][..., present], (2, 0, 1)),
            atol=1e-6,
        )  # fmt: skip

    # Rerun: everything is finished.
    assert _infer(workdir, out) == 0
    assert _summary(out)["images_done"] == 0 and _summary(out)["images_skipped"] == 3
    # One file missing, one corrupt (a partial write the atomic rename would have prevented).
    os.remove(os.path.join(out, names[0] + ".npz"))
    path = os.path.join(out, names[1] + ".npz")
    open(path, "r+b").truncate(100)
    assert _infer(workdir, out) == 0
    assert _summary(out)["images_done"] == 2
    for name in names:
        again = cam_files.read_cam_file(os.path.join(out, name + ".npz"))
        np.testing.assert_array_equal(again.cams, first[name].cams)
        np.testing.assert_array_equal(again.scores, first[name].scores)
    # Other settings into the same folder are refused, naming the manifest.
    assert _infer(workdir, out, "--config.labels=predicted") == 2
    del checkpoint


def _tiny_data():
    from train_cam_helpers import TINY_DATA

    return TINY_DATA


@pytest.mark.slow
def test_command_bad_inputs_name_the_file(cam_workdir, tmp_path, capsys):
    empty = str(tmp_path / "empty")
    os.makedirs(empty)
    assert _infer(empty, str(tmp_path / "o1")) == 2
    assert "checkpoints" in capsys.readouterr().err

    # A checkpoint trained for another class count than the dataset's.
    config = cam_workdir["config"].to_dict()
    other = str(tmp_path / "other_classes")
    _save_checkpoint(other, config, "seam", cam_workdir["num_classes"] + 2)
    assert _infer(other, str(tmp_path / "o2")) == 2
    err = capsys.readouterr().err
    assert "other_classes/checkpoints" in err and "classes" in err and "fc8" in err

    # A checkpoint of another architecture than its config says.
    foreign = str(tmp_path / "foreign")
    _save_checkpoint(foreign, config, "resnet50_cam", cam_workdir["num_classes"],
                     width=0.125, blocks=(1, 1, 1, 1))  # fmt: skip
    assert _infer(foreign, str(tmp_path / "o3")) == 2
    err = capsys.readouterr().err
    assert "foreign/checkpoints" in err and "'seam'" in err

    # A workdir of a non-CAM stage.
    affinity = str(tmp_path / "affinity")
    _save_checkpoint(affinity, {**config, "model": {**config["model"], "arch": "affinity"}},
                     "seam", cam_workdir["num_classes"])  # fmt: skip
    assert _infer(affinity, str(tmp_path / "o4")) == 2
    assert "'affinity' network" in capsys.readouterr().err

    assert _infer(cam_workdir["workdir"], str(tmp_path / "o5"), "--config.labels=gt") == 2
    assert "config.labels" in capsys.readouterr().err
    assert _infer(cam_workdir["workdir"], str(tmp_path / "o5"), "--config.scalez=1") == 2
    assert "scalez" in capsys.readouterr().err
