"""Benchmark the feature similarity loss (forward + backward): time and peak memory.

Every (case, method) runs in a fresh subprocess, so that peak memories do not mix: the figure is
the growth of the process's peak resident set (``VmHWM``) over its resident level after the
imports and the input arrays (compilation included for JAX). Timings are the best of
``--repeats`` calls after one warm-up call (which compiles), each ended by
``jax.block_until_ready`` (JAX) or a completed ``backward()`` (PyTorch).

With ``--reference PATH_TO_HFPL_CHECKOUT`` the official ``tool/probutils.feature_similarity_loss``
(fast=False, as the training script calls it) runs on the same inputs in its own subprocess
(PyTorch's default thread count), and the table shows the speed and memory ratios.

Command used for BENCHMARKS.md:

    .venv/bin/python scripts/benchmark_losses.py --reference /work/ref/hfpl \\
        --json-out benchmark_losses.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time

DEFAULT_CASES = ("8x56x56x21", "2x112x112x21")
METHODS = ("exact", "windowed", "dense")


def parse_case(case: str) -> tuple[int, int, int, int]:
    try:
        n, h, w, c = (int(v) for v in case.lower().split("x"))
    except ValueError as e:
        raise ValueError(f"--cases: expected NxHxWxC (e.g. 8x56x56x21), got {case!r}") from e
    return n, h, w, c


def _status_kb(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        return int(re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M).group(1))


def _reset_peak() -> bool:
    """Resets VmHWM to the current RSS (Linux >= 4.0); False where not permitted."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _inputs(n, h, w, c, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    image = rng.uniform(0.0, 1.0, (n, h, w, 3)).astype(np.float32)
    # CAM-like predictions: max-normalised maps in [0, 1], background 1 - max fg.
    pred = (rng.uniform(0.0, 1.0, (n, h, w, c)) ** 3).astype(np.float32)
    pred[..., 0] = 1.0 - pred[..., 1:].max(axis=-1)
    return image, pred


def worker(impl: str, case: str, method: str, repeats: int, reference: str | None) -> dict:
    """Runs in the subprocess: returns timings and memory for one (impl, case, method)."""
    n, h, w, c = parse_case(case)
    if impl == "jax":
        import jax

        from hfpl_jax import losses

        image, pred = _inputs(n, h, w, c)
        image, pred = jax.device_put(image), jax.device_put(pred)

        def loss_fn(x, y):
            return losses.feature_similarity_loss(x, y, method=method)

        step = jax.jit(jax.value_and_grad(loss_fn, argnums=1))

        def run():
            return jax.block_until_ready(step(image, pred))

        versions = {"jax": jax.__version__}
    else:
        import importlib.util

        import numpy as np
        import torch

        path = os.path.join(reference, "tool", "probutils.py")
        spec = importlib.util.spec_from_file_location("hfpl_reference_probutils", path)
        probutils = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(probutils)
        image, pred = _inputs(n, h, w, c)
        x = torch.from_numpy(np.ascontiguousarray(image.transpose(0, 3, 1, 2)))
        y = torch.from_numpy(np.ascontiguousarray(pred.transpose(0, 3, 1, 2))).requires_grad_()

        def run():
            y.grad = None
            loss = probutils.feature_similarity_loss(x, y, 2.5, 5.0)
            loss.backward()
            return loss.detach(), y.grad

        versions = {"torch": torch.__version__, "torch_threads": torch.get_num_threads()}
        method = "reference"

    import warnings

    warnings.filterwarnings("ignore")
    if not _reset_peak():
        # Without the reset, VmHWM would include the imports' peak and misstate the growth.
        raise SystemExit("benchmark_losses: cannot reset the peak RSS (/proc/self/clear_refs)")
    base_kb = _status_kb("VmRSS")
    t0 = time.perf_counter()
    loss, _ = run()
    warmup = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        loss, _ = run()
        times.append(time.perf_counter() - t0)
    peak_kb = _status_kb("VmHWM")
    extra = {}
    if impl == "jax":
        # The compiled program's own scratch memory (XLA's buffer assignment), for reference.
        stats = step.lower(image, pred).compile().memory_analysis()
        if stats is not None:
            extra["xla_temp_mb"] = stats.temp_size_in_bytes / 2**20
    return {
        "impl": impl,
        "case": case,
        "method": method,
        "loss": float(loss),
        "best_s": min(times),
        "median_s": sorted(times)[len(times) // 2],
        "times_s": times,
        "warmup_s": warmup,
        "base_rss_mb": base_kb / 1024,
        "peak_growth_mb": (peak_kb - base_kb) / 1024,
        **versions,
        **extra,
    }


def run_subprocess(args: list[str], timeout: float) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--_worker", *args]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if proc.returncode != 0:
        tail = (proc.stderr or "").strip().splitlines()[-3:]
        return {"error": f"exit code {proc.returncode}: {' | '.join(tail)}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def machine_info() -> dict:
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            model = re.search(r"^model name\s*:\s*(.*)$", f.read(), re.M).group(1)
    except (OSError, AttributeError):
        model = platform.processor()
    mem_gb = None
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            mem_gb = int(re.search(r"MemTotal:\s+(\d+)", f.read()).group(1)) / 2**20
    except (OSError, AttributeError):
        pass
    return {
        "nproc": os.cpu_count(),
        "affinity_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": model,
        "mem_total_gb": mem_gb,
        "python": platform.python_version(),
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", help="path to an arvijj/hfpl checkout (runs its FSL too)")
    parser.add_argument("--cases", default=",".join(DEFAULT_CASES), help="NxHxWxC,...")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--max-dense-pairs",
        type=float,
        default=4e8,
        help="skip dense and the reference where N*(H*W)^2 exceeds this (the default keeps both "
        "standard cases; the reference needs ~7.5 GB at 2x112x112); 0: no limit",
    )
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per subprocess")
    parser.add_argument("--json-out", help="write all records and the machine description here")
    parser.add_argument("--_worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--impl", default="jax", help=argparse.SUPPRESS)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args._worker:
        record = worker(args.impl, args.case, args.method, args.repeats, args.reference)
        print(json.dumps(record))
        return 0

    methods = [m for m in args.methods.split(",") if m]
    for m in methods:
        if m not in METHODS:
            parser.error(f"--methods: unknown method {m!r} (choose from {METHODS})")
    if args.reference and not os.path.isfile(os.path.join(args.reference, "tool", "probutils.py")):
        parser.error(f"--reference: {args.reference}/tool/probutils.py not found")
    cases = [c for c in args.cases.split(",") if c]
    for c in cases:
        parse_case(c)

    info = machine_info()
    print(f"# machine: {info['nproc']} CPUs ({info['cpu_model']}), {info['mem_total_gb']:.0f} GiB")
    records = []
    for case in cases:
        n, h, w, _ = parse_case(case)
        big = args.max_dense_pairs and n * (h * w) ** 2 > args.max_dense_pairs
        jobs = [("jax", m) for m in methods if not (m == "dense" and big)]
        if args.reference:
            jobs.append(("torch", "reference") if not big else ("skip", "reference"))
        for impl, method in jobs:
            if impl == "skip":
                records.append({"impl": "torch", "case": case, "method": method,
                                "error": "skipped (--max-dense-pairs)"})  # fmt: skip
                continue
            sub = ["--impl", impl, "--case", case, "--method", method]
            sub += ["--repeats", str(args.repeats)]
            if args.reference:
                sub += ["--reference", args.reference]
            rec = run_subprocess(sub, args.timeout)
            rec.setdefault("impl", impl)
            rec.setdefault("case", case)
            rec.setdefault("method", method)
            records.append(rec)
            status = rec.get("error") or f"{rec['best_s']:.4f} s, +{rec['peak_growth_mb']:.0f} MB"
            print(f"#   {case} {impl}/{method}: {status}", flush=True)

    # Ratios against the reference on the same case.
    ref = {r["case"]: r for r in records if r["method"] == "reference" and "error" not in r}
    for r in records:
        base = ref.get(r["case"])
        if base and "error" not in r and r["method"] != "reference":
            r["speedup_vs_reference"] = base["best_s"] / r["best_s"]
            r["memory_fraction_of_reference"] = r["peak_growth_mb"] / base["peak_growth_mb"]
            r["loss_rel_diff_vs_reference"] = abs(r["loss"] - base["loss"]) / abs(base["loss"])

    header = (
        f"| {'case (NxHxWxC)':<14} | {'impl / method':<17} | {'best s':>8} | {'median s':>8} "
        f"| {'peak +MB':>8} | {'speed-up':>8} | {'mem frac':>8} | {'loss':>12} |"
    )
    print(header)
    print("|" + "|".join("-" * (len(col)) for col in header.split("|")[1:-1]) + "|")
    for r in records:
        name = f"{'jax' if r['impl'] == 'jax' else 'torch'} / {r['method']}"
        if "error" in r:
            print(f"| {r['case']:<14} | {name:<17} | {r['error']} |")
            continue
        speed = f"{r['speedup_vs_reference']:.1f}x" if "speedup_vs_reference" in r else "-"
        frac = (
            f"{r['memory_fraction_of_reference']:.3f}"
            if "memory_fraction_of_reference" in r
            else "-"
        )
        print(
            f"| {r['case']:<14} | {name:<17} | {r['best_s']:>8.4f} | {r['median_s']:>8.4f} "
            f"| {r['peak_growth_mb']:>8.0f} | {speed:>8} | {frac:>8} | {r['loss']:>12.7f} |"
        )
    if args.json_out:
        from hfpl_jax import atomic_io

        atomic_io.write_json(args.json_out, {"machine": info, "records": records}, sort_keys=False)
        print(f"# wrote {args.json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
