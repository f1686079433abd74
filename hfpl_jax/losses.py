"""Training losses of SEAM and HFPL (pure ``jax.numpy``, no Flax).

Arrays are NHWC. Every loss returns a scalar in float32 (float64 inputs under x64 stay float64);
bf16/f16 inputs are upcast to float32 before any arithmetic. All functions are jit/vmap/grad safe;
configuration arguments (``mu``, ``sigma``, ``method``, ``num_samples``, ...) are static Python
values.

Losses (reference: ``train_cam_voc.py`` and ``tool/probutils.py`` of arvijj/hfpl):

* :func:`multilabel_soft_margin_loss` -- ``F.multilabel_soft_margin_loss``.
* :func:`importance_sampling_loss` -- HFPL's importance-sampling classification loss (ISL), with
  :func:`importance_sampling_loss_from_indices` (replay given draws) and
  :func:`expected_importance_sampling_loss` (its expectation over the draws, in closed form).
* :func:`feature_similarity_loss` -- HFPL's feature similarity loss (FSL); methods ``dense``,
  ``exact`` (same value, memory linear in H*W) and ``windowed`` (local pairs only, with
  :func:`feature_similarity_window_error_bound`). Implemented in
  :mod:`hfpl_jax.feature_similarity`, re-exported here.
* :func:`equivariant_regularization_loss`, :func:`equivariant_cross_regularization_loss`,
  :func:`adaptive_min_pooling_loss` -- SEAM's ER, ECR and min-pooling losses.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from hfpl_jax._arrays import check_array, compute_dtype, shape_str, static_real
from hfpl_jax.feature_similarity import (
    FSL_METHODS,
    feature_similarity_loss,
    feature_similarity_window_error_bound,
)
from hfpl_jax.pooling import (
    gather_pixels,
    importance_log_weights,
    importance_sample,
    importance_scores,
    max_onehot,
    with_background,
)

__all__ = [
    "FSL_METHODS",
    "adaptive_min_pooling_loss",
    "equivariant_cross_regularization_loss",
    "equivariant_regularization_loss",
    "expected_importance_sampling_loss",
    "feature_similarity_loss",
    "feature_similarity_window_error_bound",
    "importance_sampling_loss",
    "importance_sampling_loss_from_indices",
    "multilabel_soft_margin_loss",
]


# ============================================================================================
# Multi-label soft margin loss
# ============================================================================================


def multilabel_soft_margin_loss(logits, labels):
    """``F.multilabel_soft_margin_loss``: mean binary cross-entropy with logits.

    ``logits (..., C)``; ``labels`` in {0, 1} (soft labels allowed), broadcastable to
    ``logits.shape``. Returns the scalar::

        mean over all elements of  -[y log sigmoid(x) + (1 - y) log sigmoid(-x)]

    (torch sums over the class axis, divides by C and averages the rest: the same mean).
    """
    logits = check_array("logits", logits, layout="(..., C)")
    labels = check_array("labels", labels, layout="broadcastable to logits", floating=False)
    try:
        shape = jnp.broadcast_shapes(logits.shape, labels.shape)
    except ValueError:
        shape = None
    if shape != logits.shape:
        raise ValueError(
            f"labels: expected a shape broadcastable to logits {shape_str(logits.shape)}, "
            f"got {shape_str(labels.shape)}"
        )
    dtype = compute_dtype(logits)
    x = logits.astype(dtype)
    y = labels.astype(dtype)
    per_element = -(y * jax.nn.log_sigmoid(x) + (1 - y) * jax.nn.log_sigmoid(-x))
    return jnp.mean(per_element)


# ============================================================================================
# Importance-sampling loss (train_cam_voc.py; the predecessor's multinomial variant)
# ============================================================================================


def _isl_check_labels(logits, labels, posterior):
    logits = check_array("logits", logits, ndim=4, layout="(N, H, W, C)")
    labels = check_array("labels", labels, ndim=2, layout="(N, C)", floating=False)
    num_classes = logits.shape[-1] - (1 if posterior == "multinomial" else 0)
    if labels.shape != (logits.shape[0], num_classes):
        extra = " (multinomial: logits carry background + C classes)" * (posterior == "multinomial")
        raise ValueError(
            f"labels: expected shape ({logits.shape[0]}, {num_classes}) to match logits "
            f"{shape_str(logits.shape)}{extra}, got {shape_str(labels.shape)}"
        )
    return logits, labels


def importance_sampling_loss(
    key, logits, labels, num_samples: int = 10, *, posterior: str = "binomial"
):
    """HFPL's importance-sampling classification loss (ISL).

    ``logits``: ``(N, H, W, C)`` foreground logits for ``posterior="binomial"`` (HFPL), or
    ``(N, H, W, C+1)`` with background in channel 0 for ``"multinomial"`` (the predecessor,
    arXiv 2203.12459); ``labels``: ``(N, C)`` in {0, 1}. For every (n, c), ``S = num_samples``
    pixels ``i_s ~ q[n, :, c]`` are drawn with replacement (``pooling.importance_sample``) and::

        loss = mean_{n, s, c} bce_with_logits(v[n, i_s, c], labels[n, c])

    where ``v`` is the raw logit (binomial) or the logit of the softmax probability
    (multinomial). Gradients flow into the scored values at the drawn pixels only.
    """
    logits, labels = _isl_check_labels(logits, labels, posterior)
    samples = importance_sample(key, logits, num_samples, posterior=posterior)
    return multilabel_soft_margin_loss(samples, labels[:, None, :])


def importance_sampling_loss_from_indices(logits, labels, indices, *, posterior="binomial"):
    """ISL for given draws: ``indices`` int ``(N, S, C)`` of flattened pixels (``h * W + w``).

    ``mean_{n, s, c} bce_with_logits(v[n, indices[n, s, c], c], labels[n, c])``; replays e.g. the
    reference's ``torch.multinomial`` indices exactly. Shapes as :func:`importance_sampling_loss`.
    """
    logits, labels = _isl_check_labels(logits, labels, posterior)
    samples = gather_pixels(importance_scores(logits, posterior=posterior), indices)
    return multilabel_soft_margin_loss(samples, labels[:, None, :])


def expected_importance_sampling_loss(logits, labels, *, posterior: str = "binomial"):
    """The expectation of :func:`importance_sampling_loss` over the draws, in closed form.

    With ``q[n, i, c]`` the normalised sampling distribution over pixels::

        E[loss] = mean_{n, c} sum_i q[n, i, c] * bce_with_logits(v[n, i, c], labels[n, c])

    (independent of ``num_samples``). Differentiating this is *not* the ISL gradient (q depends
    on the logits here); it is a deterministic check and a low-variance monitor.
    """
    logits, labels = _isl_check_labels(logits, labels, posterior)
    dtype = compute_dtype(logits)
    q = jax.nn.softmax(importance_log_weights(logits, posterior=posterior), axis=1)
    v = importance_scores(logits, posterior=posterior).astype(dtype)
    n, h, w, c = v.shape
    v = v.reshape(n, h * w, c)
    y = labels.astype(dtype)[:, None, :]
    bce = -(y * jax.nn.log_sigmoid(v) + (1 - y) * jax.nn.log_sigmoid(-v))
    return jnp.mean(jnp.sum(q * bce, axis=1))


# ============================================================================================
# SEAM losses: ER, ECR, adaptive min-pooling
# ============================================================================================


def equivariant_regularization_loss(cam_a, cam_b):
    """SEAM's equivariant regularisation: ``mean |cam_a[..., 1:] - cam_b[..., 1:]|``.

    ``cam_a``, ``cam_b``: ``(N, H, W, C+1)``, background in channel 0 (ignored); the mean runs
    over ``N H W C`` (absent classes, zero on both sides, still count).
    """
    cam_a = check_array("cam_a", cam_a, ndim=4, layout="(N, H, W, C+1)")
    cam_b = check_array("cam_b", cam_b, ndim=4, layout="(N, H, W, C+1)")
    if cam_a.shape != cam_b.shape:
        raise ValueError(
            f"cam_b: expected shape {shape_str(cam_a.shape)} (as cam_a), "
            f"got {shape_str(cam_b.shape)}"
        )
    dtype = compute_dtype(cam_a, cam_b)
    return jnp.mean(jnp.abs(cam_a[..., 1:].astype(dtype) - cam_b[..., 1:].astype(dtype)))


def _top_k_sum(values, k: int):
    """Sum of the k largest entries of each row of ``values`` ``(N, M) -> (N,)``."""
    return jnp.sum(jax.lax.top_k(values, k)[0], axis=-1)


def _ecr_top_k(c: int, h: int, w: int, top_fraction: float) -> int:
    """The reference's ``(int)(21*hs*ws*0.2)``: an integer product times a float, truncated."""
    return int(c * h * w * top_fraction)


def equivariant_cross_regularization_loss(cam_rv, cam_other, top_fraction: float = 0.2):
    """SEAM's equivariant cross regularisation with top-k hard-pixel mining.

    ``cam_rv``, ``cam_other``: ``(N, H, W, C+1)`` (max-normalised, label-masked maps of the two
    branches; ``cam_other``'s channel 0 is replaced here). With
    ``T = max_onehot(stop_gradient(with_background(cam_other)))`` (background 1 - max fg; in the
    fg channels only the per-pixel maximum kept) and ``E = |T - cam_rv|`` over all channels::

        k    = int(C_total * H * W * top_fraction)     (C_total = C+1; VOC: 75415 at 134x134)
        loss = sum_n (sum of the k largest entries of E[n]) / (N k)

    Gradient reaches ``cam_rv`` only. ``jax.lax.top_k`` sends each selected entry's gradient to
    one index, like torch.
    """
    cam_rv = check_array("cam_rv", cam_rv, ndim=4, layout="(N, H, W, C+1)")
    cam_other = check_array("cam_other", cam_other, ndim=4, layout="(N, H, W, C+1)")
    if cam_other.shape != cam_rv.shape:
        raise ValueError(
            f"cam_other: expected shape {shape_str(cam_rv.shape)} (as cam_rv), "
            f"got {shape_str(cam_other.shape)}"
        )
    n, h, w, c = cam_rv.shape
    top_fraction = static_real("top_fraction", top_fraction, positive=True)
    k = _ecr_top_k(c, h, w, top_fraction)
    if not 1 <= k <= c * h * w:
        raise ValueError(
            f"top_fraction: k = int({c}*{h}*{w}*{top_fraction}) = {k} must lie in "
            f"[1, {c * h * w}] for cam_rv of shape {shape_str(cam_rv.shape)}"
        )
    dtype = compute_dtype(cam_rv, cam_other)
    target = max_onehot(jax.lax.stop_gradient(with_background(cam_other.astype(dtype))))
    err = jnp.abs(target - cam_rv.astype(dtype)).reshape(n, -1)
    return jnp.sum(_top_k_sum(err, k)) / (n * k)


def adaptive_min_pooling_loss(x):
    """SEAM's adaptive min-pooling loss on label-masked revised CAMs.

    ``x``: ``(N, H, W, C)`` foreground channels (``(cam_rv * label)[..., 1:]``). With
    ``m = max_c x`` per pixel and ``k = H W // 4``::

        loss = sum_n sum (relu of the k smallest values of m[n]) / (k N)
    """
    x = check_array("x", x, ndim=4, layout="(N, H, W, C)")
    n, h, w, _ = x.shape
    k = h * w // 4
    if k < 1:
        raise ValueError(
            f"x: expected H * W >= 4 (k = H*W//4 >= 1), got shape {shape_str(x.shape)}"
        )
    m = jnp.max(x.astype(compute_dtype(x)), axis=-1).reshape(n, -1)
    smallest = -jax.lax.top_k(-m, k)[0]
    return jnp.sum(jax.nn.relu(smallest)) / (k * n)
