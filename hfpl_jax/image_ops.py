"""Image operations with PyTorch's exact semantics: bilinear resize and input normalisation.

``resize_bilinear`` reproduces ``torch.nn.functional.interpolate(mode="bilinear")`` for both
``align_corners`` settings, for upsampling and downsampling. It never antialiases (PyTorch does not,
while ``jax.image.resize`` does when downscaling, and uses half-pixel centres only), so
``jax.image.resize`` must not be used where the reference calls ``F.interpolate``.

Source coordinate of destination index ``i`` along an axis of input size ``n_in`` and output size
``n_out`` (PyTorch ``area_pixel_compute_source_index``, computed in float32 as PyTorch does for
float32 tensors):

- ``align_corners=True``:  ``s = i * (n_in - 1) / (n_out - 1)`` (``s = 0`` when ``n_out == 1``);
- ``align_corners=False``: ``s = max((i + 0.5) * r - 0.5, 0)`` with ``r = n_in / n_out``, or
  ``r = 1 / scale_factor`` when a scale factor is given (PyTorch's default
  ``recompute_scale_factor=None``).

Then ``i0 = floor(s)``, ``i1 = min(i0 + 1, n_in - 1)``, ``w1 = s - i0``, ``w0 = 1 - w1`` and
the output is ``w0 * x[i0] + w1 * x[i1]``, applied separably along H and then W. Because ``s`` is
clamped below at 0 and ``i1`` above at ``n_in - 1``, the border is replicated.

Input normalisation, ``(x / 255 - mean) / std`` with ImageNet's mean and std, comes under two
numeric contracts in the reference, one function each:

- :func:`normalize_image`: ``network/resnet38d.Normalize`` (``model.normalize`` of the CAM and
  AffinityNet scripts) on a uint8 array computes in float64 and casts once to float32, which a
  per-channel 256-entry float32 table reproduces bit for bit.
- :func:`normalize_image_float32`: every operation rounded to float32, what
  ``lib/datasets/transform.ImageNorm`` of the DeepLab stage computes, and ``Normalize`` on the
  float32 crop of ``voc12/data.py VOC12AffDataset`` (NumPy keeps float32 when a float32 array
  meets Python floats). The two differ in the last bit of some entries.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "interpolation_matrix",
    "linear_taps",
    "normalization_table",
    "normalize_image",
    "normalize_image_float32",
    "resize_bilinear",
    "scaled_size",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def scaled_size(n: int, scale: float) -> int:
    """Output length of ``F.interpolate(scale_factor=scale)`` on an axis of length ``n``.

    PyTorch computes ``floor(n * scale)`` in double precision (448 * 0.3 -> 134).
    """
    if n < 1:
        raise ValueError(f"scaled_size: n must be >= 1, found {n}")
    if not scale > 0:
        raise ValueError(f"scaled_size: scale must be > 0, found {scale}")
    return int(math.floor(float(n) * float(scale)))


def linear_taps(
    n_in: int,
    n_out: int,
    *,
    align_corners: bool,
    scale_factor: float | None = None,
    dtype=np.float32,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The two taps of 1-D linear interpolation: ``out[i] = w0[i] * x[i0[i]] + w1[i] * x[i1[i]]``.

    Returns ``(i0, i1, w0, w1)``, each ``(n_out,)``: int64 source indices and ``dtype`` weights,
    with the source coordinate of the module docstring computed in ``dtype`` (float32 like
    PyTorch's kernels for float32 tensors). When ``n_in == n_out`` the taps are the identity
    (``i0 = i1 = i``, ``w0 = 1``, ``w1 = 0``): PyTorch copies the input whenever the sizes agree,
    even for a scale factor != 1.
    """
    if n_in < 1 or n_out < 1:
        raise ValueError(f"resize: sizes must be >= 1, found input {n_in} and output {n_out}")
    f32 = np.dtype(dtype).type
    if n_in == n_out:
        index = np.arange(n_out, dtype=np.int64)
        return index, index.copy(), np.ones(n_out, dtype), np.zeros(n_out, dtype)
    dst = np.arange(n_out, dtype=f32)
    if align_corners:
        scale = f32(n_in - 1) / f32(n_out - 1) if n_out > 1 else f32(0.0)
        src = (scale * dst).astype(f32)
    else:
        if scale_factor is not None and scale_factor > 0:
            scale = f32(1.0 / float(scale_factor))
        else:
            scale = f32(n_in) / f32(n_out)
        src = (scale * (dst + f32(0.5)) - f32(0.5)).astype(f32)
        src = np.maximum(src, f32(0.0))
    i0 = np.minimum(src.astype(np.int64), n_in - 1)  # truncation == floor because src >= 0
    i1 = np.minimum(i0 + 1, n_in - 1)
    w1 = np.clip(src - i0.astype(f32), f32(0.0), f32(1.0)).astype(f32)
    w0 = (f32(1.0) - w1).astype(f32)
    return i0, i1, w0, w1


def interpolation_matrix(
    n_in: int,
    n_out: int,
    *,
    align_corners: bool,
    scale_factor: float | None = None,
    dtype=np.float32,
) -> np.ndarray:
    """``(n_out, n_in)`` matrix ``M`` (``dtype``) with ``out = M @ x``: 1-D linear interpolation.

    Row ``i`` holds ``w0[i]`` at column ``i0[i]`` and ``w1[i]`` at ``i1[i]`` (summed when equal),
    the taps of :func:`linear_taps`, computed in ``dtype``: float32 like PyTorch's kernels for
    float32 (and half) tensors, float64 for float64 tensors. When ``n_in == n_out`` it is the
    identity (PyTorch copies the input whenever the sizes agree, even for a scale factor != 1).
    """
    i0, i1, w0, w1 = linear_taps(
        n_in, n_out, align_corners=align_corners, scale_factor=scale_factor, dtype=dtype
    )
    matrix = np.zeros((n_out, n_in), dtype)
    rows = np.arange(n_out)
    np.add.at(matrix, (rows, i0), w0)
    np.add.at(matrix, (rows, i1), w1)
    return matrix


def _interpolate_axis(x, axis: int, n_out: int, align_corners: bool, scale_factor: float | None):
    n_in = x.shape[axis]
    if n_in == n_out:
        # PyTorch copies the input whenever the sizes agree, even for a scale factor != 1.
        return x
    weight_dtype = np.float64 if x.dtype == jnp.float64 else np.float32
    matrix = interpolation_matrix(
        n_in, n_out, align_corners=align_corners, scale_factor=scale_factor, dtype=weight_dtype
    )
    # A small dense matmul instead of a gather: its transpose (the gradient) is a matmul too, not a
    # scatter-add. HIGHEST precision keeps float32 accuracy on accelerators, where the default
    # precision would round x to bfloat16/TF32; the zero entries add exact zeros.
    y = jnp.tensordot(
        jnp.asarray(matrix, dtype=x.dtype), x, axes=([1], [axis]),
        precision=jax.lax.Precision.HIGHEST,
    )  # fmt: skip
    return jnp.moveaxis(y, 0, axis)


def resize_bilinear(
    x,
    size: Sequence[int] | None = None,
    *,
    align_corners: bool,
    scale_factor: float | Sequence[float] | None = None,
):
    """Bilinear resize with ``torch.nn.functional.interpolate(mode="bilinear")`` semantics.

    Args:
      x: ``(N, H, W, C)`` or ``(H, W, C)`` floating array (jax or NumPy).
      size: ``(h_out, w_out)``. Give either ``size`` or ``scale_factor``.
      align_corners: PyTorch's flag (required: the reference uses both settings).
      scale_factor: a float or ``(s_h, s_w)``; the output size is ``floor(n * s)`` and, with
        ``align_corners=False``, the coordinate ratio is ``1 / s`` (PyTorch's default
        ``recompute_scale_factor=None``).

    Returns:
      The resized array, ``(N, h_out, w_out, C)`` or ``(h_out, w_out, C)``, same dtype. See the
      module docstring for the equation. Differentiable (two small matrix products).
    """
    if x.ndim not in (3, 4):
        raise ValueError(f"resize_bilinear: x must be (N,H,W,C) or (H,W,C), found shape {x.shape}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"resize_bilinear: x must be floating point, found dtype {x.dtype}")
    x = jnp.asarray(x)  # NumPy float64 becomes float32 unless jax_enable_x64 is set
    h_axis = x.ndim - 3
    h_in, w_in = x.shape[h_axis], x.shape[h_axis + 1]
    if (size is None) == (scale_factor is None):
        raise ValueError("resize_bilinear: give exactly one of size and scale_factor")
    if scale_factor is not None:
        if isinstance(scale_factor, int | float):
            scales = (float(scale_factor), float(scale_factor))
        else:
            scales = tuple(float(s) for s in scale_factor)
            if len(scales) != 2:
                raise ValueError(
                    f"resize_bilinear: scale_factor must be a float or (s_h, s_w), "
                    f"found {scale_factor}"
                )
        size = (scaled_size(h_in, scales[0]), scaled_size(w_in, scales[1]))
    else:
        scales = (None, None)
        size = tuple(int(s) for s in size)
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"resize_bilinear: size must be (h_out, w_out) >= 1, found {size}")
    x = _interpolate_axis(x, h_axis, size[0], align_corners, scales[0])
    x = _interpolate_axis(x, h_axis + 1, size[1], align_corners, scales[1])
    return x


def normalization_table(
    mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> np.ndarray:
    """``(256, 3)`` float32 table ``T[v, c] = float32((v / 255 - mean_c) / std_c)`` (in float64)."""
    levels = np.arange(256, dtype=np.float64)[:, None]
    table = (levels / 255.0 - np.asarray(mean, np.float64)) / np.asarray(std, np.float64)
    return table.astype(np.float32)


_TABLE = normalization_table()
# The same table as a (256, 1, 3) lookup table for ``cv2.LUT``: a pure lookup (so the same bytes),
# about twice as fast on (H, W, 3) images as NumPy's indexing.
_LUT = np.ascontiguousarray(_TABLE[:, None, :])


def normalize_image(image, out: np.ndarray | None = None):
    """Normalise uint8 RGB like the reference's ``Normalize`` (float64 maths, one float32 cast).

    Args:
      image: ``(..., 3)`` uint8 array, NumPy (host pipelines; returns NumPy) or jax (returns jax).
      out: NumPy only: a float32 array of ``image``'s shape (it may be a view, e.g. the window of a
        padded crop) that receives the result, which is also returned.

    Returns:
      float32 ``(..., 3)``: ``out[..., c] = float32((x / 255 - mean_c) / std_c)`` computed in
      float64, with ImageNet mean and std: identical bit for bit to the reference.
    """
    if image.shape[-1:] != (3,):
        raise ValueError(f"normalize_image: expected (..., 3) RGB, found shape {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"normalize_image: expected uint8, found dtype {image.dtype}")
    if not isinstance(image, np.ndarray):
        if out is not None:
            raise ValueError("normalize_image: out= is for NumPy images, found a jax array")
        return jnp.asarray(_TABLE)[image.astype(jnp.int32), np.arange(3)]
    if out is not None and (out.shape != image.shape or out.dtype != np.float32):
        raise ValueError(
            f"normalize_image: out must be float32 of shape {image.shape}, found {out.dtype} "
            f"{out.shape}"
        )
    if image.ndim != 3 or image.size == 0:
        result = _TABLE[image.astype(np.intp), np.arange(3)]
    else:
        import cv2

        # OpenCV writes into ``out`` when its layout allows and returns a new array otherwise.
        result = cv2.LUT(image, _LUT) if out is None else cv2.LUT(image, _LUT, dst=out)
    if out is None:
        return result
    if not np.shares_memory(result, out):
        out[...] = result
    return out


def normalize_image_float32(image: np.ndarray) -> np.ndarray:
    """``(..., 3)`` values in [0, 255] (any real dtype) -> float32 ``((x / 255) - mean) / std``
    with every operation rounded to float32 (NumPy in, NumPy out).

    The DeepLab stage's ``ImageNorm`` and AffinityNet training's ``Normalize`` on a float32 crop
    (see the module docstring); for the CAM stage's float64 contract use :func:`normalize_image`.
    """
    x = np.asarray(image, dtype=np.float32)
    if x.shape[-1:] != (3,):
        raise ValueError(f"normalize_image_float32: expected (..., 3) RGB, found shape {x.shape}")
    mean = np.asarray(IMAGENET_MEAN, np.float32)
    std = np.asarray(IMAGENET_STD, np.float32)
    return ((x / np.float32(255.0)) - mean) / std
