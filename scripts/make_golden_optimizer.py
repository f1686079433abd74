"""Golden fixture for the CAM optimizer: the reference's ``PolyOptimizer`` on toy parameters.

Made with:

    .venv/bin/python scripts/make_golden_optimizer.py --reference /work/ref/hfpl \
        --out tests/testdata/optimizer_poly_golden.npz

The toy model mirrors the reference's four parameter groups (spec §1.9): backbone conv weights
(lr x1, wd), backbone biases (lr x2, no wd), from-scratch weights (lr x10, wd), from-scratch biases
(lr x20, no wd), plus a frozen weight that sits in group 0 with ``requires_grad=False`` (like
conv1a and b2* in SEAM). Gradients are fixed random arrays fed step by step; the run continues past
``max_step`` to show that the rate stops changing there. The optimizer is the reference's own
class, constructed exactly like ``train_cam_voc.py`` does, so its momentum quirk (momentum =
wt_dec) is in the fixture.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reference", required=True, help="path to an arvijj/hfpl checkout")
    parser.add_argument("--out", default="tests/testdata/optimizer_poly_golden.npz")
    args = parser.parse_args()

    import torch

    sys.path.insert(0, os.path.abspath(args.reference))
    from tool import torchutils  # noqa: PLC0415 - the reference's module, found via --reference

    rng = np.random.default_rng(0)
    lr, wt_dec, max_step, num_steps = 0.01, 5e-4, 7, 10
    shapes = {
        "backbone/kernel": (3, 3, 4, 5),
        "backbone/bias": (5,),
        "scratch/kernel": (1, 1, 5, 6),
        "scratch/bias": (6,),
        "frozen/kernel": (3, 3, 2, 4),
    }
    initial = {
        name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()
    }
    grads = {
        name: rng.standard_normal((num_steps, *shape)).astype(np.float32)
        for name, shape in shapes.items()
    }
    params = {
        name: torch.nn.Parameter(torch.from_numpy(value.copy())) for name, value in initial.items()
    }
    params["frozen/kernel"].requires_grad = False
    optimizer = torchutils.PolyOptimizer(
        [
            {
                "params": [params["backbone/kernel"], params["frozen/kernel"]],
                "lr": lr,
                "weight_decay": wt_dec,
            },
            {"params": [params["backbone/bias"]], "lr": 2 * lr, "weight_decay": 0},
            {"params": [params["scratch/kernel"]], "lr": 10 * lr, "weight_decay": wt_dec},
            {"params": [params["scratch/bias"]], "lr": 20 * lr, "weight_decay": 0},
        ],
        lr=lr,
        weight_decay=wt_dec,
        max_step=max_step,
    )
    trajectory = {name: [] for name in shapes}
    group_lrs = []
    for step in range(num_steps):
        for name, param in params.items():
            param.grad = None if not param.requires_grad else torch.from_numpy(grads[name][step])
        optimizer.step()
        group_lrs.append([group["lr"] for group in optimizer.param_groups])
        for name, param in params.items():
            trajectory[name].append(param.detach().numpy().copy())

    out = {"lr": np.float64(lr), "wt_dec": np.float64(wt_dec), "max_step": np.int64(max_step)}
    out["group_lrs"] = np.asarray(group_lrs, np.float64)
    out["momentum"] = np.float64(optimizer.param_groups[0]["momentum"])
    for name in shapes:
        out[f"initial/{name}"] = initial[name]
        out[f"grads/{name}"] = grads[name]
        out[f"trajectory/{name}"] = np.stack(trajectory[name])
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    np.savez_compressed(args.out, **out)
    print(f"wrote {args.out}: momentum={out['momentum']}, lrs[0]={group_lrs[0]}")


if __name__ == "__main__":
    main()
