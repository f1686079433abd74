"""Checkpoint save / restore / load_params (hfpl_jax.checkpoint) on simulated devices."""

import json
import os

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
