"""Data parallelism over all devices of all hosts: distributed start-up, the mesh, shardings and
host-local batch -> global ``jax.Array``.

The training step is one ``jax.jit`` over *global* arrays: parameters are replicated
(``PartitionSpec()``), the batch is split along its first axis over the ``"data"`` mesh axis
(``PartitionSpec("data")``), and XLA inserts the gradient all-reduce. No ``pmap``, no
``axis_name`` inside models. On several hosts, every process runs the same program, feeds its own
slice of the global batch (``global_batch / process_count`` rows, in process order), and
:func:`host_batch_to_global` assembles the global array without copying data between hosts.

Multi-host launch (every process runs the same command):

* TPU pods, SLURM, Open MPI, Kubernetes: ``--distributed`` (``jax.distributed.initialize()``
  detects the cluster).
* Anything else (multi-node GPU over TCP): ``--coordinator_address=HOST:PORT --num_processes=N
  --process_id=I``, or the environment variables ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``,
  ``JAX_PROCESS_ID``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

__all__ = [
    "DATA_AXIS",
    "data_sharding",
    "host_batch_to_global",
    "initialize_distributed",
    "local_batch_size",
    "make_mesh",
    "replicate",
    "replicated_sharding",
]

DATA_AXIS = "data"

_initialized = False


def initialize_distributed(
    *,
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    auto: bool = False,
    local_device_ids: list[int] | None = None,
) -> bool:
    """Starts ``jax.distributed`` when a multi-process run is requested; returns whether it did.

    Explicit arguments win over the environment (``JAX_COORDINATOR_ADDRESS``,
    ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``). With none of them and ``auto=False`` this is a
    single-process run and nothing is started. ``auto=True`` lets JAX detect the cluster (TPU pods,
    SLURM, Open MPI, Kubernetes). Must run before any other JAX call touches the devices.

    Raises:
      ValueError: a partial specification (an address without a process count or id, ...).
    """
    global _initialized
    if _initialized:
        return True
    coordinator_address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
    if num_processes is None and os.environ.get("JAX_NUM_PROCESSES"):
        num_processes = int(os.environ["JAX_NUM_PROCESSES"])
    if process_id is None and os.environ.get("JAX_PROCESS_ID"):
        process_id = int(os.environ["JAX_PROCESS_ID"])
    explicit = (coordinator_address, num_processes, process_id)
    if any(value is not None for value in explicit) and not auto:
        missing = [
            name
            for name, value in zip(
                ("coordinator_address", "num_processes", "process_id"), explicit, strict=True
            )
            if value is None
        ]
        if missing:
            raise ValueError(
                "a multi-process run needs coordinator_address, num_processes and process_id; "
                f"missing: {', '.join(missing)} (flags or JAX_* environment variables)."
            )
        if not 0 <= process_id < num_processes:
            raise ValueError(f"process_id must be in [0, {num_processes}), found {process_id}.")
    elif not auto:
        return False
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
        local_device_ids=local_device_ids,
    )
    _initialized = True
    logging.info(
        "jax.distributed started: process %d of %d, %d local / %d global devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )
    return True


def make_mesh(num_devices: int | None = None) -> Mesh:
    """A 1-D data-parallel mesh, axis ``"data"``, over all devices (or the first ``num_devices``).

    A subset is only possible in a single-process run (every process must own devices of the mesh).

    Raises:
      ValueError: ``num_devices`` out of range, or a subset requested in a multi-process run.
    """
    total = jax.device_count()
    # Auto axes: shardings of intermediates are the compiler's business (GSPMD), as the models and
    # losses are written for; JAX >= 0.7 defaults to Explicit axes, which type-check shardings.
    axis_types = (AxisType.Auto,)
    if num_devices is None or num_devices == total:
        return jax.make_mesh((total,), (DATA_AXIS,), axis_types=axis_types)
    if not 1 <= num_devices <= total:
        raise ValueError(f"mesh.num_devices must be in [1, {total}], found {num_devices}.")
    if jax.process_count() > 1:
        raise ValueError(
            f"mesh.num_devices={num_devices} uses a subset of the {total} devices, which a "
            f"multi-process run ({jax.process_count()} processes) cannot do; leave it unset."
        )
    return jax.make_mesh(
        (num_devices,), (DATA_AXIS,), axis_types=axis_types, devices=jax.devices()[:num_devices]
    )


def replicated_sharding(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array (parameters, optimizer state, scalars)."""
    return NamedSharding(mesh, PartitionSpec())


def data_sharding(mesh: Mesh) -> NamedSharding:
    """The leading (batch) axis is split over the ``"data"`` mesh axis."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def local_batch_size(global_batch_size: int, mesh: Mesh) -> int:
    """Rows of the global batch this process feeds: ``global / process_count``.

    Raises:
      ValueError: the global batch does not split evenly over the mesh's devices.
    """
    num_devices = mesh.devices.size
    if global_batch_size % num_devices:
        raise ValueError(
            f"input.global_batch_size={global_batch_size} must be a multiple of the number of "
            f"devices in the mesh ({num_devices})."
        )
    return global_batch_size // jax.process_count()


def host_batch_to_global(batch: Mapping[str, Any], mesh: Mesh) -> dict[str, jax.Array]:
    """Host-local NumPy batch (``B_local`` rows per array) -> global arrays sharded on ``"data"``.

    Process ``p`` supplies rows ``[p·B_local, (p+1)·B_local)`` of the global batch of
    ``B_local · process_count`` rows.

    Raises:
      ValueError: arrays of different leading sizes, or a size the local devices cannot split.
    """
    sharding = data_sharding(mesh)
    local_devices = len(mesh.local_devices)
    sizes = {name: np.shape(value)[0] for name, value in batch.items()}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"batch arrays disagree on the batch size: {sizes}.")
    out = {}
    for name, value in batch.items():
        value = np.asarray(value)
        if value.shape[0] % local_devices:
            raise ValueError(
                f"batch[{name!r}] has {value.shape[0]} rows on this host, not a multiple of its "
                f"{local_devices} local devices."
            )
        global_shape = (value.shape[0] * jax.process_count(), *value.shape[1:])
        out[name] = jax.make_array_from_process_local_data(sharding, value, global_shape)
    return out


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Places a pytree of host values (identical on every process) replicated on the mesh."""
    sharding = replicated_sharding(mesh)

    def put(value):
        value = np.asarray(value)
        return jax.make_array_from_process_local_data(sharding, value, value.shape)

    return jax.tree.map(put, tree)
