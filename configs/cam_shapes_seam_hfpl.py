"""SEAM + HFPL (ISL + FSL) CAM training on the synthetic ``hfpl_shapes`` dataset: the default job.

    hfpl-jax train-cam --config=configs/cam_shapes_seam_hfpl.py --workdir=workdirs/cam_shapes

Every loss of the reference (two SEAM branches, GAP, ISL, min-pooling, ER, ECR, FSL) with its
weights, on a small ResNet-38 (width 1/4, one block per stage) and 112-pixel crops, sized to finish
in a few minutes on a 2-core CPU, compilation included. The dataset (3,000 training images of six
shape/texture classes) is generated into ``input.data_dir`` (default ``~/tensorflow_datasets``) on
first use.

Two deliberate departures from the VOC reference, because this run starts from random weights
rather than ImageNet ones: conv1a and b2* train (freezing random filters helps nothing; BN stays
frozen, as in every CAM run), and the SGD momentum is a real 0.9
(``optim.reference_momentum_bug=False``) with a base rate of 0.003, which from scratch learns
steadily where the reference's effective plain SGD at 0.01 barely moves in this budget (a base rate
of 0.01 with real momentum collapses the CAMs to zero after a few hundred steps).
"""

from hfpl_jax.train.cam_config import base_config


def get_config(arg=None):
    del arg
    config = base_config()
    config.input.dataset = "hfpl_shapes"
    config.input.split = "train"
    # The generated dataset's size (hfpl_jax.data.shapes.ShapesParams; these are its defaults).
    config.input.builder_kwargs.image_size = 160
    config.input.builder_kwargs.num_train = 3000
    config.input.builder_kwargs.num_val = 500
    config.input.crop_size = 112
    config.input.resize_long = (112, 176)
    config.input.global_batch_size = 8
    config.input.worker_count = 0  # decode in the training process (2-core machines)
    config.model.width = 0.25
    config.model.blocks = (1, 1, 1, 1)
    config.optim.lr = 0.003
    config.optim.reference_momentum_bug = False
    config.optim.frozen = (r"(^|/)bn[^/]*/",)
    config.train.num_epochs = 2  # floor(3000 / 8) * 2 = 750 steps
    config.train.num_steps = 600
    config.train.log_every_steps = 10
    config.train.image_every_steps = 100
    config.checkpoint.every_steps = 50
    config.checkpoint.keep = 3
    return config
