"""Benchmark the JAX dense CRF against pydensecrf (``pydensecrf2``): agreement and speed.

Inputs are photographs that scikit-image ships (astronaut, coffee, chelsea, rocket), resized to
480x320 (W x H) with PIL bilinear, and 21-label "probabilities" built as the reference builds
them in ``infer_cam_voc.py``: 20 max-normalised CAM-like maps (a few Gaussian blobs each, most
classes weak) and a background (1 - max cam)^alpha, not normalised, at alpha 1 and 24. Both
implementations run ``tool/imutils.crf_inference``'s CRF (10 iterations, Gaussian sxy 3 compat 3,
bilateral sxy 80 srgb 13 compat 10).

Reported per (image, alpha): the fraction of pixels whose argmax label agrees and the largest
|Q_jax - Q_pydensecrf|; and the time per image: JAX jitted (the one compilation excluded),
pydensecrf including its lattice construction, both as process CPU time (all threads) and wall
time (XLA uses every core unless ``--single-thread``; pydensecrf one), interleaved call by call so
that a shared machine's load hits both alike (the median over ``--repeats`` rounds is reported).
``--device gpu`` runs the JAX CRF on the first GPU (and a vmapped batch of the images) and
compares its wall time with pydensecrf's on the CPU.

Commands used for BENCHMARKS.md:

    .venv/bin/python scripts/benchmark_crf.py --json-out benchmark_crf.json
    .venv/bin/python scripts/benchmark_crf.py --single-thread --json-out benchmark_crf_1t.json
    .venv/bin/python scripts/benchmark_crf.py --device gpu --json-out benchmark_crf_gpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np

IMAGES = ("astronaut", "coffee", "chelsea", "rocket")
HEIGHT, WIDTH, NUM_LABELS = 320, 480, 21
ALPHAS = (1.0, 24.0)
CRF_PARAMS = dict(
    iterations=10,
    gaussian_sxy=3,
    gaussian_compat=3,
    bilateral_sxy=80,
    bilateral_srgb=13,
    bilateral_compat=10,
)
MUST_REACH = {"argmax_agreement": 0.98, "cpu_time_ratio": 2.0, "gpu_speedup": 10.0}


def load_image(name: str) -> np.ndarray:
    import skimage.data
    from PIL import Image

    image = getattr(skimage.data, name)()
    if image.ndim == 2:
        image = np.stack([image] * 3, -1)
    resized = Image.fromarray(image[..., :3]).resize((WIDTH, HEIGHT), Image.BILINEAR)
    return np.ascontiguousarray(np.asarray(resized, dtype=np.uint8))


def cam_probs(seed: int, alpha: float) -> np.ndarray:
    """(H, W, 21): background (1 - max cam)^alpha and 20 CAM-like maps, as infer_cam_voc.py."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    cams = np.zeros((HEIGHT, WIDTH, NUM_LABELS - 1), np.float32)
    strong = rng.choice(NUM_LABELS - 1, size=3, replace=False)
    for c in range(NUM_LABELS - 1):
        peak = 1.0 if c in strong else rng.uniform(0.05, 0.4)
        for _ in range(rng.integers(1, 4)):
            cy, cx = rng.uniform(0, HEIGHT), rng.uniform(0, WIDTH)
            sy, sx = rng.uniform(20, 90), rng.uniform(20, 120)
            blob = np.exp(-0.5 * (((y - cy) / sy) ** 2 + ((x - cx) / sx) ** 2))
            cams[..., c] = np.maximum(cams[..., c], rng.uniform(0.5, 1.0) * blob)
        cams[..., c] *= peak / max(cams[..., c].max(), 1e-6)
    background = (1.0 - cams.max(-1, keepdims=True)) ** np.float32(alpha)
    return np.concatenate([background, cams], -1).astype(np.float32)


def pydensecrf_crf(image: np.ndarray, probs: np.ndarray) -> np.ndarray:
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax

    model = dcrf.DenseCRF2D(WIDTH, HEIGHT, NUM_LABELS)
    model.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probs.transpose(2, 0, 1))))
    model.addPairwiseGaussian(sxy=CRF_PARAMS["gaussian_sxy"], compat=CRF_PARAMS["gaussian_compat"])
    model.addPairwiseBilateral(
        sxy=CRF_PARAMS["bilateral_sxy"],
        srgb=CRF_PARAMS["bilateral_srgb"],
        rgbim=np.copy(image),
        compat=CRF_PARAMS["bilateral_compat"],
    )
    q = np.array(model.inference(CRF_PARAMS["iterations"]), dtype=np.float32)
    return q.reshape(NUM_LABELS, HEIGHT, WIDTH).transpose(1, 2, 0)


def timed(fn):
    """(result, process CPU seconds, wall seconds) of fn()."""
    cpu, wall = time.process_time(), time.perf_counter()
    result = fn()
    return result, time.process_time() - cpu, time.perf_counter() - wall


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--repeats", type=int, default=3, help="timing rounds per input")
    parser.add_argument("--images", nargs="+", default=list(IMAGES))
    parser.add_argument(
        "--single-thread",
        action="store_true",
        help="run XLA's CPU code on one thread, as pydensecrf runs (a like-for-like CPU time)",
    )
    parser.add_argument("--json-out", default=None)
    args = parser.parse_args(argv)
    if args.single_thread:  # read once, when the backend starts: before jax is imported
        flags = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + flags).strip()

    import jax

    from hfpl_jax.inference.crf import dense_crf

    try:
        import pydensecrf.densecrf  # noqa: F401

        have_reference = True
    except ImportError:
        have_reference = False
        print(
            "pydensecrf2 is not installed: no agreement or speed ratios (pip install pydensecrf2)"
        )

    device = jax.devices(args.device)[0]
    crf_fn = jax.jit(lambda image, probs: dense_crf(image, probs, **CRF_PARAMS))
    inputs = [
        (name, alpha, load_image(name), cam_probs(seed, alpha))
        for seed, name in enumerate(args.images)
        for alpha in ALPHAS
    ]

    def run_jax(image, probs):
        image, probs = jax.device_put((image, probs), device)
        return np.asarray(jax.block_until_ready(crf_fn(image, probs)))

    _, compile_cpu, compile_wall = timed(lambda: run_jax(inputs[0][2], inputs[0][3]))
    rows = []
    for name, alpha, image, probs in inputs:
        jax_times, ref_times = [], []
        for _ in range(args.repeats):
            q_jax, cpu, wall = timed(lambda image=image, probs=probs: run_jax(image, probs))
            jax_times.append((cpu, wall))
            if have_reference:
                q_ref, cpu, wall = timed(
                    lambda image=image, probs=probs: pydensecrf_crf(image, probs)
                )
                ref_times.append((cpu, wall))
        row = {
            "image": name,
            "alpha": alpha,
            "jax_cpu_s": statistics.median(t[0] for t in jax_times),
            "jax_wall_s": statistics.median(t[1] for t in jax_times),
        }
        if have_reference:
            row.update(
                argmax_agreement=float((q_jax.argmax(-1) == q_ref.argmax(-1)).mean()),
                max_abs_q_diff=float(np.abs(q_jax - q_ref).max()),
                pydensecrf_cpu_s=statistics.median(t[0] for t in ref_times),
                pydensecrf_wall_s=statistics.median(t[1] for t in ref_times),
            )
        rows.append(row)
        print(json.dumps(row), flush=True)

    summary = {
        "compile_cpu_s": compile_cpu,
        "compile_wall_s": compile_wall,
        "jax_cpu_s": statistics.median(r["jax_cpu_s"] for r in rows),
        "jax_wall_s": statistics.median(r["jax_wall_s"] for r in rows),
    }
    if args.device == "gpu":
        batch = [np.stack(x) for x in zip(*[(i[2], i[3]) for i in inputs], strict=True)]
        batched = jax.jit(jax.vmap(lambda image, probs: dense_crf(image, probs, **CRF_PARAMS)))
        batch = jax.device_put(batch, device)
        jax.block_until_ready(batched(*batch))
        _, _, wall = timed(lambda: jax.block_until_ready(batched(*batch)))
        summary["jax_batched_wall_s_per_image"] = wall / len(inputs)
    if have_reference:
        summary.update(
            min_argmax_agreement=min(r["argmax_agreement"] for r in rows),
            max_abs_q_diff=max(r["max_abs_q_diff"] for r in rows),
            pydensecrf_cpu_s=statistics.median(r["pydensecrf_cpu_s"] for r in rows),
            pydensecrf_wall_s=statistics.median(r["pydensecrf_wall_s"] for r in rows),
        )
        summary["cpu_time_ratio"] = summary["jax_cpu_s"] / summary["pydensecrf_cpu_s"]
        summary["wall_time_ratio"] = summary["jax_wall_s"] / summary["pydensecrf_wall_s"]
        checks = {
            "argmax_agreement": summary["min_argmax_agreement"] >= MUST_REACH["argmax_agreement"]
        }
        if args.device == "cpu":
            checks["cpu_time_ratio"] = summary["cpu_time_ratio"] <= MUST_REACH["cpu_time_ratio"]
        else:
            summary["gpu_speedup"] = summary["pydensecrf_wall_s"] / summary["jax_wall_s"]
            checks["gpu_speedup"] = summary["gpu_speedup"] >= MUST_REACH["gpu_speedup"]
        summary["must_reach"] = {"targets": MUST_REACH, "met": checks}

    print()
    print(f"Dense CRF {HEIGHT}x{WIDTH}, {NUM_LABELS} labels, 10 iterations, JAX on {device}")
    header = f"{'image':<10} {'alpha':>5} {'argmax agree':>12} {'max|dQ|':>9}"
    header += f" {'jax cpu s':>9} {'jax wall s':>10} {'pdc cpu s':>9} {'pdc wall s':>10}"
    print(header)
    for r in rows:
        print(
            f"{r['image']:<10} {r['alpha']:>5.0f} {r.get('argmax_agreement', float('nan')):>12.5f}"
            f" {r.get('max_abs_q_diff', float('nan')):>9.2e} {r['jax_cpu_s']:>9.3f}"
            f" {r['jax_wall_s']:>10.3f} {r.get('pydensecrf_cpu_s', float('nan')):>9.3f}"
            f" {r.get('pydensecrf_wall_s', float('nan')):>10.3f}"
        )
    print(json.dumps(summary, indent=1))
    record = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "load_average": os.getloadavg(),
            "python": sys.version.split()[0],
            "jax": jax.__version__,
            "device": str(device),
            "single_thread": args.single_thread,
        },
        "params": {**CRF_PARAMS, "height": HEIGHT, "width": WIDTH, "num_labels": NUM_LABELS},
        "rows": rows,
        "summary": summary,
    }
    if args.json_out:
        with open(args.json_out, "w", encoding="utf-8") as f:
            json.dump(record, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
