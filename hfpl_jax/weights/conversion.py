"""PyTorch state dicts <-> Flax variables, and merging partial weights into a model's variables.

The round trip torch -> Flax -> torch is the identity on every tensor (names, shapes, dtypes,
values). torch itself is not imported here: tensors are read through ``.detach().numpy()``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from hfpl_jax.weights.torch_names import (
    expected_torch_shapes,
    flatten_variables,
    flax_path_to_torch,
    infer_model_size,
    set_path,
    torch_name_to_flax,
    torch_ordered_leaves,
)

__all__ = ["from_torch", "merge_variables", "to_torch"]


def _to_numpy(value, name: str) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    if hasattr(value, "detach"):  # a torch tensor; torch is not imported here
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":
            value = value.float()
        return value.numpy()
    try:
        return np.asarray(value)
    except Exception as e:  # noqa: BLE001
        raise ValueError(
            f"state dict entry {name!r}: cannot convert {type(value)} to an array"
        ) from e


def _strip_data_parallel(arrays: dict) -> dict:
    if arrays and all(k.startswith("module.") for k in arrays):
        return {k[len("module.") :]: v for k, v in arrays.items()}
    return arrays


def from_torch(state_dict: Mapping[str, Any], arch: str, *, strict: bool = True) -> dict:
    """PyTorch state dict (tensors or NumPy arrays) -> Flax variables ``{"params", "batch_stats"}``.

    Accepts the reference's ``cam.pth`` / ``aff.pth`` (arch "seam" / "affinity"), the DeepLab
    checkpoint ("deeplab_largefov", names ``backbone.*``), a torchvision ResNet-50 state dict
    ("resnet50_cam"; its ImageNet ``fc.*`` is dropped: ``ArchSpec.ignored_torch_names``) and any
    of them with DataParallel's ``module.`` prefix. With ``strict`` the names and shapes must match
    the model exactly (its size is inferred from the tensors); ``num_batches_tracked`` may be absent
    (it is then 0). With ``strict=False`` the result holds just the given tensors (to merge with
    ``merge_variables``).
    """
    from hfpl_jax import models

    spec = models.get_spec(arch)
    arrays = {str(k): _to_numpy(v, str(k)) for k, v in state_dict.items()}
    arrays = _strip_data_parallel(arrays)
    arrays = {k: v for k, v in arrays.items() if k not in spec.ignored_torch_names}
    if strict:
        size = infer_model_size(arrays, arch)
        expected = expected_torch_shapes(arch, **size)
        for name in expected:
            if name.endswith("num_batches_tracked") and name not in arrays:
                arrays[name] = np.zeros((), np.int64)
        missing = sorted(set(expected) - set(arrays))
        unexpected = sorted(set(arrays) - set(expected))
        wrong = sorted(
            f"{n}: {tuple(arrays[n].shape)} != {expected[n]}"
            for n in set(expected) & set(arrays)
            if tuple(arrays[n].shape) != tuple(expected[n])
        )
        if missing or unexpected or wrong:
            hint = ""
            if (
                not unexpected
                and not wrong
                and all(spec.is_from_scratch(n.replace(".", "/")) for n in missing)
            ):
                hint = (" (a pretrained backbone without the new layers: use strict=False and "
                        "merge_variables, or load_pretrained)")  # fmt: skip
            raise ValueError(
                f"state dict does not match arch {arch!r} (inferred {size}): missing {missing[:6]}"
                f"{'...' if len(missing) > 6 else ''} ({len(missing)}), unexpected "
                f"{unexpected[:6]} ({len(unexpected)}), wrong shapes {wrong[:6]} ({len(wrong)})"
                + hint
            )
    variables: dict = {"params": {}, "batch_stats": {}}
    for name, array in arrays.items():
        collection, path, value = torch_name_to_flax(name, array)
        set_path(variables[collection], path, value)
    return variables


def to_torch(variables: Mapping, arch: str | None = None) -> dict[str, np.ndarray]:
    """Flax variables -> ``{reference PyTorch name: NumPy array}`` (OIHW conv weights).

    Module order follows the parameter order; ``num_batches_tracked`` is int64 as in PyTorch.
    Load into the reference with ``{k: torch.from_numpy(v) for k, v in ...}``. ``arch``, when
    given, is only checked (the names do not depend on it).
    """
    if arch is not None:
        from hfpl_jax import models

        models.check_arch(arch)
    out = {}
    for collection, path, leaf in torch_ordered_leaves(variables):
        name, array = flax_path_to_torch(collection, path, np.asarray(leaf))
        out[name] = array
    return out


def merge_variables(base: Mapping, update: Mapping) -> tuple[dict, int]:
    """Replace leaves of ``base`` by those of ``update`` (same paths and shapes).

    Returns ``(merged, number_of_leaves_replaced)``; replaced leaves take ``base``'s dtype.
    Raises ``ValueError`` for a path of ``update`` absent from ``base`` or a shape mismatch
    (unlike ``load_state_dict(strict=False)``, nothing is silently ignored).
    """
    flat_base = {(c,) + p: v for c in base for p, v in flatten_variables(base[c])}
    merged: dict = {c: {} for c in base}
    replaced = 0
    flat_update = {(c,) + p: v for c in update for p, v in flatten_variables(update[c])}
    for key, value in flat_update.items():
        if key not in flat_base:
            raise ValueError(f"merge_variables: {'/'.join(key)} is not a variable of the model")
        if tuple(np.shape(value)) != tuple(np.shape(flat_base[key])):
            raise ValueError(
                f"merge_variables: {'/'.join(key)} has shape {tuple(np.shape(value))}, the model "
                f"expects {tuple(np.shape(flat_base[key]))}"
            )
    for key, value in flat_base.items():
        if key in flat_update:
            dtype = value.dtype if hasattr(value, "dtype") else np.asarray(value).dtype
            new = np.asarray(flat_update[key]).astype(dtype)
            replaced += 1
        else:
            new = value
        set_path(merged[key[0]], key[1:], new)
    return merged, replaced
