"""MS COCO 2014 for WSSS: semantic masks and 80-dim labels from the instance annotations.

The manual folder given to ``hfpl-jax build-dataset coco2014_wsss --manual-dir M`` holds::

    M/annotations/instances_train2014.json
    M/annotations/instances_val2014.json
    M/train2014/COCO_train2014_<12-digit id>.jpg    (or <12-digit id>.jpg, or M/Images/<id>.jpg)
    M/val2014/COCO_val2014_<12-digit id>.jpg
    M/cls_labels.npy                                (optional: overrides the labels)

Masks follow the reference's ``process_coco.py``: category ids, ascending, map to indices 0..79;
a uint8 map starts at 0 and every annotation of the image is painted in the order of the JSON's
``annotations`` list with value index + 1, so later instances overwrite earlier ones.
Polygons are truncated to int32 (``np.array(polygon, dtype=np.int32)``, toward zero) and filled one
by one with ``cv2.fillPoly``; RLE masks (crowd regions; uncompressed ``counts`` lists and compressed
strings) are decoded with pycocotools and painted with the class value too (no void region). Labels
are the reference's ``make_cls_labels.py --dataset coco``: label[v - 1] = 1 for every value v != 0
in the mask. Example names are the image ids zero-padded to 12 digits; images keep the JSON's order.
"""

from __future__ import annotations

import json
import os
import warnings

import numpy as np

from hfpl_jax.data.validation import BadExampleError

__all__ = [
    "CLASS_NAMES",
    "CocoIndex",
    "NUM_CLASSES",
    "SPLITS",
    "annotation_path",
    "example_name",
    "find_image_file",
    "semantic_mask",
]

CLASS_NAMES = (
    "person", "bicycle", "car", "motorbike", "aeroplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "sofa", "pottedplant",
    "bed", "diningtable", "toilet", "tvmonitor", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock",
    "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip
NUM_CLASSES = len(CLASS_NAMES)
SPLITS = ("train2014", "val2014")


def annotation_path(manual_dir: str | os.PathLike, split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"coco2014_wsss has splits {SPLITS}, got split={split!r}")
    return os.path.join(os.fspath(manual_dir), "annotations", f"instances_{split}.json")


class CocoIndex:
    """The parts of an ``instances_*.json`` that the masks need, indexed by image.

    Attributes:
      images: the JSON's ``images`` entries, in file order.
      category_index: category id -> class index 0..79 (ids in ascending order).
      annotations: image id -> its annotations, in the order of the JSON's ``annotations`` list.
    """

    def __init__(self, path: str | os.PathLike):
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"COCO annotation file {path!r} does not exist")
        with open(path) as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}: not valid JSON ({error})") from error
        for key in ("images", "annotations", "categories"):
            if key not in data:
                raise ValueError(f"{path}: missing the {key!r} list of a COCO instances file")
        ids = [int(c["id"]) for c in data["categories"]]
        if len(ids) != NUM_CLASSES or len(set(ids)) != NUM_CLASSES:
            raise ValueError(
                f"{path}: expected the {NUM_CLASSES} COCO categories, found {len(set(ids))} ids"
            )
        if ids != sorted(ids):
            # The reference asserts ascending ids; sorted order defines the class indices.
            raise ValueError(f"{path}: category ids are not in ascending order")
        self.path = path
        self.category_index = {cid: i for i, cid in enumerate(ids)}
        self.images = list(data["images"])
        self.annotations: dict[int, list[dict]] = {int(im["id"]): [] for im in self.images}
        for ann in data["annotations"]:
            self.annotations.setdefault(int(ann["image_id"]), []).append(ann)


def example_name(image_id: int) -> str:
    """The reference's example name: the image id zero-padded to 12 digits."""
    return str(int(image_id)).zfill(12)


def find_image_file(manual_dir: str | os.PathLike, split: str, image: dict) -> str:
    """The image file of a JSON ``images`` entry; the first existing candidate, else the first."""
    manual_dir = os.fspath(manual_dir)
    name = example_name(image["id"])
    candidates = []
    if image.get("file_name"):
        candidates.append(os.path.join(manual_dir, split, image["file_name"]))
    candidates.append(os.path.join(manual_dir, split, name + ".jpg"))
    candidates.append(os.path.join(manual_dir, "Images", name + ".jpg"))
    for candidate in candidates:
        if os.path.isfile(candidate):
            return candidate
    return candidates[0]


def _decode_rle(segmentation: dict, height: int, width: int, where: str) -> np.ndarray:
    from pycocotools import mask as mask_utils

    size = segmentation.get("size")
    if size is None or [int(s) for s in size] != [height, width]:
        raise BadExampleError(
            where, f"RLE size {size} differs from the image size [{height}, {width}] (h, w)"
        )
    counts = segmentation["counts"]
    if isinstance(counts, list):
        # frPyObjects ignores its h, w arguments for dict input and uses segmentation['size'].
        rle = mask_utils.frPyObjects([segmentation], height, width)
    else:
        rle = [segmentation]
    with warnings.catch_warnings():
        # pycocotools < 2.1 trips NumPy 2's copy-keyword deprecation; the result is unaffected.
        warnings.simplefilter("ignore", DeprecationWarning)
        return mask_utils.decode(rle)[:, :, 0]


def semantic_mask(index: CocoIndex, image: dict) -> np.ndarray:
    """The (height, width) uint8 semantic mask of one image (see the module docstring)."""
    import cv2

    height, width = int(image["height"]), int(image["width"])
    mask = np.zeros((height, width), dtype=np.uint8)
    where = f"{index.path} (image id {image['id']})"
    for ann in index.annotations.get(int(image["id"]), []):
        category = int(ann["category_id"])
        if category not in index.category_index:
            raise BadExampleError(
                where,
                f"annotation {ann.get('id')} has category id {category}, not one of the "
                f"{NUM_CLASSES} categories (label value outside the class range)",
            )
        value = index.category_index[category] + 1
        segmentation = ann["segmentation"]
        if isinstance(segmentation, dict):
            decoded = _decode_rle(segmentation, height, width, where)
            mask = (decoded * value + (1 - decoded) * mask).astype(np.uint8)
        else:
            for polygon in segmentation:
                points = np.array(polygon, dtype=np.float64)
                if points.size % 2 or not np.all(np.isfinite(points)):
                    raise BadExampleError(
                        where,
                        f"annotation {ann.get('id')} has a malformed polygon "
                        f"({points.size} coordinates)",
                    )
                # np.array(pol, dtype=np.int32) in the reference: truncation toward zero.
                points = np.trunc(points).astype(np.int32).reshape(1, -1, 2)
                cv2.fillPoly(mask, points, value)
    return mask
