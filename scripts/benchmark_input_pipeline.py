"""Input-pipeline throughput: CAM-training batches at crop 448, and the hfpl_shapes build time.

    .venv/bin/python scripts/benchmark_input_pipeline.py --out benchmark_input_pipeline.json

What it does:
1. Writes ``--num-images`` VOC-like 500x375 JPEGs (the shapes generator at that size, saved at
   quality 92) into a tiny ``VOCdevkit/VOC2012`` folder and builds ``voc2012_wsss`` from it.
2. Profiles one CAM-training example stage by stage (decode, resize, flip, colour jitter of the
   crop window, normalisation into the padded crop) in this process.
3. Times ``make_cam_train_iterator`` (batch 8, crop 448, resize_long (448, 768), flip, jitter
   (0.3, 0.3, 0.3, 0.1): the reference's settings) for several ``worker_count`` / ``read_threads``
   settings: images/s after warm-up, and images/s per CPU core the setting keeps busy
   (worker processes x threads, at most the machine's cores), and images per CPU-second spent by
   the process and its workers (the per-core figure that a busy shared machine cannot distort).
4. Times ``hfpl-jax build-dataset hfpl_shapes`` with the default sizes in a fresh directory.

Prints a Markdown table and writes the figures to ``--out`` (JSON). The load average is recorded
with every run because shared machines make these numbers noisy.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def _cpu_seconds() -> float:
    """CPU time (user + system) of this process and its live children (Linux /proc)."""
    total = time.process_time()
    ticks = os.sysconf("SC_CLK_TCK")
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == me:  # ppid
            total += (int(fields[11]) + int(fields[12])) / ticks  # utime + stime
    return total


def _prepare_voc(work_dir: str, num_images: int) -> str:
    from hfpl_jax import data
    from hfpl_jax.data import fake_data

    manual = os.path.join(work_dir, "voc_manual")
    data_dir = os.path.join(work_dir, "tfds")
    if not data.is_built("voc2012_wsss", data_dir):
        if not os.path.isdir(manual):
            fake_data.write_fake_voc(
                manual, num_train_aug=num_images, num_train=2, num_val=2, image_size=(500, 375)
            )
        data.build("voc2012_wsss", data_dir, manual_dir=manual)
    return data_dir


def _profile_stages(data_dir: str, count: int) -> dict[str, float]:
    from hfpl_jax import data, image_ops
    from hfpl_jax.data import color, sources, transforms

    raw = data.raw_source("voc2012_wsss", data_dir, "train_aug")
    rng = np.random.default_rng(0)
    totals = dict(decode=0.0, resize=0.0, flip=0.0, jitter=0.0, normalise_crop=0.0)
    for i in range(count):
        encoded = raw[i % len(raw)]["image"]
        t0 = time.perf_counter()
        image = sources.decode_image(encoded)
        image.load()
        t1 = time.perf_counter()
        params = transforms.sample_cam_train_params(rng, image.width, image.height)
        resized = transforms.resize_long(image, params.target_long)
        t2 = time.perf_counter()
        if params.flip:
            resized = transforms.hflip_pil(resized)
        t3 = time.perf_counter()
        # As cam_train_transform: the jitter yields the crop window (pointwise operations run on
        # the window, see color.color_jitter), which is normalised into the padded output.
        crop = params.crop
        ch, cw = min(448, resized.height), min(448, resized.width)
        box = (crop.img_left, crop.img_top, crop.img_left + cw, crop.img_top + ch)
        window = np.asarray(color.color_jitter(resized, params.jitter, box))
        t4 = time.perf_counter()
        out = np.zeros((448, 448, 3), np.float32)
        image_ops.normalize_image(
            window,
            out=out[crop.cont_top : crop.cont_top + ch, crop.cont_left : crop.cont_left + cw],
        )
        t5 = time.perf_counter()
        for key, seconds in zip(totals, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4), strict=True):
            totals[key] += seconds
    per_image = {k: round(1000 * v / count, 2) for k, v in totals.items()}
    per_image["total"] = round(sum(per_image.values()), 2)
    return per_image


def _time_iterator(data_dir, workers, threads, batches, warmup) -> dict:
    from hfpl_jax.data import fake_data, input_pipeline

    config = fake_data.cam_train_input_config(
        "voc2012_wsss",
        data_dir,
        "train_aug",
        worker_count=workers,
        read_threads=threads,
        prefetch_batches=2,
    )
    iterator = input_pipeline.make_cam_train_iterator(config, seed=0)
    load_before = _load()
    for _ in range(warmup):
        batch = next(iterator)
    start, cpu_start = time.perf_counter(), _cpu_seconds()
    for _ in range(batches):
        batch = next(iterator)
    seconds = time.perf_counter() - start
    cpu_seconds = _cpu_seconds() - cpu_start
    assert batch["image"].shape == (8, 448, 448, 3)
    if hasattr(iterator, "close"):
        iterator.close()
    images_per_s = batches * 8 / seconds
    cores = min(os.cpu_count() or 1, max(1, workers) * threads)
    return {
        "worker_count": workers,
        "read_threads": threads,
        "cores_used": cores,
        "images_per_s": round(images_per_s, 1),
        "images_per_s_per_core": round(images_per_s / cores, 1),
        # Load-independent: images per CPU-second actually spent (all threads and workers).
        "images_per_cpu_s": round(batches * 8 / cpu_seconds, 1),
        "load_avg_1min": [load_before, _load()],
    }


def _time_shapes_build() -> float:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "hfpl_jax.cli",
                "build-dataset",
                "hfpl_shapes",
                "--data-dir",
                tmp,
            ],
            check=True,
            capture_output=True,
        )
        return round(time.perf_counter() - start, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work-dir", help="reuse this folder for the fake VOC data (default: tmp)")
    parser.add_argument("--num-images", type=int, default=200)
    parser.add_argument("--batches", type=int, default=25, help="timed batches per setting")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument(
        "--settings",
        default="0x1,0x2,1x1,2x1",
        help="comma-separated worker_count x read_threads settings to time",
    )
    parser.add_argument("--skip-shapes-build", action="store_true")
    parser.add_argument("--out", default="benchmark_input_pipeline.json")
    args = parser.parse_args()

    work_dir = args.work_dir or tempfile.mkdtemp(prefix="hfpl_bench_")
    os.makedirs(work_dir, exist_ok=True)
    data_dir = _prepare_voc(work_dir, args.num_images)
    result = {
        "machine": {
            "cpu_count": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "pillow": Image.__version__,
        },
        "date": time.strftime("%Y-%m-%d"),
        "stage_ms_per_image": _profile_stages(data_dir, 40),
        "iterator": [],
    }
    for setting in args.settings.split(","):
        workers, threads = (int(v) for v in setting.split("x"))
        result["iterator"].append(
            _time_iterator(data_dir, workers, threads, args.batches, args.warmup)
        )
    if not args.skip_shapes_build:
        result["hfpl_shapes_build_seconds"] = _time_shapes_build()

    stages = result["stage_ms_per_image"]
    print(f"Per-image stages (ms, one thread): {stages}")
    print()
    print(
        "| worker_count | read_threads | cores | images/s | images/s/core | images/CPU-s "
        "| load avg (1 min) |"
    )
    print("|---|---|---|---|---|---|---|")
    for row in result["iterator"]:
        print(
            f"| {row['worker_count']} | {row['read_threads']} | {row['cores_used']} | "
            f"{row['images_per_s']} | {row['images_per_s_per_core']} | {row['images_per_cpu_s']} | "
            f"{row['load_avg_1min'][0]} -> {row['load_avg_1min'][1]} |"
        )
    if "hfpl_shapes_build_seconds" in result:
        seconds = result["hfpl_shapes_build_seconds"]
        print(f"\nhfpl-jax build-dataset hfpl_shapes (defaults): {seconds} s")
    from hfpl_jax import atomic_io

    atomic_io.write_json(args.out, result, sort_keys=False)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
