"""Benchmark: ``hfpl-jax evaluate`` against ``eval_cam_voc.py --curve`` + ``contour_fscore.py``.

    PYTHONPATH=. .venv/bin/python scripts/benchmark_evaluate.py --reference /path/to/hfpl \
        [--num-images 500] [--workdir DIR] [--json evaluate_benchmark.json]

Generates ``--num-images`` VOC-like predictions (seeded; sizes as VOC's: 500x375, 375x500,
500x333, 333x500, 500x500, 281x500; 1-3 classes per image, objects with a void band, smooth
float32 CAMs in [0, 1] with exact zeros), written in the reference's layout: ``cam/<name>.npy``
dicts, ``gt/<name>.png`` masks, ``list.txt``. Then, each as a subprocess on the same files:

1. the reference, as ``run_voc.sh`` runs it: ``eval_cam_voc.py --type npy --curve True`` (60
   passes over the files, 8 worker processes each) and ``contour_fscore.py --is_cam --is_seam
   --num_classes 20`` (its ``main`` under a profile hook that reads the unrounded F as it
   returns; the script prints three decimals);
2. ``hfpl-jax evaluate --pred-dir cam --gt-dir gt --list list.txt --num-classes 20``.

Reported: wall time of each, the speed-up, the largest difference of the mIoU curves and of the
contour F (the must-reach line: both <= 1e-6 in fractions), and the bad-input checks (a CAM file of
the wrong shape, a name missing from the ground truth, a missing prediction, a class out of range,
a corrupt file: each must exit with an error naming the file). Needs ``pandas`` and
``scikit-image`` for the reference's scripts.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import cv2
import numpy as np
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOC_SIZES = [(375, 500), (500, 375), (333, 500), (500, 333), (500, 500), (281, 500)]
SIZE_WEIGHTS = [0.45, 0.2, 0.12, 0.08, 0.08, 0.07]

# Runs contour_fscore.main() from the checkout on sys.argv[2:] and prints its unrounded F.
CONTOUR_RUNNER = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
import contour_fscore
captured = {}
def hook(frame, event, arg):
    if event == "return" and frame.f_code is contour_fscore.main.__code__:
        captured["F"] = frame.f_locals["F"]
sys.argv = ["contour_fscore.py", *sys.argv[2:]]
start = time.perf_counter()
sys.setprofile(hook)
contour_fscore.main()
sys.setprofile(None)
print(json.dumps({"F": captured["F"], "seconds_in_main": time.perf_counter() - start}))
"""


def generate(directory: str, count: int, seed: int = 0) -> list[str]:
    """VOC-like CAM dicts and masks in the reference's layout; returns the names."""
    rng = np.random.default_rng(seed)
    for sub in ("cam", "gt"):
        os.makedirs(os.path.join(directory, sub), exist_ok=True)
    names = []
    kernel = np.ones((3, 3), np.uint8)
    for i in range(count):
        name = f"bench_{i:05d}"
        height, width = VOC_SIZES[rng.choice(len(VOC_SIZES), p=SIZE_WEIGHTS)]
        yy, xx = np.mgrid[:height, :width].astype(np.float32)
        gt = np.zeros((height, width), np.uint8)
        cams = {}
        for _ in range(int(rng.integers(1, 4))):
            c = int(rng.integers(20))
            cy, cx = rng.uniform(0.2, 0.8) * height, rng.uniform(0.2, 0.8) * width
            sy, sx = rng.uniform(0.1, 0.35) * height, rng.uniform(0.1, 0.35) * width
            obj = ((yy - cy) / sy) ** 2 + ((xx - cx) / sx) ** 2 <= 1
            gt[obj] = c + 1
            cy, cx = cy + rng.normal(0, sy / 4), cx + rng.normal(0, sx / 4)
            blob = np.exp(-(((yy - cy) / (1.3 * sy)) ** 2 + ((xx - cx) / (1.3 * sx)) ** 2))
            blob = blob + rng.normal(0, 0.03, blob.shape).astype(np.float32)
            cam = np.maximum(cams.get(c, 0), np.clip(blob, 0, None))
            cams[c] = cam
        for c, cam in cams.items():
            cams[c] = (cam / cam.max()).astype(np.float32)
        for value in np.unique(gt[gt > 0]):  # VOC's void band along the outlines
            mask = (gt == value).astype(np.uint8)
            band = (cv2.dilate(mask, kernel, iterations=2) > 0) & ~(cv2.erode(mask, kernel) > 0)
            gt[band] = 255
        np.save(os.path.join(directory, "cam", name + ".npy"), cams)
        Image.fromarray(gt).save(os.path.join(directory, "gt", name + ".png"))
        names.append(name)
    with open(os.path.join(directory, "list.txt"), "w") as f:
        f.writelines(n + "\n" for n in names)
    return names


class Timer:
    """Wall time and the CPU time (user + system) of the finished child processes, their own
    children included: on a shared machine the CPU time is the steadier figure."""

    def __enter__(self):
        self.wall = time.perf_counter()
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.cpu = usage.ru_utime + usage.ru_stime
        return self

    def __exit__(self, *exc):
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.cpu = usage.ru_utime + usage.ru_stime - self.cpu
        self.wall = time.perf_counter() - self.wall


def run_reference(reference: str, directory: str) -> dict:
    env = dict(os.environ)
    logfile = os.path.join(directory, "ref_evallog.txt")
    if os.path.exists(logfile):
        os.remove(logfile)
    curve_args = [
        sys.executable, os.path.join(reference, "eval_cam_voc.py"),
        "--list", os.path.join(directory, "list.txt"),
        "--predict_dir", os.path.join(directory, "cam"),
        "--gt_dir", os.path.join(directory, "gt"),
        "--logfile", logfile, "--comment", "benchmark", "--type", "npy", "--curve", "True",
    ]  # fmt: skip
    with Timer() as curve_time:
        subprocess.run(curve_args, check=True, capture_output=True, env=env, cwd=directory)
    print(f"reference eval_cam_voc.py --curve: {curve_time.wall:.1f} s", flush=True)
    with open(logfile) as f:
        line = [x for x in f.read().splitlines() if x.startswith("mIoU:")][0]
    # "mIoU:[np.float64(23.1), ...]  " in percent.
    text = line[len("mIoU:") :].strip().replace("np.float64(", "").replace(")", "")
    curve = [float(v) / 100 for v in ast.literal_eval(text)]
    contour_args = [
        sys.executable, "-c", CONTOUR_RUNNER, reference,
        "--pred_path", os.path.join(directory, "cam"),
        "--img_list", os.path.join(directory, "list.txt"),
        "--gt_path", os.path.join(directory, "gt"),
        "--is_cam", "--is_seam", "--num_classes", "20", "--no-verbose",
    ]  # fmt: skip
    with Timer() as contour_time:
        result = subprocess.run(
            contour_args, check=True, capture_output=True, text=True, env=env, cwd=directory
        )
    contour = json.loads(result.stdout.strip().splitlines()[-1])
    return {
        "curve": curve,
        "contour_f": contour["F"],
        "curve_seconds": curve_time.wall,
        "contour_seconds": contour_time.wall,
        "curve_cpu_seconds": curve_time.cpu,
        "contour_cpu_seconds": contour_time.cpu,
    }


def evaluate_args(directory: str, pred_dir: str, out: str, workers: int | None) -> list[str]:
    args = [
        sys.executable, "-m", "hfpl_jax.cli", "evaluate", "--pred-dir", pred_dir,
        "--gt-dir", os.path.join(directory, "gt"), "--list", os.path.join(directory, "list.txt"),
        "--num-classes", "20", "--out", out,
    ]  # fmt: skip
    return args + ([] if workers is None else ["--workers", str(workers)])


def run_ours(directory: str, workers: int | None) -> dict:
    out = os.path.join(directory, "hfpl_jax_eval")
    env = dict(os.environ, PYTHONPATH=REPO)
    with Timer() as timer:
        subprocess.run(
            evaluate_args(directory, os.path.join(directory, "cam"), out, workers),
            check=True,
            capture_output=True,
            text=True,
            env=env,
        )
    with open(os.path.join(out, "metrics.json")) as f:
        metrics = json.load(f)
    return {
        "curve": metrics["miou_curve"],
        "contour_f": metrics["contour_f"],
        "seconds": timer.wall,
        "cpu_seconds": timer.cpu,
        "best_threshold": metrics["best_threshold"],
        "miou_at_fixed_threshold": metrics["miou_at_fixed_threshold"],
    }


def bad_input_checks(directory: str, names: list[str]) -> dict:
    """Breaks a copy of 4 images in five ways; each run must fail naming the broken file."""
    bad = os.path.join(directory, "bad")
    shutil.rmtree(bad, ignore_errors=True)
    os.makedirs(os.path.join(bad, "gt"))
    subset = names[:4]
    for name in subset:
        shutil.copy(os.path.join(directory, "gt", name + ".png"), os.path.join(bad, "gt"))
    with open(os.path.join(bad, "list.txt"), "w") as f:
        f.writelines(n + "\n" for n in subset)
    env = dict(os.environ, PYTHONPATH=REPO)

    def case(break_it) -> dict:
        cam = os.path.join(bad, "cam")
        shutil.rmtree(cam, ignore_errors=True)
        os.makedirs(cam)
        for name in subset:
            shutil.copy(os.path.join(directory, "cam", name + ".npy"), cam)
        culprit = break_it(cam)
        result = subprocess.run(
            evaluate_args(bad, cam, os.path.join(bad, "out"), 1),
            capture_output=True,
            text=True,
            env=env,
        )
        message = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else ""
        return {
            "exit_code": result.returncode,
            "message": message,
            "names_the_file": result.returncode != 0 and culprit in message,
        }

    def wrong_shape(cam):
        np.save(os.path.join(cam, subset[1] + ".npy"), {0: np.zeros((100, 100), np.float32)})
        return subset[1] + ".npy"

    def missing_gt(cam):
        os.rename(os.path.join(bad, "gt", subset[2] + ".png"), os.path.join(bad, "moved.png"))
        return subset[2] + ".png"

    def missing_prediction(cam):
        os.rename(os.path.join(bad, "moved.png"), os.path.join(bad, "gt", subset[2] + ".png"))
        os.remove(os.path.join(cam, subset[3] + ".npy"))
        return subset[3] + ".npy"

    def class_out_of_range(cam):
        shape = np.array(Image.open(os.path.join(bad, "gt", subset[0] + ".png"))).shape
        np.save(os.path.join(cam, subset[0] + ".npy"), {20: np.zeros(shape, np.float32)})
        return subset[0] + ".npy"

    def corrupt(cam):
        with open(os.path.join(cam, subset[1] + ".npy"), "r+b") as f:
            f.truncate(200)
        return subset[1] + ".npy"

    return {
        fn.__name__: case(fn)
        for fn in (wrong_shape, missing_gt, missing_prediction, class_out_of_range, corrupt)
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reference", required=True, help="checkout of the official HFPL code")
    parser.add_argument("--num-images", type=int, default=500)
    parser.add_argument("--workdir", help="where the generated files go (default: a temp dir)")
    parser.add_argument("--workers", type=int, default=None, help="hfpl-jax evaluate --workers")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.num_images < 4:
        parser.error("--num-images must be at least 4 (the bad-input checks break 4 copies)")

    directory = args.workdir or tempfile.mkdtemp(prefix="hfpl_eval_bench_")
    start = time.perf_counter()
    names = generate(directory, args.num_images)
    print(
        f"generated {len(names)} predictions in {directory} ({time.perf_counter() - start:.0f} s)"
    )
    ours = run_ours(directory, args.workers)
    print(f"hfpl-jax evaluate: {ours['seconds']:.1f} s", flush=True)
    reference = run_reference(os.path.abspath(args.reference), directory)
    print(
        f"reference: eval_cam_voc.py --curve {reference['curve_seconds']:.1f} s, "
        f"contour_fscore.py {reference['contour_seconds']:.1f} s"
    )
    curve_diff = float(np.max(np.abs(np.subtract(ours["curve"], reference["curve"]))))
    contour_diff = abs(ours["contour_f"] - reference["contour_f"])
    reference_seconds = reference["curve_seconds"] + reference["contour_seconds"]
    reference_cpu = reference["curve_cpu_seconds"] + reference["contour_cpu_seconds"]
    bad = bad_input_checks(directory, names)
    result = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpus": os.cpu_count(), "python": platform.python_version()},
        "num_images": len(names),
        "reference_seconds": {"eval_cam_voc_curve": reference["curve_seconds"],
                              "contour_fscore": reference["contour_seconds"],
                              "total": reference_seconds},
        "reference_cpu_seconds": {"eval_cam_voc_curve": reference["curve_cpu_seconds"],
                                  "contour_fscore": reference["contour_cpu_seconds"],
                                  "total": reference_cpu},
        "hfpl_jax_seconds": ours["seconds"],
        "hfpl_jax_cpu_seconds": ours["cpu_seconds"],
        "speedup": reference_seconds / ours["seconds"],
        "cpu_speedup": reference_cpu / ours["cpu_seconds"],
        "best_threshold": ours["best_threshold"],
        "miou_at_fixed_threshold": ours["miou_at_fixed_threshold"],
        "miou_curve_max_abs_diff": curve_diff,
        "contour_f_abs_diff": contour_diff,
        "best_miou": {"reference": max(reference["curve"]), "hfpl_jax": max(ours["curve"])},
        "contour_f": {"reference": reference["contour_f"], "hfpl_jax": ours["contour_f"]},
        "agree_to_1e-6": curve_diff <= 1e-6 and contour_diff <= 1e-6,
        "bad_input": bad,
    }  # fmt: skip
    print()
    print("| | reference | hfpl-jax evaluate |")
    print("|---|---|---|")
    print(
        f"| time, {len(names)} images | {reference_seconds:.1f} s "
        f"({reference['curve_seconds']:.1f} + {reference['contour_seconds']:.1f}) | "
        f"{ours['seconds']:.1f} s ({result['speedup']:.1f}x) |"
    )
    print(
        f"| CPU time (user + sys) | {reference_cpu:.1f} s | {ours['cpu_seconds']:.1f} s "
        f"({result['cpu_speedup']:.1f}x) |"
    )
    print(f"| best mIoU | {100 * max(reference['curve']):.4f}% | {100 * max(ours['curve']):.4f}% |")
    print(f"| contour F | {100 * reference['contour_f']:.4f}% | {100 * ours['contour_f']:.4f}% |")
    print(f"| max abs diff (fractions) | curve {curve_diff:.2e} | contour F {contour_diff:.2e} |")
    print()
    for name, check in bad.items():
        print(f"bad input {name}: exit {check['exit_code']}, names the file: "
              f"{check['names_the_file']}: {check['message']}")  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {args.json}")
    if not args.workdir:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
