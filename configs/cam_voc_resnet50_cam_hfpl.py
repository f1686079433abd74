"""The plain CAM baseline (IRN's ResNet-50) with the HFPL add-on (ISL + FSL) on VOC 2012 train_aug.

    hfpl-jax train-cam --config=configs/cam_voc_resnet50_cam_hfpl.py \
        --workdir=workdirs/cam_voc_r50_hfpl --config.input.data_dir=$HOME/tensorflow_datasets \
        --config.model.init_weights=pretrained/resnet50-19c8e357.pth

``cam_voc_resnet50_cam.py`` plus HFPL's two losses with the paper's VOC settings: the
classification term becomes 0.8·GAP + 0.2·ISL (10 samples per class, binomial posterior) on the
stride-16 logits, and FSL (mu 2.5, sigma 5 on the logits' grid, weight 1) is added on
``with_background(max_norm(logits)·labels)`` and the de-normalised image resized to that grid.
"""

from hfpl_jax.train.cam_config import load_sibling_config


def get_config(arg=None):
    del arg
    config = load_sibling_config(__file__, "cam_voc_resnet50_cam.py")
    config.loss.isl_weight = 0.2
    config.loss.fsl = True
    config.loss.fsl_weight = 1.0
    return config
