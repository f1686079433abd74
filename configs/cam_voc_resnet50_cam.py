"""The plain CAM baseline (IRN's ResNet-50 CAM, Ahn et al. 2019) on VOC 2012 train_aug, no add-on.

    hfpl-jax train-cam --config=configs/cam_voc_resnet50_cam.py --workdir=workdirs/cam_voc_r50 \
        --config.input.data_dir=$HOME/tensorflow_datasets \
        --config.model.init_weights=pretrained/resnet50-19c8e357.pth

IRN's ``step/train_cam.py`` settings: batch 16, 5 epochs, lr 0.1 (classifier x10), weight decay
1e-4 on every trained parameter (BN affine included), the same PolyOptimizer (so the same momentum
quirk: SGD momentum = the weight decay, 1e-4), crop 512, resize-long 320–640, horizontal flip, no
colour jitter. Stages 1–2 (conv1, bn1, layer1, layer2) get no gradient in IRN (its forward detaches
after layer2), so they are frozen here; BN uses running statistics throughout. The classification
loss is MLSM on ``classifier(GAP(features))``, i.e. the GAP of the stride-16 logits
(``loss.gap_source="logits"``), with no SEAM branch (``loss.seam=False``).

The input pipeline is this project's SEAM-style one (PIL bicubic resize-long, flip, crop after
normalisation) with IRN's sizes; IRN's own loader differs in small details of resampling.
"""

from hfpl_jax.train.cam_config import base_config, use_resnet50_cam


def get_config(arg=None):
    del arg
    config = use_resnet50_cam(base_config())  # one branch, GAP of the logits, IRN's groups
    config.input.global_batch_size = 16
    config.input.crop_size = 512
    config.input.resize_long = (320, 640)
    config.input.color_jitter = None
    config.loss.isl_weight = 0.0
    config.loss.fsl = False
    config.optim.lr = 0.1
    config.optim.frozen = (r"^(conv1|bn1|layer1|layer2)/",)
    config.train.num_epochs = 5
    config.train.log_every_steps = 100
    return config
