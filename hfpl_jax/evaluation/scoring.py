"""Scoring a folder of predictions against ground truth: mIoU per threshold and contour F.

One pass over the images (threads; file decoding, OpenCV and most NumPy work release the GIL)
accumulates integer counts (:class:`EvaluationCounts`): the per-threshold confusion matrices of
:mod:`hfpl_jax.evaluation.miou` and the per-class boundary counts of
:mod:`hfpl_jax.evaluation.contour`. Counts add, so shards evaluated on different hosts combine
with ``+`` before the metrics are computed (:mod:`hfpl_jax.evaluation.report`).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
from collections.abc import Sequence

import numpy as np
import tqdm

from hfpl_jax.evaluation import contour, miou
from hfpl_jax.evaluation.files import Prediction, PredictionFolder

__all__ = [
    "EvaluationCounts",
    "EvaluationResult",
    "ImageScore",
    "Overlay",
    "evaluate",
    "score_image",
]


@dataclasses.dataclass
class EvaluationCounts:
    """Additive counts of a set of images.

    ``confusion``: ``(T, K+1, K+1)`` int64 ``[threshold, gt, pred]`` pixel counts (``T = 1`` for
    label-map predictions). ``contour``: ``(4, K)`` int64 boundary counts
    (:func:`hfpl_jax.evaluation.contour.contour_counts`). ``num_images``: how many were scored.
    """

    confusion: np.ndarray
    contour: np.ndarray
    num_images: int = 0

    def __add__(self, other: EvaluationCounts) -> EvaluationCounts:
        if self.confusion.shape != other.confusion.shape:
            raise ValueError(
                f"cannot add counts of shapes {self.confusion.shape} and {other.confusion.shape}"
            )
        return EvaluationCounts(
            self.confusion + other.confusion,
            self.contour + other.contour,
            self.num_images + other.num_images,
        )


@dataclasses.dataclass
class Overlay:
    """What an overlay picture of one image needs: the image (None when unavailable), the
    ground truth, and either the CAMs' ``fg_max``/``fg_label`` or a predicted ``label`` map."""

    name: str
    image: np.ndarray | None
    gt: np.ndarray
    fg_max: np.ndarray | None = None
    fg_label: np.ndarray | None = None
    label: np.ndarray | None = None


@dataclasses.dataclass
class EvaluationResult:
    """Counts plus how they were made. ``thresholds`` is None for label-map predictions."""

    counts: EvaluationCounts
    num_classes: int
    thresholds: np.ndarray | None
    prediction_format: str
    contour_background: float | str
    overlays: list[Overlay]


@dataclasses.dataclass
class ImageScore:
    """One image's counts: ``histogram`` ``(T+1, K+1, K+1)`` for CAMs
    (:func:`hfpl_jax.evaluation.miou.threshold_histogram`) or ``confusion`` ``(K+1, K+1)`` for a
    label map; ``contour`` ``(4, K)``; and the maps an overlay draws."""

    contour: np.ndarray
    histogram: np.ndarray | None = None
    confusion: np.ndarray | None = None
    fg_max: np.ndarray | None = None
    fg_label: np.ndarray | None = None


def score_image(
    prediction: Prediction,
    gt: np.ndarray,
    num_classes: int,
    *,
    thresholds=miou.THRESHOLDS,
    contour_background: float | str = contour.SEAM_BACKGROUND,
    gt_path: str = "ground truth",
) -> ImageScore:
    """Counts of one image (see :class:`ImageScore`).

    CAM predictions are scored at every threshold for mIoU; their contour F label map is
    ``argmax([background, cams])`` with ``contour_background`` a constant (0.25, the reference's
    ``--is_seam``) or ``"one-minus-sum"`` (``1 - sum_c cam_c``, without ``--is_seam``).

    Raises:
      ValueError: naming the prediction and ground-truth files, for a shape that differs from
        the ground truth's or a class index outside ``0..K`` (255 allowed in the ground truth).
    """
    where = f"{prediction.path} (ground truth {gt_path})"
    try:
        gt = np.asarray(gt)
        if prediction.is_cam:
            classes, cams = prediction.classes, prediction.cams
            if classes.size and (classes.min() < 0 or classes.max() >= num_classes):
                raise ValueError(
                    f"CAM class indices {classes.tolist()} outside 0..{num_classes - 1} "
                    f"(--num-classes {num_classes})"
                )
            if classes.size and cams.shape[1:] != gt.shape:
                raise ValueError(f"CAMs are {cams.shape[1:]} but the ground truth is {gt.shape}")
            if not classes.size:
                cams = np.zeros((0, *gt.shape), np.float32)
            fg_max, fg_label = miou.fg_max_and_label(cams, classes)
            histogram = miou.threshold_histogram(
                fg_max, fg_label, gt, num_classes, thresholds=thresholds
            )
            if isinstance(contour_background, str):
                if contour_background != "one-minus-sum":
                    raise ValueError(
                        "contour background must be a number or 'one-minus-sum', got "
                        f"{contour_background!r}"
                    )
                background = contour.one_minus_sum_background(cams)
            else:
                background = contour_background
            pred = contour.cam_label_map(fg_max, fg_label, background)
            counts = contour.contour_counts(gt, pred, num_classes)
            return ImageScore(counts, histogram=histogram, fg_max=fg_max, fg_label=fg_label)
        label = prediction.label
        if label.shape != gt.shape:
            raise ValueError(f"the label map is {label.shape} but the ground truth is {gt.shape}")
        confusion = miou.label_confusion(label, gt, num_classes)
        return ImageScore(contour.contour_counts(gt, label, num_classes), confusion=confusion)
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from error


def evaluate(
    predictions: PredictionFolder,
    ground_truth,
    names: Sequence[str],
    num_classes: int,
    *,
    thresholds=miou.THRESHOLDS,
    contour_background: float | str = contour.SEAM_BACKGROUND,
    overlay_names: Sequence[str] = (),
    workers: int | None = None,
    progress: bool = False,
) -> EvaluationResult:
    """Scores the predictions of ``names`` against ``ground_truth``.

    Args:
      predictions: the prediction folder (its format fixed by the first name).
      ground_truth: an object with ``mask(name)``, ``image(name)`` and ``path(name)``
        (:class:`~hfpl_jax.evaluation.files.FolderGroundTruth`,
        :class:`~hfpl_jax.evaluation.files.DatasetGroundTruth`).
      names: the images to score; each must have a prediction and a ground truth.
      num_classes: ``K`` foreground classes (labels ``0..K``).
      thresholds: the background thresholds of the CAM sweep.
      contour_background: see :func:`score_image`.
      overlay_names: images whose maps are kept for overlay pictures.
      workers: threads (default: the CPU count, at most 8).
      progress: show a progress bar (tqdm, on stderr).

    Raises:
      FileNotFoundError / ValueError: naming the file of the first image that fails.
    """
    names = list(names)
    if not names:
        raise ValueError("no image to evaluate")
    if num_classes < 1:
        raise ValueError(f"--num-classes must be >= 1, got {num_classes}")
    prediction_format = predictions.resolve_format(names[0])
    is_cam = prediction_format != "png"
    thresholds = miou.THRESHOLDS if thresholds is None else np.asarray(thresholds, np.float32)
    n = num_classes + 1
    keep = set(overlay_names)
    workers = workers or min(8, os.cpu_count() or 1)
    workers = max(1, min(workers, len(names)))

    bar = tqdm.tqdm(total=len(names), unit="image", disable=not progress, leave=False)

    def run(shard: list[str]):
        histogram = np.zeros(((thresholds.size + 1) if is_cam else 1, n, n), np.int64)
        counts = np.zeros((4, num_classes), np.int64)
        overlays = {}
        for name in shard:
            gt = ground_truth.mask(name)
            prediction = predictions.load(name)
            score = score_image(
                prediction,
                gt,
                num_classes,
                thresholds=thresholds,
                contour_background=contour_background,
                gt_path=ground_truth.path(name),
            )
            histogram += score.histogram if is_cam else score.confusion
            counts += score.contour
            bar.update(1)
            if name in keep:
                overlays[name] = Overlay(
                    name,
                    ground_truth.image(name),
                    gt,
                    fg_max=score.fg_max,
                    fg_label=score.fg_label,
                    label=prediction.label,
                )
        return histogram, counts, overlays

    shards = [names[i::workers] for i in range(workers)]
    with bar:
        if workers == 1:
            results = [run(shards[0])]
        else:
            with concurrent.futures.ThreadPoolExecutor(workers) as pool:
                results = list(pool.map(run, shards))
    histogram = sum(r[0] for r in results)
    confusion = miou.confusion_from_histogram(histogram) if is_cam else histogram
    counts = EvaluationCounts(confusion, sum(r[1] for r in results), len(names))
    found = {}
    for r in results:
        found.update(r[2])
    return EvaluationResult(
        counts=counts,
        num_classes=num_classes,
        thresholds=thresholds if is_cam else None,
        prediction_format=prediction_format,
        contour_background=contour_background if is_cam else "label map",
        overlays=[found[name] for name in overlay_names if name in found],
    )
