"""voc2012_wsss and coco2014_wsss builders on tiny generated folders, including bad files."""

import io
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from hfpl_jax import data
from hfpl_jax.data import coco, fake_data, voc
from hfpl_jax.data.cli import main as build_dataset_main
from hfpl_jax.data.validation import BadExampleError, check_labels, check_mask, decode_image_file


def _voc_root(manual):
    return os.path.join(manual, "VOCdevkit", "VOC2012")


@pytest.fixture(scope="module")
def voc_manual(tmp_path_factory):
    manual = str(tmp_path_factory.mktemp("voc_manual"))
    splits = fake_data.write_fake_voc(manual, num_train_aug=6, num_train=3, num_val=3)
    # A greyscale JPEG is legal: the build stores its RGB conversion.
    name = splits["train_aug"][4]
    path = os.path.join(_voc_root(manual), "JPEGImages", name + ".jpg")
    Image.open(path).convert("L").save(path)
    return manual, splits


@pytest.fixture(scope="module")
def voc_built(voc_manual, tmp_path_factory):
    manual, splits = voc_manual
    data_dir = str(tmp_path_factory.mktemp("voc_tfds"))
    data.build("voc2012_wsss", data_dir, manual_dir=manual)
    return data_dir, manual, splits


def test_voc_splits_masks_and_labels(voc_built):
    data_dir, manual, splits = voc_built
    root = _voc_root(manual)
    assert data.num_classes("voc2012_wsss", data_dir) == 20
    for split in ("train_aug", "train", "val"):
        source = data.open_split("voc2012_wsss", data_dir, split)
        assert [source[i]["name"] for i in range(len(source))] == splits[split]
        for i in range(len(source)):
            example = source[i]
            name = example["name"]
            image = np.asarray(
                Image.open(os.path.join(root, "JPEGImages", name + ".jpg")).convert("RGB")
            )
            np.testing.assert_array_equal(example["image"], image)  # same decoder, same pixels
            folder = "SegmentationClassAug" if split == "train_aug" else "SegmentationClass"
            mask = np.array(Image.open(os.path.join(root, folder, name + ".png")))
            np.testing.assert_array_equal(example["mask"], mask)
            expected = voc.labels_from_xml(os.path.join(root, "Annotations", name + ".xml"))
            np.testing.assert_array_equal(example["labels"], expected)
    # The official masks carry the void row the SBD ones lack: train and val used SegmentationClass.
    assert (data.open_split("voc2012_wsss", data_dir, "val")[0]["mask"][0] == 255).all()
    assert not (data.open_split("voc2012_wsss", data_dir, "train_aug")[0]["mask"][0] == 255).all()


def test_voc_rgb_jpegs_are_stored_byte_for_byte(voc_built):
    data_dir, manual, splits = voc_built
    raw = data.raw_source("voc2012_wsss", data_dir, "train_aug")
    name = splits["train_aug"][0]
    with open(os.path.join(_voc_root(manual), "JPEGImages", name + ".jpg"), "rb") as f:
        assert raw[0]["image"] == f.read()
    grey = raw[4]["image"]  # the greyscale JPEG became a lossless RGB PNG
    assert grey[:8] == b"\x89PNG\r\n\x1a\n"
    assert Image.open(io.BytesIO(grey)).mode == "RGB"


def test_voc_label_sources_and_overrides(voc_manual, tmp_path):
    manual, splits = voc_manual
    # Without Annotations: labels from the mask; with cls_labels.npy: from the file.
    copy = str(tmp_path / "manual")
    shutil.copytree(manual, copy)
    shutil.rmtree(os.path.join(_voc_root(copy), "Annotations"))
    assert voc.label_source(copy) == "mask"
    with open(os.path.join(copy, "train_aug.txt"), "w") as f:  # reference-format override list
        for name in splits["train_aug"][3:5]:
            f.write(f"/JPEGImages/{name}.jpg /SegmentationClassAug/{name}.png\n")
    assert voc.split_names(copy, "train_aug") == splits["train_aug"][3:5]
    override = {n: np.eye(20, dtype=np.float32)[7] for n in splits["train_aug"] + splits["val"]}
    np.save(os.path.join(copy, "cls_labels.npy"), override)
    assert voc.label_source(copy) == "cls_labels.npy"
    data_dir = str(tmp_path / "tfds")
    builder = data.build("voc2012_wsss", data_dir, manual_dir=copy)
    assert builder.info.metadata["label_source"] == "cls_labels.npy"
    with open(os.path.join(data.dataset_dir("voc2012_wsss", data_dir), "metadata.json")) as f:
        assert json.load(f)["label_source"] == "cls_labels.npy"
    source = data.open_split("voc2012_wsss", data_dir, "train_aug")
    assert len(source) == 2 and source[1]["labels"].argmax() == 7
    os.remove(os.path.join(copy, "cls_labels.npy"))
    labels = voc.labels_from_mask(np.array([[0, 3, 255], [21, 3, 20]], np.uint8), 20)
    np.testing.assert_array_equal(np.flatnonzero(labels), [2, 19])


def test_voc_missing_folders_explain(tmp_path):
    with pytest.raises(FileNotFoundError, match="VOCdevkit"):
        voc.find_voc_root(tmp_path)
    fake_data.write_fake_voc(tmp_path, num_train_aug=2, num_train=1, num_val=1)
    shutil.rmtree(os.path.join(_voc_root(tmp_path), "SegmentationClassAug"))
    with pytest.raises(FileNotFoundError, match="SegmentationClassAug"):
        voc.split_names(tmp_path, "train_aug")


# --------------------------------------------------------------------------------------------------
# Bad data


def _break_voc(manual, splits):
    """Six bad examples, one per kind of problem; returns {name: expected problem text}."""
    root = _voc_root(manual)
    aug = splits["train_aug"][2:]  # the first two are the official train split: keep it non-empty
    jpeg = os.path.join(root, "JPEGImages", aug[0] + ".jpg")
    with open(jpeg, "rb") as f:
        content = f.read()
    with open(jpeg, "wb") as f:
        f.write(content[: len(content) // 2])  # truncated
    with open(os.path.join(root, "JPEGImages", aug[1] + ".jpg"), "wb") as f:
        f.write(b"definitely not a jpeg" * 10)  # undecodable
    mask_path = os.path.join(root, "SegmentationClassAug", aug[2] + ".png")
    Image.fromarray(np.zeros((7, 9), np.uint8), "L").save(mask_path)  # wrong size
    mask_path = os.path.join(root, "SegmentationClassAug", aug[3] + ".png")
    bad = np.array(Image.open(mask_path))
    bad[2, 2] = 37
    Image.fromarray(bad, "L").save(mask_path)  # value outside 0..20, 255
    fake_data.write_voc_xml(os.path.join(root, "Annotations", aug[4] + ".xml"), ["unicorn"])
    with open(os.path.join(root, "ImageSets", "Segmentation", "val.txt"), "a") as f:
        f.write("2010_ghost\n")  # named by the list, missing on disk
    return {
        aug[0]: "undecodable or truncated image",
        aug[1]: "undecodable or truncated image",
        aug[2]: "differs from its image size",
        aug[3]: "label values [37] outside the class range",
        aug[4]: "image has no labels",
        "2010_ghost": "missing file",
    }


@pytest.fixture(scope="module")
def bad_voc(tmp_path_factory):
    manual = str(tmp_path_factory.mktemp("bad_voc"))
    splits = fake_data.write_fake_voc(manual, num_train_aug=7, num_train=2, num_val=2)
    return manual, splits, _break_voc(manual, splits)


def test_bad_voc_stops_the_build_naming_file_and_problem(bad_voc, tmp_path):
    manual, splits, _ = bad_voc
    with pytest.raises(BadExampleError) as info:
        data.build("voc2012_wsss", str(tmp_path), manual_dir=manual)
    message = str(info.value)
    assert splits["train_aug"][2] + ".jpg" in message and "truncated" in message
    assert "--skip-bad-examples" in message
    assert not data.is_built("voc2012_wsss", str(tmp_path))
    leftovers = os.listdir(os.path.join(str(tmp_path), "voc2012_wsss"))
    assert not any("1.0.0" == d for d in leftovers)


def test_bad_voc_skipped_and_reported_by_the_cli(bad_voc, tmp_path, capsys):
    manual, splits, expected = bad_voc
    code = build_dataset_main(
        ["voc2012_wsss", "--data-dir", str(tmp_path), "--manual-dir", manual, "--skip-bad-examples"]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert f"Skipped {len(expected)} bad example(s):" in out
    with open(os.path.join(data.dataset_dir("voc2012_wsss", tmp_path), "build_report.json")) as f:
        report = json.load(f)
    skipped = {row["name"]: row for row in report["skipped"]}
    assert set(skipped) == set(expected)
    for name, problem in expected.items():
        assert problem in skipped[name]["problem"], (name, skipped[name])
        assert name in skipped[name]["path"] or skipped[name]["path"].endswith(name + ".jpg")
        assert name in out
    good_aug = [n for n in splits["train_aug"] if n not in expected]
    source = data.open_split("voc2012_wsss", str(tmp_path), "train_aug")
    assert [source[i]["name"] for i in range(len(source))] == good_aug
    assert report["splits"]["val"] == len(splits["val"])  # the ghost is gone, the rest kept


def test_cli_reports_a_bad_file_with_exit_code_1(bad_voc, tmp_path, capsys):
    manual, splits, _ = bad_voc
    code = build_dataset_main(["voc2012_wsss", "--data-dir", str(tmp_path), "--manual-dir", manual])
    assert code == 1
    err = capsys.readouterr().err
    assert "error:" in err and splits["train_aug"][2] in err


def test_a_split_without_usable_examples_is_an_error(tmp_path):
    manual = str(tmp_path / "manual")
    splits = fake_data.write_fake_voc(manual, num_train_aug=3, num_train=1, num_val=1)
    jpeg = os.path.join(_voc_root(manual), "JPEGImages", splits["val"][0] + ".jpg")
    with open(jpeg, "wb") as f:
        f.write(b"broken")
    with pytest.raises(ValueError, match="split 'val' has no usable examples"):
        data.build(
            "voc2012_wsss", str(tmp_path / "tfds"), manual_dir=manual, skip_bad_examples=True
        )


def test_validation_helpers_name_the_problem(tmp_path):
    with pytest.raises(BadExampleError, match="missing file"):
        decode_image_file(tmp_path / "nope.jpg")
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(BadExampleError, match="empty image file"):
        decode_image_file(empty)
    with pytest.raises(BadExampleError, match="mask size 3x2 differs"):
        check_mask(np.zeros((2, 3), np.uint8), (4, 2), 20, "m.png")
    with pytest.raises(BadExampleError, match=r"label values \[21\]"):
        check_mask(np.array([[0, 21, 255]], np.uint8), (3, 1), 20, "m.png")
    with pytest.raises(BadExampleError, match="no labels"):
        check_labels(np.zeros(20, np.float32), 20, "x.xml")
    with pytest.raises(BadExampleError, match="shape"):
        check_labels(np.ones(19, np.float32), 20, "x.xml")
    check_labels(np.zeros(80, np.float32), 80, "x", allow_empty=True)


# --------------------------------------------------------------------------------------------------
# COCO


@pytest.fixture(scope="module")
def coco_manual(tmp_path_factory):
    manual = str(tmp_path_factory.mktemp("coco_manual"))
    images = fake_data.write_fake_coco(manual, num_train=6, num_val=3)
    return manual, images


def test_coco_build_masks_and_labels(coco_manual, tmp_path):
    manual, images = coco_manual
    data.build("coco2014_wsss", str(tmp_path), manual_dir=manual)
    assert data.num_classes("coco2014_wsss", str(tmp_path)) == 80
    for split in coco.SPLITS:
        index = coco.CocoIndex(coco.annotation_path(manual, split))
        source = data.open_split("coco2014_wsss", str(tmp_path), split)
        assert len(source) == len(images[split])
        for i, entry in enumerate(images[split]):
            example = source[i]
            assert example["name"] == f"{entry['id']:012d}"
            mask = coco.semantic_mask(index, entry)
            np.testing.assert_array_equal(example["mask"], mask)
            np.testing.assert_array_equal(example["labels"], voc.labels_from_mask(mask, 80))
            path = os.path.join(manual, split, entry["file_name"])
            np.testing.assert_array_equal(example["image"], np.asarray(Image.open(path)))
    # The fake data exercise polygons, uncompressed and compressed RLE.
    with open(coco.annotation_path(manual, "train2014")) as f:
        kinds = {
            type(a["segmentation"]).__name__ + str(a["iscrowd"])
            for a in json.load(f)["annotations"]
        }
    assert kinds == {"list0", "dict1"}


def test_coco_bad_examples(coco_manual, tmp_path):
    manual, images = coco_manual
    broken = str(tmp_path / "manual")
    shutil.copytree(manual, broken)
    path = coco.annotation_path(broken, "train2014")
    with open(path) as f:
        content = json.load(f)
    entries = content["images"]
    entries[0]["width"] += 3  # annotation size differs from the image
    os.remove(os.path.join(broken, "train2014", entries[1]["file_name"]))  # missing image
    content["annotations"] = [
        a for a in content["annotations"] if a["image_id"] != entries[2]["id"]
    ]
    for ann in content["annotations"]:
        if ann["image_id"] == entries[3]["id"]:
            ann["category_id"] = 12  # not a COCO category (ids skip 12)
            break
    with open(path, "w") as f:
        json.dump(content, f)
    builder = data.build(
        "coco2014_wsss", str(tmp_path / "tfds"), manual_dir=broken, skip_bad_examples=True
    )
    problems = {row["name"]: row["problem"] for row in builder.bad_examples.rows}
    name = [f"{e['id']:012d}" for e in entries]
    assert set(problems) == set(name[:4])
    assert "differs from the annotation" in problems[name[0]]
    assert "missing file" in problems[name[1]]
    assert "no labels" in problems[name[2]]
    assert "outside the class range" in problems[name[3]]
    assert builder.info.splits["train2014"].num_examples == 2

    # --allow-unlabeled keeps the image without annotations (all-zero labels), as the reference.
    data_dir = str(tmp_path / "tfds_unlabeled")
    builder = data.build(
        "coco2014_wsss", data_dir, manual_dir=broken, skip_bad_examples=True, allow_unlabeled=True
    )
    assert name[2] not in {row["name"] for row in builder.bad_examples.rows}
    source = data.open_split("coco2014_wsss", data_dir, "train2014")
    unlabeled = [source[i] for i in range(len(source)) if source[i]["name"] == name[2]][0]
    assert not unlabeled["labels"].any() and not unlabeled["mask"].any()


def test_coco_annotation_file_problems(tmp_path):
    with pytest.raises(FileNotFoundError, match="instances_val2014.json"):
        coco.CocoIndex(coco.annotation_path(tmp_path, "val2014"))
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"images": [], "annotations": [], "categories": [{"id": 1}]}))
    with pytest.raises(ValueError, match="80 COCO categories"):
        coco.CocoIndex(str(path))
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        coco.CocoIndex(str(path))
