"""Seconds per CAM training step: full-size ResNet-38 SEAM + HFPL, every loss, one optimizer update.

    .venv/bin/python scripts/benchmark_train_step.py --batch 2 --crop 112 \
        [--reference /path/to/arvijj/hfpl] [--convs] [--json out.json]

JAX: ``hfpl_jax.train.cam.make_train_step`` on the ``configs/cam_voc_seam_hfpl.py`` settings (both
SEAM branches, GAP, ISL, min-pooling, ER, ECR, FSL; poly SGD with the reference's groups and frozen
layers), random initialisation, one device, timed with ``jax.block_until_ready`` on the new state.

``--reference``: the official PyTorch step in the same run, built from the reference's own code:
``network.resnet38_SEAM.Net`` (after ``model.train()``: BN frozen, conv1a/b2* frozen), its
``get_parameter_groups`` and ``tool.torchutils.PolyOptimizer`` exactly as ``train_cam_voc.py``
constructs them, and the loss code of ``train_cam_voc.py``, i.e. the body of its training loop up to
``loss = ...``, read with ``ast`` and executed as is (nothing of it is copied here), then
``zero_grad``/``backward``/``step``. Shims for current libraries: ``Tensor.cuda`` returns the tensor
(CPU), ``pydensecrf`` (imported by ``tool/visualization.py``, unused) is stubbed.

Timing: ``--rounds`` rounds, each running ``--steps`` steps of JAX and then of PyTorch after the
warm-up (compilation; first PyTorch steps), interleaved so that a busy machine slows both alike.
Reported: best and median seconds per step, images/s, and PyTorch/JAX ratios.

``--convs``: forward+backward of single ResNet-38 conv layers (the shapes they have at this crop),
JAX (XLA) vs torch, to show whether XLA's CPU convolutions are what limits the step.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import platform
import statistics
import sys
import time
import types

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --------------------------------------------------------------------------------------------------
# JAX


def make_jax_step(batch: int, crop: int, num_classes: int, seed: int):
    import jax

    from hfpl_jax import config_utils, parallel
    from hfpl_jax.train import cam, optimizers

    config = config_utils.load_config(
        os.path.join(REPO, "configs", "cam_voc_seam_hfpl.py"),
        [
            f"input.crop_size={crop}",
            f"input.global_batch_size={batch}",
            "mesh.num_devices=1",
            f"seed={seed}",
        ],
    )
    mesh = parallel.make_mesh(1)
    model = cam.build_model(config, num_classes)
    abstract = cam.abstract_variables(model, config)
    optimizer = optimizers.make_optimizer(config.optim, abstract["params"], max_step=10576)
    settings = cam.LossSettings.from_config(config.loss)
    state = cam.init_train_state(model, optimizer.tx, config, mesh)
    train_step = cam.make_train_step(model, optimizer.tx, settings, mesh)
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((batch, crop, crop, 3)).astype(np.float32)
    labels = np.zeros((batch, num_classes), np.float32)
    labels[np.arange(batch), rng.integers(0, num_classes, batch)] = 1.0
    batch_arrays = parallel.host_batch_to_global({"image": images, "labels": labels}, mesh)
    holder = {"state": state}

    def step():
        holder["state"], metrics = train_step(holder["state"], batch_arrays)
        jax.block_until_ready((holder["state"].params, metrics))
        return metrics

    return step


# --------------------------------------------------------------------------------------------------
# PyTorch reference


def _loop_body(source: str) -> ast.Module:
    tree = ast.parse(source)
    for node in ast.walk(tree):
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
    raise RuntimeError("training loop not found in train_cam_voc.py")


def _module_functions(source: str, names) -> ast.Module:
    tree = ast.parse(source)
    return ast.Module(
        body=[n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in names],
        type_ignores=[],
    )


def make_torch_step(reference: str, batch: int, crop: int, seed: int):
    import torch
    import torch.nn.functional as F  # noqa: N812

    reference = os.path.abspath(reference)
    sys.path.insert(0, reference)
    stub = types.ModuleType("pydensecrf")
    stub.densecrf = types.ModuleType("pydensecrf.densecrf")
    stub.utils = types.ModuleType("pydensecrf.utils")
    stub.utils.unary_from_softmax = None
    sys.modules.update(
        {"pydensecrf": stub, "pydensecrf.densecrf": stub.densecrf, "pydensecrf.utils": stub.utils}
    )
    torch.Tensor.cuda = lambda self, *a, **k: self
    import network.resnet38_SEAM  # the reference's modules, found via --reference
    from tool import probutils, torchutils, visualization

    torch.manual_seed(seed)
    with open(os.path.join(reference, "train_cam_voc.py")) as f:
        source = f.read()
    body = compile(_loop_body(source), "train_cam_voc.py:loop", "exec")
    functions = compile(
        _module_functions(source, ("adaptive_min_pooling_loss", "max_onehot")),
        "train_cam_voc.py:functions",
        "exec",
    )
    model = network.resnet38_SEAM.Net()
    lr, wt_dec = 0.01, 5e-4
    groups = model.get_parameter_groups()
    optimizer = torchutils.PolyOptimizer(
        [
            {"params": groups[0], "lr": lr, "weight_decay": wt_dec},
            {"params": groups[1], "lr": 2 * lr, "weight_decay": 0},
            {"params": groups[2], "lr": 10 * lr, "weight_decay": wt_dec},
            {"params": groups[3], "lr": 20 * lr, "weight_decay": 0},
        ],
        lr=lr,
        weight_decay=wt_dec,
        max_step=10576,
    )
    model.train()
    rng = np.random.default_rng(seed)
    images = torch.from_numpy(rng.standard_normal((batch, 3, crop, crop)).astype(np.float32))
    labels = np.zeros((batch, 20), np.float32)
    labels[np.arange(batch), rng.integers(0, 20, batch)] = 1.0
    namespace = {
        "torch": torch,
        "F": F,
        "np": np,
        "probutils": probutils,
        "visualization": visualization,
        "model": model,
        "pack": ([str(i) for i in range(batch)], images, torch.from_numpy(labels)),
        "args": argparse.Namespace(
            loss_weight=0.2, num_samples=10, fsl=True, fsl_mu=2.5, fsl_sigma=5.0
        ),
    }
    exec(functions, namespace)  # noqa: S102 - the reference's own code, by design

    def step():
        exec(body, namespace)  # noqa: S102
        optimizer.zero_grad()
        namespace["loss"].backward()
        optimizer.step()
        return float(namespace["loss"].item())

    return step


# --------------------------------------------------------------------------------------------------
# Single conv layers


def conv_layers(crop: int):
    """(name, spatial, in, out, kernel, dilation) of ResNet-38 convs at this crop (stride 1)."""
    os2, os4, os8 = -(-crop // 2), -(-crop // 4), -(-crop // 8)
    return [
        ("b2 conv_branch2a 3x3 128->128", os2, 128, 128, 3, 1),
        ("b3 conv_branch2a 3x3 256->256", os4, 256, 256, 3, 1),
        ("b4_1 conv_branch2a 3x3 512->512", os8, 512, 512, 3, 1),
        ("b5_1 conv_branch2a 3x3 1024->512 d2", os8, 1024, 512, 3, 2),
        ("b6 conv_branch2b1 3x3 512->1024 d4", os8, 512, 1024, 3, 4),
        ("b7 conv_branch2b1 3x3 1024->2048 d4", os8, 1024, 2048, 3, 4),
        ("b7 conv_branch2b2 1x1 2048->4096", os8, 2048, 4096, 1, 1),
    ]


def time_fn(fn, warmup: int, repeats: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def benchmark_convs(batch: int, crop: int, repeats: int, with_torch: bool) -> list[dict]:
    import jax
    import jax.numpy as jnp

    rows = []
    for name, size, cin, cout, k, d in conv_layers(crop):
        rng = np.random.default_rng(0)
        x = rng.standard_normal((batch, size, size, cin)).astype(np.float32)
        w = (rng.standard_normal((k, k, cin, cout)) / np.sqrt(k * k * cin)).astype(np.float32)
        pad = d * (k - 1) // 2

        def loss(x, w, pad=pad, d=d):
            y = jax.lax.conv_general_dilated(
                x, w, (1, 1), [(pad, pad), (pad, pad)], rhs_dilation=(d, d),
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
            )  # fmt: skip
            return jnp.sum(y * y)

        grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
        xj, wj = jnp.asarray(x), jnp.asarray(w)
        jax_times = time_fn(lambda g=grad, a=xj, b=wj: jax.block_until_ready(g(a, b)), 2, repeats)
        row = {"layer": name, "input": [batch, size, size, cin], "jax_s": min(jax_times)}
        if with_torch:
            import torch

            xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).requires_grad_(True)
            wt = torch.from_numpy(w.transpose(3, 2, 0, 1).copy()).requires_grad_(True)

            def torch_fn(xt=xt, wt=wt, pad=pad, d=d):
                xt.grad = wt.grad = None
                y = torch.nn.functional.conv2d(xt, wt, padding=pad, dilation=d)
                (y * y).sum().backward()

            row["torch_s"] = min(time_fn(torch_fn, 2, repeats))
            row["jax_over_torch"] = row["jax_s"] / row["torch_s"]
        rows.append(row)
    return rows


# --------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--crop", type=int, default=112)
    parser.add_argument("--reference", default=None, help="path to an arvijj/hfpl checkout")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per round and side")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--convs", action="store_true", help="also time single conv layers")
    parser.add_argument("--json", default="benchmark_train_step.json")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import jax

    result = {
        "benchmark": "cam_train_step",
        "batch": args.batch,
        "crop": args.crop,
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpus": os.cpu_count(),
            "jax": jax.__version__,
            "device": str(jax.devices()[0].device_kind),
            "backend": jax.default_backend(),
        },
    }
    start = time.perf_counter()
    jax_step = make_jax_step(args.batch, args.crop, 20, args.seed)
    jax_step()  # compiles
    result["jax_first_step_s"] = time.perf_counter() - start
    for _ in range(args.warmup - 1):
        jax_step()
    torch_step = None
    if args.reference:
        import torch

        result["machine"]["torch"] = torch.__version__
        result["machine"]["torch_threads"] = torch.get_num_threads()
        torch_step = make_torch_step(args.reference, args.batch, args.crop, args.seed)
        for _ in range(args.warmup):
            torch_step()

    jax_times, torch_times = [], []
    for _ in range(args.rounds):
        jax_times += time_fn(jax_step, 0, args.steps)
        if torch_step is not None:
            torch_times += time_fn(torch_step, 0, args.steps)

    def summary(times):
        best = min(times)
        return {
            "best_s": best,
            "median_s": statistics.median(times),
            "images_per_s": args.batch / best,
            "times_s": times,
        }

    result["jax"] = summary(jax_times)
    rows = [("JAX (XLA)", result["jax"])]
    if torch_times:
        result["torch"] = summary(torch_times)
        result["torch_over_jax_best"] = result["torch"]["best_s"] / result["jax"]["best_s"]
        result["torch_over_jax_median"] = result["torch"]["median_s"] / result["jax"]["median_s"]
        rows.append(("PyTorch reference", result["torch"]))
    if args.convs:
        result["convs"] = benchmark_convs(args.batch, args.crop, 5, torch_step is not None)

    print(f"\nCAM training step, ResNet-38 SEAM + HFPL (all losses), batch {args.batch}, "
          f"crop {args.crop}, {result['machine']['device']}")  # fmt: skip
    print(f"{'':<20}{'best s/step':>12}{'median':>10}{'images/s':>10}")
    for name, s in rows:
        print(f"{name:<20}{s['best_s']:>12.3f}{s['median_s']:>10.3f}{s['images_per_s']:>10.2f}")
    if torch_times:
        print(
            f"PyTorch / JAX time: {result['torch_over_jax_best']:.2f}x (best), "
            f"{result['torch_over_jax_median']:.2f}x (median)"
        )
    print(f"JAX first step (compilation included): {result['jax_first_step_s']:.1f} s")
    if args.convs:
        print(f"\nSingle conv layers, forward + backward, batch {args.batch}:")
        print(f"{'layer':<40}{'input (NHWC)':>22}{'JAX s':>10}{'torch s':>10}{'JAX/torch':>10}")
        for row in result["convs"]:
            torch_s = f"{row['torch_s']:>10.4f}" if "torch_s" in row else f"{'-':>10}"
            ratio = f"{row['jax_over_torch']:>10.2f}" if "jax_over_torch" in row else f"{'-':>10}"
            print(f"{row['layer']:<40}{str(tuple(row['input'])):>22}{row['jax_s']:>10.4f}"
                  f"{torch_s}{ratio}")  # fmt: skip
    with open(args.json, "w") as f:
        json.dump(result, f, indent=2)
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
