"""SEAM network with PCM and HFPL's extra ``logits`` output (spec §2; ``network/resnet38_SEAM.py``).

Forward, input ``x`` ``(N, H, W, 3)`` normalised, ``C = num_classes + 1`` channels (channel 0 is
fc8's background channel, which no loss uses):

1. ResNet-38 taps conv4, conv5, conv6 at OS 8, spatial ``(h, w)``.
2. ``logits = fc8(dropout7(conv6))`` ``(N, h, w, C)`` (Dropout2d 0.5, fc8 1x1 without bias).
3. ``cam_d_norm`` (constant, no gradient): ``d = relu(logits)``;
   ``n = relu(d - 1e-5) / (max_hw d + 1e-5)`` per (n, c); channel 0 <- ``1 - max_{c>=1} n``;
   in channels 1.., values strictly below the per-pixel foreground max are set to 0 (ties kept).
   No label masking: the model does not see labels.
4. ``f = concat[x_s, relu(f8_3(sg(conv4))), relu(f8_4(sg(conv5)))]`` (3 + 64 + 128 channels), where
   ``x_s`` is ``x`` resized to ``(h, w)`` (bilinear, align_corners=True) and ``sg`` stops gradients:
   PCM never sends gradient into the backbone.
5. PCM: ``g = f9(f)``, ``g_i <- g_i / (||g_i|| + 1e-5)`` per pixel; ``A[i, j] = relu(<g_i, g_j>)``;
   ``A[i, j] <- A[i, j] / (sum_i A[i, j] + 1e-5)`` (columns sum to ~1);
   ``cam_rv[j, c] = sum_i cam_d_norm[i, c] * A[i, j]``.
6. ``cam`` and ``cam_rv`` are upsampled to ``(H, W)`` (bilinear, align_corners=True).

So ``cam`` and ``logits`` depend on the backbone and fc8, and ``cam_rv`` on f8_3, f8_4, f9 only.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from hfpl_jax.image_ops import resize_bilinear
from hfpl_jax.models.layers import (
    Dropout2d,
    ModelOptions,
    check_images,
    kaiming_normal,
    output_dtype,
    xavier_uniform,
)
from hfpl_jax.models.resnet38 import BACKBONE_NOT_TRAINING_PATTERNS, RESNET38, resnet38_trunk
from hfpl_jax.models.spec import ArchSpec


def _safe_norm(x, axis):
    """Euclidean norm with a zero (not NaN) gradient at 0, like ``torch.norm``."""
    sq = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
    positive = sq > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


def normalized_cam_for_pcm(logits):
    """SEAM's ``cam_d_norm`` (step 3 of the module docstring), a constant: ``(N,h,w,C) -> same``."""
    cam = jax.lax.stop_gradient(logits.astype(output_dtype(logits.dtype)))
    cam_d = nn.relu(cam)
    cam_d_max = jnp.max(cam_d, axis=(1, 2), keepdims=True) + 1e-5
    norm = nn.relu(cam_d - 1e-5) / cam_d_max
    foreground = norm[..., 1:]
    fg_max = jnp.max(foreground, axis=-1, keepdims=True)
    background = 1.0 - fg_max
    foreground = jnp.where(foreground < fg_max, 0.0, foreground)
    return jnp.concatenate([background, foreground], axis=-1)


def pixel_correlation(cam, features):
    """PCM propagation (step 5): ``cam (N,h,w,C)``, ``features`` = f9 output ``(N,h,w,D)``.

    Returns ``cam_rv (N,h,w,C)``, ``cam_rv[:, j] = sum_i cam[:, i] * A[i, j]`` with the
    column-normalised affinity ``A`` of the L2-normalised features.
    """
    n, h, w, c = cam.shape
    dtype = output_dtype(jnp.promote_types(cam.dtype, features.dtype))
    g = features.astype(dtype).reshape(n, h * w, -1)
    g = g / (_safe_norm(g, axis=-1) + 1e-5)
    affinity = nn.relu(jnp.einsum("nid,njd->nij", g, g))
    affinity = affinity / (jnp.sum(affinity, axis=1, keepdims=True) + 1e-5)
    cam_rv = jnp.einsum("nic,nij->njc", cam.reshape(n, h * w, c).astype(dtype), affinity)
    return cam_rv.reshape(n, h, w, c)


class SEAM(ModelOptions):
    """SEAM + HFPL logits. ``__call__(images, train)`` -> ``{"cam", "cam_rv", "logits"}``.

    Attributes:
      num_classes: foreground classes K (VOC 20, COCO 80); outputs have K + 1 channels.
      width, blocks, batch_norm, dropout, bn_momentum, dtype, conv_impl: ``ModelOptions``
        (keyword-only); the heads scale with ``width`` as well. ``batch_norm``: "frozen" (the
        reference's CAM stage) or "batch".
    """

    num_classes: int

    @nn.compact
    def __call__(self, images, train: bool = False) -> dict:
        check_images(images)
        out_hw = images.shape[1:3]
        taps = resnet38_trunk(images, train=train, **self.model_options())
        c = self.channels
        conv6 = Dropout2d(0.5, name="dropout7")(
            taps["conv6"], deterministic=not (train and self.dropout)
        )
        fc8 = self.conv(self.num_classes + 1, 1, kernel_init=xavier_uniform(1.0), name="fc8")
        logits = fc8(conv6).astype(output_dtype(self.dtype))

        cam_d_norm = normalized_cam_for_pcm(logits)
        f8_3 = self.conv(c(64), 1, kernel_init=kaiming_normal(), name="f8_3")
        f8_4 = self.conv(c(128), 1, kernel_init=kaiming_normal(), name="f8_4")
        x_s = resize_bilinear(images, logits.shape[1:3], align_corners=True)
        f = jnp.concatenate(
            [
                x_s.astype(self.dtype),
                nn.relu(f8_3(jax.lax.stop_gradient(taps["conv4"]))),
                nn.relu(f8_4(jax.lax.stop_gradient(taps["conv5"]))),
            ],
            axis=-1,
        )
        g = self.conv(c(192), 1, kernel_init=xavier_uniform(4.0), name="f9")(f)
        cam_rv = pixel_correlation(cam_d_norm, g)

        return {
            "cam": resize_bilinear(logits, out_hw, align_corners=True),
            "cam_rv": resize_bilinear(cam_rv, out_hw, align_corners=True),
            "logits": logits,
        }


SPEC = ArchSpec(
    name="seam",
    module=SEAM,
    reference="network/resnet38_SEAM.py Net (COCO, 80 classes: network/resnet38_SEAM_coco.py)",
    # from_scratch_layers = [f8_3, f8_4, f9, fc8] (lr x10, weight decay on); not_training =
    # [conv1a, b2, b2_1, b2_2] plus every BN affine parameter.
    from_scratch=(r"^(fc8|f8_3|f8_4|f9)/",),
    not_training=BACKBONE_NOT_TRAINING_PATTERNS,
    backbone=RESNET38,
    classifier="fc8.weight",
)
