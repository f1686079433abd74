"""AffinityNet's pixel pairs (PSA's ``get_indices_of_pairs``), in NumPy only.

Shared by the model (``hfpl_jax.models.affinity``) and the data side (the pair labels of
``hfpl_jax.data.transforms``), which must enumerate the pairs in the same order; this module
imports neither JAX nor Flax, so input workers stay light.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "DEFAULT_RADIUS",
    "pair_indices",
    "radius_for",
    "search_offsets",
]

DEFAULT_RADIUS = 5


def search_offsets(radius: int = DEFAULT_RADIUS) -> list[tuple[int, int]]:
    """The (dy, dx) pair offsets within ``radius``, in the reference's order.

    ``(0, 1..r-1)``, then for ``dy = 1..r-1`` and ``dx = -(r-1)..r-1`` those with
    ``dx^2 + dy^2 < r^2``, in loop order (34 offsets for r = 5).
    """
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
