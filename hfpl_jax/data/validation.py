"""Checks that stop bad data at build time: undecodable images, mismatched masks, bad labels.

Every check raises :class:`BadExampleError`, which names the offending file and the problem. A
builder either lets it stop the build (the default) or, with ``skip_bad_examples``, records it in a
:class:`BadExampleLog` and leaves the example out; the log is printed and written next to the
dataset by ``hfpl-jax build-dataset``. Nothing is repaired silently.
"""

from __future__ import annotations

import dataclasses
import io
import os
import warnings

import numpy as np
from PIL import Image

__all__ = [
    "BadExampleError",
    "BadExampleLog",
    "check_labels",
    "check_mask",
    "decode_image_bytes",
    "decode_image_file",
    "decode_mask_file",
    "encode_png",
    "image_bytes_for_storage",
    "require_file",
]


class BadExampleError(ValueError):
    """A source file that must not enter a dataset; ``path`` names it, ``problem`` says why."""

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


@dataclasses.dataclass
class BadExampleLog:
    """The examples a build left out: (split, example name, file, problem) rows."""

    rows: list[dict[str, str]] = dataclasses.field(default_factory=list)

    def add(self, split: str, name: str, error: BadExampleError) -> None:
        self.rows.append(
            {"split": split, "name": name, "path": error.path, "problem": error.problem}
        )

    def __len__(self) -> int:
        return len(self.rows)

    def summary(self) -> str:
        """A human-readable report: the count, then one line per skipped example."""
        if not self.rows:
            return "No bad examples."
        lines = [f"Skipped {len(self.rows)} bad example(s):"]
        lines += [f"  [{r['split']}] {r['name']}: {r['path']}: {r['problem']}" for r in self.rows]
        return "\n".join(lines)


def require_file(path: str | os.PathLike, what: str) -> None:
    """Raises BadExampleError if ``path`` is not an existing regular file."""
    if not os.path.isfile(path):
        raise BadExampleError(path, f"missing file ({what} named by the split list)")


def decode_image_file(path: str | os.PathLike) -> tuple[bytes, Image.Image]:
    """Reads and fully decodes an image file.

    Returns the file's bytes and the decoded PIL image converted to RGB (the reference's
    ``PIL.Image.open(path).convert("RGB")``). Raises BadExampleError for a missing, truncated or
    undecodable file (PIL's LOAD_TRUNCATED_IMAGES is never enabled here).
    """
    require_file(path, "image")
    with open(path, "rb") as f:
        data = f.read()
    return data, decode_image_bytes(data, path)


def decode_image_bytes(data: bytes, path: str | os.PathLike) -> Image.Image:
    """Fully decodes ``data`` (the bytes of ``path``) to an RGB PIL image, or BadExampleError."""
    if not data:
        raise BadExampleError(path, "empty image file")
    try:
        with warnings.catch_warnings():
            # PIL warns (instead of failing) on some corrupt EXIF blocks; a warning about the pixel
            # data itself must fail the example.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            image.load()
    except Exception as error:  # PIL raises OSError, SyntaxError, ValueError, ... for bad files.
        raise BadExampleError(path, f"undecodable or truncated image ({error})") from error
    if image.width < 1 or image.height < 1:
        raise BadExampleError(path, f"image has no pixels (size {image.size})")
    return image.convert("RGB") if image.mode != "RGB" else image


def decode_mask_file(path: str | os.PathLike) -> np.ndarray:
    """Reads a label PNG as its raw index values, (H, W) uint8.

    Palette PNGs (VOC SegmentationClass) give their palette indices, greyscale PNGs
    (SegmentationClassAug) their grey levels: ``np.array(PIL.Image.open(path))`` as the reference.
    """
    require_file(path, "mask")
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode not in ("P", "L"):
                raise BadExampleError(
                    path, f"mask must be a single-channel (P or L) PNG, found mode {image.mode!r}"
                )
            return np.array(image, dtype=np.uint8)
    except BadExampleError:
        raise
    except Exception as error:
        raise BadExampleError(path, f"undecodable or truncated mask ({error})") from error


def check_mask(mask: np.ndarray, image_size: tuple[int, int], num_classes: int, path) -> None:
    """Checks a mask against its image: same (width, height), values in {0..num_classes, 255}."""
    height, width = mask.shape[:2]
    if (width, height) != tuple(image_size):
        raise BadExampleError(
            path,
            f"mask size {width}x{height} differs from its image size "
            f"{image_size[0]}x{image_size[1]} (width x height)",
        )
    values = np.unique(mask)
    bad = values[(values > num_classes) & (values != 255)]
    if bad.size:
        raise BadExampleError(
            path,
            f"label values {bad.tolist()} outside the class range 0..{num_classes} (255 = void)",
        )


def check_labels(labels: np.ndarray, num_classes: int, path, *, allow_empty: bool = False) -> None:
    """Checks a multi-hot label vector: shape (num_classes,), values 0/1, at least one 1."""
    labels = np.asarray(labels)
    if labels.shape != (num_classes,):
        raise BadExampleError(path, f"labels have shape {labels.shape}, expected ({num_classes},)")
    if not np.all((labels == 0) | (labels == 1)):
        raise BadExampleError(
            path, f"labels must be 0/1 multi-hot, found values {np.unique(labels)}"
        )
    if not allow_empty and not labels.any():
        raise BadExampleError(path, "image has no labels (no foreground class)")


def encode_png(array: np.ndarray) -> bytes:
    """Lossless PNG bytes of an (H, W) or (H, W, 3) uint8 array."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def image_bytes_for_storage(data: bytes, image: Image.Image, path) -> bytes:
    """The bytes to store for a decoded source image.

    An RGB JPEG/PNG is stored byte for byte (decoding it later gives exactly the reference's
    pixels); anything else (greyscale, CMYK, palette, ...) is stored as the lossless PNG of its
    ``convert("RGB")`` so that every stored image decodes to 3 channels.
    """
    try:
        with Image.open(io.BytesIO(data)) as original:
            if original.mode == "RGB" and original.format in ("JPEG", "PNG"):
                return data
    except Exception as error:  # decode_image_bytes already succeeded, so this is unexpected.
        raise BadExampleError(path, f"cannot re-open image ({error})") from error
    return encode_png(np.asarray(image.convert("RGB")))
