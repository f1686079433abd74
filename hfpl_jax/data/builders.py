"""TFDS builders for ``hfpl_shapes``, ``voc2012_wsss`` and ``coco2014_wsss`` (array_record files).

Every example has the features

- ``image``: (H, W, 3) uint8 RGB. Source JPEGs that are already RGB are stored byte for byte, so
  decoding them with PIL gives exactly the reference's pixels; other images (greyscale, CMYK, ...)
  and generated ones are stored as lossless PNG of their RGB conversion.
- ``mask``: (H, W, 1) uint8 PNG; 0 background, 1..K classes, 255 void. The readers in
  :mod:`hfpl_jax.data.sources` return it as (H, W).
- ``labels``: (K,) float32 multi-hot over the K foreground classes.
- ``name``: the example name (VOC ``2007_000032``, COCO 12-digit id, shapes ``train_000123``).

Examples keep the order of their split list (``disable_shuffling``). Every source file is fully
decoded and checked while building (:mod:`hfpl_jax.data.validation`); a bad one stops the build, or,
with ``skip_bad_examples=True``, is left out and listed in ``builder.bad_examples``. Building needs
no TensorFlow: images are handed to TFDS as encoded bytes.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import itertools
import os
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from tensorflow_datasets.core import utils as tfds_utils

from hfpl_jax.data import coco, shapes, voc
from hfpl_jax.data.validation import (
    BadExampleError,
    BadExampleLog,
    check_labels,
    check_mask,
    decode_image_file,
    decode_mask_file,
    encode_png,
    image_bytes_for_storage,
)


def wsss_features(num_classes: int) -> tfds.features.FeaturesDict:
    """The feature spec shared by the three datasets (see the module docstring)."""
    return tfds.features.FeaturesDict(
        {
            "image": tfds.features.Image(shape=(None, None, 3), dtype=np.uint8),
            "mask": tfds.features.Image(
                shape=(None, None, 1), dtype=np.uint8, encoding_format="png"
            ),
            "labels": tfds.features.Tensor(shape=(num_classes,), dtype=np.float32),
            "name": tfds.features.Text(),
        }
    )


def _ordered_parallel_map(fn: Callable, items: Iterable, num_threads: int) -> Iterator:
    """fn over items in threads, yielding results in input order with a bounded window.

    PIL decoding, PNG encoding and most NumPy work release the GIL, so threads speed builds up
    without the pickling cost of processes. An exception is re-raised when its item's turn comes.
    """
    if num_threads <= 1:
        yield from map(fn, items)
        return
    iterator = iter(items)
    window = 4 * num_threads
    with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:
        pending = [pool.submit(fn, item) for item in itertools.islice(iterator, window)]
        while pending:
            result = pending.pop(0).result()
            for item in itertools.islice(iterator, 1):
                pending.append(pool.submit(fn, item))
            yield result


def _default_threads() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def _stored_example(image: bytes, mask: np.ndarray, labels: np.ndarray, name: str) -> dict:
    """An example as the builders hand it to TFDS: encoded image bytes, the mask as PNG."""
    return {"image": image, "mask": encode_png(mask), "labels": labels, "name": name}


def _override_labels(override: dict, name: str, labels_file: str) -> np.ndarray:
    """``name``'s labels from a ``cls_labels.npy`` override; a name it lacks is a bad example."""
    if name not in override:
        raise BadExampleError(labels_file, f"has no labels for {name!r}")
    return override[name]


class _BuilderMixin:
    """Builder mixin: ``skip_bad_examples``, the log of skipped examples, the code path and the
    ``DatasetInfo`` the three datasets share."""

    def __init__(self, *, skip_bad_examples: bool = False, **kwargs):
        self.skip_bad_examples = bool(skip_bad_examples)
        self.bad_examples = BadExampleLog()
        super().__init__(**kwargs)

    @tfds_utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # TFDS derives this from the package's resources, which for an editable install needs the
        # (undeclared) importlib_resources package; this module's file is the right answer anyway.
        return epath.Path(__file__)

    def _wsss_info(
        self, *, description: str, num_classes: int, class_names, homepage=None, **metadata
    ) -> tfds.core.DatasetInfo:
        """:func:`wsss_features`, split-list order, and ``class_names`` + ``metadata``."""
        return tfds.core.DatasetInfo(
            builder=self,
            description=description,
            features=wsss_features(num_classes),
            disable_shuffling=True,
            homepage=homepage,
            metadata=tfds.core.MetadataDict(class_names=list(class_names), **metadata),
        )

    def _bad_example(self, split: str, name: str, error: BadExampleError) -> None:
        if not self.skip_bad_examples:
            raise BadExampleError(
                error.path,
                f"{error.problem} [split {split!r}, example {name!r}]. The build stopped; fix or "
                "remove the file, or rerun with --skip-bad-examples to leave such examples out.",
            ) from error
        self.bad_examples.add(split, name, error)

    def _yield_checked(self, split: str, jobs: Iterable[tuple[str, Callable[[], dict]]]):
        """Runs each (name, make_example) job, yielding (key, example) or recording bad ones."""

        def run(job):
            name, make = job
            try:
                return name, make(), None
            except BadExampleError as error:
                return name, None, error

        kept = 0
        for key, (name, example, error) in enumerate(
            _ordered_parallel_map(run, jobs, _default_threads())
        ):
            if error is not None:
                self._bad_example(split, name, error)
                continue
            kept += 1
            yield f"{key:09d}", example
        if kept == 0:
            skipped = sum(row["split"] == split for row in self.bad_examples.rows)
            raise ValueError(
                f"split {split!r} has no usable examples ({skipped} bad example(s) skipped); "
                "nothing to build."
            )


# --------------------------------------------------------------------------------------------------
# hfpl_shapes


@dataclasses.dataclass(eq=False)
class HfplShapesConfig(tfds.core.BuilderConfig):
    """A BuilderConfig carrying :class:`hfpl_jax.data.shapes.ShapesParams`."""

    params: shapes.ShapesParams = dataclasses.field(default_factory=shapes.ShapesParams)

    @classmethod
    def from_params(cls, params: shapes.ShapesParams) -> HfplShapesConfig:
        return cls(
            name=params.config_name(),
            version=shapes.GENERATOR_VERSION,
            description=f"hfpl_shapes generated with {params}",
            params=params,
        )


class HfplShapes(_BuilderMixin, tfds.core.GeneratorBasedBuilder):
    """The embedded synthetic dataset (see :mod:`hfpl_jax.data.shapes`); splits train, val."""

    VERSION = tfds.core.Version(shapes.GENERATOR_VERSION)
    RELEASE_NOTES = {
        "1.0.0": "First generator.",
        "1.1.0": "Coarser stripes and checks (legible after 0.7x downscaling).",
    }
    BUILDER_CONFIGS = [HfplShapesConfig.from_params(shapes.ShapesParams())]

    @property
    def params(self) -> shapes.ShapesParams:
        return self.builder_config.params

    def _info(self) -> tfds.core.DatasetInfo:
        return self._wsss_info(
            description=__doc__.splitlines()[0] + " hfpl_shapes: " + shapes.__doc__.splitlines()[0],
            num_classes=shapes.NUM_CLASSES,
            class_names=shapes.CLASS_NAMES,
            params=dataclasses.asdict(self.params),
            label_source="mask",
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        return {split: self._generate_examples(split) for split in shapes.SPLITS}

    def _generate_examples(self, split: str):
        params = self.params

        def make(index: int):
            def example():
                image, mask, labels = shapes.generate_example(params, split, index)
                return _stored_example(encode_png(image), mask, labels, f"{split}_{index:06d}")

            return f"{split}_{index:06d}", example

        yield from self._yield_checked(split, map(make, range(params.num_examples(split))))


# --------------------------------------------------------------------------------------------------
# voc2012_wsss


class Voc2012Wsss(_BuilderMixin, tfds.core.GeneratorBasedBuilder):
    """PASCAL VOC 2012 + SBD for WSSS (:mod:`hfpl_jax.data.voc`); splits train_aug, train, val."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = voc.__doc__

    def _info(self) -> tfds.core.DatasetInfo:
        return self._wsss_info(
            description="PASCAL VOC 2012 with SBD augmented masks, for weakly-supervised "
            "semantic segmentation from image-level labels.",
            num_classes=voc.NUM_CLASSES,
            class_names=voc.CLASS_NAMES,
            homepage="http://host.robots.ox.ac.uk/pascal/VOC/voc2012/",
        )

    def _split_generators(self, dl_manager):
        manual_dir = os.fspath(dl_manager.manual_dir)
        source = voc.label_source(manual_dir)
        self.info.metadata["label_source"] = source
        return {split: self._generate_examples(manual_dir, split, source) for split in voc.SPLITS}

    def _generate_examples(self, manual_dir: str, split: str, source: str):
        root = voc.find_voc_root(manual_dir)
        names = voc.split_names(manual_dir, split)
        override = voc.load_label_override(manual_dir, voc.NUM_CLASSES)

        def make(name: str):
            def example():
                image_file = voc.image_path(root, name)
                data, image = decode_image_file(image_file)
                mask_file = voc.mask_path(root, name, split)
                mask = decode_mask_file(mask_file)
                check_mask(mask, image.size, voc.NUM_CLASSES, mask_file)
                if source == "cls_labels.npy":
                    labels_file = os.path.join(manual_dir, "cls_labels.npy")
                    labels = _override_labels(override, name, labels_file)
                elif source == "xml":
                    labels_file = os.path.join(root, "Annotations", name + ".xml")
                    labels = voc.labels_from_xml(labels_file)
                else:
                    labels_file = mask_file
                    labels = voc.labels_from_mask(mask, voc.NUM_CLASSES)
                check_labels(labels, voc.NUM_CLASSES, labels_file)
                return _stored_example(
                    image_bytes_for_storage(data, image, image_file), mask, labels, name
                )

            return name, example

        yield from self._yield_checked(split, map(make, names))


# --------------------------------------------------------------------------------------------------
# coco2014_wsss


class Coco2014Wsss(_BuilderMixin, tfds.core.GeneratorBasedBuilder):
    """MS COCO 2014 for WSSS (see :mod:`hfpl_jax.data.coco`); splits train2014, val2014."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = coco.__doc__

    def __init__(self, *, allow_unlabeled: bool = False, **kwargs):
        self.allow_unlabeled = bool(allow_unlabeled)
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return self._wsss_info(
            description="MS COCO 2014 semantic masks (80 classes, painted from the instance "
            "annotations) and image-level labels, for weakly-supervised semantic segmentation.",
            num_classes=coco.NUM_CLASSES,
            class_names=coco.CLASS_NAMES,
            homepage="https://cocodataset.org",
        )

    def _split_generators(self, dl_manager):
        manual_dir = os.fspath(dl_manager.manual_dir)
        override_path = os.path.join(manual_dir, "cls_labels.npy")
        self.info.metadata["label_source"] = (
            "cls_labels.npy" if os.path.isfile(override_path) else "mask"
        )
        self.info.metadata["allow_unlabeled"] = self.allow_unlabeled
        # Parse every annotation file before writing anything: a broken JSON fails fast.
        indices = {
            split: coco.CocoIndex(coco.annotation_path(manual_dir, split)) for split in coco.SPLITS
        }
        return {
            split: self._generate_examples(manual_dir, split, indices[split])
            for split in coco.SPLITS
        }

    def _generate_examples(self, manual_dir: str, split: str, index: coco.CocoIndex):
        override = voc.load_label_override(manual_dir, coco.NUM_CLASSES)

        def make(image_entry: dict):
            name = coco.example_name(image_entry["id"])

            def example():
                image_file = coco.find_image_file(manual_dir, split, image_entry)
                data, image = decode_image_file(image_file)
                expected = (int(image_entry["width"]), int(image_entry["height"]))
                if image.size != expected:
                    raise BadExampleError(
                        image_file,
                        f"image size {image.size[0]}x{image.size[1]} differs from the "
                        f"annotation's {expected[0]}x{expected[1]} (width x height), so its mask "
                        "would not match",
                    )
                mask = coco.semantic_mask(index, image_entry)
                if override is not None:
                    labels_file = os.path.join(manual_dir, "cls_labels.npy")
                    labels = _override_labels(override, name, labels_file)
                else:
                    labels_file = image_file
                    labels = voc.labels_from_mask(mask, coco.NUM_CLASSES)
                check_labels(
                    labels, coco.NUM_CLASSES, labels_file, allow_empty=self.allow_unlabeled
                )
                return _stored_example(
                    image_bytes_for_storage(data, image, image_file), mask, labels, name
                )

            return name, example

        yield from self._yield_checked(split, map(make, index.images))


BUILDERS = {"hfpl_shapes": HfplShapes, "voc2012_wsss": Voc2012Wsss, "coco2014_wsss": Coco2014Wsss}
