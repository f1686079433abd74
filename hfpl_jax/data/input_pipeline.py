"""grain input pipelines over TFDS array_record sources (host-local batches; the training loop
makes them global ``jax.Array`` s with ``hfpl_jax.parallel.host_batch_to_global``).

Order and randomness are pure functions of (seed, epoch, example index), so a pipeline gives the
same batches whatever its ``worker_count``, and a training iterator (:class:`BatchIterator`) is
checkpointed as the number of batches it has handed out and resumed exactly, with any
``worker_count``:

- Epoch ``e`` visits the split in the order ``perm_e`` = ``default_rng([seed, e, 0x5EED])
  .permutation(N)`` (identity without shuffling) and has ``N // G`` global batches of ``G`` examples
  (the reference's ``drop_last``). Global batch ``t`` is ``perm_e[t·G : (t+1)·G]``; process ``p`` of
  ``P`` reads its slice ``[p·G/P, (p+1)·G/P)``, so processes read disjoint shards and the global
  batch does not depend on the number of processes.
- Example ``i`` of epoch ``e`` draws its augmentation from ``default_rng([seed, e, i, stream])``;
  ``stream`` separates the CAM, AffinityNet and segmentation pipelines.
- Batches are assembled before ``mp_prefetch``, so a worker process builds whole batches and adding
  workers only changes speed.

The training process reads with ``tfds.data_source`` machinery and decodes with PIL/OpenCV: it never
imports TensorFlow. Each ``make_*`` function takes an ``input_config`` (an ``ml_collections``
ConfigDict or any object with the attributes below; missing optional ones take the defaults shown).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Mapping
from typing import Any

import grain
import numpy as np
from PIL import Image

from hfpl_jax.data import sources, transforms

__all__ = [
    "AffTrainExample",
    "BatchIterator",
    "CamTrainExample",
    "EpochOrder",
    "MsfExample",
    "STREAM_AFF",
    "STREAM_CAM",
    "STREAM_SEG",
    "SegTrainExample",
    "cam_train_steps_per_epoch",
    "decode_image_cv2",
    "example_rng",
    "load_crf_dict",
    "load_label_png",
    "make_aff_train_iterator",
    "make_cam_train_iterator",
    "make_msf_inference_iterator",
    "make_seg_train_iterator",
]

_PERMUTATION_TAG = 0x5EED
STREAM_CAM, STREAM_AFF, STREAM_SEG = 1, 2, 3

_REQUIRED = object()


def _get(config: Any, name: str, default: Any = _REQUIRED) -> Any:
    """``config.name`` for ConfigDicts, plain objects and mappings; the default when absent."""
    if isinstance(config, Mapping):
        value = config.get(name, default)
    else:
        try:
            value = getattr(config, name)
        except (AttributeError, KeyError):
            value = default
    if value is _REQUIRED:
        raise ValueError(f"input_config.{name} is required")
    return value


def _builder_kwargs(config: Any) -> dict:
    kwargs = _get(config, "builder_kwargs", None) or {}
    if hasattr(kwargs, "to_dict"):
        kwargs = kwargs.to_dict()
    return dict(kwargs)


def _data_dir(config: Any) -> str:
    data_dir = _get(config, "data_dir")
    if not data_dir:
        raise ValueError("input_config.data_dir must name the TFDS data directory")
    return os.fspath(data_dir)


@dataclasses.dataclass(frozen=True)
class EpochOrder:
    """Which example each host-local position reads (see the module docstring).

    Host-local position ``j`` (counting over all epochs) is epoch ``j // examples_per_epoch``,
    global batch ``t`` and row ``k`` within this process's slice of it.
    """

    num_records: int
    global_batch_size: int
    seed: int
    shuffle: bool = True
    process_index: int = 0
    process_count: int = 1

    def __post_init__(self):
        if self.process_count < 1 or not 0 <= self.process_index < self.process_count:
            raise ValueError(
                f"process_index must lie in [0, process_count), got {self.process_index} of "
                f"{self.process_count}"
            )
        if self.global_batch_size < 1 or self.global_batch_size % self.process_count:
            raise ValueError(
                f"global_batch_size ({self.global_batch_size}) must be a positive multiple of the "
                f"process count ({self.process_count})"
            )
        if self.num_records < self.global_batch_size:
            raise ValueError(
                f"the split has {self.num_records} examples, fewer than one global batch of "
                f"{self.global_batch_size}"
            )

    @property
    def local_batch_size(self) -> int:
        return self.global_batch_size // self.process_count

    @property
    def steps_per_epoch(self) -> int:
        return self.num_records // self.global_batch_size

    @property
    def examples_per_epoch(self) -> int:
        """Host-local examples per epoch."""
        return self.steps_per_epoch * self.local_batch_size

    @functools.lru_cache(maxsize=2)  # noqa: B019 (instances are few and long-lived)
    def permutation(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.num_records)
        return np.random.default_rng([self.seed, epoch, _PERMUTATION_TAG]).permutation(
            self.num_records
        )

    def locate(self, position: int) -> tuple[int, int]:
        """(epoch, example index) read at host-local ``position``."""
        epoch, within = divmod(int(position), self.examples_per_epoch)
        step, row = divmod(within, self.local_batch_size)
        slot = step * self.global_batch_size + self.process_index * self.local_batch_size + row
        return epoch, int(self.permutation(epoch)[slot])


def example_rng(seed: int, epoch: int, index: int, stream: int) -> np.random.Generator:
    """The augmentation RNG of example ``index`` in ``epoch``."""
    return np.random.default_rng([seed, epoch, index, stream])


def _absl_flags_ready() -> None:
    """grain's multiprocessing reads its absl flags; outside an absl app nobody parsed them, so
    mark them parsed (their defaults then apply) instead of failing in the workers."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def _iterate(dataset, *, num_threads, prefetch_buffer_size, worker_count, per_worker_buffer_size):
    """Iterator over a grain ``MapDataset``: ``num_threads`` read threads in this process, or,
    with ``worker_count > 0``, that many worker processes each prefetching whole elements."""
    iter_dataset = dataset.to_iter_dataset(
        grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch_buffer_size)
    )
    if worker_count > 0:
        _absl_flags_ready()
        iter_dataset = iter_dataset.mp_prefetch(
            grain.MultiprocessingOptions(
                num_workers=worker_count, per_worker_buffer_size=per_worker_buffer_size
            )
        )
    return iter(iter_dataset)


class BatchIterator:
    """Host-local batches with a checkpointable position.

    Batch ``k`` is a pure function of ``k`` (see the module docstring), so the state is just the
    number of batches handed out: ``{"next_batch": k}``. ``set_state`` rebuilds the grain pipeline
    to start at that batch, so a checkpoint resumes exactly, even with a different
    ``worker_count``; batches prefetched but not handed out are simply recomputed. The state is
    JSON, as ``hfpl_jax.checkpoint`` stores it.
    """

    STATE_FORMAT = "hfpl_jax.data.BatchIterator/1"

    def __init__(self, dataset, *, num_batches, worker_count, read_threads, prefetch_batches):
        self._dataset = dataset  # grain MapDataset of batches
        self._num_batches = num_batches  # None: endless
        self._worker_count = worker_count
        self._read_threads = read_threads
        self._prefetch_batches = prefetch_batches
        self._next_batch = 0
        self._iterator = None

    def _start(self):
        dataset = self._dataset[self._next_batch :] if self._next_batch else self._dataset
        return _iterate(
            dataset,
            num_threads=max(1, self._read_threads),
            prefetch_buffer_size=self._prefetch_batches,
            worker_count=self._worker_count,
            per_worker_buffer_size=max(1, self._prefetch_batches),
        )

    def __iter__(self):
        return self

    def __next__(self):
        if self._num_batches is not None and self._next_batch >= self._num_batches:
            raise StopIteration
        if self._iterator is None:
            self._iterator = self._start()
        batch = next(self._iterator)
        self._next_batch += 1
        return batch

    def get_state(self) -> dict:
        return {"format": self.STATE_FORMAT, "next_batch": self._next_batch}

    def set_state(self, state) -> None:
        if isinstance(state, (bytes, str)):
            state = json.loads(state)
        if not isinstance(state, Mapping) or state.get("format") != self.STATE_FORMAT:
            raise ValueError(
                f"not a {self.STATE_FORMAT} state: {state!r} (was it saved by another pipeline?)"
            )
        next_batch = int(state["next_batch"])
        if next_batch < 0 or (self._num_batches is not None and next_batch > self._num_batches):
            raise ValueError(f"next_batch {next_batch} is outside [0, {self._num_batches}]")
        self.close()
        self._next_batch = next_batch

    @property
    def next_batch(self) -> int:
        """Index of the batch the next ``next()`` returns (= batches handed out so far)."""
        return self._next_batch

    def close(self) -> None:
        """Stops worker processes (if any); iteration may continue afterwards (restarts them)."""
        if self._iterator is not None and hasattr(self._iterator, "close"):
            self._iterator.close()
        self._iterator = None


def _make_train_iterator(
    input_config, example_cls, *, seed, process_index, process_count, **example_options
) -> BatchIterator:
    """The shared plumbing of the training iterators: the split, its :class:`EpochOrder`, and
    ``example_cls(raw, order, seed, **example_options)`` mapped over host-local positions and
    batched (``num_epochs``, ``worker_count``, ``read_threads``, ``prefetch_batches`` from
    ``input_config``)."""
    raw = _raw_from_config(input_config)
    order = _order_from_config(input_config, raw, seed, process_index, process_count)
    example_fn = example_cls(raw, order, seed, **example_options)
    num_epochs = _get(input_config, "num_epochs", None)
    worker_count = int(_get(input_config, "worker_count", 0))
    if num_epochs is not None and int(num_epochs) < 1:
        raise ValueError(f"num_epochs must be None (forever) or >= 1, got {num_epochs}")
    if worker_count < 0:
        raise ValueError(f"worker_count must be >= 0, got {worker_count}")
    dataset = grain.MapDataset.range(order.examples_per_epoch)
    dataset = dataset.repeat(None if num_epochs is None else int(num_epochs))
    dataset = dataset.map_with_index(example_fn)
    dataset = dataset.batch(order.local_batch_size, drop_remainder=True)
    return BatchIterator(
        dataset,
        num_batches=None if num_epochs is None else int(num_epochs) * order.steps_per_epoch,
        worker_count=worker_count,
        read_threads=_threads(input_config),
        prefetch_batches=int(_get(input_config, "prefetch_batches", 2)),
    )


def _order_from_config(config, raw: sources.RawSource, seed: int, process_index, process_count):
    return EpochOrder(
        num_records=len(raw),
        global_batch_size=int(_get(config, "global_batch_size")),
        seed=int(seed),
        shuffle=bool(_get(config, "shuffle", True)),
        process_index=int(process_index),
        process_count=int(process_count),
    )


def _raw_from_config(config, default_split: str | None = None) -> sources.RawSource:
    name = _get(config, "dataset")
    split = _get(config, "split", default_split)
    if split is None:
        raise ValueError("input_config.split is required")
    return sources.raw_source(name, _data_dir(config), split, **_builder_kwargs(config))


def _threads(config) -> int:
    return int(_get(config, "read_threads", 0) or min(4, os.cpu_count() or 1))


def _optional_tuple(values, kind):
    return None if values is None else tuple(kind(v) for v in values)


class _TrainExample:
    """Base of the training-example functions: a host-local position's stored example and its
    augmentation RNG (stream ``STREAM``), both pure functions of (seed, position)."""

    STREAM: int

    def __init__(self, raw, order: EpochOrder, seed: int):
        self.raw, self.order, self.seed = raw, order, int(seed)

    def _read(self, position: int) -> tuple[dict, np.random.Generator]:
        epoch, index = self.order.locate(position)
        return self.raw[index], example_rng(self.seed, epoch, index, self.STREAM)


# --------------------------------------------------------------------------------------------------
# CAM training (train_cam_voc.py, voc12/data.py VOC12ClsDataset)


class CamTrainExample(_TrainExample):
    """Host-local position -> {"image": (crop, crop, 3) float32, "labels": (K,) float32}."""

    STREAM = STREAM_CAM

    def __init__(self, raw, order: EpochOrder, seed: int, *, crop_size, resize_long, hflip, jitter):
        super().__init__(raw, order, seed)
        self.crop_size = int(crop_size)
        self.resize_long = tuple(int(v) for v in resize_long)
        self.hflip = bool(hflip)
        self.jitter = _optional_tuple(jitter, float)

    def __call__(self, position: int, _element=None) -> dict[str, np.ndarray]:
        example, rng = self._read(position)
        image = sources.decode_image(example["image"])
        params = transforms.sample_cam_train_params(
            rng,
            image.width,
            image.height,
            crop_size=self.crop_size,
            resize_long_range=self.resize_long,
            hflip=self.hflip,
            jitter_strengths=self.jitter,
        )
        return {
            "image": transforms.cam_train_transform(image, params),
            "labels": np.asarray(example["labels"], np.float32),
        }


def make_cam_train_iterator(
    input_config, *, seed: int, process_index: int = 0, process_count: int = 1
):
    """Endless (or ``num_epochs``) host-local CAM-training batches.

    input_config fields: ``dataset``, ``data_dir``, ``split`` ("train_aug" for VOC),
    ``global_batch_size`` (8), ``crop_size`` (448), ``resize_long`` ((448, 768)), ``hflip`` (True),
    ``color_jitter`` ((0.3, 0.3, 0.3, 0.1); None or zeros: off), ``shuffle`` (True),
    ``num_epochs`` (None = forever), ``worker_count`` (0: decode in this process), ``read_threads``
    (threads per process; 0: min(4, cores)), ``prefetch_batches`` (2), ``builder_kwargs``
    (hfpl_shapes parameters, {}).

    Yields:
      {"image": float32 (B_local, crop, crop, 3) normalised, "labels": float32 (B_local, K)} with
      B_local = global_batch_size // process_count. The :class:`BatchIterator` has
      ``get_state()`` / ``set_state(state)`` (JSON ``{"next_batch": k}``), resumable with any
      ``worker_count``.
    """
    return _make_train_iterator(
        input_config,
        CamTrainExample,
        seed=seed,
        process_index=process_index,
        process_count=process_count,
        crop_size=_get(input_config, "crop_size", 448),
        resize_long=_get(input_config, "resize_long", (448, 768)),
        hflip=_get(input_config, "hflip", True),
        jitter=_get(input_config, "color_jitter", (0.3, 0.3, 0.3, 0.1)),
    )


def cam_train_steps_per_epoch(input_config, *, process_count: int = 1) -> int:
    """Global steps per epoch of :func:`make_cam_train_iterator`: floor(N / global_batch_size)."""
    raw = _raw_from_config(input_config)
    return _order_from_config(input_config, raw, 0, 0, process_count).steps_per_epoch


# --------------------------------------------------------------------------------------------------
# AffinityNet training (train_aff_voc.py, voc12/data.py VOC12AffDataset)


def load_crf_dict(directory: str, name: str) -> dict:
    """The CRF score dict ``<directory>/<name>.npy`` ({0: bg, c+1: (H, W) float32})."""
    path = os.path.join(directory, name + ".npy")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"CRF scores {path!r} do not exist (run CAM inference with CRF first)"
        )
    value = np.load(path, allow_pickle=True)
    try:
        return dict(value.item())
    except (ValueError, TypeError) as error:
        raise ValueError(f"{path}: expected np.save of a dict {{class: (H, W) scores}}") from error


class AffTrainExample(_TrainExample):
    """Host-local position -> {"image", "bg_pos", "fg_pos", "neg"} (see make_aff_train_iterator)."""

    STREAM = STREAM_AFF

    def __init__(self, raw, order, seed, *, la_dir, ha_dir, crop_size, hflip, jitter, radius):
        super().__init__(raw, order, seed)
        self.la_dir, self.ha_dir = os.fspath(la_dir), os.fspath(ha_dir)
        self.crop_size, self.hflip, self.radius = int(crop_size), bool(hflip), int(radius)
        self.jitter = _optional_tuple(jitter, float)

    def __call__(self, position: int, _element=None) -> dict[str, np.ndarray]:
        example, rng = self._read(position)
        image = sources.decode_image(example["image"])
        scores = transforms.stack_crf_scores(
            load_crf_dict(self.la_dir, example["name"]), load_crf_dict(self.ha_dir, example["name"])
        )
        params = transforms.sample_aff_train_params(
            rng,
            image.width,
            image.height,
            crop_size=self.crop_size,
            hflip=self.hflip,
            jitter_strengths=self.jitter,
        )
        pixels, (bg_pos, fg_pos, neg) = transforms.aff_train_transform(
            image, scores, params, self.radius
        )
        return {"image": pixels, "bg_pos": bg_pos, "fg_pos": fg_pos, "neg": neg}


def make_aff_train_iterator(
    input_config, *, seed: int, process_index: int = 0, process_count: int = 1
):
    """Host-local AffinityNet training batches (``train_aff_voc.py``, ``VOC12AffDataset``).

    input_config fields: ``dataset``, ``data_dir``, ``split``, ``la_dir`` / ``ha_dir`` (folders of
    CRF score dicts ``<name>.npy`` for the low / high background power), ``global_batch_size`` (8),
    ``crop_size`` (448, a multiple of 8), ``hflip`` (True), ``color_jitter``
    ((0.3, 0.3, 0.3, 0.1)), ``radius`` (5), ``shuffle``, ``num_epochs``, ``worker_count``,
    ``read_threads``, ``prefetch_batches``, ``builder_kwargs``.

    Yields:
      {"image": float32 (B, crop, crop, 3), "bg_pos", "fg_pos", "neg": float32 (B, 34, P)} with
      P = (crop/8 − 4)·(crop/8 − 8) (2,496 at crop 448).
    """
    return _make_train_iterator(
        input_config,
        AffTrainExample,
        seed=seed,
        process_index=process_index,
        process_count=process_count,
        la_dir=_get(input_config, "la_dir"),
        ha_dir=_get(input_config, "ha_dir"),
        crop_size=_get(input_config, "crop_size", 448),
        hflip=_get(input_config, "hflip", True),
        jitter=_get(input_config, "color_jitter", (0.3, 0.3, 0.3, 0.1)),
        radius=_get(input_config, "radius", 5),
    )


# --------------------------------------------------------------------------------------------------
# Segmentation training (train_final_voc.py, lib/datasets/BaseDataset transform "weak")


def decode_image_cv2(data: bytes) -> np.ndarray:
    """Stored image bytes -> (H, W, 3) uint8 RGB via OpenCV (``cv2.imread`` + BGR->RGB, the
    final stage's reader), in the stored pixel layout.

    ``cv2.imread`` would apply a JPEG's EXIF orientation tag where PIL (every other stage, and the
    build's mask-size check) does not, rotating or mirroring the image against its mask; VOC's
    JPEGs carry no such tag, some COCO ones do. The tag is ignored here, so that image and label
    always share their layout.
    """
    import cv2

    flags = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if bgr is None:
        raise ValueError("OpenCV could not decode a stored image")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def load_label_png(directory: str, name: str) -> np.ndarray:
    """``<directory>/<name>.png`` as (H, W) uint8 label values (``np.array(Image.open(...))``)."""
    path = os.path.join(directory, name + ".png")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"pseudo label {path!r} does not exist")
    with Image.open(path) as image:
        label = np.array(image)
    if label.ndim != 2:
        raise ValueError(f"{path}: expected a single-channel label PNG, got shape {label.shape}")
    return label.astype(np.uint8)


class SegTrainExample(_TrainExample):
    """Host-local position -> {"image": (crop, crop, 3) float32, "label": (crop, crop) int32}."""

    STREAM = STREAM_SEG

    def __init__(self, raw, order, seed, *, label_dir, crop_size, hsv, flip_prob, scale_range):
        super().__init__(raw, order, seed)
        self.label_dir = None if not label_dir else os.fspath(label_dir)
        self.crop_size = int(crop_size)
        self.hsv = _optional_tuple(hsv, int)
        self.flip_prob = float(flip_prob)
        self.scale_range = _optional_tuple(scale_range, float)

    def __call__(self, position: int, _element=None) -> dict[str, np.ndarray]:
        example, rng = self._read(position)
        image = decode_image_cv2(example["image"])
        if self.label_dir is None:
            label = sources.decode_mask(example["mask"])
        else:
            label = load_label_png(self.label_dir, example["name"])
        if label.shape != image.shape[:2]:
            raise ValueError(
                f"label of {example['name']!r} is {label.shape[1]}x{label.shape[0]} but its image "
                f"is {image.shape[1]}x{image.shape[0]} (width x height)"
            )
        params = transforms.sample_seg_train_params(
            rng,
            image.shape[0],
            image.shape[1],
            crop_size=self.crop_size,
            hsv_range=self.hsv,
            flip_prob=self.flip_prob,
            scale_range=self.scale_range,
        )
        out_image, out_label = transforms.seg_train_transform(image, label, params)
        return {"image": out_image, "label": out_label}


def make_seg_train_iterator(
    input_config, *, seed: int, process_index: int = 0, process_count: int = 1
):
    """Host-local segmentation training batches (``train_final_voc.py``: ``lib/datasets``
    ``VOCDataset`` with transform "weak").

    input_config fields: ``dataset``, ``data_dir``, ``split``, ``label_dir`` (folder of pseudo-label
    PNGs ``<name>.png``; None/"" trains on the dataset's own masks), ``global_batch_size`` (10),
    ``crop_size`` (448), ``hsv`` ((10, 10, 10)), ``flip_prob`` (0.5), ``scale_range``
    ((0.5, 1.5)), ``shuffle``, ``num_epochs``, ``worker_count``, ``read_threads``,
    ``prefetch_batches``, ``builder_kwargs``.

    Yields:
      {"image": float32 (B, crop, crop, 3) normalised (padding 0), "label": int32 (B, crop, crop)
      (padding and void 255)}.
    """
    return _make_train_iterator(
        input_config,
        SegTrainExample,
        seed=seed,
        process_index=process_index,
        process_count=process_count,
        label_dir=_get(input_config, "label_dir", None),
        crop_size=_get(input_config, "crop_size", 448),
        hsv=_get(input_config, "hsv", (10, 10, 10)),
        flip_prob=_get(input_config, "flip_prob", 0.5),
        scale_range=_get(input_config, "scale_range", (0.5, 1.5)),
    )


# --------------------------------------------------------------------------------------------------
# Multi-scale + flip inference (infer_cam_voc.py, eval_final_voc.py)


class MsfExample:
    """Example index -> {"name", "index", "labels", "image", "inputs"} (see the iterator)."""

    def __init__(self, raw, *, method: str, scales, flip: bool):
        if method not in ("cam", "seg"):
            raise ValueError(
                f"msf method must be 'cam' (infer_cam_voc.py) or 'seg' (eval_final_voc.py), "
                f"got {method!r}"
            )
        if method == "cam" and not flip:
            raise ValueError("the CAM inference inputs always include the flips (infer_cam_voc.py)")
        self.raw, self.method = raw, method
        self.scales, self.flip = tuple(float(s) for s in scales), bool(flip)

    def __call__(self, index: int) -> dict[str, Any]:
        index = int(index)
        example = self.raw[index]
        if self.method == "cam":
            pil = sources.decode_image(example["image"])
            image = np.asarray(pil)
            inputs = transforms.msf_cam_inputs(pil, self.scales)
        else:
            image = decode_image_cv2(example["image"])
            inputs = transforms.msf_seg_inputs(image, self.scales, self.flip)
        return {
            "name": example["name"],
            "index": index,
            "labels": np.asarray(example["labels"], np.float32),
            "image": image,
            "inputs": inputs,
        }


def make_msf_inference_iterator(
    input_config, *, process_index: int = 0, process_count: int = 1, indices=None
):
    """One element per image of this process's shard, in split order.

    Process ``p`` of ``P`` gets examples p, p + P, p + 2P, ...: disjoint shards that together cover
    the split exactly once (no example dropped or repeated). ``indices`` instead names the
    examples to read, in that order (e.g. a shard sorted by image size, less finished images).

    input_config fields: ``dataset``, ``data_dir``, ``split``, ``method`` ("cam": PIL bicubic on
    the uint8 image, then float64 normalisation, as ``infer_cam_voc.py``; "seg": float32
    ``ImageNorm`` then OpenCV cubic, as ``eval_final_voc.py``), ``scales`` ((0.5, 1.0, 1.5, 2.0)
    for "cam"; (0.5, 0.75, 1.0, 1.25, 1.5, 1.75) for "seg"), ``flip`` (True), ``worker_count``,
    ``read_threads``, ``builder_kwargs``.

    Yields:
      {"name": str, "index": int, "labels": (K,) float32, "image": (H, W, 3) uint8 original,
      "inputs": list of float32 (h_s, w_s, 3) arrays in the order s0, s0-flip, s1, s1-flip, ...}.
    """
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(f"process_index must lie in [0, {process_count}), got {process_index}")
    raw = _raw_from_config(input_config)
    method = _get(input_config, "method", "cam")
    default_scales = (0.5, 1.0, 1.5, 2.0) if method == "cam" else (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
    example_fn = MsfExample(
        raw,
        method=method,
        scales=_get(input_config, "scales", default_scales),
        flip=_get(input_config, "flip", True),
    )
    if indices is None:
        dataset = grain.MapDataset.range(len(raw))[process_index::process_count]
    else:
        indices = [int(i) for i in indices]
        if any(not 0 <= i < len(raw) for i in indices):
            raise ValueError(f"indices must lie in [0, {len(raw)}) for split {raw.split!r}")
        dataset = grain.MapDataset.source(indices)
    dataset = dataset.map(example_fn)
    return _iterate(
        dataset,
        num_threads=_threads(input_config),
        prefetch_buffer_size=2,
        worker_count=int(_get(input_config, "worker_count", 0)),
        per_worker_buffer_size=2,
    )
