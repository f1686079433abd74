"""Host-side augmentations that reproduce the reference's, pixel for pixel where it matters.

Every random transform is split in two: ``sample_*`` draws the parameters from a NumPy
``Generator`` (one per example, derived from (seed, epoch, index) by the input pipeline), and a
pure function applies them, to the image and its mask together. The reference drew the same
parameters from Python's ``random`` and torch's RNG; those streams cannot be replayed, but the
distributions and the deterministic maths are the reference's:

- CAM training (``train_cam_voc.py``, ``voc12/data.py VOC12ClsDataset``):
  :func:`resize_long` (``tool/imutils.RandomResizeLong``: PIL bicubic, Python rounding),
  horizontal flip, colour jitter (:mod:`hfpl_jax.data.color`: torchvision ``ColorJitter``
  on PIL images), ImageNet normalisation (:func:`hfpl_jax.image_ops.normalize_image`: float64
  maths, one float32 cast) and :func:`crop_and_pad` *after* normalisation
  (``tool/imutils.RandomCrop``: padding 0 = the mean colour).
- CAM inference (``infer_cam_voc.py``, ``VOC12ClsDatasetMSF``): :func:`msf_cam_inputs`, PIL
  bicubic at (round(W·s), round(H·s)), each scale followed by its W-flip.
- AffinityNet training (``train_aff_voc.py``, ``VOC12AffDataset``): colour jitter, crop of image ⊕
  CRF scores *before* normalisation (black padding, score 0), float32 normalisation, joint flip,
  8×8 average pooling of the scores (``tool/imutils.AvgPool2d``), :func:`affinity_crop_labels` and
  :func:`extract_affinity_labels` (``ExtractAffinityLabelInRadius``).
- Segmentation training (``train_final_voc.py``, ``lib/datasets/BaseDataset`` transform "weak",
  ``lib/datasets/transform.py``): :func:`random_hsv` (``RandomHSV``), flip, :func:`random_scale`
  (``RandomScale``: OpenCV INTER_CUBIC / INTER_NEAREST), float32
  :func:`hfpl_jax.image_ops.normalize_image_float32` (``ImageNorm``), crop padded 0 / 255;
  inference (``eval_final_voc.py``, transform "none"): :func:`msf_seg_inputs`.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image

from hfpl_jax.affinity_pairs import search_offsets as affinity_offsets
from hfpl_jax.data.color import ColorJitterParams, color_jitter, sample_color_jitter
from hfpl_jax.image_ops import normalize_image, normalize_image_float32

__all__ = [
    "AffTrainParams",
    "CamTrainParams",
    "CropParams",
    "IGNORE_LABEL",
    "SegTrainParams",
    "aff_train_transform",
    "affinity_crop_labels",
    "block_mean",
    "cam_train_transform",
    "crop_and_pad",
    "extract_affinity_labels",
    "hflip_pil",
    "msf_cam_inputs",
    "msf_seg_inputs",
    "random_hsv",
    "random_scale",
    "resize_long",
    "resize_long_size",
    "sample_aff_train_params",
    "sample_cam_train_params",
    "sample_crop",
    "sample_seg_train_params",
    "scaled_size_cv2",
    "seg_train_transform",
    "stack_crf_scores",
]

IGNORE_LABEL = 255

# --------------------------------------------------------------------------------------------------
# Resizing and flipping


def resize_long_size(width: int, height: int, target_long: int) -> tuple[int, int]:
    """(width, height) after scaling the long side to ``target_long`` (the reference's
    ``RandomResizeLong``): the short side becomes int(round(short · target / long)), Python's
    half-to-even rounding; a square image counts as landscape."""
    if width < height:
        return int(round(width * target_long / height)), target_long
    return target_long, int(round(height * target_long / width))


def resize_long(image: Image.Image, target_long: int) -> Image.Image:
    """PIL image with its long side scaled to ``target_long`` (bicubic, PIL's antialiasing)."""
    size = resize_long_size(image.width, image.height, target_long)
    return image.resize(size, resample=Image.BICUBIC)


def hflip_pil(image: Image.Image) -> Image.Image:
    return image.transpose(Image.FLIP_LEFT_RIGHT)


# --------------------------------------------------------------------------------------------------
# Random crop with padding (tool/imutils.RandomCrop, lib/datasets/transform.RandomCrop)


@dataclasses.dataclass(frozen=True)
class CropParams:
    """Where a crop_size x crop_size window goes: ``img_top/left`` in the source, ``cont_top/left``
    in the (padded) output; for each axis at most one of the two is non-zero."""

    crop_size: int
    cont_top: int
    img_top: int
    cont_left: int
    img_left: int


def sample_crop(rng: np.random.Generator, height: int, width: int, crop_size: int) -> CropParams:
    """The reference's crop offsets: along a side longer than the crop, a source offset uniform in
    [0, side − crop]; along a shorter (or equal) side, an output offset uniform in [0, crop − side]
    (the image is placed inside a padded container)."""
    if crop_size < 1:
        raise ValueError(f"crop_size must be >= 1, got {crop_size}")

    def axis(side):
        space = side - crop_size
        if space > 0:
            return 0, int(rng.integers(space + 1))
        return int(rng.integers(-space + 1)), 0

    cont_left, img_left = axis(width)
    cont_top, img_top = axis(height)
    return CropParams(crop_size, cont_top, img_top, cont_left, img_left)


def crop_and_pad(array: np.ndarray, params: CropParams, fill, dtype=None) -> np.ndarray:
    """(H, W, ...) -> (crop, crop, ...) filled with ``fill`` where the window leaves the source."""
    height, width = array.shape[:2]
    crop = params.crop_size
    ch, cw = min(crop, height), min(crop, width)
    out = np.full((crop, crop) + array.shape[2:], fill, dtype=dtype or array.dtype)
    out[params.cont_top : params.cont_top + ch, params.cont_left : params.cont_left + cw] = array[
        params.img_top : params.img_top + ch, params.img_left : params.img_left + cw
    ]
    return out


# --------------------------------------------------------------------------------------------------
# CAM training (train_cam_voc.py, voc12/data.py VOC12ClsDataset)


@dataclasses.dataclass(frozen=True)
class CamTrainParams:
    target_long: int
    flip: bool
    jitter: ColorJitterParams | None
    crop: CropParams


def sample_cam_train_params(
    rng: np.random.Generator,
    width: int,
    height: int,
    *,
    crop_size: int = 448,
    resize_long_range: tuple[int, int] = (448, 768),
    hflip: bool = True,
    jitter_strengths=(0.3, 0.3, 0.3, 0.1),
) -> CamTrainParams:
    """Draws every random choice of one CAM-training example, in the reference's order: long side
    uniform in [lo, hi] (inclusive), flip with p = 0.5, colour jitter, crop offsets."""
    lo, hi = (int(v) for v in resize_long_range)
    if not 1 <= lo <= hi:
        raise ValueError(
            f"resize_long must be (lo, hi) with 1 <= lo <= hi, got {resize_long_range}"
        )
    target_long = int(rng.integers(lo, hi + 1))
    flip = bool(rng.random() < 0.5) if hflip else False
    jitter = None
    if jitter_strengths is not None and any(float(v) != 0 for v in jitter_strengths):
        jitter = sample_color_jitter(rng, jitter_strengths)
    new_w, new_h = resize_long_size(width, height, target_long)
    crop = sample_crop(rng, new_h, new_w, crop_size)
    return CamTrainParams(target_long, flip, jitter, crop)


def cam_train_transform(image: Image.Image, params: CamTrainParams) -> np.ndarray:
    """RGB PIL image -> (crop, crop, 3) float32 normalised training input: the transforms of
    ``train_cam_voc.py`` (resize long side, flip, colour jitter, normalise, crop).

    Normalisation is pointwise and the crop pads with 0 in normalised space, so cropping the uint8
    image first and normalising only the window gives the same array with less work; the colour
    jitter, too, runs on the window where it can (see
    :func:`hfpl_jax.data.color.color_jitter`).
    """
    image = resize_long(image, params.target_long)
    if params.flip:
        image = hflip_pil(image)
    crop = params.crop
    ch, cw = min(crop.crop_size, image.height), min(crop.crop_size, image.width)
    box = (crop.img_left, crop.img_top, crop.img_left + cw, crop.img_top + ch)
    if params.jitter is not None:
        window = np.asarray(color_jitter(image, params.jitter, box))  # jitter, then the crop
    else:
        window = np.asarray(image.crop(box))
    out = np.zeros((crop.crop_size, crop.crop_size, 3), np.float32)
    normalize_image(
        window, out=out[crop.cont_top : crop.cont_top + ch, crop.cont_left : crop.cont_left + cw]
    )
    return out


# --------------------------------------------------------------------------------------------------
# Multi-scale + flip inference inputs (infer_cam_voc.py, eval_final_voc.py)


def msf_cam_inputs(image: Image.Image, scales=(0.5, 1.0, 1.5, 2.0)) -> list[np.ndarray]:
    """CAM inference inputs: for each scale s, the image resized with PIL bicubic to
    (round(W·s), round(H·s)) and normalised (float64 maths), then its W-flip. Order:
    s0, s0-flip, s1, s1-flip, ...; each (h_s, w_s, 3) float32."""
    width, height = image.size
    inputs = []
    for scale in scales:
        size = (round(width * scale), round(height * scale))
        if min(size) < 1:
            raise ValueError(f"scale {scale} shrinks a {width}x{height} image to nothing")
        scaled = normalize_image(np.asarray(image.resize(size, resample=Image.BICUBIC)))
        inputs.append(scaled)
        inputs.append(np.ascontiguousarray(scaled[:, ::-1]))
    return inputs


def msf_seg_inputs(
    image: np.ndarray, scales=(0.5, 0.75, 1.0, 1.25, 1.5, 1.75), flip: bool = True
) -> list[np.ndarray]:
    """Final-model evaluation inputs (``eval_final_voc.py``; ``lib/datasets/BaseDataset``
    transform "none"): ``ImageNorm`` (float32) on the original uint8 RGB image, then
    ``cv2.resize(fx=fy=s, INTER_CUBIC)`` of the normalised float image per scale (``Multiscale``),
    each followed by its W-flip when ``flip``."""
    import cv2

    normalised = normalize_image_float32(image)
    inputs = []
    for scale in scales:
        scaled = cv2.resize(normalised, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
        inputs.append(scaled)
        if flip:
            inputs.append(np.ascontiguousarray(scaled[:, ::-1]))
    return inputs


# --------------------------------------------------------------------------------------------------
# AffinityNet training (train_aff_voc.py, voc12/data.py VOC12AffDataset)


def extract_affinity_labels(label: np.ndarray, radius: int = 5):
    """Pair labels of a (g, g) uint8 label map (0 bg, 1.. fg, 255 ignore), as
    ``ExtractAffinityLabelInRadius``.

    "From" pixels are label[:g−r+1, r−1:g−r+1] flattened row-major; for each offset (dy, dx) the
    "to" pixel is (row + dy, col + dx). With valid = from < 255 and to < 255:
    bg_pos = (from == to == 0); fg_pos = (from == to != 0) ∧ valid; neg = (from != to) ∧ valid.

    Returns:
      (bg_pos, fg_pos, neg), each float32 (num_offsets, (g − r + 1)·(g − 2r + 2)); (34, 2496) for
      g = 56, r = 5.
    """
    label = np.asarray(label)
    size = label.shape[0]
    if label.ndim != 2 or label.shape[1] != size:
        raise ValueError(f"affinity labels need a square (g, g) map, got shape {label.shape}")
    floor = radius - 1
    crop_h, crop_w = size - floor, size - 2 * floor
    if crop_h < 1 or crop_w < 1:
        raise ValueError(f"a {size}x{size} label map is too small for radius {radius}")
    labels_from = label[:-floor, floor:-floor].reshape(-1)
    labels_to = np.stack(
        [
            label[dy : dy + crop_h, floor + dx : floor + dx + crop_w].reshape(-1)
            for dy, dx in affinity_offsets(radius)
        ]
    )
    valid = (labels_to < IGNORE_LABEL) & (labels_from < IGNORE_LABEL)[None, :]
    same = labels_from[None, :] == labels_to
    bg_pos = same & (labels_from == 0)[None, :]
    fg_pos = same & (labels_from != 0)[None, :] & valid
    neg = ~same & valid
    return bg_pos.astype(np.float32), fg_pos.astype(np.float32), neg.astype(np.float32)


def stack_crf_scores(la: dict, ha: dict) -> np.ndarray:
    """CRF score dicts {0: bg, c+1: ...} (H, W) -> (H, W, 2(K+1)) float32: la channels then ha
    channels, each in ascending key order (how the inference stage writes them)."""
    if sorted(la) != sorted(ha):
        raise ValueError(f"la and ha CRF dicts have different keys: {sorted(la)} vs {sorted(ha)}")
    if 0 not in la:
        raise ValueError(f"CRF dicts must hold the background under key 0, got keys {sorted(la)}")
    channels = [la[k] for k in sorted(la)] + [ha[k] for k in sorted(ha)]
    return np.stack([np.asarray(c, np.float32) for c in channels], axis=-1)


def block_mean(array: np.ndarray, block: int) -> np.ndarray:
    """(H, W, C) -> (ceil(H/b), ceil(W/b), C) means over b x b blocks, zero-padding the bottom and
    right edges first (``skimage.measure.block_reduce(array, (b, b, 1), np.mean)``)."""
    height, width = array.shape[:2]
    ph, pw = -height % block, -width % block
    if ph or pw:
        array = np.pad(array, ((0, ph), (0, pw), (0, 0)))
    h, w = array.shape[0] // block, array.shape[1] // block
    return (
        array.reshape(h, block, w, block, -1)
        .mean(axis=(1, 3), dtype=np.float64)
        .astype(array.dtype)
    )


def affinity_crop_labels(scores: np.ndarray) -> np.ndarray:
    """Pooled (g, g, 2(K+1)) la ⊕ ha CRF scores -> (g, g) uint8 label: la's argmax, 255 where la
    says background, 0 where ha says background, 255 where every score is < 1e-5 (padding)."""
    no_score = scores.max(axis=-1) < 1e-5
    la, ha = np.array_split(scores, 2, axis=-1)
    la_index = np.argmax(la, axis=-1).astype(np.uint8)
    ha_index = np.argmax(ha, axis=-1).astype(np.uint8)
    label = la_index.copy()
    label[la_index == 0] = IGNORE_LABEL
    label[ha_index == 0] = 0
    label[no_score] = IGNORE_LABEL
    return label


@dataclasses.dataclass(frozen=True)
class AffTrainParams:
    jitter: ColorJitterParams | None
    crop: CropParams
    flip: bool


def sample_aff_train_params(
    rng: np.random.Generator,
    width: int,
    height: int,
    *,
    crop_size: int = 448,
    hflip: bool = True,
    jitter_strengths=(0.3, 0.3, 0.3, 0.1),
) -> AffTrainParams:
    """Colour jitter, crop offsets (at the native resolution), flip with p = 0.5."""
    jitter = None
    if jitter_strengths is not None and any(float(v) != 0 for v in jitter_strengths):
        jitter = sample_color_jitter(rng, jitter_strengths)
    crop = sample_crop(rng, height, width, crop_size)
    flip = bool(rng.random() < 0.5) if hflip else False
    return AffTrainParams(jitter, crop, flip)


def aff_train_transform(
    image: Image.Image, scores: np.ndarray, params: AffTrainParams, radius: int = 5
):
    """One AffinityNet training example (``voc12/data.py VOC12AffDataset`` with the transforms of
    ``train_aff_voc.py``).

    Args:
      image: RGB PIL image at native resolution.
      scores: (H, W, 2(K+1)) la ⊕ ha CRF scores (:func:`stack_crf_scores`).

    Returns:
      image (crop, crop, 3) float32 normalised (black padding), and (bg_pos, fg_pos, neg) float32
      (34, P) pair labels of the (crop/8)² label grid.
    """
    crop = params.crop.crop_size
    if crop % 8:
        raise ValueError(f"AffinityNet crops must be a multiple of 8, got {crop}")
    if params.jitter is not None:
        image = color_jitter(image, params.jitter)
    pixels = np.asarray(image)
    if pixels.shape[:2] != scores.shape[:2]:
        raise ValueError(
            f"CRF scores are {scores.shape[1]}x{scores.shape[0]} but the image is "
            f"{pixels.shape[1]}x{pixels.shape[0]} (width x height)"
        )
    joint = np.concatenate([pixels.astype(np.float32), scores.astype(np.float32)], axis=-1)
    joint = crop_and_pad(joint, params.crop, 0.0, dtype=np.float32)
    normalised = normalize_image_float32(joint[..., :3])
    pooled_input = joint[..., 3:]
    if params.flip:
        normalised = normalised[:, ::-1]
        pooled_input = pooled_input[:, ::-1]
    pooled = block_mean(np.ascontiguousarray(pooled_input), 8)
    label = affinity_crop_labels(pooled)
    return np.ascontiguousarray(normalised), extract_affinity_labels(label, radius)


# --------------------------------------------------------------------------------------------------
# Segmentation training (train_final_voc.py, lib/datasets/BaseDataset transform "weak")


@dataclasses.dataclass(frozen=True)
class SegTrainParams:
    hsv_delta: tuple[int, int, int] | None
    flip: bool
    scale: float | None
    scaled_hw: tuple[int, int]  # (height, width) after scaling: what the crop was drawn for
    crop: CropParams


def random_hsv(image: np.ndarray, delta: tuple[int, int, int]) -> np.ndarray:
    """OpenCV uint8 HSV shift (``RandomHSV``): H = (H + dh) mod 180, S and V clipped to [0, 255]."""
    import cv2

    hsv = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2HSV).astype(np.int32)
    h = (hsv[..., 0] + delta[0]) % 180
    s = np.clip(hsv[..., 1] + delta[1], 0, 255)
    v = np.clip(hsv[..., 2] + delta[2], 0, 255)
    shifted = np.stack([h, s, v], axis=-1).astype(np.uint8)
    return cv2.cvtColor(shifted, cv2.COLOR_HSV2RGB)


def random_scale(image: np.ndarray, label: np.ndarray, scale: float):
    """``cv2.resize(fx=fy=scale)``: INTER_CUBIC for the image, INTER_NEAREST for the label."""
    import cv2

    image = cv2.resize(
        np.ascontiguousarray(image), None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC
    )
    label = cv2.resize(
        np.ascontiguousarray(label), None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST
    )
    return image, label


def scaled_size_cv2(height: int, width: int, scale: float) -> tuple[int, int]:
    """OpenCV's output size for fx = fy = scale: (round(H·s), round(W·s)), half to even."""
    return int(np.rint(height * scale)), int(np.rint(width * scale))


def sample_seg_train_params(
    rng: np.random.Generator,
    height: int,
    width: int,
    *,
    crop_size: int = 448,
    hsv_range=(10, 10, 10),
    flip_prob: float = 0.5,
    scale_range=(0.5, 1.5),
) -> SegTrainParams:
    """HSV deltas uniform integers in [−r, r], flip with ``flip_prob``, scale U[lo, hi), then crop
    offsets for the scaled size."""
    hsv = None
    if hsv_range is not None and any(int(r) > 0 for r in hsv_range):
        hsv = tuple(int(rng.integers(-int(r), int(r) + 1)) for r in hsv_range)
    flip = bool(rng.random() < flip_prob)
    scale = None
    if scale_range is not None:
        lo, hi = (float(v) for v in scale_range)
        if not 0 < lo <= hi:
            raise ValueError(f"scale_range must be (lo, hi) with 0 < lo <= hi, got {scale_range}")
        scale = float(rng.random() * (hi - lo) + lo)
    h, w = scaled_size_cv2(height, width, scale) if scale is not None else (height, width)
    return SegTrainParams(hsv, flip, scale, (h, w), sample_crop(rng, h, w, crop_size))


def seg_train_transform(image: np.ndarray, label: np.ndarray, params: SegTrainParams):
    """(H, W, 3) uint8 RGB and (H, W) uint8 label -> (crop, crop, 3) float32 normalised image
    (padding 0) and (crop, crop) int32 label (padding 255)."""
    if image.shape[:2] != label.shape[:2]:
        raise ValueError(
            f"label shape {label.shape[:2]} differs from image shape {image.shape[:2]}"
        )
    if params.hsv_delta is not None:
        image = random_hsv(image, params.hsv_delta)
    if params.flip:
        image, label = image[:, ::-1], label[:, ::-1]
    if params.scale is not None:
        image, label = random_scale(image, label, params.scale)
    if tuple(image.shape[:2]) != params.scaled_hw:
        raise RuntimeError(
            f"scaled image is {image.shape[:2]}, but the crop was drawn for {params.scaled_hw}"
        )
    normalised = normalize_image_float32(image)
    out_image = crop_and_pad(normalised, params.crop, 0.0, dtype=np.float32)
    out_label = crop_and_pad(np.asarray(label), params.crop, IGNORE_LABEL, dtype=np.int32)
    return out_image, out_label
