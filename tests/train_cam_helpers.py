"""Shared pieces of the CAM-training tests: a tiny generated dataset and a tiny config."""

from __future__ import annotations

import glob
import os
import struct

import numpy as np
import pytest

from hfpl_jax import config_utils
from hfpl_jax.train import optimizers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPES_CONFIG = os.path.join(REPO, "configs", "cam_shapes_seam_hfpl.py")
SEAM_FROZEN = "('^(conv1a|b2|b2_1|b2_2)/', '(^|/)bn[^/]*/')"


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory):
    from hfpl_jax import data

    data_dir = str(tmp_path_factory.mktemp("tfds"))
    data.ensure_built("hfpl_shapes", data_dir, **TINY_DATA)
    return data_dir


TINY_DATA = {"image_size": 64, "num_train": 16, "num_val": 4}


def tiny_overrides(data_dir: str, **extra) -> list[str]:
    """A 32-pixel, width-1/8, one-block-per-stage SEAM on 16 generated images, batch 8."""
    values = {
        "input.data_dir": data_dir,
        "input.builder_kwargs.image_size": TINY_DATA["image_size"],
        "input.builder_kwargs.num_train": TINY_DATA["num_train"],
        "input.builder_kwargs.num_val": TINY_DATA["num_val"],
        "input.crop_size": 32,
        "input.resize_long": "32,48",
        "input.read_threads": 1,
        "model.width": 0.125,
        "model.blocks": "1,1,1,1",
        "train.num_steps": 4,
        "train.log_every_steps": 1,
        "train.image_every_steps": 2,
        "checkpoint.every_steps": 1,
        "checkpoint.keep": 2,
        # The reference's frozen set (the shapes config trains conv1a/b2* from scratch).
        "optim.frozen": SEAM_FROZEN,
    }
    values.update(extra)
    return [f"--config.{key}={value}" for key, value in values.items()]


def tiny_config(data_dir: str, **extra):
    overrides = [arg[len("--config.") :] for arg in tiny_overrides(data_dir, **extra)]
    return config_utils.load_config(SHAPES_CONFIG, overrides)


def read_event_tags(directory: str) -> dict[str, list[int]]:
    """Scalar/image tags -> steps, from tensorboardX event files (TFRecord framing)."""
    from tensorboardX.proto import event_pb2

    tags: dict[str, list[int]] = {}
    for path in sorted(glob.glob(os.path.join(directory, "events.out.tfevents.*"))):
        with open(path, "rb") as f:
            blob = f.read()
        offset = 0
        while offset + 12 <= len(blob):
            (length,) = struct.unpack("<Q", blob[offset : offset + 8])
            record = blob[offset + 12 : offset + 12 + length]
            offset += 12 + length + 4
            event = event_pb2.Event()
            event.ParseFromString(record)
            for value in event.summary.value:
                tags.setdefault(value.tag, []).append(event.step)
    return tags


def flat(params):
    return {path: np.asarray(leaf) for path, leaf in optimizers.flatten_param_paths(params).items()}
