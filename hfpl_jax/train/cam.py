"""The CAM-training stage (``hfpl-jax train-cam``): SEAM + HFPL on the runner.

What this stage supplies to ``hfpl_jax.train.runner``:

* data: CAM-training batches ``{"image": (B, crop, crop, 3) normalised, "labels": (B, K)}`` from
  ``hfpl_jax.data.input_pipeline.make_cam_train_iterator`` (random rescale, flip, colour jitter
  and crop as in ``train_cam_voc.py``);
* the model of ``config.model`` (SEAM by default; any CAM architecture of
  ``hfpl_jax.models.build``);
* the loss of ``hfpl_jax.train.cam_loss`` (every term returned as a metric);
* TensorBoard CAM overlays of the first image of the batch.

Each update's randomness is ``fold_in(base key, step)`` split into (branch-1 dropout, branch-2
dropout, ISL) keys, so a resumed run draws what the uninterrupted run draws.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from hfpl_jax import parallel
from hfpl_jax.train import model_setup, observability, runner
from hfpl_jax.train.cam_loss import LossSettings, cam_loss_and_batch_stats
from hfpl_jax.train.train_state import TrainState

__all__ = [
    "DataFactory",
    "cam_loss_on_batch",
    "main",
    "make_stage",
    "make_train_data",
    "make_train_step",
    "train_and_evaluate",
]

logger = logging.getLogger(__name__)

DataFactory = Callable[[ml_collections.ConfigDict, int, int], runner.TrainData]


def make_train_data(
    config: ml_collections.ConfigDict, process_index: int, process_count: int
) -> runner.TrainData:
    """The default data source: ``hfpl_jax.data`` (builds a generated dataset when absent)."""
    from hfpl_jax import data  # noqa: PLC0415 - keeps TensorFlow-free imports lazy
    from hfpl_jax.data import input_pipeline  # noqa: PLC0415

    input_config = config.input.to_dict()
    input_config["data_dir"] = data.resolve_data_dir(config.input.data_dir)
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
    return runner.TrainData(
        iterator=iterator,
        num_classes=num_classes,
        num_train_examples=num_examples,
        class_names=tuple(data.class_names(name)),
    )


def cam_loss_on_batch(model: Any, settings: LossSettings) -> runner.LossFn:
    """The runner's ``loss_fn`` for CAM training: :func:`cam_loss_and_batch_stats` on
    ``batch["image"]`` and ``batch["labels"]``."""

    def loss_fn(params, batch_stats, batch, key):
        return cam_loss_and_batch_stats(
            params, batch_stats, batch["image"], batch["labels"], key,
            model=model, settings=settings,
        )  # fmt: skip

    return loss_fn


def make_train_step(
    model: Any, tx: Any, settings: LossSettings, mesh: jax.sharding.Mesh
) -> Callable[[TrainState, Mapping[str, jax.Array]], tuple[TrainState, dict[str, jax.Array]]]:
    """``train_step(state, batch) -> (state, metrics)`` of CAM training (``runner``'s update).

    ``batch = {"image": (B, H, W, 3), "labels": (B, K)}`` global arrays sharded on ``"data"``;
    metrics: every loss term of ``settings.term_names()``. With ``batch_norm="batch"`` the
    state's ``batch_stats`` move by branch 1's global-batch statistics.
    """
    return runner.make_train_step(cam_loss_on_batch(model, settings), tx, mesh)


def _cam_overlays(model: Any, mesh: jax.sharding.Mesh) -> runner.ImageSummaryFn:
    """``cam/overlay``: the CAMs (and SEAM's ``cam_rv``) of the batch's first image."""
    replicated = parallel.replicated_sharding(mesh)

    @functools.partial(jax.jit, out_shardings=replicated)
    def preview(params, batch_stats, images):
        outputs = model.apply({"params": params, "batch_stats": batch_stats}, images[:1])
        return {k: v.astype(jnp.float32) for k, v in outputs.items() if k in ("cam", "cam_rv")}

    def image_summary(state, host_batch, batch):
        outputs = jax.device_get(preview(state.params, state.batch_stats, batch["image"]))
        grid = observability.cam_overlay_grid(
            np.asarray(host_batch["image"][0]), outputs, np.asarray(host_batch["labels"][0])
        )
        return {"cam/overlay": grid}

    return image_summary


def make_stage(
    config: ml_collections.ConfigDict,
    mesh: jax.sharding.Mesh,
    *,
    data_factory: DataFactory = make_train_data,
) -> runner.Stage:
    """The CAM stage of ``config`` (``hfpl_jax.train.cam_config``) on ``mesh``."""
    settings = LossSettings.from_config(config.loss)
    data = data_factory(config, jax.process_index(), jax.process_count())
    model = model_setup.build_model(config, data.num_classes)
    return runner.Stage(
        name="train-cam",
        model=model,
        loss_fn=cam_loss_on_batch(model, settings),
        data=data,
        batch_keys=("image", "labels"),
        image_summary=_cam_overlays(model, mesh),
    )


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    data_factory: DataFactory = make_train_data,
    progress: bool = True,
) -> TrainState:
    """Trains (or resumes) the CAM network of ``config`` in ``workdir`` (see
    ``hfpl_jax.train.runner.train_and_evaluate``); ``data_factory(config, process_index,
    process_count)`` supplies the training data."""
    make = functools.partial(make_stage, data_factory=data_factory)
    return runner.train_and_evaluate(config, workdir, make, progress=progress)


def main(argv: list[str] | None = None) -> int:
    """``hfpl-jax train-cam --config=FILE --workdir=DIR [--config.KEY=VALUE ...]``."""
    return runner.main(
        argv,
        prog="hfpl-jax train-cam",
        description="Train the CAM network (SEAM + HFPL ISL/FSL) from a config file.",
        make_stage=make_stage,
    )
