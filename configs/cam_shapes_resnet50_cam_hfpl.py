"""ResNet-50 CAM + the HFPL add-on (ISL + FSL) on the synthetic ``hfpl_shapes`` dataset.

    hfpl-jax train-cam --config=configs/cam_shapes_resnet50_cam_hfpl.py \
        --workdir=workdirs/cam_shapes_r50

``cam_shapes_seam_hfpl.py`` with the add-on on a plain CAM network rather than SEAM: one branch,
0.8·GAP + 0.2·ISL on the stride-16 logits, plus FSL. Everything else is that run's: the same data
and 112-pixel crops, a small ResNet-50 (width 1/4, one block per stage) from random
initialisation, a real momentum of 0.9 with a base rate of 0.003, 600 steps, a few minutes on a
2-core CPU; and, as there, nothing is frozen except BN (random stems are not worth freezing).
"""

from hfpl_jax.train.cam_config import load_sibling_config, use_resnet50_cam


def get_config(arg=None):
    del arg
    config = use_resnet50_cam(load_sibling_config(__file__, "cam_shapes_seam_hfpl.py"))
    config.loss.isl_weight = 0.2
    config.loss.fsl = True
    config.optim.frozen = (r"(^|/)bn\d*/", r"/downsample/1/")  # torchvision's BN names
    return config
