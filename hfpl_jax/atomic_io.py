"""Atomic file writes: a reader, or a job resumed after a kill, finds the whole file or none.

Every writer here writes to a temporary file in the destination's directory (so the final rename
never crosses a file system), flushes and fsyncs it, renames it over the destination with
``os.replace`` (atomic on POSIX and Windows) and fsyncs the directory, so that the rename itself
survives a power cut. If writing fails, the temporary file is removed and the destination
is left as it was. Missing parent directories are created. The temporary file is created with
``O_EXCL`` under the process's umask, so the result has the permissions of a plain ``open``
(``tempfile.mkstemp`` would leave it readable by its owner only).

Long jobs (inference over a dataset, evaluation reports, dataset builds, benchmarks) write their
outputs through these, so a resumed job that skips the inputs whose outputs exist never trusts a
truncated ``.npy`` or PNG left by a kill.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Iterator, Mapping
from typing import IO, Any

import numpy as np

__all__ = [
    "atomic_open",
    "save_npy",
    "save_npz",
    "save_png",
    "write_bytes",
    "write_json",
    "write_text",
]


def _fsync_directory(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows, where directories cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on a directory; the rename still happened
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", **open_kwargs) -> Iterator[IO]:
    """Context manager: a file object whose contents replace ``path`` when the block completes.

    ``mode`` is ``"wb"`` or ``"w"`` (text; ``open_kwargs`` such as ``encoding`` and ``newline``
    pass through to ``open``). An exception inside the block removes the temporary file and leaves
    ``path`` untouched.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open: mode must be 'w' or 'wb', got {mode!r}")
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(6)}.tmp")
    # "x": O_CREAT | O_EXCL, so a name collision fails loudly instead of sharing a file.
    f = open(tmp, mode.replace("w", "x"), **open_kwargs)
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
    _fsync_directory(directory)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Writes ``data`` to ``path`` atomically."""
    with atomic_open(path, "wb") as f:
        f.write(data)


def write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    """Writes ``text`` to ``path`` atomically, encoded, without newline translation."""
    write_bytes(path, text.encode(encoding))


def write_json(path: str | os.PathLike, value: Any, *, sort_keys: bool = True) -> None:
    """Writes ``value`` as JSON (indented by 2, keys sorted unless ``sort_keys=False``, ending in
    a newline) to ``path`` atomically.

    Raises ``TypeError`` (before touching ``path``) for a value JSON cannot represent; NaN and
    infinities are written as JavaScript's ``NaN``/``Infinity``, as :func:`json.dumps` does.
    """
    write_text(path, json.dumps(value, indent=2, sort_keys=sort_keys) + "\n")


def save_npy(path: str | os.PathLike, array, *, allow_pickle: bool = False) -> None:
    """``np.save(path, array)`` atomically, at exactly ``path`` (no ``.npy`` is appended).

    ``allow_pickle=True`` stores object arrays, e.g. the reference's dicts of per-class CAMs
    (``np.save`` of a Python dict in ``infer_cam_voc.py``).
    """
    with atomic_open(path, "wb") as f:
        np.save(f, array, allow_pickle=allow_pickle)


def save_npz(path: str | os.PathLike, arrays: Mapping[str, Any], *, compress: bool = False) -> None:
    """``np.savez(path, **arrays)`` (``np.savez_compressed`` with ``compress``) atomically, at
    exactly ``path`` (no ``.npz`` is appended)."""
    save = np.savez_compressed if compress else np.savez
    with atomic_open(path, "wb") as f:
        save(f, **arrays)


def save_png(path: str | os.PathLike, image, *, palette=None) -> None:
    """Writes a uint8 image as PNG atomically.

    Args:
      path: the destination.
      image: ``(H, W)`` uint8 (8-bit grey, or palette indices with ``palette``) or ``(H, W, 3)``
        uint8 RGB. A label map's values are stored as they are (``0..C``, 255 = ignore), as the
        reference's ``imageio.imwrite``/``cv2.imwrite`` of a uint8 map do.
      palette: optional ``(K, 3)`` uint8 colours (K <= 256) for an ``(H, W)`` image: the PNG is
        then a palette image whose pixel values are still the indices (VOC's convention).

    Raises:
      ValueError: naming the shape or dtype found when ``image`` is not one of the above.
    """
    from PIL import Image

    image = np.asarray(image)
    if image.dtype != np.uint8 or not (
        image.ndim == 2 or (image.ndim == 3 and image.shape[-1] == 3)
    ):
        raise ValueError(
            f"save_png {os.fspath(path)}: expected a (H, W) or (H, W, 3) uint8 image, found "
            f"{image.dtype} {image.shape}"
        )
    pil = Image.fromarray(image)  # (H, W) uint8: "L"; (H, W, 3) uint8: "RGB"
    if palette is not None:
        colours = np.asarray(palette, np.uint8)
        if image.ndim != 2 or colours.ndim != 2 or colours.shape[1] != 3 or len(colours) > 256:
            raise ValueError(
                f"save_png {os.fspath(path)}: a palette needs an (H, W) image and (K <= 256, 3) "
                f"uint8 colours, found image {image.shape} and palette {colours.shape}"
            )
        pil.putpalette(colours.reshape(-1).tolist())  # "L" becomes "P"; pixel values unchanged
    with atomic_open(path, "wb") as f:
        pil.save(f, format="PNG")
