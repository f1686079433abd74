"""CAM training across processes: SIGKILL + resume, and two ``jax.distributed`` processes.

Each test starts ``hfpl-jax train-cam`` in subprocesses (the real command line) and compares the
result with a run in this process.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from train_cam_helpers import SHAPES_CONFIG, flat, shapes_dir, tiny_config, tiny_overrides  # noqa: F401

from hfpl_jax import checkpoint
from hfpl_jax.train import cam

COMMAND = [sys.executable, "-m", "hfpl_jax.cli", "train-cam", f"--config={SHAPES_CONFIG}"]


def _metrics(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def _wait_for_checkpoint(workdir, step, process, timeout=300.0):
    path = os.path.join(checkpoint.checkpoint_dir(workdir), str(step))
    deadline = time.monotonic() + timeout
    while not os.path.isdir(path):
        if process.poll() is not None:
            raise AssertionError(f"training exited early (rc {process.returncode})")
        if time.monotonic() > deadline:
            raise AssertionError(f"no checkpoint {step} after {timeout} s")
        time.sleep(0.02)


@pytest.mark.slow
def test_sigkill_then_same_command_ends_bitwise_equal(shapes_dir, tmp_path):  # noqa: F811
    extra = {"train.num_steps": 10, "checkpoint.every_steps": 2, "checkpoint.keep": 3,
             "train.image_every_steps": 0}  # fmt: skip
    reference = cam.train_and_evaluate(
        tiny_config(shapes_dir, **extra), str(tmp_path / "reference"), progress=False
    )
    workdir = str(tmp_path / "killed")
    command = [
        *COMMAND,
        f"--workdir={workdir}",
        "--no_progress",
        *tiny_overrides(shapes_dir, **extra),
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_for_checkpoint(workdir, 4, process)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == -signal.SIGKILL
    killed_at = checkpoint.CheckpointManager(workdir).latest_step()
    assert killed_at is not None and 4 <= killed_at < 10, killed_at

    resumed = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (
        f"resumed from {checkpoint.checkpoint_dir(workdir)} at step {killed_at}" in resumed.stderr
    )

    want = flat(reference.params)
    got = flat(checkpoint.load_params(workdir))
    for path in want:
        np.testing.assert_array_equal(got[path], want[path], err_msg=path)
    # The metrics log reads like one run: every step once, with the uninterrupted run's losses.
    reference_log = _metrics(str(tmp_path / "reference"))
    log = _metrics(workdir)
    assert [r["step"] for r in log] == list(range(1, 11))
    for ours, theirs in zip(log, reference_log, strict=True):
        assert ours["loss"] == theirs["loss"], ours["step"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _two_processes(workdir, overrides):
    """Two ``train-cam`` processes of one ``jax.distributed`` job, 2 CPU devices each (killed
    when the block ends, if still running); stderr is piped."""
    port = _free_port()
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    processes = [
        subprocess.Popen(
            [
                *COMMAND,
                f"--workdir={workdir}",
                "--no_progress",
                f"--coordinator_address=localhost:{port}",
                "--num_processes=2",
                f"--process_id={index}",
                *overrides,
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for index in range(2)
    ]
    try:
        yield processes
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_processes_equal_one_process(shapes_dir, tmp_path):  # noqa: F811
    extra = {"train.num_steps": 3, "train.image_every_steps": 2, "checkpoint.every_steps": 2}
    workdir = str(tmp_path / "two")
    with _two_processes(workdir, tiny_overrides(shapes_dir, **extra)) as processes:
        errors = [p.communicate(timeout=600)[1] for p in processes]
    for p, err in zip(processes, errors, strict=True):
        assert p.returncode == 0, err[-3000:]
    assert "process 0 of 2, 2 local / 4 global" in errors[0]

    # The same global batches on one process with a 4-device mesh.
    single = cam.train_and_evaluate(
        tiny_config(shapes_dir, **extra, **{"mesh.num_devices": 4}),
        str(tmp_path / "one"),
        progress=False,
    )
    want = flat(single.params)
    got = flat(checkpoint.load_params(workdir))
    for path in want:
        np.testing.assert_allclose(got[path], want[path], rtol=1e-5, atol=1e-7, err_msg=path)
    two_log, one_log = _metrics(workdir), _metrics(str(tmp_path / "one"))
    assert [r["step"] for r in two_log] == [1, 2, 3]
    for ours, theirs in zip(two_log, one_log, strict=True):
        np.testing.assert_allclose(ours["loss"], theirs["loss"], rtol=1e-5)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_sigterm_to_one_process_stops_both_at_the_same_saved_step(shapes_dir, tmp_path):  # noqa: F811
    extra = {"train.num_steps": 200, "train.image_every_steps": 0, "checkpoint.every_steps": 500,
             "train.log_every_steps": 2}  # fmt: skip
    workdir = str(tmp_path / "two")
    with _two_processes(workdir, tiny_overrides(shapes_dir, **extra)) as processes:
        metrics = os.path.join(workdir, "metrics.jsonl")
        deadline = time.monotonic() + 600
        while not (os.path.exists(metrics) and os.path.getsize(metrics) > 0):
            assert all(p.poll() is None for p in processes), "training exited early"
            assert time.monotonic() < deadline, "no metrics after 600 s"
            time.sleep(0.05)
        processes[1].send_signal(signal.SIGTERM)  # process 0 gets nothing
        errors = [p.communicate(timeout=600)[1] for p in processes]
    for p, err in zip(processes, errors, strict=True):
        assert p.returncode == 0, err[-3000:]
    (saved,) = checkpoint.CheckpointManager(workdir).all_steps()
    assert saved < 200 and saved % 2 == 0, saved  # stopped early, at a logging step
    assert "stop requested (signal); saved step" in errors[0]
