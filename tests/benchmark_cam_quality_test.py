"""scripts/benchmark_cam_quality.py's evaluation maths against direct NumPy (spec §4, §5)."""

import importlib.util
import os

import numpy as np

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(__file__)), "scripts",
                      "benchmark_cam_quality.py")  # fmt: skip
spec = importlib.util.spec_from_file_location("benchmark_cam_quality", SCRIPT)
quality = importlib.util.module_from_spec(spec)
spec.loader.exec_module(quality)


def test_normalisation_follows_the_reference_rules():
    rng = np.random.default_rng(0)
    sum_cam = rng.normal(size=(3, 5, 4)).astype(np.float32) + np.array([0, 2, -5])[:, None, None]
    got = quality.normalise_cam_sum(sum_cam)
    for c in range(3):
        x = np.maximum(sum_cam[c].astype(np.float64), 0)
        lo, hi = x.min(), x.max()
        x[x < lo + 1e-5] = 0
        np.testing.assert_allclose(got[c], (x - lo - 1e-5) / (hi - lo + 1e-5), rtol=1e-5,
                                   atol=1e-6)  # fmt: skip


def test_confusion_is_the_argmax_with_a_constant_background_channel():
    rng = np.random.default_rng(1)
    k, h, w = 4, 6, 7
    norm = rng.uniform(-0.1, 1, size=(k, h, w)).astype(np.float32)
    norm[1, 0, :3] = norm[2, 0, :3] = 0.5  # ties go to the lower class
    labels = np.array([1, 1, 0, 1], np.float32)
    mask = rng.integers(0, k + 1, size=(h, w)).astype(np.uint8)
    mask[2, 2] = 255
    got = quality.confusion_per_threshold(norm, labels, mask)
    for i, t in enumerate(quality.THRESHOLDS):
        stacked = np.concatenate(
            [np.full((1, h, w), t, np.float32), np.where(labels[:, None, None] > 0, norm, 0)]
        )
        pred = stacked.argmax(0)  # first index on ties, as the reference's np.argmax
        want = np.zeros((k + 1, k + 1), np.int64)
        for g, p in zip(mask.ravel(), pred.ravel(), strict=True):
            if g != 255:
                want[g, p] += 1
        np.testing.assert_array_equal(got[i], want)
    iou = quality.iou_from_confusion(got[30])
    c = got[30]
    tp = np.diag(c)
    np.testing.assert_allclose(iou, tp / (c.sum(1) + c.sum(0) - tp + 1e-10))
