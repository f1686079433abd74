"""Tiny VOC- and COCO-layout folders for tests, benchmarks and smoke runs (no download).

The images are drawn by the ``hfpl_shapes`` generator at the requested size and saved as JPEG, so
the folders look like the real layouts down to palette PNGs, SBD greyscale masks, XML annotations
and COCO polygons/RLE, and can be built with ``hfpl-jax build-dataset`` like the real thing.
"""

from __future__ import annotations

import json
import os

import numpy as np
from PIL import Image

from hfpl_jax.data import coco, shapes, voc

__all__ = [
    "COCO_CATEGORY_IDS",
    "cam_train_input_config",
    "synthetic_image_and_mask",
    "write_fake_coco",
    "write_fake_voc",
    "write_voc_xml",
]

# COCO's 80 category ids (1..90 with gaps), ascending.
COCO_CATEGORY_IDS = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28,
    31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55,
    56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84,
    85, 86, 87, 88, 89, 90,
)  # fmt: skip


def _voc_palette() -> list[int]:
    """The standard VOC colour map (bit-interleaved), 256 RGB entries."""
    palette = []
    for index in range(256):
        r = g = b = 0
        c = index
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette += [r, g, b]
    return palette


def synthetic_image_and_mask(index: int, size: tuple[int, int], num_classes: int, seed: int = 0):
    """An RGB image (H, W, 3) uint8 and a mask (H, W) uint8 with values in 0..num_classes.

    Drawn by the shapes generator at long side max(size), then resized to ``size`` = (width,
    height); the six shape classes are spread over ``num_classes`` by (index + class) mod K.
    """
    width, height = size
    params = shapes.ShapesParams(
        image_size=max(width, height), min_aspect=0.3, num_train=index + 1, num_val=1, seed=seed
    )
    image, mask, _ = shapes.generate_example(params, "train", index)
    image = np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))
    mask = np.asarray(Image.fromarray(mask).resize((width, height), Image.NEAREST))
    remapped = np.where(mask > 0, (mask.astype(np.int64) + 3 * index) % num_classes + 1, 0)
    return image, remapped.astype(np.uint8)


def write_fake_voc(
    root: str | os.PathLike,
    *,
    num_train_aug: int = 6,
    num_train: int = 3,
    num_val: int = 3,
    image_size: tuple[int, int] = (60, 45),
    annotations: bool = True,
    seed: int = 0,
) -> dict[str, list[str]]:
    """Writes ``root/VOCdevkit/VOC2012`` in the standard layout.

    ``train`` names are the first ``num_train`` of the ``num_train_aug`` train_aug names, ``val``
    names are extra; every name gets a JPEG, an SBD-style greyscale SegmentationClassAug PNG and
    (train and val) a palette SegmentationClass PNG, plus an XML annotation when ``annotations``.
    The official mask of a name differs from its SBD mask (one void row), so a test can tell which
    one a build used. Returns {"train_aug": [...], "train": [...], "val": [...]}.
    """
    base = os.path.join(os.fspath(root), "VOCdevkit", "VOC2012")
    folders = ("JPEGImages", "SegmentationClass", "SegmentationClassAug", "ImageSets/Segmentation")
    for folder in folders + (("Annotations",) if annotations else ()):
        os.makedirs(os.path.join(base, folder), exist_ok=True)
    train_aug = [f"2008_{i:06d}" for i in range(num_train_aug)]
    val = [f"2009_{i:06d}" for i in range(num_val)]
    splits = {"train_aug": train_aug, "train": train_aug[:num_train], "val": val}
    official = set(splits["train"]) | set(val)
    palette = _voc_palette()
    for index, name in enumerate(train_aug + val):
        width, height = image_size
        if index % 2:
            width, height = height, width
        image, mask = synthetic_image_and_mask(index, (width, height), voc.NUM_CLASSES, seed)
        Image.fromarray(image).save(os.path.join(base, "JPEGImages", name + ".jpg"), quality=92)
        Image.fromarray(mask, "L").save(os.path.join(base, "SegmentationClassAug", name + ".png"))
        if name in official:
            official_mask = mask.copy()
            official_mask[0, :] = 255
            png = Image.fromarray(official_mask, "P")
            png.putpalette(palette)
            png.save(os.path.join(base, "SegmentationClass", name + ".png"))
        if annotations:
            write_voc_xml(
                os.path.join(base, "Annotations", name + ".xml"),
                [voc.CLASS_NAMES[v - 1] for v in np.unique(mask) if 0 < v <= voc.NUM_CLASSES],
            )
    sets = os.path.join(base, "ImageSets", "Segmentation")
    for split in ("train", "val"):
        with open(os.path.join(sets, f"{split}.txt"), "w") as f:
            f.write("".join(n + "\n" for n in splits[split]))
    return splits


def write_voc_xml(path: str, object_names: list[str]) -> None:
    """A minimal VOC annotation with one <object> per name (a 'person' also gets a head part)."""
    objects = []
    for name in object_names:
        part = "<part><name>head</name></part>" if name == "person" else ""
        objects.append(f"<object><name>{name}</name><difficult>0</difficult>{part}</object>")
    with open(path, "w") as f:
        f.write(f"<annotation><folder>VOC2012</folder>{''.join(objects)}</annotation>\n")


def _polygons_from_mask(mask: np.ndarray) -> list[list[float]]:
    """One box polygon per connected row-run block: crude, but a valid COCO polygon list."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return []
    top, bottom, left, right = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    return [[float(left), float(top), float(right), float(top), float(right), float(bottom),
             float(left), float(bottom)]]  # fmt: skip


def _uncompressed_rle_counts(mask: np.ndarray) -> list[int]:
    """COCO uncompressed RLE: run lengths of the column-major mask, starting with a run of 0s."""
    flat = mask.flatten(order="F").astype(np.int8)
    changes = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], changes, [flat.size]])).tolist()
    return ([0] if flat[0] else []) + [int(r) for r in runs]


def write_fake_coco(
    root: str | os.PathLike,
    *,
    num_train: int = 5,
    num_val: int = 3,
    image_size: tuple[int, int] = (64, 48),
    seed: int = 0,
) -> dict[str, list[dict]]:
    """Writes ``root/annotations/instances_{train,val}2014.json`` and the 2014-named JPEGs.

    Each image gets one annotation per class present in its synthetic mask: a box polygon with
    fractional coordinates, except that every third image's first instance is a crowd RLE
    (uncompressed counts) and every fourth's a compressed RLE. Returns the JSON ``images`` lists.
    """
    from pycocotools import mask as mask_utils

    root = os.fspath(root)
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    categories = [{"id": c, "name": coco.CLASS_NAMES[i]} for i, c in enumerate(COCO_CATEGORY_IDS)]
    result = {}
    next_id = 1
    for split, count, offset in (("train2014", num_train, 0), ("val2014", num_val, 1000)):
        os.makedirs(os.path.join(root, split), exist_ok=True)
        images, annotations = [], []
        for index in range(count):
            image_id = offset + 2 * index + 9
            width, height = image_size
            image, mask = synthetic_image_and_mask(offset + index, (width, height), 80, seed)
            file_name = f"COCO_{split}_{image_id:012d}.jpg"
            Image.fromarray(image).save(os.path.join(root, split, file_name), quality=92)
            images.append(
                {"id": image_id, "file_name": file_name, "height": height, "width": width}
            )
            for k, value in enumerate(v for v in np.unique(mask) if v > 0):
                instance = mask == value
                entry = {
                    "id": next_id,
                    "image_id": image_id,
                    "category_id": COCO_CATEGORY_IDS[int(value) - 1],
                    "iscrowd": 0,
                    "area": float(instance.sum()),
                }
                next_id += 1
                if k == 0 and index % 3 == 2:
                    counts = _uncompressed_rle_counts(instance)
                    entry.update(
                        iscrowd=1, segmentation={"size": [height, width], "counts": counts}
                    )
                elif k == 0 and index % 4 == 3:
                    rle = mask_utils.encode(np.asfortranarray(instance.astype(np.uint8)))
                    rle["counts"] = rle["counts"].decode("ascii")
                    entry.update(iscrowd=1, segmentation=rle)
                else:
                    polygon = _polygons_from_mask(instance)
                    entry["segmentation"] = [[c + 0.4 for c in p] for p in polygon]
                annotations.append(entry)
        with open(os.path.join(root, "annotations", f"instances_{split}.json"), "w") as f:
            json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
        result[split] = images
    return result


def cam_train_input_config(dataset: str, data_dir: str, split: str, **overrides) -> dict:
    """A plain-dict ``input_config`` for ``input_pipeline.make_cam_train_iterator`` on a built
    ``dataset``: the reference's CAM-training augmentation (``train_cam_voc.py``'s defaults: global
    batch 8, crop 448, resize-long (448, 768), flip, colour jitter (0.3, 0.3, 0.3, 0.1),
    shuffled), then ``overrides`` (smaller sizes, ``worker_count``, ``builder_kwargs``, ...).

    A dict rather than a ConfigDict, so that a test can ``repr`` it into a subprocess script.
    """
    config = dict(
        dataset=dataset,
        data_dir=data_dir,
        split=split,
        global_batch_size=8,
        crop_size=448,
        resize_long=(448, 768),
        hflip=True,
        color_jitter=(0.3, 0.3, 0.3, 0.1),
        shuffle=True,
    )
    config.update(overrides)
    return config
