"""Tests of hfpl_jax.image_ops against float64 NumPy (PyTorch's interpolation formula, written out
in the module docstring) and torch golden values."""

import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hfpl_jax import image_ops

TESTDATA = os.path.join(os.path.dirname(__file__), "testdata")


def _resize_axis_f64(x, axis, n_out, align_corners, ratio=None):
    """Linear interpolation along one axis, float64, from PyTorch's source-index formula."""
    n_in = x.shape[axis]
    if n_in == n_out:
        return x
    out = []
    for i in range(n_out):
        if align_corners:
            s = i * (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
        else:
            r = n_in / n_out if ratio is None else ratio
            s = max((i + 0.5) * r - 0.5, 0.0)
        lo = min(int(np.floor(s)), n_in - 1)
        hi = min(lo + 1, n_in - 1)
        t = s - lo
        out.append((1 - t) * np.take(x, lo, axis=axis) + t * np.take(x, hi, axis=axis))
    return np.stack(out, axis=axis)


def resize_f64(x, size, align_corners, ratios=(None, None)):
    x = np.asarray(x, np.float64)
    x = _resize_axis_f64(x, x.ndim - 3, size[0], align_corners, ratios[0])
    return _resize_axis_f64(x, x.ndim - 2, size[1], align_corners, ratios[1])


@pytest.mark.parametrize("align_corners", [True, False])
@pytest.mark.parametrize(
    "in_hw,out_hw",
    [((8, 8), (64, 64)), ((56, 56), (448, 448)), ((75, 61), (10, 8)), ((13, 40), (29, 7)),
     ((7, 5), (7, 5)), ((4, 6), (1, 1)), ((1, 1), (5, 3)), ((134, 134), (17, 17))],
)  # fmt: skip
def test_resize_matches_float64_spec(in_hw, out_hw, align_corners):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, *in_hw, 3)).astype(np.float32)
    got = np.asarray(image_ops.resize_bilinear(jnp.asarray(x), out_hw, align_corners=align_corners))
    want = resize_f64(x, out_hw, align_corners)
    assert got.shape == (2, *out_hw, 3)
    # PyTorch (and so this port) computes source coordinates in float32: the coordinate error is
    # up to ~n_in * 2^-24, times the neighbour difference (|x| <~ 4 here).
    np.testing.assert_allclose(got, want, atol=4 * max(in_hw) * 2.0**-23 + 1e-6, rtol=0)


def test_resize_hwc_and_numpy_input():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((9, 11, 4)).astype(np.float32)
    got = np.asarray(image_ops.resize_bilinear(x, (20, 5), align_corners=False))
    np.testing.assert_allclose(got, resize_f64(x, (20, 5), False), atol=2e-6)


def _load_cases():
    data = np.load(os.path.join(TESTDATA, "golden_models_resize.npz"))
    names = sorted({k.split("/")[0] for k in data.files})
    return data, names


def test_resize_torch_golden_all_cases():
    data, names = _load_cases()
    assert len(names) >= 14
    scale_of = {"scale03_ac": 0.3, "scale17_hp": 1.7, "scale101_hp": 1.01}
    for name in names:
        x, want = data[f"{name}/input"], data[f"{name}/output"]
        ac = name.endswith("_ac")
        if name in scale_of:
            got = image_ops.resize_bilinear(x, scale_factor=scale_of[name], align_corners=ac)
        else:
            got = image_ops.resize_bilinear(x, want.shape[1:3], align_corners=ac)
        got = np.asarray(got)
        assert got.shape == want.shape, name
        np.testing.assert_allclose(got, want, atol=1e-6, rtol=1e-6, err_msg=name)


def test_scale_factor_non_ac_uses_inverse_scale():
    # PyTorch's default recompute_scale_factor=None keeps ratio 1/s, not n_in/n_out.
    x = np.random.default_rng(3).standard_normal((1, 12, 9, 1)).astype(np.float32)
    got = np.asarray(image_ops.resize_bilinear(x, scale_factor=1.7, align_corners=False))
    assert got.shape == (1, 20, 15, 1)
    want = resize_f64(x, (20, 15), False, ratios=(1 / 1.7, 1 / 1.7))
    np.testing.assert_allclose(got, want, atol=2e-6)


def test_scaled_size():
    assert image_ops.scaled_size(448, 0.3) == 134
    assert image_ops.scaled_size(75, 0.3) == 22
    with pytest.raises(ValueError, match="scale"):
        image_ops.scaled_size(10, 0.0)


def test_resize_gradient_is_adjoint():
    # d<resize(x), g>/dx is the transpose of the interpolation matrix applied to g.
    rng = np.random.default_rng(4)
    x = rng.standard_normal((1, 6, 5, 2)).astype(np.float32)
    g = rng.standard_normal((1, 9, 13, 2)).astype(np.float32)
    grad = jax.grad(
        lambda v: jnp.sum(image_ops.resize_bilinear(v, (9, 13), align_corners=True) * g)
    )(jnp.asarray(x))
    # Build the float64 matrix column by column from the float64 implementation above.
    basis = np.eye(6 * 5).reshape(30, 1, 6, 5, 1)
    cols = np.stack([resize_f64(b, (9, 13), True)[0, :, :, 0].ravel() for b in basis], axis=1)
    want = np.einsum("oi,oc->ic", cols, g[0].reshape(-1, 2)).reshape(1, 6, 5, 2)
    np.testing.assert_allclose(np.asarray(grad), want, atol=1e-5)


def test_resize_errors():
    x = jnp.zeros((2, 4, 4, 3))
    with pytest.raises(ValueError, match="exactly one"):
        image_ops.resize_bilinear(x, align_corners=True)
    with pytest.raises(ValueError, match="shape"):
        image_ops.resize_bilinear(jnp.zeros((4, 4)), (2, 2), align_corners=True)
    with pytest.raises(ValueError, match="floating"):
        image_ops.resize_bilinear(jnp.zeros((4, 4, 1), jnp.int32), (2, 2), align_corners=True)
    with pytest.raises(ValueError, match="size"):
        image_ops.resize_bilinear(x, (0, 2), align_corners=True)


def test_normalize_image_matches_float64_then_cast():
    levels = np.arange(256, dtype=np.uint8)
    image = np.stack([levels, levels[::-1], np.roll(levels, 7)], axis=-1).reshape(16, 16, 3)
    mean = np.array([0.485, 0.456, 0.406])
    std = np.array([0.229, 0.224, 0.225])
    want = ((image.astype(np.float64) / 255.0 - mean) / std).astype(np.float32)
    got_np = image_ops.normalize_image(image)
    assert got_np.dtype == np.float32 and isinstance(got_np, np.ndarray)
    np.testing.assert_array_equal(got_np, want)
    got_jax = image_ops.normalize_image(jnp.asarray(image))
    np.testing.assert_array_equal(np.asarray(got_jax), want)
    # The float32-only computation differs on some levels: the table is needed.
    f32 = (image.astype(np.float32) / np.float32(255) - mean.astype(np.float32)) / std.astype(
        np.float32
    )
    assert np.any(f32 != want)
    # ... and is the other contract (ImageNorm), from uint8 or float input alike.
    np.testing.assert_array_equal(image_ops.normalize_image_float32(image), f32)
    np.testing.assert_array_equal(image_ops.normalize_image_float32(image.astype(np.float32)), f32)
    with pytest.raises(ValueError, match="uint8"):
        image_ops.normalize_image(image.astype(np.float32))
    with pytest.raises(ValueError, match="RGB"):
        image_ops.normalize_image(image[..., :2])
    with pytest.raises(ValueError, match="RGB"):
        image_ops.normalize_image_float32(image[..., :2])


def test_normalize_image_any_rank_numpy_or_jax_and_into_out():
    batch = np.random.default_rng(6).integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)
    want = np.stack([image_ops.normalize_image(b) for b in batch])  # (H, W, 3): the cv2.LUT path
    np.testing.assert_array_equal(image_ops.normalize_image(batch), want)  # any rank: the table
    np.testing.assert_array_equal(image_ops.normalize_image(batch[0, 0]), want[0, 0])
    np.testing.assert_array_equal(np.asarray(image_ops.normalize_image(jnp.asarray(batch))), want)
    out = np.full(batch.shape, np.nan, np.float32)
    assert image_ops.normalize_image(batch, out=out) is out
    np.testing.assert_array_equal(out, want)
    with pytest.raises(ValueError, match="out must be float32"):
        image_ops.normalize_image(batch[0], out=np.zeros((5, 7, 3), np.float64))
    with pytest.raises(ValueError, match="jax array"):
        image_ops.normalize_image(jnp.asarray(batch), out=out)


def test_resize_numpy_float64_input_follows_jax_precision():
    x = np.random.default_rng(5).standard_normal((1, 5, 4, 2))  # float64
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "float64 requested but not available" warning
        got = image_ops.resize_bilinear(x, (9, 7), align_corners=True)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got), resize_f64(x, (9, 7), True), atol=1e-5)
    # The float32 interpolation matrix rows sum to 1 and hold at most two nonzeros.
    m = image_ops.interpolation_matrix(13, 40, align_corners=False)
    np.testing.assert_allclose(m.sum(1), 1.0, atol=1e-6)
    assert np.all((m != 0).sum(1) <= 2)
