"""Config files and command-line overrides (hfpl_jax.config_utils, configs/*.py)."""

import glob
import os

import pytest

from hfpl_jax import config_utils

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILES = sorted(glob.glob(os.path.join(REPO, "configs", "*.py")))
VOC = os.path.join(REPO, "configs", "cam_voc_seam_hfpl.py")


def test_every_config_file_loads_locked_and_documents_its_command():
    assert len(CONFIG_FILES) >= 3
    for path in CONFIG_FILES:
        config = config_utils.load_config(path)
        assert config.is_locked
        with open(path) as f:
            text = f.read()
        assert "hfpl-jax train-cam --config=configs/" + os.path.basename(path) in text, path


def test_reference_values_of_the_voc_config():
    config = config_utils.load_config(VOC)
    assert config.seed == 1
    assert config.input.global_batch_size == 8
    assert config.input.crop_size == 448
    assert tuple(config.input.resize_long) == (448, 768)
    assert config.train.num_epochs == 8
    assert config.optim.lr == 0.01
    assert config.optim.weight_decay == 5e-4
    assert config.optim.reference_momentum_bug is True
    assert config.optim.poly_power == 0.9
    assert config.loss.isl_weight == 0.2
    assert config.loss.isl_num_samples == 10
    assert (config.loss.fsl_mu, config.loss.fsl_sigma, config.loss.fsl_weight) == (2.5, 5.0, 1.0)
    coco = config_utils.load_config(os.path.join(REPO, "configs", "cam_coco_seam_hfpl.py"))
    assert coco.loss.fsl_weight == 0.2
    seam = config_utils.load_config(os.path.join(REPO, "configs", "cam_voc_seam.py"))
    assert seam.loss.isl_weight == 0.0 and seam.loss.fsl is False


def test_overrides_are_typed():
    config = config_utils.load_config(
        VOC,
        [
            ("train.num_steps", "10"),
            ("checkpoint.every_steps", "2"),
            ("checkpoint.keep", "3"),
            ("optim.lr", "1"),
            ("optim.reference_momentum_bug", "False"),
            ("input.resize_long", "320,640"),
            ("input.color_jitter", "(0.1, 0.2, 0.3, 0.05)"),
            ("model.compute_dtype", "bfloat16"),
            ("input.data_dir", "/tmp/x"),
        ],
    )
    assert config.train.num_steps == 10 and isinstance(config.train.num_steps, int)
    assert config.checkpoint.every_steps == 2 and config.checkpoint.keep == 3
    assert config.optim.lr == 1.0 and isinstance(config.optim.lr, float)
    assert config.optim.reference_momentum_bug is False
    assert config.input.resize_long == (320, 640)
    assert config.input.color_jitter == (0.1, 0.2, 0.3, 0.05)
    assert config.model.compute_dtype == "bfloat16"
    assert config.input.data_dir == "/tmp/x"


def test_string_overrides_and_placeholders_clear():
    config = config_utils.load_config(VOC, ["config.train.num_steps=7", "--config.seed=3"])
    assert (config.train.num_steps, config.seed) == (7, 3)
    config = config_utils.load_config(VOC, ["train.num_steps=7", "train.num_steps=none"])
    assert config.train.num_steps is None


@pytest.mark.parametrize(
    "key",
    ["train.num_stepz", "nope", "optim.lr.x", "checkpoint.keep_last"],
)
def test_unknown_key_is_an_error_that_names_it(key):
    with pytest.raises(ValueError, match=f"config.{key}"):
        config_utils.load_config(VOC, [(key, "1")])


@pytest.mark.parametrize(
    ("key", "text"),
    [
        ("train.num_steps", "ten"),
        ("train.num_steps", "1.5"),
        ("optim.lr", "fast"),
        ("optim.reference_momentum_bug", "maybe"),
    ],
)
def test_badly_typed_value_is_an_error_that_names_the_key(key, text):
    with pytest.raises(ValueError, match=f"config.{key}"):
        config_utils.load_config(VOC, [(key, text)])


def test_group_cannot_be_assigned():
    with pytest.raises(ValueError, match="is a group"):
        config_utils.load_config(VOC, [("optim", "1")])


def test_split_config_args():
    path, overrides, rest = config_utils.split_config_args(
        ["--config=a.py", "--workdir=w", "--config.train.num_steps=3", "--config.seed", "4", "-v"]
    )
    assert path == "a.py"
    assert overrides == [("train.num_steps", "3"), ("seed", "4")]
    assert rest == ["--workdir=w", "-v"]
    path, _, _ = config_utils.split_config_args(["--config", "b.py"])
    assert path == "b.py"


def test_missing_file_and_missing_get_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.py"):
        config_utils.load_config(str(tmp_path / "nope.py"))
    bad = tmp_path / "bad.py"
    bad.write_text("X = 1\n")
    with pytest.raises(ValueError, match="get_config"):
        config_utils.load_config(str(bad))


def test_config_argument_is_passed(tmp_path):
    path = tmp_path / "arg.py"
    path.write_text(
        "import ml_collections\n"
        "def get_config(arg=None):\n"
        "    c = ml_collections.ConfigDict()\n"
        "    c.name = arg or 'default'\n"
        "    return c\n"
    )
    assert config_utils.load_config(str(path)).name == "default"
    assert config_utils.load_config(f"{path}:small").name == "small"


def test_restore_config_fills_fields_newer_than_the_saved_run():
    from hfpl_jax.train import cam_config

    saved = cam_config.base_config().to_dict()
    del saved["model"]["dropout"], saved["model"]["conv_init"]  # a run written before they existed
    saved["model"]["width"] = 0.25
    saved["optim"]["lr"] = 0.003
    config = cam_config.restore_config(saved)
    assert config.model.dropout is True and config.model.conv_init == "torch"
    assert config.model.width == 0.25 and config.optim.lr == 0.003
    assert config.model.arch == "seam"
