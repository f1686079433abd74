"""Weights: the reference's MXNet ImageNet file, PyTorch state dicts, and Flax variables.

MXNet (``read_mxnet_ndarray_list``, ``from_mxnet_params``): the ImageNet ResNet-38 file
``ilsvrc-cls_rna-a1_cls1000_ep-0001.params`` is an NDArray list saved by ``mx.nd.save``. It is read
with NumPy alone (MXNet is not installable on current Python). Layout (MXNet
``src/c_api/c_api.cc`` list header and ``src/ndarray/ndarray.cc`` ``NDArray::Save/Load``, all
little-endian; see ``tests/testdata/mxnet_params_layout.md`` for the full notes)::

    list   := uint64 0x112, uint64 reserved, uint64 n, ndarray * n, uint64 m, string * m
              (m is 0 or n)
    string := uint64 length, bytes (UTF-8)
    ndarray, by its first uint32:
      0xF993FAC9 (V2) / 0xF993FACA (V3): int32 storage type (0 = dense), shape,
                                         [context, dtype, data]
      0xF993FAC8 (V1):                  shape, [context, dtype, data]
      anything else (legacy, pre-2017): that uint32 is ndim, then ndim uint32 dims, [...]
    shape (V1-V3) := uint32 ndim, int64 dims * ndim   (ndim 0 = empty array; V3: -1 = empty)
    context := int32 device type (1 cpu, 2 gpu, 3 cpu_pinned, 5 cpu_shared), int32 device id
    dtype := int32 mshadow type flag (0 f32, 1 f64, 2 f16, 3 u8, 4 i32, 5 i8, 6 i64, 7 bool, ...)
    data := prod(dims) * itemsize bytes, C order

Every error names the file and the byte offset. The names map to the reference's PyTorch names by
``convert_mxnet_to_torch`` (spec §1.8), which must give exactly 191 backbone tensors.

PyTorch (``from_torch``, ``to_torch``): Flax paths are the state-dict names with "/" for "." and
``weight`` -> ``kernel`` (conv, OIHW -> HWIO, transpose (2, 3, 1, 0)) or ``scale`` (BN);
``running_mean``/``running_var``/``num_batches_tracked`` -> ``batch_stats`` ``mean``/``var``/
``num_batches_tracked``. The round trip torch -> Flax -> torch is the identity on every tensor.
torch itself is imported only to read or write ``.pth`` files (the ``torch`` extra).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np

LIST_MAGIC = 0x112
NDARRAY_V1_MAGIC = 0xF993FAC8
NDARRAY_V2_MAGIC = 0xF993FAC9
NDARRAY_V3_MAGIC = 0xF993FACA
_MAX_LEGACY_NDIM = 32  # a legacy record starts with ndim; anything larger is not a shape
_DEVICE_TYPES = {1: "cpu", 2: "gpu", 3: "cpu_pinned", 5: "cpu_shared"}
_STORAGE_TYPES = {0: "default", 1: "row_sparse", 2: "csr"}


def _mshadow_dtypes() -> dict[int, np.dtype]:
    table = {
        0: np.float32, 1: np.float64, 2: np.float16, 3: np.uint8, 4: np.int32, 5: np.int8,
        6: np.int64, 7: np.bool_, 8: np.int16, 9: np.uint16, 10: np.uint32, 11: np.uint64,
    }  # fmt: skip
    try:
        import ml_dtypes

        table[12] = ml_dtypes.bfloat16
    except ImportError:  # pragma: no cover - ml_dtypes ships with jax
        pass
    return {k: np.dtype(v).newbyteorder("<") for k, v in table.items()}


MSHADOW_DTYPES = _mshadow_dtypes()


class MXNetFormatError(ValueError):
    """A malformed MXNet NDArray file; the message names the file and the byte offset."""


class _Reader:
    def __init__(self, buffer, path: str):
        self.buffer = buffer
        self.path = path
        self.pos = 0

    def error(self, message: str, offset: int | None = None) -> MXNetFormatError:
        offset = self.pos if offset is None else offset
        return MXNetFormatError(f"{self.path}: byte offset {offset}: {message}")

    def take(self, nbytes: int, what: str) -> memoryview:
        end = self.pos + nbytes
        if nbytes < 0 or end > len(self.buffer):
            raise self.error(
                f"truncated file: reading {what} needs {nbytes} bytes, "
                f"{len(self.buffer) - self.pos} left (file size {len(self.buffer)})"
            )
        view = memoryview(self.buffer)[self.pos : end]
        self.pos = end
        return view

    def scalar(self, fmt: str, what: str) -> int:
        dtype = np.dtype(fmt)
        return int(np.frombuffer(self.take(dtype.itemsize, what), dtype)[0])

    def u32(self, what: str) -> int:
        return self.scalar("<u4", what)

    def i32(self, what: str) -> int:
        return self.scalar("<i4", what)

    def u64(self, what: str) -> int:
        return self.scalar("<u8", what)


def _read_shape(reader: _Reader, dim_format: str, what: str, ndim: int | None = None):
    """Read ``ndim`` (unless given) and the dims; returns a tuple, or None for an empty array."""
    start = reader.pos
    if ndim is None:
        ndim = reader.i32(f"{what} ndim")
    if ndim == -1:  # V3 "unknown shape": an empty NDArray
        return None
    if ndim < 0 or ndim > _MAX_LEGACY_NDIM:
        raise reader.error(f"invalid {what} ndim {ndim}", start)
    itemsize = np.dtype(dim_format).itemsize
    dims = np.frombuffer(reader.take(itemsize * ndim, f"{what} dims"), dim_format)
    if np.any(dims < 0):
        raise reader.error(f"negative dimension in {what} {tuple(dims)}", start)
    return tuple(int(d) for d in dims)


def _read_ndarray(reader: _Reader, index: int) -> np.ndarray | None:
    start = reader.pos
    what = f"NDArray #{index}"
    magic = reader.u32(f"{what} magic")
    if magic in (NDARRAY_V2_MAGIC, NDARRAY_V3_MAGIC):
        version = "V2" if magic == NDARRAY_V2_MAGIC else "V3"
        stype_offset = reader.pos
        stype = reader.i32(f"{what} storage type")
        if stype not in _STORAGE_TYPES:
            raise reader.error(f"{what}: unknown storage type {stype}", stype_offset)
        if stype != 0:
            raise reader.error(
                f"{what}: {_STORAGE_TYPES[stype]} (sparse) storage is not supported; save the "
                "array densely (tostype('default')) first",
                stype_offset,
            )
        shape = _read_shape(reader, "<i8", f"{what} shape")
        if shape is not None and len(shape) == 0 and version == "V2":
            shape = None  # V2: ndim 0 means an empty (none) NDArray; V3: a scalar
    elif magic == NDARRAY_V1_MAGIC:
        shape = _read_shape(reader, "<i8", f"{what} shape")
        if shape == ():
            shape = None
    else:
        if magic > _MAX_LEGACY_NDIM:
            raise reader.error(
                f"{what}: unknown NDArray magic 0x{magic:08X} (expected V1 0x{NDARRAY_V1_MAGIC:08X}"
                f", V2 0x{NDARRAY_V2_MAGIC:08X}, V3 0x{NDARRAY_V3_MAGIC:08X}, or a legacy "
                f"record starting with ndim <= {_MAX_LEGACY_NDIM})",
                start,
            )
        shape = _read_shape(reader, "<u4", f"{what} legacy shape", ndim=magic)
        if shape == ():
            shape = None
    if shape is None:
        return None
    context_offset = reader.pos
    device_type = reader.i32(f"{what} context device type")
    reader.i32(f"{what} context device id")
    if device_type not in _DEVICE_TYPES:
        raise reader.error(f"{what}: unknown context device type {device_type}", context_offset)
    dtype_offset = reader.pos
    type_flag = reader.i32(f"{what} dtype flag")
    if type_flag not in MSHADOW_DTYPES:
        raise reader.error(
            f"{what}: unknown dtype flag {type_flag} (known: {sorted(MSHADOW_DTYPES)})",
            dtype_offset,
        )
    dtype = MSHADOW_DTYPES[type_flag]
    count = int(np.prod(shape, dtype=np.int64))
    data = reader.take(count * dtype.itemsize, f"{what} data {shape} {dtype.name}")
    return np.frombuffer(data, dtype).reshape(shape).astype(dtype.newbyteorder("="), copy=True)


def read_mxnet_ndarray_list(path: str | os.PathLike) -> list[tuple[str | None, Any]]:
    """Read an MXNet NDArray list file (``mx.nd.save``) with NumPy.

    Returns ``[(name or None, array or None), ...]`` in file order (None arrays are MXNet's empty
    NDArrays). Raises ``FileNotFoundError``, or ``MXNetFormatError`` (a ``ValueError``) naming the
    file and byte offset for truncation, an unknown magic, storage type, device or dtype.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"MXNet params file not found: {path}")
    with open(path, "rb") as f:
        buffer = f.read()
    reader = _Reader(buffer, path)
    header = reader.u64("list header")
    if header != LIST_MAGIC:
        raise reader.error(
            f"unknown list magic 0x{header:X} (expected 0x{LIST_MAGIC:X}, an NDArray list "
            "saved by mx.nd.save)",
            0,
        )
    reader.u64("reserved header field")
    count_offset = reader.pos
    count = reader.u64("array count")
    if count > len(buffer) // 4:
        raise reader.error(f"array count {count} exceeds the file size", count_offset)
    arrays = [_read_ndarray(reader, i) for i in range(count)]
    names_offset = reader.pos
    num_names = reader.u64("name count")
    if num_names not in (0, count):
        raise reader.error(
            f"{num_names} names for {count} arrays (expected 0 or {count})", names_offset
        )
    names = []
    for i in range(num_names):
        length = reader.u64(f"name #{i} length")
        raw = reader.take(length, f"name #{i}")
        try:
            names.append(bytes(raw).decode("utf-8"))
        except UnicodeDecodeError as e:
            raise reader.error(f"name #{i} is not UTF-8: {e}", reader.pos - length) from e
    if not names:
        names = [None] * count
    return list(zip(names, arrays, strict=True))


def read_mxnet_params(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """``{name: array}`` of a named MXNet NDArray list (``arg:``/``aux:`` prefixes kept)."""
    entries = read_mxnet_ndarray_list(path)
    out = {}
    for i, (name, array) in enumerate(entries):
        if name is None:
            raise ValueError(f"{os.fspath(path)}: NDArray #{i} has no name (an unnamed list)")
        if name in out:
            raise ValueError(f"{os.fspath(path)}: duplicate name {name!r}")
        if array is None:
            raise ValueError(f"{os.fspath(path)}: NDArray {name!r} is empty")
        out[name] = array
    return out


# ------------------------------------------------------------------------------------------------
# MXNet ResNet-38 names -> reference PyTorch names (spec §1.8)

_BN_PARAM = {"beta": "bias", "gamma": "weight", "mean": "running_mean", "var": "running_var",
             "moving_mean": "running_mean", "moving_var": "running_var"}  # fmt: skip
_BLOCK_NAME = re.compile(
    r"^(?P<kind>res|bn)(?P<stage>\d)(?P<sub>a|b\d+)_(?P<branch>branch\w+?)_"
    r"(?P<param>weight|gamma|beta|moving_mean|moving_var|mean|var)$"
)
_BN7_NAME = re.compile(r"^bn7_(?P<param>gamma|beta|moving_mean|moving_var|mean|var)$")
NUM_RESNET38_BACKBONE_TENSORS = 191  # 43 convs + 37 BN x 4 (Appendix D)


def mxnet_name_to_torch(name: str) -> str | None:
    """Reference PyTorch name of one MXNet ResNet-38 name, or None for the ImageNet classifier.

    ``res4b5_branch2a_weight`` -> ``b4_5.conv_branch2a.weight``; ``aux:bn6a_branch2b1_moving_var``
    -> ``b6.bn_branch2b1.running_var``; ``conv1a_weight`` -> ``conv1a.weight``; ``bn7_gamma`` ->
    ``bn7.weight``; ``linear1000_*`` -> None. ``arg:``/``aux:`` prefixes are ignored.
    """
    base = name.split(":", 1)[1] if name.startswith(("arg:", "aux:")) else name
    if base == "conv1a_weight":
        return "conv1a.weight"
    if base.startswith("linear1000_"):
        return None
    m = _BLOCK_NAME.match(base)
    if m:
        sub = m["sub"]
        block = f"b{m['stage']}" if sub == "a" else f"b{m['stage']}_{sub[1:]}"
        if m["kind"] == "res":
            if m["param"] != "weight":
                raise ValueError(f"MXNet name {name!r}: a conv ('res...') must end in _weight")
            return f"{block}.conv_{m['branch']}.weight"
        if m["param"] == "weight":
            raise ValueError(f"MXNet name {name!r}: a BN ('bn...') has no _weight")
        return f"{block}.bn_{m['branch']}.{_BN_PARAM[m['param']]}"
    m = _BN7_NAME.match(base)
    if m:
        return f"bn7.{_BN_PARAM[m['param']]}"
    raise ValueError(f"MXNet name {name!r} is not a ResNet-38 (model A1) parameter name")


def convert_mxnet_to_torch(arrays: Mapping[str, np.ndarray], *, source: str = "<arrays>") -> dict:
    """Rename the MXNet ResNet-38 arrays to the reference's PyTorch names (spec §1.8).

    Unlike the reference (``load_state_dict(strict=False)`` hides misnamed keys), the result must be
    exactly the 191 backbone tensors of the full-depth ResNet-38: ``ValueError`` otherwise.
    """
    out: dict[str, np.ndarray] = {}
    for name, array in arrays.items():
        torch_name = mxnet_name_to_torch(name)
        if torch_name is None:
            continue
        if torch_name in out:
            raise ValueError(f"{source}: two MXNet arrays map to {torch_name!r} (one is {name!r})")
        out[torch_name] = np.asarray(array)
    expected = set(backbone_torch_names())
    missing, unexpected = sorted(expected - set(out)), sorted(set(out) - expected)
    if missing or unexpected or len(out) != NUM_RESNET38_BACKBONE_TENSORS:
        raise ValueError(
            f"{source}: expected the {NUM_RESNET38_BACKBONE_TENSORS} ResNet-38 backbone tensors, "
            f"found {len(out)}; missing {missing[:8]}{'...' if len(missing) > 8 else ''}, "
            f"unexpected {unexpected[:8]}"
        )
    return out


def backbone_torch_names(blocks=None) -> list[str]:
    """PyTorch names of the ResNet-38 backbone tensors (no num_batches_tracked), module order."""
    from hfpl_jax.models.resnet38 import FULL_BLOCKS

    blocks = FULL_BLOCKS if blocks is None else tuple(blocks)
    names = ["conv1a.weight"]
    bn = ("weight", "bias", "running_mean", "running_var")
    for stage, count in zip((2, 3, 4, 5), blocks, strict=True):
        for k in range(count):
            block = f"b{stage}" if k == 0 else f"b{stage}_{k}"
            names += [f"{block}.bn_branch2a.{p}" for p in bn]
            names.append(f"{block}.conv_branch2a.weight")
            names += [f"{block}.bn_branch2b1.{p}" for p in bn]
            names.append(f"{block}.conv_branch2b1.weight")
            if k == 0:
                names.append(f"{block}.conv_branch1.weight")
    for block in ("b6", "b7"):
        names += [f"{block}.bn_branch2a.{p}" for p in bn]
        names.append(f"{block}.conv_branch2a.weight")
        names += [f"{block}.bn_branch2b1.{p}" for p in bn]
        names.append(f"{block}.conv_branch2b1.weight")
        names += [f"{block}.bn_branch2b2.{p}" for p in bn]
        names.append(f"{block}.conv_branch2b2.weight")
        names.append(f"{block}.conv_branch1.weight")
    names += [f"bn7.{p}" for p in bn]
    return names


# ------------------------------------------------------------------------------------------------
# PyTorch state dict <-> Flax variables

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


def torch_name_to_flax(name: str, array: np.ndarray) -> tuple[str, tuple[str, ...], np.ndarray]:
    """``(collection, path, value)`` of one PyTorch state-dict entry (see module docstring)."""
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


def _set(tree: dict, path: tuple[str, ...], value) -> None:
    for p in path[:-1]:
        tree = tree.setdefault(p, {})
    tree[path[-1]] = value


def _flatten(tree: Mapping, prefix: tuple[str, ...] = ()):
    for key, value in tree.items():
        if isinstance(value, Mapping):
            yield from _flatten(value, prefix + (str(key),))
        else:
            yield prefix + (str(key),), value


def _strip_data_parallel(arrays: dict) -> dict:
    if arrays and all(k.startswith("module.") for k in arrays):
        return {k[len("module.") :]: v for k, v in arrays.items()}
    return arrays


_TORCHVISION_CLASSIFIER = ("fc.weight", "fc.bias")


def infer_model_size(arrays: Mapping[str, np.ndarray], arch: str) -> dict:
    """``{num_classes, width, blocks}`` of the model a torch-named state dict belongs to."""
    from hfpl_jax import models

    models.check_arch(arch)
    prefix = "backbone." if arch == "deeplab_largefov" else ""
    stem = {"resnet50_cam": "conv1.weight"}.get(arch, prefix + "conv1a.weight")
    if stem not in arrays:
        raise ValueError(f"state dict for arch {arch!r}: missing {stem!r}")
    # The widest layer fixes the width best: from the 64-channel stem, width 0.1 (6 channels)
    # would read as 0.09375 and give b2 12 channels where the model has round(12.8) = 13.
    widest, full = {"resnet50_cam": ("layer4.0.conv3.weight", 2048)}.get(
        arch, (prefix + "bn7.weight", 4096)
    )
    if widest in arrays:
        width = arrays[widest].shape[0] / full
    else:
        width = arrays[stem].shape[0] / 64.0
    head = {"seam": "fc8.weight", "deeplab_largefov": "cls_conv.weight",
            "resnet50_cam": "classifier.weight"}.get(arch)  # fmt: skip
    num_classes = arrays[head].shape[0] - 1 if head in arrays else 20
    if arch == "affinity":
        num_classes = 0
    if arch == "resnet50_cam":
        pattern = re.compile(r"^layer(\d)\.(\d+)\.")
        counts = {}
        for name in arrays:
            m = pattern.match(name)
            if m:
                counts[int(m[1])] = max(counts.get(int(m[1]), 0), int(m[2]) + 1)
        blocks = tuple(counts.get(s, 0) for s in (1, 2, 3, 4))
    else:
        pattern = re.compile(r"^" + re.escape(prefix) + r"b(\d)(?:_(\d+))?\.")
        counts = {}
        for name in arrays:
            m = pattern.match(name)
            if m:
                counts[int(m[1])] = max(counts.get(int(m[1]), 0), int(m[2] or 0) + 1)
        blocks = tuple(counts.get(s, 0) for s in (2, 3, 4, 5))
    return {"num_classes": int(num_classes), "width": width, "blocks": blocks}


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
    for collection, path, leaf in _torch_ordered_leaves(shapes):
        name = _torch_name(collection, path)
        shape = tuple(leaf.shape)
        out[name] = (shape[3], shape[2], shape[0], shape[1]) if path[-1] == "kernel" else shape
    return out


def _torch_name(collection: str, path: tuple[str, ...]) -> str:
    key = (collection, path[-1])
    if key not in _FLAX_TO_TORCH_LEAF:
        raise ValueError(f"variable {collection}/{'/'.join(path)}: no PyTorch counterpart")
    return ".".join(path[:-1] + (_FLAX_TO_TORCH_LEAF[key],))


_TORCH_LEAF_ORDER = {"weight": 0, "bias": 1, "running_mean": 2, "running_var": 3,
                     "num_batches_tracked": 4}  # fmt: skip


def _torch_ordered_leaves(variables: Mapping):
    """``(collection, path, leaf)`` grouped by module in parameter order, tensors as in torch."""
    grouped: dict[tuple[str, ...], list] = {}
    for collection in ("params", "batch_stats"):
        for path, leaf in _flatten(variables.get(collection, {})):
            grouped.setdefault(path[:-1], []).append((collection, path, leaf))
    for entries in grouped.values():
        yield from sorted(
            entries, key=lambda e: _TORCH_LEAF_ORDER[_FLAX_TO_TORCH_LEAF.get((e[0], e[1][-1]),
                                                                             "weight")]
        )  # fmt: skip


def from_torch(state_dict: Mapping[str, Any], arch: str, *, strict: bool = True) -> dict:
    """PyTorch state dict (tensors or NumPy arrays) -> Flax variables ``{"params", "batch_stats"}``.

    Accepts the reference's ``cam.pth`` / ``aff.pth`` (arch "seam" / "affinity"), the DeepLab
    checkpoint ("deeplab_largefov", names ``backbone.*``), a torchvision ResNet-50 state dict
    ("resnet50_cam"; its ImageNet ``fc.*`` is dropped) and any of them with DataParallel's
    ``module.`` prefix. With ``strict`` the names and shapes must match the model exactly (its size
    is inferred from the tensors); ``num_batches_tracked`` may be absent (it is then 0). With
    ``strict=False`` the result holds just the given tensors (to merge with ``merge_variables``).
    """
    from hfpl_jax import models

    models.check_arch(arch)
    arrays = {str(k): _to_numpy(v, str(k)) for k, v in state_dict.items()}
    arrays = _strip_data_parallel(arrays)
    if arch == "resnet50_cam":
        arrays = {k: v for k, v in arrays.items() if k not in _TORCHVISION_CLASSIFIER}
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
            if arch == "resnet50_cam" and missing == ["classifier.weight"]:
                hint = (" (a torchvision ImageNet state dict has no CAM classifier: use "
                        "strict=False and merge_variables, or load_pretrained)")  # fmt: skip
            raise ValueError(
                f"state dict does not match arch {arch!r} (inferred {size}): missing {missing[:6]}"
                f"{'...' if len(missing) > 6 else ''} ({len(missing)}), unexpected "
                f"{unexpected[:6]} ({len(unexpected)}), wrong shapes {wrong[:6]} ({len(wrong)})"
                + hint
            )
    variables: dict = {"params": {}, "batch_stats": {}}
    for name, array in arrays.items():
        collection, path, value = torch_name_to_flax(name, array)
        _set(variables[collection], path, value)
    return variables


def to_torch(variables: Mapping, arch: str | None = None) -> dict[str, np.ndarray]:
    """Flax variables -> ``{reference PyTorch name: NumPy array}`` (OIHW conv weights).

    Module order follows the parameter order; ``num_batches_tracked`` is int64 as in PyTorch.
    Load into the reference with ``{k: torch.from_numpy(v) for k, v in ...}``.
    """
    if arch is not None:
        from hfpl_jax import models

        models.check_arch(arch)
    out = {}
    for collection, path, leaf in _torch_ordered_leaves(variables):
        name, array = flax_path_to_torch(collection, path, np.asarray(leaf))
        out[name] = array
    return out


def merge_variables(base: Mapping, update: Mapping) -> tuple[dict, int]:
    """Replace leaves of ``base`` by those of ``update`` (same paths and shapes).

    Returns ``(merged, number_of_leaves_replaced)``. Raises ``ValueError`` for a path of
    ``update`` absent from ``base`` or a shape mismatch (unlike ``load_state_dict(strict=False)``,
    nothing is silently ignored).
    """
    flat_base = {(c,) + p: v for c in base for p, v in _flatten(base[c])}
    merged: dict = {c: {} for c in base}
    replaced = 0
    flat_update = {(c,) + p: v for c in update for p, v in _flatten(update[c])}
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
        _set(merged[key[0]], key[1:], new)
    return merged, replaced


def from_mxnet_params(path: str | os.PathLike, arch: str = "seam") -> dict:
    """The reference's ImageNet ResNet-38 ``.params`` file -> partial Flax variables (backbone).

    Exactly the 191 backbone tensors (conv kernels, BN scale/bias in ``params``; BN mean/var in
    ``batch_stats``), laid out for ``arch`` (under ``backbone/`` for "deeplab_largefov"). Merge them
    into freshly initialised variables with ``merge_variables`` (heads stay random, as in the
    reference) or use ``load_pretrained``.
    """
    from hfpl_jax import models

    models.check_arch(arch)
    if arch == "resnet50_cam":
        raise ValueError("from_mxnet_params: the MXNet file holds ResNet-38, not ResNet-50")
    torch_named = convert_mxnet_to_torch(read_mxnet_params(path), source=os.fspath(path))
    prefix = "backbone." if arch == "deeplab_largefov" else ""
    variables: dict = {"params": {}, "batch_stats": {}}
    for name, array in torch_named.items():
        collection, flax_path, value = torch_name_to_flax(prefix + name, array)
        _set(variables[collection], flax_path, value.astype(np.float32))
    return variables


def load_pretrained(variables: Mapping, path: str | os.PathLike, arch: str) -> tuple[dict, int]:
    """Merge pretrained weights into initialised ``variables``: ``(merged, tensors loaded)``.

    ``.params``: the MXNet ImageNet ResNet-38 (191 tensors). ``.npz``: Flax variables saved by
    ``save_variables``. Otherwise a PyTorch state dict (``torch.load``; a torchvision ResNet-50 for
    "resnet50_cam", whose ``fc`` is dropped).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"pretrained weights not found: {path}")
    if path.endswith(".params"):
        update = from_mxnet_params(path, arch)
    elif path.endswith(".npz"):
        update = load_variables(path)
    else:
        update = from_torch(_torch_load(path), arch, strict=False)
    return merge_variables(variables, update)


def _torch_load(path: str) -> dict:
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


def save_variables(path: str | os.PathLike, variables: Mapping) -> None:
    """Write Flax variables to ``.npz`` (keys ``collection/a/b/leaf``), atomically."""
    path = os.fspath(path)
    flat = {"/".join((c,) + p): np.asarray(v) for c in variables for p, v in _flatten(variables[c])}
    tmp = path + ".tmp.npz"
    np.savez(tmp, **flat)
    os.replace(tmp, path)


def load_variables(path: str | os.PathLike) -> dict:
    """Read ``.npz`` Flax variables written by ``save_variables``."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Flax variables file not found: {path}")
    out: dict = {}
    with np.load(path) as data:
        for key in data.files:
            parts = tuple(key.split("/"))
            if len(parts) < 2:
                raise ValueError(f"{path}: key {key!r} is not 'collection/.../leaf'")
            _set(out, parts, data[key])
    return out


# ------------------------------------------------------------------------------------------------
# Deterministic weights from (seed, name), identical in both frameworks (parity fixtures)


def seeded_array(seed: int, name: str, shape: tuple) -> np.ndarray:
    """A float32 array for the torch-named tensor ``name``, a function of ``(seed, name)`` only.

    Conv weights (4-D OIHW): N(0, 1/fan_in), fan_in = I*kh*kw. BN ``weight`` U(0.5, 1.5), ``bias``
    and conv biases U(-0.2, 0.2), ``running_mean`` U(-0.2, 0.2), ``running_var`` U(0.5, 2.0) (so
    every variance is positive); ``num_batches_tracked`` 0 (int64).
    """
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "num_batches_tracked":
        return np.zeros(shape, np.int64)
    rng = np.random.default_rng([int(seed), zlib.crc32(name.encode("utf-8"))])
    if leaf == "weight" and len(shape) == 4:
        fan_in = int(np.prod(shape[1:]))
        return (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)
    ranges = {"weight": (0.5, 1.5), "bias": (-0.2, 0.2), "running_mean": (-0.2, 0.2),
              "running_var": (0.5, 2.0)}  # fmt: skip
    if leaf not in ranges:
        raise ValueError(f"seeded_array: unknown tensor kind of {name!r}")
    low, high = ranges[leaf]
    return rng.uniform(low, high, shape).astype(np.float32)


def seeded_state_dict(
    arch: str, seed: int = 0, num_classes: int = 20, *, width: float = 1.0, blocks=None
) -> dict[str, np.ndarray]:
    """Every tensor of ``arch`` (PyTorch names, OIHW), each from ``seeded_array(seed, name)``."""
    shapes = expected_torch_shapes(arch, num_classes, width=width, blocks=blocks)
    return {name: seeded_array(seed, name, shape) for name, shape in shapes.items()}


# ------------------------------------------------------------------------------------------------
# CLI: hfpl-jax convert-weights


def convert_weights_main(argv: list[str] | None = None) -> int:
    """``hfpl-jax convert-weights --input F --output G --arch A``; the formats follow the suffixes.

    - ``.params`` -> ``.npz``: the MXNet ImageNet ResNet-38 -> Flax backbone variables (191
      tensors); with ``--init-seed S`` the whole model is initialised (seed S, heads random as in
      the reference) and the backbone merged in, giving complete variables.
    - ``.pth``/``.pt`` -> ``.npz``: a PyTorch state dict (reference checkpoint or torchvision
      ResNet-50) -> Flax variables.
    - ``.npz`` -> ``.pth``: Flax variables -> a PyTorch state dict with the reference's names.
    - ``.params`` -> ``.pth``: the reference's ``convert_mxnet_to_torch`` without MXNet.
    """
    parser = argparse.ArgumentParser(
        prog="hfpl-jax convert-weights", description=convert_weights_main.__doc__.split("\n")[0]
    )
    parser.add_argument("--input", required=True, help=".params, .pth/.pt or .npz")
    parser.add_argument("--output", required=True, help=".npz (Flax) or .pth (PyTorch)")
    parser.add_argument(
        "--arch", default="seam", help="seam, affinity, deeplab_largefov, resnet50_cam"
    )
    parser.add_argument("--num-classes", type=int, default=20, help="with --init-seed")
    parser.add_argument(
        "--init-seed", type=int, default=None, help="initialise the model, merge the input in"
    )
    parser.add_argument(
        "--partial", action="store_true", help=".pth input: accept a subset of the tensors"
    )
    args = parser.parse_args(argv)
    from hfpl_jax import models

    models.check_arch(args.arch)
    src, dst = args.input, args.output
    if not os.path.isfile(src):
        raise FileNotFoundError(f"--input {src!r} does not exist")
    if src.endswith(".params"):
        variables = from_mxnet_params(src, args.arch)
    elif src.endswith(".npz"):
        variables = load_variables(src)
    elif src.endswith((".pth", ".pt")):
        variables = from_torch(_torch_load(src), args.arch,
                               strict=not args.partial and args.arch != "resnet50_cam")  # fmt: skip
    else:
        raise ValueError(f"--input {src!r}: expected a .params, .pth/.pt or .npz file")
    if args.init_seed is not None:
        import jax

        initial = models.init_variables(
            args.arch, args.num_classes, jax.random.key(args.init_seed),
            **_size_of(variables, args.arch),
        )  # fmt: skip
        initial = jax.tree.map(np.asarray, initial)
        variables, replaced = merge_variables(initial, variables)
        print(f"initialised {args.arch} (seed {args.init_seed}); {replaced} tensors from {src}")
    count = sum(1 for c in variables for _ in _flatten(variables[c]))
    if dst.endswith(".npz"):
        save_variables(dst, variables)
    elif dst.endswith((".pth", ".pt")):
        try:
            import torch
        except ImportError as e:
            raise ImportError("writing .pth needs torch: pip install 'hfpl-jax[torch]'") from e
        # np.array copies (writable, C order) and keeps 0-d arrays 0-d, unlike ascontiguousarray.
        state = {
            k: torch.from_numpy(np.array(v)) for k, v in to_torch(variables, args.arch).items()
        }
        tmp = dst + ".tmp"
        torch.save(state, tmp)
        os.replace(tmp, dst)
    else:
        raise ValueError(f"--output {dst!r}: expected a .npz or .pth file")
    print(f"wrote {dst}: {count} tensors ({args.arch})")
    return 0


def _size_of(variables: Mapping, arch: str) -> dict:
    """Model size (width, blocks) implied by converted variables, for ``--init-seed``."""
    size = infer_model_size(to_torch(variables), arch)
    return {"width": size["width"], "blocks": size["blocks"]}


if __name__ == "__main__":
    sys.exit(convert_weights_main())
