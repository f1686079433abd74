"""Make the golden fixtures of the models area by running the official PyTorch code.

Commands that produced the committed fixtures (torch 2.13.0 CPU, float32, 1 thread):

    .venv/bin/python scripts/make_golden_models.py --reference /work/ref/hfpl --out tests/testdata \
        --only resize seam affinity deeplab
    # The ResNet-50 part runs torchvision's model (the reference has none); torchvision is not a
    # dependency of hfpl-jax, so it was installed beside the venv:
    .venv/bin/pip install --no-deps --target /tmp/tvlib torchvision==0.28.0
    PYTHONPATH=/tmp/tvlib .venv/bin/python scripts/make_golden_models.py \
        --reference /work/ref/hfpl --out tests/testdata --only resnet50
    # The float64 golden of the SEAM fixture was added later, on another CPU (an AMD EPYC, where
    # PyTorch's float32 kernels round differently), keeping the float32 arrays bit for bit
    # (about 4 minutes on one core; it prints how far this CPU's float32 run is from them):
    .venv/bin/python scripts/make_golden_models.py --reference /work/ref/hfpl \
        --out tests/testdata --only seam --keep-float32

Writes:
  golden_models_resize.npz   torch ``F.interpolate(mode="bilinear")`` on random inputs: both
                             ``align_corners`` settings, up- and downsampling, size or scale_factor.
  golden_models_seam.npz     the reference ``network/resnet38_SEAM.Net`` (full size) in eval mode,
                             every parameter and buffer derived from (seed, name) by
                             ``hfpl_jax.weights.seeded_state_dict``; outputs at 1x64x64 and 1x75x61,
                             and gradients of a fixed scalar test loss; the same in float64 (views),
                             the float32 rounding sensitivity of each result, and the ReLU inputs
                             within float32 reach of 0 ("kinks", ``make_seam``).
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


# ------------------------------------------------------------------------------------------------
# SEAM and AffinityNet: the float32 golden, the float64 golden and the float32 conditioning of the
# test problem (what tests/parity_test.py judges the port's float32 results by).

SEAM_FULL_GRADS = ("fc8.weight", "f8_3.weight", "f8_4.weight", "f9.weight", "conv1a.weight")
SEAM_GRAD_SLICES = {
    "b4_3.conv_branch2a.weight": np.s_[:8, :8],
    "b7.conv_branch2b2.weight": np.s_[:16, :16],
    "b6.bn_branch2b1.weight": np.s_[:],
    "bn7.weight": np.s_[:],
    "b3.bn_branch2a.bias": np.s_[:],
}
AFFINITY_FULL_GRADS = ("f9.weight", "f8_3.weight")
AFFINITY_GRAD_SLICES = {
    "b5.conv_branch2a.weight": np.s_[:8, :8],
    "conv1a.weight": np.s_[:],
    "f8_5.weight": np.s_[:16, :64],
    "b7.bn_branch2b2.bias": np.s_[:],
}
# The float64 golden is stored for views (float64 does not compress; the float32 arrays stay
# whole): the outputs below (the others whole), full gradients their first 16 x 64 channels
# (conv1a whole), gradient slices whole. tests/parity_test.py cuts the same views.
OUTPUT_VIEWS = {
    "cam": np.s_[:, ::3, ::3, :],  # every third row and column
    "cam_rv": np.s_[:, ::3, ::3, :],
    "features": np.s_[..., :64],  # the first 64 of 448 channels
}
HEAD_GRAD_VIEW = np.s_[:16, :64]
FLOAT32_UNIT_ROUNDOFF = 2.0**-24
# An input of a ReLU (or of the affinity's |f_to - f_from|) in the float64 run closer to 0 than
# KINK_REACH x the largest float32 error of its layer (PyTorch float32 against float64) is a
# "kink": a float32 implementation may put it on either side of 0. The port errs by 0.4-1.3x
# PyTorch's per-layer error; 8 is ample.
KINK_REACH = 8.0
# Rounding sensitivity: the float64 results' change when every datum (input, parameter, buffer)
# is scaled by (1 + t u s), s = +-1 at random, divided by t. t keeps the perturbation ~1e-3 of the
# nearest kink, so it measures the smooth part (u x condition) and flips nothing.
SENSITIVITY_T = 1e-3
PAIRS = "pairs"  # kink layer name of the affinity's f_to - f_from, (N, C, K, P)


class _KinkInputs:
    """Record the inputs of the reference's ``F.relu`` and ``torch.abs`` calls (the functions
    whose derivative jumps at 0), each named by the module whose output it is.

    Inside the ``with`` block those attributes are recording wrappers (the reference is not
    edited). In-place ReLUs run out of place (same values) so the recorded inputs stay intact.
    ``calls`` holds ``(name, input, output)`` for the calls whose input carries a gradient; the name
    is the module's, ``PAIRS`` for ``torch.abs`` (only ``network/resnet38_aff.Net`` calls it, on
    ``ft - ff``), or None."""

    def __init__(self, net):
        self.net = net
        self.calls: list = []
        self._producer: dict[int, tuple[str, object]] = {}

    def __enter__(self):
        import torch
        import torch.nn.functional as F

        self._hooks = [
            module.register_forward_hook(self._remember(name))
            for name, module in self.net.named_modules()
            if isinstance(module, torch.nn.Conv2d | torch.nn.BatchNorm2d)
        ]
        self._relu, self._abs = F.relu, torch.abs

        def relu(x, inplace=False):
            y = self._relu(x)
            if x.requires_grad:
                name, tensor = self._producer.get(id(x), (None, None))
                self.calls.append((name if tensor is x else None, x, y))
            return y

        def absolute(x, *args, **kwargs):
            y = self._abs(x, *args, **kwargs)
            if x.requires_grad:
                self.calls.append((PAIRS, x, y))
            return y

        F.relu, torch.abs = relu, absolute
        return self

    def _remember(self, name):
        def hook(module, inputs, output):
            self._producer[id(output)] = (name, output)

        return hook

    def __exit__(self, *exc):
        import torch
        import torch.nn.functional as F

        F.relu, torch.abs = self._relu, self._abs
        for hook in self._hooks:
            hook.remove()
        return False

    def named_inputs(self) -> dict:
        """``{name: input as float64 NumPy}`` of the named calls."""
        return {n: x.detach().double().numpy() for n, x, _ in self.calls if n is not None}


def _reference_net(net_class, state: dict, dtype):
    """A reference network in eval mode with every parameter requiring a gradient, in ``dtype``."""
    net = net_class()
    _load(net, state)
    net.to(dtype)
    net.eval()  # resnet38d.Net.train(False) freezes not_training and BN again: undo after it
    for p in net.parameters():
        p.requires_grad_(True)
    return net


def _seam_backward(net, x: np.ndarray, dtype) -> dict:
    """SEAM: forward ``x`` (NHWC) in ``dtype``, backward of the test loss; outputs NHWC."""
    net.zero_grad()
    cam, cam_rv, logits = net(_nchw(x).to(dtype))
    outputs = {"cam": cam, "cam_rv": cam_rv, "logits": logits}
    total = 0.0
    for value in outputs.values():
        w = loss_weights(tuple(value.shape[i] for i in (0, 2, 3, 1)))
        total = total + (value * _nchw(w).to(dtype)).sum()
    total.backward()
    return {k: v.permute(0, 2, 3, 1) for k, v in outputs.items()}


def _affinity_backward(net, x: np.ndarray, dtype) -> dict:
    """AffinityNet: forward, backward of ``sum(cos(0.37 i) * affinity)``; the affinity ``(N, K,
    P)`` and the features ``elu(f9(...))`` NHWC."""
    import torch
    import torch.nn.functional as F

    captured = {}
    hook = net.f9.register_forward_hook(lambda m, i, o: captured.__setitem__("f9", o))
    net.zero_grad()
    aff = net(_nchw(x).to(dtype))  # (N, K, P)
    hook.remove()
    features = F.elu(captured["f9"])
    (aff * torch.from_numpy(loss_weights(aff.shape)).to(dtype)).sum().backward()
    return {"affinity": aff, "features": features.permute(0, 2, 3, 1)}


def _float64_views(net, outputs: dict, prefix: str, full: tuple, slices: dict) -> dict:
    """``{prefix/<path>: float64 array}``: the float64 views of the outputs (tensors in the stored
    layout) and of the checked gradients (``grad/<name>``, ``grad_slice/<name>``) of ``net``."""
    out = {
        f"{prefix}/{k}": v.detach().double().numpy()[OUTPUT_VIEWS.get(k, ...)].copy()
        for k, v in outputs.items()
    }
    grads = dict(net.named_parameters())
    for name in full:
        view = ... if name == "conv1a.weight" else HEAD_GRAD_VIEW
        out[f"{prefix}/grad/{name}"] = grads[name].grad.double().numpy()[view].copy()
    for name, index in slices.items():
        out[f"{prefix}/grad_slice/{name}"] = grads[name].grad.double().numpy()[index].copy()
    return out


def _upstream_parameters(tensor, names_by_id: dict) -> set:
    """Names of the parameters whose gradient a change of ``tensor``'s cotangent can move."""
    seen, found, stack = set(), set(), [tensor.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        variable = getattr(node, "variable", None)
        if variable is not None and id(variable) in names_by_id:
            found.add(names_by_id[id(variable)])
        stack.extend(next_node for next_node, _ in node.next_functions)
    return found


def _class_tie_margin(logits: np.ndarray, logits_error: float) -> float:
    """Smallest gap between the two largest foreground scores of ``cam_d_norm`` at a pixel where
    both are positive (the reference keeps only the largest: ``network/resnet38_SEAM.Net.forward``;
    a tie within rounding would flip which), in units of the float32 error of that gap.

    ``logits`` NHWC float64; a score is ``relu(d - 1e-5) / (max_hw d + 1e-5)``, ``d = relu(logit)``,
    so its float32 error is about ``logits_error`` over its class's ``max_hw d + 1e-5``."""
    d = np.maximum(logits.transpose(0, 3, 1, 2)[:, 1:], 0.0)
    scale = d.reshape(*d.shape[:2], -1).max(-1)[..., None, None] + 1e-5
    scores = np.maximum(d - 1e-5, 0.0) / scale
    order = np.argsort(scores, axis=1)[:, -2:]
    top2 = np.take_along_axis(scores, order, axis=1)
    error = logits_error / np.take_along_axis(np.broadcast_to(scale, scores.shape), order, axis=1)
    both = top2[:, 0] > 0
    gaps = (top2[:, 1] - top2[:, 0])[both] / (error[:, 0] + error[:, 1])[both]
    return float(gaps.min()) if gaps.size else float("inf")


def _check_seam_class_ties(key: str, outputs64: dict, outputs32: dict) -> None:
    logits32, logits64 = outputs32["logits"], outputs64["logits"]
    margin = _class_tie_margin(logits64, float(np.abs(logits32 - logits64).max()))
    assert margin > KINK_REACH, f"{key}: a PCM class tie is within float32 reach ({margin:.1f})"


def _float64_golden(net_class, state, run, key, x, outputs32, kinks32, full, slices) -> dict:
    """Float64 golden and float32 conditioning of one input (see ``make_seam``).

    ``run(net, x, dtype)`` does the forward and backward pass and returns the outputs in the stored
    layout; ``outputs32`` (NumPy) and ``kinks32`` (``_KinkInputs``) come from the float32 run."""
    import torch

    net = _reference_net(net_class, state, torch.float64)
    with _KinkInputs(net) as kinks64:
        outputs = run(net, x, torch.float64)
    out = _float64_views(net, outputs, f"{key}/float64", full, slices)
    outputs64 = {k: v.detach().numpy().copy() for k, v in outputs.items()}
    del outputs
    params = dict(net.named_parameters())
    names = list(params)
    grads = {n: params[n].grad.clone() for n in names}
    # numpy's pairwise sum: torch's float64 norm of a 19M-element gradient is 1.6e-14 off it
    norms = np.array([float(np.sqrt(np.sum(np.square(g.numpy())))) for g in grads.values()])
    out[f"{key}/float64/grad_norms"] = norms

    # Kinks: inputs within KINK_REACH x their layer's float32 error of 0, and which parameter
    # gradients each can move (those upstream of it).
    z32, z64 = kinks32.named_inputs(), kinks64.named_inputs()
    names_by_id = {id(p): n for n, p in params.items()}
    rows = {"layer": [], "index": [], "z": [], "layer_error": [], "influence": []}
    for layer, z_tensor, _ in kinks64.calls:
        if layer is None:  # e.g. SEAM's PCM relu(f^T f), not a module output: must be far from 0
            z = z_tensor.detach().numpy()
            margin = float(np.abs(z).min() / (np.abs(z).max() * FLOAT32_UNIT_ROUNDOFF))
            assert margin > 1e3, f"{key}: an unnamed ReLU input is near 0 ({margin:.1f} u x max)"
            continue
        error = float(np.abs(z32[layer] - z64[layer]).max())
        close = np.argwhere(np.abs(z64[layer][0]) < KINK_REACH * error)  # (c, a, b) rows
        if not len(close):
            continue
        upstream = _upstream_parameters(z_tensor, names_by_id)
        influence = np.array([n in upstream for n in names])
        for c, i, j in close:
            value = float(z64[layer][0, c, i, j])
            rows["layer"].append(layer)
            rows["index"].append((i, j, c))
            rows["z"].append(value)
            rows["layer_error"].append(error)
            rows["influence"].append(influence)
    del kinks64
    out[f"{key}/kinks/layer"] = np.array(rows["layer"], dtype="U32")
    out[f"{key}/kinks/index"] = np.array(rows["index"], np.int32).reshape(-1, 3)
    out[f"{key}/kinks/z"] = np.array(rows["z"], np.float64)
    out[f"{key}/kinks/layer_error"] = np.array(rows["layer_error"], np.float64)
    out[f"{key}/kinks/influence"] = np.array(rows["influence"], bool).reshape(-1, len(names))
    if "logits" in outputs64 and "cam_rv" in outputs64:
        _check_seam_class_ties(key, outputs64, outputs32)

    # Rounding sensitivity (the floor of the float32 judgement): the linearised change of each
    # result when every datum is scaled by (1 + t u s), in units of the result's scale.
    rng = np.random.default_rng(SEED)
    step = SENSITIVITY_T * FLOAT32_UNIT_ROUNDOFF
    with torch.no_grad():
        for tensor in list(net.parameters()) + list(net.buffers()):
            if tensor.is_floating_point():
                tensor.mul_(torch.from_numpy(1.0 + step * rng.choice([-1.0, 1.0], tensor.shape)))
    x_perturbed = x.astype(np.float64) * (1.0 + step * rng.choice([-1.0, 1.0], x.shape))
    with _KinkInputs(net) as kinks_perturbed:
        outputs = run(net, x_perturbed, torch.float64)
    for layer, z in kinks_perturbed.named_inputs().items():
        assert np.array_equal(z > 0, z64[layer] > 0), f"{key}: the perturbation flipped {layer}"
    for path, value in _float64_views(net, outputs, key, full, slices).items():
        path = path.split("/", 1)[1]
        change = _scaled_change(value, out[f"{key}/float64/{path}"])
        out[f"{key}/rounding_sensitivity/{path}"] = np.float64(change / SENSITIVITY_T)
    out[f"{key}/rounding_sensitivity/grad_norms"] = np.array(
        [float((params[n].grad - grads[n]).norm()) / (SENSITIVITY_T * norm) if norm > 0 else 0.0
         for n, norm in zip(names, norms, strict=True)]
    )  # fmt: skip
    return out


def _scaled_change(got: np.ndarray, want: np.ndarray) -> float:
    """``max |got - want| / max |want|``."""
    return float(np.abs(got - want).max() / np.abs(want).max())


def _make_with_float64(path, net_class, state, run, full, slices, keep_float32, extra=None):
    """Write a fixture of float32 results, gradients and their float64 counterparts (the
    ``make_seam`` layout); ``extra(net, key, x)`` adds float32-only arrays per input."""
    import torch

    arrays = _parameter_groups(net_class(), frozen_after_train=True)
    net = _reference_net(net_class, state, torch.float32)
    float64 = {}
    for key in INPUT_SHAPES:
        x = make_input(key)
        arrays[f"{key}/input"] = x
        with _KinkInputs(net) as kinks32:
            outputs = run(net, x, torch.float32)
        outputs32 = {k: v.detach().numpy().copy() for k, v in outputs.items()}
        del outputs
        arrays.update({f"{key}/{k}": v for k, v in outputs32.items()})
        key_full = full if key == "64" else ()
        arrays.update(_grad_summary(net, key, key_full, slices))
        if extra is not None:
            arrays.update(extra(net, key, x))
        float64.update(
            _float64_golden(net_class, state, run, key, x, outputs32, kinks32, key_full, slices)
        )
        del kinks32
    if keep_float32:
        with np.load(path) as existing:
            missing = sorted(set(arrays) - set(existing.files))
            if missing:
                raise ValueError(f"--keep-float32: {path} has no {missing}; regenerate without it")
            kept = {k: existing[k] for k in arrays}
        for k in arrays:
            if kept[k].dtype.kind == "f" and not np.array_equal(kept[k], arrays[k]):
                drift = _scaled_change(arrays[k].astype(np.float64), kept[k].astype(np.float64))
                print(f"  float32 on this machine vs kept {k}: {drift:.2e}")
        arrays = kept
    arrays.update(float64)
    _report_float64(arrays)
    _save(path, arrays)


def _report_float64(arrays: dict) -> None:
    """Print PyTorch float32's error against float64 and the rounding sensitivity per result."""
    print(f"{'result':42s} {'fp32 err':>9s} {'sensitiv':>9s}")
    for key in INPUT_SHAPES:
        reach = np.abs(arrays[f"{key}/kinks/z"]) / arrays[f"{key}/kinks/layer_error"]
        print(f"{key}: {len(reach)} kinks, {int((reach < 1).sum())} within 1x float32 error")
        for k in sorted(a for a in arrays if a.startswith(f"{key}/float64/") and "norms" not in a):
            path = k.split("/", 2)[2]
            want = arrays[k]
            got = arrays[f"{key}/{path}"].astype(np.float64)[OUTPUT_VIEWS.get(path, ...)]
            got = got[tuple(slice(0, n) for n in want.shape)]
            sens = float(arrays[f"{key}/rounding_sensitivity/{path}"])
            print(f"  {path:40s} {_scaled_change(got, want):9.2e} {sens:9.2e}")


def make_seam(out_dir: str, reference: str, keep_float32: bool = False) -> None:
    """Full-size SEAM (network/resnet38_SEAM.Net), eval mode, in float32 and float64.

    Per input ``{key}`` (64, 75x61), besides the float32 outputs and gradients:

    - ``{key}/float64/<path>``: the same computation in float64 (weights, inputs and loss weights
      are float32 values, exact in float64) on the views ``OUTPUT_VIEWS`` of the outputs,
      ``HEAD_GRAD_VIEW`` of ``grad/<name>`` (``conv1a`` whole) and the whole
      ``grad_slice/<name>``; ``{key}/float64/grad_norms``.
    - ``{key}/rounding_sensitivity/<path>``: how much the float64 result moves per unit relative
      perturbation u = 2^-24 of every datum (input, parameter, buffer), over the result's scale:
      u times its condition number. For ``grad_norms`` the L2 change of each gradient over its
      norm.
    - ``{key}/kinks/*``: every ReLU input of the float64 run within ``KINK_REACH`` x its layer's
      float32 error of 0: ``layer`` (the module whose output the ReLU takes), ``index`` (its
      position ``(h, w, c)`` in that output, NHWC), ``z`` (its float64 value), ``layer_error``
      (that layer's largest float32 error, PyTorch float32 against float64 on this machine) and
      ``influence`` (per parameter, ``grad_norm_names`` order: whether flipping the kink moves
      that gradient). The script checks that no PCM affinity or class tie of ``cam_d_norm`` is
      within float32 reach.

    With ``keep_float32`` the float32 arrays of the existing fixture are kept (PyTorch's float32
    CPU kernels round differently on another CPU) and only the keys above are added; the drift of
    this machine's float32 run from the kept arrays is printed.
    """
    import_reference(reference)
    import network.resnet38_SEAM as seam_module

    from hfpl_jax.weights import seeded_state_dict

    path = os.path.join(out_dir, "golden_models_seam.npz")
    state = seeded_state_dict("seam", SEED, 20)
    _make_with_float64(path, seam_module.Net, state, _seam_backward, SEAM_FULL_GRADS,
                       SEAM_GRAD_SLICES, keep_float32)  # fmt: skip


def make_affinity(out_dir: str, reference: str, keep_float32: bool = False) -> None:
    """Full-size AffinityNet (network/resnet38_aff.Net), eval mode: features, pair and dense
    affinities, gradients of ``sum(cos(0.37 i) * affinity)``, and the float64 part as for SEAM
    (``make_seam``); its kinks include the affinity's ``f_to - f_from`` (layer ``PAIRS``, index
    ``(k, p, c)``: offset, "from" pixel, channel)."""
    import_reference(reference)
    import network.resnet38_aff as aff_module
    import torch

    from hfpl_jax.weights import seeded_state_dict

    def dense(net, key, x):
        with torch.no_grad():
            return {f"{key}/dense": net(_nchw(x), to_dense=True).numpy().copy()}

    path = os.path.join(out_dir, "golden_models_affinity.npz")
    state = seeded_state_dict("affinity", SEED, 0)
    _make_with_float64(path, aff_module.Net, state, _affinity_backward, AFFINITY_FULL_GRADS,
                       AFFINITY_GRAD_SLICES, keep_float32, extra=dense)  # fmt: skip


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
    parser.add_argument(
        "--keep-float32",
        action="store_true",
        help="seam, affinity: keep the float32 arrays of the existing fixture, add float64 ones",
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
        elif part in ("seam", "affinity"):
            makers[part](args.out, args.reference, keep_float32=args.keep_float32)
        else:
            makers[part](args.out, args.reference)
    return 0


if __name__ == "__main__":
    sys.exit(main())
