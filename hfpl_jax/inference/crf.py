"""Fully connected CRF (Krähenbühl and Koltun, NeurIPS 2011): mean-field inference in JAX.

Reproduces what the reference's ``tool/imutils.crf_inference`` computes through pydensecrf
(``DenseCRF2D`` with ``unary_from_softmax``, ``addPairwiseGaussian``, ``addPairwiseBilateral``
and their defaults: Potts compatibility, ``DIAG_KERNEL``, ``NORMALIZE_SYMMETRIC``):

    U = -log(clip(P, 1e-5, 1))                               (per pixel and label)
    Q_0 = softmax(-U)
    Q_{t+1} = softmax(-U + sum_k w_k D_k K_k D_k Q_t),       D_k = diag((K_k 1 + 1e-20)^-1/2)

with two Gaussian kernels ``K_k[i, j] = exp(-|f_i - f_j|^2 / 2)``: positions ``(x, y) / sxy`` (the
"Gaussian" or smoothness kernel, weight ``gaussian_compat``) and ``(x, y) / sxy, (r, g, b) / srgb``
(the bilateral or appearance kernel, weight ``bilateral_compat``). A Potts compatibility ``w``
contributes the energy ``-w * message`` to a label, so the message for label l is *added* to its
logit; the pixel's own term ``K[i, i] = 1`` is included, as in pydensecrf.

``method="lattice"`` filters with the permutohedral lattice (``permutohedral.py``), the same
approximation pydensecrf makes, in O(N C) per iteration; ``method="exact"`` uses the all-pairs
kernel (O(N^2), tiny images only) as the reference point for tests.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from hfpl_jax.inference.permutohedral import (
    Lattice,
    build_lattice,
    filter_workspace,
    lattice_filter,
    lattice_filter_into,
)

__all__ = ["dense_crf", "MAX_EXACT_PIXELS"]

# The exact path materialises an N x N float32 kernel per pairwise term (64 MiB at this size).
MAX_EXACT_PIXELS = 4096
_METHODS = ("lattice", "exact")
_UNARY_CLIP = 1e-5  # pydensecrf.utils.unary_from_softmax(clip=1e-5)
_NORM_EPS = 1e-20  # pairwise.cpp, NORMALIZE_SYMMETRIC


def _positions(height: int, width: int, sxy: float) -> np.ndarray:
    """(H*W, 2) float32 features (x / sxy, y / sxy) in row-major pixel order."""
    y, x = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    sxy = np.float32(sxy)
    return np.stack([x.ravel().astype(np.float32) / sxy, y.ravel().astype(np.float32) / sxy], -1)


def _position_bounds(height: int, width: int, sxy: float) -> tuple[tuple[float, float], ...]:
    return ((0.0, (width - 1) / sxy), (0.0, (height - 1) / sxy))


def _symmetric_norm(filtered_ones: jax.Array) -> jax.Array:
    """D = (K 1 + 1e-20)^-1/2 per pixel, pydensecrf's NORMALIZE_SYMMETRIC."""
    return 1.0 / jnp.sqrt(filtered_ones + np.float32(_NORM_EPS))


@functools.partial(jax.jit, static_argnames=("feature_bounds",))
def _build_position_kernel(features, feature_bounds):
    lattice = build_lattice(features, feature_bounds)
    return lattice, _symmetric_norm(lattice_filter(lattice, jnp.ones((features.shape[0], 1))))


@functools.lru_cache(maxsize=32)
def _position_kernel(height: int, width: int, sxy: float) -> tuple[Lattice, np.ndarray]:
    """The smoothness kernel's lattice (trimmed to its exact vertex count) and its norm D: both
    depend only on the image size and sxy, so they are computed once per size, eagerly (also
    while an enclosing function is being traced), and enter programs as constants."""
    with jax.ensure_compile_time_eval():
        lattice, norm = _build_position_kernel(
            _positions(height, width, sxy), _position_bounds(height, width, sxy)
        )
        return lattice.trim(), np.asarray(norm)


def _bilateral_features(image: jax.Array, sxy: float, srgb: float) -> jax.Array:
    height, width, _ = image.shape
    colours = image.reshape(height * width, 3).astype(jnp.float32) / np.float32(srgb)
    return jnp.concatenate([jnp.asarray(_positions(height, width, sxy)), colours], axis=-1)


class _ExactKernel:
    """K[i, j] = exp(-|f_i - f_j|^2 / 2) over all pairs, as an (N, N) float32 matrix."""

    def __init__(self, features: jax.Array):
        difference = features[:, None, :] - features[None, :, :]
        self.kernel = jnp.exp(-0.5 * jnp.sum(difference * difference, axis=-1))
        self.norm = _symmetric_norm(jnp.sum(self.kernel, axis=-1, keepdims=True))
        self.workspace = None

    def apply(self, values, workspace):
        return jnp.dot(self.kernel, values, precision=lax.Precision.HIGHEST), workspace


class _LatticeKernel:
    """The permutohedral approximation of the same kernel (up to a constant factor)."""

    def __init__(self, lattice: Lattice, num_channels: int, norm: jax.Array | None = None):
        self.lattice = lattice
        if norm is None:
            norm = _symmetric_norm(lattice_filter(lattice, jnp.ones((lattice.offsets.shape[1], 1))))
        self.norm = norm
        self.workspace = filter_workspace(lattice, num_channels)

    def apply(self, values, workspace):
        return lattice_filter_into(self.lattice, values, workspace)


def _check_positive(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise ValueError(f"{name} must be a Python number (static), got {type(value).__name__}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return float(value)


def _check_finite(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise ValueError(f"{name} must be a Python number (static), got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return float(value)


def dense_crf(
    image: jax.Array,
    probs: jax.Array,
    *,
    iterations: int = 10,
    gaussian_sxy: float = 3,
    gaussian_compat: float = 3,
    bilateral_sxy: float = 80,
    bilateral_srgb: float = 13,
    bilateral_compat: float = 10,
    method: str = "lattice",
) -> jax.Array:
    """Dense-CRF marginals of one image, as ``tool/imutils.crf_inference`` computes them.

    Args:
      image: (H, W, 3) uint8 RGB.
      probs: (H, W, C) float "probabilities"; need not sum to 1 (the reference passes
        ``concat(bg, cams)`` with ``bg = (1 - max cam)^alpha``): the unary is
        ``-log(clip(probs, 1e-5, 1))`` in float32.
      iterations: mean-field iterations (pydensecrf ``inference(t)``).
      gaussian_sxy, gaussian_compat: positions (x, y) / sxy, Potts weight.
      bilateral_sxy, bilateral_srgb, bilateral_compat: features (x, y) / sxy, (r, g, b) / srgb,
        Potts weight. All parameters are static Python numbers.
      method: "lattice" (permutohedral filtering, pydensecrf's approximation) or "exact"
        (all-pairs Gaussian kernels; at most ``MAX_EXACT_PIXELS`` pixels).

    Returns:
      (H, W, C) float32 marginals Q (each pixel sums to 1). Jittable; batch with ``jax.vmap``.
    """
    image_shape, probs_shape = np.shape(image), np.shape(probs)
    if len(image_shape) != 3 or image_shape[-1] != 3:
        raise ValueError(f"image must have shape (H, W, 3), got {image_shape}")
    if jnp.dtype(image.dtype) != jnp.uint8:
        raise ValueError(f"image must be uint8 RGB, got dtype {jnp.dtype(image.dtype)}")
    if len(probs_shape) != 3 or probs_shape[-1] < 1:
        raise ValueError(f"probs must have shape (H, W, C) with C >= 1, got {probs_shape}")
    if not jnp.issubdtype(probs.dtype, jnp.floating):
        raise ValueError(f"probs must be a float array, got dtype {jnp.dtype(probs.dtype)}")
    if probs_shape[:2] != image_shape[:2]:
        raise ValueError(
            f"probs (H, W, C) = {probs_shape} does not match image (H, W, 3) = {image_shape}"
        )
    if isinstance(iterations, bool) or not isinstance(iterations, int | np.integer):
        raise ValueError(f"iterations must be an int, got {type(iterations).__name__}")
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    height, width, _ = image_shape
    if method == "exact" and height * width > MAX_EXACT_PIXELS:
        raise ValueError(
            f"method='exact' builds an N x N kernel: image has {height * width} pixels, at most "
            f"{MAX_EXACT_PIXELS} allowed; use method='lattice'"
        )
    return _dense_crf(
        image,
        probs,
        int(iterations),
        gaussian_sxy=_check_positive("gaussian_sxy", gaussian_sxy),
        gaussian_compat=_check_finite("gaussian_compat", gaussian_compat),
        bilateral_sxy=_check_positive("bilateral_sxy", bilateral_sxy),
        bilateral_srgb=_check_positive("bilateral_srgb", bilateral_srgb),
        bilateral_compat=_check_finite("bilateral_compat", bilateral_compat),
        method=method,
    )


@functools.partial(
    jax.jit,
    static_argnames=(
        "gaussian_sxy",
        "gaussian_compat",
        "bilateral_sxy",
        "bilateral_srgb",
        "bilateral_compat",
        "method",
    ),
)
def _dense_crf(
    image,
    probs,
    iterations,
    *,
    gaussian_sxy,
    gaussian_compat,
    bilateral_sxy,
    bilateral_srgb,
    bilateral_compat,
    method,
):
    height, width, num_labels = probs.shape
    probs = probs.reshape(height * width, num_labels).astype(jnp.float32)
    unary = -jnp.log(jnp.clip(probs, np.float32(_UNARY_CLIP), np.float32(1.0)))
    bilateral = _bilateral_features(image, bilateral_sxy, bilateral_srgb)
    if method == "exact":
        kernels = [
            _ExactKernel(jnp.asarray(_positions(height, width, gaussian_sxy))),
            _ExactKernel(bilateral),
        ]
    else:
        position_lattice, position_norm = _position_kernel(height, width, gaussian_sxy)
        bounds = _position_bounds(height, width, bilateral_sxy)
        bounds += ((0.0, 255.0 / bilateral_srgb),) * 3
        kernels = [
            _LatticeKernel(position_lattice, num_labels, position_norm),
            _LatticeKernel(build_lattice(bilateral, bounds), num_labels),
        ]
    compats = (np.float32(gaussian_compat), np.float32(bilateral_compat))

    def step(_, carry):
        q, workspaces = carry
        # densecrf.cpp: tmp = -U; tmp -= pairwise_k(Q), pairwise_k(Q) = -w_k D_k K_k D_k Q (Potts).
        logits = -unary
        next_workspaces = []
        for kernel, compat, workspace in zip(kernels, compats, workspaces, strict=True):
            filtered, workspace = kernel.apply(kernel.norm * q, workspace)
            logits = logits - (-compat * (kernel.norm * filtered))
            next_workspaces.append(workspace)
        return jax.nn.softmax(logits, axis=-1), tuple(next_workspaces)

    workspaces = tuple(kernel.workspace for kernel in kernels)
    q, _ = lax.fori_loop(0, iterations, step, (jax.nn.softmax(-unary, axis=-1), workspaces))
    return q.reshape(height, width, num_labels)
