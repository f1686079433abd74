"""Flax Linen models of the HFPL pipeline; ``build(arch, num_classes, ...)`` is the one way in.

| arch             | module          | outputs (NHWC)                                          |
|------------------|-----------------|---------------------------------------------------------|
| seam             | SEAM            | cam, cam_rv (N,H,W,K+1); logits (N,h,w,K+1) at OS 8     |
| affinity         | AffinityNet     | features (N,h,w,448), affinity (N,34,P) at OS 8         |
| deeplab_largefov | DeepLabLargeFOV | logits (N,H,W,K+1)                                      |
| resnet50_cam     | ResNet50CAM     | cam (N,H,W,K+1); logits (N,h,w,K+1) at OS 16            |

``K = num_classes`` foreground classes; channel 0 is the background channel. Call
``module.apply(variables, images, train=..., rngs={"dropout": key})``, adding
``mutable=["batch_stats"]`` when ``batch_norm == "batch"`` and ``train``. Variables are
``{"params": ..., "batch_stats": ...}`` with paths mirroring the PyTorch state-dict names.

Each architecture is described once by an ``ArchSpec`` (``hfpl_jax.models.spec``) defined beside
its module (``seam.SPEC``, ...) and registered in ``SPECS``: the module class, the stage's BatchNorm
defaults, the from-scratch and frozen parameter patterns, the PyTorch naming (backbone prefix,
classifier) and how to read its size from a state dict. ``get_spec(arch)`` returns it; ``build``,
``param_label``, ``hfpl_jax.weights`` and ``hfpl_jax.parity`` use it instead of testing names.

Parameter groups (``param_labels``) mirror the reference's ``get_parameter_groups`` after
``Net.train()``: ``frozen`` (no update, no weight decay), ``weight`` (lr x1, decay), ``bias``
(lr x2, no decay), ``scratch_weight`` (lr x10, decay) and ``scratch_bias`` (lr x20, no decay).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from hfpl_jax.models import affinity, deeplab, resnet50_cam, seam
from hfpl_jax.models.affinity import AffinityNet
from hfpl_jax.models.deeplab import DeepLabLargeFOV
from hfpl_jax.models.layers import (
    BATCH_NORM_MODES,
    CONV_IMPLS,
    CONV_INITS,
    check_batch_norm_mode,
    check_conv_impl,
    check_conv_init,
)
from hfpl_jax.models.resnet38 import ResNet38
from hfpl_jax.models.resnet50_cam import ResNet50CAM
from hfpl_jax.models.seam import SEAM
from hfpl_jax.models.spec import LR_MULTIPLIERS, WEIGHT_DECAY, ArchSpec, BackboneSpec

# The registry: one ArchSpec per architecture, each defined beside its model.
SPECS: dict[str, ArchSpec] = {s.name: s for s in (seam.SPEC, affinity.SPEC, deeplab.SPEC,
                                                  resnet50_cam.SPEC)}  # fmt: skip
ARCHS = tuple(SPECS)
# Views of the specs, by arch (kept for callers of the older names).
FROM_SCRATCH_PATTERNS = {name: s.from_scratch for name, s in SPECS.items()}
NOT_TRAINING_PATTERNS = {name: s.not_training for name, s in SPECS.items()}
# model.compute_dtype of the configs -> the activations' dtype (parameters stay float32).
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

__all__ = [
    "ARCHS",
    "BATCH_NORM_MODES",
    "COMPUTE_DTYPES",
    "CONV_IMPLS",
    "CONV_INITS",
    "SPECS",
    "AffinityNet",
    "ArchSpec",
    "BackboneSpec",
    "DeepLabLargeFOV",
    "FROM_SCRATCH_PATTERNS",
    "LR_MULTIPLIERS",
    "NOT_TRAINING_PATTERNS",
    "ResNet38",
    "ResNet50CAM",
    "SEAM",
    "WEIGHT_DECAY",
    "build",
    "build_from_config",
    "check_arch",
    "get_spec",
    "init_variables",
    "param_label",
    "param_labels",
]


def get_spec(arch: str) -> ArchSpec:
    """The registered ``ArchSpec`` of ``arch``; ``ValueError`` naming the known ones otherwise."""
    if arch not in SPECS:
        raise ValueError(f"arch must be one of {ARCHS}, found {arch!r}")
    return SPECS[arch]


def check_arch(arch: str) -> None:
    get_spec(arch)


def build(
    arch: str,
    num_classes: int,
    *,
    width: float = 1.0,
    blocks: Sequence[int] | None = None,
    dtype: Any = jnp.float32,
    batch_norm: str | None = None,
    bn_momentum: float | None = None,
    dropout: bool = True,
    conv_impl: str = "auto",
    conv_init: str = "torch",
) -> nn.Module:
    """Build a model.

    Args:
      arch: one of ``ARCHS``.
      num_classes: foreground classes K (outputs carry K + 1 channels; unused by ``affinity``).
      width: channel multiplier (1.0 = the reference; 0.125 for tests and synthetic runs).
      blocks: blocks per stage (ResNet-38: b2..b5, full (3, 3, 6, 3); ResNet-50: layer1..4, full
        (3, 4, 6, 3)); ``None`` = full.
      dtype: compute dtype (parameters stay float32; outputs and BatchNorm use float32, or
        float64 when ``dtype`` is float64, e.g. for float64 parity checks).
      batch_norm: "frozen" (running statistics, never updated) or "batch" (batch statistics over
        the global batch when ``train``). Default: the reference's choice for the stage ("batch"
        for ``deeplab_largefov``, "frozen" otherwise).
      bn_momentum: Flax-convention momentum of the running statistics (default: PyTorch 0.1 ->
        0.9, DeepLab 0.0003 -> 0.9997).
      dropout: False disables every dropout layer even when training (parity checks, ablations).
      conv_impl: how convolutions are computed, one of ``CONV_IMPLS`` (same parameters, same
        results to float rounding): "xla" (``lax.conv_general_dilated``), "dot" (1x1 as a matrix
        product, kxk as im2col + one matrix product) or "auto" (the default): on CPU, where XLA's
        dot is much faster than its convolution, "dot" for 1x1 convolutions and the deep kxk ones
        (``k*k*C_in >= layers.AUTO_DOT_MIN_DEPTH``), "xla" for the rest; "xla" on GPU/TPU, where
        the convolution (cuDNN, the TPU's) is the fast path. See ``layers.resolve_conv_impl``.
      conv_init: initialiser of the convolutions without one of their own (the ResNet-38
        backbone; heads and the ResNet-50 keep their reference/torchvision initialisers), one of
        ``CONV_INITS``: "torch" (PyTorch's default ``Conv2d`` init, U(+-1/sqrt(fan_in)), the
        reference's, which ImageNet weights then replace) or "he_normal" (N(0, 2/fan_in), for
        training from random weights: the "torch" variance shrinks the signal at every conv when
        BN is frozen).
    """
    spec = get_spec(arch)
    if not isinstance(num_classes, int) or num_classes < (1 if spec.has_classes else 0):
        raise ValueError(f"num_classes must be a positive int, found {num_classes!r}")
    if not width > 0:
        raise ValueError(f"width must be > 0, found {width}")
    batch_norm = spec.default_batch_norm if batch_norm is None else batch_norm
    check_batch_norm_mode(batch_norm)
    momentum = spec.default_bn_momentum if bn_momentum is None else float(bn_momentum)
    check_conv_impl(conv_impl)
    check_conv_init(conv_init)
    return spec.module(
        num_classes=num_classes,
        width=float(width),
        blocks=None if blocks is None else tuple(int(b) for b in blocks),
        batch_norm=batch_norm,
        bn_momentum=momentum,
        dtype=dtype,
        dropout=bool(dropout),
        conv_impl=conv_impl,
        conv_init=conv_init,
    )


def build_from_config(model_config: Mapping[str, Any], num_classes: int) -> nn.Module:
    """``build`` from a config's ``model`` section (``arch``, ``width``, ``blocks``,
    ``batch_norm``, ``dropout``, ``conv_init``, ``compute_dtype``; see the stage's config schema,
    e.g. ``hfpl_jax.train.cam_config``). A bad value raises ``ValueError`` naming its
    ``model.<field>``, what is allowed and what was found."""
    if model_config["arch"] not in SPECS:
        raise ValueError(f"model.arch must be one of {ARCHS}, found {model_config['arch']!r}.")
    for key, allowed in (
        ("batch_norm", BATCH_NORM_MODES),
        ("conv_init", CONV_INITS),
        ("compute_dtype", tuple(COMPUTE_DTYPES)),
    ):
        if model_config[key] not in allowed:
            raise ValueError(f"model.{key} must be one of {allowed}, found {model_config[key]!r}.")
    blocks = model_config["blocks"]
    return build(
        model_config["arch"],
        num_classes,
        width=model_config["width"],
        blocks=None if blocks is None else tuple(blocks),
        dtype=COMPUTE_DTYPES[model_config["compute_dtype"]],
        batch_norm=model_config["batch_norm"],
        dropout=model_config["dropout"],
        conv_init=model_config["conv_init"],
    )


def init_variables(
    arch: str,
    num_classes: int,
    key: jax.Array,
    *,
    image_size: Sequence[int] = (64, 64),
    **size,
) -> dict:
    """``build(arch, num_classes, **size).init`` on zeros of ``(1, *image_size, 3)``, jitted.

    Returns ``{"params": ..., "batch_stats": ...}`` as plain nested dicts. The parameter shapes do
    not depend on ``image_size`` (any size with an OS-8 map of at least 2x2 works).
    """
    model = build(arch, num_classes, **size)
    images = jnp.zeros((1, *image_size, 3), jnp.float32)
    params_key, dropout_key = jax.random.split(key)
    variables = jax.jit(lambda k1, k2: model.init({"params": k1, "dropout": k2}, images))(
        params_key, dropout_key
    )
    return flax.core.unfreeze(variables)


def param_label(path: str, arch: str) -> str:
    """Optimizer group of one "/"-joined parameter path (see the module docstring)."""
    return get_spec(arch).param_label(path)


def param_labels(params, arch: str):
    """Pytree of group labels matching ``params`` (for ``optax.multi_transform`` or masks)."""
    spec = get_spec(arch)
    return jax.tree_util.tree_map_with_path(
        lambda p, _: spec.param_label("/".join(str(k.key) for k in p)), params
    )
