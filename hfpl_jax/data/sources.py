"""Finding, building and reading the datasets, with no TensorFlow in the reading process.

A built dataset lives in ``<data_dir>/<name>/<config>/<version>`` (hfpl_shapes; ``config`` names its
size parameters) or ``<data_dir>/<name>/<version>`` (VOC, COCO). Readers open it with
``tfds.builder_from_directory(...).as_data_source(split)`` over the array_record files, so the
builder classes (and TensorFlow) are never imported to read. Images and masks are decoded here with
PIL, the reference's decoder, not with TFDS's default (OpenCV when installed).
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from hfpl_jax.data import coco, shapes, voc

__all__ = [
    "DATASET_NAMES",
    "DecodedSource",
    "GENERATED",
    "RawSource",
    "SPLITS",
    "build",
    "class_names",
    "dataset_dir",
    "decode_image",
    "decode_mask",
    "ensure_built",
    "is_built",
    "num_classes",
    "num_examples",
    "open_split",
    "raw_source",
    "resolve_data_dir",
    "shapes_params",
]

DATASET_NAMES = ("hfpl_shapes", "voc2012_wsss", "coco2014_wsss")
GENERATED = ("hfpl_shapes",)
_VERSIONS = {
    "hfpl_shapes": shapes.GENERATOR_VERSION,
    "voc2012_wsss": "1.0.0",
    "coco2014_wsss": "1.0.0",
}
_CLASS_NAMES = {
    "hfpl_shapes": shapes.CLASS_NAMES,
    "voc2012_wsss": voc.CLASS_NAMES,
    "coco2014_wsss": coco.CLASS_NAMES,
}
SPLITS = {"hfpl_shapes": shapes.SPLITS, "voc2012_wsss": voc.SPLITS, "coco2014_wsss": coco.SPLITS}


def _check_name(name: str) -> None:
    if name not in DATASET_NAMES:
        raise ValueError(f"unknown dataset {name!r}; expected one of {DATASET_NAMES}")


def shapes_params(**builder_kwargs) -> shapes.ShapesParams:
    """ShapesParams from keyword overrides (image_size, num_train, num_val, seed, ...)."""
    known = {f.name for f in dataclasses.fields(shapes.ShapesParams)}
    unknown = sorted(set(builder_kwargs) - known)
    if unknown:
        raise ValueError(
            f"unknown hfpl_shapes parameters {unknown}; expected some of {sorted(known)}"
        )
    return shapes.ShapesParams(**builder_kwargs)


def resolve_data_dir(data_dir: str | os.PathLike | None) -> str:
    """The TFDS data directory a config means: ``input.data_dir`` when set, else
    ``$TFDS_DATA_DIR``, else ``~/tensorflow_datasets`` (absolute, ``~`` expanded)."""
    chosen = data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
    return os.path.abspath(os.path.expanduser(os.fspath(chosen)))


def dataset_dir(name: str, data_dir: str | os.PathLike, **builder_kwargs) -> str:
    """Where dataset ``name`` (with these builder parameters) is, or would be, built."""
    _check_name(name)
    data_dir = os.fspath(data_dir)
    if name == "hfpl_shapes":
        config = shapes_params(**builder_kwargs).config_name()
        return os.path.join(data_dir, name, config, _VERSIONS[name])
    if builder_kwargs:
        raise ValueError(f"{name} takes no builder parameters, got {sorted(builder_kwargs)}")
    return os.path.join(data_dir, name, _VERSIONS[name])


def is_built(name: str, data_dir: str | os.PathLike, **builder_kwargs) -> bool:
    """True when a finished build (its ``dataset_info.json``) exists."""
    return os.path.isfile(
        os.path.join(dataset_dir(name, data_dir, **builder_kwargs), "dataset_info.json")
    )


def build(
    name: str,
    data_dir: str | os.PathLike,
    *,
    manual_dir: str | os.PathLike | None = None,
    skip_bad_examples: bool = False,
    allow_unlabeled: bool = False,
    **builder_kwargs,
):
    """Builds dataset ``name`` into ``data_dir`` (a no-op if already built); returns the builder.

    ``builder.bad_examples`` lists the examples skipped under ``skip_bad_examples``. TFDS writes
    into a temporary directory and renames it when complete, so an interrupted build leaves no
    half-written dataset behind.
    """
    import tensorflow_datasets as tfds

    from hfpl_jax.data import builders

    _check_name(name)
    data_dir = os.fspath(data_dir)
    kwargs: dict[str, Any] = {"data_dir": data_dir, "file_format": "array_record"}
    kwargs["skip_bad_examples"] = skip_bad_examples
    if name == "hfpl_shapes":
        params = shapes_params(**builder_kwargs)
        registered = {c.name for c in builders.HfplShapes.BUILDER_CONFIGS}
        # TFDS insists on the registered object for a registered name; other sizes get a new config.
        config = params.config_name()
        kwargs["config"] = (
            config if config in registered else builders.HfplShapesConfig.from_params(params)
        )
    else:
        if builder_kwargs:
            raise ValueError(f"{name} takes no builder parameters, got {sorted(builder_kwargs)}")
        if manual_dir is None:
            raise ValueError(
                f"{name} is built from a manual folder: pass manual_dir (--manual-dir)"
            )
        if not os.path.isdir(manual_dir):
            raise FileNotFoundError(f"manual_dir {os.fspath(manual_dir)!r} is not a directory")
    if name == "coco2014_wsss":
        kwargs["allow_unlabeled"] = allow_unlabeled
    elif allow_unlabeled:
        raise ValueError("allow_unlabeled applies to coco2014_wsss only")
    builder = builders.BUILDERS[name](**kwargs)
    download_config = tfds.download.DownloadConfig(
        manual_dir=os.fspath(manual_dir) if manual_dir is not None else None
    )
    builder.download_and_prepare(download_config=download_config)
    return builder


def ensure_built(name: str, data_dir: str | os.PathLike, **builder_kwargs) -> str:
    """Returns the dataset's directory, building ``hfpl_shapes`` first if it is absent.

    VOC and COCO need their manual folders, so for them a missing build raises FileNotFoundError
    with the command that builds it.
    """
    if is_built(name, data_dir, **builder_kwargs):
        return dataset_dir(name, data_dir, **builder_kwargs)
    if name not in GENERATED:
        raise FileNotFoundError(
            f"dataset {name!r} is not built in data_dir={os.fspath(data_dir)!r} (no "
            f"{dataset_dir(name, data_dir)}/dataset_info.json). Build it once with:\n"
            f"  hfpl-jax build-dataset {name} --data-dir {os.fspath(data_dir)} --manual-dir "
            "<folder with the raw dataset>\n(see README.md, 'Datasets', for the folder layout)."
        )
    # Several processes (the hosts of one job, parallel test workers) may ask at once: one builds,
    # the others wait on the lock and then find the finished dataset.
    import fcntl

    os.makedirs(data_dir, exist_ok=True)
    lock_path = os.path.join(os.fspath(data_dir), f".{name}.build.lock")
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not is_built(name, data_dir, **builder_kwargs):
                build(name, data_dir, **builder_kwargs)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return dataset_dir(name, data_dir, **builder_kwargs)


def class_names(name: str) -> tuple[str, ...]:
    """The K foreground class names of dataset ``name``, in label order."""
    _check_name(name)
    return _CLASS_NAMES[name]


def num_classes(name: str, data_dir: str | os.PathLike | None = None, **builder_kwargs) -> int:
    """K, the number of foreground classes (the length of ``labels``).

    Read from the built dataset's ``features.json`` when it exists, else the dataset's constant.
    """
    _check_name(name)
    if data_dir is not None:
        features = os.path.join(dataset_dir(name, data_dir, **builder_kwargs), "features.json")
        if os.path.isfile(features):
            with open(features) as f:
                spec = json.load(f)
            shape = spec["featuresDict"]["features"]["labels"]["tensor"]["shape"]["dimensions"]
            return int(shape[0])
    return len(_CLASS_NAMES[name])


# --------------------------------------------------------------------------------------------------
# Reading


def decode_image(data: bytes) -> Image.Image:
    """Stored image bytes -> RGB PIL image (``PIL.Image.open(...).convert("RGB")``)."""
    image = Image.open(io.BytesIO(data))
    return image if image.mode == "RGB" else image.convert("RGB")


def decode_mask(data: bytes) -> np.ndarray:
    """Stored mask PNG bytes -> (H, W) uint8."""
    with Image.open(io.BytesIO(data)) as image:
        return np.array(image, dtype=np.uint8)


def _as_str(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


_OPEN_LOCK = threading.Lock()


class RawSource(Sequence):
    """Random access to one split with images and masks still encoded.

    ``source[i]`` is ``{"image": bytes, "mask": bytes, "labels": float32 (K,), "name": str}``.
    It pickles (the array_record readers reopen in the new process), so grain can hand it to
    worker processes, which then decode in parallel.
    """

    def __init__(self, directory: str, split: str):
        self.directory = directory
        self.split = split
        self._source = None

    def _open(self):
        if self._source is None:
            # One thread opens; grain's read threads all call this first thing in a fresh worker.
            # Unserialised, two of them importing tensorflow_datasets at once can deadlock on
            # Python 3.11 (its lazy modules' functools.cached_property lock against the import
            # lock), which hung a 2-worker pipeline in the tests.
            with _OPEN_LOCK:
                if self._source is None:
                    self._source = self._open_data_source()
        return self._source

    def _open_data_source(self):
        import tensorflow_datasets as tfds

        builder = tfds.builder_from_directory(self.directory)
        if self.split not in builder.info.splits:
            raise ValueError(
                f"{self.directory} has splits {sorted(builder.info.splits)}, got {self.split!r}"
            )
        skip = tfds.decode.SkipDecoding()
        return builder.as_data_source(self.split, decoders={"image": skip, "mask": skip})

    def __len__(self) -> int:
        return len(self._open())

    def __getitem__(self, index):
        example = self._open()[int(index)]
        return {
            "image": example["image"],
            "mask": example["mask"],
            "labels": np.asarray(example["labels"], np.float32),
            "name": _as_str(example["name"]),
        }

    def __getstate__(self):
        return {"directory": self.directory, "split": self.split}

    def __setstate__(self, state):
        self.directory = state["directory"]
        self.split = state["split"]
        self._source = None

    def __repr__(self) -> str:
        return f"RawSource({self.directory!r}, split={self.split!r})"


class DecodedSource(Sequence):
    """Random access to one split, decoded: ``source[i]`` is ``{"image": (H, W, 3) uint8,
    "mask": (H, W) uint8, "labels": (K,) float32, "name": str}``."""

    def __init__(self, raw: RawSource):
        self.raw = raw

    def __len__(self) -> int:
        return len(self.raw)

    def __getitem__(self, index):
        example = self.raw[index]
        return {
            "image": np.asarray(decode_image(example["image"])),
            "mask": decode_mask(example["mask"]),
            "labels": example["labels"],
            "name": example["name"],
        }


def raw_source(name: str, data_dir: str | os.PathLike, split: str, **builder_kwargs) -> RawSource:
    """The encoded split of a built dataset (FileNotFoundError, with the build command, if absent).

    ``hfpl_shapes`` is built on first use (see :func:`ensure_built`).
    """
    _check_name(name)
    if split not in SPLITS[name]:
        raise ValueError(f"{name} has splits {SPLITS[name]}, got split={split!r}")
    return RawSource(ensure_built(name, data_dir, **builder_kwargs), split)


def num_examples(name: str, data_dir: str | os.PathLike, split: str, **builder_kwargs) -> int:
    """Number of examples in a split of a built dataset."""
    return len(raw_source(name, data_dir, split, **builder_kwargs))


def open_split(
    name: str, data_dir: str | os.PathLike, split: str, **builder_kwargs
) -> DecodedSource:
    """The decoded split of a built dataset (see :class:`DecodedSource`)."""
    return DecodedSource(raw_source(name, data_dir, split, **builder_kwargs))
