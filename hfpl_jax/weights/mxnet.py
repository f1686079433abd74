"""The reference's MXNet ImageNet ResNet-38 file, read with NumPy alone, and its names.

``read_mxnet_ndarray_list``: the ImageNet file ``ilsvrc-cls_rna-a1_cls1000_ep-0001.params`` is an
NDArray list saved by ``mx.nd.save`` (MXNet is not installable on current Python). Layout (MXNet
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

Every error names the file and the byte offset. The names map to the reference's PyTorch names as
its ``convert_mxnet_to_torch`` does (``mxnet_name_to_torch``), which must give exactly 191 backbone
tensors; ``from_mxnet_params`` lays them out as Flax variables of an architecture with a ResNet-38
backbone.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from hfpl_jax.weights.torch_names import set_path, torch_name_to_flax

__all__ = [
    "LIST_MAGIC",
    "MSHADOW_DTYPES",
    "NDARRAY_V1_MAGIC",
    "NDARRAY_V2_MAGIC",
    "NDARRAY_V3_MAGIC",
    "NUM_RESNET38_BACKBONE_TENSORS",
    "MXNetFormatError",
    "backbone_torch_names",
    "convert_mxnet_to_torch",
    "from_mxnet_params",
    "mxnet_name_to_torch",
    "read_mxnet_ndarray_list",
    "read_mxnet_params",
]

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
# MXNet ResNet-38 names -> reference PyTorch names (network/resnet38d.convert_mxnet_to_torch)

_BN_PARAM = {"beta": "bias", "gamma": "weight", "mean": "running_mean", "var": "running_var",
             "moving_mean": "running_mean", "moving_var": "running_var"}  # fmt: skip
_BLOCK_NAME = re.compile(
    r"^(?P<kind>res|bn)(?P<stage>\d)(?P<sub>a|b\d+)_(?P<branch>branch\w+?)_"
    r"(?P<param>weight|gamma|beta|moving_mean|moving_var|mean|var)$"
)
_BN7_NAME = re.compile(r"^bn7_(?P<param>gamma|beta|moving_mean|moving_var|mean|var)$")
NUM_RESNET38_BACKBONE_TENSORS = 191  # 43 convs + 37 BN x 4
MXNET_BACKBONE = "resnet38"  # the ArchSpec.backbone.name the ImageNet file fits


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
    """Rename the MXNet ResNet-38 arrays to the reference's PyTorch names (its
    ``network/resnet38d.convert_mxnet_to_torch``).

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


def from_mxnet_params(path: str | os.PathLike, arch: str = "seam") -> dict:
    """The reference's ImageNet ResNet-38 ``.params`` file -> partial Flax variables (backbone).

    Exactly the 191 backbone tensors (conv kernels, BN scale/bias in ``params``; BN mean/var in
    ``batch_stats``), float32, laid out for ``arch`` (under its ``ArchSpec.backbone_prefix``, e.g.
    ``backbone/`` for "deeplab_largefov"). Merge them into freshly initialised variables with
    ``merge_variables`` (heads stay random, as in the reference) or use ``load_pretrained``.
    """
    from hfpl_jax import models

    spec = models.get_spec(arch)
    if spec.backbone.name != MXNET_BACKBONE:
        raise ValueError(
            f"from_mxnet_params: the MXNet file holds {MXNET_BACKBONE}; arch {arch!r} has a "
            f"{spec.backbone.name} backbone"
        )
    torch_named = convert_mxnet_to_torch(read_mxnet_params(path), source=os.fspath(path))
    variables: dict = {"params": {}, "batch_stats": {}}
    for name, array in torch_named.items():
        collection, flax_path, value = torch_name_to_flax(spec.backbone_prefix + name, array)
        set_path(variables[collection], flax_path, value.astype(np.float32))
    return variables
