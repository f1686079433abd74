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

**Integrity.** Once orbax has committed a step, process 0 hashes every file of its directory into
``<step>/checksums.json`` (``hfpl_jax.checksums``; in the background for asynchronous saves, after
every process's files are written). Every read verifies the files it uses first: resuming
(:meth:`CheckpointManager.restore_latest`) verifies the whole step and, when a file differs, moves
the step to ``WORKDIR/corrupt_checkpoints/<step>`` and resumes from the newest intact one, saying
so in the log (the steps since are trained again, the run is not lost); :func:`load_params` /
:func:`load_variables` / :func:`load_config_json` without a step fall back the same way with a
warning, and with an explicit step raise :class:`CorruptCheckpointError` naming the step and the
file. A step without a manifest (written before manifests existed, or by a run killed between
the commit and the manifest) is read with a warning that it could not be verified.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from hfpl_jax import checksums

__all__ = [
    "ARRAY_ITEMS",
    "CHECKPOINT_SUBDIR",
    "CORRUPT_SUBDIR",
    "CheckpointManager",
    "CorruptCheckpointError",
    "DataIteratorHandler",
    "DataIteratorRestore",
    "DataIteratorSave",
    "ITEM_NAMES",
    "checkpoint_dir",
    "load_config_json",
    "load_params",
    "load_variables",
    "newest_intact_step",
    "verify_step",
]

_logger = logging.getLogger(__name__)

CHECKPOINT_SUBDIR = "checkpoints"
CORRUPT_SUBDIR = "corrupt_checkpoints"
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


class CorruptCheckpointError(ValueError):
    """A checkpoint's file differs from its checksum manifest; the message names step and file.

    Attributes:
      step: the checkpoint's step.
      path: the file that differs.
    """

    def __init__(self, step: int, error: checksums.ChecksumError, *, note: str = ""):
        super().__init__(
            f"checkpoint {step} is corrupt: {error.path}: {error.reason}. It is not used."
            + (f" {note}" if note else "")
        )
        self.step = step
        self.path = error.path
        self.error = error


def verify_step(directory: epath.PathLike, step: int, items: Sequence[str] | None = None) -> bool:
    """Verifies checkpoint ``step`` in ``directory`` (only the files of ``items`` when given).

    Returns:
      True when verified; False when the step has no manifest (a warning says it is unverified).

    Raises:
      CorruptCheckpointError: a file is missing or differs (named).
    """
    step_dir = epath.Path(directory) / str(step)
    if not checksums.has_manifest(step_dir):
        _logger.warning(
            "checkpoint %d in %s has no %s (written by an older hfpl-jax, or the run stopped "
            "right after saving it): its files cannot be verified.",
            step,
            directory,
            checksums.MANIFEST_NAME,
        )
        return False
    prefixes = None if items is None else [f"{item}/" for item in items]
    try:
        unlisted = checksums.verify_manifest(step_dir, prefixes)
    except checksums.ChecksumError as error:
        raise CorruptCheckpointError(step, error) from None
    if unlisted:
        _logger.warning("checkpoint %d: files not in its manifest (ignored): %s", step, unlisted)
    return True


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
        self._async = async_save
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            save_interval_steps=1,
            create=True,
            enable_async_checkpointing=async_save,
        )
        self._manager = ocp.CheckpointManager(
            self.directory, item_names=ITEM_NAMES, options=options
        )
        self._manifest_thread: threading.Thread | None = None
        self._manifest_error: BaseException | None = None

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
        """Saves the state after ``step`` updates (asynchronously when enabled); its checksum
        manifest follows once orbax has committed it."""
        self._join_manifest()
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
        if jax.process_index() != 0:
            return
        if not self._async:
            self._write_manifest(step)
            return
        self._manifest_thread = threading.Thread(
            target=self._manifest_after_commit, args=(step,), name=f"manifest-{step}", daemon=True
        )
        self._manifest_thread.start()

    def _manifest_after_commit(self, step: int) -> None:
        try:
            # Returns once every process's files are written and the step directory is renamed
            # to its final name (orbax's commit).
            self._manager.wait_until_finished()
            self._write_manifest(step)
        except BaseException as error:  # re-raised by the next save, wait or close
            self._manifest_error = error

    def _write_manifest(self, step: int) -> None:
        checksums.write_manifest(epath.Path(self.directory) / str(step))

    def _join_manifest(self) -> None:
        if self._manifest_thread is not None:
            self._manifest_thread.join()
            self._manifest_thread = None
        if self._manifest_error is not None:
            error, self._manifest_error = self._manifest_error, None
            raise error

    def restore(
        self,
        step: int,
        *,
        abstract: Mapping[str, Any],
        data_iterator: Any = None,
        verify: bool = True,
    ) -> dict[str, Any]:
        """Restores the array items onto the shardings of ``abstract`` (and the iterator in place).

        Args:
          step: which checkpoint.
          abstract: ``{"params": tree, "batch_stats": tree, "opt_state": tree, "train_meta": tree}``
            of ``jax.ShapeDtypeStruct`` with ``sharding`` set (``jax.eval_shape`` output plus the
            target shardings); the structure must match the saved trees.
          data_iterator: restored in place with ``set_state`` when given.
          verify: check the step's files against its checksum manifest first.

        Returns:
          ``{"params", "batch_stats", "opt_state", "train_meta"}`` as ``jax.Array`` trees.

        Raises:
          CorruptCheckpointError: a file differs from the manifest (named).
          ValueError: orbax could not read the step (the message names it and says why).
        """
        if verify:
            verify_step(self.directory, step)
        items = {}
        for name in ARRAY_ITEMS:
            target = abstract[name]
            items[name] = ocp.args.PyTreeRestore(
                item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target)
            )
        if data_iterator is not None:
            items["data_iterator"] = DataIteratorRestore(data_iterator)
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        except Exception as error:
            raise _read_error(self.directory, step, error) from error
        return {name: restored[name] for name in ARRAY_ITEMS}

    def restore_latest(
        self, *, abstract: Mapping[str, Any], data_iterator: Any = None
    ) -> tuple[int, dict[str, Any]] | None:
        """``(step, restore(step, ...))`` of the newest intact checkpoint, or None if there is none.

        Newer checkpoints whose files differ from their manifest are moved to
        ``WORKDIR/corrupt_checkpoints/`` (kept for inspection; orbax would otherwise keep
        counting them as the latest) and the log says which step the run resumes from.

        Raises:
          CorruptCheckpointError: checkpoints exist but none is intact (none is moved).
        """
        self._join_manifest()
        step = _broadcast_step(self._newest_intact_step() if jax.process_index() == 0 else -1)
        if jax.process_count() > 1:
            self._manager.reload()  # see the steps process 0 moved aside
        if step < 0:
            return None
        return step, self.restore(
            step, abstract=abstract, data_iterator=data_iterator, verify=False
        )

    def _newest_intact_step(self) -> int:
        corrupt, errors = [], []
        for step in sorted(self.all_steps(), reverse=True):
            try:
                verify_step(self.directory, step)
            except CorruptCheckpointError as error:
                _logger.error("%s", error)
                corrupt.append(step)
                errors.append(error)
                continue
            for bad in corrupt:
                _logger.error("moved corrupt checkpoint %d to %s", bad, self._set_aside(bad))
            if corrupt:
                self._manager.reload()
                _logger.warning(
                    "resuming from checkpoint %d, the newest intact one: the steps after it "
                    "(up to %d) are trained again.",
                    step,
                    max(corrupt),
                )
            return step
        if corrupt:
            raise _every_step_corrupt(self.directory, errors)
        return -1

    def _set_aside(self, step: int) -> str:
        parent = epath.Path(self.directory).parent / CORRUPT_SUBDIR
        parent.mkdir(parents=True, exist_ok=True)
        target, suffix = parent / str(step), 0
        while target.exists():
            suffix += 1
            target = parent / f"{step}.{suffix}"
        (epath.Path(self.directory) / str(step)).rename(target)
        return os.fspath(target)

    def wait(self) -> None:
        """Blocks until every started save (and its manifest) is on disk."""
        self._manager.wait_until_finished()
        self._join_manifest()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._manager.close()


def _broadcast_step(step: int) -> int:
    if jax.process_count() == 1:
        return step
    from jax.experimental import multihost_utils  # noqa: PLC0415

    return int(multihost_utils.broadcast_one_to_all(np.int32(step)))


def _every_step_corrupt(directory, errors: list[CorruptCheckpointError]) -> CorruptCheckpointError:
    """The newest step's error, noting that no older step is intact either."""
    steps = sorted(error.step for error in errors)
    note = f"No checkpoint in {directory} is intact (corrupt: steps {steps}; see the log)."
    return CorruptCheckpointError(errors[0].step, errors[0].error, note=note)


def _read_error(directory: str, step: int, error: Exception) -> ValueError:
    return ValueError(
        f"checkpoint {step} in {directory} could not be restored: {type(error).__name__}: {error}"
    )


# --------------------------------------------------------------------------------------------------
# Reading one item, as NumPy, without a manager (inference, evaluation, scripts).


def _steps(workdir: str) -> tuple[epath.Path, list[int]]:
    directory = checkpoint_dir(workdir)
    if not os.path.isdir(directory) and "://" not in directory:
        raise FileNotFoundError(f"no checkpoints in {os.fspath(workdir)!r} ({directory} missing).")
    steps = sorted(ocp.utils.checkpoint_steps(directory))
    if not steps:
        raise FileNotFoundError(f"no complete checkpoint in {directory}.")
    return epath.Path(directory), steps


def _intact_step(workdir: str, step: int | None, items: Sequence[str]) -> tuple[epath.Path, int]:
    """The step to read ``items`` from: ``step`` (verified) or the newest whose ``items`` verify.

    Raises:
      FileNotFoundError: no checkpoints, or not that step.
      CorruptCheckpointError: ``step`` is corrupt, or (``step`` None) every checkpoint is.
    """
    directory, steps = _steps(workdir)
    if step is not None:
        if step not in steps:
            raise FileNotFoundError(f"no checkpoint for step {step} in {directory} (have {steps}).")
        verify_step(directory, step, items)
        return directory, step
    corrupt, errors = [], []
    for candidate in reversed(steps):
        try:
            verify_step(directory, candidate, items)
        except CorruptCheckpointError as error:
            _logger.warning("%s", error)
            corrupt.append(candidate)
            errors.append(error)
            continue
        if corrupt:
            _logger.warning(
                "reading checkpoint %d, the newest intact one (corrupt: %s)", candidate, corrupt
            )
        return directory, candidate
    raise _every_step_corrupt(directory, errors)


def newest_intact_step(workdir: str, items: Sequence[str] = ("params", "batch_stats")) -> int:
    """The newest step of ``workdir`` whose ``items`` verify against its manifest (what
    :func:`load_variables` without a step reads), for callers that record which step they used.

    Raises:
      FileNotFoundError: no checkpoints.
      CorruptCheckpointError: every checkpoint's ``items`` are corrupt.
    """
    return _intact_step(workdir, None, tuple(items))[1]


def _read_tree_as_numpy(directory: epath.Path, step: int, item: str) -> Any:
    handler = ocp.PyTreeCheckpointHandler()
    try:
        path = directory / str(step) / item
        tree = handler.metadata(path).tree
        restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
        return handler.restore(path, args=ocp.args.PyTreeRestore(restore_args=restore_args))
    except Exception as error:
        raise _read_error(os.fspath(directory), step, error) from error
    finally:
        handler.close()


def load_params(workdir: str, step: int | None = None) -> dict[str, Any]:
    """The parameters of the newest intact (or the given step's) checkpoint in ``workdir``, as
    NumPy.

    Returns:
      Nested dict of ``np.ndarray`` with the model's parameter paths.

    Raises:
      FileNotFoundError: no checkpoint (or not that step) under ``workdir/checkpoints``.
      CorruptCheckpointError: the given step's parameter files differ from its manifest (or,
        without a step, every checkpoint's do).
    """
    directory, step = _intact_step(workdir, step, ("params",))
    return _read_tree_as_numpy(directory, step, "params")


def load_variables(workdir: str, step: int | None = None) -> dict[str, Any]:
    """``{"params": ..., "batch_stats": ...}`` of a checkpoint as NumPy (what inference needs);
    steps and errors as :func:`load_params`."""
    directory, step = _intact_step(workdir, step, ("params", "batch_stats"))
    return {
        "params": _read_tree_as_numpy(directory, step, "params"),
        "batch_stats": _read_tree_as_numpy(directory, step, "batch_stats"),
    }


def load_config_json(workdir: str, step: int | None = None) -> dict[str, Any]:
    """The config the checkpointed run used (a plain dict from the saved JSON); steps and errors
    as :func:`load_params`."""
    directory, step = _intact_step(workdir, step, ("config",))
    handler = ocp.JsonCheckpointHandler()
    try:
        return handler.restore(directory / str(step) / "config")
    except Exception as error:
        raise _read_error(os.fspath(directory), step, error) from error
    finally:
        handler.close()
