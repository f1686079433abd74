"""The CAM-training config schema: every field, with the reference's values as defaults.

Experiment files under ``configs/`` start from :func:`base_config` (or from another experiment
file, :func:`load_sibling_config`) and change what differs, so the schema (and the meaning of every
field) lives in one place; :func:`use_resnet50_cam` is the switch the ResNet-50 CAM files share.
The defaults are the reference's ``train_cam_voc.py`` settings (spec §3.1), SEAM + ISL + FSL on
VOC 2012 ``train_aug``.

Fields
------
``seed``                       base RNG seed (model init, data order, dropout, ISL sampling).
``input.*``                    passed to ``hfpl_jax.data.input_pipeline.make_cam_train_iterator``
                               (see its docstring); ``input.data_dir`` None means
                               ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``;
                               ``input.builder_kwargs`` sizes the generated ``hfpl_shapes``;
                               ``input.num_epochs`` None streams forever (the loop stops at
                               max_step); ``worker_count`` > 0 decodes in worker processes.
``input.num_train_examples``   size of the training split for ``max_step``; None: read it from the
                               dataset.
``model.arch``                 "seam" (two outputs + PCM) or any CAM architecture of
                               ``hfpl_jax.models.build`` ("resnet50_cam").
``model.width/blocks``         model size (tiny test models); 1.0/None is the reference's size.
``model.batch_norm``           "frozen" (the reference: BN normalises with its stored statistics,
                               never updated) or "batch" (batch statistics of the global batch
                               while training; the running averages move by branch 1's batch only).
                               An option for runs from random weights, where frozen BN is the
                               identity; BN's scale/bias still follow ``optim.frozen``.
``model.conv_init``            "torch" (PyTorch's default conv init, the reference's; ImageNet
                               weights replace it) or "he_normal" (N(0, 2/fan_in): for runs from
                               random weights, where "torch" shrinks the signal at every conv).
``model.dropout``              True (the reference): Dropout2d in b6/b7 and before fc8 while
                               training; False turns every dropout layer off.
``model.compute_dtype``        "float32" or "bfloat16" activations; parameters stay float32 and the
                               losses are computed in float32.
``model.init_weights``         ImageNet weights: an MXNet ``.params`` file, a ``.pth`` state dict
                               or a converted ``.npz``; "" starts from random initialisation.
``loss.seam``                  True: the two SEAM branches with ER, ECR and min-pooling (§3.4–3.6);
                               False: one branch, classification (+ ISL, FSL) only.
``loss.scale_factor``          the second branch's downscale (0.3).
``loss.gap_source``            "cam": GAP over the AC-upsampled CAM (SEAM); "logits": over the
                               network-resolution logits (== classifier(GAP(features)) for a 1×1
                               bias-free classifier, the plain CAM baseline).
``loss.isl_weight``            the reference's ``loss_weight`` w: branch 1's classification term is
                               (1−w)·GAP + w·ISL; 0 skips ISL, 1 uses ISL alone.
``loss.isl_num_samples/posterior``  ISL samples per (image, class); "binomial" (HFPL) or
                               "multinomial" (the predecessor, Appendix C).
``loss.fsl``, ``loss.fsl_weight``   FSL toggle and weight (VOC 1.0, COCO 0.2); ``fsl_mu``,
                               ``fsl_sigma``, ``fsl_px``, ``fsl_py``, ``fsl_method`` as in §3.5(f).
``loss.min_pool_weight``       weight of the adaptive min-pooling term inside ``loss_cls`` (1).
``loss.er_weight``, ``loss.ecr_weight``   weights of ER and ECR (1, 1); 0 removes the term.
``loss.ecr_top_fraction``      ECR's top-k fraction (0.2).
``optim.*``                    see ``hfpl_jax.train.optimizers.make_optimizer``.
``train.num_epochs``           max_step = floor(num_train_examples / global_batch) · num_epochs.
``train.num_steps``            overrides max_step when set.
``train.log_every_steps``      scalars to TensorBoard / metrics.jsonl (means since the last log).
``train.image_every_steps``    CAM overlays to TensorBoard (0 disables).
``checkpoint.every_steps/keep``  save every N steps and at the end; keep the newest K.
``checkpoint.restore_data_state``  resume the input pipeline where it was (False: restart it from
                               its seed, e.g. after changing the number of processes).
``mesh.num_devices``           devices in the data-parallel mesh; None: all devices.
``evals``                      evaluations during training, ``{name: {"type", "every_steps",
                               options...}}`` (see ``hfpl_jax.train.evaluators``); none by default.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from typing import Any

import ml_collections
from ml_collections import config_dict

from hfpl_jax.models import seam
from hfpl_jax.train.cam_loss import LossSettings

# Parameter groups of the SEAM network, from its ArchSpec (the reference's
# network/resnet38_SEAM.Net.get_parameter_groups): conv1a, b2* and every BN parameter are frozen
# (BN runs in eval mode), and the new head convs train at 10x (biases, none of which exist in
# SEAM, would get 2x/20x and no decay, like the reference's groups 1 and 3).
_SEAM_RULES = seam.SPEC.optimizer_rules()
SEAM_FROM_SCRATCH = seam.SPEC.from_scratch
SEAM_FROZEN = _SEAM_RULES["frozen"]
SEAM_LR_MULTS = _SEAM_RULES["lr_mults"]
BIAS_NO_DECAY = _SEAM_RULES["wd_mults"]


def base_config() -> ml_collections.ConfigDict:
    """The reference's VOC SEAM + HFPL CAM-training settings (spec §3.1), unlocked."""
    config = ml_collections.ConfigDict()
    config.seed = 1

    config.input = ml_collections.ConfigDict()
    config.input.dataset = "voc2012_wsss"
    config.input.data_dir = config_dict.placeholder(str)
    config.input.split = "train_aug"
    config.input.global_batch_size = 8
    config.input.crop_size = 448
    config.input.resize_long = (448, 768)
    config.input.hflip = True
    config.input.color_jitter = (0.3, 0.3, 0.3, 0.1)
    config.input.shuffle = True
    config.input.num_epochs = config_dict.placeholder(int)
    config.input.worker_count = 8  # decoding processes (the reference's num_workers)
    config.input.read_threads = 0
    config.input.prefetch_batches = 2
    config.input.builder_kwargs = ml_collections.ConfigDict()
    config.input.num_train_examples = config_dict.placeholder(int)

    config.model = ml_collections.ConfigDict()
    config.model.arch = "seam"
    config.model.width = 1.0
    config.model.blocks = config_dict.placeholder(tuple)
    config.model.batch_norm = "frozen"
    config.model.dropout = True
    config.model.conv_init = "torch"
    config.model.compute_dtype = "float32"
    config.model.init_weights = ""

    # The loss defaults are stated once, as the field defaults of LossSettings.
    config.loss = ml_collections.ConfigDict(LossSettings().as_dict())

    config.optim = ml_collections.ConfigDict()
    config.optim.name = "sgd"
    config.optim.lr = 0.01
    config.optim.weight_decay = 5e-4
    config.optim.momentum = 0.9
    # PolyOptimizer passes weight_decay into SGD's momentum slot: momentum = 5e-4 (spec §1.9).
    config.optim.reference_momentum_bug = True
    config.optim.schedule = "poly"
    config.optim.poly_power = 0.9
    config.optim.lr_mults = SEAM_LR_MULTS
    config.optim.wd_mults = BIAS_NO_DECAY
    config.optim.frozen = SEAM_FROZEN

    config.train = ml_collections.ConfigDict()
    config.train.num_epochs = 8
    config.train.num_steps = config_dict.placeholder(int)
    config.train.log_every_steps = 50
    config.train.image_every_steps = 500

    config.checkpoint = ml_collections.ConfigDict()
    config.checkpoint.every_steps = 1000
    config.checkpoint.keep = 3
    config.checkpoint.restore_data_state = True

    config.mesh = ml_collections.ConfigDict()
    config.mesh.num_devices = config_dict.placeholder(int)

    config.evals = ml_collections.ConfigDict()  # none: the reference evaluates after training
    return config


def use_resnet50_cam(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Switches ``config`` (in place, and returns it) to IRN's ResNet-50 CAM (Ahn et al. 2019).

    One branch (``loss.seam=False``) classified by MLSM on ``classifier(GAP(features))``, the GAP
    of the stride-16 logits (``loss.gap_source="logits"``), and IRN's optimizer groups: weight
    decay 1e-4 on every trained parameter (no bias exemption) and the classifier at 10x the base
    rate. The learning rate, the frozen layers and the HFPL losses stay the caller's choice.
    """
    config.model.arch = "resnet50_cam"
    config.loss.seam = False
    config.loss.gap_source = "logits"
    config.optim.weight_decay = 1e-4
    config.optim.lr_mults = ((r"^classifier/", 10.0),)
    config.optim.wd_mults = ()
    return config


def load_sibling_config(config_file: str, name: str) -> ml_collections.ConfigDict:
    """``get_config()`` of the experiment file ``name`` in the folder of ``config_file`` (pass
    ``__file__``), for an experiment written as another one plus changes.

    Raises:
      FileNotFoundError: there is no such file beside ``config_file``.
    """
    path = os.path.join(os.path.dirname(os.path.abspath(config_file)), name)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config {name!r} does not exist beside {config_file!r}.")
    spec = importlib.util.spec_from_file_location("_" + os.path.splitext(name)[0], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def restore_config(saved: Mapping[str, Any]) -> ml_collections.ConfigDict:
    """A run's saved config (its ``config.json``, or ``checkpoint.load_config_json``) as a
    ConfigDict, over :func:`base_config`: fields added to the code after the run was written take
    their defaults, which keep the behaviour the run had (e.g. ``model.dropout``,
    ``model.conv_init``); the saved values override everything else.
    """
    config = base_config()
    config.update(dict(saved))
    return config
