"""Run the user's checkout of the official HFPL code (PyTorch) beside hfpl-jax.

Used by the parity tool (``hfpl_jax.parity``), the training-step benchmark and the golden-fixture
scripts. Nothing of the reference is copied into hfpl-jax: ``import_reference`` puts the checkout
on ``sys.path`` (with small shims for current libraries), ``build_seam``/``build_affinity``/
``build_deeplab_largefov`` construct its modules, and ``CamLossCode`` reads the CAM training loss
from the checkout's ``train_cam_voc.py`` with ``ast`` at run time and executes it as is.

The loss code is the body of the training loop, ``for iter, pack in enumerate(...)``, from its
first statement to ``loss = ...`` (the forward passes of both branches and every loss term), plus
the module-level helpers it calls (``adaptive_min_pooling_loss``, ``max_onehot``). It runs in a
namespace that provides what the script's top level would: ``torch``, ``F``, ``np``, the
reference's ``tool.probutils`` and ``tool.visualization``, ``model``, ``pack`` (names, images
NCHW, labels) and ``args`` (the loss options of the script's command line).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import os
import sys
import types
import warnings

import numpy as np

CAM_LOSS_FUNCTIONS = ("adaptive_min_pooling_loss", "max_onehot")


def import_reference(reference: str, *, cpu_only: bool = True) -> str:
    """Put the checkout (and its ``lib/``) on ``sys.path``, with shims; returns its absolute path.

    Shims (none edits the reference): ``np.bool`` -> ``bool``; with ``cpu_only`` (the default),
    ``torch.Tensor.cuda`` returns the tensor, so that the reference's ``.cuda()`` calls run on the
    CPU (pass False to run it on a GPU); ``pydensecrf`` (imported by ``tool/visualization.py``,
    unused here) is a stub when it is not installed.

    Raises:
      FileNotFoundError: ``reference`` is not a checkout of the official code.
    """
    reference = os.path.abspath(reference)
    for marker in ("network/resnet38_SEAM.py", "tool/probutils.py"):
        if not os.path.isfile(os.path.join(reference, marker)):
            raise FileNotFoundError(
                f"--reference {reference!r} is not a checkout of the official HFPL code "
                f"(missing {marker})"
            )
    for path in (reference, os.path.join(reference, "lib")):
        if path not in sys.path:
            sys.path.insert(0, path)
    if not hasattr(np, "bool"):
        np.bool = bool  # noqa: NPY001 - the reference still uses np.bool
    import torch

    if cpu_only:
        torch.Tensor.cuda = lambda self, *args, **kwargs: self
    # The reference has `version is 'torch'` comparisons that current Python warns about.
    warnings.filterwarnings("ignore", category=SyntaxWarning)
    if "pydensecrf" not in sys.modules:
        try:
            import pydensecrf  # noqa: F401
        except ImportError:
            stub = types.ModuleType("pydensecrf")
            stub.densecrf = types.ModuleType("pydensecrf.densecrf")
            stub.utils = types.ModuleType("pydensecrf.utils")
            stub.utils.unary_from_softmax = None
            sys.modules.update({"pydensecrf": stub, "pydensecrf.densecrf": stub.densecrf,
                                "pydensecrf.utils": stub.utils})  # fmt: skip
    return reference


def build_seam(num_classes: int = 20):
    """The reference's SEAM: ``network/resnet38_SEAM.Net`` (20 classes, VOC) or
    ``network/resnet38_SEAM_coco.Net`` (80, COCO). The checkout must have been imported."""
    if num_classes == 20:
        from network.resnet38_SEAM import Net
    elif num_classes == 80:
        from network.resnet38_SEAM_coco import Net
    else:
        raise ValueError(f"the reference SEAM has 20 (VOC) or 80 (COCO) classes, not {num_classes}")
    return Net()


def build_affinity(num_classes: int = 0):
    """The reference's AffinityNet, ``network/resnet38_aff.Net`` (class-agnostic)."""
    from network.resnet38_aff import Net

    return Net()


def build_deeplab_largefov(num_classes: int = 20):
    """The reference's final model, ``lib/net/deeplabv1.deeplabv1`` on ResNet-38 with the final
    stage's BN momentum 0.0003, without its ImageNet download (weights are loaded after)."""
    from net.deeplabv1 import deeplabv1

    config = types.SimpleNamespace(
        MODEL_BACKBONE="resnet38",
        MODEL_BACKBONE_PRETRAIN=False,
        MODEL_NUM_CLASSES=num_classes + 1,
        TRAIN_BN_MOM=0.0003,
    )
    return deeplabv1(config)


def loop_statements(source: str, path: str) -> ast.Module:
    """The statements of the ``for iter, pack in ...`` loop body of ``source`` up to ``loss = ...``.

    Raises:
      ValueError: ``source`` (read from ``path``) has no such loop.
    """
    for node in ast.walk(ast.parse(source)):
        if (
            isinstance(node, ast.For)
            and isinstance(node.target, ast.Tuple)
            and [getattr(e, "id", None) for e in node.target.elts] == ["iter", "pack"]
        ):
            body = []
            for statement in node.body:
                body.append(statement)
                if (
                    isinstance(statement, ast.Assign)
                    and isinstance(statement.targets[0], ast.Name)
                    and statement.targets[0].id == "loss"
                ):
                    return ast.Module(body=body, type_ignores=[])
    raise ValueError(
        f"{path}: the training loop ('for iter, pack in ...: ... loss = ...') is missing"
    )


def inference_loop_statements(source: str, path: str) -> ast.Module:
    """The body of ``infer_cam_voc.py``'s ``for iter, (img_name, img_list, label) in ...`` loop.

    Raises:
      ValueError: ``source`` (read from ``path``) has no such loop.
    """
    for node in ast.walk(ast.parse(source)):
        if (
            isinstance(node, ast.For)
            and isinstance(node.target, ast.Tuple)
            and len(node.target.elts) == 2
            and getattr(node.target.elts[0], "id", None) == "iter"
            and isinstance(node.target.elts[1], ast.Tuple)
        ):
            return ast.Module(body=node.body, type_ignores=[])
    raise ValueError(f"{path}: the inference loop 'for iter, (img_name, ...) in ...' is missing")


def module_functions(source: str, names: tuple[str, ...], path: str) -> ast.Module:
    """The top-level ``def`` statements of ``source`` named ``names`` (all must exist)."""
    defs = [n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef) and n.name in names]
    if len(defs) != len(names):
        raise ValueError(f"{path}: expected the functions {names}")
    return ast.Module(body=defs, type_ignores=[])


class CamLossCode:
    """The CAM training loss of the checkout's ``train_cam_voc.py``, compiled (see module doc).

    ``namespace(model, images, labels, ...)`` builds the names the code reads; ``run(namespace)``
    executes the helpers and the loop body in it and returns it, with ``loss``, ``loss_cls``,
    ``loss_er``, ``loss_ecr``, ``loss_fs1`` and every intermediate of the loop body. The checkout
    must have been imported (``import_reference``).
    """

    def __init__(self, reference: str):
        self.path = os.path.join(os.path.abspath(reference), "train_cam_voc.py")
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f"--reference: {self.path!r} does not exist")
        with open(self.path) as f:
            source = f.read()
        self.functions = compile(
            module_functions(source, CAM_LOSS_FUNCTIONS, self.path), self.path, "exec"
        )
        self.body = compile(loop_statements(source, self.path), self.path, "exec")

    @staticmethod
    def namespace(
        model,
        images,
        labels,
        *,
        loss_weight: float = 0.2,
        num_samples: int = 10,
        fsl: bool = True,
        fsl_mu: float = 2.5,
        fsl_sigma: float = 5.0,
    ) -> dict:
        """Names for the loop body: ``images`` an NCHW tensor, ``labels`` an ``(N, K)`` tensor,
        the ``args`` fields as ``train_cam_voc.py``'s command-line options."""
        import torch
        import torch.nn.functional as F  # noqa: N812
        from tool import probutils, visualization

        return {
            "torch": torch,
            "F": F,
            "np": np,
            "probutils": probutils,
            "visualization": visualization,
            "model": model,
            "pack": ([str(i) for i in range(images.shape[0])], images, labels),
            "args": argparse.Namespace(
                loss_weight=loss_weight,
                num_samples=num_samples,
                fsl=fsl,
                fsl_mu=fsl_mu,
                fsl_sigma=fsl_sigma,
            ),
        }

    def run(self, namespace: dict, isl_indices: np.ndarray | None = None) -> dict:
        """Execute the loss code in ``namespace``; ``isl_indices`` ``(N*K, S)`` int64, when given,
        replaces the draws of ``torch.multinomial`` (importance sampling) for a deterministic run.
        """
        import torch

        with contextlib.ExitStack() as stack:
            if isl_indices is not None:
                original = torch.multinomial
                stack.callback(setattr, torch, "multinomial", original)
                torch.multinomial = lambda probs, num_samples, replacement=False: torch.from_numpy(
                    isl_indices
                )
            exec(self.functions, namespace)  # noqa: S102 - the reference's own code, by design
            exec(self.body, namespace)  # noqa: S102
        return namespace
