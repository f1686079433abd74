"""PyTorch state-dict names <-> Flax variable paths, and the tensors a model expects.

Flax paths are the state-dict names with "/" for "." and ``weight`` -> ``kernel`` (conv, OIHW ->
HWIO, transpose (2, 3, 1, 0)) or ``scale`` (BN, 1-D); ``running_mean``/``running_var``/
``num_batches_tracked`` -> ``batch_stats`` ``mean``/``var``/``num_batches_tracked`` (int32 in
Flax, int64 in PyTorch). What differs between architectures (the backbone's name prefix, the
classifier, how to read the size) comes from the arch's ``hfpl_jax.models.ArchSpec``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

__all__ = [
    "expected_torch_shapes",
    "flatten_variables",
    "flax_path_to_torch",
    "infer_model_size",
    "set_path",
    "torch_name_to_flax",
    "torch_ordered_leaves",
]

_TORCH_TO_FLAX_LEAF = {
    "running_mean": ("batch_stats", "mean"),
    "running_var": ("batch_stats", "var"),
    "num_batches_tracked": ("batch_stats", "num_batches_tracked"),
    "bias": ("params", "bias"),
}
_FLAX_TO_TORCH_LEAF = {
    ("params", "kernel"): "weight",
    ("params", "scale"): "weight",
    ("params", "bias"): "bias",
    ("batch_stats", "mean"): "running_mean",
    ("batch_stats", "var"): "running_var",
    ("batch_stats", "num_batches_tracked"): "num_batches_tracked",
}
_TORCH_LEAF_ORDER = {"weight": 0, "bias": 1, "running_mean": 2, "running_var": 3,
                     "num_batches_tracked": 4}  # fmt: skip


def torch_name_to_flax(name: str, array: np.ndarray) -> tuple[str, tuple[str, ...], np.ndarray]:
    """``(collection, path, value)`` of one PyTorch state-dict entry (see the module docstring)."""
    parts = name.split(".")
    leaf, module = parts[-1], tuple(parts[:-1])
    if not module:
        raise ValueError(f"state dict key {name!r}: expected '<module>.<tensor>'")
    if leaf == "weight":
        if array.ndim == 4:
            return "params", module + ("kernel",), np.ascontiguousarray(array.transpose(2, 3, 1, 0))
        if array.ndim == 1:
            return "params", module + ("scale",), array
        raise ValueError(f"state dict key {name!r}: weight of shape {array.shape} is neither a "
                         "conv (4-D) nor a BatchNorm (1-D) weight")  # fmt: skip
    if leaf not in _TORCH_TO_FLAX_LEAF:
        raise ValueError(f"state dict key {name!r}: unknown tensor kind {leaf!r}")
    collection, flax_leaf = _TORCH_TO_FLAX_LEAF[leaf]
    if leaf == "num_batches_tracked":
        array = np.asarray(array).astype(np.int32)
    return collection, module + (flax_leaf,), array


def flax_path_to_torch(
    collection: str, path: tuple[str, ...], array: np.ndarray
) -> tuple[str, np.ndarray]:
    """Inverse of ``torch_name_to_flax``: ``(torch_name, value)``."""
    key = (collection, path[-1])
    if key not in _FLAX_TO_TORCH_LEAF:
        raise ValueError(f"variable {collection}/{'/'.join(path)}: no PyTorch counterpart")
    array = np.asarray(array)
    if key == ("params", "kernel"):
        if array.ndim != 4:
            raise ValueError(f"variable params/{'/'.join(path)}: expected a 4-D HWIO kernel")
        array = np.ascontiguousarray(array.transpose(3, 2, 0, 1))
    if key[1] == "num_batches_tracked":
        array = array.astype(np.int64)
    return ".".join(path[:-1] + (_FLAX_TO_TORCH_LEAF[key],)), array


def _torch_name(collection: str, path: tuple[str, ...]) -> str:
    key = (collection, path[-1])
    if key not in _FLAX_TO_TORCH_LEAF:
        raise ValueError(f"variable {collection}/{'/'.join(path)}: no PyTorch counterpart")
    return ".".join(path[:-1] + (_FLAX_TO_TORCH_LEAF[key],))


def set_path(tree: dict, path: tuple[str, ...], value) -> None:
    """``tree[p0][p1]...[pn] = value``, creating the nested dicts on the way."""
    for p in path[:-1]:
        tree = tree.setdefault(p, {})
    tree[path[-1]] = value


def flatten_variables(tree: Mapping, prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple, Any]]:
    """``(path, leaf)`` of a nested mapping, depth first in insertion order."""
    for key, value in tree.items():
        if isinstance(value, Mapping):
            yield from flatten_variables(value, prefix + (str(key),))
        else:
            yield prefix + (str(key),), value


def torch_ordered_leaves(variables: Mapping) -> Iterator[tuple[str, tuple[str, ...], Any]]:
    """``(collection, path, leaf)`` grouped by module in parameter order, tensors as in torch
    (weight, bias, running_mean, running_var, num_batches_tracked)."""
    grouped: dict[tuple[str, ...], list] = {}
    for collection in ("params", "batch_stats"):
        for path, leaf in flatten_variables(variables.get(collection, {})):
            grouped.setdefault(path[:-1], []).append((collection, path, leaf))
    for entries in grouped.values():
        yield from sorted(
            entries, key=lambda e: _TORCH_LEAF_ORDER[_FLAX_TO_TORCH_LEAF.get((e[0], e[1][-1]),
                                                                             "weight")]
        )  # fmt: skip


def infer_model_size(arrays: Mapping[str, np.ndarray], arch: str) -> dict:
    """``{num_classes, width, blocks}`` of the model a torch-named state dict belongs to.

    ``width`` and ``blocks`` from the backbone (``ArchSpec.infer_size``); ``num_classes`` = rows
    of the classifier - 1 (20 when the classifier is absent; 0 for a class-agnostic model).
    """
    from hfpl_jax import models

    spec = models.get_spec(arch)
    try:
        size = spec.infer_size(arrays)
    except ValueError as e:
        raise ValueError(f"state dict for arch {arch!r}: {e}") from None
    if not spec.has_classes:
        num_classes = 0
    elif spec.classifier in arrays:
        num_classes = arrays[spec.classifier].shape[0] - 1
    else:
        num_classes = 20
    return {"num_classes": int(num_classes), "width": size["width"], "blocks": size["blocks"]}


def expected_torch_shapes(
    arch: str, num_classes: int, *, width: float = 1.0, blocks=None
) -> dict[str, tuple]:
    """``{torch name: shape}`` of every tensor of a model (incl. num_batches_tracked), no compute.

    Ordered like ``to_torch`` (module by module, in parameter order).
    """
    import jax
    import jax.numpy as jnp

    from hfpl_jax import models

    model = models.build(arch, num_classes, width=width, blocks=blocks)
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3), jnp.float32))
    )
    out = {}
    for collection, path, leaf in torch_ordered_leaves(shapes):
        name = _torch_name(collection, path)
        shape = tuple(leaf.shape)
        out[name] = (shape[3], shape[2], shape[0], shape[1]) if path[-1] == "kernel" else shape
    return out
