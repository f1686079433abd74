"""What ``hfpl-jax evaluate`` writes: ``metrics.json``, ``summary.md``, a plot, overlays, counts.

All files are written to a temporary name in the output folder and renamed, so a reader never
sees a half-written file and an interrupted run leaves the previous report intact.

Metrics (fractions in [0, 1]; the reference prints percentages):

- ``miou``, ``best_threshold``, ``per_class_iou``: the best point of the background-threshold
  sweep (the first maximum), i.e. chosen with the ground truth, as the paper reports;
- ``miou_at_fixed_threshold``, ``fixed_threshold``, ``per_class_iou_at_fixed_threshold``: at a
  threshold chosen without ground truth (default 0.25; see ``docs/evaluation.md``);
- ``miou_curve`` over ``thresholds``; ``contour_f`` and ``contour_f_per_class``.

For label-map predictions there is no sweep: ``miou`` is the label map's and the threshold
fields are null.
"""

from __future__ import annotations

import io
import json
import math
import os
import tempfile

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from hfpl_jax.evaluation import contour, miou
from hfpl_jax.evaluation.scoring import EvaluationResult, Overlay

__all__ = [
    "DEFAULT_FIXED_THRESHOLD",
    "check_fixed_threshold",
    "label_palette",
    "overlay_image",
    "plot_curve",
    "summarize",
    "summary_markdown",
    "write_report",
]

# The threshold chosen without ground truth: the constant contour_fscore.py uses to turn SEAM
# CAMs into label maps (--is_seam). See docs/evaluation.md for why and how far it lands.
DEFAULT_FIXED_THRESHOLD = 0.25
_VOID_COLOUR = (224, 224, 192)  # VOC's colour for 255


def _write_atomic(path: str, data: bytes) -> None:
    # TODO(atomic_io): replace with hfpl_jax.atomic_io once it lands on main.
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp_", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def check_fixed_threshold(thresholds: np.ndarray, value: float) -> int:
    """The index of ``value`` among ``thresholds`` (float32 equality); ValueError if absent."""
    matches = np.flatnonzero(thresholds == np.float32(value))
    if matches.size != 1:
        raise ValueError(
            f"--fixed-threshold {value} is not one of the sweep's thresholds "
            f"{[round(float(t), 6) for t in thresholds]}"
        )
    return int(matches[0])


def summarize(
    result: EvaluationResult,
    *,
    fixed_threshold: float = DEFAULT_FIXED_THRESHOLD,
    class_names=None,
    iou_epsilon: float = miou.VOC_IOU_EPSILON,
) -> dict:
    """The ``metrics.json`` dict of an evaluation (see the module docstring).

    ``class_names``: the ``K`` foreground names (``background`` is prepended), or None.
    ``iou_epsilon``: see :func:`hfpl_jax.evaluation.miou.iou_per_class`.
    """
    counts = result.counts
    num_classes = result.num_classes
    iou = miou.iou_per_class(counts.confusion, iou_epsilon)  # (T, K+1)
    curve = np.mean(iou, axis=-1)
    contour_mean, contour_per_class = contour.contour_f_score(counts.contour)
    names = None
    if class_names is not None:
        if len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
        names = ["background", *class_names]
    metrics = {
        "num_images": int(counts.num_images),
        "num_classes": int(num_classes),
        "class_names": names,
        "prediction_format": result.prediction_format,
        "contour_f": float(contour_mean),
        "contour_f_per_class": [float(f) for f in contour_per_class],
        "contour_background": (
            result.contour_background
            if isinstance(result.contour_background, str)
            else float(result.contour_background)
        ),
    }
    if result.thresholds is None:
        metrics.update(
            miou=float(curve[0]),
            per_class_iou=[float(v) for v in iou[0]],
            best_threshold=None,
            thresholds=None,
            miou_curve=None,
            fixed_threshold=None,
            miou_at_fixed_threshold=None,
            per_class_iou_at_fixed_threshold=None,
        )
        return metrics
    thresholds = np.asarray(result.thresholds, np.float32)
    best = int(np.argmax(curve))
    fixed = check_fixed_threshold(thresholds, fixed_threshold)
    metrics.update(
        miou=float(curve[best]),
        best_threshold=_nominal(thresholds[best]),
        per_class_iou=[float(v) for v in iou[best]],
        thresholds=[_nominal(t) for t in thresholds],
        miou_curve=[float(v) for v in curve],
        fixed_threshold=_nominal(thresholds[fixed]),
        miou_at_fixed_threshold=float(curve[fixed]),
        per_class_iou_at_fixed_threshold=[float(v) for v in iou[fixed]],
    )
    return metrics


def _nominal(threshold) -> float:
    """float32 0.07 -> 0.07 (the value the user typed, not 0.07000000029802322)."""
    return round(float(threshold), 6)


def summary_markdown(metrics: dict, *, plot: str | None = None, overlays=()) -> str:
    """A Markdown page of ``metrics`` (percentages, as the reference prints them)."""
    lines = ["# Evaluation", ""]
    lines.append(
        f"{metrics['num_images']} images, {metrics['num_classes']} foreground classes, "
        f"predictions: {metrics['prediction_format']}."
    )
    lines.append("")
    lines.append("| metric | value |")
    lines.append("|---|---|")
    if metrics["best_threshold"] is None:
        lines.append(f"| mIoU | {100 * metrics['miou']:.3f}% |")
    else:
        lines.append(
            f"| mIoU at the best threshold ({metrics['best_threshold']:.2f}, chosen with the "
            f"ground truth) | {100 * metrics['miou']:.3f}% |"
        )
        lines.append(
            f"| mIoU at the fixed threshold ({metrics['fixed_threshold']:.2f}, chosen without "
            f"it) | {100 * metrics['miou_at_fixed_threshold']:.3f}% |"
        )
    background = metrics["contour_background"]
    how = f"background {background}" if not isinstance(background, str) else background
    lines.append(f"| contour F ({how}) | {100 * metrics['contour_f']:.3f}% |")
    lines.append("")
    names = metrics["class_names"] or [f"class {i}" for i in range(metrics["num_classes"] + 1)]
    header = "| class | IoU |"
    if metrics["best_threshold"] is not None:
        header += " IoU at fixed |"
    header += " contour F |"
    lines.append(header)
    lines.append("|---" * (header.count("|") - 1) + "|")
    for c, name in enumerate(names):
        row = f"| {name} | {100 * metrics['per_class_iou'][c]:.2f} |"
        if metrics["best_threshold"] is not None:
            row += f" {100 * metrics['per_class_iou_at_fixed_threshold'][c]:.2f} |"
        row += " - |" if c == 0 else f" {100 * metrics['contour_f_per_class'][c - 1]:.2f} |"
        lines.append(row)
    if metrics["miou_curve"] is not None:
        lines += ["", "mIoU against the background threshold:", ""]
        ticks = " | ".join(f"{t:.2f}" for t in metrics["thresholds"][::5])
        curve = " | ".join(f"{100 * v:.2f}" for v in metrics["miou_curve"][::5])
        lines.append(f"| threshold | {ticks} |")
        lines.append("|---" * (len(metrics["thresholds"][::5]) + 1) + "|")
        lines.append(f"| mIoU (%) | {curve} |")
    if plot:
        lines += ["", f"![mIoU against threshold]({plot})"]
    for path in overlays:
        lines += ["", f"![overlay]({path})"]
    lines.append("")
    return "\n".join(lines)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def plot_curve(
    thresholds, curve, *, best: float | None = None, fixed: float | None = None
) -> Image.Image:
    """A 640x400 RGB line plot of mIoU (%) against the background threshold, with the best
    point (red) and the fixed threshold (blue) marked. PIL only."""
    thresholds = np.asarray(thresholds, np.float64)
    values = 100 * np.asarray(curve, np.float64)
    width, height = 640, 400
    left, right, top, bottom = 70, 20, 30, 50
    low = math.floor(values.min() / 5) * 5
    high = max(math.ceil(values.max() / 5) * 5, low + 5)
    t_low, t_high = 0.0, max(0.6, float(thresholds.max()))
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font = _font(13)

    def xy(t, v):
        x = left + (t - t_low) / (t_high - t_low) * (width - left - right)
        y = height - bottom - (v - low) / (high - low) * (height - top - bottom)
        return x, y

    for tick in np.arange(0, t_high + 1e-9, 0.1):
        x, _ = xy(tick, low)
        draw.line([(x, top), (x, height - bottom)], fill=(230, 230, 230))
        draw.text((x - 10, height - bottom + 6), f"{tick:.1f}", fill="black", font=font)
    step = 5 if high - low <= 50 else 10
    for tick in range(int(low), int(high) + 1, step):
        _, y = xy(t_low, tick)
        draw.line([(left, y), (width - right, y)], fill=(230, 230, 230))
        draw.text((left - 30, y - 7), f"{tick}", fill="black", font=font)
    draw.rectangle([left, top, width - right, height - bottom], outline="black")
    draw.text((width // 2 - 80, height - 22), "background threshold", fill="black", font=font)
    draw.text((8, 8), "mIoU (%)", fill="black", font=font)
    if fixed is not None:
        x, _ = xy(fixed, low)
        for y in range(top, height - bottom, 8):
            draw.line([(x, y), (x, min(y + 4, height - bottom))], fill=(40, 90, 220), width=2)
        draw.text((x + 4, top + 4), f"fixed {fixed:.2f}", fill=(40, 90, 220), font=font)
    draw.line([xy(t, v) for t, v in zip(thresholds, values, strict=True)], fill="black", width=2)
    if best is not None:
        v = values[int(np.argmin(np.abs(thresholds - best)))]
        x, y = xy(best, v)
        draw.ellipse([x - 5, y - 5, x + 5, y + 5], fill=(220, 40, 40))
        draw.text((x + 7, y - 18), f"best {best:.2f}: {v:.2f}%", fill=(220, 40, 40), font=font)
    return image


def label_palette(num_labels: int = 256) -> np.ndarray:
    """``(num_labels, 3)`` uint8 colours: the PASCAL VOC colour map (bit-interleaved label
    index), with 255 (void) in VOC's cream."""
    palette = np.zeros((256, 3), np.uint8)
    for label in range(256):
        value, r, g, b = label, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= (value & 1) << shift
            g |= ((value >> 1) & 1) << shift
            b |= ((value >> 2) & 1) << shift
            value >>= 3
        palette[label] = (r, g, b)
    palette[255] = _VOID_COLOUR
    return palette[:num_labels]


def _heat(values: np.ndarray) -> np.ndarray:
    """[0, 1] -> uint8 RGB "jet" ramp."""
    v = np.clip(values, 0.0, 1.0)[..., None]
    rgb = np.clip(1.5 - np.abs(4.0 * v - np.array([3.0, 2.0, 1.0])), 0.0, 1.0)
    return (255 * rgb).astype(np.uint8)


def overlay_image(
    overlay: Overlay, *, threshold: float | None = None, panel_height: int = 240
) -> Image.Image:
    """One row of panels: image | CAM heat map | pseudo-label | ground truth.

    The heat map is ``fg_max`` (the best class's CAM) in a jet ramp blended over the image; the
    pseudo-label is the CAMs' label map at ``threshold`` (or the predicted label map); labels use
    :func:`label_palette`. A missing image is a grey panel; label maps have no heat-map panel.
    """
    gt = np.asarray(overlay.gt)
    palette = label_palette()
    image = overlay.image
    if image is None:
        image = np.full((*gt.shape, 3), 128, np.uint8)
    panels = [image]
    if overlay.fg_max is not None:
        heat = _heat(overlay.fg_max)
        panels.append(((heat.astype(np.uint16) + image) // 2).astype(np.uint8))
        label = contour.cam_label_map(overlay.fg_max, overlay.fg_label, threshold)
    else:
        label = overlay.label
    panels.append(palette[np.clip(label, 0, 255).astype(np.uint8)])
    panels.append(palette[gt.astype(np.uint8)])
    scale = panel_height / gt.shape[0]
    width = max(1, round(gt.shape[1] * scale))
    resized = []
    for i, panel in enumerate(panels):
        resample = Image.BILINEAR if i < len(panels) - 2 else Image.NEAREST
        resized.append(Image.fromarray(panel).resize((width, panel_height), resample))
    row = Image.new("RGB", (len(resized) * (width + 4) - 4, panel_height), "white")
    for i, panel in enumerate(resized):
        row.paste(panel, (i * (width + 4), 0))
    return row


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_report(
    out_dir: str,
    result: EvaluationResult,
    *,
    fixed_threshold: float = DEFAULT_FIXED_THRESHOLD,
    class_names=None,
    iou_epsilon: float = miou.VOC_IOU_EPSILON,
    extra: dict | None = None,
) -> dict:
    """Writes ``metrics.json``, ``summary.md``, ``counts.npz`` (the additive counts),
    ``miou_curve.png`` (CAMs only) and ``overlays/<name>.png``; returns the metrics dict.
    ``extra`` entries (e.g. the inputs) are added to ``metrics.json``."""
    metrics = summarize(
        result, fixed_threshold=fixed_threshold, class_names=class_names, iou_epsilon=iou_epsilon
    )
    metrics.update(extra or {})
    os.makedirs(out_dir, exist_ok=True)
    plot = None
    if metrics["miou_curve"] is not None:
        plot = "miou_curve.png"
        image = plot_curve(
            metrics["thresholds"],
            metrics["miou_curve"],
            best=metrics["best_threshold"],
            fixed=metrics["fixed_threshold"],
        )
        _write_atomic(os.path.join(out_dir, plot), _png_bytes(image))
    overlay_paths = []
    threshold = metrics["fixed_threshold"]
    for overlay in result.overlays:
        path = os.path.join("overlays", f"{overlay.name}.png")
        picture = overlay_image(overlay, threshold=threshold)
        _write_atomic(os.path.join(out_dir, path), _png_bytes(picture))
        overlay_paths.append(path)
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer,
        confusion=result.counts.confusion,
        contour=result.counts.contour,
        num_images=np.int64(result.counts.num_images),
        thresholds=np.zeros((0,), np.float32) if result.thresholds is None else result.thresholds,
    )
    _write_atomic(os.path.join(out_dir, "counts.npz"), buffer.getvalue())
    text = summary_markdown(metrics, plot=plot, overlays=overlay_paths)
    _write_atomic(os.path.join(out_dir, "summary.md"), text.encode())
    payload = json.dumps(metrics, indent=2, sort_keys=True) + "\n"
    _write_atomic(os.path.join(out_dir, "metrics.json"), payload.encode())
    return metrics
