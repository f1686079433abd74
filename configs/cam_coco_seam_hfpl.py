"""SEAM + HFPL CAM training on MS COCO 2014 train (``train_cam_coco.py``, spec §3.8).

    hfpl-jax train-cam --config=configs/cam_coco_seam_hfpl.py --workdir=workdirs/cam_coco \
        --config.input.data_dir=$HOME/tensorflow_datasets \
        --config.model.init_weights=pretrained/ilsvrc-cls_rna-a1_cls1000_ep-0001.params

Differences from VOC: 80 classes (fc8 has 81 outputs; ECR's top-k uses 81 channels), FSL weighted
0.2. Every other value is the VOC reference's (batch 8, 8 epochs, lr 0.01, crop 448, ISL 0.2 x 10).
"""

from hfpl_jax.train.cam_config import base_config


def get_config(arg=None):
    del arg
    config = base_config()
    config.input.dataset = "coco2014_wsss"
    config.input.split = "train"
    config.loss.fsl_weight = 0.2
    return config
