"""Write the MXNet NDArray-list fixtures of tests/weights_test.py from the layout notes.

Command that produced the committed files:

    .venv/bin/python scripts/make_mxnet_fixture.py --out tests/testdata

The writer below follows ``tests/testdata/mxnet_params_layout.md`` only (it shares no code with the
reader in ``hfpl_jax/weights/mxnet.py``), so the reader is tested against an independent encoding.
"""

from __future__ import annotations

import argparse
import os
import struct
import sys
import zlib

import numpy as np

V1, V2, V3 = 0xF993FAC8, 0xF993FAC9, 0xF993FACA
TYPE_FLAGS = {np.dtype(np.float32): 0, np.dtype(np.float64): 1, np.dtype(np.float16): 2,
              np.dtype(np.uint8): 3, np.dtype(np.int32): 4, np.dtype(np.int8): 5,
              np.dtype(np.int64): 6}  # fmt: skip

# (name, shape, dtype, device type, device id)
TINY_ARRAYS = [
    ("arg:conv_weight", (2, 3, 1, 1), np.float32, 1, 0),
    ("arg:bn_gamma", (5,), np.float64, 1, 0),
    ("aux:bn_moving_var", (3,), np.float16, 2, 1),  # saved from gpu(1)
    ("counts", (2, 2, 2), np.int32, 1, 0),
    ("pixels", (4, 3), np.uint8, 1, 0),
    ("offsets", (1,), np.int8, 1, 0),
    ("steps", (2,), np.int64, 1, 0),
]


def tiny_value(shape, dtype):
    """Known contents, ``a = arange(size).reshape(shape)``: floats ``a * 0.5 - 3``, signed
    integers ``a - 3``, unsigned ``a + 7``."""
    a = np.arange(int(np.prod(shape)), dtype=np.int64).reshape(shape)
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return (a * 0.5 - 3).astype(dtype)
    return (a - 3 if dtype.kind == "i" else a + 7).astype(dtype)


def encode_ndarray(array, version: str, device=(1, 0)) -> bytes:
    """One NDArray record (``array`` None = an empty NDArray)."""
    out = bytearray()
    if array is None:
        if version == "legacy":
            return struct.pack("<I", 0)
        if version == "v1":
            return struct.pack("<II", V1, 0)
        magic = V2 if version == "v2" else V3
        return struct.pack("<Iii", magic, 0, 0 if version == "v2" else -1)
    array = np.asarray(array)
    if version == "legacy":
        out += struct.pack("<I", array.ndim) + struct.pack(f"<{array.ndim}I", *array.shape)
    elif version == "v1":
        out += struct.pack("<II", V1, array.ndim) + struct.pack(f"<{array.ndim}q", *array.shape)
    else:
        magic = V2 if version == "v2" else V3
        out += struct.pack("<Iii", magic, 0, array.ndim)
        out += struct.pack(f"<{array.ndim}q", *array.shape)
    out += struct.pack("<ii", *device)
    out += struct.pack("<i", TYPE_FLAGS[array.dtype])
    out += np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes()
    return bytes(out)


def encode_list(entries, version: str, named: bool = True) -> bytes:
    """``entries``: [(name, array or None, (dev_type, dev_id))]."""
    out = bytearray(struct.pack("<QQQ", 0x112, 0, len(entries)))
    for _, array, device in entries:
        out += encode_ndarray(array, version, device)
    if named:
        out += struct.pack("<Q", len(entries))
        for name, _, _ in entries:
            raw = name.encode("utf-8")
            out += struct.pack("<Q", len(raw)) + raw
    else:
        out += struct.pack("<Q", 0)
    return bytes(out)


def resnet38_mxnet_names() -> list[tuple[str, tuple]]:
    """Every name of the ImageNet ResNet-38 file with its full-size shape (OIHW / (C,))."""
    entries = [("arg:conv1a_weight", (64, 3, 3, 3))]

    def bn(prefix, channels):
        return [(f"arg:{prefix}_gamma", (channels,)), (f"arg:{prefix}_beta", (channels,)),
                (f"aux:{prefix}_moving_mean", (channels,)),
                (f"aux:{prefix}_moving_var", (channels,))]  # fmt: skip

    stages = [(2, 3, 64, 128, 128), (3, 3, 128, 256, 256), (4, 6, 256, 512, 512),
              (5, 3, 512, 512, 1024)]  # fmt: skip
    for stage, count, cin, mid, cout in stages:
        for k in range(count):
            sub = "a" if k == 0 else f"b{k}"
            c_in = cin if k == 0 else cout
            entries += bn(f"bn{stage}{sub}_branch2a", c_in)
            entries.append((f"arg:res{stage}{sub}_branch2a_weight", (mid, c_in, 3, 3)))
            entries += bn(f"bn{stage}{sub}_branch2b1", mid)
            entries.append((f"arg:res{stage}{sub}_branch2b1_weight", (cout, mid, 3, 3)))
            if k == 0:
                entries.append((f"arg:res{stage}{sub}_branch1_weight", (cout, c_in, 1, 1)))
    for stage, cin, cout in ((6, 1024, 2048), (7, 2048, 4096)):
        q, h = cout // 4, cout // 2
        entries += bn(f"bn{stage}a_branch2a", cin)
        entries.append((f"arg:res{stage}a_branch2a_weight", (q, cin, 1, 1)))
        entries += bn(f"bn{stage}a_branch2b1", q)
        entries.append((f"arg:res{stage}a_branch2b1_weight", (h, q, 3, 3)))
        entries += bn(f"bn{stage}a_branch2b2", h)
        entries.append((f"arg:res{stage}a_branch2b2_weight", (cout, h, 1, 1)))
        entries.append((f"arg:res{stage}a_branch1_weight", (cout, cin, 1, 1)))
    entries += bn("bn7", 4096)
    entries += [("arg:linear1000_weight", (1000, 4096)), ("arg:linear1000_bias", (1000,))]
    return entries


def names_value(name: str, shape) -> np.ndarray:
    return (
        np.random.default_rng(zlib.crc32(name.encode())).standard_normal(shape).astype(np.float32)
    )


def _scale_shape(name: str, shape, divisor: int):
    if name == "arg:conv1a_weight":
        return (shape[0] // divisor,) + tuple(shape[1:])
    if "linear1000" in name:
        return (8, shape[1] // divisor) if len(shape) == 2 else (8,)
    if len(shape) == 4:
        return (shape[0] // divisor, shape[1] // divisor) + tuple(shape[2:])
    return (shape[0] // divisor,)


def _write(path: str, data: bytes) -> None:
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    print(f"wrote {path} ({len(data)} bytes)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="tests/testdata")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    for version in ("legacy", "v1", "v2", "v3"):
        entries = [(n, tiny_value(s, d), (dt, di)) for n, s, d, dt, di in TINY_ARRAYS]
        if version == "v3":
            entries.append(("scalar", np.array(2.5, np.float32), (1, 0)))
        _write(
            os.path.join(args.out, f"mxnet_tiny_{version}.params"), encode_list(entries, version)
        )
    unnamed = [(None, tiny_value((2, 2), np.float32), (1, 0)), (None, None, (1, 0)),
               (None, tiny_value((3,), np.int32), (1, 0))]  # fmt: skip
    _write(os.path.join(args.out, "mxnet_unnamed_v2.params"),
           encode_list(unnamed, "v2", named=False))  # fmt: skip
    entries = []
    for name, shape in resnet38_mxnet_names():
        small = _scale_shape(name, shape, 32)
        entries.append((name, names_value(name, small), (1, 0)))
    _write(os.path.join(args.out, "mxnet_resnet38_names_legacy.params"),
           encode_list(entries, "legacy"))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
