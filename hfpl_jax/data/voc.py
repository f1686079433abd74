"""PASCAL VOC 2012 (+ SBD "aug") in the standard VOCdevkit layout: split lists, labels, masks.

The manual folder given to ``hfpl-jax build-dataset voc2012_wsss --manual-dir M`` holds::

    M/VOCdevkit/VOC2012/JPEGImages/<name>.jpg
    M/VOCdevkit/VOC2012/SegmentationClass/<name>.png       (official masks, train + val)
    M/VOCdevkit/VOC2012/SegmentationClassAug/<name>.png    (SBD-augmented masks)
    M/VOCdevkit/VOC2012/ImageSets/Segmentation/{train,val}.txt
    M/VOCdevkit/VOC2012/Annotations/<name>.xml             (optional: labels, as the reference)
    M/train_aug.txt                                        (optional: overrides the train_aug list)
    M/cls_labels.npy                                       (optional: overrides the labels)

(``M`` may also be the ``VOC2012`` folder itself.) Splits, as the reference's
``voc12/*.txt`` lists and ``config_voc.sh``:

- ``train_aug``: every name with a SegmentationClassAug mask, minus the val names, sorted
  (10,582 for the full SBD release; the reference's ``voc12/train_aug.txt``); masks from
  SegmentationClassAug.
- ``train`` (1,464) and ``val`` (1,449): ``ImageSets/Segmentation/{train,val}.txt``; masks from the
  official SegmentationClass (what the reference evaluates against).

Labels (20-dim multi-hot, class order :data:`CLASS_NAMES`), first source that exists:
``M/cls_labels.npy`` (a pickled dict name -> float32[20], as the reference's), else the XML
``Annotations`` (every ``<name>`` element that is a VOC class, difficult objects included, part
names ignored: the reference's ``make_cls_labels.py``), else the classes present in the example's
mask.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ElementTree

import numpy as np

from hfpl_jax.data.validation import BadExampleError

__all__ = [
    "CLASS_NAMES",
    "NUM_CLASSES",
    "SPLITS",
    "find_voc_root",
    "image_path",
    "label_source",
    "labels_from_mask",
    "labels_from_xml",
    "load_label_override",
    "mask_path",
    "read_name_list",
    "split_names",
]

CLASS_NAMES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)  # fmt: skip
NUM_CLASSES = len(CLASS_NAMES)
SPLITS = ("train_aug", "train", "val")
_CLASS_INDEX = {name: i for i, name in enumerate(CLASS_NAMES)}


def find_voc_root(manual_dir: str | os.PathLike) -> str:
    """The VOC2012 folder inside ``manual_dir`` (``VOCdevkit/VOC2012``, ``VOC2012`` or itself)."""
    manual_dir = os.fspath(manual_dir)
    for candidate in (
        os.path.join(manual_dir, "VOCdevkit", "VOC2012"),
        os.path.join(manual_dir, "VOC2012"),
        manual_dir,
    ):
        if os.path.isdir(os.path.join(candidate, "JPEGImages")):
            return candidate
    raise FileNotFoundError(
        f"No VOC 2012 folder in manual_dir={manual_dir!r}: expected "
        f"{os.path.join(manual_dir, 'VOCdevkit', 'VOC2012', 'JPEGImages')} (the standard VOCdevkit "
        "layout: JPEGImages, SegmentationClass, SegmentationClassAug, ImageSets/Segmentation)."
    )


def read_name_list(path: str | os.PathLike) -> list[str]:
    """Example names from a split list.

    Accepts bare names (``2007_000032``, VOC's ImageSets) and the reference's lines
    ``/JPEGImages/2007_000032.jpg /SegmentationClassAug/2007_000032.png`` (name = basename of the
    first token without extension). Blank lines are ignored; duplicates raise ValueError.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"split list {os.fspath(path)!r} does not exist")
    names = []
    with open(path) as f:
        for line in f:
            token = line.strip().split(" ")[0] if line.strip() else ""
            if token:
                names.append(os.path.splitext(os.path.basename(token))[0])
    seen: set[str] = set()
    duplicates = [n for n in names if n in seen or seen.add(n)]
    if duplicates:
        raise ValueError(
            f"split list {os.fspath(path)!r} repeats names: {sorted(set(duplicates))[:5]}"
        )
    return names


def split_names(manual_dir: str | os.PathLike, split: str) -> list[str]:
    """The example names of ``split`` in list order (see the module docstring)."""
    if split not in SPLITS:
        raise ValueError(f"voc2012_wsss has splits {SPLITS}, got split={split!r}")
    root = find_voc_root(manual_dir)
    sets_dir = os.path.join(root, "ImageSets", "Segmentation")
    if split in ("train", "val"):
        return read_name_list(os.path.join(sets_dir, f"{split}.txt"))
    override = os.path.join(os.fspath(manual_dir), "train_aug.txt")
    if os.path.isfile(override):
        return read_name_list(override)
    aug_dir = os.path.join(root, "SegmentationClassAug")
    if not os.path.isdir(aug_dir):
        raise FileNotFoundError(
            f"train_aug needs SBD's SegmentationClassAug masks in {aug_dir!r} (or a train_aug.txt "
            f"list in {os.fspath(manual_dir)!r}); neither exists."
        )
    val = set(read_name_list(os.path.join(sets_dir, "val.txt")))
    names = (os.path.splitext(f)[0] for f in os.listdir(aug_dir) if f.endswith(".png"))
    return sorted(n for n in names if n not in val)


def image_path(root: str, name: str) -> str:
    return os.path.join(root, "JPEGImages", name + ".jpg")


def mask_path(root: str, name: str, split: str) -> str:
    folder = "SegmentationClassAug" if split == "train_aug" else "SegmentationClass"
    return os.path.join(root, folder, name + ".png")


def labels_from_xml(path: str) -> np.ndarray:
    """20-dim multi-hot labels from a VOC XML annotation: every ``<name>`` that is a VOC class.

    Like the reference (minidom ``getElementsByTagName('name')``), this looks at every ``name``
    element at any depth; part names (head, hand, foot) are not classes and are ignored.
    """
    if not os.path.isfile(path):
        raise BadExampleError(path, "missing file (XML annotation of a listed image)")
    try:
        tree = ElementTree.parse(path)
    except ElementTree.ParseError as error:
        raise BadExampleError(path, f"malformed XML annotation ({error})") from error
    labels = np.zeros((NUM_CLASSES,), np.float32)
    for element in tree.getroot().iter("name"):
        # Exact text, no strip: the reference compares minidom's raw text to the class names.
        text = element.text or ""
        if text in _CLASS_INDEX:
            labels[_CLASS_INDEX[text]] = 1.0
    return labels


def labels_from_mask(mask: np.ndarray, num_classes: int) -> np.ndarray:
    """Multi-hot labels from a mask: label[v - 1] = 1 for each value v in 1..num_classes."""
    values = np.unique(mask)
    labels = np.zeros((num_classes,), np.float32)
    present = values[(values >= 1) & (values <= num_classes)]
    labels[present.astype(np.int64) - 1] = 1.0
    return labels


def load_label_override(manual_dir: str | os.PathLike, num_classes: int) -> dict | None:
    """``manual_dir/cls_labels.npy`` (pickled dict name -> float[num_classes]) or None if absent."""
    path = os.path.join(os.fspath(manual_dir), "cls_labels.npy")
    if not os.path.isfile(path):
        return None
    try:
        table = np.load(path, allow_pickle=True).item()
    except Exception as error:
        raise ValueError(
            f"{path}: expected np.save of a dict name -> float32[{num_classes}] ({error})"
        ) from error
    if not isinstance(table, dict):
        raise ValueError(
            f"{path}: expected a dict name -> float32[{num_classes}], found {type(table)}"
        )
    return {str(k): np.asarray(v, np.float32) for k, v in table.items()}


def label_source(manual_dir: str | os.PathLike) -> str:
    """Which labels a build uses: "cls_labels.npy", "xml" or "mask" (see the module docstring)."""
    if os.path.isfile(os.path.join(os.fspath(manual_dir), "cls_labels.npy")):
        return "cls_labels.npy"
    if os.path.isdir(os.path.join(find_voc_root(manual_dir), "Annotations")):
        return "xml"
    return "mask"
