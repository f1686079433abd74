"""Make the golden fixture of the data area by running the official code's transforms.

Command that produced the committed fixture (Pillow 13.0, OpenCV 5.0, pycocotools 2.0.11, torch
2.13.0 CPU; scikit-image 0.26 from a side venv because it is not a project dependency):

    .venv/bin/python scripts/make_golden_data.py --reference /work/ref/hfpl \
        --extra-site-packages /tmp/skvenv/lib/python3.11/site-packages \
        --out tests/testdata/data_golden.npz

The reference's own random draws (``random.randint``, ``random.randrange``, ``random.random``,
``random.getrandbits``) are replaced by fixed values, which the fixture stores, so a test can feed
the same parameters to ``hfpl_jax.data.transforms``. torchvision is not installable beside torch
2.13 here; the reference only imports it for ``Compose`` and ``ColorJitter``, so a stub stands in
and colour jitter is left out of the golden cases (it is tested against a NumPy model of PIL
instead). The reference code is imported from ``--reference`` (small shims: ``np.bool``,
``PIL.Image.CUBIC``, the vendored pycocotools path) and never copied.

Cases (keys in the .npz, prefixed by case):
  resize_*     ``tool/imutils.RandomResizeLong(t, t)`` on small images.
  crop_*       ``tool/imutils.RandomCrop`` on a normalised float32 array (pad, crop).
  norm_*       ``network/resnet38d.Normalize`` on uint8 and on float32 input.
  msf_*        ``voc12/data.VOC12ClsDatasetMSF`` (+ the inference transform) on a JPEG.
  aff_*        ``voc12/data.VOC12AffDataset`` with train_aff_voc's transforms minus ColorJitter.
  afflab_*     ``ExtractAffinityLabelInRadius(56, 5)`` on a random 56x56 label map.
  seg_*        ``lib/datasets/transform`` RandomHSV, RandomFlip, RandomScale, ImageNorm, RandomCrop.
  segmsf_*     ``ImageNorm`` + ``Multiscale`` (final-model evaluation inputs).
  xml_*        ``voc12/data.load_image_label_from_xml``.
  coco_*       ``process_coco.overlay_poly`` over polygon and RLE annotations, then
               ``coco/data.load_image_label_from_ann``.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import random
import sys
import tempfile
import types

import numpy as np
from PIL import Image


class _Fixed:
    """Replaces a ``random`` function by one returning fixed values in order."""

    def __init__(self, module, name, values):
        self.module, self.name, self.values = module, name, list(values)
        self.original = getattr(module, name)

    def __enter__(self):
        values = self.values

        def fixed(*args, **kwargs):
            if not values:
                raise RuntimeError(f"random.{self.name} called more often than expected")
            return values.pop(0)

        setattr(self.module, self.name, fixed)
        return self

    def __exit__(self, *exc):
        setattr(self.module, self.name, self.original)
        if self.values and exc[0] is None:
            raise RuntimeError(f"random.{self.name} left values unused: {self.values}")


def _shim(reference: str) -> None:
    if not hasattr(np, "bool"):
        np.bool = bool
    if not hasattr(Image, "CUBIC"):
        Image.CUBIC = Image.BICUBIC
    torchvision = types.ModuleType("torchvision")
    transforms = types.ModuleType("torchvision.transforms")

    class Compose:
        def __init__(self, fns):
            self.fns = fns

        def __call__(self, x):
            for fn in self.fns:
                x = fn(x)
            return x

    def color_jitter(*args, **kwargs):
        raise RuntimeError("torchvision ColorJitter is not available")

    transforms.Compose = Compose
    transforms.ColorJitter = color_jitter
    torchvision.transforms = transforms
    sys.modules["torchvision"] = torchvision
    sys.modules["torchvision.transforms"] = transforms
    import pycocotools
    import pycocotools.coco
    import pycocotools.mask

    for name in ("coco.cocoapi", "coco.cocoapi.linux", "coco.cocoapi.linux.PythonAPI"):
        sys.modules.setdefault(name, types.ModuleType(name))
    prefix = "coco.cocoapi.linux.PythonAPI.pycocotools"
    sys.modules[prefix] = pycocotools
    sys.modules[prefix + ".coco"] = pycocotools.coco
    sys.modules[prefix + ".mask"] = pycocotools.mask
    sys.path.insert(0, reference)


def _load_file(path: str, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _jpeg_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _smooth_image(rng, height, width):
    """A textured test image: smooth colour ramps plus noise (so resampling has work to do)."""
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (width + height)], -1)
    return np.clip(base + rng.normal(0, 25, (height, width, 3)), 0, 255).astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", required=True, help="checkout of arvijj/hfpl")
    parser.add_argument("--out", default="tests/testdata/data_golden.npz")
    parser.add_argument(
        "--extra-site-packages", help="appended to sys.path (scikit-image for imutils.AvgPool2d)"
    )
    args = parser.parse_args()
    reference = os.path.abspath(args.reference)
    if args.extra_site_packages:
        sys.path.append(args.extra_site_packages)
    _shim(reference)
    cwd = os.getcwd()
    out_path = os.path.abspath(args.out)
    os.chdir(reference)  # voc12/data.py reads voc12/cls_labels.npy relative to the working dir

    import torch  # noqa: F401  (the reference modules import it)

    imutils = _load_file(os.path.join(reference, "tool", "imutils.py"), "ref_imutils")
    sys.modules["tool.imutils"] = imutils
    resnet38d = _load_file(os.path.join(reference, "network", "resnet38d.py"), "ref_resnet38d")
    voc_data = _load_file(os.path.join(reference, "voc12", "data.py"), "ref_voc_data")
    coco_data = _load_file(os.path.join(reference, "coco", "data.py"), "ref_coco_data")
    lib_transform = _load_file(
        os.path.join(reference, "lib", "datasets", "transform.py"), "ref_lib_transform"
    )
    process_coco = _load_file(os.path.join(reference, "process_coco.py"), "ref_process_coco")
    imutils.random = random
    rng = np.random.default_rng(2024)
    out: dict[str, np.ndarray] = {}

    # ---- RandomResizeLong
    for case, (height, width, target) in enumerate([(45, 61, 96), (61, 45, 56), (40, 40, 33)]):
        image = _smooth_image(rng, height, width)
        resized = imutils.RandomResizeLong(target, target)(Image.fromarray(image))
        out[f"resize_{case}_input"] = image
        out[f"resize_{case}_target"] = np.array(target)
        out[f"resize_{case}_output"] = np.asarray(resized)

    # ---- RandomCrop (CAM training: float32 after normalisation, zero padding)
    normalize = resnet38d.Normalize()
    array = normalize(_smooth_image(rng, 45, 61))
    with _Fixed(random, "randrange", [7, 3]):  # w: img_left = 7 of 12; h: cont_top = 3 of 6
        cropped = imutils.RandomCrop(50)(array)
    out["crop_input"] = array
    out["crop_output"] = cropped
    out["crop_params"] = np.array([50, 3, 0, 0, 7])  # crop, cont_top, img_top, cont_left, img_left

    # ---- Normalize on uint8 and float32 input
    levels = np.arange(256, dtype=np.uint8)
    grid = np.stack([levels, levels[::-1], np.roll(levels, 85)], -1).reshape(16, 16, 3)
    out["norm_uint8_input"] = grid
    out["norm_uint8_output"] = normalize(grid)
    float_input = grid.astype(np.float32) + rng.uniform(0, 1, grid.shape).astype(np.float32)
    out["norm_float32_input"] = float_input
    out["norm_float32_output"] = normalize(float_input)

    with tempfile.TemporaryDirectory() as tmp:
        # ---- VOC12ClsDatasetMSF on a JPEG (name from the reference's cls_labels.npy)
        name = "2007_000032"
        voc_root = os.path.join(tmp, "VOC2012")
        os.makedirs(os.path.join(voc_root, "JPEGImages"))
        jpeg = _jpeg_bytes(_smooth_image(rng, 37, 50))
        with open(os.path.join(voc_root, "JPEGImages", name + ".jpg"), "wb") as f:
            f.write(jpeg)
        list_path = os.path.join(tmp, "list.txt")
        with open(list_path, "w") as f:
            f.write(f"/JPEGImages/{name}.jpg /SegmentationClassAug/{name}.png\n")
        msf = voc_data.VOC12ClsDatasetMSF(
            list_path,
            voc12_root=voc_root,
            scales=[0.5, 1.0, 1.5, 2.0],
            inter_transform=sys.modules["torchvision.transforms"].Compose(
                [np.asarray, normalize, imutils.HWC_to_CHW]
            ),
        )
        _, msf_list, _ = msf[0]
        out["msf_jpeg"] = np.frombuffer(jpeg, np.uint8)
        for i, item in enumerate(msf_list):
            hwc = np.transpose(np.asarray(item), (1, 2, 0))  # CHW -> HWC
            if i % 2:  # a flip: store only whether it is the W-flip of the previous input
                out[f"msf_{i}_is_flip"] = np.array(
                    np.array_equal(hwc, out[f"msf_{i - 1}"][:, ::-1])
                )
            else:
                out[f"msf_{i}"] = hwc

        # ---- VOC12AffDataset: crop 96 (12x12 label grid), radius 5, no colour jitter
        aff_name = "2007_000039"
        aff_image = _smooth_image(rng, 90, 120)
        aff_jpeg = _jpeg_bytes(aff_image)
        with open(os.path.join(voc_root, "JPEGImages", aff_name + ".jpg"), "wb") as f:
            f.write(aff_jpeg)
        with open(list_path, "w") as f:
            f.write(f"/JPEGImages/{aff_name}.jpg /SegmentationClassAug/{aff_name}.png\n")
        la_dir, ha_dir = os.path.join(tmp, "la"), os.path.join(tmp, "ha")
        os.makedirs(la_dir)
        os.makedirs(ha_dir)
        keys = [0, 3, 15]
        # Blocky scores so that pooled 8x8 means give clear winners, plus a weak-score region.
        coarse = rng.uniform(0, 1, (2, len(keys), 12, 15)).astype(np.float32)
        coarse[:, :, 8:, :4] = 0  # no score at all there -> ignore
        la = np.repeat(np.repeat(coarse[0], 8, 1), 8, 2)[:, :90, :120]
        ha = np.repeat(np.repeat(coarse[1], 8, 1), 8, 2)[:, :90, :120]
        np.save(os.path.join(la_dir, aff_name + ".npy"), {k: la[i] for i, k in enumerate(keys)})
        np.save(os.path.join(ha_dir, aff_name + ".npy"), {k: ha[i] for i, k in enumerate(keys)})
        aff = voc_data.VOC12AffDataset(
            list_path,
            label_la_dir=la_dir,
            label_ha_dir=ha_dir,
            cropsize=96,
            voc12_root=voc_root,
            radius=5,
            joint_transform_list=[
                None,
                None,
                imutils.RandomCrop(96),
                imutils.RandomHorizontalFlip(),
            ],
            img_transform_list=[None, np.asarray, normalize, imutils.HWC_to_CHW],
            label_transform_list=[None, None, None, imutils.AvgPool2d(8)],
        )
        # w: 120 - 96 = 24 -> img_left = 13; h: 90 < 96 -> cont_top = 4; then flip (bit 1).
        with _Fixed(random, "randrange", [13, 4]), _Fixed(random, "getrandbits", [1]):
            aff_img, (bg_pos, fg_pos, neg) = aff[0]
        out["aff_jpeg"] = np.frombuffer(aff_jpeg, np.uint8)
        out["aff_coarse"] = coarse  # la/ha = 8x nearest upsampling of these, cut to 90 x 120
        out["aff_keys"] = np.array(keys)
        out["aff_crop_params"] = np.array([96, 4, 0, 0, 13])
        out["aff_image"] = np.transpose(np.asarray(aff_img), (1, 2, 0))
        # 0/1 float32 pair labels, stored as uint8 (the test compares after casting back).
        out["aff_bg_pos"] = bg_pos.numpy().astype(np.uint8)
        out["aff_fg_pos"] = fg_pos.numpy().astype(np.uint8)
        out["aff_neg"] = neg.numpy().astype(np.uint8)

        # ---- ExtractAffinityLabelInRadius at the standard 56x56 grid
        label = rng.choice(
            np.array([0, 1, 3, 255], np.uint8), size=(56, 56), p=[0.4, 0.3, 0.2, 0.1]
        )
        label[10:30, 10:30] = 1
        extract = voc_data.ExtractAffinityLabelInRadius(cropsize=56, radius=5)
        for key, value in zip(("bg_pos", "fg_pos", "neg"), extract(label), strict=True):
            out[f"afflab_{key}"] = value.numpy().astype(np.uint8)
        out["afflab_label"] = label

        # ---- lib/datasets/transform (final stage 'weak' augmentation)
        seg_image = _smooth_image(rng, 33, 71)
        seg_label = rng.choice(np.array([0, 2, 7, 255], np.uint8), size=(33, 71))
        seg_label[5:30, 20:60] = 7
        sample = {"image": seg_image.copy(), "segmentation": seg_label.copy()}
        with _Fixed(random, "randint", [7, -4, 9]):
            sample = lib_transform.RandomHSV(10, 10, 10)(sample)
        with _Fixed(random, "random", [0.2]):
            sample = lib_transform.RandomFlip(0.5)(sample)
        with _Fixed(random, "random", [0.37]):
            sample = lib_transform.RandomScale([0.5, 1.5])(sample)
        scaled_hw = sample["image"].shape[:2]
        sample = lib_transform.ImageNorm((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))(sample)
        # scaled 29 x 62 (h x w): w 62 > 56 -> img_left = 5; h 29 < 56 -> cont_top = 8
        with _Fixed(random, "randrange", [5, 8]):
            sample = lib_transform.RandomCrop(56)(sample)
        out["seg_image_input"] = seg_image
        out["seg_label_input"] = seg_label
        out["seg_hsv"] = np.array([7, -4, 9])
        out["seg_scale_u"] = np.array(0.37)
        out["seg_scaled_hw"] = np.array(scaled_hw)
        out["seg_crop_params"] = np.array([56, 8, 0, 0, 5])
        out["seg_image"] = sample["image"]
        out["seg_label"] = sample["segmentation"]

        # ---- ImageNorm + Multiscale (final evaluation inputs)
        rates = [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
        sample = {"image": seg_image[:, :40].copy()}
        sample = lib_transform.ImageNorm((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))(sample)
        sample = lib_transform.Multiscale(rates)(sample)
        for i, rate in enumerate(rates):
            out[f"segmsf_{i}"] = sample[f"image_{rate:f}"]

        # ---- VOC XML labels
        xml = (
            "<annotation><filename>x.jpg</filename>"
            "<object><name>dog</name><difficult>0</difficult></object>"
            "<object><name>person</name><part><name>head</name></part>"
            "<part><name>hand</name></part></object>"
            "<object><name>chair</name><difficult>1</difficult></object>"
            "<object><name>unicorn</name></object></annotation>"
        )
        os.makedirs(os.path.join(voc_root, "Annotations"))
        with open(os.path.join(voc_root, "Annotations", "x.xml"), "w") as f:
            f.write(xml)
        out["xml_text"] = np.array(xml)
        out["xml_labels"] = voc_data.load_image_label_from_xml("x", voc_root)

        # ---- COCO masks (process_coco.overlay_poly) and labels (coco/data)
        from pycocotools import mask as mask_utils

        height, width = 40, 52
        crowd = np.zeros((height, width), np.uint8)
        crowd[5:30, 30:50] = 1
        crowd[12:18, 35:40] = 0
        compressed = mask_utils.encode(np.asfortranarray(crowd))
        compressed["counts"] = compressed["counts"].decode("ascii")
        small = np.zeros((height, width), np.uint8)
        small[20:38, 2:12] = 1
        flat = small.flatten(order="F")
        runs, current, count = [], 0, 0
        for value in flat:
            if value == current:
                count += 1
            else:
                runs.append(count)
                current, count = value, 1
        runs.append(count)
        anns = [
            {"id": 1, "image_id": 7, "category_id": 18, "iscrowd": 0,
             "segmentation": [[3.7, 2.2, 25.9, 4.1, 20.5, 21.8, 1.2, 15.5]]},
            {"id": 2, "image_id": 7, "category_id": 1, "iscrowd": 0,
             "segmentation": [[10.5, 10.5, 40.2, 12.7, 35.9, 30.1],
                              [-1.5, 30.2, 6.6, 28.8, 5.2, 39.9]]},
            {"id": 3, "image_id": 7, "category_id": 90, "iscrowd": 1, "segmentation": compressed},
            {"id": 4, "image_id": 7, "category_id": 44, "iscrowd": 1,
             "segmentation": {"size": [height, width], "counts": runs}},
            {"id": 5, "image_id": 7, "category_id": 3, "iscrowd": 0,
             "segmentation": [[44.0, 0.0, 51.9, 0.0, 51.9, 8.7, 44.0, 8.7],
                              [47.3, 35.5, 50.0, 39.0]]},
        ]  # fmt: skip
        coco_ids = [
            1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25,
            27, 28, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51,
            52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77,
            78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90,
        ]  # fmt: skip
        id_map = {cid: i for i, cid in enumerate(coco_ids)}
        painted = np.zeros((height, width), dtype=np.uint8)
        for ann in anns:
            painted = process_coco.overlay_poly(painted, ann, id_map[ann["category_id"]] + 1)
        coco_root = os.path.join(tmp, "coco")
        os.makedirs(os.path.join(coco_root, "SegmentationClass"))
        import cv2

        cv2.imwrite(os.path.join(coco_root, "SegmentationClass", "000000000007.png"), painted)
        out["coco_json"] = np.array(
            json.dumps(
                {
                    "images": [{"id": 7, "height": height, "width": width, "file_name": "x.jpg"}],
                    "annotations": anns,
                    "categories": [{"id": c, "name": f"c{c}"} for c in coco_ids],
                }
            )
        )
        out["coco_mask"] = np.asarray(painted, np.uint8)
        out["coco_labels"] = coco_data.load_image_label_from_ann("000000000007", coco_root)

    os.chdir(cwd)
    np.savez_compressed(out_path, **out)
    print(f"wrote {out_path}: {len(out)} arrays, {os.path.getsize(out_path)} bytes")


if __name__ == "__main__":
    main()
