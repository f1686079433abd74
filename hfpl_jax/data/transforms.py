"""Host-side augmentations that reproduce the reference's, pixel for pixel where it matters.

Every random transform is split in two: ``sample_*`` draws the parameters from a NumPy
``Generator`` (one per example, derived from (seed, epoch, index) by the input pipeline), and a
pure function applies them, to the image and its mask together. The reference drew the same
parameters from Python's ``random`` and torch's RNG; those streams cannot be replayed, but the
distributions and the deterministic maths are the reference's:

- CAM training (spec §3.3): :func:`resize_long` (PIL bicubic, Python rounding),
  horizontal flip, :func:`color_jitter` (torchvision ``ColorJitter`` semantics on PIL images),
  ImageNet normalisation (``hfpl_jax.image_ops.normalize_image``: float64 maths, one float32
  cast) and :func:`crop_and_pad` *after* normalisation (padding 0 = the mean colour).
- CAM inference (§4): :func:`msf_cam_inputs`, PIL bicubic at (round(W·s), round(H·s)), each scale
  followed by its W-flip.
- AffinityNet training (§7.2): colour jitter, crop of image ⊕ CRF scores *before* normalisation
  (black padding, score 0), float32 normalisation, joint flip, 8×8 average pooling of the scores,
  :func:`affinity_crop_labels` and :func:`extract_affinity_labels`.
- Segmentation training (§8.3): :func:`random_hsv`, flip, :func:`random_scale` (OpenCV
  INTER_CUBIC / INTER_NEAREST), float32 :func:`normalize_float32`, crop padded 0 / 255; inference
  (§8.5): :func:`msf_seg_inputs`.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
from PIL import Image, ImageEnhance, ImageStat

from hfpl_jax.affinity_pairs import search_offsets as affinity_offsets
from hfpl_jax.image_ops import IMAGENET_MEAN, IMAGENET_STD, normalization_table

IGNORE_LABEL = 255

# --------------------------------------------------------------------------------------------------
# Normalisation


# The float32 tables of hfpl_jax.image_ops (float64 maths, one cast), one per channel, as a
# (256, 1, 3) lookup table for ``cv2.LUT``: a pure lookup (so the same bytes), about twice as
# fast as NumPy's per-channel ``np.take``.
_NORMALIZE_LUT = np.ascontiguousarray(normalization_table()[:, None, :])


def normalize_uint8(image: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """(H, W, 3) uint8 -> float32 ``float32((x/255 - mean)/std)`` computed in float64 (the
    reference's ``network.resnet38d.Normalize`` on a uint8 array; CAM training and inference).

    Bit-identical to ``hfpl_jax.image_ops.normalize_image``; ``out`` (float32, same shape, may be a
    view) receives the result in place.
    """
    import cv2

    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected (H, W, 3) uint8, got {image.dtype} {image.shape}")
    if out is None:
        return cv2.LUT(image, _NORMALIZE_LUT)
    # OpenCV writes into ``out`` when its layout allows and returns a new array otherwise.
    result = cv2.LUT(image, _NORMALIZE_LUT, dst=out)
    if not np.shares_memory(result, out):
        out[...] = result
    return out


def normalize_float32(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) values in [0, 255] -> float32 ``((x / 255) - mean) / std`` with every operation
    rounded to float32.

    This is what the reference computes when the input is already float32: ``ImageNorm`` in the
    segmentation stage, and ``Normalize`` on the cropped float32 array in AffinityNet training
    (NumPy keeps float32 when a float32 array meets Python float scalars).
    """
    x = np.asarray(image, dtype=np.float32)
    mean = np.asarray(IMAGENET_MEAN, np.float32)
    std = np.asarray(IMAGENET_STD, np.float32)
    return ((x / np.float32(255.0)) - mean) / std


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
# Colour jitter (torchvision ColorJitter on PIL images)


@dataclasses.dataclass(frozen=True)
class ColorJitterParams:
    """One draw of torchvision's ``ColorJitter.get_params``.

    order: permutation of (0 brightness, 1 contrast, 2 saturation, 3 hue); a factor of None skips
    its operation (jitter strength 0), as torchvision does.
    """

    order: tuple[int, ...]
    brightness: float | None
    contrast: float | None
    saturation: float | None
    hue: float | None


def sample_color_jitter(rng: np.random.Generator, strengths) -> ColorJitterParams:
    """Draws ColorJitter(b, c, s, h) parameters: factors U[max(0, 1 − x), 1 + x] for b, c, s,
    hue shift U[−h, h], and a uniformly random order of the four operations."""
    brightness, contrast, saturation, hue = (float(v) for v in strengths)
    for name, value in (
        ("brightness", brightness),
        ("contrast", contrast),
        ("saturation", saturation),
    ):
        if value < 0:
            raise ValueError(f"color jitter {name} must be >= 0, got {value}")
    if not 0 <= hue <= 0.5:
        raise ValueError(f"color jitter hue must lie in [0, 0.5], got {hue}")
    order = tuple(int(i) for i in rng.permutation(4))

    def factor(strength):
        return None if strength == 0 else float(rng.uniform(max(0.0, 1 - strength), 1 + strength))

    b, c, s = factor(brightness), factor(contrast), factor(saturation)
    h = None if hue == 0 else float(rng.uniform(-hue, hue))
    return ColorJitterParams(order, b, c, s, h)


# --------------------------------------------------------------------------------------------------
# PIL's 8-bit HSV conversions, as table lookups
#
# torchvision's hue jitter is a round trip through PIL's "HSV" mode, whose C conversions cost
# ~80 ns a pixel, more than the rest of the CAM pipeline together. Their arithmetic, replicated
# here (and checked against PIL on all 2^24 inputs in both directions by the tests):
#
#   RGB -> HSV (per pixel; max, min of r, g, b; cr = max - min; all float32 unless noted):
#     v = max; cr == 0: h = s = 0. Else s = int(double(cr / max) * 255.0);
#     rc, gc, bc = (max - r) / cr, (max - g) / cr, (max - b) / cr;
#     h = bc - gc if r == max, else float32(2.0 + rc - bc) if g == max, else float32(4.0 + gc - rc)
#     (those two sums in double); h = float32(fmod(double(h) / 6.0 + 1.0, 1.0));
#     h = clip(int(double(h) * 255.0), 0, 255).
#   HSV -> RGB: x = h * 6.0 / 255.0 (double), i = floor(x), f = float32(x - i),
#     fs = float32(s / 255.0); p, q, t = round-half-up of v * (1 - fs), v * (1 - fs f),
#     v * (1 - fs (1 - f)) (double); (R, G, B) by sextant i % 6: (v, t, p), (q, v, p), (p, v, t),
#     (p, q, v), (t, p, v), (v, p, q). (s = 0 gives p = q = t = v, the grey case.)
#
# Only differences from max enter the hue, and one of the two non-max channels is the min (its
# difference is cr), so h is a function of (which channel is max, which is min, cr, the other
# difference): six 256 x 256 tables. s is a table of (cr, max) and p of (s, v). Of q and t, each
# sextant uses one (the middle value; the others are v, the max, and p, the min), whose factor is
# a table of (h, s); rounded to float32 it still gives PIL's values on every input.

# Channels (u, w) of each max case in the formula's order, and its offset:
# r: bc - gc, g: 2 + rc - bc, b: 4 + gc - rc.
_HUE_CASES = ((2, 1, 0.0), (0, 2, 2.0), (1, 0, 4.0))
# (R, G, B) per sextant as 0 = v (the max), 1 = the middle value, 2 = p (the min): sextants
# 0..5 give (v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q), so the middle value
# is t in even sextants and q in odd ones.
_SEXTANT_ROLES = np.array(
    [(0, 1, 2), (1, 0, 2), (2, 0, 1), (2, 1, 0), (1, 2, 0), (0, 2, 1)], np.uint8
).T.copy()  # [channel, sextant]


def _pil_hue(cr: np.ndarray, d_u: np.ndarray, d_w: np.ndarray, offset: float) -> np.ndarray:
    """PIL's 8-bit hue from ``cr`` > 0 and the differences ``max - u``, ``max - w`` (see above)."""
    cr32 = cr.astype(np.float32)
    a_u = d_u.astype(np.float32) / cr32
    a_w = d_w.astype(np.float32) / cr32
    if offset == 0.0:
        h = a_u - a_w
    else:
        h = (offset + a_u.astype(np.float64) - a_w).astype(np.float32)
    h = np.fmod(h.astype(np.float64) / 6.0 + 1.0, 1.0).astype(np.float32)
    return np.clip((h.astype(np.float64) * 255.0).astype(np.int64), 0, 255).astype(np.uint8)


@functools.cache
def _hsv_tables() -> dict[str, np.ndarray]:
    levels = np.arange(256)
    cr, other = np.meshgrid(levels, levels, indexing="ij")  # [cr, other]
    valid = (cr > 0) & (other <= cr)
    safe_cr = np.where(valid, cr, 1)
    safe_other = np.where(valid, other, 0)
    hue = np.zeros((6, 256, 256), np.uint8)  # [2 * case + (w is the min), cr, other]
    for case, (_, _, offset) in enumerate(_HUE_CASES):
        hue[2 * case] = np.where(valid, _pil_hue(safe_cr, safe_cr, safe_other, offset), 0)
        hue[2 * case + 1] = np.where(valid, _pil_hue(safe_cr, safe_other, safe_cr, offset), 0)
    maxc = np.maximum(levels, 1)[None, :].astype(np.float32)
    sat = ((levels[:, None].astype(np.float32) / maxc).astype(np.float64) * 255.0).astype(np.int64)
    sat = np.where(levels[:, None] <= levels[None, :], np.clip(sat, 0, 255), 0)  # [cr, max]
    x = levels * 6.0 / 255.0
    sextant = np.floor(x).astype(np.int64) % 6
    f = (x - np.floor(x)).astype(np.float32).astype(np.float64)  # [h]
    fs = (levels / 255.0).astype(np.float32).astype(np.float64)  # [s]
    p = np.floor(levels[None, :] * (1.0 - fs[:, None]) + 0.5)  # [s, v]
    odd = (sextant % 2 == 1)[:, None]
    middle = np.where(odd, 1.0 - fs[None, :] * f[:, None], 1.0 - fs[None, :] * (1.0 - f[:, None]))
    # Table of each pixel from the bits r==max | g==max << 1 | r==min << 2 | g==min << 3 |
    # b==min << 4: the max case (r first, then g, then b, PIL's order of tests) and whether its
    # w channel (not u) is the min.
    hue_table = np.zeros(256, np.uint8)  # 32 used; cv2.LUT takes 256-entry tables
    for bits in range(32):
        is_max = (bits & 1, bits >> 1 & 1)
        is_min = (bits >> 2 & 1, bits >> 3 & 1, bits >> 4 & 1)
        case = 0 if is_max[0] else 1 if is_max[1] else 2
        u, _, _ = _HUE_CASES[case]
        hue_table[bits] = 2 * case + (not is_min[u])
    return {
        "hue": hue.reshape(-1),
        "hue_table": hue_table,
        "sat": sat.astype(np.uint8).reshape(-1),
        "roles": np.ascontiguousarray(_SEXTANT_ROLES[:, sextant]),  # [channel, h]
        "p": np.clip(p, 0, 255).astype(np.uint8).reshape(-1),
        # [h, s]: (1 - fs f) or (1 - fs (1 - f)), rounded to float32
        "middle_factor": middle.astype(np.float32).reshape(-1),
    }


def _rgb_planes_to_hsv(r, g, b):
    """Contiguous uint8 planes -> PIL's (h, s, v) planes (see the notes above)."""
    import cv2  # cv2.LUT: 256-entry lookups, several times faster than np.take on uint8

    tables = _hsv_tables()
    maxc = np.maximum(np.maximum(r, g), b)
    minc = np.minimum(np.minimum(r, g), b)
    cr = maxc - minc
    # The difference that is not cr is max - (the middle value), the middle being the sum minus
    # max and min; which table applies follows from which channels are the max and the min.
    middle = (r.astype(np.int16) + g + b - maxc - minc).astype(np.uint8)
    key = (r == maxc).view(np.uint8) | ((g == maxc).view(np.uint8) << 1)
    key |= ((r == minc).view(np.uint8) << 2) | ((g == minc).view(np.uint8) << 3)
    key |= (b == minc).view(np.uint8) << 4
    table = cv2.LUT(key, tables["hue_table"]).astype(np.int32)
    cr_index = cr.astype(np.int32) << 8
    hue = np.take(tables["hue"], (table << 16) | cr_index | (maxc - middle))
    sat = np.take(tables["sat"], cr_index | maxc)
    return hue, sat, maxc


def _hsv_planes_to_rgb(h, s, v):
    """PIL's (h, s, v) uint8 planes -> (R, G, B) planes (see the notes above)."""
    import cv2

    tables = _hsv_tables()
    s_index = s.astype(np.int32)
    low = np.take(tables["p"], (s_index << 8) | v)
    factor = np.take(tables["middle_factor"], (h.astype(np.int32) << 8) | s_index)
    # Round half up of a value >= 0: truncate after adding 0.5. float32 gives PIL's double result
    # on every (h, s, v) (the tests check all 2^24).
    middle = (v.astype(np.float32) * factor + np.float32(0.5)).astype(np.uint8)
    planes = []
    for roles in tables["roles"]:  # role of v / middle / low in each output channel, by h
        role = cv2.LUT(h, roles)
        # Select by bit masks (0x00 / 0xFF): cheaper than nested np.where on uint8 planes.
        pick_v = np.negative((role == 0).view(np.uint8))
        pick_middle = np.negative((role == 1).view(np.uint8))
        pick_low = np.negative((role == 2).view(np.uint8))
        planes.append((v & pick_v) | (middle & pick_middle) | (low & pick_low))
    return planes


def _planes(array: np.ndarray):
    flat = array.reshape(-1, 3)
    return [np.ascontiguousarray(flat[:, c]) for c in range(3)]


def _interleave(planes, shape) -> np.ndarray:
    return np.stack(planes, axis=-1).reshape(shape)


def rgb_to_hsv_pil(rgb: np.ndarray) -> np.ndarray:
    """PIL's ``Image.convert("HSV")`` of a ``(..., 3)`` uint8 RGB array, bit for bit (tables)."""
    return _interleave(_rgb_planes_to_hsv(*_planes(rgb)), rgb.shape)


def hsv_to_rgb_pil(hsv: np.ndarray) -> np.ndarray:
    """PIL's ``convert("RGB")`` of a ``(..., 3)`` uint8 "HSV" array, bit for bit (tables)."""
    return _interleave(_hsv_planes_to_rgb(*_planes(hsv)), hsv.shape)


def adjust_hue(image: Image.Image, hue_factor: float) -> Image.Image:
    """torchvision's PIL ``adjust_hue``: shift PIL's 8-bit HSV hue by uint8(hue_factor · 255),
    wrapping around, and convert back (RGB images through :func:`rgb_to_hsv_pil` /
    :func:`hsv_to_rgb_pil`, the same bytes as PIL's conversions; other modes through PIL).

    The float -> uint8 cast of a negative shift truncates toward zero and wraps modulo 256 (what the
    reference's ``np.uint8(hue_factor * 255)`` does on x86), e.g. −0.05 -> int(−12.75) = −12 -> 244.
    """
    if not -0.5 <= hue_factor <= 0.5:
        raise ValueError(f"hue_factor must lie in [-0.5, 0.5], got {hue_factor}")
    if image.mode in {"L", "1", "I", "F"}:
        return image
    shift = np.uint8(int(hue_factor * 255) % 256)
    if image.mode == "RGB":
        rgb = np.asarray(image)
        h, s, v = _rgb_planes_to_hsv(*_planes(rgb))
        h += shift  # uint8 addition wraps around the hue circle
        return Image.fromarray(_interleave(_hsv_planes_to_rgb(h, s, v), rgb.shape), "RGB")
    mode = image.mode
    h, s, v = image.convert("HSV").split()
    np_h = np.array(h, dtype=np.uint8)
    np_h += shift
    h = Image.fromarray(np_h, "L")
    return Image.merge("HSV", (h, s, v)).convert(mode)


def _contrast(image: Image.Image, factor: float, grey_mean: int) -> Image.Image:
    """``ImageEnhance.Contrast(whole).enhance(factor)`` restricted to ``image`` (a window of the
    whole image), given the whole image's ``int(mean(L) + 0.5)``: a blend with that grey level."""
    degenerate = Image.new("L", image.size, grey_mean)
    if image.mode != "L":
        degenerate = degenerate.convert(image.mode)
    return Image.blend(degenerate, image, factor)


def _grey_mean(image: Image.Image) -> int:
    """``ImageEnhance.Contrast``'s grey level: ``int(mean of image.convert("L") + 0.5)``."""
    grey = image if image.mode == "L" else image.convert("L")
    return int(ImageStat.Stat(grey).mean[0] + 0.5)


def color_jitter(
    image: Image.Image, params: ColorJitterParams, box: tuple[int, int, int, int] | None = None
) -> Image.Image:
    """Applies a ColorJitter draw: brightness ``ImageEnhance.Brightness``, contrast
    ``ImageEnhance.Contrast`` (blend with the mean grey level), saturation ``ImageEnhance.Color``,
    hue :func:`adjust_hue`, in ``params.order`` (torchvision's ``functional_pil``).

    With ``box = (left, top, right, bottom)`` it returns ``color_jitter(image, params).crop(box)``,
    bit for bit, with less work: every operation is pointwise except contrast, whose grey mean is
    taken over the whole image as it stands at contrast's place in the order; so only the
    operations before contrast run on the whole image, the rest on the window.
    """
    ops = [op for op in params.order if _jitter_factor(params, op) is not None]
    whole = ops.index(1) if 1 in ops else 0  # operations that need the whole image
    for op in ops[:whole]:
        image = _jitter_op(image, op, params)
    grey_mean = _grey_mean(image) if 1 in ops else None
    if box is not None:
        image = image.crop(box)
    for op in ops[whole:]:
        if op == 1:
            image = _contrast(image, params.contrast, grey_mean)
        else:
            image = _jitter_op(image, op, params)
    return image


def _jitter_factor(params: ColorJitterParams, op: int) -> float | None:
    return (params.brightness, params.contrast, params.saturation, params.hue)[op]


def _jitter_op(image: Image.Image, op: int, params: ColorJitterParams) -> Image.Image:
    """A pointwise jitter operation: 0 brightness, 2 saturation, 3 hue (contrast: ``_contrast``)."""
    if op == 0:
        return ImageEnhance.Brightness(image).enhance(params.brightness)
    if op == 2:
        return ImageEnhance.Color(image).enhance(params.saturation)
    return adjust_hue(image, params.hue)


# --------------------------------------------------------------------------------------------------
# Random crop with padding (imutils.RandomCrop / lib RandomCrop)


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
# CAM training (spec §3.3)


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
    """RGB PIL image -> (crop, crop, 3) float32 normalised training input (spec §3.3 steps 2–7).

    Normalisation is pointwise and the crop pads with 0 in normalised space, so cropping the uint8
    image first and normalising only the window gives the same array with less work; the colour
    jitter, too, runs on the window where it can (see :func:`color_jitter`).
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
    normalize_uint8(
        window, out=out[crop.cont_top : crop.cont_top + ch, crop.cont_left : crop.cont_left + cw]
    )
    return out


# --------------------------------------------------------------------------------------------------
# Multi-scale + flip inference inputs (spec §4 and §8.5)


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
        scaled = normalize_uint8(np.asarray(image.resize(size, resample=Image.BICUBIC)))
        inputs.append(scaled)
        inputs.append(np.ascontiguousarray(scaled[:, ::-1]))
    return inputs


def msf_seg_inputs(
    image: np.ndarray, scales=(0.5, 0.75, 1.0, 1.25, 1.5, 1.75), flip: bool = True
) -> list[np.ndarray]:
    """Final-model evaluation inputs (spec §8.5): ``ImageNorm`` (float32) on the original uint8
    RGB image, then ``cv2.resize(fx=fy=s, INTER_CUBIC)`` of the normalised float image per scale,
    each followed by its W-flip when ``flip``."""
    import cv2

    normalised = normalize_float32(image)
    inputs = []
    for scale in scales:
        scaled = cv2.resize(normalised, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
        inputs.append(scaled)
        if flip:
            inputs.append(np.ascontiguousarray(scaled[:, ::-1]))
    return inputs


# --------------------------------------------------------------------------------------------------
# AffinityNet training (spec §7.2)


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
    """One AffinityNet training example (spec §7.2).

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
    normalised = normalize_float32(joint[..., :3])
    pooled_input = joint[..., 3:]
    if params.flip:
        normalised = normalised[:, ::-1]
        pooled_input = pooled_input[:, ::-1]
    pooled = block_mean(np.ascontiguousarray(pooled_input), 8)
    label = affinity_crop_labels(pooled)
    return np.ascontiguousarray(normalised), extract_affinity_labels(label, radius)


# --------------------------------------------------------------------------------------------------
# Segmentation training (spec §8.3)


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
    normalised = normalize_float32(image)
    out_image = crop_and_pad(normalised, params.crop, 0.0, dtype=np.float32)
    out_label = crop_and_pad(np.asarray(label), params.crop, IGNORE_LABEL, dtype=np.int32)
    return out_image, out_label
