"""What a training run shows: TensorBoard events, ``metrics.jsonl``, a progress bar, CAM overlays.

Only process 0 writes (the others get disabled writers). Files in the workdir:

* ``tensorboard/``: scalars ``loss/<term>`` for every loss term (ISL and FSL included),
  ``train/learning_rate``, ``train/images_per_second``, ``eval/<evaluator>/<metric>``; images
  such as ``cam/overlay`` (input, then the max-normalised CAM of each present class blended over
  it; a second row for SEAM's ``cam_rv``).
* ``metrics.jsonl``: one JSON object per logged step, ``{"step", "time", <term>..., "learning_rate",
  "images_per_second"}`` (evaluations: ``{"step", "time", "eval/<evaluator>/<metric>"...}``); each
  line is written whole and flushed. On resume, lines beyond the resumed step (written after the
  last checkpoint of a killed run) are dropped, and TensorBoard events after it are purged, so both
  logs read like one uninterrupted run.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from hfpl_jax import atomic_io
from hfpl_jax.atomic_io import write_json as write_json_atomic  # noqa: F401 (its callers' name)
from hfpl_jax.image_ops import IMAGENET_MEAN, IMAGENET_STD

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def truncate_metrics(path: str, keep_through_step: int) -> None:
    """Drops ``metrics.jsonl`` records with ``step > keep_through_step`` (atomic rewrite)."""
    if not os.path.exists(path):
        return
    kept = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill mid-write
            if record.get("step", 0) <= keep_through_step:
                kept.append(line)
    atomic_io.write_text(path, "".join(line + "\n" for line in kept))


class Accumulator:
    """Means of per-step scalar metrics since the last reset (the reference logs such means)."""

    def __init__(self):
        self._sums: dict[str, float] = {}
        self._counts: dict[str, int] = {}

    def add(self, metrics: Mapping[str, Any]) -> None:
        for name, value in metrics.items():
            self._sums[name] = self._sums.get(name, 0.0) + float(value)
            self._counts[name] = self._counts.get(name, 0) + 1

    def mean_and_reset(self) -> dict[str, float]:
        means = {name: self._sums[name] / self._counts[name] for name in self._sums}
        self._sums, self._counts = {}, {}
        return means


class MetricWriter:
    """TensorBoard (tensorboardX) + ``metrics.jsonl`` in ``workdir``; a no-op when disabled."""

    def __init__(
        self,
        workdir: str,
        *,
        start_step: int = 0,
        enabled: bool = True,
    ):
        self.enabled = enabled
        self.tensorboard_dir = os.path.join(workdir, TENSORBOARD_DIR)
        self.metrics_path = os.path.join(workdir, METRICS_FILE)
        self._writer = None
        self._start_time = time.time()
        if not enabled:
            return
        from tensorboardX import SummaryWriter  # noqa: PLC0415

        truncate_metrics(self.metrics_path, start_step)
        # purge_step drops events of a killed run's steps after the checkpoint we resume from.
        self._writer = SummaryWriter(
            self.tensorboard_dir, purge_step=start_step if start_step > 0 else None
        )

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), "time": time.time()}
        for name, value in scalars.items():
            value = float(value)
            record[name] = value if math.isfinite(value) else str(value)
            tag = _tag(name)
            self._writer.add_scalar(tag, value, step)
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
        self._writer.flush()

    def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
        """``{tag: uint8 (H, W, 3)}`` images (e.g. :func:`cam_overlay_grid`'s) to TensorBoard."""
        if not self.enabled:
            return
        for tag, image in images.items():
            self._writer.add_image(tag, image, step, dataformats="HWC")
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _tag(name: str) -> str:
    """TensorBoard tag of a scalar: ``eval/...`` names keep theirs; ``loss*`` go under ``loss/``,
    the rest under ``train/``."""
    if "/" in name:
        return name
    return f"loss/{name}" if name.startswith("loss") else f"train/{name}"


def denormalize_image(image: np.ndarray) -> np.ndarray:
    """Normalised ``(H, W, 3)`` -> uint8 RGB (``x·std + mean``, ×255, clipped)."""
    rgb = image.astype(np.float32) * np.asarray(IMAGENET_STD, np.float32) + np.asarray(
        IMAGENET_MEAN, np.float32
    )
    return np.clip(rgb * 255.0, 0, 255).astype(np.uint8)


def jet_colormap(values: np.ndarray) -> np.ndarray:
    """``[0, 1]`` values ``(...)`` -> uint8 RGB ``(..., 3)``, the classic "jet" ramp."""
    v = np.clip(values, 0.0, 1.0)[..., None]
    red = np.clip(1.5 - np.abs(4.0 * v - 3.0), 0.0, 1.0)
    green = np.clip(1.5 - np.abs(4.0 * v - 2.0), 0.0, 1.0)
    blue = np.clip(1.5 - np.abs(4.0 * v - 1.0), 0.0, 1.0)
    return (np.concatenate([red, green, blue], axis=-1) * 255).astype(np.uint8)


def _max_normalize(cam: np.ndarray) -> np.ndarray:
    cam = np.maximum(cam, 0.0)
    peak = cam.max()
    return cam / peak if peak > 0 else cam


def cam_overlay_grid(
    image: np.ndarray,
    outputs: Mapping[str, np.ndarray],
    labels: np.ndarray,
    *,
    max_classes: int = 4,
) -> np.ndarray:
    """A uint8 ``(rows·H, (1 + classes)·W, 3)`` grid: per output row (``cam``, then ``cam_rv``),
    the input, then 50/50 blends of the input with the jet-coloured CAM of each present class."""
    rgb = denormalize_image(image)
    present = [int(c) for c in np.flatnonzero(np.asarray(labels) > 0.5)][:max_classes]
    if not present:
        present = [int(np.argmax(np.asarray(outputs["cam"])[0, :, :, 1:].mean(axis=(0, 1))))]
    rows = []
    for name in ("cam", "cam_rv"):
        if name not in outputs:
            continue
        cams = np.asarray(outputs[name])[0]
        tiles = [rgb]
        for cls in present:
            heat = jet_colormap(_max_normalize(cams[..., cls + 1]))
            tiles.append(((rgb.astype(np.uint16) + heat) // 2).astype(np.uint8))
        rows.append(np.concatenate(tiles, axis=1))
    return np.concatenate(rows, axis=0)


class ProgressBar:
    """A tqdm bar with ETA and the current loss; a no-op when disabled."""

    def __init__(self, *, total: int, initial: int = 0, enabled: bool = True, desc: str = ""):
        self._bar = None
        if enabled:
            from tqdm import tqdm  # noqa: PLC0415

            self._bar = tqdm(
                total=total,
                initial=initial,
                desc=desc or None,
                unit="step",
                dynamic_ncols=True,
                mininterval=1.0,
                smoothing=0.1,
            )
        self._position = initial

    def update(self, done: int, loss: float | None = None) -> None:
        if self._bar is None:
            return
        if done > self._position:
            self._bar.update(done - self._position)
            self._position = done
        if loss is not None:
            self._bar.set_postfix(loss=f"{float(loss):.4f}", refresh=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
