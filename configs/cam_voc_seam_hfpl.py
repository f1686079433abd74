"""SEAM + HFPL (ISL + FSL) CAM training on PASCAL VOC 2012 train_aug: the reference's settings.

    hfpl-jax train-cam --config=configs/cam_voc_seam_hfpl.py --workdir=workdirs/cam_voc_seam_hfpl \
        --config.input.data_dir=$HOME/tensorflow_datasets \
        --config.model.init_weights=pretrained/ilsvrc-cls_rna-a1_cls1000_ep-0001.params

Everything is ``train_cam_voc.py``'s defaults (spec §3.1): batch 8, 8 epochs (max_step
10,576), crop 448, resize-long 448–768, flip, colour jitter 0.3/0.3/0.3/0.1, lr 0.01 with poly
power 0.9, groups x1 / x10 (fc8, f8_3, f8_4, f9), weight decay 5e-4, frozen conv1a/b2*/BN, seed 1,
ISL mixing weight 0.2 with 10 samples, FSL mu 2.5 sigma 5. The optimizer keeps the reference's
momentum quirk (SGD momentum = 5e-4, ``optim.reference_momentum_bug=True``); pass
``--config.optim.reference_momentum_bug=false`` for a real momentum of ``optim.momentum`` (0.9).
"""

from hfpl_jax.train.cam_config import base_config


def get_config(arg=None):
    del arg
    return base_config()
