"""CAM quality of a CAM-training workdir: mIoU of its CAMs against the exact masks, per threshold.

    .venv/bin/python scripts/benchmark_cam_quality.py --workdir workdirs/cam_shapes \
        [--split val] [--scales 1.0] [--max-images 500] [--json cam_quality.json]

A quick check of what a run learned (and of how hard a dataset is: on ``hfpl_shapes`` the masks
are exact, so a perfect CAM would score 1.0), until the inference and evaluation stages arrive.
It follows the reference's CAM inference (spec §4) and evaluation (§5) on one process:

- for every scale s and its flip (``data.transforms.msf_cam_inputs``: PIL bicubic, normalised),
  the network's map (``cam_rv`` for SEAM, as the reference's inference, and ``cam`` too), its
  foreground channels resized to the original size (bilinear, align_corners=False), times the
  image labels, flipped back; ``sum_cam`` = the sum over the inputs;
- per class: ``sum_cam[sum_cam < 0] = 0``; ``norm = (sum_cam - min - 1e-5) / (max - min + 1e-5)``
  with values below ``min + 1e-5`` first set to 0;
- prediction at background threshold t: ``argmax([t, norm_1..norm_K])`` (ties to the lower
  index; absent classes are 0), for t = 0.00, 0.01, ..., 0.59; IoU_c = TP / (T + P - TP + 1e-10)
  accumulated over the split (void 255 excluded), mIoU over the K + 1 classes.

Printed: mIoU at every tenth threshold, the best threshold and its per-class IoU, for each map.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

THRESHOLDS = np.arange(60) / 100.0


def normalise_cam_sum(sum_cam: np.ndarray) -> np.ndarray:
    """§4's per-class normalisation of the summed maps ``(K, H, W)`` (float32)."""
    sum_cam = np.where(sum_cam < 0, 0, sum_cam).astype(np.float32)
    cam_max = sum_cam.max(axis=(1, 2), keepdims=True)
    cam_min = sum_cam.min(axis=(1, 2), keepdims=True)
    sum_cam = np.where(sum_cam < cam_min + 1e-5, 0, sum_cam)
    return (sum_cam - cam_min - 1e-5) / (cam_max - cam_min + 1e-5)


def confusion_per_threshold(norm: np.ndarray, labels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``(len(THRESHOLDS), K+1, K+1)`` counts [gt, pred]; ``norm (K, H, W)`` with absent classes
    set to 0 (as the reference's 21-channel array of saved classes), ``mask (H, W)`` with 255
    void."""
    num_classes = norm.shape[0] + 1
    fg = np.where(labels[:, None, None] > 0, norm, 0.0)
    best = fg.max(axis=0)
    arg = fg.argmax(axis=0) + 1
    valid = mask != 255
    gt = mask[valid].astype(np.int64)
    best, arg = best[valid], arg[valid]
    out = np.empty((len(THRESHOLDS), num_classes, num_classes), np.int64)
    for i, t in enumerate(THRESHOLDS.astype(np.float32)):
        pred = np.where(best > t, arg, 0)
        out[i] = np.bincount(gt * num_classes + pred, minlength=num_classes**2).reshape(
            num_classes, num_classes
        )
    return out


def iou_from_confusion(confusion: np.ndarray) -> np.ndarray:
    """Per-class IoU ``TP / (T + P - TP + 1e-10)`` from ``[..., gt, pred]`` counts."""
    tp = np.diagonal(confusion, axis1=-2, axis2=-1).astype(np.float64)
    gt_total = confusion.sum(axis=-1)
    pred_total = confusion.sum(axis=-2)
    return tp / (gt_total + pred_total - tp + 1e-10)


def evaluate(workdir: str, split: str, scales: tuple[float, ...], max_images: int | None):
    import jax
    from PIL import Image

    from hfpl_jax import checkpoint, data
    from hfpl_jax.data import transforms
    from hfpl_jax.image_ops import resize_bilinear
    from hfpl_jax.train import cam_config, model_setup

    config = cam_config.restore_config(checkpoint.load_config_json(workdir))
    variables = checkpoint.load_variables(workdir)
    data_dir = data.resolve_data_dir(config.input.data_dir)
    kwargs = dict(config.input.builder_kwargs)
    source = data.open_split(config.input.dataset, data_dir, split, **kwargs)
    num_classes = data.num_classes(config.input.dataset, data_dir, **kwargs)
    model = model_setup.build_model(config, num_classes)

    @jax.jit  # one compilation per input size
    def maps(variables, image):
        outputs = model.apply(variables, image[None], train=False)
        return {k: outputs[k][0, ..., 1:] for k in ("cam", "cam_rv") if k in outputs}

    resize = jax.jit(
        lambda x, size: resize_bilinear(x[None], size, align_corners=False)[0],
        static_argnums=1,
    )
    count = len(source) if max_images is None else min(max_images, len(source))
    confusion = {}
    start = time.perf_counter()
    for index in range(count):
        example = source[index]
        image, mask, labels = example["image"], example["mask"], example["labels"]
        height, width = mask.shape
        sums = {}
        inputs = transforms.msf_cam_inputs(Image.fromarray(image), scales)
        for i, x in enumerate(inputs):
            for key, value in maps(variables, x).items():
                value = np.asarray(resize(value, (height, width))) * labels
                if i % 2 == 1:
                    value = value[:, ::-1]
                sums[key] = sums.get(key, 0.0) + value
        for key, value in sums.items():
            norm = normalise_cam_sum(np.transpose(value, (2, 0, 1)))
            counts = confusion_per_threshold(norm, labels, mask)
            confusion[key] = confusion.get(key, 0) + counts
    seconds = time.perf_counter() - start
    results = {}
    for key, counts in confusion.items():
        iou = iou_from_confusion(counts)
        miou = iou.mean(axis=-1)
        best = int(np.argmax(miou))
        results[key] = {
            "miou": miou.tolist(),
            "best_threshold": float(THRESHOLDS[best]),
            "best_miou": float(miou[best]),
            "best_iou_per_class": iou[best].tolist(),
        }
    return {
        "workdir": os.path.abspath(workdir),
        "dataset": config.input.dataset,
        "split": split,
        "images": count,
        "scales": list(scales),
        "class_names": ["background", *data.class_names(config.input.dataset)],
        "seconds": seconds,
        "maps": results,
        "machine": {
            "platform": platform.platform(),
            "jax": jax.__version__,
            "device": str(jax.devices()[0].device_kind),
        },  # fmt: skip
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True, help="a train-cam workdir with checkpoints")
    parser.add_argument("--split", default="val")
    parser.add_argument(
        "--scales",
        default="1.0",
        help="comma-separated inference scales (the reference: 0.5,1,1.5,2)",
    )
    parser.add_argument("--max-images", type=int, default=None)
    parser.add_argument("--json", default="cam_quality.json")
    args = parser.parse_args()
    try:
        scales = tuple(float(s) for s in args.scales.split(","))
    except ValueError:
        parser.error(f"--scales: expected comma-separated numbers, found {args.scales!r}")
    result = evaluate(args.workdir, args.split, scales, args.max_images)
    names = result["class_names"]
    print(f"\nCAM quality: {result['dataset']} {result['split']}, {result['images']} images, "
          f"scales {result['scales']} + flips ({result['seconds']:.0f} s)")  # fmt: skip
    for key, r in result["maps"].items():
        sweep = ", ".join(f"{THRESHOLDS[i]:.1f}: {r['miou'][i]:.3f}" for i in range(0, 60, 10))
        print(f"{key:>7}  mIoU by threshold  {sweep}")
        print(f"{'':>7}  best {r['best_miou']:.3f} at t = {r['best_threshold']:.2f}; per class: "
              + ", ".join(f"{n} {v:.2f}" for n, v in zip(names, r["best_iou_per_class"],
                                                          strict=True)))  # fmt: skip
    from hfpl_jax.train.observability import write_json_atomic

    write_json_atomic(args.json, result)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
