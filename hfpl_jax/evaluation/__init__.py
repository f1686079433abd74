"""Evaluation of CAMs and pseudo-labels as the reference measures them.

- :mod:`~hfpl_jax.evaluation.miou`: confusion matrices for every background threshold in one
  pass (NumPy on the host, ``jnp`` on device), IoU and mIoU (``eval_cam_voc.py``).
- :mod:`~hfpl_jax.evaluation.contour`: the contour F-score pooled per class
  (``contour_fscore.py``).
- :mod:`~hfpl_jax.evaluation.files`: predictions (hfpl-jax ``.npz``, the reference's ``.npy``
  dicts, label PNGs) and ground truth (PNG folder + list, or a built dataset split).
- :mod:`~hfpl_jax.evaluation.scoring`: one pass over a folder, additive counts.
- :mod:`~hfpl_jax.evaluation.report`: ``metrics.json``, ``summary.md``, plot and overlays.
- :mod:`~hfpl_jax.evaluation.cli`: ``hfpl-jax evaluate``.
"""

from hfpl_jax.evaluation.contour import contour_counts, contour_f_score
from hfpl_jax.evaluation.miou import (
    THRESHOLDS,
    confusion_from_histogram,
    confusion_matrices,
    iou_per_class,
    mean_iou,
)
from hfpl_jax.evaluation.scoring import EvaluationCounts, EvaluationResult, evaluate, score_image

__all__ = [
    "THRESHOLDS",
    "EvaluationCounts",
    "EvaluationResult",
    "confusion_from_histogram",
    "confusion_matrices",
    "contour_counts",
    "contour_f_score",
    "evaluate",
    "iou_per_class",
    "mean_iou",
    "score_image",
]
