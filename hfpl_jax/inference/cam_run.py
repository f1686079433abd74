"""``hfpl-jax infer-cam``: CAMs and CRF marginals of a trained CAM network over a dataset split.

    hfpl-jax infer-cam --workdir=WORKDIR --split=train_aug [--out=DIR] [--config.KEY=VALUE ...]

``WORKDIR`` is a ``train-cam`` workdir (checkpoints with the run's config); the network, its size
and the dataset come from its config unless overridden (``--config.input.dataset`` ...). Outputs go
to ``--out`` (default ``WORKDIR/plabels/<split>``) in the format of
:mod:`hfpl_jax.inference.cam_files`, plus ``infer_cam.json`` (the settings; a rerun with other
settings into the same folder is refused) and ``infer_cam_summary.process-<p>.json`` (counts and
timings).

Order of work: each process takes every ``P``-th image of the split; images already finished (their
files exist and verify) are skipped, so an interrupted run resumes where it stopped; the rest are
sorted by size, and consecutive images of one size form a batch (``batch_size`` images, a multiple
of the process's devices; a short batch is padded with copies), so each distinct image size costs
one compilation. The next batch is dispatched before the previous one's CRF and files are done, and
files are compressed and written by background threads.

Config (``--config.KEY=VALUE``; :func:`inference_config`):

``checkpoint_step``     the checkpoint to use (None: the newest).
``input.*``             ``dataset``, ``data_dir``, ``builder_kwargs`` (None: the training run's),
                        ``read_threads``, ``worker_count`` (decoding threads / processes).
``scales``              (0.5, 1.0, 1.5, 2.0), each with its flip.
``cam_source``          "cam_rv" (SEAM's PCM map, the reference) or "cam" (the classifier's map);
                        "" picks "cam_rv" for SEAM and "cam" otherwise.
``labels``              "ground_truth" (the reference) or "predicted" (the classifier's, for
                        images without labels: ``hfpl_jax.inference.cam.LabelRule``).
``label_threshold``     sigmoid threshold of a predicted label (0.5); ``label_at_least_one``.
``crf_alphas``          (1.0, 24.0); () skips the CRF. ``crf_iterations`` (10).
``formats``             ("npz",) and/or "reference" (the reference's ``.npy`` dicts).
``batch_size``          images per batch (0: one per local device).
``max_images``          only the first N images of the split (None: all).
``overwrite``           recompute finished images and accept changed settings.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import io
import json
import logging
import os
import sys
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from ml_collections import config_dict
from PIL import Image

from hfpl_jax import config_utils
from hfpl_jax.inference import cam, cam_files

logger = logging.getLogger(__name__)

CAM_ARCHS = ("seam", "resnet50_cam")
LABEL_SOURCES = ("ground_truth", "predicted")
# Settings that change the files: a resumed run must use the same.
_OUTPUT_SETTINGS = (
    "scales", "cam_source", "labels", "label_threshold", "label_at_least_one", "crf_alphas",
    "crf_iterations",
)  # fmt: skip

__all__ = ["inference_config", "main", "run_inference"]


def inference_config() -> ml_collections.ConfigDict:
    """The settings of ``hfpl-jax infer-cam`` (module docstring), the reference's by default."""
    config = ml_collections.ConfigDict()
    config.checkpoint_step = config_dict.placeholder(int)
    config.input = ml_collections.ConfigDict()
    config.input.dataset = config_dict.placeholder(str)
    config.input.data_dir = config_dict.placeholder(str)
    config.input.builder_kwargs = config_dict.placeholder(dict)
    config.input.read_threads = 0
    config.input.worker_count = 0
    config.scales = cam.DEFAULT_SCALES
    config.cam_source = ""
    config.labels = "ground_truth"
    config.label_threshold = 0.5
    config.label_at_least_one = True
    config.crf_alphas = cam.DEFAULT_CRF_ALPHAS
    config.crf_iterations = 10
    config.formats = ("npz",)
    config.batch_size = 0
    config.max_images = config_dict.placeholder(int)
    config.overwrite = False
    config.lock()
    return config


# --------------------------------------------------------------------------------------------------
# The network of a workdir


def _resolve_data_dir(data_dir: str | None) -> str:
    chosen = data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
    return os.path.abspath(os.path.expanduser(chosen))


def load_network(workdir: str, num_classes: int, step: int | None = None):
    """``(model, variables, train_config, path)`` of a CAM-training workdir's checkpoint (``path``:
    the step's folder, ``WORKDIR/checkpoints/<step>``).

    Raises:
      FileNotFoundError: no checkpoint in ``workdir``.
      ValueError: naming the checkpoint, when it is not a CAM network's, or its parameters do not
        match the network its config describes with ``num_classes`` classes (another architecture
        or size, or a head for another class count).
    """
    from hfpl_jax import checkpoint, models  # noqa: PLC0415
    from hfpl_jax.train import cam_config  # noqa: PLC0415

    step_dir = checkpoint.checkpoint_dir(workdir)
    try:
        saved = checkpoint.load_config_json(workdir, step)
    except FileNotFoundError:
        raise
    except Exception as error:  # orbax raises many kinds on a foreign folder
        raise ValueError(f"cannot read the run config of checkpoint {step_dir}: {error}") from None
    if "model" not in saved or "arch" not in saved.get("model", {}):
        raise ValueError(
            f"checkpoint {step_dir} is not a train-cam checkpoint: its config has no model.arch "
            f"(found keys {sorted(saved)})"
        )
    config = cam_config.restore_config(saved)
    arch = config.model.arch
    if arch not in CAM_ARCHS:
        raise ValueError(
            f"checkpoint {step_dir} holds a {arch!r} network; infer-cam needs a CAM network "
            f"({', '.join(CAM_ARCHS)})"
        )
    blocks = config.model.blocks
    model = models.build(
        arch,
        num_classes,
        width=config.model.width,
        blocks=None if blocks is None else tuple(blocks),
        batch_norm=config.model.batch_norm,
        dropout=False,
        dtype={"float32": jax.numpy.float32, "bfloat16": jax.numpy.bfloat16}[
            config.model.compute_dtype
        ],
    )
    if step is None:  # the newest, as load_variables takes it; recorded in the manifest
        steps = [int(n) for n in os.listdir(step_dir) if n.isdigit()]
        step = max(steps) if steps else None
    variables = checkpoint.load_variables(workdir, step)
    expected = jax.eval_shape(
        lambda: models.init_variables(arch, num_classes, jax.random.key(0), **_size_kwargs(config))
    )
    where = os.path.join(step_dir, str(step))
    _check_variables(expected, variables, where, arch, num_classes)
    return model, variables, config, where


def _size_kwargs(config) -> dict:
    blocks = config.model.blocks
    return {"width": config.model.width, "blocks": None if blocks is None else tuple(blocks)}


def _flat_shapes(tree) -> dict[str, tuple]:
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {
        "/".join(str(getattr(k, "key", k)) for k in path): tuple(np.shape(leaf))
        for path, leaf in flat
    }


def _check_variables(expected, found, where: str, arch: str, num_classes: int) -> None:
    want = _flat_shapes({k: expected[k] for k in ("params", "batch_stats") if k in expected})
    have = _flat_shapes({k: found[k] for k in ("params", "batch_stats") if k in found})
    missing = sorted(set(want) - set(have))
    extra = sorted(set(have) - set(want))
    if missing or extra:
        raise ValueError(
            f"checkpoint {where} does not hold a {arch!r} network of its config's size: "
            f"{len(missing)} parameters missing (e.g. {missing[:3]}), {len(extra)} unexpected "
            f"(e.g. {extra[:3]})"
        )
    wrong = {p: (want[p], have[p]) for p in want if want[p] != have[p]}
    if not wrong:
        return
    heads = {p: s for p, s in wrong.items() if s[0][-1:] == (num_classes + 1,)}
    if heads:
        path, (shape, got) = next(iter(heads.items()))
        raise ValueError(
            f"checkpoint {where} was trained for {got[-1] - 1} classes ({path} {got}), but the "
            f"dataset has {num_classes} (expected {shape}); pick the dataset it was trained on "
            "(--config.input.dataset)"
        )
    path, (shape, got) = next(iter(wrong.items()))
    raise ValueError(
        f"checkpoint {where}: {len(wrong)} parameters differ from a {arch!r} network of its "
        f"config's size, e.g. {path}: expected {shape}, found {got}"
    )


# --------------------------------------------------------------------------------------------------
# The work list


def _name_and_size(raw, index: int) -> tuple[str, tuple[int, int]]:
    example = raw[index]
    with Image.open(io.BytesIO(example["image"])) as image:  # reads the header only
        width, height = image.size
    return example["name"], (height, width)


def _finished(out_dir, name, size, settings) -> bool:
    paths = cam_files.output_paths(out_dir, name, settings["formats"], settings["crf_alphas"])
    return all(
        cam_files.cam_file_complete(p, image_hw=size, crf_alphas=settings["crf_alphas"])
        if p.endswith(".npz")
        else cam_files.cam_file_complete(p, image_hw=size)
        for p in paths
    )


def _check_manifest(out_dir: str, settings: dict, overwrite: bool) -> None:
    path = os.path.join(out_dir, "infer_cam.json")
    if os.path.isfile(path) and not overwrite:
        with open(path) as f:
            previous = json.load(f)
        changed = {
            k: (previous.get(k), settings[k])
            for k in _OUTPUT_SETTINGS + ("checkpoint", "dataset", "split")
            if previous.get(k) != settings[k]
        }
        if changed:
            raise ValueError(
                f"{path} records another run into this folder; changed (was, now): {changed}. "
                "Use another --out, or --config.overwrite=true to recompute every image."
            )
    with cam_files._atomic_open(path) as f:  # noqa: SLF001
        f.write((json.dumps(settings, indent=2, sort_keys=True) + "\n").encode())


# --------------------------------------------------------------------------------------------------
# The loop


def _batches(examples, batch_size: int):
    """Consecutive same-size examples, at most ``batch_size`` per batch."""
    batch = []
    for example in examples:
        if batch and (
            example["image"].shape != batch[0]["image"].shape or len(batch) == batch_size
        ):
            yield batch
            batch = []
        batch.append(example)
    if batch:
        yield batch


def _stack(batch: list[dict], batch_size: int, num_scales: int):
    padded = batch + [batch[-1]] * (batch_size - len(batch))
    inputs = [
        np.stack([np.stack(e["inputs"][2 * k : 2 * k + 2]) for e in padded])
        for k in range(num_scales)
    ]
    labels = np.stack([e["labels"] for e in padded]).astype(np.float32)
    return inputs, labels


def run_inference(
    workdir: str, split: str, config: ml_collections.ConfigDict, out_dir: str | None = None
) -> dict[str, Any]:
    """Runs inference over this process's share of ``split`` (module docstring); returns the
    summary it also writes."""
    from hfpl_jax import data  # noqa: PLC0415
    from hfpl_jax.data import input_pipeline  # noqa: PLC0415
    from hfpl_jax.train import cam_config  # noqa: PLC0415

    if config.labels not in LABEL_SOURCES:
        raise ValueError(f"config.labels must be one of {LABEL_SOURCES}, found {config.labels!r}")
    unknown = set(config.formats) - set(cam_files.FORMATS)
    if unknown or not config.formats:
        raise ValueError(
            f"config.formats must be among {cam_files.FORMATS}, found {config.formats}"
        )
    from hfpl_jax import checkpoint  # noqa: PLC0415

    train_config = cam_config.restore_config(checkpoint.load_config_json(workdir))
    dataset = config.input.dataset or train_config.input.dataset
    data_dir = _resolve_data_dir(config.input.data_dir or train_config.input.data_dir)
    builder_kwargs = dict(
        config.input.builder_kwargs
        if config.input.builder_kwargs is not None
        else train_config.input.builder_kwargs
    )
    num_classes = data.num_classes(dataset, data_dir, **builder_kwargs)
    model, variables, train_config, checkpoint_path = load_network(
        workdir, num_classes, config.checkpoint_step
    )
    cam_source = config.cam_source or ("cam_rv" if train_config.model.arch == "seam" else "cam")
    if cam_source not in cam.CAM_SOURCES or (
        cam_source == "cam_rv" and train_config.model.arch != "seam"
    ):
        raise ValueError(
            f"config.cam_source must be one of {cam.CAM_SOURCES} ('cam_rv' needs SEAM; this "
            f"run is {train_config.model.arch!r}), found {config.cam_source!r}"
        )
    out_dir = os.path.abspath(out_dir or os.path.join(workdir, "plabels", split))
    settings = {
        "checkpoint": checkpoint_path,
        "dataset": dataset,
        "split": split,
        "scales": [float(s) for s in config.scales],
        "cam_source": cam_source,
        "labels": config.labels,
        "label_threshold": float(config.label_threshold),
        "label_at_least_one": bool(config.label_at_least_one),
        "crf_alphas": [float(a) for a in config.crf_alphas],
        "crf_iterations": int(config.crf_iterations),
        "formats": list(config.formats),
    }
    _check_manifest(out_dir, settings, config.overwrite)

    raw = data.raw_source(dataset, data_dir, split, **builder_kwargs)
    count = len(raw) if config.max_images is None else min(int(config.max_images), len(raw))
    process, processes = jax.process_index(), jax.process_count()
    shard = list(range(process, count, processes))
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        listed = list(pool.map(lambda i: (i, *_name_and_size(raw, i)), shard))
        done = (
            [False] * len(listed)
            if config.overwrite
            else list(pool.map(lambda t: _finished(out_dir, t[1], t[2], settings), listed))
        )
    pending = sorted((size, i) for (i, _, size), d in zip(listed, done, strict=True) if not d)
    sizes = collections.Counter(size for size, _ in pending)
    logger.info(
        "%s/%s: %d images for process %d of %d, %d already finished, %d to do in %d sizes",
        dataset, split, len(shard), process, processes, sum(done), len(pending), len(sizes),
    )  # fmt: skip

    inferencer = cam.CamInferencer(
        model,
        variables,
        scales=config.scales,
        cam_source=cam_source,
        gap_source=train_config.loss.gap_source,
        label_rule=(
            cam.LabelRule(config.label_threshold, config.label_at_least_one)
            if config.labels == "predicted"
            else None
        ),
    )
    crf = cam.CrfInferencer(config.crf_alphas, config.crf_iterations) if config.crf_alphas else None
    batch_size = config.batch_size or inferencer.num_devices
    if batch_size % inferencer.num_devices:
        raise ValueError(
            f"config.batch_size={batch_size} must be a multiple of this process's "
            f"{inferencer.num_devices} devices"
        )
    input_config = {
        "dataset": dataset, "data_dir": data_dir, "split": split, "method": "cam",
        "scales": tuple(config.scales), "builder_kwargs": builder_kwargs,
        "read_threads": config.input.read_threads, "worker_count": config.input.worker_count,
    }  # fmt: skip
    examples = input_pipeline.make_msf_inference_iterator(
        input_config, indices=[i for _, i in pending]
    )
    start = time.perf_counter()
    stats = {"images": 0, "padded_rows": 0, "batches": 0}
    writes: collections.deque = collections.deque()
    with concurrent.futures.ThreadPoolExecutor(2) as writer:

        def finish(batch, outputs):
            host = {k: np.asarray(v) for k, v in outputs.items()}  # waits for the batch
            for row, example in enumerate(batch):
                present = np.flatnonzero(host["labels"][row] > cam.LABEL_EPS)
                cams_hwk = np.ascontiguousarray(host["cams"][row][..., present])
                marginals = crf(example["image"], cams_hwk) if crf is not None else None
                writes.append(
                    writer.submit(
                        _write,
                        out_dir,
                        example["name"],
                        present,
                        cams_hwk,
                        host,
                        row,
                        marginals,
                        settings,
                    )  # fmt: skip
                )
            while len(writes) > 4 * batch_size:
                writes.popleft().result()

        in_flight = None
        for batch in _batches(examples, batch_size):
            inputs, labels = _stack(batch, batch_size, len(config.scales))
            outputs = inferencer(inputs, labels, batch[0]["image"].shape[:2])
            if in_flight is not None:
                finish(*in_flight)
            in_flight = (batch, outputs)
            stats["images"] += len(batch)
            stats["padded_rows"] += batch_size - len(batch)
            stats["batches"] += 1
            if stats["batches"] % 20 == 0:
                elapsed = time.perf_counter() - start
                logger.info("%d/%d images, %.2f s/image", stats["images"], len(pending),
                            elapsed / stats["images"])  # fmt: skip
        if in_flight is not None:
            finish(*in_flight)
        while writes:
            writes.popleft().result()
    seconds = time.perf_counter() - start
    summary = {
        **settings,
        "process": process,
        "processes": processes,
        "out_dir": out_dir,
        "images_in_shard": len(shard),
        "images_skipped": int(sum(done)),
        "images_done": stats["images"],
        "distinct_sizes": len(sizes),
        "batch_size": batch_size,
        "batches": stats["batches"],
        "padded_rows": stats["padded_rows"],
        "seconds": seconds,
        "cam_compiles": inferencer.compile_stats.compiles,
        "cam_compile_seconds": inferencer.compile_stats.seconds,
        "crf_compiles": crf.compile_stats.compiles if crf else 0,
        "crf_compile_seconds": crf.compile_stats.seconds if crf else 0.0,
    }
    path = os.path.join(out_dir, f"infer_cam_summary.process-{process}.json")
    with cam_files._atomic_open(path) as f:  # noqa: SLF001
        f.write((json.dumps(summary, indent=2, sort_keys=True) + "\n").encode())
    logger.info(
        "%d images in %.1f s (%d CAM compilations, %.1f s); outputs in %s",
        stats["images"], seconds, summary["cam_compiles"], summary["cam_compile_seconds"], out_dir,
    )  # fmt: skip
    return summary


def _write(out_dir, name, present, cams_hwk, host, row, marginals, settings):
    crf = None
    if marginals is not None:
        crf = np.transpose(np.asarray(marginals, np.float32), (0, 3, 1, 2))
    record = cam_files.CamRecord(
        classes=present,
        cams=np.transpose(cams_hwk, (2, 0, 1)),
        labels=host["labels"][row],
        scores=host["scores"][row],
        crf_alphas=np.asarray(settings["crf_alphas"], np.float32),
        crf=crf if crf is not None else np.zeros((0, len(present) + 1, *cams_hwk.shape[:2])),
    )
    cam_files.write_outputs(out_dir, name, record, settings["formats"])


# --------------------------------------------------------------------------------------------------
# Command line


def main(argv: list[str] | None = None) -> int:
    """``hfpl-jax infer-cam --workdir=DIR --split=S [--out=DIR] [--config.KEY=VALUE ...]``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )
    logging.getLogger("absl").setLevel(logging.WARNING)
    parser = argparse.ArgumentParser(
        prog="hfpl-jax infer-cam",
        description="CAMs (4 scales x flip) and CRF marginals of a train-cam workdir's network "
        "over a dataset split; rerun to resume. Settings: --config.KEY=VALUE (see "
        "hfpl_jax/inference/cam_run.py).",
    )
    parser.add_argument("--workdir", required=True, help="a train-cam workdir (checkpoints)")
    parser.add_argument("--split", required=True, help="dataset split, e.g. train_aug, val")
    parser.add_argument("--out", default=None, help="output folder (WORKDIR/plabels/SPLIT)")
    group = parser.add_argument_group("multi-host (each process takes every P-th image)")
    group.add_argument("--distributed", action="store_true", help="jax.distributed auto-detect")
    group.add_argument("--coordinator_address", default=None)
    group.add_argument("--num_processes", type=int, default=None)
    group.add_argument("--process_id", type=int, default=None)
    try:
        config_path, overrides, rest = config_utils.split_config_args(argv)
        if config_path is not None:
            raise ValueError("infer-cam takes no --config file; set values with --config.KEY=V")
        args = parser.parse_args(rest)
        config = inference_config()
        for key, text in overrides:
            config_utils.apply_override(config, key, text)
    except ValueError as error:
        print(f"hfpl-jax infer-cam: {error}", file=sys.stderr)
        return 2
    from hfpl_jax import parallel  # noqa: PLC0415

    parallel.initialize_distributed(
        coordinator_address=args.coordinator_address,
        num_processes=args.num_processes,
        process_id=args.process_id,
        auto=args.distributed,
    )
    try:
        run_inference(args.workdir, args.split, config, args.out)
    except (ValueError, FileNotFoundError) as error:
        print(f"hfpl-jax infer-cam: {error}", file=sys.stderr)
        return 2
    return 0
