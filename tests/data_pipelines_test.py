"""The grain pipelines: per-example RNG contract, AffinityNet, segmentation and inference inputs."""

import os

import numpy as np
import pytest
from PIL import Image

from hfpl_jax import data, image_ops
from hfpl_jax.data import input_pipeline, sources, transforms

TINY = dict(image_size=72, num_train=12, num_val=5, seed=11)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("tfds"))
    data.ensure_built("hfpl_shapes", directory, **TINY)
    return directory


def _base(data_dir, **overrides):
    config = dict(
        dataset="hfpl_shapes", data_dir=data_dir, split="train", builder_kwargs=TINY, shuffle=True
    )
    config.update(overrides)
    return config


@pytest.fixture(scope="module")
def crf_dirs(data_dir, tmp_path_factory):
    """la/ha CRF dicts {0: bg, c+1: score} for every train example, made from its mask."""
    root = tmp_path_factory.mktemp("crf")
    la_dir, ha_dir = root / "la", root / "ha"
    la_dir.mkdir()
    ha_dir.mkdir()
    source = data.open_split("hfpl_shapes", data_dir, "train", **TINY)
    rng = np.random.default_rng(0)
    for i in range(len(source)):
        example = source[i]
        mask = example["mask"]
        keys = [0] + [int(k) + 1 for k in np.flatnonzero(example["labels"])]
        noise = rng.uniform(0, 0.3, size=(len(keys),) + mask.shape).astype(np.float32)
        la = {k: noise[j] + (mask == k) for j, k in enumerate(keys)}
        ha = {
            k: noise[j] * 0.5 + (mask == k) * (0.4 if k == 0 else 1.0) for j, k in enumerate(keys)
        }
        np.save(la_dir / (example["name"] + ".npy"), la)
        np.save(ha_dir / (example["name"] + ".npy"), ha)
    return str(la_dir), str(ha_dir)


def test_cam_examples_follow_the_documented_rng(data_dir):
    config = _base(
        data_dir,
        global_batch_size=4,
        crop_size=40,
        resize_long=(40, 90),
        color_jitter=(0.3,) * 3 + (0.1,),
    )
    batch = next(input_pipeline.make_cam_train_iterator(config, seed=5))
    order = input_pipeline.EpochOrder(num_records=12, global_batch_size=4, seed=5)
    raw = data.raw_source("hfpl_shapes", data_dir, "train", **TINY)
    for row in range(4):
        epoch, index = order.locate(row)
        image = sources.decode_image(raw[index]["image"])
        params = transforms.sample_cam_train_params(
            input_pipeline.example_rng(5, epoch, index, input_pipeline.STREAM_CAM),
            image.width,
            image.height,
            crop_size=40,
            resize_long_range=(40, 90),
        )
        np.testing.assert_array_equal(
            batch["image"][row], transforms.cam_train_transform(image, params)
        )
        np.testing.assert_array_equal(batch["labels"][row], raw[index]["labels"])


def test_config_errors_are_clear(data_dir):
    with pytest.raises(ValueError, match="data_dir"):
        input_pipeline.make_cam_train_iterator(_base("", global_batch_size=2), seed=0)
    with pytest.raises(ValueError, match="unknown dataset"):
        input_pipeline.make_cam_train_iterator(
            _base(data_dir, dataset="imagenet", global_batch_size=2), seed=0
        )
    with pytest.raises(ValueError, match="global_batch_size is required"):
        input_pipeline.make_cam_train_iterator(_base(data_dir), seed=0)
    with pytest.raises(ValueError, match="has splits"):
        input_pipeline.make_cam_train_iterator(
            _base(data_dir, split="test", global_batch_size=2), seed=0
        )
    with pytest.raises(ValueError, match="worker_count"):
        input_pipeline.make_cam_train_iterator(
            _base(data_dir, global_batch_size=2, worker_count=-1), seed=0
        )
    with pytest.raises(ValueError, match="fewer than one global batch"):
        input_pipeline.make_cam_train_iterator(_base(data_dir, global_batch_size=64), seed=0)


def test_aff_iterator(data_dir, crf_dirs):
    la_dir, ha_dir = crf_dirs
    config = _base(data_dir, la_dir=la_dir, ha_dir=ha_dir, global_batch_size=3, crop_size=80)
    iterator = input_pipeline.make_aff_train_iterator(config, seed=3)
    batch = next(iterator)
    assert batch["image"].shape == (3, 80, 80, 3) and batch["image"].dtype == np.float32
    pairs = (10 - 4) * (10 - 8)
    for key in ("bg_pos", "fg_pos", "neg"):
        assert batch[key].shape == (3, 34, pairs) and batch[key].dtype == np.float32
    # A pair is at most one of the three kinds; fg/bg pairs exist on this data.
    assert (batch["bg_pos"] + batch["fg_pos"] + batch["neg"]).max() <= 1
    assert batch["bg_pos"].sum() > 0 and batch["fg_pos"].sum() > 0

    order = input_pipeline.EpochOrder(num_records=12, global_batch_size=3, seed=3)
    raw = data.raw_source("hfpl_shapes", data_dir, "train", **TINY)
    epoch, index = order.locate(1)
    name = raw[index]["name"]
    image = sources.decode_image(raw[index]["image"])
    scores = transforms.stack_crf_scores(
        input_pipeline.load_crf_dict(la_dir, name), input_pipeline.load_crf_dict(ha_dir, name)
    )
    params = transforms.sample_aff_train_params(
        input_pipeline.example_rng(3, epoch, index, input_pipeline.STREAM_AFF),
        image.width,
        image.height,
        crop_size=80,
    )
    expected_image, expected_pairs = transforms.aff_train_transform(image, scores, params)
    np.testing.assert_array_equal(batch["image"][1], expected_image)
    np.testing.assert_array_equal(batch["neg"][1], expected_pairs[2])


def test_aff_iterator_missing_crf_file(data_dir, tmp_path):
    config = _base(
        data_dir, la_dir=str(tmp_path), ha_dir=str(tmp_path), global_batch_size=2, crop_size=80
    )
    with pytest.raises(FileNotFoundError, match="CRF scores"):
        next(input_pipeline.make_aff_train_iterator(config, seed=0))


def test_seg_iterator_on_masks_and_pseudo_labels(data_dir, tmp_path):
    config = _base(data_dir, global_batch_size=2, crop_size=64)
    batch = next(input_pipeline.make_seg_train_iterator(config, seed=9))
    assert batch["image"].shape == (2, 64, 64, 3) and batch["image"].dtype == np.float32
    assert batch["label"].shape == (2, 64, 64) and batch["label"].dtype == np.int32
    assert set(np.unique(batch["label"])) <= set(range(7)) | {255}

    # Pseudo labels from a folder: here the masks shifted by one class, to tell them apart.
    source = data.open_split("hfpl_shapes", data_dir, "train", **TINY)
    for i in range(len(source)):
        example = source[i]
        pseudo = np.where(example["mask"] > 0, example["mask"] % 6 + 1, 0).astype(np.uint8)
        Image.fromarray(pseudo).save(tmp_path / (example["name"] + ".png"))
    config["label_dir"] = str(tmp_path)
    pseudo_batch = next(input_pipeline.make_seg_train_iterator(config, seed=9))
    np.testing.assert_array_equal(pseudo_batch["image"], batch["image"])  # same draws, same image
    shifted = np.where(
        (batch["label"] > 0) & (batch["label"] < 255), batch["label"] % 6 + 1, batch["label"]
    )
    np.testing.assert_array_equal(pseudo_batch["label"], shifted)

    Image.fromarray(np.zeros((5, 5), np.uint8)).save(tmp_path / (source[0]["name"] + ".png"))
    config["shuffle"] = False
    with pytest.raises(ValueError, match="label of"):
        next(input_pipeline.make_seg_train_iterator(config, seed=9))


@pytest.mark.parametrize("method", ["cam", "seg"])
def test_msf_iterator_shards_cover_the_split_once(data_dir, method):
    config = _base(data_dir, split="val", method=method)
    names = []
    for process_index in range(2):
        iterator = input_pipeline.make_msf_inference_iterator(
            config, process_index=process_index, process_count=2
        )
        for element in iterator:
            names.append(element["name"])
            num_inputs = 8 if method == "cam" else 12
            assert len(element["inputs"]) == num_inputs
            height, width = element["image"].shape[:2]
            if method == "cam":
                pil = Image.fromarray(element["image"])
                expected = transforms.msf_cam_inputs(pil, (0.5, 1.0, 1.5, 2.0))
                for got, want in zip(element["inputs"], expected, strict=True):
                    np.testing.assert_array_equal(got, want)
                assert element["inputs"][2].shape[:2] == (height, width)
            else:
                assert element["inputs"][4].shape[:2] == (height, width)  # scale 1.0
                np.testing.assert_array_equal(
                    element["inputs"][4], image_ops.normalize_image_float32(element["image"])
                )
    assert sorted(names) == [f"val_{i:06d}" for i in range(5)]


def test_seg_decoder_matches_pil_on_stored_images(data_dir):
    raw = data.raw_source("hfpl_shapes", data_dir, "val", **TINY)
    stored = raw[0]["image"]
    np.testing.assert_array_equal(
        input_pipeline.decode_image_cv2(stored), np.asarray(sources.decode_image(stored))
    )


def test_seg_decoder_ignores_exif_orientation_like_pil():
    import io

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (10, 20, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95, exif=exif.tobytes())
    stored = buffer.getvalue()
    assert Image.open(io.BytesIO(stored)).getexif()[0x0112] == 6
    pil = np.asarray(sources.decode_image(stored))
    got = input_pipeline.decode_image_cv2(stored)
    assert got.shape == pil.shape == (10, 20, 3)  # the stored layout, as the mask's
    # The same JPEG decoded by two libjpeg builds: equal up to rounding of the IDCT.
    assert np.abs(got.astype(int) - pil.astype(int)).max() <= 2


def test_cam_steps_per_epoch(data_dir):
    config = _base(data_dir, global_batch_size=5)
    assert input_pipeline.cam_train_steps_per_epoch(config) == 2
    assert os.path.isdir(data.dataset_dir("hfpl_shapes", data_dir, **TINY))
