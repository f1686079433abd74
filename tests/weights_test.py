"""Tests of hfpl_jax.weights: MXNet reader, the §1.8 name map, torch <-> Flax conversion, CLI."""

import os
import shutil
import struct
import zlib

import jax
import numpy as np
import pytest

from hfpl_jax import models, weights

TESTDATA = os.path.join(os.path.dirname(__file__), "testdata")
TINY = dict(width=0.125, blocks=(1, 1, 1, 1))

# The contents written by scripts/make_mxnet_fixture.py (see mxnet_params_layout.md).
TINY_ARRAYS = {
    "arg:conv_weight": ((2, 3, 1, 1), np.float32),
    "arg:bn_gamma": ((5,), np.float64),
    "aux:bn_moving_var": ((3,), np.float16),
    "counts": ((2, 2, 2), np.int32),
    "pixels": ((4, 3), np.uint8),
    "offsets": ((1,), np.int8),
    "steps": ((2,), np.int64),
}


def _tiny_expected(shape, dtype):
    a = np.arange(int(np.prod(shape))).reshape(shape)
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return (a * 0.5 - 3).astype(dtype)
    return (a - 3 if dtype.kind == "i" else a + 7).astype(dtype)


@pytest.mark.parametrize("version", ["legacy", "v1", "v2", "v3"])
def test_read_tiny_files_every_version(version):
    path = os.path.join(TESTDATA, f"mxnet_tiny_{version}.params")
    arrays = weights.read_mxnet_params(path)
    expected_names = list(TINY_ARRAYS) + (["scalar"] if version == "v3" else [])
    assert list(arrays) == expected_names
    for name, (shape, dtype) in TINY_ARRAYS.items():
        got = arrays[name]
        assert got.dtype == np.dtype(dtype) and got.shape == shape, name
        np.testing.assert_array_equal(got, _tiny_expected(shape, dtype), err_msg=name)
        assert got.flags.writeable and got.flags.c_contiguous
    if version == "v3":
        assert arrays["scalar"].shape == () and arrays["scalar"] == np.float32(2.5)


def test_read_unnamed_list_with_empty_array():
    entries = weights.read_mxnet_ndarray_list(os.path.join(TESTDATA, "mxnet_unnamed_v2.params"))
    assert [name for name, _ in entries] == [None, None, None]
    np.testing.assert_array_equal(entries[0][1], _tiny_expected((2, 2), np.float32))
    assert entries[1][1] is None
    np.testing.assert_array_equal(entries[2][1], _tiny_expected((3,), np.int32))
    with pytest.raises(ValueError, match="no name"):
        weights.read_mxnet_params(os.path.join(TESTDATA, "mxnet_unnamed_v2.params"))


def _corrupt(tmp_path, source, edit):
    data = bytearray(open(os.path.join(TESTDATA, source), "rb").read())
    data = edit(data)
    path = tmp_path / ("bad_" + source)
    path.write_bytes(bytes(data))
    return str(path)


# Offsets in mxnet_tiny_legacy.params, from the layout notes: 24-byte list header; the first record
# (2x3x1x1 float32) is ndim at 24, 4 dims at 28..44, device type at 44, device id at 48, dtype
# flag at 52, data at 56.
@pytest.mark.parametrize(
    "cut,offset",
    [(5, 0), (20, 16), (30, 28), (46, 44), (50, 48), (60, 56), (400, None)],
)
def test_truncated_file_names_file_and_offset(tmp_path, cut, offset):
    path = _corrupt(tmp_path, "mxnet_tiny_legacy.params", lambda d: d[:cut])
    with pytest.raises(weights.MXNetFormatError, match="truncated") as info:
        weights.read_mxnet_ndarray_list(path)
    message = str(info.value)
    assert path in message
    if offset is not None:
        assert f"byte offset {offset}:" in message


def test_unknown_magics_and_fields(tmp_path):
    def put(offset, fmt, value):
        def edit(d):
            d[offset : offset + struct.calcsize(fmt)] = struct.pack(fmt, value)
            return d

        return edit

    cases = [
        (put(0, "<Q", 0x113), "byte offset 0: unknown list magic 0x113"),
        (put(24, "<I", 0xDEADBEEF), "byte offset 24: NDArray #0: unknown NDArray magic 0xDEADBEEF"),
        (put(52, "<i", 99), "byte offset 52: NDArray #0: unknown dtype flag 99"),
        (put(44, "<i", 7), "byte offset 44: NDArray #0: unknown context device type 7"),
    ]
    for edit, message in cases:
        path = _corrupt(tmp_path, "mxnet_tiny_legacy.params", edit)
        with pytest.raises(weights.MXNetFormatError) as info:
            weights.read_mxnet_ndarray_list(path)
        assert path in str(info.value) and message in str(info.value), str(info.value)
    # V2 record: storage type at 28 (after the 24-byte header and the magic).
    path = _corrupt(tmp_path, "mxnet_tiny_v2.params", put(28, "<i", 1))
    with pytest.raises(weights.MXNetFormatError, match="byte offset 28: .*row_sparse"):
        weights.read_mxnet_ndarray_list(path)
    path = _corrupt(tmp_path, "mxnet_tiny_v2.params", put(28, "<i", 5))
    with pytest.raises(weights.MXNetFormatError, match="byte offset 28: .*unknown storage type 5"):
        weights.read_mxnet_ndarray_list(path)
    with pytest.raises(FileNotFoundError, match="nope.params"):
        weights.read_mxnet_ndarray_list(tmp_path / "nope.params")


def _spec_rule(key):
    """The §1.8 token rule, written from the spec, for cross-checking the regex mapping."""
    toks = key.split("_")
    bn = {"beta": "bias", "gamma": "weight", "mean": "running_mean", "var": "running_var"}
    if "conv1a" in toks[0]:
        return "conv1a.weight"
    if "linear1000" in toks[0]:
        return None
    if "branch" in toks[1]:
        t0 = toks[0]
        block = "b" + t0[-3] + "_" + t0[-1] if t0[-1] != "a" else "b" + t0[-2]
        if "res" in t0:
            return f"{block}.conv_{toks[1]}.weight"
        return f"{block}.bn_{toks[1]}.{bn[toks[-1]]}"
    return "bn7." + bn[toks[-1]]


def test_resnet38_name_set_converts_to_191_backbone_tensors():
    path = os.path.join(TESTDATA, "mxnet_resnet38_names_legacy.params")
    raw = weights.read_mxnet_params(path)
    assert len(raw) == 193  # 191 + the ImageNet classifier's weight and bias
    for name in raw:
        assert weights.mxnet_name_to_torch(name) == _spec_rule(name), name
    torch_named = weights.convert_mxnet_to_torch(raw)
    assert len(torch_named) == weights.NUM_RESNET38_BACKBONE_TENSORS == 191
    assert sum(a.ndim == 4 for a in torch_named.values()) == 43
    assert sum(n.startswith("bn") or ".bn_" in n for n in torch_named) == 37 * 4
    assert torch_named["b4_5.conv_branch2a.weight"] is not None
    np.testing.assert_array_equal(
        torch_named["b6.bn_branch2b1.running_var"], raw["aux:bn6a_branch2b1_moving_var"]
    )
    # -> Flax backbone variables, merged into a width-1/32 SEAM: every tensor lands, transposed.
    partial = weights.from_mxnet_params(path, "seam")
    assert len(jax.tree.leaves(partial)) == 191
    init = _zeros_variables("seam", 20, width=1 / 32)
    merged, replaced = weights.merge_variables(init, partial)
    assert replaced == 191
    kernel = merged["params"]["b3_1"]["conv_branch2b1"]["kernel"]
    np.testing.assert_array_equal(kernel, raw["arg:res3b1_branch2b1_weight"].transpose(2, 3, 1, 0))
    name = "aux:bn7_moving_mean"
    expected = np.random.default_rng(zlib.crc32(name.encode())).standard_normal(128)
    np.testing.assert_array_equal(merged["batch_stats"]["bn7"]["mean"], expected.astype(np.float32))
    # Heads are untouched (random, as in the reference).
    np.testing.assert_array_equal(
        merged["params"]["fc8"]["kernel"], init["params"]["fc8"]["kernel"]
    )
    deeplab = weights.from_mxnet_params(path, "deeplab_largefov")
    assert set(deeplab["params"]) == {"backbone"}


def _zeros_variables(arch, num_classes, **size):
    """Variables of the right structure, all zeros, without compiling the model."""
    model = models.build(arch, num_classes, **size)
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.key(0), np.zeros((1, 64, 64, 3), np.float32))
    )
    return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)


def test_convert_mxnet_rejects_missing_and_unknown_names():
    raw = weights.read_mxnet_params(os.path.join(TESTDATA, "mxnet_resnet38_names_legacy.params"))
    fewer = dict(raw)
    del fewer["arg:res5b2_branch2b1_weight"]
    with pytest.raises(ValueError, match="found 190; missing .*b5_2.conv_branch2b1.weight"):
        weights.convert_mxnet_to_torch(fewer)
    with pytest.raises(ValueError, match="not a ResNet-38"):
        weights.convert_mxnet_to_torch({**raw, "arg:fc9_weight": np.zeros(1)})


@pytest.mark.parametrize("arch", models.ARCHS)
@pytest.mark.parametrize("width", [0.125, 0.1])  # 0.1: channel counts that are not c * 2^-k
def test_torch_flax_round_trip_is_identity(arch, width):
    size = {**TINY, "width": width}
    state = weights.seeded_state_dict(arch, 3, 5, **size)
    assert weights.infer_model_size(state, arch)["width"] * 64 == pytest.approx(64 * width, 0.01)
    variables = weights.from_torch(state, arch)
    back = weights.to_torch(variables, arch)
    assert list(back) == list(state)
    for name, value in state.items():
        assert back[name].dtype == value.dtype and np.array_equal(back[name], value), name
    # The variables are what the Flax model expects.
    model = models.build(arch, 5, **size)
    expected = jax.eval_shape(
        lambda: model.init(jax.random.key(0), np.zeros((1, 64, 64, 3), np.float32))
    )
    assert jax.tree.structure(expected) == jax.tree.structure(variables)
    assert jax.tree.map(lambda x: x.shape, expected) == jax.tree.map(np.shape, variables)


def test_from_torch_accepts_tensors_prefixes_and_reports_mismatches():
    state = weights.seeded_state_dict("seam", 0, 5, **TINY)
    parallel = {"module." + k: v for k, v in state.items() if "num_batches" not in k}
    variables = weights.from_torch(parallel, "seam")
    assert int(variables["batch_stats"]["bn7"]["num_batches_tracked"]) == 0
    np.testing.assert_array_equal(
        variables["params"]["conv1a"]["kernel"], state["conv1a.weight"].transpose(2, 3, 1, 0)
    )
    missing = dict(state)
    del missing["f9.weight"]
    with pytest.raises(ValueError, match=r"missing \['f9.weight'\]"):
        weights.from_torch(missing, "seam")
    wrong = {**state, "f8_3.weight": np.zeros((9, 64, 1, 1), np.float32)}
    with pytest.raises(ValueError, match="f8_3.weight: \\(9, 64, 1, 1\\) != \\(8, 64, 1, 1\\)"):
        weights.from_torch(wrong, "seam")
    with pytest.raises(ValueError, match="unexpected \\['extra.weight'\\]"):
        weights.from_torch({**state, "extra.weight": np.zeros((1, 1, 1, 1))}, "seam")
    partial = weights.from_torch({"fc8.weight": state["fc8.weight"]}, "seam", strict=False)
    assert list(partial["params"]) == ["fc8"]
    torch = pytest.importorskip("torch")
    tensors = {k: torch.from_numpy(v) for k, v in state.items()}
    from_tensors = weights.from_torch(tensors, "seam")
    assert jax.tree.all(
        jax.tree.map(np.array_equal, from_tensors, weights.from_torch(state, "seam"))
    )


def test_resnet50_accepts_torchvision_state_dict():
    state = weights.seeded_state_dict("resnet50_cam", 0, 5, **TINY)
    torchvision_like = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    torchvision_like["fc.weight"] = np.zeros((1000, 256), np.float32)
    torchvision_like["fc.bias"] = np.zeros((1000,), np.float32)
    partial = weights.from_torch(torchvision_like, "resnet50_cam", strict=False)
    assert "fc" not in partial["params"] and "classifier" not in partial["params"]
    init = _zeros_variables("resnet50_cam", 5, **TINY)
    merged, replaced = weights.merge_variables(init, partial)
    assert replaced == len(state) - 1
    np.testing.assert_array_equal(
        merged["params"]["layer2"]["0"]["downsample"]["0"]["kernel"],
        state["layer2.0.downsample.0.weight"].transpose(2, 3, 1, 0),
    )


def test_merge_variables_errors():
    init = _zeros_variables("seam", 5, **TINY)
    with pytest.raises(ValueError, match="params/nope/kernel is not a variable"):
        weights.merge_variables(init, {"params": {"nope": {"kernel": np.zeros(1)}}})
    with pytest.raises(ValueError, match="params/fc8/kernel has shape"):
        weights.merge_variables(init, {"params": {"fc8": {"kernel": np.zeros((1, 1, 2, 2))}}})


def test_seeded_arrays_are_deterministic_and_valid():
    a = weights.seeded_array(1, "b2.bn_branch2a.running_var", (7,))
    assert np.array_equal(a, weights.seeded_array(1, "b2.bn_branch2a.running_var", (7,)))
    assert np.all(a >= 0.5)
    assert not np.array_equal(a, weights.seeded_array(2, "b2.bn_branch2a.running_var", (7,)))
    w = weights.seeded_array(0, "b4.conv_branch2a.weight", (64, 32, 3, 3))
    assert w.dtype == np.float32 and abs(w.std() * np.sqrt(32 * 9) - 1) < 0.05


def test_variables_npz_round_trip(tmp_path):
    variables = weights.from_torch(weights.seeded_state_dict("affinity", 0, 0, **TINY), "affinity")
    weights.save_variables(tmp_path / "v.npz", variables)
    loaded = weights.load_weights_file(tmp_path / "v.npz")
    assert jax.tree.structure(loaded) == jax.tree.structure(variables)
    assert jax.tree.all(jax.tree.map(np.array_equal, loaded, variables))


def test_one_loader_dispatches_by_suffix(tmp_path):
    """load_weights_file: .npz as saved, .params through the MXNet reader, .pth through from_torch
    (strict or not); load_pretrained merges any of them; other suffixes and a missing arch or file
    are errors naming the file."""
    names = os.path.join(TESTDATA, "mxnet_resnet38_names_legacy.params")
    backbone = weights.load_weights_file(names, "deeplab_largefov")
    assert len(jax.tree.leaves(backbone)) == 191 and set(backbone["params"]) == {"backbone"}
    with pytest.raises(ValueError, match="needs the model's arch"):
        weights.load_weights_file(names)
    with pytest.raises(ValueError, match="resnet50 backbone"):
        weights.load_weights_file(names, "resnet50_cam")
    state = weights.seeded_state_dict("seam", 0, 5, **TINY)
    variables = weights.from_torch(state, "seam")
    weights.save_variables(tmp_path / "seam.npz", variables)
    loaded = weights.load_weights_file(tmp_path / "seam.npz")
    assert jax.tree.all(jax.tree.map(np.array_equal, loaded, variables))
    with pytest.raises(ValueError, match=r"'.*seam\.bin': expected a .params, .pth/.pt or .npz"):
        weights.load_weights_file(tmp_path / "seam.bin", "seam")
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        weights.load_weights_file(tmp_path / "nope.pth", "seam")
    torch = pytest.importorskip("torch")
    backbone_only = {k: torch.from_numpy(v) for k, v in state.items() if not k.startswith("f")}
    torch.save({"state_dict": backbone_only}, tmp_path / "backbone.pt")
    with pytest.raises(ValueError, match="missing .*f8_3.weight.*pretrained backbone without"):
        weights.load_weights_file(tmp_path / "backbone.pt", "seam")
    partial = weights.load_weights_file(tmp_path / "backbone.pt", "seam", strict=False)
    assert "fc8" not in partial["params"] and "b3" in partial["params"]
    init = _zeros_variables("seam", 5, **TINY)
    merged, replaced = weights.load_pretrained(init, tmp_path / "backbone.pt", "seam")
    assert replaced == len(backbone_only)
    np.testing.assert_array_equal(merged["params"]["b3"]["conv_branch1"]["kernel"],
                                  variables["params"]["b3"]["conv_branch1"]["kernel"])  # fmt: skip
    np.testing.assert_array_equal(merged["params"]["fc8"]["kernel"], 0)


def test_convert_weights_cli(tmp_path, capsys):
    names = os.path.join(TESTDATA, "mxnet_resnet38_names_legacy.params")
    backbone = tmp_path / "backbone.npz"
    assert weights.convert_weights_main(["--input", names, "--output", str(backbone)]) == 0
    assert len(jax.tree.leaves(weights.load_weights_file(backbone))) == 191
    torch = pytest.importorskip("torch")
    # A partial PyTorch state dict (backbone only) + --init-seed -> complete Flax variables.
    state = weights.seeded_state_dict("seam", 0, 20, **TINY)
    backbone_only = {
        k: torch.from_numpy(v) for k, v in state.items() if k.startswith(("b", "conv"))
    }
    torch.save(backbone_only, tmp_path / "backbone.pth")
    full = tmp_path / "seam.npz"
    args = ["--input", str(tmp_path / "backbone.pth"), "--output", str(full), "--arch", "seam"]
    assert weights.convert_weights_main(args + ["--partial", "--init-seed", "0"]) == 0
    assert f"{len(backbone_only)} tensors from" in capsys.readouterr().out
    variables = weights.load_weights_file(full)
    assert variables["params"]["fc8"]["kernel"].shape == (1, 1, 512, 21)
    np.testing.assert_array_equal(
        variables["params"]["b3"]["conv_branch1"]["kernel"],
        state["b3.conv_branch1.weight"].transpose(2, 3, 1, 0),
    )
    # Flax -> .pth -> Flax is the identity.
    pth = tmp_path / "seam.pth"
    weights.convert_weights_main(["--input", str(full), "--output", str(pth), "--arch", "seam"])
    assert len(torch.load(pth)) == 100
    again = tmp_path / "again.npz"
    weights.convert_weights_main(["--input", str(pth), "--output", str(again), "--arch", "seam"])
    again_variables = weights.load_weights_file(again)
    assert jax.tree.all(jax.tree.map(np.array_equal, again_variables, variables))
    shutil.copy(pth, tmp_path / "seam.bin")
    with pytest.raises(ValueError, match="expected a .params"):
        weights.convert_weights_main(["--input", str(tmp_path / "seam.bin"), "--output", "x.npz"])


@pytest.mark.slow
def test_full_size_seam_round_trip_is_identity():
    state = weights.seeded_state_dict("seam", 0, 20)
    assert len(state) == 232 and sum("num_batches_tracked" in k for k in state) == 37
    back = weights.to_torch(weights.from_torch(state, "seam"), "seam")
    assert list(back) == list(state)
    for name, value in state.items():
        assert back[name].dtype == value.dtype and np.array_equal(back[name], value), name
