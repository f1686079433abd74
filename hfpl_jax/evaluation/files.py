"""Reading predictions and ground truth for evaluation, with errors that name the file.

Predictions, one file per image in a folder (:class:`PredictionFolder`):

- ``<name>.npz``: ``hfpl-jax infer-cam``'s output (``hfpl_jax.inference.cam_files``): ``classes``
  ``(k,)`` (foreground indices ``0..K-1``) and ``cams`` ``(k, H, W)`` float32, with the image
  labels, scores and CRF marginals beside them (:func:`load_cam_npz`).
- ``<name>.npy``: the reference's ``out_cam`` files (``infer_cam_voc.py``), ``np.save`` of a
  pickled dict ``{class_index: (H, W) float32}`` (:func:`load_cam_npy`). Loading a pickle runs
  code: evaluate only files you trust.
- ``<name>.png``: a label map (random walk, final model): values ``0..K`` (:func:`load_label_png`).

Ground truth: a folder of PNG masks ``<name>.png`` (values ``0..K``, 255 void; palette PNGs read
as their indices) with names from a list file (:func:`read_name_list`, the reference's formats),
or a built dataset split (:class:`DatasetGroundTruth`, which also gives the images).
"""

from __future__ import annotations

import dataclasses
import os
import pickle

import numpy as np
from PIL import Image

__all__ = [
    "PREDICTION_FORMATS",
    "DatasetGroundTruth",
    "FolderGroundTruth",
    "Prediction",
    "PredictionFolder",
    "load_cam_npy",
    "load_cam_npz",
    "load_label_png",
    "read_name_list",
]

# format -> file suffix, in the order "auto" tries them.
PREDICTION_FORMATS = {"npz": ".npz", "npy": ".npy", "png": ".png"}
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


def read_name_list(path: str | os.PathLike) -> list[str]:
    """Image names from a list file in the reference's formats.

    One entry a line: a bare name (``2007_000032``, ``val.txt``) or the VOC/COCO pair format
    ``/JPEGImages/2007_000032.jpg /SegmentationClassAug/2007_000032.png``, whose name is the first
    path's file name without its extension. Blank lines are skipped.

    Raises:
      FileNotFoundError: no such file. ValueError: empty, or a name repeated.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--list {path!r} does not exist")
    names = []
    with open(path) as f:
        for line in f:
            tokens = line.split()
            if not tokens:
                continue
            first = tokens[0]
            if len(tokens) > 1 or first.lower().endswith(_IMAGE_SUFFIXES):
                first = os.path.splitext(os.path.basename(first))[0]
            names.append(first)
    if not names:
        raise ValueError(f"--list {path!r} names no image")
    if len(set(names)) != len(names):
        repeated = sorted({n for n in names if names.count(n) > 1})[:5]
        raise ValueError(f"--list {path!r} repeats names {repeated}")
    return names


def load_label_png(path: str) -> np.ndarray:
    """``(H, W)`` integer labels of a single-channel PNG (palette indices for palette PNGs)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path!r} does not exist")
    try:
        with Image.open(path) as image:
            label = np.array(image)
    except (OSError, ValueError, SyntaxError) as error:
        raise ValueError(f"{path}: not a readable image ({error})") from error
    if label.ndim != 2 or not np.issubdtype(label.dtype, np.integer) and label.dtype != bool:
        raise ValueError(
            f"{path}: expected a single-channel label PNG, got shape {label.shape} {label.dtype}"
        )
    return label


def _check_cams(path: str, classes: np.ndarray, cams: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if not np.all(np.isfinite(cams)):
        raise ValueError(f"{path}: CAM values are not all finite (NaN or inf)")
    order = np.argsort(classes, kind="stable")
    classes, cams = classes[order], cams[order]
    if np.any(np.diff(classes) == 0):
        raise ValueError(f"{path}: class {classes.tolist()} repeated")
    return classes, cams


def load_cam_npy(path: str) -> tuple[np.ndarray, np.ndarray]:
    """The reference's ``out_cam`` file -> (``classes (k,)`` int64 sorted, ``cams (k, H, W)``
    float32). An empty dict gives ``k = 0`` and cams of shape ``(0, 0, 0)``."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path!r} does not exist")
    try:
        value = np.load(path, allow_pickle=True)
        value = value.item() if isinstance(value, np.ndarray) and value.shape == () else value
    except (OSError, ValueError, EOFError, pickle.UnpicklingError) as error:
        raise ValueError(f"{path}: not a readable .npy file ({error})") from error
    if not isinstance(value, dict):
        raise ValueError(
            f"{path}: expected np.save of a dict {{class_index: (H, W) CAM}} (the reference's "
            f"out_cam format), found {type(value).__name__}"
            + (f" of shape {value.shape}" if isinstance(value, np.ndarray) else "")
        )
    if not value:
        return np.zeros((0,), np.int64), np.zeros((0, 0, 0), np.float32)
    keys = list(value)
    if not all(isinstance(k, (int, np.integer)) and not isinstance(k, bool) for k in keys):
        raise ValueError(f"{path}: dict keys must be integer class indices, found {keys[:10]}")
    arrays = [np.asarray(value[k]) for k in keys]
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ValueError(
            f"{path}: expected (H, W) CAMs of one shape, found shapes {sorted(shapes)}"
        )
    cams = np.stack(arrays).astype(np.float32)
    return _check_cams(path, np.asarray(keys, np.int64), cams)


def load_cam_npz(path: str) -> tuple[np.ndarray, np.ndarray]:
    """``hfpl-jax infer-cam``'s ``<name>.npz`` -> (``classes`` int64 sorted, ``cams`` float32),
    read by :func:`hfpl_jax.inference.cam_files.read_cam_file` (the format's one reader; the CRF
    marginals are not read)."""
    from hfpl_jax.inference import cam_files

    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path!r} does not exist")
    record = cam_files.read_cam_file(path, crf=False)  # ValueError naming the file
    return _check_cams(path, record.classes.astype(np.int64), record.cams.astype(np.float32))


@dataclasses.dataclass(frozen=True)
class Prediction:
    """One image's prediction: CAMs (``classes (k,)`` 0-based, ``cams (k, H, W)`` float32) or a
    label map ``label (H, W)``; ``path`` is the file it came from (for error messages)."""

    path: str
    classes: np.ndarray | None = None
    cams: np.ndarray | None = None
    label: np.ndarray | None = None

    @property
    def is_cam(self) -> bool:
        return self.cams is not None


class PredictionFolder:
    """``<directory>/<name>.{npz,npy,png}``; ``format`` "auto" picks the first of npz, npy, png
    that exists for the first name asked, and then holds every name to it."""

    def __init__(self, directory: str | os.PathLike, format: str = "auto"):  # noqa: A002
        self.directory = os.fspath(directory)
        if not os.path.isdir(self.directory):
            raise FileNotFoundError(f"--pred-dir {self.directory!r} is not a directory")
        if format != "auto" and format not in PREDICTION_FORMATS:
            raise ValueError(
                f"--pred-format must be auto or one of {sorted(PREDICTION_FORMATS)}, got {format!r}"
            )
        self.format = None if format == "auto" else format

    def path(self, name: str, format: str | None = None) -> str:  # noqa: A002
        return os.path.join(self.directory, name + PREDICTION_FORMATS[format or self.format])

    def resolve_format(self, name: str) -> str:
        """Fixes ``format`` from the files present for ``name`` (FileNotFoundError if none)."""
        if self.format is None:
            for candidate in PREDICTION_FORMATS:
                if os.path.isfile(self.path(name, candidate)):
                    self.format = candidate
                    break
            else:
                tried = ", ".join(self.path(name, f) for f in PREDICTION_FORMATS)
                raise FileNotFoundError(f"no prediction for {name!r}: none of {tried} exists")
        return self.format

    def load(self, name: str) -> Prediction:
        """The prediction of ``name`` (FileNotFoundError naming the expected file if missing)."""
        format = self.resolve_format(name)  # noqa: A001
        path = self.path(name)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no prediction for {name!r}: {path!r} does not exist")
        if format == "png":
            return Prediction(path, label=load_label_png(path))
        loader = load_cam_npz if format == "npz" else load_cam_npy
        classes, cams = loader(path)
        return Prediction(path, classes=classes, cams=cams)


class FolderGroundTruth:
    """``<gt_dir>/<name>.png`` masks; images (for overlays only) from ``image_dir`` when given,
    ``<image_dir>/<name>.jpg`` (or .png)."""

    def __init__(self, gt_dir: str | os.PathLike, image_dir: str | os.PathLike | None = None):
        self.gt_dir = os.fspath(gt_dir)
        if not os.path.isdir(self.gt_dir):
            raise FileNotFoundError(f"--gt-dir {self.gt_dir!r} is not a directory")
        self.image_dir = None if image_dir is None else os.fspath(image_dir)
        if self.image_dir is not None and not os.path.isdir(self.image_dir):
            raise FileNotFoundError(f"--image-dir {self.image_dir!r} is not a directory")

    def path(self, name: str) -> str:
        return os.path.join(self.gt_dir, name + ".png")

    def mask(self, name: str) -> np.ndarray:
        path = self.path(name)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no ground truth for {name!r}: {path!r} does not exist")
        return load_label_png(path)

    def image(self, name: str) -> np.ndarray | None:
        if self.image_dir is None:
            return None
        for suffix in (".jpg", ".png", ".jpeg"):
            path = os.path.join(self.image_dir, name + suffix)
            if os.path.isfile(path):
                try:
                    with Image.open(path) as image:
                        return np.asarray(image.convert("RGB"))
                except OSError as error:
                    raise ValueError(f"{path}: not a readable image ({error})") from error
        raise FileNotFoundError(f"no image for {name!r} in --image-dir {self.image_dir!r}")


class DatasetGroundTruth:
    """Masks and images of a built dataset split (``hfpl_jax.data.open_split``), by name."""

    def __init__(self, dataset: str, data_dir: str | os.PathLike, split: str, **builder_kwargs):
        from hfpl_jax import data

        self.raw = data.open_split(dataset, data_dir, split, **builder_kwargs).raw
        self.description = f"{dataset}/{split} in {os.fspath(data_dir)!r}"
        self.names = [self.raw[i]["name"] for i in range(len(self.raw))]
        self._index = {name: i for i, name in enumerate(self.names)}

    def path(self, name: str) -> str:
        return f"{self.description}, example {name!r}"

    def _example(self, name: str) -> dict:
        if name not in self._index:
            raise FileNotFoundError(f"no ground truth for {name!r}: not in {self.description}")
        return self.raw[self._index[name]]

    def mask(self, name: str) -> np.ndarray:
        from hfpl_jax.data import sources

        return sources.decode_mask(self._example(name)["mask"])

    def image(self, name: str) -> np.ndarray | None:
        from hfpl_jax.data import sources

        return np.asarray(sources.decode_image(self._example(name)["image"]))
