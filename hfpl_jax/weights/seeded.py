"""Deterministic weights from ``(seed, name)``, identical in both frameworks (parity fixtures).

``compare-torch`` and ``scripts/make_golden_models.py`` load the same ``seeded_state_dict`` into
the reference's PyTorch module and (through ``from_torch``) into the Flax model.
"""

from __future__ import annotations

import zlib

import numpy as np

from hfpl_jax.weights.torch_names import expected_torch_shapes

__all__ = ["seeded_array", "seeded_state_dict"]


def seeded_array(seed: int, name: str, shape: tuple) -> np.ndarray:
    """A float32 array for the torch-named tensor ``name``, a function of ``(seed, name)`` only.

    Conv weights (4-D OIHW): N(0, 1/fan_in), fan_in = I*kh*kw. BN ``weight`` U(0.5, 1.5), ``bias``
    and conv biases U(-0.2, 0.2), ``running_mean`` U(-0.2, 0.2), ``running_var`` U(0.5, 2.0) (so
    every variance is positive); ``num_batches_tracked`` 0 (int64).
    """
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "num_batches_tracked":
        return np.zeros(shape, np.int64)
    rng = np.random.default_rng([int(seed), zlib.crc32(name.encode("utf-8"))])
    if leaf == "weight" and len(shape) == 4:
        fan_in = int(np.prod(shape[1:]))
        return (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)
    ranges = {"weight": (0.5, 1.5), "bias": (-0.2, 0.2), "running_mean": (-0.2, 0.2),
              "running_var": (0.5, 2.0)}  # fmt: skip
    if leaf not in ranges:
        raise ValueError(f"seeded_array: unknown tensor kind of {name!r}")
    low, high = ranges[leaf]
    return rng.uniform(low, high, shape).astype(np.float32)


def seeded_state_dict(
    arch: str, seed: int = 0, num_classes: int = 20, *, width: float = 1.0, blocks=None
) -> dict[str, np.ndarray]:
    """Every tensor of ``arch`` (PyTorch names, OIHW), each from ``seeded_array(seed, name)``."""
    shapes = expected_torch_shapes(arch, num_classes, width=width, blocks=blocks)
    return {name: seeded_array(seed, name, shape) for name, shape in shapes.items()}
