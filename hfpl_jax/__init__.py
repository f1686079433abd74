"""hfpl-jax: High-fidelity Pseudo-labels (HFPL, WACV 2024), weakly-supervised segmentation in JAX.

Modules, in the order data flows through them:

- ``data``: TFDS builders for the datasets, the reference's host-side augmentations
  (``data.transforms``, ``data.color``) and grain input pipelines (``data.input_pipeline``).
- ``image_ops``: PyTorch-exact bilinear resize and the two input normalisations.
- ``models``: Flax Linen networks (SEAM, ResNet-50 CAM, AffinityNet, DeepLab-LargeFOV);
  ``weights`` converts the reference's MXNet/PyTorch weights.
- ``losses`` (with ``feature_similarity``) and ``pooling``: the training losses and CAM pooling,
  pure ``jax.numpy`` functions that can be imported on their own.
- ``train``: CAM training (``train.cam``, ``hfpl-jax train-cam``), its optimizer, state and logs.
- ``parallel`` (mesh and shardings), ``checkpoint`` (orbax), ``atomic_io`` (crash-safe writes),
  ``config_utils`` (config files with overrides), ``parity`` (``hfpl-jax compare-torch``) and
  ``cli`` (the ``hfpl-jax`` console script).
"""

__version__ = "0.1.0"
