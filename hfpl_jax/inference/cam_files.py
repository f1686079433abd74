"""The files of ``hfpl-jax infer-cam``: one compressed ``.npz`` per image, or the reference's dicts.

``<out>/<name>.npz`` (``np.savez_compressed``; every array float32 unless stated):

==============  =====================  ===========================================================
``format``      int32 ``()``           ``FORMAT_VERSION`` (1)
``classes``     int32 ``(K',)``        the labelled foreground classes, 0-based, ascending (the
                                       keys of the reference's ``out_cam`` dicts)
``cams``        ``(K', H, W)``         their normalised CAMs (``hfpl_jax.inference.cam``)
``labels``      ``(K,)``               the image labels the CAMs were masked with (ground truth or
                                       predicted)
``scores``      ``(K,)``               the classifier's image scores (logits), mean of 8 inputs
``crf_alphas``  ``(A,)``               background exponents of the CRF marginals (1, 24); may be
                                       empty
``crf``         ``(A, K' + 1, H, W)``  CRF marginals per alpha: channel 0 background, channel
                                       ``1 + k`` class ``classes[k]`` (the reference's ``out_crf``
                                       dict keys ``0`` and ``class + 1``)
==============  =====================  ===========================================================

The reference's format (``formats=("reference",)``): ``<out>/cam/<name>.npy``, a pickled dict
``{class: (H, W) float32}``, and ``<out>/crf_<alpha:.1f>/<name>.npy``, a dict ``{0: background,
class + 1: marginal}``, as ``infer_cam_voc.py`` writes them (load with ``allow_pickle=True`` and
``.item()``).

Every file is written to a temporary name in its folder and renamed when complete, so a killed run
leaves whole files only; :func:`cam_file_complete` still checks a file's structure before a resumed
run trusts it. :func:`read_cam_file` is the one reader (either format).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
import zipfile

import numpy as np

FORMAT_VERSION = 1
NPZ_KEYS = ("format", "classes", "cams", "labels", "scores", "crf_alphas", "crf")
FORMATS = ("npz", "reference")

__all__ = [
    "FORMATS",
    "FORMAT_VERSION",
    "CamRecord",
    "cam_file_complete",
    "output_paths",
    "read_cam_file",
    "write_outputs",
]


@dataclasses.dataclass(frozen=True)
class CamRecord:
    """One image's inference outputs (see the module docstring for shapes and meaning).

    ``labels``, ``scores``, ``crf_alphas`` and ``crf`` are None when the file does not hold them
    (the reference's ``.npy`` CAM dicts hold only ``classes`` and ``cams``).
    """

    classes: np.ndarray
    cams: np.ndarray
    labels: np.ndarray | None = None
    scores: np.ndarray | None = None
    crf_alphas: np.ndarray | None = None
    crf: np.ndarray | None = None

    def cam_dict(self) -> dict[int, np.ndarray]:
        """``{class: (H, W)}``, the reference's ``out_cam`` dict."""
        return {int(c): cam for c, cam in zip(self.classes, self.cams, strict=True)}


# --------------------------------------------------------------------------------------------------
# Atomic writes (private until hfpl_jax.atomic_io lands; same protocol: temp file in the folder,
# fsync, os.replace)


@contextlib.contextmanager
def _atomic_open(path: str):
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(6)}.tmp")
    f = open(tmp, "xb")  # noqa: SIM115 - closed below, before the rename
    try:
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _check_name(name: str) -> None:
    if not name or os.sep in name or name in (".", "..") or (os.altsep and os.altsep in name):
        raise ValueError(f"image name {name!r} cannot be a file name")


def output_paths(out_dir: str, name: str, formats, crf_alphas) -> list[str]:
    """The files one image produces (what a resumed run looks for)."""
    _check_name(name)
    paths = []
    if "npz" in formats:
        paths.append(os.path.join(out_dir, name + ".npz"))
    if "reference" in formats:
        paths.append(os.path.join(out_dir, "cam", name + ".npy"))
        paths += [os.path.join(out_dir, f"crf_{a:.1f}", name + ".npy") for a in crf_alphas]
    return paths


def write_outputs(out_dir: str, name: str, record: CamRecord, formats) -> list[str]:
    """Writes ``record`` in each of ``formats`` (atomically); returns the paths written."""
    unknown = set(formats) - set(FORMATS)
    if unknown:
        raise ValueError(f"output formats must be among {FORMATS}, found {sorted(unknown)}")
    alphas = () if record.crf_alphas is None else [float(a) for a in record.crf_alphas]
    paths = output_paths(out_dir, name, formats, alphas)
    written = iter(paths)
    if "npz" in formats:
        arrays = {
            "format": np.int32(FORMAT_VERSION),
            "classes": np.asarray(record.classes, np.int32),
            "cams": np.asarray(record.cams, np.float32),
            "labels": np.asarray(record.labels, np.float32),
            "scores": np.asarray(record.scores, np.float32),
            "crf_alphas": np.asarray(alphas, np.float32),
            "crf": np.asarray(record.crf, np.float32),
        }
        problem = _structure_problem({k: (v.shape, v.dtype) for k, v in arrays.items()})
        if problem is not None:
            raise ValueError(f"CAM record of {name!r} is inconsistent: {problem}")
        with _atomic_open(next(written)) as f:
            np.savez_compressed(f, **arrays)
    if "reference" in formats:
        with _atomic_open(next(written)) as f:
            np.save(f, record.cam_dict(), allow_pickle=True)
        for index in range(len(alphas)):
            marginals = record.crf[index]
            crf = {0: marginals[0]}
            crf.update({int(c) + 1: marginals[k + 1] for k, c in enumerate(record.classes)})
            with _atomic_open(next(written)) as f:
                np.save(f, crf, allow_pickle=True)
    return paths


# --------------------------------------------------------------------------------------------------
# Reading and verifying


def _npz_headers(path: str) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shape and dtype of every member of an ``.npz``, from the headers only."""
    headers = {}
    with zipfile.ZipFile(path) as archive:
        for member in archive.namelist():
            with archive.open(member) as f:
                version = np.lib.format.read_magic(f)
                read_header = (
                    np.lib.format.read_array_header_1_0
                    if version == (1, 0)
                    else np.lib.format.read_array_header_2_0
                )
                shape, _, dtype = read_header(f)
            headers[member.removesuffix(".npy")] = (tuple(shape), np.dtype(dtype))
    return headers


def _structure_problem(headers, image_hw=None) -> str | None:
    """Why an ``.npz``'s members do not form a CAM file, or None."""
    missing = [key for key in NPZ_KEYS if key not in headers]
    if missing:
        return f"missing members {missing}"
    (cams_shape, _), (classes_shape, _) = headers["cams"], headers["classes"]
    if len(cams_shape) != 3 or classes_shape != cams_shape[:1]:
        return f"cams {cams_shape} do not match classes {classes_shape}"
    if image_hw is not None and cams_shape[1:] != tuple(image_hw):
        return f"cams are {cams_shape[1:]}, the image is {tuple(image_hw)}"
    alphas = headers["crf_alphas"][0]
    expected_crf = (*alphas, cams_shape[0] + 1, *cams_shape[1:])
    if headers["crf"][0] != expected_crf:
        return f"crf is {headers['crf'][0]}, expected {expected_crf}"
    if any(headers[key][1] != np.float32 for key in ("cams", "crf", "labels", "scores")):
        return "arrays are not float32"
    return None


def cam_file_complete(path: str, *, image_hw=None, crf_alphas=None) -> bool:
    """Whether ``path`` (``.npz``, or a reference ``.npy``) is a whole file of the right structure.

    For ``.npz``: readable zip, every member, shapes consistent (with ``image_hw`` and the number
    of ``crf_alphas`` when given). For ``.npy``: loads as a dict of ``image_hw`` maps.
    """
    if not os.path.isfile(path):
        return False
    try:
        if path.endswith(".npz"):
            headers = _npz_headers(path)
            if _structure_problem(headers, image_hw) is not None:
                return False
            return crf_alphas is None or headers["crf_alphas"][0] == (len(crf_alphas),)
        value = np.load(path, allow_pickle=True).item()
        return isinstance(value, dict) and all(
            image_hw is None or np.shape(v) == tuple(image_hw) for v in value.values()
        )
    except Exception:  # noqa: BLE001 - any unreadable file is simply not complete
        return False


def read_cam_file(path: str, *, crf: bool = True) -> CamRecord:
    """Reads one image's CAMs: this project's ``.npz`` or the reference's ``out_cam`` ``.npy``.

    Args:
      path: ``<name>.npz`` or ``<name>.npy`` (a pickled ``{class: (H, W)}`` dict).
      crf: also read the CRF marginals of an ``.npz`` (skip them to read less).

    Raises:
      FileNotFoundError: no such file.
      ValueError: naming the file, when it is not a CAM file of either format (members, shapes,
        dtype) or is corrupt (the zip's checksums are verified while reading).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"CAM file {path!r} does not exist")
    try:
        if path.endswith(".npy"):
            return _read_reference(path)
        problem = _structure_problem(_npz_headers(path))
        if problem is not None:
            raise ValueError(problem)
        with np.load(path, allow_pickle=False) as data:
            if int(data["format"]) != FORMAT_VERSION:
                raise ValueError(f"format {int(data['format'])}, expected {FORMAT_VERSION}")
            return CamRecord(
                classes=data["classes"].astype(np.int64),
                cams=data["cams"],
                labels=data["labels"],
                scores=data["scores"],
                crf_alphas=data["crf_alphas"] if crf else None,
                crf=data["crf"] if crf else None,
            )
    except (ValueError, OSError, zipfile.BadZipFile, EOFError, KeyError) as error:
        raise ValueError(f"{path} is not a readable CAM file: {error}") from None


def _read_reference(path: str) -> CamRecord:
    value = np.load(path, allow_pickle=True)
    value = value.item() if value.dtype == object and value.shape == () else value
    if not isinstance(value, dict):
        raise ValueError(f"expected a pickled dict {{class: (H, W) map}}, found {type(value)}")
    classes = sorted(int(c) for c in value)
    maps = [np.asarray(value[c], np.float32) for c in classes]
    if any(m.ndim != 2 or m.shape != maps[0].shape for m in maps):
        raise ValueError(f"maps of shapes {[m.shape for m in maps]}, expected one (H, W)")
    cams = np.stack(maps) if maps else np.zeros((0, 0, 0), np.float32)
    return CamRecord(classes=np.asarray(classes, np.int64), cams=cams)
