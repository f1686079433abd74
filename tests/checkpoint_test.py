"""Checkpoint save / restore / load_params (hfpl_jax.checkpoint) on simulated devices."""

import json
import logging
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hfpl_jax import checkpoint, checksums, parallel
from hfpl_jax.train.optimizers import TorchSGDState


class _Iterator:
    """Stands in for an input pipeline: a position in a stream, state as JSON bytes."""

    def __init__(self, position=0):
        self.position = position

    def get_state(self):
        return json.dumps({"position": self.position}).encode()

    def set_state(self, state):
        self.position = json.loads(state)["position"]


def _state(mesh, scale=1.0):
    rep = parallel.replicated_sharding(mesh)
    params = {
        "conv": {"kernel": jnp.arange(24.0).reshape(2, 3, 4) * scale},
        "fc8": {"kernel": jnp.full((4, 5), scale)},
    }
    tree = {
        "params": params,
        "batch_stats": {"bn": {"mean": jnp.ones(4) * scale, "var": jnp.ones(4)}},
        "opt_state": TorchSGDState(jnp.int32(7), jax.tree.map(lambda x: x * 0.5, params)),
        "train_meta": {"step": jnp.int32(7), "rng": jnp.array([0, 42], jnp.uint32)},
    }
    return jax.device_put(tree, rep)


def _abstract(tree, mesh):
    rep = parallel.replicated_sharding(mesh)
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep), tree)


def _save(manager, step, tree, iterator=None, config=None):
    manager.save(step, **tree, data_iterator=iterator, config=config or {"seed": 1})


@pytest.mark.parametrize("restore_devices", [1, 2])
def test_save_on_8_devices_restore_on_fewer(tmp_path, restore_devices):
    mesh8 = parallel.make_mesh()
    tree = _state(mesh8, scale=3.0)
    manager = checkpoint.CheckpointManager(str(tmp_path), every_steps=1, keep=2)
    _save(manager, 7, tree, _Iterator(position=56))
    manager.close()

    small = parallel.make_mesh(restore_devices)
    iterator = _Iterator()
    manager = checkpoint.CheckpointManager(str(tmp_path), every_steps=1, keep=2)
    assert manager.latest_step() == 7
    restored = manager.restore(7, abstract=_abstract(tree, small), data_iterator=iterator)
    manager.close()
    assert iterator.position == 56
    for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(tree), strict=True):
        assert got.sharding.mesh.devices.size == restore_devices
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    assert isinstance(restored["opt_state"], TorchSGDState)


def test_keep_k_and_load_params_as_numpy(tmp_path):
    mesh = parallel.make_mesh()
    manager = checkpoint.CheckpointManager(str(tmp_path), every_steps=2, keep=2)
    assert [s for s in range(1, 7) if manager.should_save(s)] == [2, 4, 6]
    for step in (2, 4, 6):
        _save(manager, step, _state(mesh, scale=float(step)), config={"model": {"arch": "seam"}})
    manager.close()
    assert sorted(int(d) for d in os.listdir(checkpoint.checkpoint_dir(str(tmp_path)))) == [4, 6]
    params = checkpoint.load_params(str(tmp_path))
    assert isinstance(params["fc8"]["kernel"], np.ndarray)
    np.testing.assert_array_equal(params["fc8"]["kernel"], np.full((4, 5), 6.0, np.float32))
    older = checkpoint.load_params(str(tmp_path), step=4)
    np.testing.assert_array_equal(older["fc8"]["kernel"], np.full((4, 5), 4.0, np.float32))
    variables = checkpoint.load_variables(str(tmp_path))
    np.testing.assert_array_equal(variables["batch_stats"]["bn"]["mean"], np.full(4, 6.0))
    assert checkpoint.load_config_json(str(tmp_path)) == {"model": {"arch": "seam"}}
    with pytest.raises(FileNotFoundError, match="step 2"):
        checkpoint.load_params(str(tmp_path), step=2)


def test_relative_workdir_saves_and_loads(tmp_path, monkeypatch):
    # Users type --workdir=workdirs/run; orbax's tensorstore backend accepts only absolute paths.
    monkeypatch.chdir(tmp_path)
    mesh = parallel.make_mesh()
    manager = checkpoint.CheckpointManager("workdirs/run", every_steps=1, keep=1)
    _save(manager, 3, _state(mesh, scale=2.0), _Iterator(position=5))
    manager.close()
    assert os.path.isdir(tmp_path / "workdirs" / "run" / "checkpoints" / "3")
    params = checkpoint.load_params("workdirs/run")
    np.testing.assert_array_equal(params["fc8"]["kernel"], np.full((4, 5), 2.0, np.float32))


def test_missing_checkpoints_are_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoints"):
        checkpoint.load_params(str(tmp_path))
    os.makedirs(checkpoint.checkpoint_dir(str(tmp_path)))
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        checkpoint.load_params(str(tmp_path))


def test_iterator_state_from_another_process_count_is_a_clear_error(tmp_path):
    mesh = parallel.make_mesh()
    tree = _state(mesh)
    manager = checkpoint.CheckpointManager(str(tmp_path), every_steps=1, keep=1)
    _save(manager, 1, tree, _Iterator(3))
    manager.close()
    item_dir = os.path.join(checkpoint.checkpoint_dir(str(tmp_path)), "1", "data_iterator")
    os.rename(
        os.path.join(item_dir, "process_0-of-1.json"), os.path.join(item_dir, "process_0-of-2.json")
    )
    checksums.write_manifest(os.path.dirname(item_dir))  # as the 2-process run would have
    manager = checkpoint.CheckpointManager(str(tmp_path), every_steps=1, keep=1)
    with pytest.raises(ValueError, match="restore_data_state=false"):
        manager.restore(1, abstract=_abstract(tree, mesh), data_iterator=_Iterator())
    manager.close()


def test_bad_options():
    with pytest.raises(ValueError, match="every_steps"):
        checkpoint.CheckpointManager("/tmp/unused", every_steps=0)
    with pytest.raises(ValueError, match="keep"):
        checkpoint.CheckpointManager("/tmp/unused", keep=0)


# --------------------------------------------------------------------------------------------------
# Integrity: checksum manifests, corrupted files, fallback to the newest intact checkpoint.


def _two_checkpoints(workdir, *, async_save=True):
    """Checkpoints 2 and 4 (values scaled by the step), as a run saves them."""
    mesh = parallel.make_mesh()
    manager = checkpoint.CheckpointManager(workdir, every_steps=2, keep=3, async_save=async_save)
    for step in (2, 4):
        _save(manager, step, _state(mesh, scale=float(step)), _Iterator(position=step))
    manager.close()
    return mesh


def _flip_middle_bytes(path, count=8):
    with open(path, "r+b") as f:
        data = bytearray(f.read())
        middle = len(data) // 2
        for i in range(middle, min(middle + count, len(data))):
            data[i] ^= 0xFF
        f.seek(0)
        f.write(bytes(data))


def _files_under(directory):
    return sorted(
        os.path.relpath(os.path.join(root, name), directory)
        for root, _, names in os.walk(directory)
        for name in names
    )


def _assert_tree_equal(got, want):
    got_leaves, want_leaves = jax.tree.leaves(got), jax.tree.leaves(want)
    assert len(got_leaves) == len(want_leaves)
    for g, w in zip(got_leaves, want_leaves, strict=True):
        np.testing.assert_array_equal(np.asarray(g), np.asarray(w))


@pytest.mark.parametrize("async_save", [True, False])
def test_every_saved_file_is_in_the_manifest(tmp_path, async_save):
    workdir = str(tmp_path)
    _two_checkpoints(workdir, async_save=async_save)
    for step in (2, 4):
        step_dir = os.path.join(checkpoint.checkpoint_dir(workdir), str(step))
        with open(os.path.join(step_dir, checksums.MANIFEST_NAME)) as f:
            listed = sorted(json.load(f)["files"])
        assert listed == [p for p in _files_under(step_dir) if p != checksums.MANIFEST_NAME]
        assert any(p.startswith("params/ocdbt.process_0/d/") for p in listed)
        assert checkpoint.verify_step(checkpoint.checkpoint_dir(workdir), step)


@pytest.mark.slow
def test_flipped_bytes_in_any_file_are_detected_never_used(tmp_path):
    """Bytes flipped in the middle of each file of the newest checkpoint in turn: every read
    either raises an error naming the file or falls back to checkpoint 2; none returns other
    values than the checkpoint it reports."""
    pristine = str(tmp_path / "pristine")
    mesh = _two_checkpoints(pristine)
    want = {step: _state(mesh, scale=float(step)) for step in (2, 4)}
    step_dir = os.path.join(checkpoint.checkpoint_dir(pristine), "4")
    files = [p for p in _files_under(step_dir) if p != checksums.MANIFEST_NAME]
    assert len(files) > 30
    for index, relative in enumerate(files):
        workdir = str(tmp_path / f"flip{index}")
        shutil.copytree(pristine, workdir)
        flipped = os.path.join(checkpoint.checkpoint_dir(workdir), "4", relative)
        _flip_middle_bytes(flipped)

        # An explicit step: the values of step 4, or an error naming the flipped file.
        for load, items in (
            (checkpoint.load_params, ("params",)),
            (checkpoint.load_variables, ("params", "batch_stats")),
        ):
            if relative.split("/")[0] in items:
                with pytest.raises(checkpoint.CorruptCheckpointError) as raised:
                    load(workdir, step=4)
                assert raised.value.step == 4 and flipped in str(raised.value), relative
            else:
                loaded = load(workdir, step=4)
                _assert_tree_equal(loaded.get("params", loaded), want[4]["params"])

        # The newest: step 4's values, or step 2's when step 4's parameters are corrupt.
        newest = 2 if relative.startswith("params/") else 4
        _assert_tree_equal(checkpoint.load_params(workdir), want[newest]["params"])
        assert checkpoint.newest_intact_step(workdir, ("params",)) == newest

        # Resuming verifies the whole step: always step 2, with its input position.
        manager = checkpoint.CheckpointManager(workdir, every_steps=2, keep=3)
        iterator = _Iterator()
        step, restored = manager.restore_latest(
            abstract=_abstract(want[2], mesh), data_iterator=iterator
        )
        assert step == 2 and iterator.position == 2, relative
        _assert_tree_equal(restored, want[2])
        assert manager.all_steps() == [2]  # the corrupt step is out of orbax's way
        manager.close()
        moved = os.path.join(workdir, checkpoint.CORRUPT_SUBDIR, "4", relative)
        assert os.path.isfile(moved), relative


def test_corrupt_newest_checkpoint_is_set_aside_and_the_log_says_so(tmp_path, caplog):
    workdir = str(tmp_path)
    mesh = _two_checkpoints(workdir)
    params_dir = os.path.join(checkpoint.checkpoint_dir(workdir), "4", "params")
    data_file = max(
        (os.path.join(params_dir, p) for p in _files_under(params_dir)), key=os.path.getsize
    )
    _flip_middle_bytes(data_file)
    with pytest.raises(checkpoint.CorruptCheckpointError, match=r"checkpoint 4 is corrupt: .*"):
        checkpoint.load_params(workdir, step=4)
    manager = checkpoint.CheckpointManager(workdir, every_steps=2, keep=3)
    with caplog.at_level("WARNING", logger="hfpl_jax.checkpoint"):
        step, _ = manager.restore_latest(abstract=_abstract(_state(mesh), mesh))
    assert step == 2
    assert data_file in caplog.text
    assert "resuming from checkpoint 2, the newest intact one" in caplog.text
    # Training goes on: step 4 can be saved again.
    _save(manager, 4, _state(mesh, scale=4.0))
    manager.close()
    np.testing.assert_array_equal(
        checkpoint.load_params(workdir)["fc8"]["kernel"], np.full((4, 5), 4.0)
    )


def test_every_checkpoint_corrupt_is_an_error_and_nothing_is_moved(tmp_path):
    workdir = str(tmp_path)
    mesh = _two_checkpoints(workdir)
    for step in (2, 4):
        _flip_middle_bytes(
            os.path.join(checkpoint.checkpoint_dir(workdir), str(step), "train_meta", "_sharding")
        )
    manager = checkpoint.CheckpointManager(workdir, every_steps=2, keep=3)
    with pytest.raises(checkpoint.CorruptCheckpointError, match=r"No checkpoint .* is intact"):
        manager.restore_latest(abstract=_abstract(_state(mesh), mesh))
    assert manager.all_steps() == [2, 4]
    manager.close()


def test_checkpoint_without_manifest_is_read_with_a_warning(tmp_path, caplog):
    workdir = str(tmp_path)
    mesh = _two_checkpoints(workdir)
    for step in (2, 4):
        os.remove(os.path.join(checkpoint.checkpoint_dir(workdir), str(step), "checksums.json"))
    with caplog.at_level("WARNING"):
        params = checkpoint.load_params(workdir)
    np.testing.assert_array_equal(params["fc8"]["kernel"], np.full((4, 5), 4.0, np.float32))
    assert "checkpoint 4" in caplog.text and "cannot be verified" in caplog.text
    # What orbax cannot read, unverified, is still a clear error naming the step.
    _flip_middle_bytes(os.path.join(checkpoint.checkpoint_dir(workdir), "4", "params", "_METADATA"))
    with pytest.raises(ValueError, match=r"checkpoint 4 in .* could not be restored"):
        checkpoint.load_params(workdir, step=4)
    manager = checkpoint.CheckpointManager(workdir, every_steps=2, keep=3)
    with pytest.raises(ValueError, match=r"checkpoint 4 in .* could not be restored"):
        manager.restore_latest(abstract=_abstract(_state(mesh), mesh))
    manager.close()


def test_loaders_print_no_orbax_warnings_about_other_items(tmp_path, caplog):
    workdir = str(tmp_path)
    _two_checkpoints(workdir)
    with caplog.at_level("INFO"):
        checkpoint.load_params(workdir)
        checkpoint.load_variables(workdir, step=2)
        checkpoint.load_config_json(workdir)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == []
