"""AffinityNet on ResNet-38 (spec §7.1; ``network/resnet38_aff.py``).

Features (OS 8, 448 channels at full size; no dropout in the head, conv4/conv5 *not* detached):

    x = elu(f9(concat[elu(f8_3(conv4)), elu(f8_4(conv5)), elu(f8_5(conv6))]))

Pairs (``pair_indices``, PSA's ``get_indices_of_pairs``): offsets ``(0, 1..r-1)`` then, for
``dy = 1..r-1`` and ``dx = -(r-1)..(r-1)`` with ``dx^2 + dy^2 < r^2``, ``(dy, dx)`` in loop order
(34 offsets for r = 5). "From" pixels: rows ``[0, fh-r+1)`` x cols ``[r-1, fw-r+1)``, row-major;
"to" pixel of offset k: ``from + (dy, dx)``; the to-lists are concatenated offset-major.

Affinity: ``aff[n, k, p] = exp(-mean_c |x[n, to_kp, c] - x[n, from_p, c]|)``, ``(N, K, P)``,
values in (0, 1]. The radius is 5, or ``(min_edge - 1) // 2`` for feature maps with
``min_edge < 11`` (``radius_for``). ``dense_affinity`` builds the symmetric ``(A, A)`` matrix
with a unit diagonal.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from hfpl_jax.models.layers import (
    Conv2d,
    check_images,
    kaiming_normal,
    output_dtype,
    scaled_channels,
    xavier_uniform,
)
from hfpl_jax.models.resnet38 import BACKBONE_NOT_TRAINING_PATTERNS, resnet38_trunk

FROM_SCRATCH_PATTERNS = (r"^(f8_3|f8_4|f8_5|f9)/",)
NOT_TRAINING_PATTERNS = BACKBONE_NOT_TRAINING_PATTERNS
DEFAULT_RADIUS = 5


def search_offsets(radius: int) -> list[tuple[int, int]]:
    """The (dy, dx) offsets of the pairs, in the reference's order (34 for radius 5)."""
    offsets = [(0, dx) for dx in range(1, radius)]
    for dy in range(1, radius):
        for dx in range(-radius + 1, radius):
            if dx * dx + dy * dy < radius * radius:
                offsets.append((dy, dx))
    return offsets


def radius_for(feature_hw: tuple[int, int], radius: int = DEFAULT_RADIUS) -> int:
    """Pair radius for a feature map: ``radius``, or ``(min_edge - 1) // 2`` when below 2r + 1."""
    min_edge = min(feature_hw)
    return (min_edge - 1) // 2 if min_edge < radius * 2 + 1 else radius


def pair_indices(radius: int, feature_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Flat pixel indices of the pairs: ``from (P,)`` and ``to (K * P,)`` (offset-major), int64.

    ``P = (fh - radius + 1) * (fw - 2 * (radius - 1))``. Raises ``ValueError`` when the map is too
    small to hold a single pair (the reference crashes there).
    """
    fh, fw = (int(s) for s in feature_hw)
    r_floor = radius - 1
    crop_h, crop_w = fh - r_floor, fw - 2 * r_floor
    if radius < 2 or crop_h < 1 or crop_w < 1:
        raise ValueError(
            f"pair_indices: feature map {fh}x{fw} too small for radius {radius} "
            f"(needs at least {radius}x{2 * radius - 1})"
        )
    full = np.arange(fh * fw, dtype=np.int64).reshape(fh, fw)
    from_idx = full[:crop_h, r_floor : r_floor + crop_w].reshape(-1)
    to_list = [
        full[dy : dy + crop_h, r_floor + dx : r_floor + dx + crop_w].reshape(-1)
        for dy, dx in search_offsets(radius)
    ]
    return from_idx, np.concatenate(to_list)


def pair_affinities(features, from_idx, to_idx):
    """``aff[n, k, p] = exp(-mean_c |f[n, to[k*P + p]] - f[n, from[p]]|)``.

    Args:
      features: ``(N, h, w, D)``.
      from_idx: ``(P,)``; to_idx: ``(K * P,)`` flat indices into ``h * w``.

    Returns:
      ``(N, K, P)``, in the features' dtype promoted to at least float32.
    """
    n, h, w, d = features.shape
    flat = features.astype(jnp.promote_types(features.dtype, jnp.float32)).reshape(n, h * w, d)
    num_from = len(from_idx)
    ff = jnp.take(flat, jnp.asarray(from_idx), axis=1)[:, None]  # (N, 1, P, D)
    ft = jnp.take(flat, jnp.asarray(to_idx), axis=1).reshape(n, -1, num_from, d)
    return jnp.exp(-jnp.mean(jnp.abs(ft - ff), axis=-1))


def dense_affinity(aff, from_idx, to_idx, area: int):
    """Dense symmetric affinity ``(N, A, A)``: ``M[from, to] = M[to, from] = aff``, ``M[i, i] = 1``.

    ``aff`` is ``(N, K, P)`` from ``pair_affinities``; pairs are unique, so scatter-set is exact.
    """
    n = aff.shape[0]
    from_rep = np.tile(np.asarray(from_idx), aff.shape[1])
    values = aff.reshape(n, -1)
    dense = jnp.zeros((n, area, area), aff.dtype)
    dense = dense.at[:, from_rep, np.asarray(to_idx)].set(values)
    dense = dense.at[:, np.asarray(to_idx), from_rep].set(values)
    diag = np.arange(area)
    return dense.at[:, diag, diag].set(1.0)


class AffinityNet(nn.Module):
    """AffinityNet: ``__call__(images, train)`` -> ``{"features", "affinity"}`` (see module doc).

    ``affinity`` uses ``pair_indices(radius_for((h, w)), (h, w))``. ``num_classes`` is accepted for
    a uniform ``build`` signature and unused (the net predicts class-agnostic affinities).
    """

    num_classes: int = 0
    width: float = 1.0
    blocks: tuple | None = None
    batch_norm: str = "frozen"
    bn_momentum: float = 0.9
    dtype: Any = jnp.float32
    dropout: bool = True
    radius: int = DEFAULT_RADIUS

    @nn.compact
    def __call__(self, images, train: bool = False) -> dict:
        check_images(images)
        taps = resnet38_trunk(
            images,
            train=train,
            width=self.width,
            blocks=self.blocks,
            batch_norm=self.batch_norm,
            bn_momentum=self.bn_momentum,
            dtype=self.dtype,
            dropout=self.dropout,
        )
        c = lambda n: scaled_channels(n, self.width)  # noqa: E731
        heads = []
        for name, tap, features in (("f8_3", "conv4", 64), ("f8_4", "conv5", 128),
                                    ("f8_5", "conv6", 256)):  # fmt: skip
            conv = Conv2d(c(features), 1, kernel_init=kaiming_normal(), dtype=self.dtype, name=name)
            heads.append(nn.elu(conv(taps[tap])))
        f9 = Conv2d(
            sum(h.shape[-1] for h in heads),
            1,
            kernel_init=xavier_uniform(4.0),
            dtype=self.dtype,
            name="f9",
        )
        x = nn.elu(f9(jnp.concatenate(heads, axis=-1))).astype(output_dtype(self.dtype))
        hw = x.shape[1:3]
        from_idx, to_idx = pair_indices(radius_for(hw, self.radius), hw)
        return {"features": x, "affinity": pair_affinities(x, from_idx, to_idx)}
