"""Datasets and input pipelines.

- :mod:`~hfpl_jax.data.shapes`, :mod:`~hfpl_jax.data.voc`, :mod:`~hfpl_jax.data.coco`: the three
  datasets' sources (generated shapes; VOC 2012 + SBD and COCO 2014 from manual folders);
  :mod:`~hfpl_jax.data.builders` turns them into TFDS array_record datasets, checked by
  :mod:`~hfpl_jax.data.validation`.
- :mod:`~hfpl_jax.data.sources`: where a dataset lives, building on demand, TF-free reading.
- :mod:`~hfpl_jax.data.transforms`: host-side NumPy/PIL/OpenCV augmentations (the reference's),
  with torchvision's colour jitter in :mod:`~hfpl_jax.data.color`.
- :mod:`~hfpl_jax.data.input_pipeline`: grain pipelines (CAM, AffinityNet and segmentation training;
  multi-scale inference) yielding host-local NumPy batches, which
  ``hfpl_jax.parallel.host_batch_to_global`` turns into global ``jax.Array`` batches.
- :mod:`~hfpl_jax.data.cli`: ``hfpl-jax build-dataset``.
"""

from hfpl_jax.data.sources import (
    DATASET_NAMES,
    SPLITS,
    build,
    class_names,
    dataset_dir,
    ensure_built,
    is_built,
    num_classes,
    num_examples,
    open_split,
    raw_source,
    resolve_data_dir,
)

__all__ = [
    "DATASET_NAMES",
    "SPLITS",
    "build",
    "class_names",
    "dataset_dir",
    "ensure_built",
    "is_built",
    "num_classes",
    "num_examples",
    "open_split",
    "raw_source",
    "resolve_data_dir",
]
