"""Multi-scale + flip CAM inference, as the reference's ``infer_cam_voc.py``/``infer_cam_coco.py``.

For an image of size ``(H, W)`` with image-level labels ``y`` (``K`` classes) and scales
``s in (0.5, 1.0, 1.5, 2.0)``, the inputs are ``x_s`` (PIL bicubic to ``(round(H*s), round(W*s))``,
``hfpl_jax.data.transforms.msf_cam_inputs``) and their W-flips, in the order s0, s0-flip, s1, ....
For input ``i`` the network's map ``m_i`` (SEAM: the PCM-refined ``cam_rv``; channels 1..K) is

1. upsampled from the network's resolution ``(h, w)`` to the input size ``(h_s, w_s)`` with
   bilinear ``align_corners=True`` (the model's own upsampling),
2. resized to ``(H, W)`` with bilinear ``align_corners=False`` (the script's ``F.upsample``),
3. multiplied by ``y`` (absent classes become 0) and, for a flipped input, flipped back along W;

``S = m_0 + m_1 + ... + m_7`` in that order, in float32. Per class, over the H x W pixels:
``S <- max(S, 0)``; ``lo = min S``, ``hi = max S``; ``S[S < lo + 1e-5] = 0``;
``cam = (S - lo - 1e-5) / (hi - lo + 1e-5)``. Pixels that were below ``lo + 1e-5`` therefore end
at ``-(lo + 1e-5) / (hi - lo + 1e-5)``: about ``-1e-5 / hi`` when some pixel sums to 0, clearly
negative when the 8-map sum is positive everywhere; absent classes are -1 (and are not saved).

The two resizes are evaluated lazily (:func:`two_stage_resize`): stage 1 only at the rows and
columns that stage 2 reads, each with PyTorch's bilinear formula
``h0 * (w0 * x00 + w1 * x01) + h1 * (w0 * x10 + w1 * x11)``, so the result is the two-stage resize
value for value, without a dense ``(h_s, w_s)`` map or matrix products.

The CRF inputs for AffinityNet (``_crf_with_alpha``): ``v`` = the saved CAMs stacked in ascending
class order ``(K', H, W)``, ``P = concat(bg, v)`` with ``bg = (1 - max_k v) ** alpha`` in float32,
for ``alpha in (1, 24)``, through ``hfpl_jax.inference.crf.dense_crf`` (pydensecrf's mean field,
10 iterations, ``tool/imutils.crf_inference``'s parameters). An image without labels gets the
marginals ``{0: ones}`` (``infer_cam_coco.py``; the VOC script would fail on it).

Files (:mod:`hfpl_jax.inference.cam_files`; read them with :func:`read_cam_file`): one
``<out>/<name>.npz`` per image (compressed, float32) holding ``classes`` (int32 ``(K',)``, the
labelled foreground classes, 0-based, ascending), ``cams`` (``(K', H, W)``), ``labels`` and
``scores`` (``(K,)``: the labels used and the classifier's mean image score), ``crf_alphas``
(``(A,)``) and ``crf`` (``(A, K' + 1, H, W)``: channel 0 background, channel ``1 + k`` class
``classes[k]``); optionally the reference's ``.npy`` dicts (``cam/<name>.npy``,
``crf_<alpha:.1f>/<name>.npy``). The command is ``hfpl-jax infer-cam``
(:mod:`hfpl_jax.inference.cam_run`).

Images of one size share one compiled program; a batch holds images of one size, split over the
devices of a data-parallel mesh (:class:`CamInferencer`).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from hfpl_jax.image_ops import interpolation_matrix, linear_taps
from hfpl_jax.inference.cam_files import read_cam_file

DEFAULT_SCALES = (0.5, 1.0, 1.5, 2.0)
DEFAULT_CRF_ALPHAS = (1.0, 24.0)
LABEL_EPS = 1e-5  # the scripts keep class c when label[c] > 1e-5
CAM_SOURCES = ("cam_rv", "cam")
GAP_SOURCES = ("cam", "logits")

__all__ = [
    "CAM_SOURCES",
    "DEFAULT_CRF_ALPHAS",
    "DEFAULT_SCALES",
    "CamInferencer",
    "CrfInferencer",
    "LabelRule",
    "crf_probabilities",
    "fuse_network_maps",
    "image_scores",
    "input_sizes",
    "network_maps",
    "normalize_cam_sum",
    "predicted_labels",
    "read_cam_file",
    "two_stage_resize",
]


# --------------------------------------------------------------------------------------------------
# Resizing: PyTorch's bilinear kernel on gathered taps


class _Taps(NamedTuple):
    """One axis of a bilinear resize: ``out[i] = w0[i] * x[i0[i]] + w1[i] * x[i1[i]]``, or a
    plain gather ``x[i0]`` when ``w0`` is None (the identity taps of equal sizes)."""

    i0: np.ndarray
    i1: np.ndarray | None
    w0: np.ndarray | None
    w1: np.ndarray | None

    def take(self, index: np.ndarray) -> _Taps:
        if self.w0 is None:
            return _Taps(self.i0[index], None, None, None)
        return _Taps(self.i0[index], self.i1[index], self.w0[index], self.w1[index])


def _taps(n_in: int, n_out: int, align_corners: bool) -> _Taps:
    if n_in == n_out:  # PyTorch copies; weights (1, 0) would give the same finite values
        return _Taps(np.arange(n_out), None, None, None)
    return _Taps(*linear_taps(n_in, n_out, align_corners=align_corners))


def _bilinear(x, rows: _Taps, cols: _Taps, h_axis: int = 1):
    """``x`` resized on axes (h_axis, h_axis + 1) with PyTorch's formula (W first, then H)."""
    w_axis = h_axis + 1
    shape = [1] * x.ndim

    def weight(values, axis):
        shape_axis = list(shape)
        shape_axis[axis] = len(values)
        return jnp.asarray(values, x.dtype).reshape(shape_axis)

    def along_w(t):
        if cols.w0 is None:
            return jnp.take(t, cols.i0, axis=w_axis)
        return weight(cols.w0, w_axis) * jnp.take(t, cols.i0, axis=w_axis) + weight(
            cols.w1, w_axis
        ) * jnp.take(t, cols.i1, axis=w_axis)

    if rows.w0 is None:
        return along_w(jnp.take(x, rows.i0, axis=h_axis))
    top = along_w(jnp.take(x, rows.i0, axis=h_axis))
    bottom = along_w(jnp.take(x, rows.i1, axis=h_axis))
    return weight(rows.w0, h_axis) * top + weight(rows.w1, h_axis) * bottom


def _lazy_stages(n_net: int, n_input: int, n_out: int) -> tuple[_Taps, _Taps]:
    """Stage 1 (AC=True, n_net -> n_input) restricted to the rows stage 2 (AC=False,
    n_input -> n_out) reads, and stage 2's taps re-indexed into those rows."""
    first = _taps(n_net, n_input, align_corners=True)
    second = _taps(n_input, n_out, align_corners=False)
    read = second.i0 if second.w0 is None else np.concatenate([second.i0, second.i1])
    needed = np.unique(read)
    position = np.searchsorted(needed, np.arange(n_input)).clip(0, len(needed) - 1)
    if second.w0 is None:
        second = _Taps(position[second.i0], None, None, None)
    else:
        second = _Taps(position[second.i0], position[second.i1], second.w0, second.w1)
    return first.take(needed), second


def two_stage_resize(x, input_hw: Sequence[int], out_hw: Sequence[int]):
    """The reference's two resizes of a network-resolution map, evaluated lazily.

    Args:
      x: ``(N, h, w, C)`` float map at the network's resolution.
      input_hw: ``(h_s, w_s)``, the network input's size (stage 1: bilinear, align_corners=True,
        the model's upsampling).
      out_hw: ``(H, W)``, the original image size (stage 2: bilinear, align_corners=False).

    Returns:
      ``(N, H, W, C)`` = ``resize_AC=False(resize_AC=True(x, input_hw), out_hw)``, each stage with
      PyTorch's ``h0 * (w0 * x00 + w1 * x01) + h1 * (w0 * x10 + w1 * x11)`` and its float32 taps
      (``image_ops.linear_taps``); stage 1 is computed only where stage 2 reads it.
    """
    rows1, rows2 = _lazy_stages(x.shape[1], int(input_hw[0]), int(out_hw[0]))
    cols1, cols2 = _lazy_stages(x.shape[2], int(input_hw[1]), int(out_hw[1]))
    return _bilinear(_bilinear(x, rows1, cols1), rows2, cols2)


def resize_bilinear_torch(x, out_hw: Sequence[int], *, align_corners: bool):
    """One bilinear resize of ``(N, H, W, C)`` with PyTorch's per-pixel formula (W first, then H);
    :func:`two_stage_resize` equals two of these in a row."""
    rows = _taps(x.shape[1], int(out_hw[0]), align_corners)
    cols = _taps(x.shape[2], int(out_hw[1]), align_corners)
    return _bilinear(x, rows, cols)


# --------------------------------------------------------------------------------------------------
# Fusion and normalisation


def normalize_cam_sum(sum_cam):
    """The scripts' normalisation of the summed maps ``(N, H, W, K)`` per (image, class), float32.

    ``S = max(S, 0)``; ``lo, hi = min S, max S`` over H x W; ``S[S < lo + 1e-5] = 0``;
    ``out = (S - lo - 1e-5) / (hi - lo + 1e-5)`` (so those pixels end negative, absent classes at
    -1), with the scripts' operation order.
    """
    s = jnp.where(sum_cam < 0, 0.0, sum_cam).astype(jnp.float32)
    hi = jnp.max(s, axis=(1, 2), keepdims=True)
    lo = jnp.min(s, axis=(1, 2), keepdims=True)
    s = jnp.where(s < lo + jnp.float32(1e-5), 0.0, s)
    # XLA rewrites x / broadcast(d) as x * broadcast(1 / d), one rounding more than NumPy's
    # division; the barrier keeps a true division by the broadcast denominator.
    denominator = jax.lax.optimization_barrier(
        jnp.broadcast_to(hi - lo + jnp.float32(1e-5), s.shape)
    )
    return (s - lo - jnp.float32(1e-5)) / denominator


def input_sizes(image_hw: Sequence[int], scales: Sequence[float]) -> list[tuple[int, int]]:
    """``(round(H * s), round(W * s))`` per scale, Python's round (half to even), as
    ``VOC12ClsDatasetMSF`` sizes its PIL resizes."""
    height, width = (int(v) for v in image_hw)
    return [(round(height * s), round(width * s)) for s in scales]


def fuse_network_maps(maps: Sequence[Any], input_hws, labels, image_hw: Sequence[int]):
    """Multi-scale + flip fusion (module docstring, steps 1-3, the sum and the normalisation).

    Args:
      maps: per input, in the order s0, s0-flip, s1, ..., ``(N, h_i, w_i, K)`` float32 foreground
        maps at the network's resolution.
      input_hws: per input, its size ``(h_s, w_s)`` (the flip has its scale's size).
      labels: ``(N, K)`` float32 image labels.
      image_hw: ``(H, W)``.

    Returns:
      ``(N, H, W, K)`` float32 normalised CAMs.
    """
    total = None
    labels = jnp.asarray(labels, jnp.float32)[:, None, None, :]
    for i, (m, hw) in enumerate(zip(maps, input_hws, strict=True)):
        resized = two_stage_resize(m.astype(jnp.float32), hw, image_hw) * labels
        if i % 2 == 1:
            resized = resized[:, :, ::-1]
        total = resized if total is None else total + resized
    return normalize_cam_sum(total)


# --------------------------------------------------------------------------------------------------
# The network's maps and image scores


def network_maps(model, variables, images, *, cam_source: str = "cam_rv"):
    """The map the CAMs come from, at the network's resolution, and the raw logits.

    Args:
      model: a CAM network of ``hfpl_jax.models.build`` (``cam_source="cam_rv"`` needs SEAM).
      images: ``(N, H, W, 3)`` normalised.
      cam_source: "cam_rv" (SEAM's PCM-refined map: ``pixel_correlation(cam_d_norm, f9)``, what
        the reference uses) or "cam" (the classifier's ``logits``, whose AC=True upsampling is the
        model's ``cam``).

    Returns:
      ``(maps, logits)``, each ``(N, h, w, K + 1)`` float32. ``resize_AC=True(maps, (H, W))`` is
      the model's ``cam_rv`` (or ``cam``) output up to float rounding; the model's own upsampled
      outputs go unused and XLA removes them.
    """
    if cam_source not in CAM_SOURCES:
        raise ValueError(f"cam_source must be one of {CAM_SOURCES}, found {cam_source!r}")
    if cam_source == "cam":
        outputs = model.apply(variables, images, train=False)
        return outputs["logits"].astype(jnp.float32), outputs["logits"].astype(jnp.float32)
    from hfpl_jax.models import seam  # noqa: PLC0415

    if not isinstance(model, seam.SEAM):
        raise ValueError(f"cam_source='cam_rv' needs a SEAM model, found {type(model).__name__}")
    outputs, state = model.apply(
        variables,
        images,
        train=False,
        capture_intermediates=lambda module, method: module.name == "f9" and method == "__call__",
        mutable=["intermediates"],
    )
    features = state["intermediates"]["f9"]["__call__"][0]
    logits = outputs["logits"]
    cam_rv = seam.pixel_correlation(seam.normalized_cam_for_pcm(logits), features)
    return cam_rv.astype(jnp.float32), logits.astype(jnp.float32)


def image_scores(logits, input_hw: Sequence[int], gap_source: str = "cam"):
    """The classifier's image scores ``(N, K)`` (foreground logits), pooled as its training was.

    "cam": the mean over ``input_hw`` of the AC=True upsampled logits (SEAM's GAP of ``cam``),
    computed as ``sum_{a,b} u_a v_b logits[a, b] / (h_s w_s)`` with ``u``, ``v`` the column sums of
    the interpolation matrices; "logits": the mean of the network-resolution logits.
    """
    if gap_source not in GAP_SOURCES:
        raise ValueError(f"gap_source must be one of {GAP_SOURCES}, found {gap_source!r}")
    logits = logits[..., 1:].astype(jnp.float32)
    h, w = logits.shape[1:3]
    if gap_source == "logits":
        return jnp.mean(logits, axis=(1, 2))
    weights = [
        interpolation_matrix(n, int(size), align_corners=True, dtype=np.float64).sum(0) / size
        for n, size in ((h, input_hw[0]), (w, input_hw[1]))
    ]
    return jnp.einsum(
        "nhwc,h,w->nc", logits, jnp.asarray(weights[0], jnp.float32),
        jnp.asarray(weights[1], jnp.float32), precision=jax.lax.Precision.HIGHEST,
    )  # fmt: skip


@dataclasses.dataclass(frozen=True)
class LabelRule:
    """How labels are predicted from the classifier (instead of the ground truth).

    A class is present when ``sigmoid(score) > threshold``, ``score`` being its image score
    (:func:`image_scores`) averaged over the 8 inputs; with ``at_least_one``, an image where no
    class passes keeps its highest-scoring class (every VOC/COCO image shows an object).
    """

    threshold: float = 0.5
    at_least_one: bool = True

    def __post_init__(self):
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"label threshold must be in (0, 1), found {self.threshold}")


def predicted_labels(scores, rule: LabelRule):
    """``(N, K)`` mean image scores -> ``(N, K)`` float32 0/1 labels (see :class:`LabelRule`)."""
    present = jax.nn.sigmoid(scores) > rule.threshold
    if rule.at_least_one:
        top = jax.nn.one_hot(jnp.argmax(scores, axis=-1), scores.shape[-1], dtype=bool)
        present = present | (top & ~jnp.any(present, axis=-1, keepdims=True))
    return present.astype(jnp.float32)


# --------------------------------------------------------------------------------------------------
# CRF inputs


def crf_probabilities(cams, alpha: float):
    """``(H, W, K')`` saved CAMs -> ``(H, W, K' + 1)``: ``concat((1 - max_k cams) ** alpha, cams)``
    in float32 (``_crf_with_alpha``); an integer ``alpha`` is applied by repeated multiplication."""
    cams = jnp.asarray(cams, jnp.float32)
    base = 1.0 - jnp.max(cams, axis=-1, keepdims=True)
    alpha = float(alpha)
    background = base ** int(alpha) if alpha.is_integer() else base ** jnp.float32(alpha)
    return jnp.concatenate([background, cams], axis=-1)


# --------------------------------------------------------------------------------------------------
# Jitted, sharded inference over batches of one image size


@dataclasses.dataclass
class CompileStats:
    compiles: int = 0
    seconds: float = 0.0
    shapes: list = dataclasses.field(default_factory=list)


class CamInferencer:
    """Runs :func:`fuse_network_maps` on batches of same-size images over a data-parallel mesh.

    Args:
      model, variables: the CAM network and its ``{"params", "batch_stats"}`` (host or device).
      mesh: a 1-D mesh, axis "data" (default: this process's local devices, so that every process
        runs its own images without talking to the others).
      scales: the inference scales.
      cam_source: see :func:`network_maps`; gap_source: see :func:`image_scores`.
      label_rule: None uses the given (ground-truth) labels; a :class:`LabelRule` predicts them.

    ``__call__(inputs, labels, image_hw)``: ``inputs`` one ``(B, 2, h_s, w_s, 3)`` float32 array
    per scale (the input and its flip), ``labels`` ``(B, K)``; ``B`` a multiple of the mesh size.
    Returns device arrays ``{"cams": (B, H, W, K), "labels": (B, K), "scores": (B, K)}`` without
    waiting for them. One compilation per ``(B, H, W)``, counted in ``compile_stats``.
    """

    def __init__(
        self,
        model,
        variables,
        *,
        mesh: Mesh | None = None,
        scales: Sequence[float] = DEFAULT_SCALES,
        cam_source: str = "cam_rv",
        gap_source: str = "cam",
        label_rule: LabelRule | None = None,
    ):
        if cam_source not in CAM_SOURCES:
            raise ValueError(f"cam_source must be one of {CAM_SOURCES}, found {cam_source!r}")
        if gap_source not in GAP_SOURCES:
            raise ValueError(f"gap_source must be one of {GAP_SOURCES}, found {gap_source!r}")
        self.model = model
        self.mesh = mesh if mesh is not None else local_mesh()
        self.scales = tuple(float(s) for s in scales)
        self.cam_source, self.gap_source, self.label_rule = cam_source, gap_source, label_rule
        self.replicated = NamedSharding(self.mesh, PartitionSpec())
        self.sharded = NamedSharding(self.mesh, PartitionSpec("data"))
        self.variables = jax.device_put(variables, self.replicated)
        self.compile_stats = CompileStats()
        self._compiled: dict[tuple, Any] = {}

    @property
    def num_devices(self) -> int:
        return self.mesh.devices.size

    def _batch_fn(self, variables, inputs, labels, *, image_hw):
        maps, hws, scores = [], [], []
        for x in inputs:
            b, _, h, w, _ = x.shape
            m, logits = network_maps(
                self.model, variables, x.reshape(2 * b, h, w, 3), cam_source=self.cam_source
            )
            m = m[..., 1:].reshape(b, 2, *m.shape[1:3], -1)
            maps += [m[:, 0], m[:, 1]]
            hws += [(h, w), (h, w)]
            scores.append(image_scores(logits, (h, w), self.gap_source).reshape(b, 2, -1))
        per_input = [s[:, f] for s in scores for f in range(2)]
        mean_scores = functools.reduce(jnp.add, per_input) / jnp.float32(len(per_input))
        if self.label_rule is not None:
            labels = predicted_labels(mean_scores, self.label_rule)
        cams = fuse_network_maps(maps, hws, labels, image_hw)
        return {"cams": cams, "labels": labels, "scores": mean_scores}

    def _compile(self, batch: int, image_hw: tuple[int, int], num_classes: int):
        key = (batch, *image_hw)
        if key not in self._compiled:
            start = time.perf_counter()
            fn = jax.jit(
                functools.partial(self._batch_fn, image_hw=image_hw),
                in_shardings=(self.replicated, self.sharded, self.sharded),
                out_shardings=self.sharded,
            )
            abstract_inputs = tuple(
                jax.ShapeDtypeStruct((batch, 2, h, w, 3), jnp.float32, sharding=self.sharded)
                for h, w in input_sizes(image_hw, self.scales)
            )
            abstract_labels = jax.ShapeDtypeStruct(
                (batch, num_classes), jnp.float32, sharding=self.sharded
            )
            self._compiled[key] = fn.lower(
                self.variables, abstract_inputs, abstract_labels
            ).compile()
            self.compile_stats.compiles += 1
            self.compile_stats.seconds += time.perf_counter() - start
            self.compile_stats.shapes.append(key)
        return self._compiled[key]

    def __call__(self, inputs: Sequence[np.ndarray], labels: np.ndarray, image_hw):
        image_hw = (int(image_hw[0]), int(image_hw[1]))
        expected = input_sizes(image_hw, self.scales)
        if len(inputs) != len(expected):
            raise ValueError(f"expected {len(expected)} scales of inputs, found {len(inputs)}")
        batch = labels.shape[0]
        if batch % self.num_devices:
            raise ValueError(
                f"batch of {batch} images is not a multiple of the {self.num_devices} devices"
            )
        for x, (h, w) in zip(inputs, expected, strict=True):
            if tuple(x.shape) != (batch, 2, h, w, 3):
                raise ValueError(
                    f"inputs of an image of size {image_hw} at scales {self.scales} must be "
                    f"{(batch, 2, h, w, 3)}, found {tuple(x.shape)}"
                )
        compiled = self._compile(batch, image_hw, labels.shape[1])
        device_inputs = tuple(
            jax.device_put(np.asarray(x, np.float32), self.sharded) for x in inputs
        )
        device_labels = jax.device_put(np.asarray(labels, np.float32), self.sharded)
        return compiled(self.variables, device_inputs, device_labels)


class CrfInferencer:
    """The CRF marginals of one image's saved CAMs for several alphas, jitted per shape.

    Args:
      alphas: background exponents (the reference's ``(1, 24)``).
      iterations: mean-field iterations (10).
      devices: the devices to spread images over, round robin (default: this process's first
        device; every extra device compiles each shape once more).
      crf_fn: ``crf_fn(image (H, W, 3) uint8, probs (H, W, C) float32, iterations=...) ->
        (H, W, C)`` marginals; default ``hfpl_jax.inference.crf.dense_crf`` (the reference's
        Gaussian and bilateral parameters).

    ``__call__(image, cams)`` with ``cams`` ``(H, W, K')``, the saved classes in ascending order,
    returns ``(A, H, W, K' + 1)`` float32 (a device array, not waited for): per alpha the CRF of
    :func:`crf_probabilities`; ``K' = 0`` gives ones ``(A, H, W, 1)`` (``infer_cam_coco.py``).
    The label count varies per image and a padded label would take probability mass (pydensecrf
    clips probabilities at 1e-5), so each ``(H, W, K')`` compiles once, separately from the CAMs.
    """

    def __init__(self, alphas=DEFAULT_CRF_ALPHAS, iterations: int = 10, devices=None, crf_fn=None):
        if crf_fn is None:
            from hfpl_jax.inference.crf import dense_crf as crf_fn  # noqa: PLC0415
        self.alphas = tuple(float(a) for a in alphas)
        self.iterations = int(iterations)
        self.devices = list(devices) if devices is not None else jax.local_devices()[:1]
        self.compile_stats = CompileStats()
        self._fn = jax.jit(self._marginals)
        self._crf_fn = crf_fn
        self._shapes: set = set()
        self._next = 0

    def _marginals(self, image, cams):
        return jnp.stack(
            [
                self._crf_fn(
                    image, crf_probabilities(cams, alpha), iterations=self.iterations
                ).astype(jnp.float32)
                for alpha in self.alphas
            ]
        )

    def __call__(self, image: np.ndarray, cams: np.ndarray):
        height, width = image.shape[:2]
        if cams.shape[:2] != (height, width):
            raise ValueError(f"CAMs {cams.shape} do not match the image {image.shape}")
        if cams.shape[-1] == 0:
            return np.ones((len(self.alphas), height, width, 1), np.float32)
        device = self.devices[self._next % len(self.devices)]
        self._next += 1
        key = cams.shape
        start = time.perf_counter()
        out = self._fn(jax.device_put(image, device), jax.device_put(cams, device))
        if key not in self._shapes:  # the first call of a shape traced and compiled it
            self._shapes.add(key)
            self.compile_stats.compiles += 1
            self.compile_stats.seconds += time.perf_counter() - start
            self.compile_stats.shapes.append(key)
        return out


def local_mesh() -> Mesh:
    """A 1-D "data" mesh over this process's devices (inference needs no cross-host traffic)."""
    return Mesh(np.asarray(jax.local_devices()), ("data",))
