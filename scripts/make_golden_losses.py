"""Make the golden fixture of the losses area by running the official PyTorch code.

Command that produced the committed fixture (torch 2.13.0 CPU, float32):

    .venv/bin/python scripts/make_golden_losses.py --reference /work/ref/hfpl \\
        --out tests/testdata/golden_losses.npz

What runs where:
  * ``tool/probutils.py`` (``feature_similarity_loss``, ``sample_probs``) is imported from the
    checkout as a module.
  * ``max_norm`` (``tool/visualization.py``) and ``adaptive_min_pooling_loss``/``max_onehot``
    (``train_cam_voc.py``) live in files whose imports (cv2, pydensecrf, the VOC data code, ...)
    are not needed for them: their ``def`` statements are taken from the parsed source (``ast``)
    and executed in a namespace holding only ``torch``/``F``. Nothing is copied into this project.
  * The ER, ECR and ISL wiring (which tensors go where, the top-k size, the background channel)
    is the one-line arithmetic of ``train_cam_voc.py``'s training loop, restated below with torch.

Arrays are stored as torch produced them (NCHW); tests transpose to NHWC. Gradients are of the
scalar loss (or of ``sum(out * weights)`` for array outputs) with respect to the named input.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import os
import sys

import numpy as np


def load_reference(reference: str):
    """Returns (probutils module, namespace with max_norm, max_onehot, min-pool loss)."""
    import torch
    import torch.nn.functional as F

    path = os.path.join(reference, "tool", "probutils.py")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--reference: {path} not found (expected an arvijj/hfpl checkout)")
    spec = importlib.util.spec_from_file_location("hfpl_reference_probutils", path)
    probutils = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probutils)

    namespace = {"torch": torch, "F": F, "np": np}
    wanted = {
        os.path.join("tool", "visualization.py"): {"max_norm"},
        "train_cam_voc.py": {"adaptive_min_pooling_loss", "max_onehot"},
    }
    for rel, names in wanted.items():
        file = os.path.join(reference, rel)
        with open(file, encoding="utf-8") as f:
            tree = ast.parse(f.read(), filename=file)
        defs = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in names]
        if {d.name for d in defs} != names:
            raise ValueError(f"{file}: expected top-level functions {sorted(names)}")
        exec(compile(ast.Module(body=defs, type_ignores=[]), file, "exec"), namespace)
    return probutils, namespace


def to_np(t):
    return t.detach().cpu().numpy()


def make(reference: str) -> dict[str, np.ndarray]:
    import torch
    import torch.nn.functional as F

    torch.set_default_dtype(torch.float32)
    probutils, ref = load_reference(reference)
    rng = np.random.default_rng(20240101)
    out: dict[str, np.ndarray] = {}

    def tensor(a, grad=False):
        return torch.tensor(np.asarray(a, np.float32), requires_grad=grad)

    # ---- FSL (fast=False, as train_cam_voc.py calls it) ----------------------------------
    fsl_cases = {
        # name: (N, H, W, C, kwargs)
        "fsl_odd": (2, 13, 11, 5, dict(mu=2.5, sigma=5.0)),
        "fsl_general": (2, 9, 12, 4, dict(mu=-0.7, sigma=None, px=2.0, py=3.0)),
        "fsl_voc56": (1, 56, 56, 21, dict(mu=2.5, sigma=5.0)),
    }
    for name, (n, h, w, c, kw) in fsl_cases.items():
        x = rng.uniform(-0.1, 1.1, (n, 3, h, w))  # exercises the [0, 1] clamp
        if name == "fsl_voc56":
            # CAM-like predictions: max-normalised maps in [0, 1], background 1 - max fg.
            y = rng.uniform(0.0, 1.0, (n, c, h, w)) ** 3
            y[:, 0] = 1.0 - y[:, 1:].max(axis=1)
        else:
            y = rng.normal(0.0, 1.0, (n, c, h, w))
        x, y = x.astype(np.float32), y.astype(np.float32)
        xt, yt = tensor(x), tensor(y, grad=True)
        loss = probutils.feature_similarity_loss(
            xt, yt, kw["mu"], kw["sigma"], px=kw.get("px", 1.0), py=kw.get("py", 2.0)
        )
        loss.backward()
        # The same call in float64 (torch.cdist's matmul form loses float32 precision to
        # cancellation on smooth predictions; the float64 run is the reference value).
        y64 = torch.tensor(y.astype(np.float32).astype(np.float64), requires_grad=True)
        x64 = torch.tensor(x.astype(np.float32).astype(np.float64))
        loss64 = probutils.feature_similarity_loss(
            x64, y64, kw["mu"], kw["sigma"], px=kw.get("px", 1.0), py=kw.get("py", 2.0)
        )
        loss64.backward()
        out[f"{name}/loss64"] = to_np(loss64)
        out[f"{name}/grad_pred64"] = to_np(y64.grad).astype(np.float32)  # size; f32 is plenty
        out[f"{name}/image"] = x.astype(np.float32)
        out[f"{name}/pred"] = y.astype(np.float32)
        out[f"{name}/loss"] = to_np(loss)
        out[f"{name}/grad_pred"] = to_np(yt.grad)
        out[f"{name}/params"] = np.asarray(
            [
                kw["mu"],
                np.nan if kw["sigma"] is None else kw["sigma"],
                kw.get("px", 1.0),
                kw.get("py", 2.0),
            ],
            np.float64,
        )

    # ---- ISL: probutils.sample_probs on sigmoid(logits)[:, 1:] + 1e-5 -------------------
    n, c, h, w, s = 3, 6, 7, 9, 10  # c includes the background channel
    logits = rng.normal(0.0, 2.0, (n, c, h, w)).astype(np.float32)
    labels = (rng.uniform(size=(n, c - 1)) < 0.4).astype(np.float32)
    lt = tensor(logits, grad=True)
    probs = torch.sigmoid(lt)[:, 1:].contiguous() + 1e-5
    torch.manual_seed(7)
    samples = probutils.sample_probs(probs, s, logits=lt[:, 1:].contiguous())
    torch.manual_seed(7)
    indices = torch.multinomial(probs.detach().view(n * (c - 1), h * w), s, replacement=True)
    replay = torch.gather(lt[:, 1:].contiguous().view(n * (c - 1), h * w), 1, indices)
    if not torch.equal(replay.view(n, c - 1, s), samples):
        raise RuntimeError("torch.multinomial replay did not reproduce sample_probs' draws")
    label_full = torch.cat([torch.ones(n, 1), tensor(labels)], 1)[:, :, None, None]
    loss = F.multilabel_soft_margin_loss(samples, label_full[:, 1:].squeeze(-1))
    loss.backward()
    out["isl/logits"] = logits
    out["isl/labels"] = labels
    out["isl/indices"] = to_np(indices).reshape(n, c - 1, s).astype(np.int32)
    out["isl/samples"] = to_np(samples)
    out["isl/loss"] = to_np(loss)
    out["isl/grad_logits"] = to_np(lt.grad)

    # ---- MLSM on GAP-shaped inputs (N, C, 1, 1) -----------------------------------------
    x = tensor(rng.normal(0.0, 3.0, (4, 7, 1, 1)), grad=True)
    y = tensor(rng.uniform(size=(4, 7, 1, 1)) < 0.5)
    loss = F.multilabel_soft_margin_loss(x, y)
    loss.backward()
    out["mlsm/logits"], out["mlsm/labels"] = to_np(x), to_np(y)
    out["mlsm/loss"], out["mlsm/grad_logits"] = to_np(loss), to_np(x.grad)

    # ---- max_norm (tool/visualization.max_norm, 4-D torch path) ------------------------
    x = tensor(rng.normal(0.0, 1.0, (2, 5, 9, 7)), grad=True)
    weights = rng.normal(0.0, 1.0, (2, 5, 9, 7)).astype(np.float32)
    y = ref["max_norm"](x)
    (y * tensor(weights)).sum().backward()
    out["max_norm/x"], out["max_norm/weights"] = to_np(x), weights
    out["max_norm/out"], out["max_norm/grad_x"] = to_np(y), to_np(x.grad)

    # ---- ER, background assignment, max_onehot and ECR (train_cam_voc.py loop) ----------
    n, c, h, w = 2, 21, 9, 7  # 21 channels: the script hard-codes 21 in the ECR top-k size
    present = np.concatenate([np.ones((n, 1)), rng.uniform(size=(n, c - 1)) < 0.3], 1)
    present[:, 1] = 1.0  # at least one foreground class per image
    label = tensor(present)[:, :, None, None]
    cam1 = tensor(rng.uniform(0.0, 1.0, (n, c, h, w)), grad=True)
    cam2 = tensor(rng.uniform(0.0, 1.0, (n, c, h, w)), grad=True)
    cam_rv1 = tensor(rng.uniform(0.0, 1.0, (n, c, h, w)), grad=True)
    cam_rv2 = tensor(rng.uniform(0.0, 1.0, (n, c, h, w)), grad=True)
    m1, m2, r1, r2 = cam1 * label, cam2 * label, cam_rv1 * label, cam_rv2 * label
    loss_er = torch.mean(torch.abs(m1[:, 1:, :, :] - m2[:, 1:, :, :]))
    m1, m2 = m1.clone(), m2.clone()
    m1[:, 0, :, :] = 1 - torch.max(m1[:, 1:, :, :], dim=1)[0]
    m2[:, 0, :, :] = 1 - torch.max(m2[:, 1:, :, :], dim=1)[0]
    target2 = ref["max_onehot"](m2.detach().clone())
    target1 = ref["max_onehot"](m1.detach().clone())
    k = int(21 * h * w * 0.2)
    loss_ecr1 = torch.mean(torch.topk(torch.abs(target2 - r1).view(n, -1), k=k, dim=-1)[0])
    loss_ecr2 = torch.mean(torch.topk(torch.abs(target1 - r2).view(n, -1), k=k, dim=-1)[0])
    (loss_er + loss_ecr1 + 2.0 * loss_ecr2).backward()
    for key, t in dict(cam1=cam1, cam2=cam2, cam_rv1=cam_rv1, cam_rv2=cam_rv2).items():
        out[f"seam/{key}"] = to_np(t)
        out[f"seam/grad_{key}"] = to_np(t.grad)
    out["seam/label"] = present.astype(np.float32)
    out["seam/target1"], out["seam/target2"] = to_np(target1), to_np(target2)
    out["seam/loss_er"] = to_np(loss_er)
    out["seam/loss_ecr1"], out["seam/loss_ecr2"] = to_np(loss_ecr1), to_np(loss_ecr2)
    out["seam/k"] = np.asarray(k, np.int64)

    # ---- adaptive min-pooling loss on (cam_rv * label)[:, 1:] ----------------------------
    n, c, h, w = 3, 8, 11, 9
    present = rng.uniform(size=(n, c)) < 0.5
    present[:, 0] = True
    cam_rv = tensor(rng.normal(0.0, 1.0, (n, c, h, w)), grad=True)
    masked = cam_rv * tensor(present)[:, :, None, None]
    loss = ref["adaptive_min_pooling_loss"](masked[:, 1:, :, :])
    loss.backward()
    out["minpool/x"], out["minpool/label"] = to_np(cam_rv), present.astype(np.float32)
    out["minpool/loss"], out["minpool/grad_x"] = to_np(loss), to_np(cam_rv.grad)

    out["meta/torch_version"] = np.asarray(torch.__version__)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", required=True, help="path to an arvijj/hfpl checkout")
    parser.add_argument("--out", default="tests/testdata/golden_losses.npz")
    args = parser.parse_args(argv)
    arrays = make(args.reference)
    from hfpl_jax import atomic_io

    atomic_io.save_npz(args.out, arrays, compress=True)
    size = os.path.getsize(args.out)
    print(f"wrote {args.out}: {len(arrays)} arrays, {size / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
