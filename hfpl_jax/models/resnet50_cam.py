"""A plain CAM network on a torchvision-layout ResNet-50, output stride 16.

A second CAM baseline, to show that HFPL's losses (ISL on the OS-16 ``logits``, FSL, mixed with
the GAP of the logits as IRN pools them, or of the upsampled ``cam``: ``loss.gap_source``) are an
add-on to an ordinary CAM method and not tied to SEAM. The design follows
the common ResNet-50 CAM setup (as in IRN): torchvision's ResNet-50 v1.5 with the last stage's
stride set to 1 (no dilation), so OS 16, and a bias-free 1x1 classifier on the last stage.

Layout (torchvision names, as Flax paths with "/" for "."): ``conv1`` (7x7, stride 2, padding 3) ->
``bn1`` -> relu -> max-pool 3x3 stride 2 padding 1 -> ``layer1``..``layer4`` of Bottleneck blocks
``layerS/i/{conv1,bn1,conv2,bn2,conv3,bn3}`` and ``layerS/0/downsample/{0 (1x1 conv), 1 (BN)}``,
strides (1, 2, 2, 1), blocks (3, 4, 6, 3), planes (64, 128, 256, 512) x4 expansion; the 3x3 conv
carries the stride (v1.5). ``classifier``: 1x1 conv 2048 -> num_classes + 1, no bias (channel 0
exists for uniformity with SEAM; every loss slices 1:). torchvision's ``fc`` is not used.

Bottleneck: ``y = relu(bn3(conv3(relu(bn2(conv2(relu(bn1(conv1(x)))))))) + shortcut(x))`` with
``shortcut = downsample(x)`` where shape changes, else ``x``.

Outputs: ``logits`` ``(N, h, w, K + 1)`` at OS 16 (h = ceil(H / 16) for the usual sizes) and
``cam``, ``logits`` upsampled to the input size with align_corners=True.

Training defaults (``SPEC.from_scratch`` / ``SPEC.not_training``): the classifier is new (lr
x10); the stem (conv1, bn1) and layer1 are frozen, as is every BN affine parameter, with BN on
running statistics ("frozen") as in the ResNet-38 CAM stage. Weights import from a torchvision
``resnet50`` state dict (``hfpl_jax.weights.from_torch(sd, "resnet50_cam")``; ``fc.*`` dropped).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from hfpl_jax.image_ops import resize_bilinear
from hfpl_jax.models.layers import (
    LayerOptions,
    ModelOptions,
    check_batch_norm_mode,
    check_blocks,
    check_images,
    kaiming_normal,
    output_dtype,
    use_running_average,
    xavier_uniform,
)
from hfpl_jax.models.spec import ArchSpec, BackboneSpec

FULL_BLOCKS = (3, 4, 6, 3)
STRIDES = (1, 2, 2, 1)
EXPANSION = 4


class Downsample(LayerOptions):
    """torchvision's ``downsample = Sequential(conv1x1(stride), BatchNorm)``: names "0" and "1"."""

    features: int
    stride: int

    @nn.compact
    def __call__(self, x, running_average: bool):
        x = self.conv(self.features, 1, self.stride, kernel_init=kaiming_normal("fan_out"),
                      name="0")(x)  # fmt: skip
        return self.norm("1")(x, running_average)


class Bottleneck(LayerOptions):
    """torchvision ResNet-50 v1.5 bottleneck (stride on the 3x3 conv)."""

    planes: int
    stride: int = 1

    @nn.compact
    def __call__(self, x, running_average: bool):
        out_features = self.planes * EXPANSION
        init = kaiming_normal("fan_out")
        y = self.conv(self.planes, 1, kernel_init=init, name="conv1")(x)
        y = nn.relu(self.norm("bn1")(y, running_average))
        y = self.conv(self.planes, 3, self.stride, padding=1, kernel_init=init, name="conv2")(y)
        y = nn.relu(self.norm("bn2")(y, running_average))
        y = self.conv(out_features, 1, kernel_init=init, name="conv3")(y)
        y = self.norm("bn3")(y, running_average)
        if self.stride != 1 or x.shape[-1] != out_features:
            downsample = Downsample(out_features, self.stride, **self.layer_options(),
                                    name="downsample")  # fmt: skip
            shortcut = downsample(x, running_average)
        else:
            shortcut = x
        return nn.relu(y + shortcut)


class ResNetStage(LayerOptions):
    """torchvision ``layerS``: blocks named "0", "1", ...; the first carries the stride."""

    planes: int
    num_blocks: int
    stride: int

    @nn.compact
    def __call__(self, x, running_average: bool):
        for i in range(self.num_blocks):
            block = Bottleneck(self.planes, self.stride if i == 0 else 1, **self.layer_options(),
                               name=str(i))  # fmt: skip
            x = block(x, running_average)
        return x


def max_pool_3x3_s2(x):
    """``nn.MaxPool2d(3, stride=2, padding=1)``: padding never wins (it is -inf)."""
    return jax.lax.reduce_window(
        x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1), ((0, 0), (1, 1), (1, 1), (0, 0))
    )


class ResNet50CAM(ModelOptions):
    """``__call__(images, train)`` -> ``{"cam": (N,H,W,K+1), "logits": (N,h,w,K+1)}`` (OS 16).

    Options: ``ModelOptions`` (keyword-only); ``dropout`` is accepted for a uniform ``build`` and
    unused (this network has no dropout).
    """

    num_classes: int

    @nn.compact
    def __call__(self, images, train: bool = False) -> dict:
        check_images(images)
        check_batch_norm_mode(self.batch_norm)
        blocks = check_blocks(self.blocks, FULL_BLOCKS, "resnet50_cam")
        running = use_running_average(self.batch_norm, train)
        c = self.channels
        x = self.conv(c(64), 7, 2, padding=3, kernel_init=kaiming_normal("fan_out"),
                      name="conv1")(images)  # fmt: skip
        x = max_pool_3x3_s2(nn.relu(self.norm("bn1")(x, running)))
        for stage, (planes, count, stride) in enumerate(
            zip((64, 128, 256, 512), blocks, STRIDES, strict=True), start=1
        ):
            layer = ResNetStage(c(planes), count, stride, **self.layer_options(),
                                name=f"layer{stage}")  # fmt: skip
            x = layer(x, running)
        classifier = self.conv(self.num_classes + 1, 1, kernel_init=xavier_uniform(1.0),
                               name="classifier")  # fmt: skip
        logits = classifier(x).astype(output_dtype(self.dtype))
        cam = resize_bilinear(logits, images.shape[1:3], align_corners=True)
        return {"cam": cam, "logits": logits}


_BLOCK_NAME = re.compile(r"^layer(\d)\.(\d+)\.")


def size_from_torch_names(arrays: Mapping[str, Any], prefix: str = "") -> dict:
    """``{"width", "blocks"}`` of a torchvision-layout ResNet-50 state dict (names after
    ``prefix``): ``width`` = channels of ``layer4.0.conv3`` / 2048, else of ``conv1`` / 64;
    ``blocks`` counts ``layer{1..4}.{i}`` per stage."""
    stem = prefix + "conv1.weight"
    if stem not in arrays:
        raise ValueError(f"missing {stem!r} (the ResNet-50 stem)")
    widest = prefix + "layer4.0.conv3.weight"
    width = arrays[widest].shape[0] / 2048 if widest in arrays else arrays[stem].shape[0] / 64.0
    counts: dict[int, int] = {}
    for name in arrays:
        m = _BLOCK_NAME.match(name[len(prefix) :]) if name.startswith(prefix) else None
        if m:
            counts[int(m[1])] = max(counts.get(int(m[1]), 0), int(m[2]) + 1)
    return {"width": width, "blocks": tuple(counts.get(s, 0) for s in (1, 2, 3, 4))}


RESNET50 = BackboneSpec(name="resnet50", full_blocks=FULL_BLOCKS, infer_size=size_from_torch_names)

SPEC = ArchSpec(
    name="resnet50_cam",
    module=ResNet50CAM,
    reference="torchvision's resnet50 with a CAM classifier, as IRN's net/resnet50_cam.py "
    "(no counterpart in HFPL)",
    from_scratch=(r"^classifier/",),
    not_training=(
        r"^(conv1|bn1|layer1)/",
        r"(^|/)bn\d*/(scale|bias)$",
        r"/downsample/1/(scale|bias)$",
    ),
    backbone=RESNET50,
    classifier="classifier.weight",
    ignored_torch_names=("fc.weight", "fc.bias"),  # torchvision's ImageNet classifier
    pretrained_torch_is_partial=True,
)
