"""hfpl_jax.atomic_io: a write either replaces the file whole or leaves it as it was."""

import json
import os
import stat

import numpy as np
import pytest
from PIL import Image

from hfpl_jax import atomic_io


def _names(directory) -> list[str]:
    return sorted(os.listdir(directory))


def test_writers_round_trip_at_exactly_the_path(tmp_path):
    atomic_io.write_bytes(tmp_path / "a.bin", b"\x00\x01\xff")
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01\xff"
    atomic_io.write_text(tmp_path / "sub" / "dir" / "b.txt", "é\nline\n")  # parents created
    assert (tmp_path / "sub" / "dir" / "b.txt").read_bytes() == "é\nline\n".encode()
    atomic_io.write_json(tmp_path / "c.json", {"b": 1, "a": [1.5, None]})
    text = (tmp_path / "c.json").read_text()
    assert text.endswith("}\n") and json.loads(text) == {"b": 1, "a": [1.5, None]}
    assert text.index('"a"') < text.index('"b"')  # sorted keys: the same bytes for equal dicts
    atomic_io.write_json(tmp_path / "c.json", {"b": 1, "a": 2}, sort_keys=False)
    text = (tmp_path / "c.json").read_text()
    assert text.index('"b"') < text.index('"a"')

    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    atomic_io.save_npy(tmp_path / "d.data", array)  # no ".npy" appended
    np.testing.assert_array_equal(np.load(tmp_path / "d.data"), array)
    atomic_io.save_npy(tmp_path / "e.npy", {0: array}, allow_pickle=True)
    np.testing.assert_array_equal(np.load(tmp_path / "e.npy", allow_pickle=True).item()[0], array)
    for compress in (False, True):
        atomic_io.save_npz(tmp_path / "f.out", {"x": array, "y": array[0]}, compress=compress)
        with np.load(tmp_path / "f.out") as loaded:
            assert sorted(loaded) == ["x", "y"]
            np.testing.assert_array_equal(loaded["y"], array[0])
    assert _names(tmp_path) == ["a.bin", "c.json", "d.data", "e.npy", "f.out", "sub"]


def test_png_grey_rgb_and_palette_keep_their_values(tmp_path):
    rng = np.random.default_rng(0)
    label = rng.integers(0, 22, (5, 7)).astype(np.uint8)
    label[0, 0] = 255
    atomic_io.save_png(tmp_path / "label.png", label)
    with Image.open(tmp_path / "label.png") as image:
        assert image.mode == "L"
        np.testing.assert_array_equal(np.asarray(image), label)
    rgb = rng.integers(0, 256, (5, 7, 3)).astype(np.uint8)
    atomic_io.save_png(tmp_path / "rgb.png", rgb)
    with Image.open(tmp_path / "rgb.png") as image:
        np.testing.assert_array_equal(np.asarray(image.convert("RGB")), rgb)
    palette = rng.integers(0, 256, (256, 3)).astype(np.uint8)
    atomic_io.save_png(tmp_path / "pal.png", label, palette=palette)
    with Image.open(tmp_path / "pal.png") as image:
        assert image.mode == "P"
        np.testing.assert_array_equal(np.asarray(image), label)  # indices, not colours
        np.testing.assert_array_equal(np.asarray(image.convert("RGB")), palette[label])
    with pytest.raises(ValueError, match=r"bad\.png.*uint8.*float32"):
        atomic_io.save_png(tmp_path / "bad.png", label.astype(np.float32))
    with pytest.raises(ValueError, match="palette"):
        atomic_io.save_png(tmp_path / "bad.png", rgb, palette=palette)
    assert "bad.png" not in _names(tmp_path)


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "out.json"
    atomic_io.write_json(path, {"done": 1})
    with pytest.raises(TypeError):
        atomic_io.write_json(path, {"bad": object()})
    with pytest.raises(RuntimeError, match="killed"), atomic_io.atomic_open(path, "w") as f:
        f.write('{"half": ')
        raise RuntimeError("killed mid-write")
    assert json.loads(path.read_text()) == {"done": 1}
    assert _names(tmp_path) == ["out.json"]
    with pytest.raises(ValueError, match="mode"), atomic_io.atomic_open(path, "a"):
        pass


def test_the_written_file_has_the_permissions_of_a_plain_open(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_io.write_text(tmp_path / "report.txt", "x")
        with open(tmp_path / "plain.txt", "w") as f:
            f.write("x")
    finally:
        os.umask(old)
    mode = stat.S_IMODE(os.stat(tmp_path / "report.txt").st_mode)
    assert mode == stat.S_IMODE(os.stat(tmp_path / "plain.txt").st_mode) == 0o644
