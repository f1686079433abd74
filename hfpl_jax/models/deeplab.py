"""DeepLab-LargeFOV (DeepLab-v1) on ResNet-38, the final segmentation model (spec §8.2).

``backbone`` is ResNet-38 (parameter paths ``backbone/conv1a/kernel`` ..., as the PyTorch names
``backbone.conv1a.weight``); its BN momentum is 0.0003 (Flax 0.9997). Head, on conv6 (OS 8):

    conv_fov (3x3, dilation 12, padding 12, no bias) -> bn_fov -> relu
    -> conv_fov2 (1x1, no bias) -> bn_fov2 -> relu -> dropout (element-wise, p = 0.5)
    -> cls_conv (1x1, with bias) -> bilinear upsampling to the input size (align_corners=True)

Init (head): conv weights kaiming_normal(fan_out, ReLU gain), untruncated; cls_conv bias
PyTorch's default U(+-1/sqrt(512)); head BN weight 1, bias 0. In the reference's final stage BN
runs with batch statistics (``batch_norm="batch"``), Dropout2d in b6/b7 and the head dropout are
active, and no BN affine parameter is trained (they are in no optimizer group); every conv, conv1a
and b2 included, is trained.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn

from hfpl_jax.image_ops import resize_bilinear
from hfpl_jax.models.layers import (
    ModelOptions,
    check_images,
    kaiming_normal,
    output_dtype,
    use_running_average,
)
from hfpl_jax.models.resnet38 import RESNET38, ResNet38
from hfpl_jax.models.spec import ArchSpec

BN_MOMENTUM = 0.9997  # PyTorch momentum 0.0003 (TRAIN_BN_MOM and lib/net/backbone/resnet38d.bn_mom)


class DeepLabLargeFOV(ModelOptions):
    """``__call__(images, train)`` -> ``{"logits": (N, H, W, num_classes + 1)}``.

    Options: ``ModelOptions`` (keyword-only), with the final stage's defaults: batch statistics and
    BN momentum ``BN_MOMENTUM``.
    """

    num_classes: int
    _: dataclasses.KW_ONLY
    batch_norm: str = "batch"
    bn_momentum: float = BN_MOMENTUM

    @nn.compact
    def __call__(self, images, train: bool = False) -> dict:
        check_images(images)
        taps = ResNet38(**self.model_options(), name="backbone")(images, train=train)
        running = use_running_average(self.batch_norm, train)
        fan_out = kaiming_normal("fan_out")
        features = self.channels(512)
        conv_fov = self.conv(features, 3, padding=12, dilation=12, kernel_init=fan_out,
                             name="conv_fov")  # fmt: skip
        x = nn.relu(self.norm("bn_fov")(conv_fov(taps["conv6"]), running))
        x = self.conv(features, 1, kernel_init=fan_out, name="conv_fov2")(x)
        x = nn.relu(self.norm("bn_fov2")(x, running))
        x = nn.Dropout(0.5, name="dropout1")(x, deterministic=not (train and self.dropout))
        cls_conv = self.conv(self.num_classes + 1, 1, use_bias=True, kernel_init=fan_out,
                             name="cls_conv")  # fmt: skip
        logits = cls_conv(x).astype(output_dtype(self.dtype))
        return {"logits": resize_bilinear(logits, images.shape[1:3], align_corners=True)}


SPEC = ArchSpec(
    name="deeplab_largefov",
    module=DeepLabLargeFOV,
    reference="lib/net/deeplabv1.py deeplabv1 (backbone lib/net/backbone/resnet38d.py)",
    # from_scratch_layers = [conv_fov, conv_fov2, cls_conv]; not_training = [] (and the backbone's
    # [conv1a] is never applied because net.train() is never called); BN affine parameters are
    # never in an optimizer group.
    from_scratch=(r"^(conv_fov|conv_fov2|cls_conv)/",),
    not_training=(r"(^|/)bn[^/]*/(scale|bias)$",),
    backbone=RESNET38,
    backbone_prefix="backbone.",
    classifier="cls_conv.weight",
)
