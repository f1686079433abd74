"""CAM training: the SEAM + HFPL loss, the sharded update, the training loop and ``train-cam``.

The loss (spec §3.4–3.6), for a batch of normalised crops ``x`` ``(N, H, W, 3)`` and multi-hot
labels ``y`` ``(N, K)``, with ``ŷ = [1, y]`` (background = 1) broadcast over pixels:

* branch 1: ``cam1, cam_rv1, logits1 = f(x)``; branch 2: ``cam2, cam_rv2 = f(x₂)`` with
  ``x₂ = resize_AC(x, floor(0.3·H), floor(0.3·W))``. Each branch is its own forward pass with its
  own dropout masks (Appendix D); ``logits1`` carries branch 1's.
* ``GAP_b = MLSM(mean_hw(cam_b)[1:], y)``, the mean over the AC-*upsampled* CAM (§10.11).
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

The update is one ``jax.jit`` over global arrays: the state is replicated over the ``"data"`` mesh
axis and donated, the batch is sharded over it, and each update's randomness is
``fold_in(base key, step)`` split into (branch-1 dropout, branch-2 dropout, ISL) keys. Every loss
term is returned as a metric; the host stops the run at the first non-finite term, naming it and
the step, and keeps the last good checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import platform
import signal
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from hfpl_jax import checkpoint as checkpoint_lib
from hfpl_jax import config_utils, losses, parallel, pooling
from hfpl_jax.image_ops import IMAGENET_MEAN, IMAGENET_STD, resize_bilinear, scaled_size
from hfpl_jax.train import optimizers
from hfpl_jax.train.train_state import (
    TrainState,
    base_key_data,
    checkpoint_items,
    from_checkpoint_items,
)

logger = logging.getLogger("hfpl_jax.train.cam")

GAP_SOURCES = ("cam", "logits")


# ==================================================================================================
# Loss


@dataclasses.dataclass(frozen=True)
class LossSettings:
    """The loss options of ``config.loss`` (see ``hfpl_jax.train.cam_config``), validated."""

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


def single_branch_losses(
    outputs: Mapping[str, jax.Array],
    images: jax.Array,
    labels: jax.Array,
    isl_key: jax.Array,
    settings: LossSettings,
    *,
    isl_fn: IslFn | None = None,
) -> dict[str, jax.Array]:
    """The HFPL add-on on any CAM network: ``(1−w)·GAP + w·ISL + λ·FSL``.

    ``outputs``: ``{"cam": (N,H,W,K+1) (for gap_source="cam"), "logits": (N,h,w,K+1)}``; channel 0
    is ignored. Returns ``{"loss", "loss_cls", "loss_gap1", "loss_isl"?, "loss_fsl"?}``.
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


def cam_loss_fn(
    params: Any,
    batch_stats: Any,
    images: jax.Array,
    labels: jax.Array,
    key: jax.Array,
    *,
    model: Any,
    settings: LossSettings,
    isl_fn: IslFn | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """``(total, terms)`` of :func:`cam_loss_and_batch_stats` (the BN statistics dropped)."""
    total, (terms, _) = cam_loss_and_batch_stats(
        params, batch_stats, images, labels, key, model=model, settings=settings, isl_fn=isl_fn
    )
    return total, terms


# ==================================================================================================
# The jitted update


def make_train_step(
    model: Any,
    tx: Any,
    settings: LossSettings,
    mesh: jax.sharding.Mesh,
) -> Callable[[TrainState, Mapping[str, jax.Array]], tuple[TrainState, dict[str, jax.Array]]]:
    """``train_step(state, batch) -> (state, metrics)``: one jitted, donated, sharded update.

    ``batch = {"image": (B, H, W, 3), "labels": (B, K)}`` global arrays sharded on ``"data"``;
    the state is replicated. Metrics: every loss term of ``settings.term_names()``. With
    ``batch_norm="batch"`` the state's ``batch_stats`` move by branch 1's global-batch statistics.
    """
    replicated = parallel.replicated_sharding(mesh)
    batch_sharding = parallel.data_sharding(mesh)

    def train_step(state: TrainState, batch):
        grad_fn = jax.value_and_grad(cam_loss_and_batch_stats, has_aux=True)
        (_, (terms, batch_stats)), grads = grad_fn(
            state.params,
            state.batch_stats,
            batch["image"],
            batch["labels"],
            state.step_key(),
            model=model,
            settings=settings,
        )
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = jax.tree.map(lambda p, u: p + u, state.params, updates)
        new_state = state.replace(
            step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state
        )
        return new_state, terms

    return jax.jit(
        train_step,
        in_shardings=(replicated, {"image": batch_sharding, "labels": batch_sharding}),
        out_shardings=(replicated, replicated),
        donate_argnums=(0,),
    )


def make_preview_fn(model: Any, mesh: jax.sharding.Mesh) -> Callable:
    """``preview(state, images) -> outputs`` of the first image, inference mode (no dropout)."""
    replicated = parallel.replicated_sharding(mesh)

    def preview(params, batch_stats, images):
        outputs = model.apply({"params": params, "batch_stats": batch_stats}, images[:1])
        return {k: v.astype(jnp.float32) for k, v in outputs.items() if k in ("cam", "cam_rv")}

    return jax.jit(preview, out_shardings=replicated)


# ==================================================================================================
# Model, data and state set-up


@dataclasses.dataclass
class TrainData:
    """What the loop needs from the input side.

    Attributes:
      iterator: yields host-local batches ``{"image": float32 (B_local, H, W, 3) normalised,
        "labels": float32 (B_local, K)}``; has ``get_state()`` / ``set_state()``.
      num_classes: K, the foreground classes.
      num_train_examples: the training split's size (for max_step).
    """

    iterator: Iterator[Mapping[str, np.ndarray]]
    num_classes: int
    num_train_examples: int


DataFactory = Callable[[ml_collections.ConfigDict, int, int], TrainData]


def resolve_data_dir(data_dir: str | None) -> str:
    """``input.data_dir``, else ``$TFDS_DATA_DIR``, else ``~/tensorflow_datasets``."""
    chosen = data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
    return os.path.abspath(os.path.expanduser(chosen))


def make_train_data(config: ml_collections.ConfigDict, process_index: int, process_count: int):
    """The default data source: ``hfpl_jax.data`` (builds a generated dataset when absent)."""
    from hfpl_jax import data  # noqa: PLC0415 - keeps TensorFlow-free imports lazy
    from hfpl_jax.data import input_pipeline  # noqa: PLC0415

    input_config = config.input.to_dict()
    input_config["data_dir"] = resolve_data_dir(config.input.data_dir)
    builder_kwargs = dict(input_config.get("builder_kwargs") or {})
    name, data_dir = input_config["dataset"], input_config["data_dir"]
    if process_index == 0:
        data.ensure_built(name, data_dir, **builder_kwargs)
    if process_count > 1:
        from jax.experimental import multihost_utils  # noqa: PLC0415

        # Other processes wait for process 0's build (on a shared file system).
        multihost_utils.sync_global_devices("hfpl_jax.train.cam:dataset_built")
        data.ensure_built(name, data_dir, **builder_kwargs)
    num_classes = data.num_classes(name, data_dir, **builder_kwargs)
    num_examples = config.input.num_train_examples
    if num_examples is None:
        num_examples = data.num_examples(name, data_dir, input_config["split"], **builder_kwargs)
    iterator = input_pipeline.make_cam_train_iterator(
        input_config, seed=config.seed, process_index=process_index, process_count=process_count
    )
    return TrainData(iterator=iterator, num_classes=num_classes, num_train_examples=num_examples)


def build_model(config: ml_collections.ConfigDict, num_classes: int):
    """``hfpl_jax.models.build_from_config(config.model, num_classes)``; ``model.batch_norm``
    "frozen" (the reference's CAM stage) or "batch" (see :func:`cam_loss_and_batch_stats`)."""
    from hfpl_jax import models  # noqa: PLC0415

    return models.build_from_config(config.model, num_classes)


def load_init_weights(path: str, arch: str, variables: dict) -> dict:
    """ImageNet (or any saved) weights merged into ``variables`` (``hfpl_jax.weights``).

    ``.params``: the reference's MXNet ResNet-38 file; ``.npz``: saved Flax variables; otherwise a
    PyTorch state dict. Layers absent from the file (the heads) keep their random initialisation,
    as in the reference (``load_state_dict(strict=False)``), but a tensor of the file that the
    model lacks, or of the wrong shape, is an error.
    """
    from hfpl_jax import weights  # noqa: PLC0415

    if not os.path.isfile(path):
        raise FileNotFoundError(f"model.init_weights: {path!r} does not exist.")
    merged, count = weights.load_pretrained(variables, path, arch)
    logger.info("initialised %d tensors from %s", count, path)
    return merged


def max_steps(config: ml_collections.ConfigDict, num_train_examples: int) -> int:
    """``floor(num_train_examples / global_batch) · num_epochs``, or ``train.num_steps``."""
    if config.train.num_steps is not None:
        if config.train.num_steps < 1:
            raise ValueError(f"train.num_steps must be >= 1, found {config.train.num_steps}.")
        return int(config.train.num_steps)
    steps = (num_train_examples // config.input.global_batch_size) * config.train.num_epochs
    if steps < 1:
        raise ValueError(
            f"no training steps: {num_train_examples} examples // batch "
            f"{config.input.global_batch_size} × {config.train.num_epochs} epochs = 0."
        )
    return steps


def _init_fn(model: Any, crop: int) -> Callable[[jax.Array], dict]:
    def init(key_data):
        params_key, dropout_key = jax.random.split(jax.random.wrap_key_data(key_data))
        return dict(
            model.init(
                {"params": params_key, "dropout": dropout_key},
                jnp.zeros((1, crop, crop, 3), jnp.float32),
            )
        )

    return init


def _init_key_data(seed: int) -> jax.Array:
    # A key of its own, derived from the seed, so model initialisation never shares a stream with
    # the per-step keys fold_in(key(seed), step).
    return jax.random.key_data(jax.random.fold_in(jax.random.key(seed), 0x1417))


def init_variables(
    model: Any, config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh | None = None
) -> dict:
    """Random initial ``{"params", "batch_stats"}`` from ``config.seed`` (replicated on ``mesh``).

    The seed is an argument of the jitted initialiser, so every seed reuses one compilation.
    """
    shardings = None if mesh is None else parallel.replicated_sharding(mesh)
    init = jax.jit(_init_fn(model, config.input.crop_size), out_shardings=shardings)
    return init(_init_key_data(config.seed))


def abstract_variables(model: Any, config: ml_collections.ConfigDict) -> dict:
    """Shapes and dtypes of the variables (``jax.ShapeDtypeStruct``), without allocating."""
    return jax.eval_shape(_init_fn(model, config.input.crop_size), _init_key_data(config.seed))


def abstract_train_state(model: Any, tx: Any, config: ml_collections.ConfigDict) -> TrainState:
    """The state's shapes and dtypes (``jax.ShapeDtypeStruct``), computed without allocating."""
    init = _init_fn(model, config.input.crop_size)

    def make(key_data):
        variables = init(key_data)
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=variables["params"],
            batch_stats=variables.get("batch_stats", {}),
            opt_state=tx.init(variables["params"]),
            rng=base_key_data(config.seed),
        )

    return jax.eval_shape(make, _init_key_data(config.seed))


def init_train_state(
    model: Any,
    tx: Any,
    config: ml_collections.ConfigDict,
    mesh: jax.sharding.Mesh,
) -> TrainState:
    """A fresh state replicated on ``mesh``: model init from ``config.seed``, then (when
    ``config.model.init_weights`` is set) the ImageNet weights loaded over it."""
    replicated = parallel.replicated_sharding(mesh)
    variables = init_variables(model, config, mesh)
    if config.model.init_weights:
        host_variables = jax.tree.map(np.asarray, jax.device_get(variables))
        loaded = load_init_weights(config.model.init_weights, config.model.arch, host_variables)
        variables = parallel.replicate(loaded, mesh)
    params = variables["params"]
    opt_state = jax.jit(tx.init, out_shardings=replicated)(params)
    return TrainState(
        step=jax.device_put(jnp.zeros((), jnp.int32), replicated),
        params=params,
        batch_stats=variables.get("batch_stats", {}),
        opt_state=opt_state,
        rng=jax.device_put(base_key_data(config.seed), replicated),
    )


def abstract_checkpoint_items(state: TrainState, mesh: jax.sharding.Mesh) -> dict[str, Any]:
    """Shape/dtype/sharding targets for restoring onto ``mesh`` (any device count)."""
    replicated = parallel.replicated_sharding(mesh)
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
        checkpoint_items(state),
    )


# ==================================================================================================
# The loop


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or Inf; the message names the term and the step."""


def check_finite(step: int, metrics: Mapping[str, Any]) -> None:
    """Raises :class:`NonFiniteLossError` naming the first non-finite term (``loss`` last)."""
    names = sorted(metrics, key=lambda n: (n == "loss", n))
    for name in names:
        value = float(metrics[name])
        if not math.isfinite(value):
            raise NonFiniteLossError(
                f"non-finite loss {name!r} at step {step} (value {value}); stopping. The last "
                "good checkpoint is kept; the bad state was not saved."
            )


def config_to_dict(config: ml_collections.ConfigDict) -> dict:
    return json.loads(config.to_json_best_effort())


def _log_startup(config, mesh, workdir, max_step, data: TrainData, optimizer, params):
    import flax  # noqa: PLC0415
    import optax  # noqa: PLC0415
    import orbax.checkpoint as ocp  # noqa: PLC0415

    logger.info("workdir: %s", os.path.abspath(workdir))
    logger.info(
        "versions: python %s, jax %s, jaxlib %s, flax %s, optax %s, orbax %s",
        platform.python_version(),
        jax.__version__,
        jax.lib.__version__ if hasattr(jax.lib, "__version__") else "?",
        flax.__version__,
        optax.__version__,
        getattr(ocp, "__version__", "?"),
    )
    logger.info(
        "devices: process %d of %d, %d local / %d global (%s); mesh %s",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
        jax.devices()[0].device_kind,
        dict(mesh.shape),
    )
    logger.info(
        "data: %s/%s, %d examples, %d classes; max_step %d (batch %d)",
        config.input.dataset,
        config.input.split,
        data.num_train_examples,
        data.num_classes,
        max_step,
        config.input.global_batch_size,
    )
    logger.info("config:\n%s", config)
    logger.info(
        "optimizer: SGD momentum %g, groups:\n%s",
        optimizer.momentum,
        optimizers.describe_groups(optimizer.groups, params),
    )


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    data_factory: DataFactory = make_train_data,
    progress: bool = True,
) -> TrainState:
    """Trains (or resumes) the CAM network described by ``config`` in ``workdir``.

    Resumes from the newest checkpoint in ``workdir/checkpoints`` if there is one (parameters,
    optimizer state, step, RNG and input-pipeline position), so rerunning the same command
    continues the run. Writes TensorBoard events (``workdir/tensorboard``), ``metrics.jsonl`` and
    ``config.json``.

    Returns:
      The final state.

    Raises:
      NonFiniteLossError: a loss term became NaN/Inf (the last good checkpoint is kept).
    """
    from hfpl_jax.train import observability  # noqa: PLC0415

    settings = LossSettings.from_config(config.loss)
    os.makedirs(workdir, exist_ok=True)
    is_main = jax.process_index() == 0
    mesh = parallel.make_mesh(config.mesh.num_devices)
    parallel.local_batch_size(config.input.global_batch_size, mesh)
    data = data_factory(config, jax.process_index(), jax.process_count())
    model = build_model(config, data.num_classes)
    max_step = max_steps(config, data.num_train_examples)

    abstract_params = abstract_variables(model, config)["params"]
    optimizer = optimizers.make_optimizer(config.optim, abstract_params, max_step=max_step)
    for rule in optimizers.unmatched_rules(
        abstract_params,
        lr_mults=config.optim.lr_mults,
        wd_mults=config.optim.wd_mults,
        frozen=config.optim.frozen,
    ):
        logger.warning(
            "optimizer rule matches no parameter of this model (expected for a group the model "
            "lacks, e.g. the reference's from-scratch biases: SEAM's heads have none; otherwise "
            "check the pattern): %s",
            rule,
        )

    manager = checkpoint_lib.CheckpointManager(
        workdir, every_steps=config.checkpoint.every_steps, keep=config.checkpoint.keep
    )
    latest = manager.latest_step()
    if latest is None:
        state = init_train_state(model, optimizer.tx, config, mesh)
        start_step = 0
    else:
        template = abstract_train_state(model, optimizer.tx, config)
        abstract = abstract_checkpoint_items(template, mesh)
        iterator = data.iterator if config.checkpoint.restore_data_state else None
        restored = manager.restore(latest, abstract=abstract, data_iterator=iterator)
        state = from_checkpoint_items(restored)
        start_step = int(jax.device_get(state.step))
        if start_step != latest:
            raise ValueError(
                f"checkpoint {latest} in {manager.directory} holds step {start_step}; corrupt?"
            )
        logger.info("resumed from %s at step %d", manager.directory, start_step)

    if is_main:
        _log_startup(config, mesh, workdir, max_step, data, optimizer, state.params)
        observability.write_json_atomic(
            os.path.join(workdir, "config.json"), config_to_dict(config)
        )

    train_step = make_train_step(model, optimizer.tx, settings, mesh)
    preview = make_preview_fn(model, mesh) if config.train.image_every_steps else None
    writer = observability.MetricWriter(
        workdir, start_step=start_step, enabled=is_main, term_names=settings.term_names()
    )
    progress_bar = observability.ProgressBar(
        total=max_step, initial=start_step, enabled=is_main and progress
    )
    stop = _StopSignal()
    config_json = config_to_dict(config)

    def save(step: int, state: TrainState) -> None:
        manager.save(
            step,
            **checkpoint_items(state),
            data_iterator=data.iterator,
            config=config_json,
        )

    pending: tuple[int, dict] | None = None  # (step, metrics) not yet checked on the host
    accumulated = observability.Accumulator()
    last_log_time, last_log_step = time.perf_counter(), start_step

    def drain() -> None:
        nonlocal pending
        if pending is not None:
            step, metrics = pending
            pending = None
            values = jax.device_get(metrics)
            check_finite(step, values)
            accumulated.add(values)
            progress_bar.update(step + 1, values["loss"])

    try:
        for step in range(start_step, max_step):
            try:
                host_batch = next(data.iterator)
            except StopIteration:
                raise ValueError(
                    f"the input pipeline ended after {step} steps, before max_step {max_step}: "
                    "leave input.num_epochs unset (None) or raise it."
                ) from None
            batch = parallel.host_batch_to_global(
                {"image": host_batch["image"], "labels": host_batch["labels"]}, mesh
            )
            state, metrics = train_step(state, batch)
            # Checking the previous step's metrics here keeps one update in flight on the device.
            drain()
            pending = (step, metrics)
            done = step + 1
            if step == start_step:
                # images/s counts from the end of the first update (which includes compilation).
                drain()
                last_log_time, last_log_step = time.perf_counter(), done
            if done % config.train.log_every_steps == 0 or done == max_step:
                drain()
                now = time.perf_counter()
                scalars = accumulated.mean_and_reset()
                scalars["learning_rate"] = (
                    optimizers.poly_learning_rate(
                        step, config.optim.lr, optimizer.max_step, config.optim.poly_power
                    )
                    if config.optim.schedule == "poly"
                    else config.optim.lr
                )
                if done > last_log_step:
                    scalars["images_per_second"] = (
                        (done - last_log_step) * config.input.global_batch_size
                    ) / (now - last_log_time)
                writer.write_scalars(done, scalars)
                last_log_time, last_log_step = now, done
            if preview is not None and (
                done % config.train.image_every_steps == 0 or done == max_step
            ):
                outputs = jax.device_get(preview(state.params, state.batch_stats, batch["image"]))
                if is_main:
                    writer.write_cam_images(
                        done, np.asarray(host_batch["image"][0]), outputs,
                        np.asarray(host_batch["labels"][0]),
                    )  # fmt: skip
            stopping = stop.requested()
            if manager.should_save(done) or done == max_step or stopping:
                drain()  # never checkpoint a state whose loss was not finite
                save(done, state)
            if stopping:
                logger.warning("stop requested (signal); saved step %d and exiting", done)
                break
        drain()
    finally:
        progress_bar.close()
        writer.close()
        manager.close()
        stop.restore()
    if is_main:
        logger.info(
            "done at step %d. checkpoints: %s  tensorboard: %s  metrics: %s",
            int(jax.device_get(state.step)),
            os.path.abspath(manager.directory),
            os.path.abspath(writer.tensorboard_dir),
            os.path.abspath(writer.metrics_path),
        )
    return state


class _StopSignal:
    """SIGTERM/SIGINT request a checkpoint and a clean exit (single-process runs)."""

    def __init__(self):
        self._requested = False
        self._previous = {}
        if jax.process_count() == 1 and _in_main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        del frame
        if self._requested:  # second signal: give up immediately
            self.restore()
            raise KeyboardInterrupt
        self._requested = True
        logger.warning("received signal %d: will checkpoint and stop after this step", signum)

    def requested(self) -> bool:
        return self._requested

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}


def _in_main_thread() -> bool:
    import threading  # noqa: PLC0415

    return threading.current_thread() is threading.main_thread()


# ==================================================================================================
# Command line


def _parse_args(argv: list[str]) -> tuple[argparse.Namespace, ml_collections.ConfigDict]:
    parser = argparse.ArgumentParser(
        prog="hfpl-jax train-cam",
        description="Train the CAM network (SEAM + HFPL ISL/FSL) from a config file. Any config "
        "value can be overridden with --config.KEY=VALUE (e.g. --config.train.num_steps=10).",
    )
    parser.add_argument("--config", required=True, help="config file (configs/*.py[:arg])")
    parser.add_argument("--workdir", required=True, help="checkpoints, logs; rerun to resume")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    group = parser.add_argument_group("multi-host (see README 'Multi-host')")
    group.add_argument("--distributed", action="store_true", help="jax.distributed auto-detect")
    group.add_argument("--coordinator_address", default=None, help="HOST:PORT of process 0")
    group.add_argument("--num_processes", type=int, default=None)
    group.add_argument("--process_id", type=int, default=None)
    config_path, overrides, rest = config_utils.split_config_args(argv)
    if config_path is not None:
        rest = [*rest, f"--config={config_path}"]
    args = parser.parse_args(rest)
    config = config_utils.load_config(args.config, overrides)
    return args, config


def main(argv: list[str] | None = None) -> int:
    """``hfpl-jax train-cam --config=FILE --workdir=DIR [--config.KEY=VALUE ...]``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )
    # orbax logs every save step by step through absl at INFO; keep its warnings only.
    logging.getLogger("absl").setLevel(logging.WARNING)
    try:
        args, config = _parse_args(argv)
    except (ValueError, FileNotFoundError) as error:
        print(f"hfpl-jax train-cam: {error}", file=sys.stderr)
        return 2
    parallel.initialize_distributed(
        coordinator_address=args.coordinator_address,
        num_processes=args.num_processes,
        process_id=args.process_id,
        auto=args.distributed,
    )
    try:
        train_and_evaluate(config, args.workdir, progress=not args.no_progress)
    except NonFiniteLossError as error:
        logger.error("%s", error)
        return 1
    return 0
