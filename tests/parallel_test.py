"""Mesh, shardings and host batch -> global array (hfpl_jax.parallel), on 8 simulated devices."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hfpl_jax import parallel


def test_mesh_over_all_devices_and_subsets():
    mesh = parallel.make_mesh()
    assert mesh.axis_names == ("data",)
    assert mesh.devices.size == jax.device_count() == 8
    assert parallel.make_mesh(2).devices.size == 2
    with pytest.raises(ValueError, match="mesh.num_devices"):
        parallel.make_mesh(9)
    with pytest.raises(ValueError, match="mesh.num_devices"):
        parallel.make_mesh(0)


def test_host_batch_becomes_a_sharded_global_array():
    mesh = parallel.make_mesh()
    images = np.arange(8 * 4 * 4 * 3, dtype=np.float32).reshape(8, 4, 4, 3)
    labels = np.eye(8, 5, dtype=np.float32)
    batch = parallel.host_batch_to_global({"image": images, "labels": labels}, mesh)
    assert batch["image"].shape == (8, 4, 4, 3)
    assert batch["image"].sharding == parallel.data_sharding(mesh)
    assert len(batch["image"].addressable_shards) == 8
    for shard in batch["image"].addressable_shards:
        assert shard.data.shape == (1, 4, 4, 3)
        np.testing.assert_array_equal(np.asarray(shard.data), images[shard.index])
    np.testing.assert_array_equal(np.asarray(batch["labels"]), labels)
    # A jitted reduction over the global array sees every row once.
    total = jax.jit(lambda x: jnp.sum(x))(batch["image"])
    assert float(total) == float(images.sum())


def test_host_batch_to_global_on_a_plain_jax_mesh():
    mesh = jax.make_mesh((len(jax.devices()),), ("data",))  # JAX's default axis types
    local = {
        "image": np.arange(8 * 2 * 2 * 3, dtype=np.float32).reshape(8, 2, 2, 3),
        "labels": np.eye(8, 6, dtype=np.float32),
    }
    batch = parallel.host_batch_to_global(local, mesh)
    assert batch["image"].shape == (8, 2, 2, 3)
    assert len(batch["image"].sharding.device_set) == len(jax.devices())
    np.testing.assert_array_equal(np.asarray(batch["image"]), local["image"])
    np.testing.assert_array_equal(np.asarray(batch["labels"]), local["labels"])


def test_batch_errors_name_the_problem():
    mesh = parallel.make_mesh()
    with pytest.raises(ValueError, match="multiple of the number of devices"):
        parallel.local_batch_size(12, mesh)
    assert parallel.local_batch_size(16, mesh) == 16
    with pytest.raises(ValueError, match="disagree"):
        parallel.host_batch_to_global({"a": np.zeros((8, 1)), "b": np.zeros((16, 1))}, mesh)
    with pytest.raises(ValueError, match=r"batch\['a'\] has 6 rows"):
        parallel.host_batch_to_global({"a": np.zeros((6, 1))}, mesh)


def test_replicate_places_a_tree_on_every_device():
    mesh = parallel.make_mesh(4)
    tree = parallel.replicate({"w": np.ones((2, 3), np.float32)}, mesh)
    assert tree["w"].sharding == parallel.replicated_sharding(mesh)
    assert len(tree["w"].addressable_shards) == 4


def test_initialize_distributed_is_a_no_op_without_a_cluster(monkeypatch):
    for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        monkeypatch.delenv(name, raising=False)
    assert parallel.initialize_distributed() is False


def test_initialize_distributed_rejects_a_partial_specification(monkeypatch):
    for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match="missing: num_processes, process_id"):
        parallel.initialize_distributed(coordinator_address="localhost:1234")
    with pytest.raises(ValueError, match="process_id must be in"):
        parallel.initialize_distributed(
            coordinator_address="localhost:1234", num_processes=2, process_id=2
        )
