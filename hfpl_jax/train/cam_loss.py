"""The CAM-training loss of SEAM + HFPL, composed from the pure losses of ``hfpl_jax.losses``.

The reference computes it in the training loop of ``train_cam_voc.py`` (``train_cam_coco.py`` for
COCO). For a batch of normalised crops ``x`` ``(N, H, W, 3)`` and multi-hot labels ``y``
``(N, K)``, with ``ŷ = [1, y]`` (background = 1) broadcast over pixels:

* branch 1: ``cam1, cam_rv1, logits1 = f(x)``; branch 2: ``cam2, cam_rv2 = f(x₂)`` with
  ``x₂ = resize_AC(x, floor(0.3·H), floor(0.3·W))``. Each branch is its own forward pass with its
  own dropout masks (the two ``model(...)`` calls of ``train_cam_voc.py``); ``logits1`` carries
  branch 1's.
* ``GAP_b = MLSM(mean_hw(cam_b)[1:], y)``, the mean over the CAM that ``network/resnet38_SEAM.py``
  has already upsampled (align_corners=True) to the input size.
* ``ISL = MLSM(logits1[1:] at 10 pixels per (image, class) drawn ∝ sigmoid + 1e-5, y)``;
  branch 1's classification term is ``(1−w)·GAP₁ + w·ISL`` (w = 0: GAP₁ only, ISL not computed;
  w = 1: ISL only).
* ``MinPool_b = adaptive_min_pooling((cam_rv_b·ŷ)[1:])`` on the raw ``cam_rv``.
* ``loss_cls = (cls₁ + GAP₂)/2 + (MinPool₁ + MinPool₂)/2``.
* ``ĉ₁ = resize_AC(max_norm(cam1), 0.3)·ŷ``, ``r̂₁ = resize_AC(max_norm(cam_rv1), 0.3)·ŷ``,
  ``ĉ₂ = max_norm(cam2)·ŷ``, ``r̂₂ = max_norm(cam_rv2)·ŷ``.
* ``ER = mean|ĉ₁[1:] − ĉ₂[1:]|``, computed *before* the background channel is assigned;
  ``ECR = ECR(r̂₁, ĉ₂) + ECR(r̂₂, ĉ₁)`` with targets ``max_onehot(sg(with_background(ĉ)))`` and the
  top 20 % of ``|target − r̂|`` per image over all channels.
* ``FSL(x_s, with_background(max_norm(logits1)·ŷ))`` with ``x_s = resize_AC(x, logits size)·std +
  mean`` (the de-normalised image at the logits' resolution; clamped to [0, 1] inside the loss).
* ``loss = loss_cls + ER + ECR + λ_FSL·FSL`` (λ_FSL = 1 on VOC, 0.2 on COCO).

With ``loss.seam=False`` (any CAM architecture, e.g. ``resnet50_cam``) there is one branch and
``loss = (1−w)·GAP + w·ISL + λ_FSL·FSL``. Every term is computed in float32 whatever the compute
dtype of the network.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from hfpl_jax import losses, pooling
from hfpl_jax.image_ops import IMAGENET_MEAN, IMAGENET_STD, resize_bilinear, scaled_size

__all__ = [
    "GAP_SOURCES",
    "IslFn",
    "LossSettings",
    "cam_loss_and_batch_stats",
    "cam_loss_fn",
    "seam_hfpl_losses",
    "single_branch_losses",
]

GAP_SOURCES = ("cam", "logits")


@dataclasses.dataclass(frozen=True)
class LossSettings:
    """The loss options of ``config.loss``, validated; the field defaults are the reference's
    (``train_cam_voc.py``) and are where ``hfpl_jax.train.cam_config.base_config`` takes its
    ``config.loss`` from (the fields are described there)."""

    seam: bool = True
    scale_factor: float = 0.3
    gap_source: str = "cam"
    isl_weight: float = 0.2
    isl_num_samples: int = 10
    isl_posterior: str = "binomial"
    fsl: bool = True
    fsl_weight: float = 1.0
    fsl_mu: float = 2.5
    fsl_sigma: float | None = 5.0
    fsl_px: float = 1.0
    fsl_py: float = 2.0
    fsl_method: str = "exact"
    min_pool_weight: float = 1.0
    er_weight: float = 1.0
    ecr_weight: float = 1.0
    ecr_top_fraction: float = 0.2

    def __post_init__(self):
        if self.gap_source not in GAP_SOURCES:
            raise ValueError(
                f"loss.gap_source must be one of {GAP_SOURCES}, found {self.gap_source!r}."
            )
        if not 0.0 <= self.isl_weight <= 1.0:
            raise ValueError(f"loss.isl_weight must be in [0, 1], found {self.isl_weight}.")
        if self.isl_num_samples < 1:
            raise ValueError(f"loss.isl_num_samples must be >= 1, found {self.isl_num_samples}.")
        if self.isl_posterior not in pooling.POSTERIORS:
            raise ValueError(
                f"loss.isl_posterior must be one of {pooling.POSTERIORS}, "
                f"found {self.isl_posterior!r}."
            )
        if not 0.0 < self.scale_factor < 1.0:
            raise ValueError(f"loss.scale_factor must be in (0, 1), found {self.scale_factor}.")
        if not 0.0 < self.ecr_top_fraction <= 1.0:
            raise ValueError(
                f"loss.ecr_top_fraction must be in (0, 1], found {self.ecr_top_fraction}."
            )
        for name in ("fsl_weight", "min_pool_weight", "er_weight", "ecr_weight"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"loss.{name} must be finite and >= 0, found {value}.")

    @classmethod
    def from_config(cls, loss_config: Mapping[str, Any]) -> LossSettings:
        """From ``config.loss``; unknown fields are an error that names them."""
        known = {f.name for f in dataclasses.fields(cls)}
        values = dict(loss_config)
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown loss option(s): {', '.join('loss.' + k for k in unknown)}.")
        return cls(**values)

    def as_dict(self) -> dict[str, Any]:
        """``{field: value}``, the shape of ``config.loss``."""
        return dataclasses.asdict(self)

    def term_names(self) -> tuple[str, ...]:
        """The metrics the loss returns for these settings (all scalars)."""
        names = ["loss", "loss_cls", "loss_gap1"]
        if self.isl_weight > 0:
            names.append("loss_isl")
        if self.seam:
            names += ["loss_gap2", "loss_min_pool1", "loss_min_pool2", "loss_er", "loss_ecr"]
        if self.fsl:
            names.append("loss_fsl")
        return tuple(names)


IslFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


def _default_isl(settings: LossSettings) -> IslFn:
    def isl(key, logits, labels):
        # Binomial (HFPL) samples the foreground logits; multinomial needs the background logit.
        scored = logits[..., 1:] if settings.isl_posterior == "binomial" else logits
        return losses.importance_sampling_loss(
            key,
            scored,
            labels,
            num_samples=settings.isl_num_samples,
            posterior=settings.isl_posterior,
        )

    return isl


def _with_background_label(labels: jax.Array) -> jax.Array:
    """``(N, K) -> (N, 1, 1, K+1)``: ``[1, y]`` broadcastable over pixels."""
    ones = jnp.ones((labels.shape[0], 1), labels.dtype)
    return jnp.concatenate([ones, labels], axis=-1)[:, None, None, :]


def _image_score(outputs: Mapping[str, jax.Array], gap_source: str) -> jax.Array:
    """``(N, K)``: spatial mean of the CAM (or of the logits) over the foreground channels."""
    return pooling.global_average_pool(outputs[gap_source])[:, 1:]


def _classification(
    outputs, labels, key, settings: LossSettings, isl_fn: IslFn
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Branch-1 classification term ``(1−w)·GAP + w·ISL`` (reference edge cases w ∈ {0, 1})."""
    terms = {"loss_gap1": losses.multilabel_soft_margin_loss(
        _image_score(outputs, settings.gap_source), labels
    )}  # fmt: skip
    w = settings.isl_weight
    if w == 0:
        return terms["loss_gap1"], terms
    terms["loss_isl"] = isl_fn(key, outputs["logits"], labels)
    if w == 1:
        return terms["loss_isl"], terms
    return (1.0 - w) * terms["loss_gap1"] + w * terms["loss_isl"], terms


def _feature_similarity(images, logits, label_full, settings: LossSettings) -> jax.Array:
    """FSL on ``with_background(max_norm(logits)·ŷ)`` and the de-normalised, resized image."""
    prediction = pooling.with_background(pooling.max_norm(logits) * label_full)
    size = logits.shape[1:3]
    mean = jnp.asarray(IMAGENET_MEAN, jnp.float32)
    std = jnp.asarray(IMAGENET_STD, jnp.float32)
    image = resize_bilinear(images.astype(jnp.float32), size, align_corners=True) * std + mean
    return losses.feature_similarity_loss(
        jax.lax.stop_gradient(image),
        prediction,
        mu=settings.fsl_mu,
        sigma=settings.fsl_sigma,
        px=settings.fsl_px,
        py=settings.fsl_py,
        method=settings.fsl_method,
    )


def _float32(tree: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    return {k: v.astype(jnp.float32) for k, v in tree.items()}


def _with_fsl_and_total(terms, total, images, logits, label_full, settings: LossSettings):
    """``terms`` plus ``loss_fsl`` (when on) and ``loss = total + λ_FSL·FSL``, all float32."""
    if settings.fsl:
        terms["loss_fsl"] = _feature_similarity(images, logits, label_full, settings)
        total = total + settings.fsl_weight * terms["loss_fsl"]
    terms["loss"] = total
    return _float32(terms)


def seam_hfpl_losses(
    outputs1: Mapping[str, jax.Array],
    outputs2: Mapping[str, jax.Array],
    images: jax.Array,
    labels: jax.Array,
    isl_key: jax.Array,
    settings: LossSettings,
    *,
    isl_fn: IslFn | None = None,
) -> dict[str, jax.Array]:
    """Every SEAM + HFPL loss term from the two branches' network outputs (module docstring).

    Args:
      outputs1: branch 1 (full scale) ``{"cam": (N,H,W,K+1), "cam_rv": (N,H,W,K+1),
        "logits": (N,h,w,K+1)}``.
      outputs2: branch 2 (``floor(scale·H) × floor(scale·W)`` input) ``{"cam", "cam_rv"}``.
      images: the normalised branch-1 input ``(N, H, W, 3)`` (for FSL's colour term).
      labels: multi-hot ``(N, K)``.
      isl_key: key of the ISL draw.
      settings: loss options.
      isl_fn: ``(key, logits (N,h,w,K+1), labels) -> scalar``; default: the importance-sampling
        loss of ``hfpl_jax.losses`` (a hook for fixture parity with fixed sample indices).

    Returns:
      ``{"loss", "loss_cls", "loss_gap1", "loss_gap2", "loss_isl"?, "loss_min_pool1",
      "loss_min_pool2", "loss_er", "loss_ecr", "loss_fsl"?}``, float32 scalars.
    """
    isl_fn = isl_fn or _default_isl(settings)
    outputs1, outputs2 = _float32(outputs1), _float32(outputs2)
    labels = labels.astype(jnp.float32)
    label_full = _with_background_label(labels)
    _, height, width, _ = outputs1["cam"].shape
    small = (scaled_size(height, settings.scale_factor), scaled_size(width, settings.scale_factor))
    if tuple(outputs2["cam"].shape[1:3]) != small:
        raise ValueError(
            f"branch 2's cam is {outputs2['cam'].shape[1:3]}, expected {small} "
            f"(floor({settings.scale_factor}·{(height, width)}))."
        )

    cls1, terms = _classification(outputs1, labels, isl_key, settings, isl_fn)
    terms["loss_gap2"] = losses.multilabel_soft_margin_loss(
        _image_score(outputs2, settings.gap_source), labels
    )
    terms["loss_min_pool1"] = losses.adaptive_min_pooling_loss(
        (outputs1["cam_rv"] * label_full)[..., 1:]
    )
    terms["loss_min_pool2"] = losses.adaptive_min_pooling_loss(
        (outputs2["cam_rv"] * label_full)[..., 1:]
    )
    terms["loss_cls"] = (cls1 + terms["loss_gap2"]) / 2 + settings.min_pool_weight * (
        terms["loss_min_pool1"] + terms["loss_min_pool2"]
    ) / 2

    def rescale(x):
        return resize_bilinear(pooling.max_norm(x), small, align_corners=True)

    cam1 = rescale(outputs1["cam"]) * label_full
    cam_rv1 = rescale(outputs1["cam_rv"]) * label_full
    cam2 = pooling.max_norm(outputs2["cam"]) * label_full
    cam_rv2 = pooling.max_norm(outputs2["cam_rv"]) * label_full
    # ER reads the foreground channels only, so the background assignment that the reference does
    # in place afterwards (inside the ECR targets here) cannot change it.
    terms["loss_er"] = losses.equivariant_regularization_loss(cam1, cam2)
    terms["loss_ecr"] = losses.equivariant_cross_regularization_loss(
        cam_rv1, cam2, top_fraction=settings.ecr_top_fraction
    ) + losses.equivariant_cross_regularization_loss(
        cam_rv2, cam1, top_fraction=settings.ecr_top_fraction
    )
    total = (
        terms["loss_cls"]
        + settings.er_weight * terms["loss_er"]
        + settings.ecr_weight * terms["loss_ecr"]
    )
    return _with_fsl_and_total(terms, total, images, outputs1["logits"], label_full, settings)


def single_branch_losses(outputs, images, labels, isl_key, settings, *, isl_fn=None) -> dict:
    """The HFPL add-on on any CAM network: ``(1−w)·GAP + w·ISL + λ·FSL``.

    ``outputs``: ``{"cam": (N,H,W,K+1) (for gap_source="cam"), "logits": (N,h,w,K+1)}``; channel 0
    is ignored. ``images``, ``labels``, ``isl_key``, ``settings`` and ``isl_fn`` as in
    :func:`seam_hfpl_losses`. Returns ``{"loss", "loss_cls", "loss_gap1", "loss_isl"?,
    "loss_fsl"?}``, float32 scalars.
    """
    isl_fn = isl_fn or _default_isl(settings)
    outputs = _float32(outputs)
    labels = labels.astype(jnp.float32)
    cls, terms = _classification(outputs, labels, isl_key, settings, isl_fn)
    terms["loss_cls"] = cls
    return _with_fsl_and_total(
        terms, cls, images, outputs["logits"], _with_background_label(labels), settings
    )


def cam_loss_and_batch_stats(
    params: Any,
    batch_stats: Any,
    images: jax.Array,
    labels: jax.Array,
    key: jax.Array,
    *,
    model: Any,
    settings: LossSettings,
    isl_fn: IslFn | None = None,
) -> tuple[jax.Array, tuple[dict[str, jax.Array], Any]]:
    """The CAM-training loss of one batch and the BN statistics after it:
    ``(total, (terms, new_batch_stats))``, differentiable in ``params``.

    With ``model.batch_norm == "frozen"`` (the reference) BN normalises with ``batch_stats`` and
    ``new_batch_stats`` is ``batch_stats``. With ``"batch"`` every branch normalises with the
    statistics of its own input batch (over the global batch when the batch is sharded), and the
    running statistics move by branch 1's batch only: inference runs on full-scale images, which
    branch 2's 0.3-scale copies (other object sizes, more blur) would misrepresent.

    Args:
      params, batch_stats: the model's variables.
      images: normalised crops ``(N, H, W, 3)``; labels: multi-hot ``(N, K)``.
      key: this update's key, split into branch-1 dropout, branch-2 dropout and ISL keys.
      model: a Flax module from ``hfpl_jax.models.build`` (dropout active: ``train=True``).
      settings: loss options.
    """
    dropout1, dropout2, isl_key = jax.random.split(key, 3)
    variables = {"params": params, "batch_stats": batch_stats}
    batch_mode = getattr(model, "batch_norm", "frozen") == "batch"

    def forward(x, dropout_key):
        rngs = {"dropout": dropout_key}
        if not batch_mode:
            return model.apply(variables, x, train=True, rngs=rngs), batch_stats
        outputs, updates = model.apply(variables, x, train=True, rngs=rngs, mutable=["batch_stats"])
        return outputs, updates["batch_stats"]

    outputs1, new_batch_stats = forward(images, dropout1)
    if not settings.seam:
        terms = single_branch_losses(outputs1, images, labels, isl_key, settings, isl_fn=isl_fn)
        return terms["loss"], (terms, new_batch_stats)
    _, height, width, _ = images.shape
    small = (scaled_size(height, settings.scale_factor), scaled_size(width, settings.scale_factor))
    images2 = resize_bilinear(images, small, align_corners=True)
    outputs2, _ = forward(images2, dropout2)  # branch 2's statistics normalise, never accumulate
    terms = seam_hfpl_losses(outputs1, outputs2, images, labels, isl_key, settings, isl_fn=isl_fn)
    return terms["loss"], (terms, new_batch_stats)


def cam_loss_fn(*args: Any, **kwargs: Any) -> tuple[jax.Array, dict[str, jax.Array]]:
    """``(total, terms)``: :func:`cam_loss_and_batch_stats` (same arguments) without the BN
    statistics, for callers that differentiate or compare the loss alone."""
    total, (terms, _) = cam_loss_and_batch_stats(*args, **kwargs)
    return total, terms
