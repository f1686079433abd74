"""torchvision's ``ColorJitter`` on PIL images, reproduced byte for byte and faster.

The reference's CAM and AffinityNet training (``voc12/data.py VOC12ClsDataset`` and
``VOC12AffDataset``, built in ``train_cam_voc.py`` and ``train_aff_voc.py``) jitter brightness,
contrast, saturation and hue with ``torchvision.transforms.ColorJitter(0.3, 0.3, 0.3, 0.1)`` on
the PIL image. As everywhere in :mod:`hfpl_jax.data`, the random draw and its application are
separate: :func:`sample_color_jitter` draws a :class:`ColorJitterParams` from a NumPy
``Generator``, :func:`color_jitter` applies it (optionally to a window only, for the crop that
follows). The hue step is torchvision's round trip through PIL's 8-bit "HSV" mode, replaced by
table lookups (:func:`rgb_to_hsv_pil`, :func:`hsv_to_rgb_pil`) that give PIL's bytes on every input.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
from PIL import Image, ImageEnhance, ImageStat

__all__ = [
    "ColorJitterParams",
    "adjust_hue",
    "color_jitter",
    "hsv_to_rgb_pil",
    "rgb_to_hsv_pil",
    "sample_color_jitter",
]


# --------------------------------------------------------------------------------------------------
# The draw


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


# --------------------------------------------------------------------------------------------------
# Applying a draw


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
