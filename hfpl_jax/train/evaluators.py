"""Evaluation during training: evaluators registered by name and declared in the config.

A config declares its evaluations as data (the big_vision habit)::

    config.evals = {
        "val": {"type": "classification", "every_steps": 500, "split": "val"},
    }

Each entry names a registered ``type``, how often it runs (``every_steps``; it also runs after the
last step) and the options of that type's factory. The runner calls
``evaluator.evaluate(state)`` on every process (the work is jitted over global arrays) and logs
each result as ``eval/<entry>/<metric>`` to TensorBoard and ``metrics.jsonl``.

Results are **metrics that add up** (the scenic habit), so an evaluator sums them over batches and
a jitted reduction over a sharded global batch has already summed them over devices and hosts:

* :class:`Mean` ``(total, count)``: the value is ``total / count`` (a loss summed over images and
  the number of images, say), never a mean of per-batch means, so padding and uneven last batches
  cost nothing.
* :class:`ConfusionMatrix` ``counts[gt, pred]`` with the class names: it reports ``miou``,
  ``pixel_accuracy`` and ``iou_per_class/NN_name`` (``NN`` the class index, ``00_background``).

A new evaluator is a factory registered with :func:`register`; it receives an
:class:`EvalContext` (config, model, mesh, classes) and its config options as keyword arguments,
and returns an object with ``evaluate(state) -> {metric name: Mean | ConfusionMatrix}``. One
evaluator ships here, ``"classification"`` (the multi-label loss and accuracy of the image scores
on a held-out split); the CAM-mIoU and segmentation-mIoU evaluators build on the same registry.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from hfpl_jax import losses, parallel, pooling

__all__ = [
    "ConfusionMatrix",
    "EvalContext",
    "Evaluator",
    "Mean",
    "ScheduledEvaluator",
    "build_evaluators",
    "eval_batches",
    "metric_scalars",
    "register",
    "registered_types",
]


# --------------------------------------------------------------------------------------------------
# Metrics that add up


@dataclasses.dataclass(frozen=True)
class Mean:
    """A mean kept as ``(total, count)``: ``Mean(a, n) + Mean(b, m) = Mean(a + b, n + m)``."""

    total: float
    count: float

    def __add__(self, other: Mean) -> Mean:
        return Mean(self.total + other.total, self.count + other.count)

    def compute(self) -> dict[str, float]:
        """``{"": total / count}`` (NaN when nothing was counted)."""
        return {"": self.total / self.count if self.count else math.nan}


@dataclasses.dataclass(frozen=True)
class ConfusionMatrix:
    """Pixel counts ``counts[gt, pred]`` ``(C, C)`` over ``class_names`` (background first)."""

    counts: np.ndarray
    class_names: tuple[str, ...]

    def __post_init__(self):
        size = len(self.class_names)
        if np.shape(self.counts) != (size, size):
            raise ValueError(
                f"confusion counts must be ({size}, {size}) for {size} class names, "
                f"found {np.shape(self.counts)}."
            )

    def __add__(self, other: ConfusionMatrix) -> ConfusionMatrix:
        if other.class_names != self.class_names:
            raise ValueError("cannot add confusion matrices over different classes.")
        return ConfusionMatrix(np.asarray(self.counts) + np.asarray(other.counts), self.class_names)

    def iou(self) -> np.ndarray:
        """``(C,)`` IoU ``TP / (T + P − TP + 1e-10)`` per class (``eval_cam_voc.py``'s formula:
        a class absent from both ground truth and prediction counts as 0)."""
        counts = np.asarray(self.counts, np.float64)
        tp = np.diagonal(counts)
        return tp / (counts.sum(axis=1) + counts.sum(axis=0) - tp + 1e-10)

    def compute(self) -> dict[str, float]:
        """``miou``, ``pixel_accuracy`` and ``iou_per_class/NN_name``."""
        counts = np.asarray(self.counts, np.float64)
        iou = self.iou()
        total = counts.sum()
        values = {
            "miou": float(iou.mean()),
            "pixel_accuracy": float(np.trace(counts) / total) if total else math.nan,
        }
        for index, (name, value) in enumerate(zip(self.class_names, iou, strict=True)):
            values[f"iou_per_class/{index:02d}_{name}"] = float(value)
        return values


Metric = Mean | ConfusionMatrix


def metric_scalars(prefix: str, metrics: Mapping[str, Metric]) -> dict[str, float]:
    """``{f"{prefix}/{name}[/{part}]": value}`` for every metric and every value it reports."""
    scalars = {}
    for name, metric in metrics.items():
        for part, value in metric.compute().items():
            scalars["/".join(p for p in (prefix, name, part) if p)] = value
    return scalars


# --------------------------------------------------------------------------------------------------
# Registry


@dataclasses.dataclass(frozen=True)
class EvalContext:
    """What an evaluator factory may use.

    Attributes:
      config: the run's config.
      model: the stage's Flax module; ``model.apply(variables, images)`` runs it in inference mode.
      mesh: the data-parallel mesh (evaluation batches are sharded over it).
      class_names: the foreground class names (K of them).
    """

    config: ml_collections.ConfigDict
    model: Any
    mesh: jax.sharding.Mesh
    class_names: tuple[str, ...]


class Evaluator(Protocol):
    def evaluate(self, state: Any) -> Mapping[str, Metric]:
        """The metrics of ``state`` (a ``TrainState``), summed over the whole evaluation set."""


EvaluatorFactory = Callable[..., Evaluator]
_REGISTRY: dict[str, EvaluatorFactory] = {}


def register(name: str) -> Callable[[EvaluatorFactory], EvaluatorFactory]:
    """Decorator: registers ``factory(context, **options) -> Evaluator`` as ``type: name``."""

    def decorate(factory: EvaluatorFactory) -> EvaluatorFactory:
        if name in _REGISTRY and _REGISTRY[name] is not factory:
            raise ValueError(f"evaluator type {name!r} is already registered.")
        _REGISTRY[name] = factory
        return factory

    return decorate


def registered_types() -> tuple[str, ...]:
    return tuple(sorted(_REGISTRY))


@dataclasses.dataclass(frozen=True)
class ScheduledEvaluator:
    """One ``config.evals`` entry, built: runs after every ``every_steps`` steps and at the end."""

    name: str
    every_steps: int
    evaluator: Evaluator

    def due(self, step: int, max_step: int) -> bool:
        return step % self.every_steps == 0 or step == max_step


def build_evaluators(
    evals_config: Mapping[str, Any] | None, context: EvalContext
) -> list[ScheduledEvaluator]:
    """The evaluators ``config.evals`` declares, in name order.

    Raises:
      ValueError: an entry without a registered ``type``, without ``every_steps >= 1``, or with an
        option its factory does not take (the message names ``config.evals.<entry>``).
    """
    built = []
    for name in sorted(evals_config or {}):
        entry = dict(evals_config[name])
        where = f"config.evals.{name}"
        kind = entry.pop("type", None)
        if kind not in _REGISTRY:
            raise ValueError(f"{where}.type must be one of {registered_types()}, found {kind!r}.")
        every_steps = entry.pop("every_steps", None)
        if not isinstance(every_steps, int) or every_steps < 1:
            raise ValueError(f"{where}.every_steps must be an int >= 1, found {every_steps!r}.")
        try:
            evaluator = _REGISTRY[kind](context, **entry)
        except TypeError as error:
            raise ValueError(f"{where}: bad options for type {kind!r}: {error}.") from None
        built.append(ScheduledEvaluator(name, every_steps, evaluator))
    return built


# --------------------------------------------------------------------------------------------------
# Evaluation batches


def eval_batches(
    num_examples: int,
    global_batch_size: int,
    load: Callable[[int], Mapping[str, np.ndarray]],
    *,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
    """This process's rows of every global evaluation batch, padded, with a ``weight`` column.

    Global batch ``t`` holds examples ``[t·G, (t+1)·G)``; process ``p`` of ``P`` loads rows
    ``[p·G/P, (p+1)·G/P)`` of it. Rows past the last example repeat the shapes of example 0 with
    zeros and ``weight`` 0, so every process yields ``ceil(N / G)`` batches of ``G/P`` rows (a
    jitted reduction over global arrays needs every process in every batch) and every example is
    counted exactly once.

    Args:
      num_examples: N.
      global_batch_size: G, a multiple of ``process_count``.
      load: example index -> ``{name: array}`` (the same names and shapes for every index).

    Yields:
      ``{name: (G/P, ...), "weight": float32 (G/P,)}``.
    """
    if global_batch_size % process_count:
        raise ValueError(
            f"the evaluation batch {global_batch_size} must be a multiple of the process count "
            f"{process_count}."
        )
    local = global_batch_size // process_count
    template = None
    for start in range(0, num_examples, global_batch_size):
        rows, weights = [], []
        for row in range(local):
            index = start + process_index * local + row
            if index < num_examples:
                rows.append(dict(load(index)))
                weights.append(1.0)
            else:
                if template is None:
                    template = {k: np.zeros_like(v) for k, v in load(0).items()}
                rows.append(template)
                weights.append(0.0)
        batch = {name: np.stack([row[name] for row in rows]) for name in rows[0]}
        batch["weight"] = np.asarray(weights, np.float32)
        yield batch


# --------------------------------------------------------------------------------------------------
# "classification": the image-level multi-label loss and accuracy on a held-out split


class ClassificationEvaluator:
    """The multi-label soft-margin loss and the accuracy of the image scores on a split.

    Image ``i``'s scores ``s_i`` ``(K,)`` are the spatial mean of the network's ``score`` output
    over the foreground channels (the GAP of CAM training); with multi-hot labels ``y_i``:

    * ``loss``: ``Mean(Σ_i MLSM(s_i, y_i), N)``, ``MLSM = −mean_k[y log σ(s) + (1−y) log σ(−s)]``;
    * ``label_accuracy``: ``Mean(Σ_i mean_k [1(s_ik > 0) = y_ik], N)``;
    * ``exact_match``: ``Mean(Σ_i Π_k [1(s_ik > 0) = y_ik], N)``.

    Images are resized (PIL bilinear) to ``image_size × image_size`` and normalised like training
    inputs.
    """

    def __init__(
        self,
        context: EvalContext,
        *,
        split: str = "val",
        batch_size: int | None = None,
        image_size: int | None = None,
        score: str | None = None,
        max_examples: int | None = None,
    ):
        from hfpl_jax import data  # noqa: PLC0415 - keeps TensorFlow-free imports lazy

        config = context.config
        self.score = score or config.get("loss", {}).get("gap_source", "cam")
        if self.score not in ("cam", "logits"):
            raise ValueError(f"score must be 'cam' or 'logits', found {self.score!r}.")
        self.image_size = int(image_size or config.input.crop_size)
        self.batch_size = int(batch_size or config.input.global_batch_size)
        parallel.local_batch_size(self.batch_size, context.mesh)  # divisible by the mesh
        self.mesh = context.mesh
        self.model = context.model
        builder_kwargs = dict(config.input.to_dict().get("builder_kwargs") or {})
        self.source = data.raw_source(
            config.input.dataset,
            data.resolve_data_dir(config.input.data_dir),
            split,
            **builder_kwargs,
        )
        total = len(self.source)
        self.num_examples = total if max_examples is None else min(int(max_examples), total)
        self._sums = _classification_sums_fn(context.model, self.score, context.mesh)

    def _load(self, index: int) -> dict[str, np.ndarray]:
        from PIL import Image  # noqa: PLC0415

        from hfpl_jax import image_ops  # noqa: PLC0415
        from hfpl_jax.data import sources  # noqa: PLC0415

        example = self.source[index]
        image = sources.decode_image(example["image"]).convert("RGB")
        image = image.resize((self.image_size, self.image_size), Image.BILINEAR)
        return {
            "image": image_ops.normalize_image(np.asarray(image)),
            "labels": np.asarray(example["labels"], np.float32),
        }

    def evaluate(self, state: Any) -> dict[str, Mean]:
        totals = np.zeros(4, np.float64)
        for batch in eval_batches(
            self.num_examples,
            self.batch_size,
            self._load,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        ):
            sums = self._sums(
                state.params, state.batch_stats, parallel.host_batch_to_global(batch, self.mesh)
            )
            totals += np.asarray(jax.device_get(sums), np.float64)
        loss, accuracy, exact, count = totals
        return {
            "loss": Mean(loss, count),
            "label_accuracy": Mean(accuracy, count),
            "exact_match": Mean(exact, count),
        }


def _classification_sums_fn(model: Any, score: str, mesh: jax.sharding.Mesh):
    """jit: ``(params, batch_stats, batch) -> [Σ w·MLSM, Σ w·accuracy, Σ w·exact, Σ w]``."""
    replicated = parallel.replicated_sharding(mesh)

    def sums(params, batch_stats, batch):
        outputs = model.apply({"params": params, "batch_stats": batch_stats}, batch["image"])
        scores = pooling.global_average_pool(outputs[score].astype(jnp.float32))[:, 1:]
        labels = batch["labels"]
        weight = batch["weight"]
        per_image = jax.vmap(lambda s, y: losses.multilabel_soft_margin_loss(s[None], y[None]))(
            scores, labels
        )
        correct = (scores > 0) == (labels > 0.5)
        accuracy = jnp.mean(correct.astype(jnp.float32), axis=-1)
        exact = jnp.all(correct, axis=-1).astype(jnp.float32)
        return jnp.stack(
            [jnp.sum(weight * per_image), jnp.sum(weight * accuracy),
             jnp.sum(weight * exact), jnp.sum(weight)]
        )  # fmt: skip

    return jax.jit(sums, out_shardings=replicated)


register("classification")(ClassificationEvaluator)
