"""Training checkpoints: an orbax ``CheckpointManager`` over the parts of a training state.

Layout: ``WORKDIR/checkpoints/<step>/`` with one orbax item per part:

==================  ==============================================================================
``params``          the trained parameters (nested dict, float32)
``batch_stats``     BatchNorm running statistics (constant when BN is frozen; what inference uses)
``opt_state``       optimizer state (step count, momentum buffers)
``train_meta``      ``{"step": int32, "rng": uint32[...]}``, the step and the base key's data
``data_iterator``   one JSON file per process with its input pipeline's ``get_state()``
``config``          the run's config (JSON), for readers that need the model's settings
==================  ==============================================================================

Arrays are saved with their sharding metadata but restored onto *target* shardings given by the
caller, so a checkpoint written on 8 devices restores onto 1, 2 or 64. Saves are asynchronous
(the device-to-host copy happens before ``save`` returns; writing continues in the background);
``wait()`` blocks until they are durable. Orbax writes each step to a temporary directory and
renames it when complete, so a killed run never leaves a half-written "latest" checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

__all__ = [
    "ARRAY_ITEMS",
    "CHECKPOINT_SUBDIR",
    "CheckpointManager",
    "DataIteratorHandler",
    "DataIteratorRestore",
    "DataIteratorSave",
    "ITEM_NAMES",
    "checkpoint_dir",
    "load_config_json",
    "load_params",
    "load_variables",
]

CHECKPOINT_SUBDIR = "checkpoints"
ARRAY_ITEMS = ("params", "batch_stats", "opt_state", "train_meta")
ITEM_NAMES = (*ARRAY_ITEMS, "data_iterator", "config")


# --------------------------------------------------------------------------------------------------
# Input-pipeline state: one JSON file per process (the iterator of each host is its own).


class DataIteratorHandler(ocp.CheckpointHandler):
    """Saves ``iterator.get_state()`` (bytes, str or JSON-able) per process; restores it.

    Works with any iterator that has ``get_state()`` / ``set_state(state)`` (grain's
    ``DataLoaderIterator`` returns bytes, grain ``DatasetIterator`` a dict).
    """

    def save(self, directory: epath.Path, args: DataIteratorSave):
        state = args.iterator.get_state()
        if isinstance(state, bytes):
            record = {"kind": "bytes", "state": state.decode("utf-8")}
        elif isinstance(state, str):
            record = {"kind": "str", "state": state}
        else:
            record = {"kind": "json", "state": state}
        path = directory / _process_file_name(jax.process_index(), jax.process_count())
        path.write_text(json.dumps(record))

    def restore(self, directory: epath.Path, args: DataIteratorRestore):
        index, count = jax.process_index(), jax.process_count()
        path = directory / _process_file_name(index, count)
        if not path.exists():
            found = sorted(p.name for p in directory.iterdir()) if directory.exists() else []
            raise ValueError(
                f"checkpoint {directory} holds no input-pipeline state for process {index} of "
                f"{count} (found: {found}); it was written by a different number of processes. "
                "Resume with --config.checkpoint.restore_data_state=false to restart the data "
                "stream from its seed."
            )
        record = json.loads(path.read_text())
        state = record["state"]
        if record["kind"] == "bytes":
            state = state.encode("utf-8")
        args.iterator.set_state(state)
        return args.iterator

    def structure(self, directory):  # orbax interface; nothing to describe
        del directory
        return None

    def metadata(self, directory):
        del directory
        return None

    def finalize(self, directory):
        del directory

    def close(self):
        pass


def _process_file_name(index: int, count: int) -> str:
    return f"process_{index}-of-{count}.json"


@ocp.args.register_with_handler(DataIteratorHandler, for_save=True)
@dataclasses.dataclass
class DataIteratorSave(ocp.args.CheckpointArgs):
    iterator: Any


@ocp.args.register_with_handler(DataIteratorHandler, for_restore=True)
@dataclasses.dataclass
class DataIteratorRestore(ocp.args.CheckpointArgs):
    iterator: Any


# --------------------------------------------------------------------------------------------------


def checkpoint_dir(workdir: str) -> str:
    """``WORKDIR/checkpoints``, made absolute for local paths.

    Orbax's tensorstore backend refuses relative paths, and users naturally type
    ``--workdir=workdirs/run``; URLs (``gs://bucket/run``) are kept as they are.
    """
    workdir = os.fspath(workdir)
    if "://" not in workdir:
        workdir = os.path.abspath(workdir)
    return os.path.join(workdir, CHECKPOINT_SUBDIR)


class CheckpointManager:
    """Saves and restores training states (see the module docstring for the layout).

    Args:
      workdir: the run's directory; checkpoints go to ``workdir/checkpoints``.
      every_steps: save when ``step % every_steps == 0`` (``save(..., force=True)`` always saves).
      keep: keep the newest ``keep`` checkpoints.
      async_save: write in a background thread.
    """

    def __init__(
        self, workdir: str, *, every_steps: int = 1000, keep: int = 3, async_save: bool = True
    ):
        if every_steps < 1:
            raise ValueError(f"checkpoint.every_steps must be >= 1, found {every_steps}.")
        if keep < 1:
            raise ValueError(f"checkpoint.keep must be >= 1, found {keep}.")
        self.directory = checkpoint_dir(workdir)
        self.every_steps = every_steps
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            save_interval_steps=1,
            create=True,
            enable_async_checkpointing=async_save,
        )
        self._manager = ocp.CheckpointManager(
            self.directory, item_names=ITEM_NAMES, options=options
        )

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or None."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def should_save(self, step: int) -> bool:
        return step % self.every_steps == 0

    def save(
        self,
        step: int,
        *,
        params: Any,
        batch_stats: Any,
        opt_state: Any,
        train_meta: Mapping[str, Any],
        data_iterator: Any = None,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        """Saves the state after ``step`` updates (asynchronously when enabled)."""
        items = {
            "params": ocp.args.PyTreeSave(params),
            "batch_stats": ocp.args.PyTreeSave(batch_stats),
            "opt_state": ocp.args.PyTreeSave(opt_state),
            "train_meta": ocp.args.PyTreeSave(dict(train_meta)),
            "config": ocp.args.JsonSave(dict(config or {})),
        }
        if data_iterator is not None:
            items["data_iterator"] = DataIteratorSave(data_iterator)
        self._manager.save(step, args=ocp.args.Composite(**items), force=True)

    def restore(
        self,
        step: int,
        *,
        abstract: Mapping[str, Any],
        data_iterator: Any = None,
    ) -> dict[str, Any]:
        """Restores the array items onto the shardings of ``abstract`` (and the iterator in place).

        Args:
          step: which checkpoint.
          abstract: ``{"params": tree, "batch_stats": tree, "opt_state": tree, "train_meta": tree}``
            of ``jax.ShapeDtypeStruct`` with ``sharding`` set (``jax.eval_shape`` output plus the
            target shardings); the structure must match the saved trees.
          data_iterator: restored in place with ``set_state`` when given.

        Returns:
          ``{"params", "batch_stats", "opt_state", "train_meta"}`` as ``jax.Array`` trees.
        """
        items = {}
        for name in ARRAY_ITEMS:
            target = abstract[name]
            items[name] = ocp.args.PyTreeRestore(
                item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target)
            )
        if data_iterator is not None:
            items["data_iterator"] = DataIteratorRestore(data_iterator)
        restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        return {name: restored[name] for name in ARRAY_ITEMS}

    def wait(self) -> None:
        """Blocks until every started save is on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def _restore_item_as_numpy(workdir: str, item: str, step: int | None) -> tuple[Any, int]:
    directory = checkpoint_dir(workdir)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"no checkpoints in {os.fspath(workdir)!r} ({directory} missing).")
    manager = ocp.CheckpointManager(directory, item_handlers={item: ocp.PyTreeCheckpointHandler()})
    try:
        steps = list(manager.all_steps())
        if not steps:
            raise FileNotFoundError(f"no complete checkpoint in {directory}.")
        if step is None:
            step = max(steps)
        elif step not in steps:
            raise FileNotFoundError(f"no checkpoint for step {step} in {directory} (have {steps}).")
        tree = manager.item_metadata(step)[item].tree
        restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
        restored = manager.restore(
            step,
            args=ocp.args.Composite(**{item: ocp.args.PyTreeRestore(restore_args=restore_args)}),
        )
        return restored[item], step
    finally:
        manager.close()


def load_params(workdir: str, step: int | None = None) -> dict[str, Any]:
    """The parameters of the newest (or the given step's) checkpoint in ``workdir``, as NumPy.

    Returns:
      Nested dict of ``np.ndarray`` with the model's parameter paths.

    Raises:
      FileNotFoundError: no checkpoint (or not that step) under ``workdir/checkpoints``.
    """
    params, _ = _restore_item_as_numpy(workdir, "params", step)
    return params


def load_variables(workdir: str, step: int | None = None) -> dict[str, Any]:
    """``{"params": ..., "batch_stats": ...}`` of a checkpoint as NumPy (what inference needs)."""
    params, step = _restore_item_as_numpy(workdir, "params", step)
    batch_stats, _ = _restore_item_as_numpy(workdir, "batch_stats", step)
    return {"params": params, "batch_stats": batch_stats}


def load_config_json(workdir: str, step: int | None = None) -> dict[str, Any]:
    """The config the checkpointed run used (a plain dict from the saved JSON)."""
    directory = checkpoint_dir(workdir)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"no checkpoints in {os.fspath(workdir)!r} ({directory} missing).")
    manager = ocp.CheckpointManager(
        directory, item_handlers={"config": ocp.JsonCheckpointHandler()}
    )
    try:
        steps = list(manager.all_steps())
        if not steps:
            raise FileNotFoundError(f"no complete checkpoint in {directory}.")
        step = max(steps) if step is None else step
        return manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))[
            "config"
        ]
    finally:
        manager.close()
