"""Golden values for ``tests/evaluation_test.py`` from the official evaluation code.

    PYTHONPATH=. .venv/bin/python scripts/make_golden_evaluation.py --reference /path/to/hfpl \
        --out tests/testdata/golden_evaluation.npz

Needs ``pandas`` and ``scikit-image`` (imported by the reference's scripts) besides the project's
dependencies. Generates predictions and ground truth (seeded), writes them in the reference's
layout into a temporary folder (``<name>.npy`` CAM dicts, ``<name>.png`` label maps and masks) and
runs, unchanged, from the checkout:

- ``eval_cam_voc.do_python_eval`` (npy at t = 0.00..0.59, as ``--curve True``; and png), 21
  classes; ``eval_cam_coco.do_python_eval`` on a small COCO-like set (81 classes, 12-digit names);
- ``contour_fscore.main`` with ``--is_cam --is_seam`` (background 0.25), ``--is_cam
  --no-is_seam`` (background 1 - sum) and ``--no-is_cam`` (label PNGs), over the whole set and
  over each image alone. ``main`` prints the mean F with three decimals only, so its final locals
  (``F`` and the per-class accumulators) are read with a profile hook as it returns.

Rerunning reproduces the fixture bit for bit except ``coco_npy_*``: ``eval_cam_coco.py`` adds
float counts from 8 worker processes in whatever order they get the lock, so its IoUs move by
~1e-14 between runs (the test's tolerance is 1e-9 percentage points).

The fixture stores the inputs (integer CAM codes, CAM = float32(code) / 100, so that values tie
exactly with the thresholds; masks; label maps) and the outputs. The VOC-like set covers the
sizes 375x500, 500x375, 500x500 and 480x640 (tolerance radii 5, 5, 6, 7), small and one-pixel-wide
images, void bands, an empty CAM dict, ties between classes, at zero and at the thresholds, and
negative CAM values.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile

import cv2
import numpy as np
from PIL import Image

VOC_CLASSES = 20
COCO_CLASSES = 80
VOC_SIZES = [
    (375, 500),
    (500, 375),
    (500, 500),
    (480, 640),
    (33, 47),
    (1, 9),
    (9, 1),
    (24, 24),
    (60, 45),
    (40, 30),  # empty CAM dict
    (50, 70),  # one class, a tie patch
]
COCO_SIZES = [(40, 50), (64, 48), (30, 30)]


def _objects(rng, height, width, num_classes, count):
    """GT label map with ``count`` painted ellipses/rectangles and their (class, centre, size)."""
    gt = np.zeros((height, width), np.uint8)
    objects = []
    yy, xx = np.mgrid[:height, :width]
    for _ in range(count):
        c = int(rng.integers(1, num_classes + 1))
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        sy = rng.uniform(0.1, 0.45) * height + 0.5
        sx = rng.uniform(0.1, 0.45) * width + 0.5
        if rng.random() < 0.5:
            mask = ((yy - cy) / sy) ** 2 + ((xx - cx) / sx) ** 2 <= 1
        else:
            mask = (np.abs(yy - cy) <= sy) & (np.abs(xx - cx) <= sx)
        gt[mask] = c
        objects.append((c, cy, cx, sy, sx))
    return gt, objects


def _void_band(gt, rng):
    """VOC-like 255 band along the object outlines (and a few void specks)."""
    kernel = np.ones((3, 3), np.uint8)
    band = np.zeros(gt.shape, bool)
    for c in np.unique(gt):
        if c == 0:
            continue
        mask = (gt == c).astype(np.uint8)
        band |= (cv2.dilate(mask, kernel, iterations=2) > 0) & ~(cv2.erode(mask, kernel) > 0)
    out = gt.copy()
    out[band] = 255
    out[rng.random(gt.shape) < 0.002] = 255
    return out


def _cam_codes(rng, shape, objects, num_classes):
    """Integer CAM codes (k, H, W) in [-3, 100] and their 0-based classes (sorted)."""
    height, width = shape
    yy, xx = np.mgrid[:height, :width]
    classes = {c - 1 for c, *_ in objects}
    if rng.random() < 0.4:  # a class the image does not show
        classes.add(int(rng.integers(num_classes)))
    classes = sorted(classes)
    codes = np.zeros((len(classes), height, width), np.int16)
    for j, k in enumerate(classes):
        blobs = [o for o in objects if o[0] - 1 == k] or [
            (k + 1, rng.uniform(0, height), rng.uniform(0, width), height / 4 + 1, width / 4 + 1)
        ]
        value = np.zeros((height, width))
        for _, cy, cx, sy, sx in blobs:
            cy += rng.normal(0, sy / 4)
            cx += rng.normal(0, sx / 4)
            value = np.maximum(value, np.exp(-(((yy - cy) / sy) ** 2 + ((xx - cx) / sx) ** 2)))
        codes[j] = np.clip(np.round(110 * value * rng.uniform(0.6, 1.0)) - 5, -3, 100)
    return np.asarray(classes, np.int64), codes


def _cam_dict(classes, codes):
    return {int(k): codes[j].astype(np.float32) / np.float32(100) for j, k in enumerate(classes)}


def make_set(rng, sizes, num_classes, prefix, digits=False):
    items = []
    for i, (height, width) in enumerate(sizes):
        name = f"{i + 1:012d}" if digits else f"{prefix}_{i:03d}"
        count = 1 if min(height, width) == 1 else int(rng.integers(1, 4))
        gt, objects = _objects(rng, height, width, num_classes, count)
        if min(height, width) > 8 and i % 3 != 2:
            gt = _void_band(gt, rng)
        classes, codes = _cam_codes(rng, (height, width), objects, num_classes)
        if (height, width) == (40, 30):
            classes, codes = classes[:0], codes[:0]
        if (height, width) == (50, 70):
            classes = np.asarray([3, 11], np.int64)
            codes = np.zeros((2, height, width), np.int16)
            codes[:, 10:30, 10:40] = 40  # a tie between the two classes
            codes[0, 30:45, 5:60] = 25  # exactly the contour background
            codes[1, 0:8, :] = -2
            gt[12:28, 12:38] = 12
            gt[32:44, 8:50] = 4
        label = np.zeros((height, width), np.uint8)
        if classes.size:
            fg_max = (codes.astype(np.float32) / np.float32(100)).max(axis=0)
            label = np.where(fg_max > np.float32(0.3), classes[codes.argmax(axis=0)] + 1, 0)
            label = label.astype(np.uint8)
        if min(height, width) > 20:
            y0, x0 = int(rng.integers(0, height - 10)), int(rng.integers(0, width - 10))
            label[y0 : y0 + 10, x0 : x0 + 10] = int(rng.integers(1, num_classes + 1))
        items.append({"name": name, "gt": gt, "classes": classes, "codes": codes, "label": label})
    return items


def write_folder(items, folder):
    os.makedirs(os.path.join(folder, "cam"), exist_ok=True)
    os.makedirs(os.path.join(folder, "label"), exist_ok=True)
    os.makedirs(os.path.join(folder, "gt"), exist_ok=True)
    for item in items:
        cams = _cam_dict(item["classes"], item["codes"])
        np.save(os.path.join(folder, "cam", item["name"] + ".npy"), cams)
        Image.fromarray(item["label"]).save(os.path.join(folder, "label", item["name"] + ".png"))
        Image.fromarray(item["gt"]).save(os.path.join(folder, "gt", item["name"] + ".png"))
    with open(os.path.join(folder, "list.txt"), "w") as f:
        f.writelines(item["name"] + "\n" for item in items)


def run_contour(module, argv):
    """``contour_fscore.main()`` under ``argv``; returns (F, (4, K) accumulators as counts)."""
    captured = {}

    def profiler(frame, event, arg):
        if event == "return" and frame.f_code is module.main.__code__:
            captured.update(frame.f_locals)

    saved_argv = sys.argv
    sys.argv = ["contour_fscore.py", *argv]
    sys.setprofile(profiler)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            module.main()
    finally:
        sys.setprofile(None)
        sys.argv = saved_argv
    sums = np.array([captured[k] for k in ("fg_matches", "gt_matches", "n_fg", "n_gt")])
    return float(captured["F"]), np.round(sums * 1e5).astype(np.int64)


def contour_modes(folder, num_classes):
    common = ["--gt_path", os.path.join(folder, "gt"), "--num_classes", str(num_classes)]
    cam = ["--pred_path", os.path.join(folder, "cam"), "--is_cam"]
    return {
        "seam": [*cam, "--is_seam", *common],
        "sum": [*cam, "--no-is_seam", *common],
        "png": ["--pred_path", os.path.join(folder, "label"), "--no-is_cam", *common],
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reference", required=True, help="checkout of the official HFPL code")
    parser.add_argument("--out", default="tests/testdata/golden_evaluation.npz")
    args = parser.parse_args()
    sys.path.insert(0, os.path.abspath(args.reference))
    import contour_fscore
    import eval_cam_coco
    import eval_cam_voc

    rng = np.random.default_rng(20240111)
    out = {}
    sets = {
        "voc": (make_set(rng, VOC_SIZES, VOC_CLASSES, "img"), VOC_CLASSES, eval_cam_voc),
        "coco": (
            make_set(rng, COCO_SIZES, COCO_CLASSES, "", digits=True),
            COCO_CLASSES,
            eval_cam_coco,
        ),
    }
    with tempfile.TemporaryDirectory() as tmp:
        for key, (items, num_classes, eval_module) in sets.items():
            folder = os.path.join(tmp, key)
            write_folder(items, folder)
            names = [item["name"] for item in items]
            out[f"{key}_names"] = np.asarray(names)
            for i, item in enumerate(items):
                for field in ("gt", "classes", "codes", "label"):
                    out[f"{key}_{i}_{field}"] = item[field]
            # eval_cam_*.py --curve True: 60 calls of do_python_eval, percentages.
            num_cls = num_classes + 1
            iou = np.zeros((60, num_cls))
            curve = np.zeros(60)
            for t in range(60):
                log = eval_module.do_python_eval(
                    os.path.join(folder, "cam"),
                    os.path.join(folder, "gt"),
                    names,
                    num_cls,
                    "npy",
                    t / 100.0,
                )
                iou[t] = [log[c] for c in eval_module.categories[:num_cls]]
                curve[t] = log["mIoU"]
            out[f"{key}_npy_iou_percent"], out[f"{key}_npy_miou_percent"] = iou, curve
            log = eval_module.do_python_eval(
                os.path.join(folder, "label"), os.path.join(folder, "gt"), names, num_cls, "png"
            )
            out[f"{key}_png_iou_percent"] = np.array(
                [log[c] for c in eval_module.categories[:num_cls]]
            )
            out[f"{key}_png_miou_percent"] = np.float64(log["mIoU"])
            list_path = os.path.join(folder, "list.txt")
            one_path = os.path.join(folder, "one.txt")
            for mode, argv in contour_modes(folder, num_classes).items():
                f, sums = run_contour(contour_fscore, ["--img_list", list_path, *argv])
                out[f"{key}_contour_{mode}_f"] = np.float64(f)
                out[f"{key}_contour_{mode}_counts"] = sums
                per_image = []
                for name in names:
                    with open(one_path, "w") as f_list:
                        f_list.write(name + "\n")
                    per_image.append(
                        run_contour(contour_fscore, ["--img_list", one_path, *argv])[1]
                    )
                out[f"{key}_contour_{mode}_per_image_counts"] = np.stack(per_image)
    np.savez_compressed(args.out, **out)
    print(f"wrote {args.out} ({os.path.getsize(args.out) / 1e3:.0f} kB)")
    for key in sets:
        print(
            f"{key}: best mIoU {out[f'{key}_npy_miou_percent'].max():.3f}% at "
            f"t={out[f'{key}_npy_miou_percent'].argmax() / 100:.2f}; png mIoU "
            f"{float(out[f'{key}_png_miou_percent']):.3f}%; contour F seam "
            f"{100 * float(out[f'{key}_contour_seam_f']):.3f}%, sum "
            f"{100 * float(out[f'{key}_contour_sum_f']):.3f}%, png "
            f"{100 * float(out[f'{key}_contour_png_f']):.3f}%"
        )


if __name__ == "__main__":
    main()
