"""mIoU sweep and contour F: hand-built answers, a direct NumPy sweep, the reference's golden values
(``scripts/make_golden_evaluation.py``), and ``hfpl-jax evaluate`` on small folders."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from train_cam_helpers import TINY_DATA, shapes_dir  # noqa: F401

from hfpl_jax import cli, parallel
from hfpl_jax.evaluation import contour, files, miou, report, scoring
from hfpl_jax.inference import cam_files

GOLDEN = os.path.join(os.path.dirname(__file__), "testdata", "golden_evaluation.npz")


# --------------------------------------------------------------------------------------------------
# Independent references, written from the reference scripts' description


def direct_confusion(cam_dicts, gts, num_classes, thresholds):
    """eval_cam_voc.py per threshold: a (K+1, H, W) float64 array with the CAMs in channels c+1,
    channel 0 = float32(t), argmax (first index on ties), counts over non-void pixels."""
    n = num_classes + 1
    out = np.zeros((len(thresholds), n, n), np.int64)
    for i, t in enumerate(thresholds):
        for cams, gt in zip(cam_dicts, gts, strict=True):
            stack = np.zeros((n, *gt.shape), np.float64)
            for c, cam in cams.items():
                stack[c + 1] = np.float32(cam)
            stack[0] = np.float32(t)
            pred = np.argmax(stack, axis=0)
            valid = gt != 255
            for g, p in zip(gt[valid], pred[valid], strict=True):
                out[i, g, p] += 1
    return out


def random_case(rng, shape, num_classes, present):
    """CAMs quantised to hundredths in [-0.03, 0.7] (exact ties with the thresholds, between
    classes and at zero), a ground truth with void pixels."""
    cams = {
        int(c): (rng.integers(-3, 71, shape) / np.float32(100)).astype(np.float32) for c in present
    }
    for cam in cams.values():
        cam[rng.random(shape) < 0.2] = 0.0
    gt = rng.integers(0, num_classes + 1, shape).astype(np.uint8)
    gt[rng.random(shape) < 0.1] = 255
    return cams, gt


def host_confusion(cam_dicts, gts, num_classes, thresholds=miou.THRESHOLDS):
    hist = 0
    for cams, gt in zip(cam_dicts, gts, strict=True):
        classes = sorted(cams)
        stack = np.stack([cams[c] for c in classes]) if classes else np.zeros((0, *gt.shape))
        fg_max, fg_label = miou.fg_max_and_label(stack, classes)
        hist = hist + miou.threshold_histogram(
            fg_max, fg_label, gt, num_classes, thresholds=thresholds
        )
    return miou.confusion_from_histogram(hist)


# --------------------------------------------------------------------------------------------------
# mIoU


def test_label_map_iou_hand_built():
    gt = np.array([[0, 0, 1, 1], [0, 255, 1, 2]])
    pred = np.array([[0, 1, 1, 1], [0, 0, 2, 2]])
    iou = miou.iou_per_class(miou.label_confusion(pred, gt, 2))
    np.testing.assert_allclose(iou, [2 / 3, 1 / 2, 1 / 2], rtol=1e-9)  # + 1e-10 in the union
    # A class absent from both counts as IoU 0 in the mean, as in the reference.
    assert miou.mean_iou(miou.label_confusion(pred, gt, 3)) == pytest.approx(5 / 12, rel=1e-9)


def test_threshold_ties_go_to_the_background():
    cams = np.array([[[0.0, 0.25, 0.3, 0.7]]], np.float32)
    gt = np.array([[0, 1, 1, 1]])
    fg_max, fg_label = miou.fg_max_and_label(cams, [0])
    conf = miou.confusion_from_histogram(miou.threshold_histogram(fg_max, fg_label, gt, 1))
    iou = miou.iou_per_class(conf)
    np.testing.assert_allclose(iou[0], [1, 1], rtol=1e-9)  # t=0: the zero pixel is background
    np.testing.assert_allclose(iou[25], [1 / 2, 2 / 3], rtol=1e-9)  # 0.25 ties: background
    np.testing.assert_allclose(iou[30], [1 / 3, 1 / 3], rtol=1e-9)  # float32(0.3) ties too
    np.testing.assert_allclose(iou[59], [1 / 3, 1 / 3], rtol=1e-9)


def test_ties_between_classes_go_to_the_lowest_class_and_empty_dicts_to_background():
    cams = np.full((2, 1, 3), 0.5, np.float32)
    fg_max, fg_label = miou.fg_max_and_label(cams, [4, 9])
    np.testing.assert_array_equal(fg_label, [[5, 5, 5]])
    fg_max, fg_label = miou.fg_max_and_label(np.zeros((0, 1, 3), np.float32), [])
    hist = miou.threshold_histogram(fg_max, fg_label, np.array([[0, 1, 255]]), 1)
    conf = miou.confusion_from_histogram(hist)
    np.testing.assert_array_equal(conf[:, :, 0], np.tile([1, 1], (60, 1)))  # gt 0 and 1
    assert conf[:, :, 1].sum() == 0


def test_threshold_buckets_fast_path_equals_searchsorted():
    rng = np.random.default_rng(2)
    t = miou.THRESHOLDS
    values = np.concatenate(
        [
            rng.uniform(-0.05, 0.7, 20000).astype(np.float32),
            rng.integers(-5, 70, 2000) / np.float32(100),
            t,
            np.nextafter(t, np.float32(1)),
            np.nextafter(t, np.float32(-1)),
            np.array([np.inf, -np.inf, -0.0, 1e-45, 1.0, 1e30], np.float32),
        ]
    ).astype(np.float32)
    expected = np.searchsorted(t, values, side="left")
    np.testing.assert_array_equal(miou.threshold_buckets(values), expected)
    # Other thresholds take the general path.
    other = np.array([0.0, 0.125, 0.3], np.float32)
    np.testing.assert_array_equal(
        miou.threshold_buckets(values, other), np.searchsorted(other, values, side="left")
    )


def test_one_pass_sweep_matches_a_direct_evaluation_per_threshold():
    rng = np.random.default_rng(0)
    cam_dicts, gts = [], []
    for shape, present in [((5, 7), [0, 2]), ((3, 4), [1]), ((4, 4), []), ((6, 2), [0, 1, 2])]:
        cams, gt = random_case(rng, shape, 3, present)
        cam_dicts.append(cams)
        gts.append(gt)
    expected = direct_confusion(cam_dicts, gts, 3, miou.THRESHOLDS)
    np.testing.assert_array_equal(host_confusion(cam_dicts, gts, 3), expected)
    # Any increasing thresholds >= 0.
    thresholds = np.array([0.0, 0.05, 0.33, 0.5], np.float32)
    np.testing.assert_array_equal(
        host_confusion(cam_dicts, gts, 3, thresholds),
        direct_confusion(cam_dicts, gts, 3, thresholds),
    )


def test_jnp_confusion_matches_the_direct_evaluation_with_padding_labels_and_sharding():
    rng = np.random.default_rng(1)
    num_classes, n, h, w = 4, 8, 6, 5
    cams = (rng.integers(-3, 71, (n, h, w, num_classes)) / np.float32(100)).astype(np.float32)
    labels = rng.random((n, num_classes)) < 0.5
    gt = rng.integers(0, num_classes + 1, (n, h, w)).astype(np.int32)
    gt[rng.random(gt.shape) < 0.1] = 255
    valid = np.ones((n, h, w), bool)
    valid[:, 4:, :] = False  # padding: the real images are 4 x 5
    cam_dicts = [
        {c: cams[i, :4, :, c] for c in range(num_classes) if labels[i, c]} for i in range(n)
    ]
    expected = direct_confusion(cam_dicts, list(gt[:, :4]), num_classes, miou.THRESHOLDS)

    sharding = parallel.data_sharding(parallel.make_mesh())
    args = [jax.device_put(x, sharding) for x in (cams, gt, valid, labels)]
    fn = jax.jit(lambda c, g, v, p: miou.confusion_matrices(c, g, v, class_present=p))
    got = fn(*args)
    assert got.shape == (60, num_classes + 1, num_classes + 1) and got.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(got), expected)


def test_bad_thresholds_and_labels_raise():
    with pytest.raises(ValueError, match="increasing"):
        miou.threshold_buckets(np.zeros(3, np.float32), [0.2, 0.1])
    with pytest.raises(ValueError, match=">= 0"):
        miou.threshold_buckets(np.zeros(3, np.float32), [-0.1, 0.1])
    with pytest.raises(ValueError, match=r"outside 0..2"):
        miou.label_confusion(np.array([[0, 3]]), np.array([[0, 1]]), 2)
    with pytest.raises(ValueError, match="ground truth has class indices \\[7\\]"):
        miou.label_confusion(np.array([[0, 1]]), np.array([[0, 7]]), 2)


# --------------------------------------------------------------------------------------------------
# Contour F


def test_boundary_map_of_a_rectangle_is_offset_towards_the_origin():
    mask = np.zeros((8, 8), bool)
    mask[2:5, 2:6] = True
    expected = np.zeros((8, 8), bool)
    expected[1, 1:6] = expected[4, 1:6] = expected[1:5, 1] = expected[1:5, 5] = True
    np.testing.assert_array_equal(contour.boundary_map(mask), expected)
    # The image border is no boundary: an object touching the right edge has only its left one.
    mask = np.zeros((8, 8), bool)
    mask[:, 5:] = True
    expected = np.zeros((8, 8), bool)
    expected[:, 4] = True
    np.testing.assert_array_equal(contour.boundary_map(mask), expected)
    np.testing.assert_array_equal(contour.boundary_map(np.ones((1, 1))), [[False]])


def test_boundary_radius_and_disk():
    assert contour.boundary_radius(375, 500) == 5  # 0.008 * 625 is exactly 5.0
    assert contour.boundary_radius(500, 375) == 5
    assert contour.boundary_radius(500, 500) == 6
    assert contour.boundary_radius(480, 640) == 7
    assert contour.boundary_radius(20, 20) == 1
    np.testing.assert_array_equal(
        contour.disk(2),
        [[0, 0, 1, 0, 0], [0, 1, 1, 1, 0], [1, 1, 1, 1, 1], [0, 1, 1, 1, 0], [0, 0, 1, 0, 0]],
    )


def test_contour_f_hand_built():
    # 10 x 40: tolerance 1 pixel. GT class 1 fills columns 0..9: its boundary is column 9.
    gt = np.zeros((10, 40), np.uint8)
    gt[:, :10] = 1
    pred = np.zeros_like(gt)
    pred[:5, :10] = 1  # top half: boundary column 9 rows 0..3 and row 4 columns 0..9
    counts = contour.contour_counts(gt, pred, 1)
    # GT rows 0..5 of column 9 lie within 1 pixel of the prediction's boundary; 6 of the
    # prediction's 14 boundary pixels (column 9 rows 0..4, (4, 8)) lie within 1 of the GT's.
    np.testing.assert_array_equal(counts[:, 0], [6, 6, 10, 14])
    f, per_class = contour.contour_f_score(counts)
    assert f == pytest.approx(0.5, rel=1e-12)  # P = 3/7, R = 3/5
    # Class 1 perfect, class 2 predicted but absent (0), class 3 absent from both (1).
    pred = gt.copy()
    pred[:, 30:] = 2
    f, per_class = contour.contour_f_score(contour.contour_counts(gt, pred, 3))
    np.testing.assert_allclose(per_class, [1, 0, 1])
    assert f == pytest.approx(2 / 3, rel=1e-12)
    # A boundary one pixel off still matches (tolerance 1), two pixels off does not.
    for shift, expected in [(1, 1.0), (2, 0.0)]:
        pred = np.zeros_like(gt)
        pred[:, : 10 + shift] = 1
        assert contour.contour_f_score(contour.contour_counts(gt, pred, 1))[0] == expected
    # Void in the ground truth is background for the contour score: a void band around the
    # object adds a GT boundary at its outer edge.
    gt_void = gt.copy()
    gt_void[:, 10:13] = 255
    counts = contour.contour_counts(gt_void, gt, 1)
    np.testing.assert_array_equal(counts[:, 0], [10, 10, 10, 10])


def test_cam_label_maps():
    fg_max = np.array([[0.25, 0.26, 0.0]], np.float32)
    fg_label = np.array([[3, 3, 2]], np.int32)
    np.testing.assert_array_equal(contour.cam_label_map(fg_max, fg_label), [[0, 3, 0]])
    cams = np.array([[[0.6, 0.3, 0.0]], [[0.2, 0.3, 0.0]]], np.float32)
    background = contour.one_minus_sum_background(cams)
    np.testing.assert_allclose(background, [[0.2, 0.4, 1.0]], rtol=1e-6)
    fg_max, fg_label = miou.fg_max_and_label(cams, [0, 1])
    np.testing.assert_array_equal(contour.cam_label_map(fg_max, fg_label, background), [[1, 0, 0]])


# --------------------------------------------------------------------------------------------------
# Golden values from the reference's eval_cam_voc.py / eval_cam_coco.py / contour_fscore.py


def golden_items(golden, key):
    for i, name in enumerate(golden[f"{key}_names"]):
        classes = golden[f"{key}_{i}_classes"]
        cams = golden[f"{key}_{i}_codes"].astype(np.float32) / np.float32(100)
        yield str(name), golden[f"{key}_{i}_gt"], classes, cams, golden[f"{key}_{i}_label"]


@pytest.fixture(scope="module")
def golden():
    with np.load(GOLDEN) as data:
        return dict(data)


@pytest.mark.parametrize(
    "key, num_classes, epsilon",
    [("voc", 20, miou.VOC_IOU_EPSILON), ("coco", 80, miou.COCO_IOU_EPSILON)],
)
def test_golden_reference_values(golden, key, num_classes, epsilon):
    hist, label_confusion = 0, 0
    pooled = {"seam": 0, "sum": 0, "png": 0}
    for i, (name, gt, classes, cams, label) in enumerate(golden_items(golden, key)):
        prediction = files.Prediction(name, classes=classes, cams=cams)
        scores = {
            "seam": scoring.score_image(prediction, gt, num_classes),
            "sum": scoring.score_image(
                prediction, gt, num_classes, contour_background="one-minus-sum"
            ),
            "png": scoring.score_image(files.Prediction(name, label=label), gt, num_classes),
        }
        hist = hist + scores["seam"].histogram
        label_confusion = label_confusion + scores["png"].confusion
        for mode, score in scores.items():
            per_image = golden[f"{key}_contour_{mode}_per_image_counts"][i]
            np.testing.assert_array_equal(score.contour, per_image, err_msg=f"{mode} {name}")
            pooled[mode] = pooled[mode] + score.contour
    # Percentages from float64 counts: the only differences are summation-order roundings.
    iou = miou.iou_per_class(miou.confusion_from_histogram(hist), epsilon)
    np.testing.assert_allclose(100 * iou, golden[f"{key}_npy_iou_percent"], rtol=0, atol=1e-9)
    curve = 100 * np.mean(iou, axis=-1)
    np.testing.assert_allclose(curve, golden[f"{key}_npy_miou_percent"], rtol=0, atol=1e-9)
    iou = miou.iou_per_class(label_confusion, epsilon)
    np.testing.assert_allclose(100 * iou, golden[f"{key}_png_iou_percent"], rtol=0, atol=1e-9)
    for mode, counts in pooled.items():
        np.testing.assert_array_equal(counts, golden[f"{key}_contour_{mode}_counts"])
        f, _ = contour.contour_f_score(counts)
        assert f == pytest.approx(float(golden[f"{key}_contour_{mode}_f"]), abs=1e-12)


def test_golden_fixture_covers_the_cases_it_claims(golden):
    shapes = [gt.shape for _, gt, *_ in golden_items(golden, "voc")]
    radii = {contour.boundary_radius(*s) for s in shapes}
    assert {5, 6, 7} <= radii and (1, 9) in shapes and (9, 1) in shapes
    assert any(classes.size == 0 for _, _, classes, _, _ in golden_items(golden, "voc"))
    assert any((gt == 255).any() for _, gt, *_ in golden_items(golden, "voc"))
    codes = np.concatenate([golden[f"voc_{i}_codes"].ravel() for i in range(len(shapes))])
    assert (codes < 0).any() and (codes == 0).any() and (codes == 25).any()


# --------------------------------------------------------------------------------------------------
# hfpl-jax evaluate


def write_reference_layout(golden, root, key="voc", count=None):
    """The golden inputs as the reference's files: cam/<name>.npy, label/<name>.png, gt/."""
    for sub in ("cam", "label", "gt", "npz", "images"):
        os.makedirs(root / sub, exist_ok=True)
    names = []
    for name, gt, classes, cams, label in list(golden_items(golden, key))[:count]:
        np.save(root / "cam" / f"{name}.npy", {int(c): cams[j] for j, c in enumerate(classes)})
        write_npz(root / "npz", name, classes, cams, 20)
        Image.fromarray(label).save(root / "label" / f"{name}.png")
        Image.fromarray(gt).save(root / "gt" / f"{name}.png")
        image = np.stack([gt, gt // 2, 255 - gt], axis=-1).astype(np.uint8)
        Image.fromarray(image).save(root / "images" / f"{name}.jpg")
        names.append(name)
    return names


def write_npz(directory, name, classes, cams, num_classes):
    """An ``hfpl-jax infer-cam`` output file (no CRF marginals)."""
    record = cam_files.CamRecord(
        classes=classes,
        cams=cams,
        labels=np.isin(np.arange(num_classes), classes).astype(np.float32),
        scores=np.zeros(num_classes, np.float32),
        crf_alphas=np.zeros(0, np.float32),
        crf=np.zeros((0, len(classes) + 1, *cams.shape[1:]), np.float32),
    )
    cam_files.write_outputs(str(directory), name, record, ("npz",))


def run_cli(*args):
    return cli.main(["evaluate", *map(str, args)])


def test_evaluate_cli_reference_formats(golden, tmp_path, capsys):
    names = write_reference_layout(golden, tmp_path)
    # The list in the VOC pair format, as voc12/train_aug.txt.
    with open(tmp_path / "list.txt", "w") as f:
        f.writelines(f"/JPEGImages/{n}.jpg /SegmentationClass/{n}.png\n" for n in names)
    common = ["--gt-dir", tmp_path / "gt", "--list", tmp_path / "list.txt", "--num-classes", 20]
    out = tmp_path / "out_npy"
    assert (
        run_cli(
            "--pred-dir",
            tmp_path / "cam",
            "--out",
            out,
            *common,
            "--image-dir",
            tmp_path / "images",
            "--class-names",
            "voc2012_wsss",
        )
        == 0
    )
    assert "contour F" in capsys.readouterr().out
    with open(out / "metrics.json") as f:
        metrics = json.load(f)
    curve = golden["voc_npy_miou_percent"] / 100
    np.testing.assert_allclose(metrics["miou_curve"], curve, rtol=0, atol=1e-11)
    assert metrics["miou"] == pytest.approx(curve.max(), abs=1e-11)
    assert metrics["best_threshold"] == pytest.approx(np.argmax(curve) / 100)
    assert metrics["fixed_threshold"] == 0.25
    assert metrics["miou_at_fixed_threshold"] == pytest.approx(curve[25], abs=1e-11)
    best_iou = golden["voc_npy_iou_percent"][np.argmax(curve)] / 100
    np.testing.assert_allclose(metrics["per_class_iou"], best_iou, rtol=0, atol=1e-11)
    assert metrics["contour_f"] == pytest.approx(float(golden["voc_contour_seam_f"]), abs=1e-12)
    assert metrics["class_names"][:2] == ["background", "aeroplane"]
    assert metrics["prediction_format"] == "npy" and metrics["num_images"] == len(names)
    for path in ("summary.md", "miou_curve.png", "counts.npz", f"overlays/{names[0]}.png"):
        assert os.path.getsize(out / path) > 0, path
    with Image.open(out / f"overlays/{names[0]}.png") as overlay:
        assert overlay.size[1] == 240 and overlay.size[0] > 3 * 240  # four panels
    assert "mIoU at the best threshold" in (out / "summary.md").read_text()

    # Label maps (the random walk's PNGs), and hfpl-jax's own .npz CAMs.
    out = tmp_path / "out_png"
    assert run_cli("--pred-dir", tmp_path / "label", "--out", out, *common) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["miou"] == pytest.approx(float(golden["voc_png_miou_percent"]) / 100, abs=1e-11)
    assert metrics["miou_curve"] is None and metrics["best_threshold"] is None
    assert metrics["contour_f"] == pytest.approx(float(golden["voc_contour_png_f"]), abs=1e-12)
    out = tmp_path / "out_npz"
    assert (
        run_cli(
            "--pred-dir",
            tmp_path / "npz",
            "--out",
            out,
            *common,
            "--contour-background",
            "one-minus-sum",
            "--workers",
            1,
        )
        == 0
    )
    metrics = json.loads((out / "metrics.json").read_text())
    np.testing.assert_allclose(metrics["miou_curve"], curve, rtol=0, atol=1e-11)
    assert metrics["contour_f"] == pytest.approx(float(golden["voc_contour_sum_f"]), abs=1e-12)


def test_evaluation_counts_add_across_shards(golden, tmp_path):
    names = write_reference_layout(golden, tmp_path)
    folder = files.PredictionFolder(tmp_path / "cam")
    gt = files.FolderGroundTruth(tmp_path / "gt")
    whole = scoring.evaluate(folder, gt, names, 20).counts
    halves = [scoring.evaluate(folder, gt, part, 20).counts for part in (names[:5], names[5:])]
    total = halves[0] + halves[1]
    np.testing.assert_array_equal(total.confusion, whole.confusion)
    np.testing.assert_array_equal(total.contour, whole.contour)
    assert total.num_images == whole.num_images == len(names)


def _expect_error(capsys, *args, match):
    assert run_cli(*args) == 2
    err = capsys.readouterr().err
    assert match in err, err


def test_evaluate_cli_bad_input_names_the_file(golden, tmp_path, capsys):
    names = write_reference_layout(golden, tmp_path, count=3)
    with open(tmp_path / "list.txt", "w") as f:
        f.writelines(n + "\n" for n in names)
    common = [
        "--gt-dir",
        tmp_path / "gt",
        "--list",
        tmp_path / "list.txt",
        "--num-classes",
        20,
        "--out",
        tmp_path / "out",
    ]
    cam = tmp_path / "cam"
    # A prediction of the wrong shape.
    np.save(cam / f"{names[1]}.npy", {0: np.zeros((7, 7), np.float32)})
    _expect_error(capsys, "--pred-dir", cam, *common, match=f"{names[1]}.npy")
    # A class index out of range.
    np.save(cam / f"{names[1]}.npy", {20: np.zeros((500, 375), np.float32)})
    _expect_error(capsys, "--pred-dir", cam, *common, match="outside 0..19")
    # A corrupt file.
    (cam / f"{names[1]}.npy").write_bytes(b"\x93NUMPY garbage")
    _expect_error(capsys, "--pred-dir", cam, *common, match=f"{names[1]}.npy: not a readable")
    # A prediction missing.
    os.remove(cam / f"{names[1]}.npy")
    _expect_error(capsys, "--pred-dir", cam, *common, match=f"{names[1]}.npy' does not exist")
    # A name missing from the ground truth.
    np.save(cam / f"{names[1]}.npy", {})
    os.remove(tmp_path / "gt" / f"{names[2]}.png")
    _expect_error(capsys, "--pred-dir", cam, *common, match=f"{names[2]}.png' does not exist")
    # A ground-truth label outside 0..K (and not void).
    Image.fromarray(np.full((9, 9), 33, np.uint8)).save(tmp_path / "gt" / f"{names[2]}.png")
    np.save(cam / f"{names[2]}.npy", {})
    _expect_error(capsys, "--pred-dir", cam, *common, match="ground truth has class indices [33]")
    # A label map of the wrong shape; a threshold outside the sweep.
    _expect_error(capsys, "--pred-dir", tmp_path / "label", *common, match="is (9, 9)")
    _expect_error(
        capsys,
        "--pred-dir",
        cam,
        *common,
        "--fixed-threshold",
        "0.255",
        match="--fixed-threshold 0.255",
    )


def test_read_name_list_formats(tmp_path):
    path = tmp_path / "list.txt"
    path.write_text("2007_000032\n\n2007_000039 \n")
    assert files.read_name_list(path) == ["2007_000032", "2007_000039"]
    path.write_text("/JPEGImages/2007_000032.jpg /SegmentationClassAug/2007_000032.png\n")
    assert files.read_name_list(path) == ["2007_000032"]
    path.write_text("a\na\n")
    with pytest.raises(ValueError, match="repeats"):
        files.read_name_list(path)


def test_report_pictures(golden):
    thresholds = miou.THRESHOLDS
    curve = golden["voc_npy_miou_percent"] / 100
    image = report.plot_curve(thresholds, curve, best=0.2, fixed=0.25)
    assert image.size == (640, 400)
    pixels = np.asarray(image)
    assert (pixels == [220, 40, 40]).all(axis=-1).any()  # the best point is drawn
    palette = report.label_palette()
    assert palette[1].tolist() == [128, 0, 0] and palette[15].tolist() == [192, 128, 128]


@pytest.mark.slow  # builds a tiny TFDS dataset (TensorFlow)
def test_evaluate_cli_on_a_built_dataset_split(shapes_dir, tmp_path):  # noqa: F811
    """Ground truth and images from a built split; hfpl-jax .npz CAMs made from its masks."""
    from hfpl_jax import data

    source = data.open_split("hfpl_shapes", shapes_dir, "val", **TINY_DATA)
    num_classes = data.num_classes("hfpl_shapes", shapes_dir, **TINY_DATA)
    rng = np.random.default_rng(3)
    cam_dicts, gts, names = [], [], []
    for i in range(len(source)):
        example = source[i]
        classes = np.flatnonzero(example["labels"] > 0)
        mask = example["mask"]
        cams = np.stack([(mask == c + 1) * rng.uniform(0.2, 0.5) for c in classes])
        cams = (cams + rng.uniform(0, 0.2, cams.shape)).astype(np.float32)
        write_npz(tmp_path, example["name"], classes, cams, num_classes)
        cam_dicts.append({int(c): cams[j] for j, c in enumerate(classes)})
        gts.append(mask)
        names.append(example["name"])
    options = [f"--dataset-option={k}={v}" for k, v in TINY_DATA.items()]
    out = tmp_path / "out"
    assert (
        run_cli(
            "--pred-dir",
            tmp_path,
            "--dataset",
            "hfpl_shapes",
            "--data-dir",
            shapes_dir,
            "--split",
            "val",
            *options,
            "--out",
            out,
            "--overlays",
            2,
        )
        == 0
    )
    metrics = json.loads((out / "metrics.json").read_text())
    expected = miou.mean_iou(direct_confusion(cam_dicts, gts, num_classes, miou.THRESHOLDS))
    np.testing.assert_allclose(metrics["miou_curve"], expected, rtol=0, atol=1e-12)
    assert metrics["num_images"] == len(names) and metrics["prediction_format"] == "npz"
    assert metrics["class_names"][1:] == list(data.class_names("hfpl_shapes"))
    with Image.open(out / "overlays" / f"{names[0]}.png") as overlay:
        first_panel = np.asarray(overlay)[:, :10]
    assert np.ptp(first_panel) > 0  # the dataset's image, not the grey stand-in
    # A --num-classes that contradicts the dataset is an error naming it.
    assert (
        run_cli(
            "--pred-dir",
            tmp_path,
            "--dataset",
            "hfpl_shapes",
            "--data-dir",
            shapes_dir,
            *options,
            "--num-classes",
            3,
            "--out",
            out,
        )
        == 2
    )
