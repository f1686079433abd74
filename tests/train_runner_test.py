"""The runner's evaluation hook and its resume from the newest intact checkpoint, on the CAM
stage (a tiny model on a tiny generated dataset)."""

from __future__ import annotations

import json
import logging
import os
import shutil

import jax
import ml_collections
import numpy as np
import pytest
from train_cam_helpers import flat, read_event_tags, shapes_dir, tiny_config  # noqa: F401

from hfpl_jax import checkpoint, parallel
from hfpl_jax.train import cam, evaluators, model_setup

EVALS = {"val": {"type": "classification", "every_steps": 2, "batch_size": 8}}


def _config(data_dir):
    config = tiny_config(data_dir, **{"train.image_every_steps": 0, "checkpoint.every_steps": 2,
                                      "checkpoint.keep": 3})  # fmt: skip
    with config.unlocked():
        config.evals = ml_collections.ConfigDict(EVALS)
    return config


@pytest.fixture(scope="module")
def trained(shapes_dir, tmp_path_factory):  # noqa: F811
    workdir = str(tmp_path_factory.mktemp("runner") / "run")
    state = cam.train_and_evaluate(_config(shapes_dir), workdir, progress=False)
    return workdir, jax.device_get(state)


def _records(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_declared_evaluators_run_every_n_steps_and_are_logged(shapes_dir, trained):  # noqa: F811
    workdir, state = trained
    evals = [r for r in _records(workdir) if any(k.startswith("eval/") for k in r)]
    assert [r["step"] for r in evals] == [2, 4]
    names = {"eval/val/loss", "eval/val/label_accuracy", "eval/val/exact_match"}
    assert all(set(r) == {"step", "time", *names} for r in evals)
    tags = read_event_tags(os.path.join(workdir, "tensorboard"))
    assert all(tags[name] == [2, 4] for name in names)
    # The values logged at the last step are the final state's.
    config = _config(shapes_dir)
    model = model_setup.build_model(config, 6)
    context = evaluators.EvalContext(config, model, parallel.make_mesh(), ())
    evaluator = evaluators.ClassificationEvaluator(context, split="val", batch_size=8)
    final = evaluator.evaluate(state)
    for name in names:
        want = final[name.split("/")[-1]].compute()[""]
        np.testing.assert_allclose(evals[-1][name], want, rtol=1e-6, err_msg=name)


def test_resume_skips_a_corrupt_checkpoint_and_ends_bitwise_equal(
    shapes_dir,  # noqa: F811
    trained,
    tmp_path,
    caplog,
):
    """The issue's scenario: bytes flipped in the largest parameter file of the newest
    checkpoint. The rerun resumes from the checkpoint before it, says so, trains those steps
    again and ends where the uninterrupted run ended."""
    original, state = trained
    workdir = str(tmp_path / "corrupted")
    shutil.copytree(original, workdir)
    checkpoints = checkpoint.checkpoint_dir(workdir)
    assert sorted(os.listdir(checkpoints)) == ["2", "4"]
    params_dir = os.path.join(checkpoints, "4", "params")
    largest = max(
        (os.path.join(root, name) for root, _, names in os.walk(params_dir) for name in names),
        key=os.path.getsize,
    )
    with open(largest, "r+b") as f:
        f.seek(os.path.getsize(largest) // 2)
        flipped = bytes(b ^ 0xFF for b in f.read(8))
        f.seek(os.path.getsize(largest) // 2)
        f.write(flipped)
    with pytest.raises(checkpoint.CorruptCheckpointError, match=largest):
        checkpoint.load_params(workdir, step=4)

    with caplog.at_level(logging.INFO):
        resumed = cam.train_and_evaluate(_config(shapes_dir), workdir, progress=False)
    assert largest in caplog.text
    assert "resuming from checkpoint 2, the newest intact one" in caplog.text
    assert f"resumed from {checkpoints} at step 2" in caplog.text
    assert os.path.isdir(os.path.join(workdir, checkpoint.CORRUPT_SUBDIR, "4"))
    want = flat(state.params)
    for path, value in flat(resumed.params).items():
        np.testing.assert_array_equal(value, want[path], err_msg=path)
    assert [r["step"] for r in _records(workdir) if "loss" in r] == [1, 2, 3, 4]
