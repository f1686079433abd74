"""Make the golden fixtures of the models area by running the official PyTorch code.

Commands that produced the committed fixtures (torch 2.13.0 CPU, float32, 1 thread):

    .venv/bin/python scripts/make_golden_models.py --reference /work/ref/hfpl --out tests/testdata \
        --only resize seam affinity deeplab
    # The ResNet-50 part runs torchvision's model (the reference has none); torchvision is not a
    # dependency of hfpl-jax, so it was installed beside the venv:
    .venv/bin/pip install --no-deps --target /tmp/tvlib torchvision==0.28.0
    PYTHONPATH=/tmp/tvlib .venv/bin/python scripts/make_golden_models.py \
        --reference /work/ref/hfpl --out tests/testdata --only resnet50

Writes:
  golden_models_resize.npz   torch ``F.interpolate(mode="bilinear")`` on random inputs: both
                             ``align_corners`` settings, up- and downsampling, size or scale_factor.
  golden_models_seam.npz     the reference ``network/resnet38_SEAM.Net`` (full size) in eval mode,
                             every parameter and buffer derived from (seed, name) by
                             ``hfpl_jax.weights.seeded_state_dict``; outputs at 1x64x64 and 1x75x61,
                             and gradients of a fixed scalar test loss.
  golden_models_affinity.npz, golden_models_deeplab.npz, golden_models_resnet50.npz
                             the same for AffinityNet, DeepLab-LargeFOV and the ResNet-50 CAM net
                             (full size too; the ResNet-50 part runs torchvision's resnet50).

Only inputs are regenerated from seeds; parameters are never stored (both sides derive them with
the same NumPy function). The reference code is imported from ``--reference`` and never copied.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from hfpl_jax.reference import import_reference

RESIZE_CASES = [
    # (name, in_hw, out_hw or None, scale_factor or None, align_corners)
    ("up_ac", (8, 8), (64, 64), None, True),
    ("up_hp", (8, 8), (64, 64), None, False),
    ("odd_up_ac", (10, 8), (75, 61), None, True),
    ("odd_up_hp", (10, 8), (75, 61), None, False),
    ("down_ac", (64, 64), (17, 9), None, True),
    ("down_hp", (64, 64), (17, 9), None, False),
    ("odd_down_hp", (75, 61), (10, 8), None, False),
    ("mixed_ac", (13, 40), (29, 7), None, True),
    ("mixed_hp", (13, 40), (29, 7), None, False),
    ("to_one_ac", (5, 6), (1, 1), None, True),
    ("to_one_hp", (5, 6), (1, 1), None, False),
    ("scale03_ac", (40, 45), None, 0.3, True),
    ("scale17_hp", (12, 9), None, 1.7, False),
    ("scale101_hp", (50, 50), None, 1.01, False),
]


def make_resize(out_dir: str) -> None:
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(0)
    arrays = {}
    for name, in_hw, out_hw, scale, align_corners in RESIZE_CASES:
        x = rng.standard_normal((1, 2, *in_hw)).astype(np.float32)
        if out_hw is not None:
            y = F.interpolate(
                torch.from_numpy(x), size=out_hw, mode="bilinear", align_corners=align_corners
            )
        else:
            y = F.interpolate(
                torch.from_numpy(x),
                scale_factor=scale,
                mode="bilinear",
                align_corners=align_corners,
            )
        arrays[f"{name}/input"] = x.transpose(0, 2, 3, 1)
        arrays[f"{name}/output"] = y.numpy().transpose(0, 2, 3, 1)
    _save(os.path.join(out_dir, "golden_models_resize.npz"), arrays)


def _save(path: str, arrays: dict) -> None:
    tmp = path + ".tmp.npz"
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)
    print(f"wrote {path} ({os.path.getsize(path) / 1e6:.2f} MB, {len(arrays)} arrays)")


# ------------------------------------------------------------------------------------------------
# Shared conventions with tests/parity_test.py (keep in sync; documented there too).

SEED = 0  # hfpl_jax.weights.seeded_state_dict(arch, SEED, ...)
INPUT_SHAPES = {"64": (1, 64, 64, 3), "75x61": (1, 75, 61, 3)}


def make_input(key: str) -> np.ndarray:
    """NHWC float32 input, ``default_rng(7 + index).standard_normal``."""
    index = list(INPUT_SHAPES).index(key)
    return np.random.default_rng(7 + index).standard_normal(INPUT_SHAPES[key]).astype(np.float32)


def loss_weights(shape_nhwc) -> np.ndarray:
    """Fixed weights ``cos(0.37 * i)`` in NHWC order for the scalar test loss sum(w * output)."""
    size = int(np.prod(shape_nhwc))
    return np.cos(0.37 * np.arange(size, dtype=np.float64)).astype(np.float32).reshape(shape_nhwc)


def _nchw(x):
    import torch

    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def _nhwc(t):
    return t.detach().numpy().transpose(0, 2, 3, 1).copy()


def _test_loss(outputs_nchw: dict):
    """sum over outputs of sum(loss_weights * output), weights laid out in NHWC order."""
    total = 0.0
    for value in outputs_nchw.values():
        w = loss_weights(tuple(value.shape[i] for i in (0, 2, 3, 1)))
        total = total + (value * _nchw(w)).sum()
    return total


def _load(net, state: dict) -> None:
    import torch

    missing, unexpected = net.load_state_dict(
        {k: torch.from_numpy(np.array(v)) for k, v in state.items()}, strict=True
    )
    assert not missing and not unexpected


def _grad_summary(net, prefix: str, full: tuple, slices: dict) -> dict:
    """Gradient norms of every parameter, full gradients of ``full``, slices of others."""
    out = {}
    names, norms = [], []
    for name, p in net.named_parameters():
        if p.grad is None:
            continue
        names.append(name)
        norms.append(float(p.grad.double().norm()))
        if name in full:
            out[f"{prefix}/grad/{name}"] = p.grad.numpy().copy()
        if name in slices:
            out[f"{prefix}/grad_slice/{name}"] = p.grad.numpy()[slices[name]].copy()
    out[f"{prefix}/grad_norm_names"] = np.array(names)
    out[f"{prefix}/grad_norms"] = np.array(norms, np.float64)
    return out


def _parameter_groups(net, frozen_after_train: bool) -> dict:
    """Group index (0-3) of each parameter name as the reference's get_parameter_groups gives."""
    groups = net.get_parameter_groups()
    by_id = {id(p): i for i, group in enumerate(groups) for p in group}
    if frozen_after_train:
        net.train()  # Net.train(): freezes not_training and every BN (requires_grad=False)
    names, labels = [], []
    for name, p in net.named_parameters():
        names.append(name)
        if not p.requires_grad or id(p) not in by_id:
            labels.append(-1)  # no update and no weight decay
        else:
            labels.append(by_id[id(p)])
    net.eval()
    return {"group_names": np.array(names), "group_labels": np.array(labels, np.int32)}


def make_seam(out_dir: str, reference: str) -> None:
    """Full-size SEAM (network/resnet38_SEAM.Net), eval mode."""
    import_reference(reference)
    import network.resnet38_SEAM as seam_module

    from hfpl_jax.weights import seeded_state_dict

    net = seam_module.Net()
    arrays = {}
    arrays.update(_parameter_groups(net, frozen_after_train=True))
    _load(net, seeded_state_dict("seam", SEED, 20))
    net.eval()  # resnet38d.Net.train(False) freezes not_training and BN again: undo after it
    for p in net.parameters():
        p.requires_grad_(True)
    full = ("fc8.weight", "f8_3.weight", "f8_4.weight", "f9.weight", "conv1a.weight")
    slices = {
        "b4_3.conv_branch2a.weight": np.s_[:8, :8],
        "b7.conv_branch2b2.weight": np.s_[:16, :16],
        "b6.bn_branch2b1.weight": np.s_[:],
        "bn7.weight": np.s_[:],
        "b3.bn_branch2a.bias": np.s_[:],
    }
    for key in INPUT_SHAPES:
        x = make_input(key)
        arrays[f"{key}/input"] = x
        net.zero_grad()
        cam, cam_rv, logits = net(_nchw(x))
        outputs = {"cam": cam, "cam_rv": cam_rv, "logits": logits}
        _test_loss(outputs).backward()
        for name, value in outputs.items():
            arrays[f"{key}/{name}"] = _nhwc(value)
        arrays.update(_grad_summary(net, key, full if key == "64" else (), slices))
    _save(os.path.join(out_dir, "golden_models_seam.npz"), arrays)


def make_affinity(out_dir: str, reference: str) -> None:
    """Full-size AffinityNet (network/resnet38_aff.Net), eval mode: features, pair and dense aff."""
    import_reference(reference)
    import network.resnet38_aff as aff_module
    import torch
    import torch.nn.functional as F

    from hfpl_jax.weights import seeded_state_dict

    net = aff_module.Net()
    arrays = {}
    arrays.update(_parameter_groups(net, frozen_after_train=True))
    _load(net, seeded_state_dict("affinity", SEED, 0))
    net.eval()  # resnet38d.Net.train(False) freezes not_training and BN again: undo after it
    for p in net.parameters():
        p.requires_grad_(True)
    captured = {}
    net.f9.register_forward_hook(lambda m, i, o: captured.__setitem__("f9", o))
    full = ("f9.weight", "f8_3.weight")
    slices = {
        "b5.conv_branch2a.weight": np.s_[:8, :8],
        "conv1a.weight": np.s_[:],
        "f8_5.weight": np.s_[:16, :64],
        "b7.bn_branch2b2.bias": np.s_[:],
    }
    for key in INPUT_SHAPES:
        x = make_input(key)
        arrays[f"{key}/input"] = x
        net.zero_grad()
        aff = net(_nchw(x))  # (N, K, P)
        features = F.elu(captured["f9"])
        w = loss_weights(aff.shape)
        (aff * torch.from_numpy(w)).sum().backward()
        arrays[f"{key}/affinity"] = aff.detach().numpy().copy()
        arrays[f"{key}/features"] = _nhwc(features)
        arrays.update(_grad_summary(net, key, full if key == "64" else (), slices))
        with torch.no_grad():
            arrays[f"{key}/dense"] = net(_nchw(x), to_dense=True).numpy().copy()
    _save(os.path.join(out_dir, "golden_models_affinity.npz"), arrays)


def make_deeplab(out_dir: str, reference: str) -> None:
    """Full-size DeepLab-LargeFOV (lib/net/deeplabv1.py): eval forward, and one training-mode
    forward (batch statistics, dropout set to 0) with the updated running statistics."""
    import_reference(reference)
    import torch
    from net.deeplabv1 import deeplabv1

    from hfpl_jax.weights import seeded_state_dict

    class Cfg:
        MODEL_BACKBONE = "resnet38"
        MODEL_BACKBONE_PRETRAIN = False
        MODEL_NUM_CLASSES = 21
        TRAIN_BN_MOM = 0.0003

    net = deeplabv1(Cfg())
    arrays = {}
    arrays.update(_parameter_groups(net, frozen_after_train=False))
    _load(net, seeded_state_dict("deeplab_largefov", SEED, 20))
    net.eval()
    for key in INPUT_SHAPES:
        x = make_input(key)
        arrays[f"{key}/input"] = x
        with torch.no_grad():
            arrays[f"{key}/logits"] = _nhwc(net(_nchw(x)))
    # Training mode as the final stage runs it (net.train() is never called; modules start in
    # training mode): batch statistics over the batch, running stats updated (momentum 0.0003,
    # unbiased variance). Dropout probabilities set to 0 so the pass is deterministic.
    for module in net.modules():
        if isinstance(module, torch.nn.Dropout | torch.nn.Dropout2d):
            module.p = 0.0
    # Set the flags directly: Module.train() would call the backbone's Net.train() override,
    # which puts every BN back in eval mode; the final stage never calls it.
    for module in net.modules():
        module.training = True
    x = np.concatenate([make_input("64"), make_input("64")[:, ::-1] * 0.5], axis=0)
    arrays["train/input"] = x
    with torch.no_grad():
        arrays["train/logits"] = _nhwc(net(_nchw(x)))
    state = net.state_dict()
    for name in ("bn_fov", "bn_fov2", "backbone.bn7", "backbone.b4.bn_branch2a",
                 "backbone.b6.bn_branch2b1"):  # fmt: skip
        for leaf in ("running_mean", "running_var", "num_batches_tracked"):
            arrays[f"train/{name}.{leaf}"] = state[f"{name}.{leaf}"].numpy().copy()
    _save(os.path.join(out_dir, "golden_models_deeplab.npz"), arrays)


def make_resnet50(out_dir: str, reference: str) -> None:
    """torchvision ResNet-50 (layer4 stride 1) + 1x1 classifier + AC upsampling, eval mode.

    Needs torchvision (``pip install torchvision --no-deps``); the reference has no ResNet-50 CAM.
    """
    import torch
    import torch.library
    import torch.nn.functional as F

    original = torch.library.register_fake
    # A CPU torch without torchvision's compiled ops: skip registering fake kernels for them (only
    # the pure-Python model code is used here).
    torch.library.register_fake = lambda *args, **kwargs: lambda f: f
    try:
        import torchvision
    finally:
        torch.library.register_fake = original

    from hfpl_jax.weights import seeded_state_dict

    backbone = torchvision.models.resnet50()
    backbone.layer4[0].conv2.stride = (1, 1)
    backbone.layer4[0].downsample[0].stride = (1, 1)
    classifier = torch.nn.Conv2d(2048, 21, 1, bias=False)
    state = seeded_state_dict("resnet50_cam", SEED, 20)
    classifier.weight.data = torch.from_numpy(state.pop("classifier.weight"))
    missing, unexpected = backbone.load_state_dict(
        {k: torch.from_numpy(np.array(v)) for k, v in state.items()}, strict=False
    )
    assert sorted(missing) == ["fc.bias", "fc.weight"] and not unexpected, (missing, unexpected)
    backbone.eval()
    classifier.eval()
    arrays = {"torchvision_version": np.array(torchvision.__version__)}
    for key in INPUT_SHAPES:
        x = make_input(key)
        arrays[f"{key}/input"] = x
        with torch.no_grad():
            t = _nchw(x)
            b = backbone
            t = b.maxpool(b.relu(b.bn1(b.conv1(t))))
            t = b.layer4(b.layer3(b.layer2(b.layer1(t))))
            logits = classifier(t)
            cam = F.interpolate(logits, x.shape[1:3], mode="bilinear", align_corners=True)
        arrays[f"{key}/logits"] = _nhwc(logits)
        arrays[f"{key}/cam"] = _nhwc(cam)
    _save(os.path.join(out_dir, "golden_models_resnet50.npz"), arrays)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reference", required=True, help="checkout of the official HFPL code")
    parser.add_argument("--out", default="tests/testdata", help="output folder")
    parser.add_argument(
        "--only", nargs="*", default=None, help="subset of: resize seam affinity deeplab resnet50"
    )
    args = parser.parse_args(argv)
    if not os.path.isdir(os.path.join(args.reference, "network")):
        raise FileNotFoundError(
            f"--reference {args.reference!r}: expected the HFPL checkout (with network/)"
        )
    import torch

    torch.set_num_threads(1)
    parts = args.only or ["resize", "seam", "affinity", "deeplab", "resnet50"]
    os.makedirs(args.out, exist_ok=True)
    makers = {"resize": make_resize, "seam": make_seam, "affinity": make_affinity,
              "deeplab": make_deeplab, "resnet50": make_resnet50}  # fmt: skip
    unknown = sorted(set(parts) - set(makers))
    if unknown:
        parser.error(f"--only: unknown part(s) {unknown}; choose from {sorted(makers)}")
    for part in parts:
        if part == "resize":
            make_resize(args.out)
        else:
            makers[part](args.out, args.reference)
    return 0


if __name__ == "__main__":
    sys.exit(main())
