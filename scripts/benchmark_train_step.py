"""Seconds per CAM training step: full-size ResNet-38 SEAM + HFPL, every loss, one optimizer update.

    .venv/bin/python scripts/benchmark_train_step.py --batch 2 --crop 112 \
        [--conv-impl xla dot] [--reference /path/to/arvijj/hfpl] [--convs] [--memory 8x448] \
        [--json out.json]
    # On a GPU machine, both sides on the GPU at the reference's training size:
    .venv/bin/python scripts/benchmark_train_step.py --batch 8 --crop 448 --conv-impl auto \
        --reference /path/to/arvijj/hfpl --torch-device cuda

JAX: ``hfpl_jax.train.cam.make_train_step`` on the ``configs/cam_voc_seam_hfpl.py`` settings (both
SEAM branches, GAP, ISL, min-pooling, ER, ECR, FSL; poly SGD with the reference's groups and frozen
layers), random initialisation, one device, timed with ``jax.block_until_ready`` on the new state.
One JAX row per ``--conv-impl`` (``hfpl_jax.models.build``'s ``conv_impl``: "xla" is XLA's
convolution, "dot" im2col + one matrix product, "auto" the default, "dot" on CPU).

``--reference``: the official PyTorch step in the same run, built from the reference's own code:
``network.resnet38_SEAM.Net`` (after ``model.train()``: BN frozen, conv1a/b2* frozen), its
``get_parameter_groups`` and ``tool.torchutils.PolyOptimizer`` exactly as ``train_cam_voc.py``
constructs them, and the loss code of ``train_cam_voc.py`` (``hfpl_jax.reference.CamLossCode``: the
body of its training loop up to ``loss = ...``, read with ``ast`` and executed as is; nothing of it
is copied here), then ``zero_grad``/``backward``/``step``.

Timing: ``--rounds`` rounds, each running ``--steps`` steps of every JAX implementation and then of
PyTorch after the warm-up (compilation; first PyTorch steps), interleaved so that a busy machine
slows all alike. Reported: best and median seconds per step, images/s, and PyTorch/JAX ratios.

``--convs``: forward+backward of single ResNet-38 conv layers (the shapes they have at this crop),
JAX with every ``--conv-impl`` vs torch, to show where each implementation stands.

``--memory BxC``: the compiled train step's temporary memory at batch B, crop C (e.g. ``8x448``,
the reference's training size) for every ``--conv-impl``, from XLA's buffer assignment (compiled,
not run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --------------------------------------------------------------------------------------------------
# JAX


def _jax_setup(batch: int, crop: int, num_classes: int, seed: int, conv_impl: str):
    from hfpl_jax import config_utils, parallel
    from hfpl_jax.train import cam, cam_loss, model_setup, optimizers

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
    model = model_setup.build_model(config, num_classes).clone(conv_impl=conv_impl)
    abstract = model_setup.abstract_variables(model, config)
    optimizer = optimizers.make_optimizer(config.optim, abstract["params"], max_step=10576)
    settings = cam_loss.LossSettings.from_config(config.loss)
    train_step = cam.make_train_step(model, optimizer.tx, settings, mesh)
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((batch, crop, crop, 3)).astype(np.float32)
    labels = np.zeros((batch, num_classes), np.float32)
    labels[np.arange(batch), rng.integers(0, num_classes, batch)] = 1.0
    batch_arrays = parallel.host_batch_to_global({"image": images, "labels": labels}, mesh)
    return config, mesh, model, optimizer, train_step, batch_arrays


def make_jax_step(batch: int, crop: int, num_classes: int, seed: int, conv_impl: str):
    import jax

    from hfpl_jax.train import model_setup

    config, mesh, model, optimizer, train_step, batch_arrays = _jax_setup(
        batch, crop, num_classes, seed, conv_impl
    )
    holder = {"state": model_setup.init_train_state(model, optimizer.tx, config, mesh)}

    def step():
        holder["state"], metrics = train_step(holder["state"], batch_arrays)
        jax.block_until_ready((holder["state"].params, metrics))
        return metrics

    return step


def train_step_memory(batch: int, crop: int, num_classes: int, conv_impl: str) -> dict:
    """XLA's memory figures (bytes) of the compiled train step; the state is abstract."""
    from hfpl_jax.train import model_setup

    config, _, model, optimizer, train_step, batch_arrays = _jax_setup(
        batch, crop, num_classes, 0, conv_impl
    )
    state = model_setup.abstract_train_state(model, optimizer.tx, config)
    start = time.perf_counter()
    analysis = train_step.lower(state, batch_arrays).compile().memory_analysis()
    return {
        "conv_impl": conv_impl,
        "temp_bytes": int(analysis.temp_size_in_bytes),
        "argument_bytes": int(analysis.argument_size_in_bytes),
        "output_bytes": int(analysis.output_size_in_bytes),
        "compile_s": time.perf_counter() - start,
    }


# --------------------------------------------------------------------------------------------------
# PyTorch reference


def make_torch_step(reference: str, batch: int, crop: int, seed: int, device: str = "cpu"):
    """The reference's training step. On ``device="cuda"`` the model is wrapped and moved exactly
    as ``train_cam_voc.py`` does (``DataParallel(model).cuda()``; the batch stays on the host and
    DataParallel copies it over; labels ``.cuda()``), with the reference's ``setup_seed`` setting
    ``cudnn.deterministic = True`` and torch 1.9's TF32 default for convolutions and matmuls."""
    import torch

    from hfpl_jax.reference import CamLossCode, import_reference

    import_reference(reference, cpu_only=device == "cpu")
    import network.resnet38_SEAM  # the reference's modules, found via --reference
    from tool import torchutils

    if device != "cpu":
        if not torch.cuda.is_available():
            raise ValueError(f"--torch-device {device!r}: torch sees no CUDA device")
        torch.backends.cudnn.deterministic = True  # train_cam_voc.setup_seed
        torch.backends.cuda.matmul.allow_tf32 = True  # the pinned torch 1.9's defaults
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(seed)
    code = CamLossCode(reference)
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
    if device != "cpu":
        model = torch.nn.DataParallel(model).cuda()
    model.train()
    rng = np.random.default_rng(seed)
    images = torch.from_numpy(rng.standard_normal((batch, 3, crop, crop)).astype(np.float32))
    labels = np.zeros((batch, 20), np.float32)
    labels[np.arange(batch), rng.integers(0, 20, batch)] = 1.0
    namespace = code.namespace(model, images, torch.from_numpy(labels))

    def step():
        code.run(namespace)
        optimizer.zero_grad()
        namespace["loss"].backward()
        optimizer.step()
        return float(namespace["loss"].item())

    return step


# --------------------------------------------------------------------------------------------------
# Single conv layers


def conv_layers(crop: int):
    """(name, input spatial size, in, out, kernel, stride, dilation) of ResNet-38 convs here."""
    os1, os2, os4, os8 = crop, -(-crop // 2), -(-crop // 4), -(-crop // 8)
    return [
        ("conv1a 3x3 3->64", os1, 3, 64, 3, 1, 1),
        ("b2 conv_branch2a 3x3 s2 64->128", os1, 64, 128, 3, 2, 1),
        ("b2_1 conv_branch2a 3x3 128->128", os2, 128, 128, 3, 1, 1),
        ("b3 conv_branch2a 3x3 s2 128->256", os2, 128, 256, 3, 2, 1),
        ("b3_1 conv_branch2a 3x3 256->256", os4, 256, 256, 3, 1, 1),
        ("b4_1 conv_branch2a 3x3 512->512", os8, 512, 512, 3, 1, 1),
        ("b5_1 conv_branch2a 3x3 1024->512 d2", os8, 1024, 512, 3, 1, 2),
        ("b6 conv_branch2b1 3x3 512->1024 d4", os8, 512, 1024, 3, 1, 4),
        ("b7 conv_branch2b1 3x3 1024->2048 d4", os8, 1024, 2048, 3, 1, 4),
        ("b7 conv_branch2b2 1x1 2048->4096", os8, 2048, 4096, 1, 1, 1),
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


def benchmark_convs(
    batch: int, crop: int, repeats: int, conv_impls: list[str], with_torch: bool
) -> list[dict]:
    import jax
    import jax.numpy as jnp

    from hfpl_jax.models import layers

    rows = []
    for name, size, cin, cout, k, stride, d in conv_layers(crop):
        rng = np.random.default_rng(0)
        x = rng.standard_normal((batch, size, size, cin)).astype(np.float32)
        w = (rng.standard_normal((k, k, cin, cout)) / np.sqrt(k * k * cin)).astype(np.float32)
        pad = d * (k - 1) // 2
        row = {"layer": name, "input": [batch, size, size, cin], "jax_s": {}}
        xj, wj = jnp.asarray(x), jnp.asarray(w)
        for impl in conv_impls:

            def loss(x, w, pad=pad, d=d, stride=stride, impl=impl):
                y = layers.conv2d(x, w, stride=stride, padding=pad, dilation=d, impl=impl)
                return jnp.sum(y * y)

            grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
            times = time_fn(lambda g=grad, a=xj, b=wj: jax.block_until_ready(g(a, b)), 2, repeats)
            row["jax_s"][impl] = min(times)
        if with_torch:
            import torch

            xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).requires_grad_(True)
            wt = torch.from_numpy(w.transpose(3, 2, 0, 1).copy()).requires_grad_(True)

            def torch_fn(xt=xt, wt=wt, pad=pad, d=d, stride=stride):
                xt.grad = wt.grad = None
                y = torch.nn.functional.conv2d(xt, wt, stride=stride, padding=pad, dilation=d)
                (y * y).sum().backward()

            row["torch_s"] = min(time_fn(torch_fn, 2, repeats))
        rows.append(row)
    return rows


# --------------------------------------------------------------------------------------------------


def _batch_and_crop(text: str) -> tuple[int, int]:
    try:
        batch, crop = (int(v) for v in text.lower().split("x"))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"--memory: expected BATCHxCROP, found {text!r}") from e
    return batch, crop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--crop", type=int, default=112)
    parser.add_argument(
        "--conv-impl",
        nargs="+",
        default=["xla", "dot"],
        choices=("auto", "xla", "dot"),
        help="JAX convolution implementations to time (one row each)",
    )
    parser.add_argument("--reference", default=None, help="path to an arvijj/hfpl checkout")
    parser.add_argument(
        "--torch-device",
        default="cpu",
        choices=("cpu", "cuda"),
        help="where the reference runs (cuda: as train_cam_voc.py, DataParallel on the GPU)",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per round and side")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--convs", action="store_true", help="also time single conv layers")
    parser.add_argument(
        "--memory",
        type=_batch_and_crop,
        default=None,
        metavar="BxC",
        help="also report the compiled step's temporary memory at batch B, crop C (e.g. 8x448)",
    )
    parser.add_argument("--json", default="benchmark_train_step.json")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    impls = list(dict.fromkeys(args.conv_impl))

    import jax

    result = {
        "benchmark": "cam_train_step",
        "batch": args.batch,
        "crop": args.crop,
        "conv_impls": impls,
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpus": os.cpu_count(),
            "jax": jax.__version__,
            "device": str(jax.devices()[0].device_kind),
            "backend": jax.default_backend(),
            "load_average_start": os.getloadavg(),
        },
    }
    steps = {}
    result["jax_first_step_s"] = {}
    for impl in impls:
        start = time.perf_counter()
        steps[impl] = make_jax_step(args.batch, args.crop, 20, args.seed, impl)
        steps[impl]()  # compiles
        result["jax_first_step_s"][impl] = time.perf_counter() - start
        for _ in range(args.warmup - 1):
            steps[impl]()
    torch_step = None
    if args.reference:
        import torch

        result["machine"]["torch"] = torch.__version__
        result["machine"]["torch_threads"] = torch.get_num_threads()
        result["machine"]["torch_device"] = args.torch_device
        if args.torch_device == "cuda":
            result["machine"]["torch_gpu"] = torch.cuda.get_device_name()
        torch_step = make_torch_step(
            args.reference, args.batch, args.crop, args.seed, args.torch_device
        )
        for _ in range(args.warmup):
            torch_step()

    times = {impl: [] for impl in impls}
    torch_times = []
    for _ in range(args.rounds):
        for impl in impls:
            times[impl] += time_fn(steps[impl], 0, args.steps)
        if torch_step is not None:
            torch_times += time_fn(torch_step, 0, args.steps)
    result["machine"]["load_average_end"] = os.getloadavg()

    def summary(values):
        best = min(values)
        return {
            "best_s": best,
            "median_s": statistics.median(values),
            "images_per_s": args.batch / best,
            "times_s": values,
        }

    result["jax"] = {impl: summary(times[impl]) for impl in impls}
    rows = [(f"JAX (conv_impl={impl})", result["jax"][impl]) for impl in impls]
    if torch_times:
        result["torch"] = summary(torch_times)
        rows.append(("PyTorch reference", result["torch"]))
        result["torch_over_jax_best"] = {
            impl: result["torch"]["best_s"] / result["jax"][impl]["best_s"] for impl in impls
        }
        result["torch_over_jax_median"] = {
            impl: result["torch"]["median_s"] / result["jax"][impl]["median_s"] for impl in impls
        }
    if args.convs:
        result["convs"] = benchmark_convs(args.batch, args.crop, 5, impls, torch_step is not None)
    if args.memory:
        batch, crop = args.memory
        result["memory"] = {
            "batch": batch,
            "crop": crop,
            "rows": [train_step_memory(batch, crop, 20, impl) for impl in impls],
        }

    print(f"\nCAM training step, ResNet-38 SEAM + HFPL (all losses), batch {args.batch}, "
          f"crop {args.crop}, {result['machine']['device']}, load average "
          f"{result['machine']['load_average_start'][0]:.2f} -> "
          f"{result['machine']['load_average_end'][0]:.2f}")  # fmt: skip
    print(f"{'':<26}{'best s/step':>12}{'median':>10}{'images/s':>10}")
    for name, s in rows:
        print(f"{name:<26}{s['best_s']:>12.3f}{s['median_s']:>10.3f}{s['images_per_s']:>10.2f}")
    for impl in impls:
        if torch_times:
            print(
                f"PyTorch / JAX ({impl}) time: {result['torch_over_jax_best'][impl]:.2f}x (best), "
                f"{result['torch_over_jax_median'][impl]:.2f}x (median)"
            )
        print(f"JAX ({impl}) first step (compilation included): "
              f"{result['jax_first_step_s'][impl]:.1f} s")  # fmt: skip
    if args.convs:
        print(f"\nSingle conv layers, forward + backward, batch {args.batch}, best of 5 (s):")
        header = "".join(f"{'JAX ' + impl:>11}" for impl in impls)
        print(f"{'layer':<38}{'input (NHWC)':>22}{header}{'torch':>9}")
        for row in result["convs"]:
            cells = "".join(f"{row['jax_s'][impl]:>11.4f}" for impl in impls)
            torch_s = f"{row['torch_s']:>9.4f}" if "torch_s" in row else f"{'-':>9}"
            print(f"{row['layer']:<38}{str(tuple(row['input'])):>22}{cells}{torch_s}")
    if args.memory:
        memory = result["memory"]
        print(f"\nCompiled train step, batch {memory['batch']}, crop {memory['crop']} (not run):")
        for row in memory["rows"]:
            gib = row["temp_bytes"] / 2**30
            print(f"  conv_impl={row['conv_impl']:<5} temporary {gib:6.2f} GiB"
                  f", arguments {row['argument_bytes'] / 2**30:.2f} GiB"
                  f" (compiled in {row['compile_s']:.0f} s)")  # fmt: skip
    tmp = args.json + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f, indent=2)
    os.replace(tmp, args.json)
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
