"""SEAM without the HFPL add-on (no ISL, no FSL) on PASCAL VOC 2012 train_aug: the baseline.

    hfpl-jax train-cam --config=configs/cam_voc_seam.py --workdir=workdirs/cam_voc_seam \
        --config.input.data_dir=$HOME/tensorflow_datasets \
        --config.model.init_weights=pretrained/ilsvrc-cls_rna-a1_cls1000_ep-0001.params

Identical to ``cam_voc_seam_hfpl.py`` except ``loss.isl_weight=0`` (the reference's
``--loss_weight 0``: branch 1 uses GAP only) and ``loss.fsl=False`` (``--no-fsl``).
"""

from hfpl_jax.train.cam_config import base_config


def get_config(arg=None):
    del arg
    config = base_config()
    config.loss.isl_weight = 0.0
    config.loss.fsl = False
    return config
