"""Pooling and normalisation of class activation maps (pure ``jax.numpy``, no Flax).

Every array is NHWC: ``(N, H, W, C)``. Functions are jit/vmap/grad safe. Arithmetic runs in at
least float32 (bf16/f16 inputs are upcast) and array outputs keep the input dtype.

Contents:

* :func:`global_average_pool` -- the spatial mean used as the SEAM image score.
* :func:`max_norm`, :func:`max_onehot`, :func:`with_background` -- the CAM post-processing of the
  reference training loop (``tool/visualization.max_norm``, ``max_onehot`` and the in-place
  ``cam[:, 0] = 1 - max(cam[:, 1:])`` of ``train_cam_voc.py``).
* :func:`importance_sample` and its two pieces, :func:`importance_sample_indices` (which pixel is
  drawn) and :func:`gather_pixels` (the value at a drawn pixel): the HFPL importance sampling of
  pixels per (image, class), with the paper's ``"binomial"`` posterior or the predecessor's
  ``"multinomial"`` one.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from hfpl_jax._arrays import check_array, compute_dtype, positive_int, shape_str

__all__ = [
    "POSTERIORS",
    "gather_pixels",
    "global_average_pool",
    "importance_log_weights",
    "importance_sample",
    "importance_sample_indices",
    "importance_scores",
    "max_norm",
    "max_onehot",
    "with_background",
]

#: Importance-sampling posteriors: ``"binomial"`` (HFPL, a sigmoid per class) and
#: ``"multinomial"`` (arXiv 2203.12459, a softmax across all classes including background).
POSTERIORS = ("binomial", "multinomial")

# The reference's constants.
_MAX_NORM_EPS = 1e-5  # tool/visualization.max_norm, e=1e-5
_BINOMIAL_PROB_EPS = 1e-5  # train_cam_voc.py: sigmoid(logits) + 1e-5
_PROBS_TO_LOGITS_EPS = 1e-3  # predecessor's probutils.probs_to_logits(eps=1e-3)


# --------------------------------------------------------------------------------------------
# Pooling and CAM normalisation
# --------------------------------------------------------------------------------------------


def global_average_pool(x):
    """Spatial mean: ``(N, H, W, C) -> (N, C)``, ``out[n, c] = mean_{h,w} x[n, h, w, c]``.

    The reference's ``F.adaptive_avg_pool2d(cam, (1, 1))``. Accumulates in float32 (or wider).
    """
    x = check_array("x", x, ndim=4, layout="(N, H, W, C)")
    return jnp.mean(x, axis=(1, 2), dtype=compute_dtype(x)).astype(x.dtype)


def max_norm(x, eps: float = _MAX_NORM_EPS):
    """The reference's ``max_norm``: per (image, channel) min-max normalisation after a ReLU.

    ``(N, H, W, C) -> (N, H, W, C)``. With ``p = relu(x)`` and ``lo[n, c] = min_{h,w} p``,
    ``hi[n, c] = max_{h,w} p``::

        out = relu(p - lo - eps) / (hi - lo + eps)

    ``lo`` and ``hi`` carry gradient (the reference does not detach them). Applied to every
    channel, background included. On exact ties of the min/max, ``jnp.min``/``jnp.max`` split the
    gradient between the tied entries where torch sends it to one; the sums agree.
    """
    x = check_array("x", x, ndim=4, layout="(N, H, W, C)")
    p = jax.nn.relu(x.astype(compute_dtype(x)))
    hi = jnp.max(p, axis=(1, 2), keepdims=True)
    lo = jnp.min(p, axis=(1, 2), keepdims=True)
    return (jax.nn.relu(p - lo - eps) / (hi - lo + eps)).astype(x.dtype)


def max_onehot(x):
    """The reference's ``max_onehot``: keep, per pixel, only the foreground maximum.

    ``(N, H, W, C) -> (N, H, W, C)``; channel 0 (background) is returned unchanged and, for
    ``c >= 1``::

        out[..., c] = x[..., c] if x[..., c] == max_{c' >= 1} x[..., c'] else 0

    Kept values are not set to 1 (exactly as the reference, which edits a detached copy in place).
    Every tied maximum is kept.
    """
    x = check_array("x", x, ndim=4, layout="(N, H, W, C)")
    if x.shape[-1] < 2:
        raise ValueError(
            f"x: expected (N, H, W, C) with C >= 2 (background + classes), got shape "
            f"{shape_str(x.shape)}"
        )
    fg = x[..., 1:]
    fg = jnp.where(fg == jnp.max(fg, axis=-1, keepdims=True), fg, jnp.zeros_like(fg))
    return jnp.concatenate([x[..., :1], fg], axis=-1)


def with_background(x):
    """Replaces channel 0 by ``1 - max`` over the foreground channels.

    ``(N, H, W, C) -> (N, H, W, C)``: ``out[..., 0] = 1 - max_{c >= 1} x[..., c]``,
    ``out[..., 1:] = x[..., 1:]``. The gradient of the new background flows into the foreground
    maximum (as the reference's in-place assignment does); the old channel 0 gets none.
    """
    x = check_array("x", x, ndim=4, layout="(N, H, W, C)")
    if x.shape[-1] < 2:
        raise ValueError(
            f"x: expected (N, H, W, C) with C >= 2 (background + classes), got shape "
            f"{shape_str(x.shape)}"
        )
    background = 1 - jnp.max(x[..., 1:], axis=-1, keepdims=True)
    return jnp.concatenate([background.astype(x.dtype), x[..., 1:]], axis=-1)


# --------------------------------------------------------------------------------------------
# Importance sampling of pixels
# --------------------------------------------------------------------------------------------


def _check_posterior(posterior: str) -> None:
    if posterior not in POSTERIORS:
        raise ValueError(f"posterior: expected one of {POSTERIORS}, got {posterior!r}")


def _check_logits(logits, posterior: str):
    logits = check_array("logits", logits, ndim=4, layout="(N, H, W, C)")
    if posterior == "multinomial" and logits.shape[-1] < 2:
        raise ValueError(
            "logits: posterior='multinomial' expects (N, H, W, C+1) with the background logit "
            f"in channel 0 and C >= 1 classes, got shape {shape_str(logits.shape)}"
        )
    return logits


def importance_log_weights(logits, *, posterior: str = "binomial"):
    """Unnormalised log-probabilities of drawing each pixel, per (image, class).

    ``binomial``: ``logits (N, H, W, C) -> (N, H*W, C)``, ``log(sigmoid(z) + 1e-5)``: the
    categorical over the H*W pixels of each (image, class) is proportional to the per-class
    sigmoid probability plus the reference's 1e-5.

    ``multinomial``: ``logits (N, H, W, C+1)`` with the background logit in channel 0 ->
    ``(N, H*W, C)``, ``log softmax(z)[..., 1:]``: the categorical is proportional to the softmax
    probability across all C+1 channels (the predecessor samples with ``P`` itself; the log-softmax
    is the same distribution, without underflow to an all-zero row).

    Pixels are flattened row-major (``i = h * W + w``).
    """
    _check_posterior(posterior)
    logits = _check_logits(logits, posterior)
    n, h, w, c = logits.shape
    z = logits.astype(compute_dtype(logits)).reshape(n, h * w, c)
    if posterior == "binomial":
        return jnp.log(jax.nn.sigmoid(z) + _BINOMIAL_PROB_EPS)
    return jax.nn.log_softmax(z, axis=-1)[..., 1:]


def importance_scores(logits, *, posterior: str = "binomial"):
    """The value scored at a sampled pixel (the logit fed to the classification loss).

    ``binomial``: the raw logits, ``(N, H, W, C) -> (N, H, W, C)`` (HFPL).

    ``multinomial``: ``(N, H, W, C+1) -> (N, H, W, C)``, the logit of the softmax probability of
    each foreground class with the predecessor's ``probs_to_logits`` (eps = 1e-3)::

        P = softmax(z)[..., 1:];  out = log(P (1 - eps) + eps) - log(1 - P (1 - eps))
    """
    _check_posterior(posterior)
    logits = _check_logits(logits, posterior)
    if posterior == "binomial":
        return logits
    z = logits.astype(compute_dtype(logits))
    p = jax.nn.softmax(z, axis=-1)[..., 1:]
    eps = _PROBS_TO_LOGITS_EPS
    return (jnp.log(p * (1 - eps) + eps) - jnp.log(1 - p * (1 - eps))).astype(logits.dtype)


def importance_sample_indices(key, logits, num_samples: int = 10, *, posterior: str = "binomial"):
    """Draws pixel indices, with replacement, per (image, class): ``-> int32 (N, S, C)``.

    For every image n and class c, ``S = num_samples`` independent draws
    ``i ~ Categorical(q[n, :, c])`` over the flattened pixels ``i = h * W + w``, with
    ``log q = importance_log_weights(logits, posterior=posterior)`` (up to normalisation). This is
    ``torch.multinomial(probs.view(N*C, H*W), S, replacement=True)`` of the reference in
    distribution (the torch random stream itself cannot be reproduced). Indices carry no gradient.
    """
    num_samples = positive_int("num_samples", num_samples)
    log_q = importance_log_weights(logits, posterior=posterior)
    n, _, c = log_q.shape
    log_q = jax.lax.stop_gradient(log_q)
    idx = jax.random.categorical(key, log_q, axis=1, shape=(num_samples, n, c))
    return jnp.transpose(idx, (1, 0, 2)).astype(jnp.int32)


def gather_pixels(values, indices):
    """Gathers per-(image, class) pixel values: ``(N, H, W, C), int (N, S, C) -> (N, S, C)``.

    ``out[n, s, c] = values.reshape(N, H*W, C)[n, indices[n, s, c], c]``; differentiable in
    ``values``. Out-of-range indices are clamped (``jnp.take_along_axis`` default), so check
    externally produced indices beforehand.
    """
    values = check_array("values", values, ndim=4, layout="(N, H, W, C)")
    indices = check_array("indices", indices, ndim=3, layout="(N, S, C)", floating=False)
    if not jnp.issubdtype(indices.dtype, jnp.integer):
        raise ValueError(f"indices: expected an integer array (N, S, C), got dtype {indices.dtype}")
    n, h, w, c = values.shape
    if indices.shape[0] != n or indices.shape[2] != c:
        raise ValueError(
            f"indices: expected shape ({n}, S, {c}) to match values {shape_str(values.shape)}, "
            f"got {shape_str(indices.shape)}"
        )
    return jnp.take_along_axis(values.reshape(n, h * w, c), indices, axis=1, mode="clip")


def importance_sample(key, logits, num_samples: int = 10, *, posterior: str = "binomial"):
    """Importance-samples scored pixel values per (image, class): ``-> (N, S, C)``.

    ``logits``: ``(N, H, W, C)`` foreground logits for ``posterior="binomial"`` (HFPL, the
    reference's ``probutils.sample_probs(sigmoid(z) + 1e-5, S, logits=z)``), or
    ``(N, H, W, C+1)`` with the background logit in channel 0 for ``"multinomial"`` (the
    predecessor, arXiv 2203.12459: softmax across all classes; the output covers the C foreground
    classes only, as the predecessor scores ``[:, 1:]``).

    ``out[n, s, c] = importance_scores(logits)[n, i_s, c]`` with
    ``i_s ~ Categorical(q[n, :, c])`` (see :func:`importance_sample_indices`). Gradients flow into
    the gathered scores only; there is no 1/q importance weight (as in the reference).
    """
    indices = importance_sample_indices(key, logits, num_samples, posterior=posterior)
    return gather_pixels(importance_scores(logits, posterior=posterior), indices)
