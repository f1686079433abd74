"""The training runner: what every training stage shares, written once.

A stage (``hfpl_jax.train.cam``; AffinityNet and DeepLab next) supplies a :class:`Stage`: its
model, its loss, its data and the names of its metrics. The runner owns the rest:

* restore-or-initialise: the newest intact checkpoint of ``WORKDIR/checkpoints`` (parameters,
  optimizer state, step, key, input-pipeline position; a corrupt one is set aside and the one
  before it used, see ``hfpl_jax.checkpoint``), else a fresh state (``config.seed``, then
  ``config.model.init_weights``);
* the optimizer of ``config.optim`` (``hfpl_jax.train.optimizers``) over the model's parameters;
* the jitted, donated update over global arrays (:func:`make_train_step`);
* checkpoints every ``config.checkpoint.every_steps`` and at the end; SIGTERM/SIGINT save and stop
  cleanly (a multi-process run, at the next ``log_every_steps`` step, all processes together);
* the finite check: every metric of every step, the run stopping at the first NaN/Inf with
  :class:`NonFiniteLossError` naming the metric and the step, the bad state never saved;
* logging: ``metrics.jsonl``, TensorBoard, a progress bar, the optimizer's own learning rate,
  images/s, the stage's images; the config (``config.json`` and the log), versions and devices;
* evaluation: the evaluators ``config.evals`` declares (``hfpl_jax.train.evaluators``), every
  ``every_steps`` and at the end, logged as ``eval/<name>/...``;
* the shared command line (:func:`main`): ``--config``, ``--workdir``, ``--no_progress`` and the
  multi-host flags ``--distributed``, ``--coordinator_address``, ``--num_processes``,
  ``--process_id``.

The config fields the runner reads: ``seed``, ``input.dataset/split/global_batch_size/crop_size``,
``model.arch/init_weights`` (and the rest of ``model.*`` through
``hfpl_jax.train.model_setup.build_model``), ``optim.*``, ``train.num_steps/num_epochs/
log_every_steps/image_every_steps``, ``checkpoint.every_steps/keep/restore_data_state``,
``mesh.num_devices`` and ``evals``.

Writing a stage (a sketch of the two that come next; each is a module of ~200 lines)::

    # hfpl_jax/train/affinity.py: AffinityNet (train_aff_voc.py)
    def make_stage(config, mesh):
        data = runner.TrainData(                       # batches {"image", "bg_pos", "fg_pos",
            iterator=input_pipeline.make_aff_train_iterator(...),  # "neg"} (affinity labels
            num_classes=K, num_train_examples=N)       #  from the CRF outputs)
        model = model_setup.build_model(config, K)     # arch "affinity", batch_norm "frozen"
        def loss_fn(params, batch_stats, batch, key):  # the affinity loss terms
            ...
            return total, (terms, batch_stats)         # frozen BN: statistics unchanged
        return runner.Stage("train-aff", model, loss_fn, data,
                            batch_keys=("image", "bg_pos", "fg_pos", "neg"))
    def main(argv=None):
        return runner.main(argv, prog="hfpl-jax train-aff", description="...",
                           make_stage=make_stage)

    # hfpl_jax/train/segmentation.py: DeepLab-LargeFOV (train_final_voc.py)
    #   data: make_seg_train_iterator, {"image", "label"} with the pseudo labels;
    #   model: arch "deeplab_largefov", model.batch_norm "batch": loss_fn applies the model with
    #   mutable=["batch_stats"] and returns the new running averages, which the runner carries;
    #   optim: reference_momentum_bug False (a real momentum 0.9) and the schedule
    #   lr·(1 − t/(max+1))^0.9, an option of hfpl_jax.train.optimizers;
    #   evals: a "seg_miou" evaluator registered in hfpl_jax.train.evaluators, returning a
    #   ConfusionMatrix.
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
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import ml_collections
import numpy as np

from hfpl_jax import checkpoint as checkpoint_lib
from hfpl_jax import config_utils, parallel
from hfpl_jax.train import evaluators as evaluators_lib
from hfpl_jax.train import model_setup, observability, optimizers
from hfpl_jax.train.train_state import TrainState, checkpoint_items, from_checkpoint_items

__all__ = [
    "LossFn",
    "NonFiniteLossError",
    "Stage",
    "StageFactory",
    "TrainData",
    "check_finite",
    "main",
    "make_train_step",
    "max_steps",
    "parse_args",
    "train_and_evaluate",
]

logger = logging.getLogger(__name__)

# loss_fn(params, batch_stats, batch, key) -> (loss, (metrics, new_batch_stats)): differentiable
# in params; batch holds the Stage's batch_keys as global arrays; key is this update's key.
LossFn = Callable[[Any, Any, Mapping[str, jax.Array], jax.Array], tuple[jax.Array, tuple[Any, Any]]]
# image_summary(state, host_batch, global_batch) -> {TensorBoard tag: uint8 (H, W, 3)}; called on
# every process (it may run jitted code), written by process 0.
ImageSummaryFn = Callable[[TrainState, Mapping[str, np.ndarray], Mapping[str, jax.Array]], dict]


@dataclasses.dataclass
class TrainData:
    """What the loop needs from the input side.

    Attributes:
      iterator: yields host-local batches ``{name: (B_local, ...)}`` (at least the stage's
        ``batch_keys``); has ``get_state()`` / ``set_state()`` (checkpointed).
      num_classes: K, the foreground classes.
      num_train_examples: the training split's size (for ``max_step``).
      class_names: the K foreground class names (for evaluators' per-class logs).
    """

    iterator: Iterator[Mapping[str, np.ndarray]]
    num_classes: int
    num_train_examples: int
    class_names: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Stage:
    """What a training stage supplies to :func:`train_and_evaluate`.

    Attributes:
      name: the command's name (``"train-cam"``), shown by the progress bar.
      model: the Flax module (``hfpl_jax.train.model_setup.build_model``); the runner initialises
        it on a ``(1, crop, crop, 3)`` input and evaluators apply it.
      loss_fn: see :data:`LossFn`; its metrics are float32 scalars, ``"loss"`` among them, each
        logged as ``loss/<name>`` (``train/<name>`` when the name does not start with "loss").
      data: the training input.
      batch_keys: the entries of a host batch that go to the device (sharded over ``"data"``).
      image_summary: images for TensorBoard every ``config.train.image_every_steps`` (optional).
    """

    name: str
    model: Any
    loss_fn: LossFn
    data: TrainData
    batch_keys: tuple[str, ...] = ("image", "labels")
    image_summary: ImageSummaryFn | None = None


StageFactory = Callable[[ml_collections.ConfigDict, jax.sharding.Mesh], Stage]


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


def make_train_step(
    loss_fn: LossFn, tx: Any, mesh: jax.sharding.Mesh
) -> Callable[[TrainState, Mapping[str, jax.Array]], tuple[TrainState, dict[str, jax.Array]]]:
    """``train_step(state, batch) -> (state, metrics)``: one jitted, donated, sharded update.

    ``g = ∇_params loss_fn(params, batch_stats, batch, fold_in(key, step))``; the optimizer turns
    ``g`` into ``u``; ``params ← params + u``; ``batch_stats`` become the loss's new statistics;
    ``step ← step + 1``. The state is replicated, every batch entry sharded on ``"data"``.
    """
    replicated = parallel.replicated_sharding(mesh)

    def train_step(state: TrainState, batch):
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (_, (metrics, batch_stats)), grads = grad_fn(
            state.params, state.batch_stats, batch, state.step_key()
        )
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = jax.tree.map(lambda p, u: p + u, state.params, updates)
        new_state = state.replace(
            step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state
        )
        return new_state, metrics

    return jax.jit(
        train_step,
        in_shardings=(replicated, parallel.data_sharding(mesh)),
        out_shardings=(replicated, replicated),
        donate_argnums=(0,),
    )


# --------------------------------------------------------------------------------------------------
# Set-up


def config_to_dict(config: ml_collections.ConfigDict) -> dict:
    return json.loads(config.to_json_best_effort())


def make_optimizer(config, model, max_step: int) -> optimizers.Optimizer:
    """``config.optim`` over the model's parameters; warns about rules that match nothing."""
    abstract_params = model_setup.abstract_variables(model, config)["params"]
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
    return optimizer


def restore_or_initialize(
    config, stage: Stage, optimizer, mesh, manager: checkpoint_lib.CheckpointManager
) -> TrainState:
    """The newest intact checkpoint's state (and input position), else a fresh state."""
    template = model_setup.abstract_train_state(stage.model, optimizer.tx, config)
    iterator = stage.data.iterator if config.checkpoint.restore_data_state else None
    found = manager.restore_latest(
        abstract=model_setup.abstract_checkpoint_items(template, mesh), data_iterator=iterator
    )
    if found is None:
        return model_setup.init_train_state(stage.model, optimizer.tx, config, mesh)
    step, restored = found
    state = from_checkpoint_items(restored)
    if int(jax.device_get(state.step)) != step:
        raise ValueError(
            f"checkpoint {step} in {manager.directory} holds step "
            f"{int(jax.device_get(state.step))}; was it copied from another run?"
        )
    logger.info("resumed from %s at step %d", manager.directory, step)
    return state


def log_startup(config, mesh, workdir, max_step, stage: Stage, optimizer, params) -> None:
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
        stage.data.num_train_examples,
        stage.data.num_classes,
        max_step,
        config.input.global_batch_size,
    )
    logger.info("config:\n%s", config)
    logger.info(
        "optimizer: %s momentum %g, groups:\n%s",
        config.optim.name,
        optimizer.momentum,
        optimizers.describe_groups(optimizer.groups, params),
    )


# --------------------------------------------------------------------------------------------------
# The loop


class _MetricsLog:
    """Host side of the per-step metrics: checked one step late (one update stays in flight),
    averaged between logs, shown on the progress bar; images/s excludes evaluation time."""

    def __init__(self, writer, progress_bar, global_batch_size: int, start_step: int):
        self.writer, self.progress_bar = writer, progress_bar
        self.global_batch_size = global_batch_size
        self.accumulated = observability.Accumulator()
        self.pending: tuple[int, Any] | None = None
        self.last_time, self.last_step = time.perf_counter(), start_step

    def push(self, step: int, metrics) -> None:
        """Queues ``step``'s device metrics after checking the previous step's."""
        self.drain()
        self.pending = (step, metrics)

    def drain(self) -> None:
        """Checks (finite) and accumulates the queued step's metrics."""
        if self.pending is not None:
            step, metrics = self.pending
            self.pending = None
            values = jax.device_get(metrics)
            check_finite(step, values)
            self.accumulated.add(values)
            self.progress_bar.update(step + 1, values["loss"])

    def restart_clock(self, done: int) -> None:
        self.last_time, self.last_step = time.perf_counter(), done

    def exclude(self, seconds: float) -> None:
        self.last_time += seconds

    def write(self, done: int, learning_rate: float) -> None:
        self.drain()
        now = time.perf_counter()
        scalars = self.accumulated.mean_and_reset()
        scalars["learning_rate"] = learning_rate
        if done > self.last_step:
            elapsed = now - self.last_time
            scalars["images_per_second"] = (
                (done - self.last_step) * self.global_batch_size / elapsed
            )
        self.writer.write_scalars(done, scalars)
        self.restart_clock(done)


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    make_stage: StageFactory,
    *,
    progress: bool = True,
) -> TrainState:
    """Trains (or resumes) the stage ``make_stage(config, mesh)`` in ``workdir``, evaluating it
    with ``config.evals``.

    Rerunning the same command continues the run from its newest intact checkpoint. Writes
    ``workdir/checkpoints``, TensorBoard events (``workdir/tensorboard``), ``metrics.jsonl`` and
    ``config.json``.

    Returns:
      The final state.

    Raises:
      NonFiniteLossError: a metric became NaN/Inf (the last good checkpoint is kept).
    """
    os.makedirs(workdir, exist_ok=True)
    is_main = jax.process_index() == 0
    mesh = parallel.make_mesh(config.mesh.num_devices)
    parallel.local_batch_size(config.input.global_batch_size, mesh)
    stage = make_stage(config, mesh)
    max_step = max_steps(config, stage.data.num_train_examples)
    optimizer = make_optimizer(config, stage.model, max_step)
    manager = checkpoint_lib.CheckpointManager(
        workdir, every_steps=config.checkpoint.every_steps, keep=config.checkpoint.keep
    )
    try:
        state = restore_or_initialize(config, stage, optimizer, mesh, manager)
        start_step = int(jax.device_get(state.step))
        evals = evaluators_lib.build_evaluators(
            config.get("evals"),
            evaluators_lib.EvalContext(config, stage.model, mesh, stage.data.class_names),
        )
    except BaseException:
        manager.close()
        raise
    if is_main:
        log_startup(config, mesh, workdir, max_step, stage, optimizer, state.params)
        observability.write_json_atomic(
            os.path.join(workdir, "config.json"), config_to_dict(config)
        )
    train_step = make_train_step(stage.loss_fn, optimizer.tx, mesh)
    writer = observability.MetricWriter(workdir, start_step=start_step, enabled=is_main)
    progress_bar = observability.ProgressBar(
        total=max_step, initial=start_step, enabled=is_main and progress, desc=stage.name
    )
    log = _MetricsLog(writer, progress_bar, config.input.global_batch_size, start_step)
    stop = _StopSignal()
    config_json = config_to_dict(config)
    image_every = config.train.image_every_steps if stage.image_summary else 0
    try:
        for step in range(start_step, max_step):
            host_batch = _next_batch(stage.data.iterator, step, max_step)
            batch = parallel.host_batch_to_global(
                {key: host_batch[key] for key in stage.batch_keys}, mesh
            )
            if step == start_step:
                train_step = _compile_on_every_process(train_step, (state, batch), f"step{step}")
            state, metrics = train_step(state, batch)
            log.push(step, metrics)
            done = step + 1
            if step == start_step:
                # images/s counts from the end of the first update (which includes compilation).
                log.drain()
                log.restart_clock(done)
            if done % config.train.log_every_steps == 0 or done == max_step:
                log.write(done, float(optimizer.learning_rate(step)))
            if image_every and (done % image_every == 0 or done == max_step):
                images = stage.image_summary(state, host_batch, batch)
                writer.write_images(done, images)
            due = [e for e in evals if e.due(done, max_step)]
            if due:
                log.drain()  # never evaluate a state whose loss was not finite
                log.exclude(_evaluate(due, state, done, writer))
            stopping = stop.requested(agree=done % config.train.log_every_steps == 0)
            if manager.should_save(done) or done == max_step or stopping:
                log.drain()  # never checkpoint a state whose loss was not finite
                manager.save(
                    done, **checkpoint_items(state), data_iterator=stage.data.iterator,
                    config=config_json,
                )  # fmt: skip
            if stopping:
                logger.warning("stop requested (signal); saved step %d and exiting", done)
                break
        log.drain()
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


def _compile_on_every_process(jitted, args: tuple, name: str):
    """``jitted`` compiled for ``args``; in a multi-process run every process then waits for the
    others' compilation, so the first execution starts together everywhere: the CPU collectives
    (gloo) give up after 30 s, less than the skew of two long compilations on a busy host."""
    compiled = jitted.lower(*args).compile()
    if jax.process_count() > 1:
        import orbax.checkpoint as ocp  # noqa: PLC0415

        barrier = ocp.multihost.get_barrier_sync_fn()
        barrier(key=f"hfpl_jax.runner.compiled.{name}", timeout_ms=3_600_000)
    return compiled


def _next_batch(iterator, step: int, max_step: int):
    try:
        return next(iterator)
    except StopIteration:
        raise ValueError(
            f"the input pipeline ended after {step} steps, before max_step {max_step}: "
            "leave input.num_epochs unset (None) or raise it."
        ) from None


def _evaluate(due, state: TrainState, step: int, writer) -> float:
    """Runs the due evaluators and logs their scalars; returns the seconds it took."""
    start = time.perf_counter()
    scalars = {}
    for scheduled in due:
        metrics = scheduled.evaluator.evaluate(state)
        scalars.update(evaluators_lib.metric_scalars(f"eval/{scheduled.name}", metrics))
    writer.write_scalars(step, scalars)
    seconds = time.perf_counter() - start
    logger.info(
        "evaluated at step %d in %.1f s: %s",
        step,
        seconds,
        ", ".join(f"{k} {v:.4g}" for k, v in scalars.items() if "iou_per_class" not in k),
    )
    return seconds


class _StopSignal:
    """SIGTERM/SIGINT request a checkpoint and a clean exit.

    A multi-process run stops when any process got a signal (a preempted pod signals every
    host, maybe not at the same step): the processes agree at ``agree`` steps, by one small
    all-gather, so all of them save the same step and leave together.
    """

    def __init__(self):
        self._requested = False
        self._previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        del frame
        if self._requested:  # second signal: give up immediately
            self.restore()
            raise KeyboardInterrupt
        self._requested = True
        logger.warning("received signal %d: will checkpoint and stop", signum)

    def requested(self, *, agree: bool) -> bool:
        if jax.process_count() == 1:
            return self._requested
        if not agree:
            return False
        from jax.experimental import multihost_utils  # noqa: PLC0415

        flags = multihost_utils.process_allgather(np.int32(self._requested))
        return bool(np.any(flags))

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}


# --------------------------------------------------------------------------------------------------
# Command line


def parse_args(
    argv: list[str], *, prog: str, description: str
) -> tuple[argparse.Namespace, ml_collections.ConfigDict]:
    """The shared flags, plus ``--config.KEY=VALUE`` overrides applied to the loaded config.

    Raises:
      ValueError, FileNotFoundError: a bad config file or override (the message names it).
    """
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description + " Any config value can be overridden with --config.KEY=VALUE "
        "(e.g. --config.train.num_steps=10).",
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


def main(argv: list[str] | None, *, prog: str, description: str, make_stage: StageFactory) -> int:
    """A stage's command: ``PROG --config=FILE --workdir=DIR [--config.KEY=VALUE ...]``.

    Returns:
      0 when the run finished (or stopped on a signal after saving), 1 on a non-finite loss,
      2 on a bad command line or config.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )
    # orbax logs every save step by step through absl at INFO; keep its warnings only.
    logging.getLogger("absl").setLevel(logging.WARNING)
    try:
        args, config = parse_args(argv, prog=prog, description=description)
    except (ValueError, FileNotFoundError) as error:
        print(f"{prog}: {error}", file=sys.stderr)
        return 2
    parallel.initialize_distributed(
        coordinator_address=args.coordinator_address,
        num_processes=args.num_processes,
        process_id=args.process_id,
        auto=args.distributed,
    )
    try:
        train_and_evaluate(config, args.workdir, make_stage, progress=not args.no_progress)
    except NonFiniteLossError as error:
        logger.error("%s", error)
        return 1
    return 0
