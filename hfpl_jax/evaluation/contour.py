"""Contour F-score of label maps, pooled per class over a dataset, as ``contour_fscore.py``.

The reference (``contour_fscore.py``, with ``f_matches`` and ``_seg2bmap`` from the DAVIS 2017
toolkit) scores each foreground class ``c = 1..K`` of each image on the binary masks
``gt == c`` and ``pred == c``, after mapping void (255) ground truth to background:

1. Boundary maps (:func:`boundary_map`): a pixel is a boundary pixel when it differs from its
   east, south or south-east neighbour (zero outside the image); in the last row only the east
   neighbour counts, in the last column only the south one, and the bottom-right pixel never.
   Boundaries therefore sit half a pixel towards the origin, and the image border is not a
   boundary by itself.
2. Tolerance ``r = ceil(0.008 * sqrt(H^2 + W^2))`` pixels (:func:`boundary_radius`: 5 for
   375x500, 6 for 500x500, 7 for 480x640), recomputed per image; each boundary map is dilated
   with the disk ``x^2 + y^2 <= r^2`` (:func:`disk`; OpenCV ``dilate``).
3. Four counts per class (:func:`contour_counts`): ground-truth boundary pixels within ``r`` of a
   predicted one, predicted boundary pixels within ``r`` of a ground-truth one, and the two
   boundary totals. They are summed over the dataset per class (no per-image averaging).

Per class, precision = matched predicted / predicted and recall = matched GT / GT boundary
pixels; ``F_c = 2PR / (P + R)`` (0 when both are 0). A class with no boundary in either the
ground truth or the predictions scores ``F_c = 1``; one with boundaries on one side only scores
0. The reported score is ``sum_c F_c / K`` over all ``K`` foreground classes
(:func:`contour_f_score`), so on a small subset the absent classes' ones dominate.

(The reference passes the ground truth as DAVIS's "foreground" and the prediction as its "gt",
so its "precision" is the recall; F is symmetric, so the score is unaffected.)

For CAMs the reference first makes a label map with :func:`cam_label_map`: background where the
best CAM does not exceed 0.25 (``--is_seam``, the constant used for SEAM CAMs), or, without
``--is_seam``, where it does not exceed ``1 - sum_c cam_c``.
"""

from __future__ import annotations

import functools
import math

import cv2
import numpy as np

from hfpl_jax.evaluation.miou import IGNORE_LABEL

__all__ = [
    "BOUNDARY_FRACTION",
    "SEAM_BACKGROUND",
    "boundary_map",
    "boundary_radius",
    "cam_label_map",
    "contour_counts",
    "contour_f_score",
    "disk",
    "one_minus_sum_background",
]

BOUNDARY_FRACTION = 0.008  # of the image diagonal (DAVIS's bound_th)
SEAM_BACKGROUND = np.float32(0.25)  # contour_fscore.py --is_seam


def boundary_map(mask: np.ndarray) -> np.ndarray:
    """``(H, W)`` mask (nonzero = object) -> ``(H, W)`` bool one-pixel boundary map.

    ``b = (m != m_e) | (m != m_s) | (m != m_se)`` with ``m_e[y, x] = m[y, x+1]``,
    ``m_s[y, x] = m[y+1, x]``, ``m_se[y, x] = m[y+1, x+1]`` (False outside the image); then the
    last row is ``m != m_e`` alone, the last column ``m != m_s`` alone, and ``b[-1, -1] = 0``.
    """
    m = np.asarray(mask).astype(bool)
    if m.ndim != 2:
        raise ValueError(f"expected an (H, W) mask, got shape {m.shape}")
    b = np.zeros_like(m)
    # Interior (all but the last row and column): any of the three neighbours differs.
    inner = m[:-1, :-1]
    b[:-1, :-1] = (inner != m[:-1, 1:]) | (inner != m[1:, :-1]) | (inner != m[1:, 1:])
    # Last row: east neighbour only (the east of the last column is outside, i.e. False).
    b[-1, :-1] = m[-1, :-1] != m[-1, 1:]
    # Last column: south neighbour only (the south of the last row is outside, i.e. False).
    b[:-1, -1] = m[:-1, -1] != m[1:, -1]
    b[-1, -1] = False
    return b


def boundary_radius(height: int, width: int, fraction: float = BOUNDARY_FRACTION) -> int:
    """``ceil(fraction * ||(H, W)||)`` pixels, the matching tolerance (computed as the reference
    does, ``np.linalg.norm`` in float64, so that 375x500 gives exactly 5)."""
    return int(math.ceil(fraction * float(np.linalg.norm((height, width)))))


@functools.lru_cache(maxsize=32)
def disk(radius: int) -> np.ndarray:
    """``(2r+1, 2r+1)`` uint8 structuring element ``x^2 + y^2 <= r^2`` (skimage's ``disk``)."""
    offsets = np.arange(-radius, radius + 1)
    kernel = (offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius**2).astype(np.uint8)
    kernel.flags.writeable = False
    return kernel


def _dilate(boundary: np.ndarray, radius: int) -> np.ndarray:
    # OpenCV's default border for dilation ignores pixels outside the image, as the reference.
    return cv2.dilate(boundary.view(np.uint8), disk(radius)).view(bool)


def _class_counts(gt_mask: np.ndarray, pred_mask: np.ndarray, radius: int) -> tuple[int, ...]:
    gt_boundary = boundary_map(gt_mask)
    pred_boundary = boundary_map(pred_mask)
    n_gt = int(np.count_nonzero(gt_boundary))
    n_pred = int(np.count_nonzero(pred_boundary))
    if n_gt == 0 or n_pred == 0:
        return 0, 0, n_gt, n_pred
    # Every boundary pixel lies in the union of the two boxes, so dilating inside that box gives
    # the same values there (OpenCV ignores the outside) at a fraction of the cost.
    rows = np.flatnonzero(gt_boundary.any(axis=1) | pred_boundary.any(axis=1))
    cols = np.flatnonzero(gt_boundary.any(axis=0) | pred_boundary.any(axis=0))
    box = np.s_[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    gt_boundary, pred_boundary = gt_boundary[box], pred_boundary[box]
    gt_matched = int(np.count_nonzero(gt_boundary & _dilate(pred_boundary, radius)))
    pred_matched = int(np.count_nonzero(pred_boundary & _dilate(gt_boundary, radius)))
    return gt_matched, pred_matched, n_gt, n_pred


def contour_counts(gt: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Per-class boundary counts of one image.

    Args:
      gt: ``(H, W)`` ground-truth labels ``0..K`` or 255 (void, treated as background).
      pred: ``(H, W)`` predicted labels ``0..K``.
      num_classes: ``K``, the number of foreground classes.

    Returns:
      ``(4, K)`` int64, rows ``[gt_matched, pred_matched, gt_boundary, pred_boundary]`` for the
      classes ``1..K``: GT boundary pixels within the tolerance disk of a predicted boundary
      pixel of the same class, the converse, and the two totals. Sum over images, then
      :func:`contour_f_score`.

    Raises:
      ValueError: different shapes, or labels outside ``0..K`` (255 allowed in ``gt``).
    """
    gt, pred = np.asarray(gt), np.asarray(pred)
    if gt.shape != pred.shape or gt.ndim != 2:
        raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ")
    gt = np.where(gt == IGNORE_LABEL, 0, gt)
    counts = np.zeros((4, num_classes), np.int64)
    present = _labels_present(gt, num_classes, "ground truth") | _labels_present(
        pred, num_classes, "prediction"
    )
    radius = boundary_radius(*gt.shape)
    for c in np.flatnonzero(present[1:]) + 1:
        counts[:, c - 1] = _class_counts(gt == c, pred == c, radius)
    return counts


def _labels_present(labels: np.ndarray, num_classes: int, what: str) -> np.ndarray:
    """``(K+1,)`` bool: which of ``0..K`` occur (ValueError for anything else)."""
    low, high = (labels.min(), labels.max()) if labels.size else (0, 0)
    if low < 0 or high > num_classes:
        bad = np.unique(labels[(labels < 0) | (labels > num_classes)])
        raise ValueError(f"{what} has labels {bad[:10].tolist()} outside 0..{num_classes}")
    return np.bincount(labels.ravel(), minlength=num_classes + 1) > 0


def contour_f_score(counts) -> tuple[float, np.ndarray]:
    """``(4, K)`` summed :func:`contour_counts` -> (mean F over the ``K`` classes, ``(K,)`` F).

    ``P = pred_matched / pred_boundary``, ``R = gt_matched / gt_boundary``, ``F = 2PR / (P + R)``
    (0 if ``P + R = 0``); ``F = 1`` for a class without boundaries on either side, 0 for one
    with boundaries on one side only.
    """
    gt_matched, pred_matched, n_gt, n_pred = np.asarray(counts, np.int64)
    f = np.zeros(n_gt.shape, np.float64)
    for c in range(f.size):
        if n_gt[c] == 0 and n_pred[c] == 0:
            f[c] = 1.0
        elif n_gt[c] > 0 and n_pred[c] > 0:
            precision = pred_matched[c] / n_pred[c]
            recall = gt_matched[c] / n_gt[c]
            if precision + recall > 0:
                f[c] = 2 * precision * recall / (precision + recall)
    total = 0.0
    for value in f:  # sequential, as the reference's loop
        total += value
    return total / max(f.size, 1), f


def one_minus_sum_background(cams: np.ndarray) -> np.ndarray:
    """``(k, H, W)`` -> ``(H, W)`` float32 ``1 - sum_c cam_c``, summed in float32 in class order
    (``contour_fscore.py`` without ``--is_seam``)."""
    cams = np.asarray(cams, np.float32)
    total = np.zeros(cams.shape[1:], np.float32)
    for cam in cams:
        total += cam
    return np.float32(1) - total


def cam_label_map(fg_max: np.ndarray, fg_label: np.ndarray, background=SEAM_BACKGROUND):
    """``(H, W)`` label map ``argmax([background, cams])`` with ties to the background:
    ``fg_label`` where ``fg_max > background`` (float32), else 0 (dtype of ``fg_label``).

    ``fg_max``, ``fg_label`` from :func:`hfpl_jax.evaluation.miou.fg_max_and_label`;
    ``background`` a scalar (0.25 for SEAM CAMs) or an ``(H, W)`` map
    (:func:`one_minus_sum_background`).
    """
    background = np.asarray(background, np.float32)
    fg_label = np.asarray(fg_label)
    return np.where(np.asarray(fg_max, np.float32) > background, fg_label, 0).astype(fg_label.dtype)
