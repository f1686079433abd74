"""mIoU of CAMs for every background threshold in one pass, and of label maps.

The reference (``eval_cam_voc.py``, ``do_python_eval``; ``eval_cam_coco.py`` for COCO) scores a CAM
dict ``{c: (H, W)}`` at background threshold ``t`` by building a ``(K+1, H, W)`` float32 array of
zeros, writing CAM ``c`` into channel ``c + 1``, setting channel 0 to ``t`` and taking the argmax.
``np.argmax`` sends ties to the lowest index, so for ``t >= 0``

    pred_t = 0 (background)            if m <= float32(t)
           = 1 + argmax_c cam_c        otherwise (ties to the lowest class),

with ``m = max_c cam_c`` over the saved classes (the zeros of unsaved classes never beat a
``t >= 0``). ``eval_cam_voc.py --curve`` repeats the whole pass for t = 0.00, 0.01, ..., 0.59.

Here the pixel's ``bucket`` = #{thresholds < m} (``searchsorted``) decides every threshold at
once: the pixel is foreground exactly at thresholds ``i < bucket``. One histogram over
``(bucket, gt, 1 + argmax)`` and two cumulative sums over the bucket axis give the confusion
matrices of all thresholds (:func:`confusion_from_histogram`). Histograms and confusion matrices
are integer counts: they add across images, batches, devices and hosts, and the IoU is computed
once at the end, ``IoU_c = TP_c / (T_c + P_c - TP_c + 1e-10)`` (void label 255 ignored), mIoU the
plain mean over all ``K + 1`` classes (a class absent from the split counts as 0, as in the
reference).

Two implementations of the same counts: NumPy for host-side evaluation of saved predictions
(:func:`threshold_histogram`), and a jittable ``jnp`` one for CAMs on device during training
(:func:`confusion_matrices`).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "COCO_IOU_EPSILON",
    "IGNORE_LABEL",
    "THRESHOLDS",
    "VOC_IOU_EPSILON",
    "confusion_from_histogram",
    "confusion_matrices",
    "fg_max_and_label",
    "iou_per_class",
    "label_confusion",
    "mean_iou",
    "threshold_buckets",
    "threshold_histogram",
]

IGNORE_LABEL = 255
VOC_IOU_EPSILON = 1e-10  # eval_cam_voc.py, in pixels
COCO_IOU_EPSILON = 1e-5  # eval_cam_coco.py: 1e-10 in units of 1e5 pixels

# The reference's sweep, t = i / 100 for i = 0..59, held in float32 as its argmax array holds it.
THRESHOLDS = (np.arange(60) / 100.0).astype(np.float32)


def _check_thresholds(thresholds) -> np.ndarray:
    thresholds = np.asarray(thresholds, np.float32)
    if thresholds.ndim != 1 or thresholds.size == 0:
        raise ValueError(f"thresholds must be a non-empty 1-D array, got shape {thresholds.shape}")
    if np.any(np.diff(thresholds) <= 0) or thresholds[0] < 0 or not np.all(np.isfinite(thresholds)):
        raise ValueError(
            "thresholds must be finite, >= 0 and strictly increasing (the zeros of unsaved "
            f"classes would otherwise compete with the background), got {thresholds.tolist()}"
        )
    return thresholds


def fg_max_and_label(cams: np.ndarray, classes) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel foreground maximum and its label, from the saved classes' CAMs.

    Args:
      cams: ``(k, H, W)``, the CAMs of ``k >= 0`` saved classes (cast to float32, as the
        reference's argmax array).
      classes: ``(k,)`` their foreground indices ``0..K-1``, strictly increasing (so that ties go
        to the lowest class, as ``np.argmax`` over the reference's ``(K+1, H, W)`` array).

    Returns:
      ``m (H, W)`` float32 = ``max_j cams[j]`` (0 where ``k == 0``) and ``label (H, W)`` int32 =
      ``1 + classes[argmax_j cams[j]]`` (0 where ``k == 0``).
    """
    cams = np.asarray(cams, np.float32)
    classes = np.asarray(classes, np.int64)
    if cams.ndim != 3 or classes.shape != (cams.shape[0],):
        raise ValueError(
            f"expected cams (k, H, W) and classes (k,), got {cams.shape} and {classes.shape}"
        )
    if np.any(np.diff(classes) <= 0):
        raise ValueError(f"classes must be strictly increasing, got {classes.tolist()}")
    if cams.shape[0] == 0:
        zeros = np.zeros(cams.shape[1:], np.float32)
        return zeros, zeros.astype(np.int32)
    fg_max = cams[0].copy()
    fg_label = np.full(cams.shape[1:], classes[0] + 1, np.int32)
    for cam, c in zip(cams[1:], classes[1:], strict=True):
        better = cam > fg_max  # strict: a tie keeps the lower class, as np.argmax
        np.copyto(fg_max, cam, where=better)
        fg_label[better] = c + 1
    return fg_max, fg_label


def threshold_buckets(fg_max: np.ndarray, thresholds=THRESHOLDS) -> np.ndarray:
    """``#{i : thresholds[i] < fg_max}`` per pixel: the pixel is foreground at threshold ``i``
    exactly when ``i < bucket`` (ties go to the background). Shape of ``fg_max``, int32."""
    thresholds = _check_thresholds(thresholds)
    fg_max = np.asarray(fg_max, np.float32)
    if not np.array_equal(thresholds, THRESHOLDS):
        return np.searchsorted(thresholds, fg_max, side="left").astype(np.int32)
    # The reference's grid t_i = float32(i / 100): ceil(100 m) is the count up to one float32
    # rounding step; one exact comparison on each side corrects it (5x faster than searchsorted).
    count = thresholds.size
    estimate = np.ceil(np.clip(fg_max * np.float32(100), -1, count)).astype(np.int32)
    np.clip(estimate, 0, count, out=estimate)
    below = np.concatenate([[-np.inf], thresholds]).astype(np.float32)  # below[e] = t_{e-1}
    above = np.concatenate([thresholds, [np.inf]]).astype(np.float32)  # above[e] = t_e
    estimate -= below[estimate] >= fg_max
    estimate += above[estimate] < fg_max
    return np.clip(estimate, 0, count, out=estimate)  # -inf would step below 0


def threshold_histogram(
    fg_max: np.ndarray,
    fg_label: np.ndarray,
    gt: np.ndarray,
    num_classes: int,
    *,
    thresholds=THRESHOLDS,
) -> np.ndarray:
    """Pixel counts over ``(bucket, gt, fg_label)`` for one image; NumPy, host side.

    Args:
      fg_max, fg_label: ``(H, W)``, from :func:`fg_max_and_label`.
      gt: ``(H, W)`` integer labels in ``0..num_classes`` or 255 (void, not counted).
      num_classes: ``K``, the number of foreground classes.
      thresholds: ``(T,)`` increasing background thresholds ``>= 0``.

    Returns:
      ``(T+1, K+1, K+1)`` int64 counts ``hist[b, g, a]`` of the non-void pixels with bucket ``b``
      (:func:`threshold_buckets`), ground truth ``g`` and foreground label ``a``. Histograms add
      across images; :func:`confusion_from_histogram` turns the sum into confusion matrices.

    Raises:
      ValueError: mismatched shapes or a label outside ``0..K`` (and 255 for ``gt``).
    """
    thresholds = _check_thresholds(thresholds)
    gt = np.asarray(gt)
    fg_label = np.asarray(fg_label)
    if fg_max.shape != gt.shape or fg_label.shape != gt.shape:
        raise ValueError(
            f"prediction {fg_max.shape}/{fg_label.shape} and ground truth {gt.shape} differ"
        )
    n = num_classes + 1
    void = gt == IGNORE_LABEL
    _check_labels(gt, num_classes, "ground truth", void)
    _check_labels(fg_label, num_classes, "prediction")
    index = threshold_buckets(fg_max, thresholds)
    index *= n
    index += gt
    index *= n
    index += fg_label
    if void.any():
        index = index[~void]
    counts = np.bincount(index.ravel(), minlength=(thresholds.size + 1) * n * n)
    return counts.reshape(thresholds.size + 1, n, n).astype(np.int64, copy=False)


def label_confusion(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> np.ndarray:
    """``(K+1, K+1)`` int64 confusion ``[gt, pred]`` of a label-map prediction (a random-walk or
    final-model PNG); void (255) ground truth is not counted. Labels outside ``0..K`` raise."""
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ")
    n = num_classes + 1
    void = gt == IGNORE_LABEL
    _check_labels(gt, num_classes, "ground truth", void)
    _check_labels(pred, num_classes, "prediction")
    index = gt.astype(np.int64) * n + pred
    if void.any():
        index = index[~void]
    return np.bincount(index.ravel(), minlength=n * n).reshape(n, n)


def _check_labels(labels: np.ndarray, num_classes: int, what: str, void=None) -> None:
    """ValueError unless every label (but the ``void`` ones) is in ``0..num_classes``."""
    bad = (labels < 0) | (labels > num_classes)
    if void is not None:
        bad &= ~void
    if bad.any():
        raise ValueError(
            f"{what} has class indices {np.unique(labels[bad])[:10].tolist()} outside "
            f"0..{num_classes}" + (" (and 255 = void)" if void is not None else "")
        )


def confusion_from_histogram(hist):
    """``(..., T+1, K+1, K+1)`` bucket histogram -> ``(..., T, K+1, K+1)`` confusion ``[gt, pred]``.

    At threshold ``i`` a pixel of bucket ``b`` is predicted ``a`` if ``b > i`` and background
    otherwise: ``conf[i, g, a] = sum_{b > i} hist[b, g, a]`` (``a >= 1``) and
    ``conf[i, g, 0] = sum_{b <= i} sum_a hist[b, g, a]``. Works on NumPy and ``jnp`` arrays.
    """
    xp = np if isinstance(hist, np.ndarray) else _jnp()
    suffix = xp.flip(xp.cumsum(xp.flip(hist, -3), axis=-3), -3)  # sum over b >= j
    foreground = suffix[..., 1:, :, :]
    background = xp.cumsum(hist.sum(axis=-1), axis=-2)[..., :-1, :]
    pad = [(0, 0)] * (hist.ndim - 1) + [(0, hist.shape[-1] - 1)]
    return foreground + xp.pad(background[..., None], pad)


def iou_per_class(confusion, epsilon: float = VOC_IOU_EPSILON) -> np.ndarray:
    """``(..., K+1, K+1)`` confusion ``[gt, pred]`` -> ``(..., K+1)`` float64
    ``IoU_c = TP_c / (T_c + P_c - TP_c + epsilon)``, counts in pixels.

    ``eval_cam_voc.py`` adds 1e-10 to a pixel count (the default); ``eval_cam_coco.py`` adds 1e-10
    to counts kept in units of 1e5 pixels, i.e. ``COCO_IOU_EPSILON`` = 1e-5 pixels, which moves an
    IoU by about 1e-5 / union (negligible on the real split, visible on tiny test sets).
    """
    confusion = np.asarray(confusion, np.int64)
    tp = np.diagonal(confusion, axis1=-2, axis2=-1)
    union = confusion.sum(axis=-1) + confusion.sum(axis=-2) - tp
    return tp / (union + epsilon)


def mean_iou(confusion, epsilon: float = VOC_IOU_EPSILON) -> np.ndarray:
    """``(..., K+1, K+1)`` -> ``(...)``: the mean of :func:`iou_per_class` over all classes."""
    return np.mean(iou_per_class(confusion, epsilon), axis=-1)


def _jnp():
    import jax.numpy as jnp

    return jnp


def confusion_matrices(cams, gt, valid=None, *, class_present=None, thresholds=THRESHOLDS):
    """Confusion matrices of a batch of CAMs at every background threshold; ``jnp``, jittable.

    The reference's prediction at threshold ``t``: background where ``max_c cam_c <= t``, else
    ``1 + argmax_c cam_c`` (ties to the lowest class); see the module docstring.

    Args:
      cams: ``(N, H, W, K)`` foreground CAMs (cast to float32). Pad images of different sizes to
        one shape and mark the padding invalid.
      gt: ``(N, H, W)`` integer labels ``0..K``; 255 (void) and any other value outside ``0..K``
        are not counted (this function cannot raise on device: check labels on the host).
      valid: optional ``(N, H, W)`` bool, False for pixels to leave out (padding).
      class_present: optional ``(N, K)``, the image labels: channels of absent classes are
        replaced by 0, as the reference's array holds zeros for the classes it did not save.
      thresholds: ``(T,)`` increasing thresholds ``>= 0`` (static; default the reference's 60).

    Returns:
      ``(T, K+1, K+1)`` int32 counts ``[threshold, gt, pred]`` (N·H·W must stay below 2**31).
      Sum them over batches in int64 on the host; ``mean_iou`` gives the curve.
    """
    import jax.numpy as jnp

    thresholds = _check_thresholds(thresholds)
    cams = jnp.asarray(cams, jnp.float32)
    num_classes = cams.shape[-1]
    n = num_classes + 1
    if class_present is not None:
        present = jnp.asarray(class_present) > 0
        cams = jnp.where(present[:, None, None, :], cams, 0.0)
    fg_max = jnp.max(cams, axis=-1)
    fg_label = jnp.argmax(cams, axis=-1).astype(jnp.int32) + 1
    # #{t < fg_max} as T compares, which XLA fuses into the reduction (T = 60 is small).
    bucket = jnp.sum(fg_max[..., None] > jnp.asarray(thresholds), axis=-1, dtype=jnp.int32)
    gt = jnp.asarray(gt).astype(jnp.int32)
    counted = (gt >= 0) & (gt <= num_classes)
    if valid is not None:
        counted = counted & jnp.asarray(valid, bool)
    index = jnp.where(counted, (bucket * n + gt) * n + fg_label, 0)
    hist = jnp.zeros(((thresholds.size + 1) * n * n,), jnp.int32)
    hist = hist.at[index.ravel()].add(counted.ravel().astype(jnp.int32))
    return confusion_from_histogram(hist.reshape(thresholds.size + 1, n, n))
