"""hfpl_jax.data.transforms and hfpl_jax.data.color against the official code (golden fixture)
and NumPy models of PIL.

tests/testdata/data_golden.npz comes from scripts/make_golden_data.py (the command is in its
docstring): the reference's own transforms run with their random draws replaced by stored values.
"""

import dataclasses
import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from hfpl_jax import affinity_pairs, image_ops
from hfpl_jax.data import coco, color, transforms, voc
from hfpl_jax.data.transforms import CropParams

GOLDEN = os.path.join(os.path.dirname(__file__), "testdata", "data_golden.npz")


@pytest.fixture(scope="module")
def golden():
    return dict(np.load(GOLDEN))


def _crop(values) -> CropParams:
    return CropParams(*(int(v) for v in values))


def _jpeg(golden, key) -> Image.Image:
    return Image.open(io.BytesIO(golden[key].tobytes())).convert("RGB")


# --------------------------------------------------------------------------------------------------
# Golden: the reference's transforms


def test_resize_long_matches_reference(golden):
    for case in range(3):
        image = Image.fromarray(golden[f"resize_{case}_input"])
        target = int(golden[f"resize_{case}_target"])
        out = np.asarray(transforms.resize_long(image, target))
        np.testing.assert_array_equal(out, golden[f"resize_{case}_output"])


def test_resize_long_rounds_half_to_even():
    assert transforms.resize_long_size(500, 375, 450) == (450, 338)  # 337.5 -> 338
    assert transforms.resize_long_size(375, 500, 449) == (337, 449)  # 336.75 -> 337
    assert transforms.resize_long_size(4, 2, 5) == (5, 2)  # 2.5 -> 2
    assert transforms.resize_long_size(4, 6, 3) == (2, 3)  # 2.0
    assert transforms.resize_long_size(40, 40, 33) == (33, 33)  # square: landscape branch


def test_normalisation_of_every_level_into_any_output_view():
    """Every uint8 level of every channel gives float32((x / 255 - mean) / std) computed in
    float64, also when written into a strided window of a larger array (the padded crop)."""
    from hfpl_jax.image_ops import IMAGENET_MEAN, IMAGENET_STD

    levels = np.arange(256, dtype=np.uint8)
    image = np.stack([levels, levels[::-1], np.roll(levels, 77)], -1).reshape(16, 16, 3)
    want = ((image / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)).astype(np.float32)
    np.testing.assert_array_equal(image_ops.normalize_image(image), want)
    padded = np.zeros((20, 25, 3), np.float32)
    result = image_ops.normalize_image(image, out=padded[3:19, 5:21])
    assert np.shares_memory(result, padded)
    np.testing.assert_array_equal(padded[3:19, 5:21], want)
    assert not padded[:3].any() and not padded[:, :5].any() and not padded[:, 21:].any()
    np.testing.assert_array_equal(image_ops.normalize_image(image[:, ::-1]), want[:, ::-1])


def test_cam_crop_matches_reference(golden):
    out = transforms.crop_and_pad(golden["crop_input"], _crop(golden["crop_params"]), 0.0)
    np.testing.assert_array_equal(out, golden["crop_output"])


def test_normalisation_matches_reference(golden):
    np.testing.assert_array_equal(
        image_ops.normalize_image(golden["norm_uint8_input"]), golden["norm_uint8_output"]
    )
    float32_out = image_ops.normalize_image_float32(golden["norm_float32_input"])
    assert float32_out.dtype == np.float32
    np.testing.assert_array_equal(float32_out, golden["norm_float32_output"])


def test_msf_cam_inputs_match_reference(golden):
    inputs = transforms.msf_cam_inputs(_jpeg(golden, "msf_jpeg"), (0.5, 1.0, 1.5, 2.0))
    assert len(inputs) == 8
    for i in range(0, 8, 2):
        np.testing.assert_array_equal(inputs[i], golden[f"msf_{i}"])
        np.testing.assert_array_equal(inputs[i + 1], inputs[i][:, ::-1])
        assert bool(golden[f"msf_{i + 1}_is_flip"])
    assert inputs[2].shape[:2] == (37, 50) and inputs[0].shape[:2] == (18, 25)  # round(18.5) = 18


def test_aff_transform_matches_reference(golden):
    keys = [int(k) for k in golden["aff_keys"]]
    coarse = golden["aff_coarse"]
    la = np.repeat(np.repeat(coarse[0], 8, 1), 8, 2)[:, :90, :120]
    ha = np.repeat(np.repeat(coarse[1], 8, 1), 8, 2)[:, :90, :120]
    scores = transforms.stack_crf_scores(
        {k: la[i] for i, k in enumerate(keys)}, {k: ha[i] for i, k in enumerate(keys)}
    )
    params = transforms.AffTrainParams(
        jitter=None, crop=_crop(golden["aff_crop_params"]), flip=True
    )
    image, (bg_pos, fg_pos, neg) = transforms.aff_train_transform(
        _jpeg(golden, "aff_jpeg"), scores, params, radius=5
    )
    np.testing.assert_array_equal(image, golden["aff_image"])
    np.testing.assert_array_equal(bg_pos, golden["aff_bg_pos"].astype(np.float32))
    np.testing.assert_array_equal(fg_pos, golden["aff_fg_pos"].astype(np.float32))
    np.testing.assert_array_equal(neg, golden["aff_neg"].astype(np.float32))
    assert bg_pos.shape == (34, 8 * 4) and bg_pos.dtype == np.float32
    assert neg.sum() > 0 and fg_pos.sum() > 0  # the case exercises every kind of pair


def test_affinity_labels_match_reference_at_56(golden):
    outs = transforms.extract_affinity_labels(golden["afflab_label"], radius=5)
    for key, value in zip(("bg_pos", "fg_pos", "neg"), outs, strict=True):
        assert value.shape == (34, 2496)
        np.testing.assert_array_equal(value, golden[f"afflab_{key}"].astype(np.float32))


def test_affinity_offsets_are_the_reference_34():
    offsets = affinity_pairs.search_offsets(5)
    assert len(offsets) == 34
    assert offsets[:5] == [(0, 1), (0, 2), (0, 3), (0, 4), (1, -4)]
    assert offsets[-1] == (4, 2) and (4, -3) not in offsets and (3, -3) in offsets


def test_seg_transform_matches_reference(golden):
    scale = float(golden["seg_scale_u"]) * (1.5 - 0.5) + 0.5
    params = transforms.SegTrainParams(
        hsv_delta=tuple(int(v) for v in golden["seg_hsv"]),
        flip=True,
        scale=scale,
        scaled_hw=tuple(int(v) for v in golden["seg_scaled_hw"]),
        crop=_crop(golden["seg_crop_params"]),
    )
    assert transforms.scaled_size_cv2(33, 71, scale) == params.scaled_hw
    image, label = transforms.seg_train_transform(
        golden["seg_image_input"], golden["seg_label_input"], params
    )
    np.testing.assert_array_equal(image, golden["seg_image"])
    assert label.dtype == np.int32
    np.testing.assert_array_equal(label, golden["seg_label"].astype(np.int32))
    assert (label == 255).any() and (label == 7).any()


def test_msf_seg_inputs_match_reference(golden):
    rates = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
    inputs = transforms.msf_seg_inputs(golden["seg_image_input"][:, :40], rates, flip=True)
    for i in range(len(rates)):
        np.testing.assert_array_equal(inputs[2 * i], golden[f"segmsf_{i}"])
        np.testing.assert_array_equal(inputs[2 * i + 1], golden[f"segmsf_{i}"][:, ::-1])


def test_voc_xml_labels_match_reference(golden, tmp_path):
    path = tmp_path / "x.xml"
    path.write_text(str(golden["xml_text"]))
    np.testing.assert_array_equal(voc.labels_from_xml(str(path)), golden["xml_labels"])
    assert golden["xml_labels"].sum() == 3  # dog, person, chair (difficult); parts ignored


def test_coco_mask_and_labels_match_reference(golden, tmp_path):
    path = tmp_path / "instances.json"
    path.write_text(str(golden["coco_json"]))
    index = coco.CocoIndex(str(path))
    image = json.loads(str(golden["coco_json"]))["images"][0]
    mask = coco.semantic_mask(index, image)
    np.testing.assert_array_equal(mask, golden["coco_mask"])
    assert len(np.unique(mask)) >= 5  # polygons, crowd RLEs and overwrites all show
    np.testing.assert_array_equal(voc.labels_from_mask(mask, 80), golden["coco_labels"])


# --------------------------------------------------------------------------------------------------
# Colour jitter against NumPy models of PIL's C code


def _blend_model(degenerate: np.ndarray, image: np.ndarray, alpha: float) -> np.ndarray:
    """PIL ImagingBlend on uint8: float32 in1 + alpha·(in2 − in1), truncated; clipped when
    extrapolating (alpha outside [0, 1])."""
    in1 = degenerate.astype(np.float32)
    value = in1 + np.float32(alpha) * (image.astype(np.float32) - in1)
    return np.clip(np.trunc(value), 0, 255).astype(np.uint8)


def _luma_model(image: np.ndarray) -> np.ndarray:
    """PIL's RGB -> L: (R·19595 + G·38470 + B·7471 + 0x8000) >> 16."""
    rgb = image.astype(np.int64)
    return ((rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000) >> 16).astype(
        np.uint8
    )


@pytest.fixture(scope="module")
def photo():
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:37, 0:53]
    base = np.stack([x * 4.8, y * 6.9, 255 - x * 2.4], -1) + rng.normal(0, 30, (37, 53, 3))
    return np.clip(base, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("factor", [0.7, 0.93, 1.0, 1.18, 1.3])
def test_brightness_contrast_saturation_match_numpy_models(photo, factor):
    def run(op):
        order = (op,)
        values = [None, None, None, None]
        values[op] = factor
        params = color.ColorJitterParams(order, *values)
        return np.asarray(color.color_jitter(Image.fromarray(photo), params))

    np.testing.assert_array_equal(run(0), _blend_model(np.zeros_like(photo), photo, factor))
    luma = _luma_model(photo)
    mean = int(luma.mean() + 0.5)
    np.testing.assert_array_equal(run(1), _blend_model(np.full_like(photo, mean), photo, factor))
    grey = np.repeat(luma[..., None], 3, axis=-1)
    np.testing.assert_array_equal(run(2), _blend_model(grey, photo, factor))


@pytest.mark.parametrize("hue", [-0.1, -0.05, 0.0, 0.003, 0.07, 0.1])
def test_hue_shift_wraps_like_uint8(photo, hue):
    out = color.adjust_hue(Image.fromarray(photo), hue)
    expected_shift = int(hue * 255) % 256  # np.uint8(hue * 255) on x86: truncate, wrap
    in_h, in_s, in_v = (np.asarray(c) for c in Image.fromarray(photo).convert("HSV").split())
    shifted = Image.merge(
        "HSV",
        [Image.fromarray(((in_h.astype(np.int64) + expected_shift) % 256).astype(np.uint8))]
        + [Image.fromarray(in_s), Image.fromarray(in_v)],
    )
    np.testing.assert_array_equal(np.asarray(out), np.asarray(shifted.convert("RGB")))
    if hue == -0.05:
        assert expected_shift == 244


def _every_colour() -> np.ndarray:
    """All 2^24 byte triples as a 4096 x 4096 x 3 uint8 image."""
    values = np.arange(2**24, dtype=np.uint32)
    triples = np.stack([values >> 16, (values >> 8) & 255, values & 255], axis=-1)
    return triples.astype(np.uint8).reshape(4096, 4096, 3)


def test_hsv_conversions_equal_pil_on_every_input():
    """The table-driven conversions behind adjust_hue against PIL's own, exhaustively."""
    every = _every_colour()
    hsv = np.asarray(Image.fromarray(every).convert("HSV"))
    rgb = np.asarray(Image.frombytes("HSV", (4096, 4096), every.tobytes()).convert("RGB"))
    for rows in range(0, 4096, 1024):  # chunks bound the intermediates' memory
        part = every[rows : rows + 1024]
        np.testing.assert_array_equal(color.rgb_to_hsv_pil(part), hsv[rows : rows + 1024])
        np.testing.assert_array_equal(color.hsv_to_rgb_pil(part), rgb[rows : rows + 1024])


def test_color_jitter_of_a_window_is_the_window_of_the_jitter():
    rng = np.random.default_rng(5)
    image = Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)).resize(
        (121, 83), Image.BICUBIC
    )
    whole_image = (0, 0, 121, 83)
    for _ in range(100):  # every order and factor pattern, contrast anywhere in the order
        params = color.sample_color_jitter(rng, (0.3, 0.3, 0.3, 0.1))
        if rng.random() < 0.3:
            params = dataclasses.replace(params, contrast=None)
        full = np.asarray(color.color_jitter(image, params))
        left, top = (int(v) for v in rng.integers(0, 50, 2))
        box = (left, top, left + int(rng.integers(1, 71)), top + int(rng.integers(1, 33)))
        window = np.asarray(color.color_jitter(image, params, box))
        np.testing.assert_array_equal(window, full[box[1] : box[3], box[0] : box[2]])
        np.testing.assert_array_equal(
            np.asarray(color.color_jitter(image, params, whole_image)), full
        )


def test_color_jitter_applies_ops_in_the_drawn_order(photo):
    image = Image.fromarray(photo)
    forward = color.ColorJitterParams((0, 1, 2, 3), 1.2, 0.8, 1.25, 0.05)
    backward = color.ColorJitterParams((3, 2, 1, 0), 1.2, 0.8, 1.25, 0.05)
    step = image
    for op in (0, 1, 2, 3):
        step = color.color_jitter(
            step,
            color.ColorJitterParams(
                (op,), *[v if i == op else None for i, v in enumerate((1.2, 0.8, 1.25, 0.05))]
            ),
        )
    np.testing.assert_array_equal(np.asarray(color.color_jitter(image, forward)), step)
    assert not np.array_equal(
        np.asarray(color.color_jitter(image, forward)),
        np.asarray(color.color_jitter(image, backward)),
    )


def test_color_jitter_sampling_ranges():
    rng = np.random.default_rng(0)
    draws = [color.sample_color_jitter(rng, (0.3, 0.3, 0.3, 0.1)) for _ in range(2000)]
    for name, lo, hi in (("brightness", 0.7, 1.3), ("contrast", 0.7, 1.3), ("hue", -0.1, 0.1)):
        values = np.array([getattr(d, name) for d in draws])
        assert lo <= values.min() and values.max() <= hi
        assert values.min() < lo + 0.01 and values.max() > hi - 0.01
    orders = {d.order for d in draws}
    assert len(orders) == 24  # every permutation of the four operations occurs
    off = color.sample_color_jitter(rng, (0.0, 0.5, 0.0, 0.0))
    assert off.brightness is None and off.saturation is None and off.hue is None
    assert 0.5 <= off.contrast <= 1.5
    assert color.sample_color_jitter(rng, (1.5, 0, 0, 0)).brightness >= 0.0  # max(0, 1 - b)
    with pytest.raises(ValueError, match="hue"):
        color.sample_color_jitter(rng, (0.3, 0.3, 0.3, 0.7))


# --------------------------------------------------------------------------------------------------
# Sampling and cropping rules


def test_crop_sampling_follows_the_reference_rules():
    rng = np.random.default_rng(1)
    lefts, tops = set(), set()
    for _ in range(400):
        p = transforms.sample_crop(rng, height=30, width=70, crop_size=50)
        assert p.cont_left == 0 and 0 <= p.img_left <= 20
        assert p.img_top == 0 and 0 <= p.cont_top <= 20
        lefts.add(p.img_left)
        tops.add(p.cont_top)
    assert lefts == set(range(21)) and tops == set(range(21))
    exact = transforms.sample_crop(rng, height=50, width=50, crop_size=50)
    assert (exact.cont_top, exact.img_top, exact.cont_left, exact.img_left) == (0, 0, 0, 0)


def test_crop_and_pad_places_the_window():
    array = np.arange(4 * 6, dtype=np.float32).reshape(4, 6, 1)
    out = transforms.crop_and_pad(array, CropParams(5, 1, 0, 0, 1), fill=-1.0)
    assert out.shape == (5, 5, 1)
    np.testing.assert_array_equal(out[1:5, :, 0], array[:, 1:6, 0])
    assert (out[0] == -1).all()


def test_cam_train_transform_crops_after_normalising(photo):
    rng = np.random.default_rng(3)
    image = Image.fromarray(photo)
    for _ in range(5):
        params = transforms.sample_cam_train_params(
            rng, image.width, image.height, crop_size=64, resize_long_range=(60, 90)
        )
        out = transforms.cam_train_transform(image, params)
        assert out.shape == (64, 64, 3) and out.dtype == np.float32
        # Reference order: resize, flip, jitter, normalise the whole image, then crop with zeros.
        resized = transforms.resize_long(image, params.target_long)
        if params.flip:
            resized = resized.transpose(Image.FLIP_LEFT_RIGHT)
        jittered = color.color_jitter(resized, params.jitter)
        full = image_ops.normalize_image(np.asarray(jittered))
        np.testing.assert_array_equal(out, transforms.crop_and_pad(full, params.crop, 0.0))


def test_cam_param_sampling_ranges():
    rng = np.random.default_rng(5)
    targets, flips = [], []
    for _ in range(500):
        p = transforms.sample_cam_train_params(rng, 500, 375)
        targets.append(p.target_long)
        flips.append(p.flip)
        w, h = transforms.resize_long_size(500, 375, p.target_long)
        assert p.crop.img_left <= max(0, w - 448) and p.crop.cont_top <= max(0, 448 - h)
    assert min(targets) >= 448 and max(targets) <= 768
    assert min(targets) < 460 and max(targets) > 755
    assert 0.4 < np.mean(flips) < 0.6
    fixed = transforms.sample_cam_train_params(rng, 500, 375, hflip=False, jitter_strengths=None)
    assert not fixed.flip and fixed.jitter is None
    with pytest.raises(ValueError, match="resize_long"):
        transforms.sample_cam_train_params(rng, 10, 10, resize_long_range=(50, 40))


def test_seg_param_sampling_ranges():
    rng = np.random.default_rng(6)
    draws = [transforms.sample_seg_train_params(rng, 375, 500) for _ in range(400)]
    hsv = np.array([d.hsv_delta for d in draws])
    assert hsv.min() == -10 and hsv.max() == 10
    scales = np.array([d.scale for d in draws])
    assert 0.5 <= scales.min() < 0.53 and 1.47 < scales.max() < 1.5
    for d in draws[:20]:
        assert d.scaled_hw == transforms.scaled_size_cv2(375, 500, d.scale)


def test_block_mean_matches_loops():
    rng = np.random.default_rng(0)
    array = rng.uniform(size=(20, 13, 2)).astype(np.float32)
    out = transforms.block_mean(array, 8)
    padded = np.zeros((24, 16, 2))
    padded[:20, :13] = array
    for i in range(3):
        for j in range(2):
            expected = padded[8 * i : 8 * i + 8, 8 * j : 8 * j + 8].mean(axis=(0, 1))
            np.testing.assert_allclose(out[i, j], expected, rtol=1e-6)


def test_affinity_crop_labels_rules():
    scores = np.zeros((2, 3, 6), np.float32)  # K + 1 = 3 classes: la = [:3], ha = [3:]
    scores[0, 0] = [0.1, 0.8, 0.1, 0.2, 0.7, 0.1]  # la fg 1, ha fg -> 1
    scores[0, 1] = [0.6, 0.3, 0.1, 0.2, 0.7, 0.1]  # la bg -> 255 (ha fg)
    scores[0, 2] = [0.1, 0.3, 0.6, 0.9, 0.05, 0.05]  # ha bg -> 0
    scores[1, 0] = [0.1, 0.2, 0.7, 0.1, 0.8, 0.1]  # la class 2, ha class 1 -> 2 (la wins)
    scores[1, 1] = [0.9, 0.05, 0.05, 0.9, 0.05, 0.05]  # both bg -> 0
    # scores[1, 2] all zero -> no score -> 255
    label = transforms.affinity_crop_labels(scores)
    np.testing.assert_array_equal(label, [[1, 255, 0], [2, 0, 255]])


def test_bad_transform_inputs_raise():
    with pytest.raises(ValueError, match="multiple of 8"):
        transforms.aff_train_transform(
            Image.new("RGB", (20, 20)),
            np.zeros((20, 20, 4), np.float32),
            transforms.AffTrainParams(None, CropParams(20, 0, 0, 0, 0), False),
        )
    with pytest.raises(ValueError, match="CRF scores"):
        transforms.aff_train_transform(
            Image.new("RGB", (20, 20)),
            np.zeros((16, 20, 4), np.float32),
            transforms.AffTrainParams(None, CropParams(16, 0, 0, 0, 0), False),
        )
    with pytest.raises(ValueError, match="different keys"):
        transforms.stack_crf_scores(
            {0: np.zeros((2, 2))}, {0: np.zeros((2, 2)), 3: np.zeros((2, 2))}
        )
    with pytest.raises(ValueError, match="label shape"):
        transforms.seg_train_transform(
            np.zeros((4, 4, 3), np.uint8),
            np.zeros((4, 5), np.uint8),
            transforms.SegTrainParams(None, False, None, (4, 4), CropParams(4, 0, 0, 0, 0)),
        )
