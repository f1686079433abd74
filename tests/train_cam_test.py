"""CAM training end to end (hfpl_jax.train.cam) on a tiny model and a tiny generated dataset.

Everything runs in this process on the 8 simulated CPU devices of conftest.py; the subprocess
tests (SIGKILL/resume, two jax.distributed processes) are in train_cam_distributed_test.py.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from train_cam_helpers import (  # noqa: F401 - shapes_dir is a fixture
    REPO,
    SHAPES_CONFIG,
    flat,
    read_event_tags,
    shapes_dir,
    tiny_config,
    tiny_overrides,
)

from hfpl_jax import checkpoint, config_utils, parallel
from hfpl_jax.train import cam, cam_config, cam_loss, model_setup, optimizers, runner

# --------------------------------------------------------------------------------------------------


def test_one_step_end_to_end_through_the_command_line(
    shapes_dir,  # noqa: F811
    tmp_path,
    capsys,
):
    workdir = str(tmp_path / "run")
    argv = [
        f"--config={SHAPES_CONFIG}",
        f"--workdir={workdir}",
        *tiny_overrides(shapes_dir),
    ]
    assert cam.main(argv) == 0
    assert sorted(os.listdir(checkpoint.checkpoint_dir(workdir))) == ["3", "4"]  # keep 2

    records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    settings = cam_loss.LossSettings.from_config(tiny_config(shapes_dir).loss)
    for name in (*settings.term_names(), "learning_rate"):
        assert all(np.isfinite(r[name]) for r in records), name
    # images/s is measured from the end of the first (compiling) update on.
    assert "images_per_second" not in records[0]
    assert all(r["images_per_second"] > 0 for r in records[1:])
    assert {"loss_isl", "loss_fsl", "loss_er", "loss_ecr"} <= set(records[0])
    # Logged rates follow the poly schedule of the step taken (max_step = num_steps = 4).
    base_lr = tiny_config(shapes_dir).optim.lr
    for t, record in enumerate(records):
        assert record["learning_rate"] == pytest.approx(base_lr * (1 - t / 4) ** 0.9)

    tags = read_event_tags(os.path.join(workdir, "tensorboard"))
    for name in settings.term_names():
        assert tags[f"loss/{name}"] == [1, 2, 3, 4], name
    assert tags["train/learning_rate"] == [1, 2, 3, 4]
    assert tags["train/images_per_second"] == [2, 3, 4]
    assert tags["cam/overlay"] == [2, 4]
    with open(os.path.join(workdir, "config.json")) as f:
        assert json.load(f)["model"]["arch"] == "seam"

    # Frozen parameters (conv1a, b2*, every BN) did not move; the others did.
    config = tiny_config(shapes_dir)
    model = model_setup.build_model(config, 6)
    mesh = parallel.make_mesh()
    optimizer = optimizers.make_optimizer(
        config.optim, model_setup.abstract_variables(model, config)["params"], max_step=4
    )
    initial = flat(model_setup.init_train_state(model, optimizer.tx, config, mesh).params)
    final = flat(checkpoint.load_params(workdir))
    frozen = {p for group in optimizer.groups if group.frozen for p in group.paths}
    assert any(p.startswith("conv1a/") for p in frozen) and any("/bn_" in p for p in frozen)
    for path, value in initial.items():
        if path in frozen:
            np.testing.assert_array_equal(final[path], value, err_msg=path)
        else:
            assert not np.array_equal(final[path], value), f"{path} did not train"
    err = capsys.readouterr().err
    assert "train-cam" in err  # the progress bar


def test_unknown_override_is_a_usage_error(tmp_path, capsys):
    code = cam.main(
        [f"--config={SHAPES_CONFIG}", f"--workdir={tmp_path}", "--config.train.num_stepz=3"]
    )
    assert code == 2
    assert "config.train.num_stepz" in capsys.readouterr().err


class _Interrupting:
    """Wraps an iterator: raises after ``stop_after`` batches, or poisons batch ``nan_at``."""

    def __init__(self, iterator, stop_after=None, nan_at=None):
        self.iterator, self.stop_after, self.nan_at, self.count = iterator, stop_after, nan_at, 0

    def __iter__(self):
        return self

    def __next__(self):
        if self.stop_after is not None and self.count == self.stop_after:
            raise KeyboardInterrupt("simulated crash")
        batch = dict(next(self.iterator))
        if self.count == self.nan_at:
            batch["image"] = np.full_like(batch["image"], np.nan)
        self.count += 1
        return batch

    def get_state(self):
        return self.iterator.get_state()

    def set_state(self, state):
        self.iterator.set_state(state)


def _factory(**kwargs):
    def factory(config, process_index, process_count):
        data = cam.make_train_data(config, process_index, process_count)
        data.iterator = _Interrupting(data.iterator, **kwargs)
        return data

    return factory


def test_crashed_run_resumes_to_the_uninterrupted_result(shapes_dir, tmp_path):  # noqa: F811
    # Batch-statistics BN, so that the running averages must survive the checkpoint as well.
    config = tiny_config(shapes_dir, **{"train.image_every_steps": 0, "model.batch_norm": "batch"})
    whole = cam.train_and_evaluate(config, str(tmp_path / "whole"), progress=False)
    workdir = str(tmp_path / "crashed")
    with pytest.raises(KeyboardInterrupt):
        cam.train_and_evaluate(config, workdir, data_factory=_factory(stop_after=3), progress=False)
    assert checkpoint.CheckpointManager(workdir).latest_step() == 3
    resumed = cam.train_and_evaluate(config, workdir, progress=False)
    assert int(resumed.step) == 4
    for path, value in flat(whole.params).items():
        np.testing.assert_array_equal(flat(resumed.params)[path], value, err_msg=path)
    for path, value in flat(whole.batch_stats).items():
        np.testing.assert_array_equal(flat(resumed.batch_stats)[path], value, err_msg=path)
    assert int(flat(whole.batch_stats)["b2/bn_branch2a/num_batches_tracked"]) == 4
    for got, want in zip(
        jax.tree.leaves(resumed.opt_state), jax.tree.leaves(whole.opt_state), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    steps = [json.loads(line)["step"] for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert steps == [1, 2, 3, 4]


def test_run_resumes_on_another_device_count(shapes_dir, tmp_path):  # noqa: F811
    """Checkpointed on 8 devices, resumed on 2: the run ends where an uninterrupted 8-device run
    does (rel 1e-5, the data-parallel reductions' rounding), with its state on the new mesh."""
    config8 = tiny_config(shapes_dir, **{"train.image_every_steps": 0, "mesh.num_devices": 8})
    config2 = tiny_config(shapes_dir, **{"train.image_every_steps": 0, "mesh.num_devices": 2})
    whole = cam.train_and_evaluate(config8, str(tmp_path / "whole"), progress=False)
    workdir = str(tmp_path / "moved")
    with pytest.raises(KeyboardInterrupt):
        cam.train_and_evaluate(config8, workdir, data_factory=_factory(stop_after=2),
                               progress=False)  # fmt: skip
    resumed = cam.train_and_evaluate(config2, workdir, progress=False)
    assert int(resumed.step) == 4
    assert resumed.params["fc8"]["kernel"].sharding.mesh.devices.size == 2
    want = flat(whole.params)
    for path, value in flat(resumed.params).items():
        np.testing.assert_allclose(value, want[path], rtol=1e-5, atol=1e-7, err_msg=path)


def test_sigterm_saves_a_checkpoint_and_stops(shapes_dir, tmp_path):  # noqa: F811
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers can only be installed from the main thread")

    class _Terminating(_Interrupting):
        def __next__(self):
            if self.count == 2:
                signal.raise_signal(signal.SIGTERM)  # arrives while step 2 is being prepared
            return super().__next__()

    def factory(config, process_index, process_count):
        data = cam.make_train_data(config, process_index, process_count)
        data.iterator = _Terminating(data.iterator)
        return data

    config = tiny_config(shapes_dir, **{"train.image_every_steps": 0, "checkpoint.every_steps": 10})
    workdir = str(tmp_path / "term")
    state = cam.train_and_evaluate(config, workdir, data_factory=factory, progress=False)
    assert int(state.step) == 3  # finished the update in flight, then saved and stopped
    assert checkpoint.CheckpointManager(workdir).all_steps() == [3]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handler restored


def test_nan_loss_stops_naming_term_and_step_and_keeps_last_good_checkpoint(shapes_dir, tmp_path):  # noqa: F811
    config = tiny_config(shapes_dir, **{"train.image_every_steps": 0})
    workdir = str(tmp_path / "nan")
    with pytest.raises(runner.NonFiniteLossError, match=r"non-finite loss 'loss_\w+' at step 2"):
        cam.train_and_evaluate(config, workdir, data_factory=_factory(nan_at=2), progress=False)
    manager = checkpoint.CheckpointManager(workdir)
    assert manager.all_steps() == [1, 2]  # the state after the bad update was not saved
    manager.close()
    assert all(np.isfinite(v).all() for v in flat(checkpoint.load_params(workdir)).values())


# --------------------------------------------------------------------------------------------------
# The jitted update directly, on synthetic batches.


def _synthetic_batch(batch_size, crop, num_classes, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.zeros((batch_size, num_classes), np.float32)
    for row in range(batch_size):
        labels[row, rng.choice(num_classes, size=1 + row % 2, replace=False)] = 1.0
    images = rng.standard_normal((batch_size, crop, crop, 3)).astype(np.float32)
    return {"image": images, "labels": labels}


def _update_setup(config, num_devices, num_classes=6):
    mesh = parallel.make_mesh(num_devices)
    model = model_setup.build_model(config, num_classes)
    abstract = model_setup.abstract_variables(model, config)
    optimizer = optimizers.make_optimizer(
        config.optim, abstract["params"], max_step=config.train.num_steps
    )
    settings = cam_loss.LossSettings.from_config(config.loss)
    state = model_setup.init_train_state(model, optimizer.tx, config, mesh)
    step = cam.make_train_step(model, optimizer.tx, settings, mesh)
    return mesh, state, step


def _run_updates(config, num_devices, batches):
    mesh, state, step = _update_setup(config, num_devices)
    metrics = []
    for batch in batches:
        state, m = step(state, parallel.host_batch_to_global(batch, mesh))
        metrics.append(jax.device_get(m))
    return state, metrics


def test_8_device_update_equals_1_device_update(shapes_dir):  # noqa: F811
    config = tiny_config(shapes_dir)
    batches = [_synthetic_batch(8, 32, 6, seed) for seed in range(2)]
    state8, metrics8 = _run_updates(config, 8, batches)
    state1, metrics1 = _run_updates(config, 1, batches)
    assert state8.params["fc8"]["kernel"].sharding.mesh.devices.size == 8
    for m8, m1 in zip(metrics8, metrics1, strict=True):
        for name in m1:
            np.testing.assert_allclose(m8[name], m1[name], rtol=1e-5, atol=1e-7, err_msg=name)
    p8, p1 = flat(state8.params), flat(state1.params)
    for path in p1:
        np.testing.assert_allclose(p8[path], p1[path], rtol=1e-5, atol=1e-7, err_msg=path)


def _conv3x3_float64(images, kernel):
    """Stride-1, padding-1 3x3 convolution (no bias) in float64: (N,H,W,Ci) x (3,3,Ci,Co)."""
    images, kernel = np.asarray(images, np.float64), np.asarray(kernel, np.float64)
    n, h, w, _ = images.shape
    padded = np.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = np.zeros((n, h, w, kernel.shape[-1]))
    for dy in range(3):
        for dx in range(3):
            out += padded[:, dy : dy + h, dx : dx + w] @ kernel[dy, dx]
    return out


def test_frozen_batch_norm_statistics_never_move(shapes_dir):  # noqa: F811
    config = tiny_config(shapes_dir)
    assert config.model.batch_norm == "frozen"  # the reference's CAM stage
    _, initial, _ = _update_setup(config, 8)
    before = flat(jax.device_get(initial.batch_stats))
    state, _ = _run_updates(config, 8, [_synthetic_batch(8, 32, 6)])
    for path, value in flat(state.batch_stats).items():
        np.testing.assert_array_equal(value, before[path], err_msg=path)


def test_batch_mode_statistics_follow_branch_one_over_the_global_batch(shapes_dir):  # noqa: F811
    """model.batch_norm="batch": BN running averages move once per update, by the statistics of
    the full-scale branch over the whole (sharded) batch: running = 0.9 running + 0.1 batch, with
    PyTorch's unbiased variance. Checked on b2's first BN, whose input is conv1a(images)."""
    config = tiny_config(shapes_dir, **{"model.batch_norm": "batch"})
    batch = _synthetic_batch(8, 32, 6)
    _, initial, _ = _update_setup(config, 8)
    kernel = np.asarray(initial.params["conv1a"]["kernel"])
    old = {k: np.asarray(v) for k, v in initial.batch_stats["b2"]["bn_branch2a"].items()}
    state8, metrics8 = _run_updates(config, 8, [batch])
    state1, metrics1 = _run_updates(config, 1, [batch])

    features = _conv3x3_float64(batch["image"], kernel).reshape(-1, kernel.shape[-1])
    count = features.shape[0]
    want_mean = 0.9 * old["mean"] + 0.1 * features.mean(0)
    want_var = 0.9 * old["var"] + 0.1 * features.var(0) * count / (count - 1)
    got = jax.device_get(state8.batch_stats["b2"]["bn_branch2a"])
    np.testing.assert_allclose(got["mean"], want_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["var"], want_var, rtol=1e-5, atol=1e-6)
    # One update, one accumulation: branch 2's 0.3-scale batch normalises but never accumulates.
    counters = [v for p, v in flat(state8.batch_stats).items() if p.endswith("num_batches_tracked")]
    assert counters and all(int(c) == 1 for c in counters)

    # Global-batch statistics: 8 devices give the 1-device update, statistics included, to rel
    # 1e-5 of each tensor's scale (max |a - b| / max |b|): the batch mean and variance are sums in
    # another order on 8 devices, and their rounding reaches every gradient behind a BN layer.
    for name in metrics1[0]:
        np.testing.assert_allclose(metrics8[0][name], metrics1[0][name], rtol=1e-5, err_msg=name)
    for tree8, tree1 in ((state8.batch_stats, state1.batch_stats), (state8.params, state1.params)):
        values1 = flat(tree1)
        for path, value in flat(tree8).items():
            want = np.asarray(values1[path], np.float64)
            scale = max(float(np.abs(want).max()), 1e-30)
            assert np.abs(value - want).max() / scale <= 1e-5, path


def test_unknown_batch_norm_mode_names_the_field(shapes_dir):  # noqa: F811
    config = tiny_config(shapes_dir, **{"model.batch_norm": "sync"})
    with pytest.raises(ValueError, match=r"model\.batch_norm.*'sync'"):
        model_setup.build_model(config, 6)
    config = tiny_config(shapes_dir, **{"model.conv_init": "xavier"})
    with pytest.raises(ValueError, match=r"model\.conv_init.*'xavier'"):
        model_setup.build_model(config, 6)


def test_bfloat16_compute_keeps_float32_parameters(shapes_dir):  # noqa: F811
    config = tiny_config(shapes_dir, **{"model.compute_dtype": "bfloat16"})
    batch = _synthetic_batch(8, 32, 6)
    state, metrics = _run_updates(config, 8, [batch])
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(state.params))
    assert all(np.isfinite(v) for v in metrics[0].values())
    assert metrics[0]["loss"].dtype == np.float32
    # The network really ran in bf16: the loss moves off the float32 one by bf16 rounding
    # (relative ~2^-8 per activation), not by float32 rounding, yet stays close to it.
    _, metrics32 = _run_updates(tiny_config(shapes_dir), 8, [batch])
    difference = abs(float(metrics[0]["loss"]) - float(metrics32[0]["loss"]))
    assert 1e-5 < difference / abs(float(metrics32[0]["loss"])) < 5e-2


def test_resnet50_cam_with_the_hfpl_add_on(shapes_dir):  # noqa: F811
    config = config_utils.load_config(
        os.path.join(REPO, "configs", "cam_shapes_resnet50_cam_hfpl.py"),
        [
            "input.crop_size=32",
            "model.width=0.0625",
            "model.blocks=1,1,1,1",
        ],
    )
    settings = cam_loss.LossSettings.from_config(config.loss)
    assert not settings.seam and settings.fsl and settings.isl_weight > 0
    before = flat(_update_setup(config, 8)[1].params)
    state, metrics = _run_updates(config, 8, [_synthetic_batch(8, 32, 6)])
    assert set(metrics[0]) == set(settings.term_names())
    assert all(np.isfinite(v) for v in metrics[0].values())
    after = flat(state.params)
    assert not np.array_equal(after["classifier/kernel"], before["classifier/kernel"])


def test_gradient_flow_matches_the_reference_table(shapes_dir):  # noqa: F811
    """Spec §3.7: which parameters each loss term reaches."""
    config = tiny_config(shapes_dir)
    model = model_setup.build_model(config, 6)
    variables = model_setup.init_variables(model, config)
    settings = cam_loss.LossSettings.from_config(config.loss)
    batch = _synthetic_batch(2, 32, 6)

    def term_grads(params):
        def term(name):
            return lambda p: cam_loss.cam_loss_fn(
                p, variables["batch_stats"], batch["image"], batch["labels"],
                jax.random.key(0), model=model, settings=settings,
            )[1][name]  # fmt: skip

        names = ("loss_gap1", "loss_gap2", "loss_isl", "loss_er", "loss_fsl",
                 "loss_min_pool1", "loss_ecr")  # fmt: skip
        return {name: jax.grad(term(name))(params) for name in names}

    grads = jax.jit(term_grads)(variables["params"])

    def reached(tree, prefix):
        return any(
            np.abs(np.asarray(g)).max() > 0
            for path, g in optimizers.flatten_param_paths(tree).items()
            if path.startswith(prefix) and not path.split("/")[-2].startswith("bn")
        )

    pcm = ("f8_3/", "f8_4/", "f9/")
    for name in ("loss_gap1", "loss_gap2", "loss_isl", "loss_er", "loss_fsl"):
        assert reached(grads[name], "b4/"), name
        assert reached(grads[name], "fc8/"), name
        assert not any(reached(grads[name], p) for p in pcm), name
    for name in ("loss_min_pool1", "loss_ecr"):
        assert all(reached(grads[name], p) for p in pcm), name
        assert not reached(grads[name], "fc8/") and not reached(grads[name], "b4/"), name


def test_max_steps_follows_the_reference():
    config = cam_config.base_config()
    assert runner.max_steps(config, 10582) == 10576
    config.train.num_steps = 7
    assert runner.max_steps(config, 10582) == 7
    config.train.num_steps = None
    with pytest.raises(ValueError, match="no training steps"):
        runner.max_steps(config, 7)


def test_init_weights_are_loaded_over_the_random_initialisation(shapes_dir, tmp_path):  # noqa: F811
    from hfpl_jax import weights

    config = tiny_config(shapes_dir, seed=5)
    model = model_setup.build_model(config, 6)
    donor = jax.device_get(model_setup.init_variables(model, config))
    backbone = {"params": {k: v for k, v in donor["params"].items() if k not in ("fc8", "f9")}}
    path = str(tmp_path / "imagenet.npz")
    weights.save_variables(path, backbone)

    config = tiny_config(shapes_dir, **{"model.init_weights": path})
    mesh = parallel.make_mesh()
    abstract = model_setup.abstract_variables(model, config)
    optimizer = optimizers.make_optimizer(config.optim, abstract["params"], max_step=4)
    params = flat(model_setup.init_train_state(model, optimizer.tx, config, mesh).params)
    fresh = flat(model_setup.init_variables(model, tiny_config(shapes_dir))["params"])
    for path_name, value in flat(donor["params"]).items():
        if path_name.startswith(("fc8/", "f9/")):
            np.testing.assert_array_equal(params[path_name], fresh[path_name])  # heads stay random
        else:
            np.testing.assert_array_equal(params[path_name], value, err_msg=path_name)
    with pytest.raises(FileNotFoundError, match="model.init_weights"):
        model_setup.init_train_state(
            model, optimizer.tx, tiny_config(shapes_dir, **{"model.init_weights": "/no/such.npz"}),
            mesh,
        )  # fmt: skip
