"""What each architecture is, stated once: ``ArchSpec``, defined beside each model.

Every model module (``seam.py``, ``affinity.py``, ``deeplab.py``, ``resnet50_cam.py``) defines one
``SPEC = ArchSpec(...)``; ``hfpl_jax.models`` registers them (``models.SPECS``, ``models.spec``),
and ``models.build``, ``models.param_label``, ``hfpl_jax.weights`` and ``hfpl_jax.parity`` read
them instead of testing the architecture's name. A new stage's model adds its ``SPEC`` there.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["LR_MULTIPLIERS", "WEIGHT_DECAY", "ArchSpec", "BackboneSpec"]

# The reference's parameter groups (``get_parameter_groups`` of network/resnet38_SEAM.py,
# network/resnet38_aff.py, lib/net/deeplabv1.py): learning-rate multiplier and weight decay of each.
LR_MULTIPLIERS = {"weight": 1.0, "bias": 2.0, "scratch_weight": 10.0, "scratch_bias": 20.0,
                  "frozen": 0.0}  # fmt: skip
WEIGHT_DECAY = {"weight": True, "bias": False, "scratch_weight": True, "scratch_bias": False,
                "frozen": False}  # fmt: skip
_BIAS = r"(^|/)bias$"


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    """A backbone family shared by several architectures.

    Attributes:
      name: "resnet38" (the reference's ResNet-38, which its MXNet ImageNet file holds) or
        "resnet50" (torchvision's layout).
      full_blocks: blocks per stage of the full-size network (``build``'s ``blocks=None``).
      infer_size: ``(torch-named arrays, name prefix) -> {"width": float, "blocks": tuple}``: the
        size of the backbone found under ``prefix`` in a state dict; ``ValueError`` naming the
        missing tensor when the stem is absent.
    """

    name: str
    full_blocks: tuple[int, ...]
    infer_size: Callable[[Mapping[str, Any], str], dict]


@dataclasses.dataclass(frozen=True)
class ArchSpec:
    """One architecture: its module, training defaults, parameter groups and PyTorch naming.

    Parameter paths are the Flax paths ``"b4_3/conv_branch2a/kernel"``; the PyTorch names are the
    same with "." (``hfpl_jax.weights.torch_names``), so one set of regexes serves both.

    Attributes:
      name: the ``arch`` string of ``models.build`` and the configs.
      module: the Flax Linen class; ``build`` constructs it with ``num_classes`` and the
        ``ModelOptions`` keywords. Its field defaults are the reference's BatchNorm mode and
        momentum for the stage (``default_batch_norm``, ``default_bn_momentum``).
      reference: the reference's file and class the module mirrors (for readers and
        ``compare-torch``).
      from_scratch: regexes (``re.search`` on the path) of the new layers: the reference's
        ``from_scratch_layers``, trained at 10x (weights) / 20x (biases) the base rate.
      not_training: regexes of the parameters the reference never updates (``not_training``
        layers and BN affine parameters outside every optimizer group).
      backbone: the backbone family (size inference, the MXNet ImageNet file).
      backbone_prefix: prefix of the backbone's PyTorch names ("backbone." for DeepLab).
      classifier: PyTorch name of the classifier weight (``num_classes + 1`` output channels);
        None for a class-agnostic model (``num_classes`` unused, 0).
      ignored_torch_names: tensors of usual pretrained files that the model has no place for and
        that ``from_torch`` drops (torchvision's ImageNet ``fc``).
      pretrained_torch_is_partial: the usual ``.pth`` for this arch is a backbone without the
        classifier (torchvision's ImageNet ResNet-50), so ``convert-weights`` reads it without the
        completeness check.
    """

    name: str
    module: type
    reference: str
    from_scratch: tuple[str, ...]
    not_training: tuple[str, ...]
    backbone: BackboneSpec
    backbone_prefix: str = ""
    classifier: str | None = None
    ignored_torch_names: tuple[str, ...] = ()
    pretrained_torch_is_partial: bool = False

    def __post_init__(self):
        for pattern in self.from_scratch + self.not_training:
            re.compile(pattern)  # a typo fails at import, not at the first training step

    @property
    def default_batch_norm(self) -> str:
        """The reference's BatchNorm mode for this stage ("frozen" or "batch")."""
        return self.module.__dataclass_fields__["batch_norm"].default

    @property
    def default_bn_momentum(self) -> float:
        """The stage's BN momentum in Flax convention (1 - PyTorch's momentum)."""
        return self.module.__dataclass_fields__["bn_momentum"].default

    @property
    def has_classes(self) -> bool:
        """Whether the outputs have ``num_classes + 1`` channels (False: class-agnostic)."""
        return self.classifier is not None

    def infer_size(self, arrays: Mapping[str, Any]) -> dict:
        """``{"width", "blocks"}`` of this arch's backbone in a torch-named state dict."""
        return self.backbone.infer_size(arrays, self.backbone_prefix)

    def is_from_scratch(self, path: str) -> bool:
        """Whether the "/"-joined path (Flax path or PyTorch name with "/") is in a new layer."""
        return any(re.search(p, path) for p in self.from_scratch)

    def optimizer_rules(self) -> dict[str, tuple]:
        """The groups of ``param_label`` as the regex rules of ``hfpl_jax.train.optimizers``
        (a config's ``optim.lr_mults``, ``optim.wd_mults``, ``optim.frozen``)::

            lr_mults: (from_scratch + "(.*/)?bias$", 20), (from_scratch, 10), ("(^|/)bias$", 2)
            wd_mults: ("(^|/)bias$", 0)
            frozen:   not_training
        """
        scratch_bias = tuple(
            (p + r"(.*/)?bias$", LR_MULTIPLIERS["scratch_bias"]) for p in self.from_scratch
        )
        scratch = tuple((p, LR_MULTIPLIERS["scratch_weight"]) for p in self.from_scratch)
        return {
            "lr_mults": scratch_bias + scratch + ((_BIAS, LR_MULTIPLIERS["bias"]),),
            "wd_mults": ((_BIAS, float(WEIGHT_DECAY["bias"])),),
            "frozen": self.not_training,
        }

    def param_label(self, path: str) -> str:
        """Optimizer group of one "/"-joined parameter path: "frozen", "weight", "bias",
        "scratch_weight" or "scratch_bias" (the reference's ``get_parameter_groups`` after
        ``Net.train()``; see ``hfpl_jax.models``)."""
        if any(re.search(p, path) for p in self.not_training):
            return "frozen"
        scratch = self.is_from_scratch(path)
        leaf = path.rsplit("/", 1)[-1]
        if leaf == "bias":
            return "scratch_bias" if scratch else "bias"
        if leaf == "kernel":
            return "scratch_weight" if scratch else "weight"
        # Only BN scale/bias are not conv parameters, and they are matched as frozen above.
        raise ValueError(f"param_label: unexpected parameter {path!r} for arch {self.name!r}")
