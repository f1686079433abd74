"""Evaluators (hfpl_jax.train.evaluators): metrics that add up, the registry, batching, and the
"classification" evaluator against a float64 NumPy computation of the same quantities."""

from __future__ import annotations

import types

import jax
import numpy as np
import pytest
from train_cam_helpers import shapes_dir, tiny_config  # noqa: F401 - shapes_dir is a fixture

from hfpl_jax import parallel
from hfpl_jax.train import evaluators, model_setup


def test_means_add_as_totals_and_counts():
    a, b = evaluators.Mean(3.0, 2), evaluators.Mean(7.0, 8)
    assert (a + b).compute() == {"": 1.0}
    assert np.isnan(evaluators.Mean(0.0, 0).compute()[""])


def test_confusion_matrix_iou_and_names():
    counts = np.array([[5, 1, 0], [2, 3, 1], [0, 0, 4]], np.int64)
    names = ("background", "circle", "square")
    whole = evaluators.ConfusionMatrix(counts, names)
    halves = evaluators.ConfusionMatrix(counts // 2, names) + evaluators.ConfusionMatrix(
        counts - counts // 2, names
    )
    np.testing.assert_array_equal(halves.counts, counts)
    # IoU_c = TP / (row_c + col_c − TP): 5/(6+7−5), 3/(6+4−3), 4/(4+5−4).
    want = np.array([5 / 8, 3 / 7, 4 / 5])
    np.testing.assert_allclose(whole.iou(), want, rtol=1e-9)
    scalars = evaluators.metric_scalars("eval/val", {"seg": whole})
    assert scalars["eval/val/seg/miou"] == pytest.approx(want.mean())
    assert scalars["eval/val/seg/pixel_accuracy"] == pytest.approx(12 / 16)
    assert scalars["eval/val/seg/iou_per_class/02_square"] == pytest.approx(0.8)
    with pytest.raises(ValueError, match=r"\(3, 3\)"):
        evaluators.ConfusionMatrix(counts[:2], names)


def test_eval_batches_cover_every_example_once_on_every_process():
    seen = []
    counts = set()
    for process in range(2):
        batches = list(
            evaluators.eval_batches(
                7, 4, lambda i: {"x": np.array([i + 10])}, process_index=process, process_count=2
            )
        )
        counts.add(len(batches))
        for batch in batches:
            assert batch["x"].shape == (2, 1)
            rows = list(zip(batch["x"][:, 0], batch["weight"], strict=True))
            seen += [int(x) for x, w in rows if w == 1]
            assert all(x == 0 for x, w in rows if w == 0)
    assert counts == {2} and sorted(seen) == list(range(10, 17))


def _context(config, num_devices):
    model = model_setup.build_model(config, 6)
    mesh = parallel.make_mesh(num_devices)
    return evaluators.EvalContext(config, model, mesh, tuple(f"c{i}" for i in range(6)))


def test_registry_errors_name_the_entry(shapes_dir):  # noqa: F811
    context = _context(tiny_config(shapes_dir), 8)
    with pytest.raises(ValueError, match=r"config\.evals\.v\.type must be one of .*classification"):
        evaluators.build_evaluators({"v": {"type": "nope", "every_steps": 1}}, context)
    with pytest.raises(ValueError, match=r"config\.evals\.v\.every_steps"):
        evaluators.build_evaluators({"v": {"type": "classification"}}, context)
    with pytest.raises(ValueError, match=r"config\.evals\.v: bad options .*bogus"):
        evaluators.build_evaluators(
            {"v": {"type": "classification", "every_steps": 1, "bogus": 1}}, context
        )
    (built,) = evaluators.build_evaluators(
        {"v": {"type": "classification", "every_steps": 3}}, context
    )
    assert [s for s in range(1, 11) if built.due(s, 10)] == [3, 6, 9, 10]


def _reference(evaluator, variables, num_examples):
    """float64 NumPy: the metrics from the network's per-image scores."""
    loss = accuracy = exact = 0.0
    for index in range(num_examples):
        example = evaluator._load(index)
        outputs = evaluator.model.apply(variables, example["image"][None])
        scores = np.asarray(outputs["cam"], np.float64)[0, :, :, 1:].mean(axis=(0, 1))
        labels = example["labels"].astype(np.float64)
        log_p, log_q = -np.logaddexp(0, -scores), -np.logaddexp(0, scores)
        loss += -np.mean(labels * log_p + (1 - labels) * log_q)
        correct = (scores > 0) == (labels > 0.5)
        accuracy += correct.mean()
        exact += float(correct.all())
    return {"loss": loss, "label_accuracy": accuracy, "exact_match": exact}


def test_classification_metrics_match_numpy_with_padding_and_any_mesh(shapes_dir):  # noqa: F811
    config = tiny_config(shapes_dir)
    results = {}
    for num_devices, batch_size in ((8, 8), (2, 2)):
        context = _context(config, num_devices)
        evaluator = evaluators.ClassificationEvaluator(
            context, split="val", batch_size=batch_size, max_examples=3
        )
        variables = jax.device_get(model_setup.init_variables(context.model, config))
        state = types.SimpleNamespace(**variables)
        results[num_devices] = (evaluator.evaluate(state), evaluator, variables)
    metrics, evaluator, variables = results[8]
    want = _reference(evaluator, variables, 3)
    for name, total in want.items():
        for got, _, _ in results.values():
            assert got[name].count == 3, name  # padding rows never count
            np.testing.assert_allclose(got[name].total, total, rtol=2e-5, err_msg=name)
    assert 0 <= metrics["label_accuracy"].compute()[""] <= 1
