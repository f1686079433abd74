"""ResNet-50 CAM + the HFPL add-on (ISL + FSL) on the synthetic ``hfpl_shapes`` dataset.

    hfpl-jax train-cam --config=configs/cam_shapes_resnet50_cam_hfpl.py \
        --workdir=workdirs/cam_shapes_r50

The add-on on a plain CAM network rather than SEAM: one branch, 0.8·GAP + 0.2·ISL on the stride-16
logits, plus FSL. A small ResNet-50 (width 1/4, one block per stage) from random initialisation on
112-pixel crops, a few minutes on a 2-core CPU. As in ``cam_shapes_seam_hfpl.py``, nothing is frozen
except BN (random stems are not worth freezing) and the momentum is a real 0.9 with a base rate of
0.003.
"""

from hfpl_jax.train.cam_config import base_config


def get_config(arg=None):
    del arg
    config = base_config()
    config.input.dataset = "hfpl_shapes"
    config.input.split = "train"
    config.input.builder_kwargs.image_size = 160
    config.input.builder_kwargs.num_train = 3000
    config.input.builder_kwargs.num_val = 500
    config.input.crop_size = 112
    config.input.resize_long = (112, 176)
    config.input.global_batch_size = 8
    config.input.worker_count = 0  # decode in the training process (2-core machines)
    config.model.arch = "resnet50_cam"
    config.model.width = 0.25
    config.model.blocks = (1, 1, 1, 1)
    config.loss.seam = False
    config.loss.gap_source = "logits"
    config.loss.isl_weight = 0.2
    config.loss.fsl = True
    config.optim.lr = 0.003
    config.optim.weight_decay = 1e-4
    config.optim.reference_momentum_bug = False
    config.optim.lr_mults = ((r"^classifier/", 10.0),)
    config.optim.wd_mults = ()
    config.optim.frozen = (r"(^|/)bn\d*/", r"/downsample/1/")
    config.train.num_epochs = 2
    config.train.num_steps = 600
    config.train.log_every_steps = 10
    config.train.image_every_steps = 100
    config.checkpoint.every_steps = 50
    return config
