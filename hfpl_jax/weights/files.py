"""Weight files: one loader and one writer for every format, chosen by the file's suffix.

- ``.params``: the reference's MXNet ImageNet ResNet-38, read as its 191 backbone tensors;
- ``.pth``/``.pt``: a PyTorch state dict (a reference checkpoint or torchvision's ResNet-50; also
  wrapped as ``{"state_dict": ...}``), read with ``from_torch``;
- ``.npz``: Flax variables written by ``save_variables``, read as saved.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np

from hfpl_jax.weights.conversion import from_torch, merge_variables, to_torch
from hfpl_jax.weights.mxnet import from_mxnet_params
from hfpl_jax.weights.torch_names import flatten_variables, set_path

__all__ = [
    "FORMATS",
    "load_pretrained",
    "load_weights_file",
    "read_torch_state_dict",
    "save_variables",
    "save_weights_file",
    "weights_format",
]

# format -> suffixes; ``weights_format`` maps a path to its format.
FORMATS = {"mxnet": (".params",), "torch": (".pth", ".pt"), "flax": (".npz",)}


def weights_format(
    path: str | os.PathLike,
    *,
    what: str = "weights file",
    formats: tuple[str, ...] = tuple(FORMATS),
) -> str:
    """The format ("mxnet", "torch" or "flax") of ``path`` by its suffix (``FORMATS``);
    ``ValueError`` naming ``what``, the file and the suffixes of ``formats`` for any other."""
    path = os.fspath(path)
    for name in formats:
        if path.endswith(FORMATS[name]):
            return name
    names = ["/".join(FORMATS[name]) for name in formats]
    expected = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]
    raise ValueError(f"{what} {path!r}: expected a {expected} file")


def read_torch_state_dict(path: str | os.PathLike) -> dict:
    """``torch.load`` (CPU, ``weights_only``) of a state dict; ``{"state_dict": sd}`` -> sd."""
    path = os.fspath(path)
    try:
        import torch
    except ImportError as e:
        raise ImportError(
            f"reading the PyTorch file {path} needs torch: pip install 'hfpl-jax[torch]'"
        ) from e
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"],
                                                                           Mapping):  # fmt: skip
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise ValueError(f"{path}: expected a state dict, found {type(state).__name__}")
    return dict(state)


def _read_npz(path: str) -> dict:
    out: dict = {}
    with np.load(path) as data:
        for key in data.files:
            parts = tuple(key.split("/"))
            if len(parts) < 2:
                raise ValueError(f"{path}: key {key!r} is not 'collection/.../leaf'")
            set_path(out, parts, data[key])
    return out


def load_weights_file(
    path: str | os.PathLike, arch: str | None = None, *, strict: bool = True
) -> dict:
    """Flax variables ``{"params", "batch_stats"}`` (possibly partial) from any weights file.

    Args:
      path: ``.params`` (MXNet ImageNet ResNet-38: exactly its 191 backbone tensors, laid out for
        ``arch``), ``.pth``/``.pt`` (a PyTorch state dict, ``from_torch``) or ``.npz`` (variables
        written by ``save_variables``, returned as saved).
      arch: the model the tensors are for; needed for ``.params`` and ``.pth``.
      strict: ``.pth`` only: the state dict must hold exactly the model's tensors (False: any
        subset, to merge with ``merge_variables``).

    Raises:
      FileNotFoundError: no such file. ValueError: another suffix, a missing ``arch``, or
        contents that do not fit (the message names the file).
    """
    path = os.fspath(path)
    kind = weights_format(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file not found: {path}")
    if kind == "flax":
        return _read_npz(path)
    if arch is None:
        raise ValueError(f"{path}: reading a {kind} weights file needs the model's arch")
    if kind == "mxnet":
        return from_mxnet_params(path, arch)
    return from_torch(read_torch_state_dict(path), arch, strict=strict)


def save_variables(path: str | os.PathLike, variables: Mapping) -> None:
    """Write Flax variables to ``.npz`` (keys ``collection/a/b/leaf``), atomically."""
    path = os.fspath(path)
    flat = {
        "/".join((c,) + p): np.asarray(v)
        for c in variables
        for p, v in flatten_variables(variables[c])
    }
    tmp = path + ".tmp.npz"
    np.savez(tmp, **flat)
    os.replace(tmp, path)


def save_weights_file(path: str | os.PathLike, variables: Mapping, arch: str | None = None) -> None:
    """Write Flax variables as ``.npz`` (``save_variables``) or as a PyTorch state dict ``.pth``/
    ``.pt`` with the reference's names (``to_torch``), atomically; the suffix picks the format."""
    path = os.fspath(path)
    if weights_format(path, what="output", formats=("flax", "torch")) == "flax":
        save_variables(path, variables)
        return
    try:
        import torch
    except ImportError as e:
        raise ImportError("writing .pth needs torch: pip install 'hfpl-jax[torch]'") from e
    # np.array copies (writable, C order) and keeps 0-d arrays 0-d, unlike ascontiguousarray.
    state = {k: torch.from_numpy(np.array(v)) for k, v in to_torch(variables, arch).items()}
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_pretrained(variables: Mapping, path: str | os.PathLike, arch: str) -> tuple[dict, int]:
    """Merge pretrained weights into initialised ``variables``: ``(merged, tensors loaded)``.

    Any file ``load_weights_file`` reads, non-strictly: layers absent from the file (new heads)
    keep their values in ``variables``, as in the reference (``load_state_dict(strict=False)``),
    but a tensor the model lacks, or of the wrong shape, is an error (``merge_variables``).
    """
    return merge_variables(variables, load_weights_file(path, arch, strict=False))
