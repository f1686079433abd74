"""Seconds per image of multi-scale CAM inference (4 scales x flip): hfpl-jax vs the reference.

    .venv/bin/python scripts/benchmark_infer_cam.py --reference /path/to/arvijj/hfpl \
        --sizes 94x125 188x250 375x500 [--repeats 3] [--json out.json]

Both sides run the full-size SEAM (``network/resnet38_SEAM.Net``; the reference has no smaller
one) with the same weights (``hfpl_jax.weights.seeded_state_dict("seam", 0)``), on the same 8
inputs of a synthetic image of each size (``hfpl_jax.data.transforms.msf_cam_inputs``, identical to
the reference's ``VOC12ClsDatasetMSF``; preparing them is not timed on either side), with 3 of the
20 classes labelled:

- JAX: ``hfpl_jax.inference.cam.CamInferencer`` on one device (batch 1), timed from the call to
  the normalised CAMs on the host (``np.asarray``). Compilation (one per image size) is timed
  separately and reported with the compile count.
- PyTorch: the body of ``infer_cam_voc.py``'s inference loop, read from the checkout with ``ast``
  and executed as is (``hfpl_jax.reference.inference_loop_statements``): the 8 forward passes
  through its ``BatchThreader`` (``--num-workers`` threads, the script's default 8), ``F.upsample``,
  the NumPy fusion and ``cam_dict``; no files, no CRF. ``.cuda()`` is a no-op (CPU).

Rounds alternate JAX and PyTorch so a busy machine slows both alike; reported: best and median
seconds per image, and the PyTorch/JAX ratio of the medians.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import statistics
import time
import types

import numpy as np

LABELS = (3, 7, 15)


def _size(text: str) -> tuple[int, int]:
    height, width = (int(v) for v in text.lower().split("x"))
    return height, width


def synthetic_image(height: int, width: int) -> np.ndarray:
    from hfpl_jax.data.fake_data import synthetic_image_and_mask

    image, _ = synthetic_image_and_mask(0, (width, height), 20)
    return image


def make_jax(state_dict, num_classes: int, conv_impl: str = "auto"):
    import jax

    from hfpl_jax import models, weights
    from hfpl_jax.inference import cam

    model = models.build("seam", num_classes, dropout=False, conv_impl=conv_impl)
    variables = weights.from_torch(state_dict, "seam")
    mesh = jax.sharding.Mesh(np.asarray(jax.local_devices()[:1]), ("data",))
    return cam.CamInferencer(model, variables, mesh=mesh)


def make_torch(reference: str, state_dict, num_workers: int):
    from hfpl_jax.reference import import_reference, inference_loop_statements

    import_reference(reference)
    from PIL import Image

    if not hasattr(Image, "CUBIC"):
        Image.CUBIC = Image.BICUBIC
    import sys

    if "torchvision" not in sys.modules:  # voc12/data.py imports it; unused on this path
        torchvision = types.ModuleType("torchvision")
        torchvision.transforms = types.ModuleType("torchvision.transforms")
        sys.modules.update({"torchvision": torchvision,
                            "torchvision.transforms": torchvision.transforms})  # fmt: skip
    import network.resnet38_SEAM as seam_module
    import torch
    import torch.nn.functional as F  # noqa: N812
    import voc12.data
    from tool import imutils, pyutils

    net = seam_module.Net()
    net.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()})
    net.eval()
    path = os.path.join(os.path.abspath(reference), "infer_cam_voc.py")
    with open(path) as f:
        body = compile(inference_loop_statements(f.read(), path), path, "exec")
    torch.cuda.device = lambda index: contextlib.nullcontext()  # CPU-only torch

    def run(image: np.ndarray, inputs: list[np.ndarray], label: np.ndarray):
        namespace = {
            "np": np, "torch": torch, "F": F, "Image": Image, "pyutils": pyutils, "voc12": voc12,
            "imutils": imutils, "model_replicas": [net], "n_gpus": 1, "iter": 1,
            "infer_data_loader": [None], "img_name": ["image"],
            "img_list": [torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None]
                         for x in inputs],
            "label": torch.from_numpy(label)[None],
            "args": argparse.Namespace(voc12_root="", num_workers=num_workers, out_cam=None,
                                       out_crf=None, out_cam_pred=None, out_cam_pred_alpha=0.26),
        }  # fmt: skip
        # The script reads the original image from disk for its size (and the CRF): serve it.
        original_open = Image.open
        Image.open = lambda _path: Image.fromarray(image)
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                exec(body, namespace)  # noqa: S102 - the reference's own code, by design
        finally:
            Image.open = original_open
        return namespace["norm_cam"]

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reference", required=True, help="checkout of the official HFPL code")
    parser.add_argument("--sizes", nargs="+", type=_size, default=[(94, 125), (188, 250)])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--num-workers", type=int, default=8, help="the script's --num_workers")
    parser.add_argument("--conv-impl", default="auto", help="hfpl_jax.models.build's conv_impl")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    import jax
    import torch
    from PIL import Image

    from hfpl_jax.data import transforms
    from hfpl_jax.weights import seeded_state_dict

    jax.config.update("jax_default_matmul_precision", "highest")  # float32, as the reference
    state_dict = seeded_state_dict("seam", 0, 20)
    inferencer = make_jax(state_dict, 20, args.conv_impl)
    torch_run = make_torch(args.reference, state_dict, args.num_workers)
    label = np.zeros(20, np.float32)
    label[list(LABELS)] = 1.0
    rows = []
    for height, width in args.sizes:
        image = synthetic_image(height, width)
        inputs = transforms.msf_cam_inputs(Image.fromarray(image))
        batch = [np.stack(inputs[2 * k : 2 * k + 2])[None] for k in range(4)]

        def jax_run(batch=batch, height=height, width=width):
            out = inferencer(batch, label[None], (height, width))
            return np.asarray(out["cams"])[0]

        compiles_before = inferencer.compile_stats.compiles
        seconds_before = inferencer.compile_stats.seconds
        jax_cams = jax_run()  # compiles
        compile_seconds = inferencer.compile_stats.seconds - seconds_before
        torch_cams = torch_run(image, inputs, label)  # warm-up
        times = {"jax": [], "torch": []}
        for _ in range(args.repeats):
            start = time.perf_counter()
            jax_run()
            times["jax"].append(time.perf_counter() - start)
            start = time.perf_counter()
            torch_run(image, inputs, label)
            times["torch"].append(time.perf_counter() - start)
        present = list(LABELS)
        difference = float(
            np.abs(jax_cams[..., present] - np.transpose(torch_cams, (1, 2, 0))[..., present]).max()
        )
        row = {
            "size": [height, width],
            "jax_best_s": min(times["jax"]),
            "jax_median_s": statistics.median(times["jax"]),
            "torch_best_s": min(times["torch"]),
            "torch_median_s": statistics.median(times["torch"]),
            "torch_over_jax": statistics.median(times["torch"]) / statistics.median(times["jax"]),
            "jax_compiles": inferencer.compile_stats.compiles - compiles_before,
            "jax_compile_s": compile_seconds,
            "max_abs_difference_saved_cams": difference,
            "times": times,
        }
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "times"}), flush=True)

    print()
    print("| image | JAX s/image (best / median) | PyTorch s/image (best / median) | "
          "PyTorch/JAX | JAX compile s | max abs diff |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['size'][0]}x{r['size'][1]} | {r['jax_best_s']:.2f} / {r['jax_median_s']:.2f} | "
            f"{r['torch_best_s']:.2f} / {r['torch_median_s']:.2f} | {r['torch_over_jax']:.2f}x | "
            f"{r['jax_compile_s']:.1f} ({r['jax_compiles']}) | "
            f"{r['max_abs_difference_saved_cams']:.1e} |"
        )
    result = {
        "rows": rows,
        "repeats": args.repeats,
        "num_workers": args.num_workers,
        "conv_impl": args.conv_impl,
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "jax": jax.__version__,
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "device": str(jax.devices()[0].device_kind),
        },
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
