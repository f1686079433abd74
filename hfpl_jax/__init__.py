"""hfpl-jax: High-fidelity Pseudo-labels (HFPL, WACV 2024), weakly-supervised segmentation in JAX.

Stages (one module each): ``losses``/``pooling`` (pure jnp), ``models`` (Flax Linen), ``weights``
(MXNet/PyTorch conversion), ``data`` (TFDS builders and grain pipelines), ``train`` (CAM,
AffinityNet and segmentation loops), ``inference`` and ``evaluation``.
"""

__version__ = "0.1.0"
