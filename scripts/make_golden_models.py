"""Make the golden fixtures of the models area by running the official PyTorch code.

Command that produced the committed fixtures (torch 2.13.0 CPU, float32, 1 thread):

    .venv/bin/python scripts/make_golden_models.py --reference /work/ref/hfpl --out tests/testdata

Writes:
  golden_models_resize.npz   torch ``F.interpolate(mode="bilinear")`` on random inputs: both
                             ``align_corners`` settings, up- and downsampling, size or scale_factor.
  golden_models_seam.npz     the reference ``network/resnet38_SEAM.Net`` (full size) in eval mode,
                             every parameter and buffer derived from (seed, name) by
                             ``hfpl_jax.weights.seeded_state_dict``; outputs at 1x64x64 and 1x75x61,
                             and gradients of a fixed scalar test loss.
  golden_models_affinity.npz, golden_models_deeplab.npz, golden_models_resnet50.npz
                             the same for AffinityNet, DeepLab-LargeFOV and the ResNet-50 CAM net
                             (reduced width where the full size would not fit the fixture budget).

Only inputs are regenerated from seeds; parameters are never stored (both sides derive them with
the same NumPy function). The reference code is imported from ``--reference`` and never copied.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

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
    for part in parts:
        globals()[f"make_{part}"](args.out) if part == "resize" else globals()[f"make_{part}"](
            args.out, args.reference
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
