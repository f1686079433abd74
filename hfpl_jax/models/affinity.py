"""AffinityNet on ResNet-38 (spec §7.1; ``network/resnet38_aff.py``).

Features (OS 8, 448 channels at full size; no dropout in the head, conv4/conv5 *not* detached):

    x = elu(f9(concat[elu(f8_3(conv4)), elu(f8_4(conv5)), elu(f8_5(conv6))]))

Pairs (``pair_indices``, PSA's ``get_indices_of_pairs``): offsets ``(0, 1..r-1)`` then, for
``dy = 1..r-1`` and ``dx = -(r-1)..(r-1)`` with ``dx^2 + dy^2 < r^2``, ``(dy, dx)`` in loop order
(34 offsets for r = 5). "From" pixels: rows ``[0, fh-r+1)`` x cols ``[r-1, fw-r+1)``, row-major;
"to" pixel of offset k: ``from + (dy, dx)``; the to-lists are concatenated offset-major.

Affinity: ``aff[n, k, p] = exp(-mean_c |x[n, to_kp, c] - x[n, from_p, c]|)``, ``(N, K, P)``,
values in (0, 1]. The radius is 5, or ``(min_edge - 1) // 2`` for feature maps with
``min_edge < 11`` (``radius_for``); the pair geometry lives in ``hfpl_jax.affinity_pairs``
(shared with the data side's pair labels). ``dense_affinity`` builds the symmetric ``(A, A)`` matrix
with a unit diagonal.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

# The pair geometry is NumPy shared with the data side; re-exported here as part of the model.
from hfpl_jax.affinity_pairs import (  # noqa: F401
    DEFAULT_RADIUS,
    pair_indices,
    radius_for,
    search_offsets,
)
from hfpl_jax.models.layers import (
    ModelOptions,
    check_images,
    kaiming_normal,
    output_dtype,
    xavier_uniform,
)
from hfpl_jax.models.resnet38 import BACKBONE_NOT_TRAINING_PATTERNS, RESNET38, resnet38_trunk
from hfpl_jax.models.spec import ArchSpec


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


class AffinityNet(ModelOptions):
    """AffinityNet: ``__call__(images, train)`` -> ``{"features", "affinity"}`` (see module doc).

    ``affinity`` uses ``pair_indices(radius_for((h, w)), (h, w))``. ``num_classes`` is accepted for
    a uniform ``build`` signature and unused (the net predicts class-agnostic affinities). The
    other options are ``ModelOptions`` (keyword-only).
    """

    num_classes: int = 0
    radius: int = DEFAULT_RADIUS

    @nn.compact
    def __call__(self, images, train: bool = False) -> dict:
        check_images(images)
        taps = resnet38_trunk(images, train=train, **self.model_options())
        heads = []
        for name, tap, features in (("f8_3", "conv4", 64), ("f8_4", "conv5", 128),
                                    ("f8_5", "conv6", 256)):  # fmt: skip
            conv = self.conv(self.channels(features), 1, kernel_init=kaiming_normal(), name=name)
            heads.append(nn.elu(conv(taps[tap])))
        depth = sum(h.shape[-1] for h in heads)
        f9 = self.conv(depth, 1, kernel_init=xavier_uniform(4.0), name="f9")
        x = nn.elu(f9(jnp.concatenate(heads, axis=-1))).astype(output_dtype(self.dtype))
        hw = x.shape[1:3]
        from_idx, to_idx = pair_indices(radius_for(hw, self.radius), hw)
        return {"features": x, "affinity": pair_affinities(x, from_idx, to_idx)}


SPEC = ArchSpec(
    name="affinity",
    module=AffinityNet,
    reference="network/resnet38_aff.py Net",
    from_scratch=(r"^(f8_3|f8_4|f8_5|f9)/",),
    not_training=BACKBONE_NOT_TRAINING_PATTERNS,
    backbone=RESNET38,
)
