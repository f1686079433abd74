"""SHA-256 manifests of directories: written once a directory is complete, verified before use.

``write_manifest(directory)`` hashes every file under ``directory`` and writes
``directory/checksums.json`` (to a temporary name, then renamed, so a reader sees the whole
manifest or none)::

    {"format": "hfpl_jax.checksums/1", "algorithm": "sha256",
     "files": {"params/_METADATA": {"size": 542, "sha256": "9f2c..."}, ...}}

``verify_manifest(directory, prefixes)`` re-hashes the listed files (those under ``prefixes``, or
all) and raises :class:`ChecksumError` naming the first file that is missing, of another size or
of another hash. Paths are relative with ``/`` separators; ``etils.epath`` makes local and cloud
(``gs://``) directories work alike.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence

from etils import epath

__all__ = ["MANIFEST_NAME", "ChecksumError", "file_sha256", "verify_manifest", "write_manifest"]

MANIFEST_NAME = "checksums.json"
FORMAT = "hfpl_jax.checksums/1"
_CHUNK = 1 << 20


class ChecksumError(ValueError):
    """A file disagrees with its directory's manifest (or the manifest is unreadable).

    Attributes:
      path: the file (``epath.Path``).
    """

    def __init__(self, path: epath.Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


def file_sha256(path: epath.Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with epath.Path(path).open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _files(directory: epath.Path, prefix: str = "") -> Iterator[tuple[str, epath.Path]]:
    """``(relative path, path)`` of every file under ``directory``, sorted, manifest excluded."""
    for child in sorted(directory.iterdir(), key=lambda p: p.name):
        relative = prefix + child.name
        if child.is_dir():
            yield from _files(child, relative + "/")
        elif relative != MANIFEST_NAME and not relative.startswith("." + MANIFEST_NAME):
            yield relative, child


def write_manifest(directory: epath.PathLike) -> epath.Path:
    """Hashes every file under ``directory`` into ``directory/checksums.json``; returns its path."""
    directory = epath.Path(directory)
    files = {
        relative: {"size": path.stat().length, "sha256": file_sha256(path)}
        for relative, path in _files(directory)
    }
    manifest = {"format": FORMAT, "algorithm": "sha256", "files": files}
    final = directory / MANIFEST_NAME
    temporary = directory / f".{MANIFEST_NAME}.tmp"
    temporary.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    temporary.replace(final)
    return final


def has_manifest(directory: epath.PathLike) -> bool:
    return (epath.Path(directory) / MANIFEST_NAME).exists()


def verify_manifest(directory: epath.PathLike, prefixes: Sequence[str] | None = None) -> list[str]:
    """Checks the files of ``directory``'s manifest (only those under ``prefixes``, e.g.
    ``["params/"]``, when given) against their recorded size and SHA-256.

    Returns:
      The relative paths of files present but not in the manifest (under ``prefixes``): added
      after it was written; not verified.

    Raises:
      FileNotFoundError: ``directory`` has no manifest.
      ChecksumError: the manifest is unreadable, or a file is missing or differs (names it).
    """
    directory = epath.Path(directory)
    manifest_path = directory / MANIFEST_NAME
    if not manifest_path.exists():
        raise FileNotFoundError(f"{directory} has no {MANIFEST_NAME}.")
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
        if manifest.get("format") != FORMAT or manifest.get("algorithm") != "sha256":
            raise ValueError(f"unknown format {manifest.get('format')!r}")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as error:
        raise ChecksumError(manifest_path, f"unreadable manifest ({error})") from None

    def wanted(relative: str) -> bool:
        return prefixes is None or relative.startswith(tuple(prefixes))

    for relative in sorted(filter(wanted, files)):
        expected = files[relative]
        path = directory / relative
        if not path.exists():
            raise ChecksumError(path, "missing (listed in the checksum manifest)")
        size = path.stat().length
        if size != expected["size"]:
            raise ChecksumError(path, f"{size} bytes, the manifest says {expected['size']}")
        if file_sha256(path) != expected["sha256"]:
            raise ChecksumError(path, "SHA-256 differs from the checksum manifest")
    return [
        relative for relative, _ in _files(directory) if wanted(relative) and relative not in files
    ]
