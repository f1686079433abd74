"""Golden fixture for the SEAM + HFPL loss composition: the reference's own training-loop code.

Made with:

    .venv/bin/python scripts/make_golden_cam_loss.py --reference /work/ref/hfpl \
        --out tests/testdata/cam_loss_golden.npz

What it runs: the body of the training loop of the reference's ``train_cam_voc.py`` (from the
line after ``for iter, pack in enumerate(train_data_loader):`` to the line ``loss = loss_cls +
...``), read from the file with ``ast`` and executed as is, together with the module-level
``adaptive_min_pooling_loss`` and ``max_onehot`` of that file and the reference's ``tool`` package.
Nothing of the reference is copied here. The network is replaced by a stub that returns fixed random
tensors (requires_grad) for ``(cam1, cam_rv1, logits1)`` and ``(cam2, cam_rv2, logits2)``, so the
fixture pins the loss *composition* (§3.4–3.6): the order ER -> background -> targets, the 0.3
rescale of the image and the CAMs, GAP over the upsampled CAM, ISL mixing, FSL on the max-normed
logits with the de-normalised resized image, ECR top-k, min-pooling. ``torch.multinomial`` (ISL
sampling) is replaced by fixed indices, stored in the fixture, so ISL is deterministic.

Sizes: N=2, 21 channels (VOC: the ECR top-k constant 21 is hard-coded in the reference), image
and cam1 12x12, branch 2 at floor(12*0.3)=3 -> 3x3, logits1 4x4, 10 ISL samples. Stored (NCHW, as
torch): the inputs, the labels, the ISL indices, every loss term for loss_weight in {0, 0.2, 1},
and the gradients of the total loss (loss_weight 0.2) with respect to the five network outputs.

The reference is imported and its loop read by ``hfpl_jax.reference`` (``import_reference``, with
its shims for current libraries, and ``CamLossCode``).
"""

from __future__ import annotations

import argparse
import os

import numpy as np

N, C, H, W = 2, 21, 12, 12
H2 = W2 = 3  # floor(12 * 0.3)
HL = WL = 4
NUM_SAMPLES = 10


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reference", required=True, help="path to an arvijj/hfpl checkout")
    parser.add_argument("--out", default="tests/testdata/cam_loss_golden.npz")
    args = parser.parse_args()

    import torch

    from hfpl_jax.reference import CamLossCode, import_reference

    import_reference(args.reference)
    code = CamLossCode(args.reference)

    rng = np.random.default_rng(20240)
    inputs = {
        "img1": rng.standard_normal((N, 3, H, W)).astype(np.float32),
        "cam1": (rng.standard_normal((N, C, H, W)) * 2.0).astype(np.float32),
        "cam_rv1": np.abs(rng.standard_normal((N, C, H, W))).astype(np.float32),
        "logits1": (rng.standard_normal((N, C, HL, WL)) * 2.0).astype(np.float32),
        "cam2": (rng.standard_normal((N, C, H2, W2)) * 2.0).astype(np.float32),
        "cam_rv2": np.abs(rng.standard_normal((N, C, H2, W2))).astype(np.float32),
    }
    labels = np.zeros((N, C - 1), np.float32)
    labels[0, [2, 6]] = 1.0
    labels[1, [11]] = 1.0
    isl_indices = rng.integers(0, HL * WL, size=(N * (C - 1), NUM_SAMPLES)).astype(np.int64)

    def run(loss_weight: float, fsl: bool = True):
        tensors = {
            k: torch.from_numpy(v.copy()).requires_grad_(k != "img1") for k, v in inputs.items()
        }
        calls = []

        class Model:
            def __call__(self, image):
                calls.append(tuple(image.shape))
                if len(calls) == 1:
                    return tensors["cam1"], tensors["cam_rv1"], tensors["logits1"]
                return tensors["cam2"], tensors["cam_rv2"], torch.zeros(N, C, 1, 1)

        namespace = code.namespace(
            Model(),
            tensors["img1"],
            torch.from_numpy(labels),
            loss_weight=loss_weight,
            num_samples=NUM_SAMPLES,
            fsl=fsl,
        )
        code.run(namespace, isl_indices)
        assert calls == [(N, 3, H, W), (N, 3, H2, W2)], calls
        return namespace, tensors

    out = {f"input/{k}": v for k, v in inputs.items()}
    out["labels"] = labels
    out["isl_indices"] = isl_indices
    for tag, weight in (("w0", 0.0), ("w02", 0.2), ("w1", 1.0)):
        namespace, tensors = run(weight)
        for term in ("loss", "loss_cls", "loss_er", "loss_ecr", "loss_fs1"):
            out[f"{tag}/{term}"] = np.float64(namespace[term].item())
        for term in (
            "loss_cls1",
            "loss_cls2",
            "loss_rvmin1",
            "loss_rvmin2",
            "loss_ecr1",
            "loss_ecr2",
        ):
            out[f"{tag}/{term}"] = np.float64(namespace[term].item())
        if weight != 0.0:
            out[f"{tag}/loss_cls_is1"] = np.float64(namespace["loss_cls_is1"].item())
        if tag == "w02":
            namespace["loss"].backward()
            for name in ("cam1", "cam_rv1", "logits1", "cam2", "cam_rv2"):
                out[f"grad/{name}"] = tensors[name].grad.numpy().copy()
    namespace, _ = run(0.2, fsl=False)
    out["nofsl/loss"] = np.float64(namespace["loss"].item())

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    np.savez_compressed(args.out, **out)
    print(f"wrote {args.out}")
    for key in sorted(k for k in out if "/" in k and not k.startswith(("input", "grad"))):
        print(f"  {key} = {float(out[key]):.9g}")


if __name__ == "__main__":
    main()
