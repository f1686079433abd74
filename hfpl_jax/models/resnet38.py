"""ResNet-38 ("wide ResNet-38", model A1 of Wu et al.), the backbone of every HFPL stage (spec §1).

All blocks are pre-activation. ``ResBlock`` (in -> mid -> out):

    a = relu(bn_branch2a(x))                                 (the block's tap)
    shortcut = x if (in == out and stride == 1) else conv_branch1(a)   (1x1, stride, on a)
    r = conv_branch2b1(relu(bn_branch2b1(conv_branch2a(a))))  (3x3 convs, dilations d1 then d)
    y = shortcut + r                                          (no activation after the sum)

``ResBlockBottleneck`` (in -> out, b6 and b7): ``a`` and the projection shortcut as above, and
``r = conv_branch2b2(drop(relu(bn_branch2b2(conv_branch2b1(drop(relu(bn_branch2b1(
conv_branch2a(a)))))))))`` with 1x1 -> 3x3 (dilation d) -> 1x1 convs of out/4, out/2, out channels
and channel dropout ``drop`` (Dropout2d, active when ``train``).

Layer table (full size; OS = output stride): conv1a 3->64 (OS 1); b2, b2_1, b2_2 64->128 (OS 2);
b3.. 128->256 (OS 4); b4, b4_1..b4_5 256->512 (OS 8); b5, b5_1, b5_2 512->1024 (dilation 2, b5's
first conv dilation 1); b6 1024->2048 and b7 2048->4096 (bottlenecks, dilation 4, dropout 0.3 and
0.5); bn7 + ReLU. Taps (``forward_as_dict``): conv3 = b4's ``a`` (OS 4, unused), conv4 = b5's ``a``
(512 ch), conv5 = b6's ``a`` (1024 ch), conv6 = relu(bn7(b7 output)) (4096 ch), all at OS 8.

Parameter paths mirror the PyTorch state-dict names: ``conv1a/kernel``,
``b4_3/conv_branch2a/kernel``, ``b6/bn_branch2b2/scale``, ``bn7/bias`` (batch_stats ``mean``,
``var``, ``num_batches_tracked``). ``width`` scales every channel count and ``blocks`` sets the
number of blocks of the stages b2, b3, b4, b5 (full model (3, 3, 6, 3)); b6, b7 are always single.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from hfpl_jax.models.layers import (
    BatchNorm,
    Conv2d,
    Dropout2d,
    LayerOptions,
    ModelOptions,
    backbone_kernel_init,
    check_batch_norm_mode,
    check_blocks,
    scaled_channels,
    use_running_average,
)
from hfpl_jax.models.spec import BackboneSpec

FULL_BLOCKS = (3, 3, 6, 3)

# Reference from_scratch_layers / not_training (network/resnet38d.Net and its SEAM/aff subclasses):
# conv1a and the b2 stage are frozen, and so is every BN affine parameter (BN runs in eval mode and
# its weight/bias have requires_grad=False; it is never in an optimizer group).
BACKBONE_NOT_TRAINING_PATTERNS = (r"^(conv1a|b2|b2_\d+)/", r"(^|/)bn[^/]*/(scale|bias)$")


class ResBlock(LayerOptions):
    """Pre-activation basic block; returns ``(y, a)`` with ``a = relu(bn_branch2a(x))``."""

    mid_features: int
    out_features: int
    stride: int = 1
    first_dilation: int = 1
    dilation: int = 1

    @nn.compact
    def __call__(self, x, *, running_average: bool):
        same_shape = x.shape[-1] == self.out_features and self.stride == 1
        a = nn.relu(self.norm("bn_branch2a")(x, running_average))
        if same_shape:
            shortcut = x
        else:
            shortcut = self.conv(self.out_features, 1, self.stride, name="conv_branch1")(a)
        d1, d = self.first_dilation, self.dilation
        r = self.conv(
            self.mid_features, 3, self.stride, padding=d1, dilation=d1, name="conv_branch2a"
        )(a)
        r = nn.relu(self.norm("bn_branch2b1")(r, running_average))
        r = self.conv(self.out_features, 3, padding=d, dilation=d, name="conv_branch2b1")(r)
        return shortcut + r, a


class ResBlockBottleneck(LayerOptions):
    """Pre-activation bottleneck block with channel dropout; returns ``(y, a)``."""

    out_features: int
    stride: int = 1
    dilation: int = 1
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x, *, running_average: bool, train: bool):
        out, d = self.out_features, self.dilation
        a = nn.relu(self.norm("bn_branch2a")(x, running_average))
        shortcut = self.conv(out, 1, self.stride, name="conv_branch1")(a)
        r = self.conv(out // 4, 1, self.stride, name="conv_branch2a")(a)
        r = nn.relu(self.norm("bn_branch2b1")(r, running_average))
        r = Dropout2d(self.dropout, name="dropout_2b1")(r, deterministic=not train)
        r = self.conv(out // 2, 3, padding=d, dilation=d, name="conv_branch2b1")(r)
        r = nn.relu(self.norm("bn_branch2b2")(r, running_average))
        r = Dropout2d(self.dropout, name="dropout_2b2")(r, deterministic=not train)
        r = self.conv(out, 1, name="conv_branch2b2")(r)
        return shortcut + r, a


def _block_names(stage: int, count: int) -> list[str]:
    return [f"b{stage}"] + [f"b{stage}_{k}" for k in range(1, count)]


def resnet38_trunk(
    x,
    *,
    train: bool,
    width: float = 1.0,
    blocks=None,
    batch_norm: str = "frozen",
    bn_momentum: float = 0.9,
    dtype: Any = jnp.float32,
    dropout: bool = True,
    conv_impl: str = "auto",
    conv_init: str = "torch",
) -> dict:
    """Run the ResNet-38 layers, creating them in the *calling* module's scope.

    Call from inside a ``@nn.compact`` method: the layers become direct children of the caller
    (``conv1a``, ``b2``, ... ``bn7``), which keeps SEAM's and AffinityNet's parameter paths flat as
    in the PyTorch state dicts. A ``ModelOptions`` caller passes ``**self.model_options()``.

    Args:
      x: ``(N, H, W, 3)`` normalised images.
      train: enables Dropout2d in b6/b7, and batch statistics when ``batch_norm == "batch"``.
      dropout: False turns Dropout2d off even when training (parity checks, ablations).
      conv_impl: how the convolutions are computed (``layers.CONV_IMPLS``; same results).
      conv_init: the convolutions' initialiser (``layers.CONV_INITS``): "torch", PyTorch's default
        (the reference's, before ImageNet weights replace it), or "he_normal" for runs from
        random weights.

    Returns:
      ``{"conv3": (N, ceil(H/4), ceil(W/4), 256w), "conv4": (N, h, w, 512w),
      "conv5": (N, h, w, 1024w), "conv6": (N, h, w, 4096w)}``, ``h = ceil(ceil(ceil(H/2)/2)/2)``.
    """
    check_batch_norm_mode(batch_norm)
    blocks = check_blocks(blocks, FULL_BLOCKS, "resnet38")
    running = use_running_average(batch_norm, train)
    c = lambda n: scaled_channels(n, width)  # noqa: E731
    common = dict(bn_momentum=bn_momentum, dtype=dtype, conv_impl=conv_impl, conv_init=conv_init)

    x = Conv2d(c(64), 3, padding=1, dtype=dtype, conv_impl=conv_impl,
               kernel_init=backbone_kernel_init(conv_init), name="conv1a")(x)  # fmt: skip
    taps = {}
    # (stage, mid, out, first-block stride, first-block first dilation, dilation)
    stages = [
        (2, c(128), c(128), 2, 1, 1),
        (3, c(256), c(256), 2, 1, 1),
        (4, c(512), c(512), 2, 1, 1),
        (5, c(512), c(1024), 1, 1, 2),
    ]
    for (stage, mid, out, stride, first_dilation, dilation), count in zip(
        stages, blocks, strict=True
    ):
        for k, name in enumerate(_block_names(stage, count)):
            block = ResBlock(
                mid,
                out,
                stride=stride if k == 0 else 1,
                first_dilation=first_dilation if k == 0 else dilation,
                dilation=dilation,
                name=name,
                **common,
            )
            x, a = block(x, running_average=running)
            if k == 0 and stage == 4:
                taps["conv3"] = a
            if k == 0 and stage == 5:
                taps["conv4"] = a
    drop = train and dropout
    x, taps["conv5"] = ResBlockBottleneck(c(2048), dilation=4, dropout=0.3, name="b6", **common)(
        x, running_average=running, train=drop
    )
    x, _ = ResBlockBottleneck(c(4096), dilation=4, dropout=0.5, name="b7", **common)(
        x, running_average=running, train=drop
    )
    taps["conv6"] = nn.relu(BatchNorm(momentum=bn_momentum, dtype=dtype, name="bn7")(x, running))
    return taps


class ResNet38(ModelOptions):
    """The ResNet-38 backbone alone: ``__call__(x, train)`` -> the taps of ``resnet38_trunk``."""

    @nn.compact
    def __call__(self, x, train: bool = False) -> dict:
        return resnet38_trunk(x, train=train, **self.model_options())


_BLOCK_NAME = re.compile(r"^b(\d)(?:_(\d+))?\.")


def size_from_torch_names(arrays: Mapping[str, Any], prefix: str = "") -> dict:
    """``{"width", "blocks"}`` of the ResNet-38 whose PyTorch names start with ``prefix``.

    ``width`` = channels of ``bn7`` / 4096 (the widest layer fixes it best: from the 64-channel
    stem, width 0.1 (6 channels) would read as 0.09375 and give b2 12 channels where the model has
    round(12.8) = 13), else of ``conv1a`` / 64; ``blocks`` counts ``b{2..5}[_k]`` per stage.
    """
    stem = prefix + "conv1a.weight"
    if stem not in arrays:
        raise ValueError(f"missing {stem!r} (the ResNet-38 stem)")
    widest = prefix + "bn7.weight"
    width = arrays[widest].shape[0] / 4096 if widest in arrays else arrays[stem].shape[0] / 64.0
    counts: dict[int, int] = {}
    for name in arrays:
        m = _BLOCK_NAME.match(name[len(prefix) :]) if name.startswith(prefix) else None
        if m:
            counts[int(m[1])] = max(counts.get(int(m[1]), 0), int(m[2] or 0) + 1)
    return {"width": width, "blocks": tuple(counts.get(s, 0) for s in (2, 3, 4, 5))}


RESNET38 = BackboneSpec(name="resnet38", full_blocks=FULL_BLOCKS, infer_size=size_from_torch_names)
