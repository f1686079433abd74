"""The SEAM + HFPL loss composition (hfpl_jax.train.cam_loss) against the reference's training loop.

The golden fixture (scripts/make_golden_cam_loss.py) ran the loop body of the official
``train_cam_voc.py`` on fixed network outputs, with fixed ISL sample indices; here the same outputs
go through ``seam_hfpl_losses`` and every term and the gradients with respect to every output must
agree.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hfpl_jax import losses
from hfpl_jax.train import cam_loss

GOLDEN = os.path.join(os.path.dirname(__file__), "testdata", "cam_loss_golden.npz")


def _nhwc(array):
    return jnp.asarray(np.transpose(array, (0, 2, 3, 1)))


@pytest.fixture(scope="module")
def golden():
    return dict(np.load(GOLDEN))


def _inputs(golden):
    outputs1 = {k: _nhwc(golden[f"input/{k}1"]) for k in ("cam", "cam_rv", "logits")}
    outputs2 = {k: _nhwc(golden[f"input/{k}2"]) for k in ("cam", "cam_rv")}
    images = _nhwc(golden["input/img1"])
    labels = jnp.asarray(golden["labels"])
    n, k = labels.shape
    # torch.multinomial rows are (image, class) pairs n*K + c, each with S draws.
    indices = golden["isl_indices"].reshape(n, k, -1).transpose(0, 2, 1)

    def isl_fn(key, logits, labels):
        del key
        return losses.importance_sampling_loss_from_indices(
            logits[..., 1:], labels, jnp.asarray(indices, jnp.int32)
        )

    return outputs1, outputs2, images, labels, isl_fn


RENAME = {
    "loss": "loss",
    "loss_cls": "loss_cls",
    "loss_er": "loss_er",
    "loss_ecr": "loss_ecr",
    "loss_fsl": "loss_fs1",
    "loss_gap2": "loss_cls2",
    "loss_min_pool1": "loss_rvmin1",
    "loss_min_pool2": "loss_rvmin2",
}


@pytest.mark.parametrize(("tag", "weight"), [("w0", 0.0), ("w02", 0.2), ("w1", 1.0)])
def test_every_term_matches_the_reference_loop(golden, tag, weight):
    outputs1, outputs2, images, labels, isl_fn = _inputs(golden)
    settings = cam_loss.LossSettings(isl_weight=weight)
    terms = cam_loss.seam_hfpl_losses(
        outputs1, outputs2, images, labels, jax.random.key(0), settings, isl_fn=isl_fn
    )
    assert set(terms) == set(settings.term_names())
    for ours, theirs in RENAME.items():
        np.testing.assert_allclose(
            float(terms[ours]), golden[f"{tag}/{theirs}"], rtol=2e-6, atol=1e-7, err_msg=ours
        )
    if weight == 0.0:
        assert "loss_isl" not in terms  # the reference skips the ISL block entirely
        np.testing.assert_allclose(float(terms["loss_gap1"]), golden["w0/loss_cls1"], rtol=2e-6)
    else:
        np.testing.assert_allclose(
            float(terms["loss_isl"]), golden[f"{tag}/loss_cls_is1"], rtol=2e-6
        )
    # The GAP term of branch 1 before mixing is the w=0 run's loss_cls1 in every variant.
    np.testing.assert_allclose(float(terms["loss_gap1"]), golden["w0/loss_cls1"], rtol=2e-6)


def test_gradients_match_the_reference_loop(golden):
    outputs1, outputs2, images, labels, isl_fn = _inputs(golden)
    settings = cam_loss.LossSettings(isl_weight=0.2)

    def total(outputs1, outputs2):
        return cam_loss.seam_hfpl_losses(
            outputs1, outputs2, images, labels, jax.random.key(0), settings, isl_fn=isl_fn
        )["loss"]

    grads1, grads2 = jax.grad(total, argnums=(0, 1))(outputs1, outputs2)
    for name, grad in (
        ("cam1", grads1["cam"]),
        ("cam_rv1", grads1["cam_rv"]),
        ("logits1", grads1["logits"]),
        ("cam2", grads2["cam"]),
        ("cam_rv2", grads2["cam_rv"]),
    ):
        want = np.transpose(golden[f"grad/{name}"], (0, 2, 3, 1))
        scale = np.abs(want).max()
        assert scale > 0, name
        np.testing.assert_allclose(
            np.asarray(grad), want, rtol=1e-4, atol=1e-5 * scale, err_msg=name
        )


def test_fsl_toggle_and_weight(golden):
    outputs1, outputs2, images, labels, isl_fn = _inputs(golden)
    off = cam_loss.seam_hfpl_losses(
        outputs1, outputs2, images, labels, jax.random.key(0),
        cam_loss.LossSettings(isl_weight=0.2, fsl=False), isl_fn=isl_fn,
    )  # fmt: skip
    assert "loss_fsl" not in off
    np.testing.assert_allclose(float(off["loss"]), golden["nofsl/loss"], rtol=2e-6)
    coco = cam_loss.seam_hfpl_losses(
        outputs1, outputs2, images, labels, jax.random.key(0),
        cam_loss.LossSettings(isl_weight=0.2, fsl_weight=0.2), isl_fn=isl_fn,
    )  # fmt: skip
    want = golden["nofsl/loss"] + 0.2 * golden["w02/loss_fs1"]
    np.testing.assert_allclose(float(coco["loss"]), want, rtol=2e-6)


def test_term_weights_and_sampled_isl(golden):
    outputs1, outputs2, images, labels, _ = _inputs(golden)
    settings = cam_loss.LossSettings(er_weight=0.0, ecr_weight=2.0, min_pool_weight=0.0, fsl=False)
    terms = cam_loss.seam_hfpl_losses(
        outputs1, outputs2, images, labels, jax.random.key(3), settings
    )
    cls = (0.8 * terms["loss_gap1"] + 0.2 * terms["loss_isl"] + terms["loss_gap2"]) / 2
    np.testing.assert_allclose(float(terms["loss_cls"]), float(cls), rtol=1e-6)
    np.testing.assert_allclose(
        float(terms["loss"]), float(cls + 2.0 * terms["loss_ecr"]), rtol=1e-6
    )
    assert np.isfinite(float(terms["loss_isl"]))


def test_single_branch_path_for_any_cam_network(golden):
    outputs1, _, images, labels, isl_fn = _inputs(golden)
    settings = cam_loss.LossSettings(seam=False, gap_source="logits", isl_weight=0.2)
    terms = cam_loss.single_branch_losses(outputs1, images, labels, jax.random.key(0), settings,
                                     isl_fn=isl_fn)  # fmt: skip
    assert set(terms) == set(settings.term_names()) == {
        "loss", "loss_cls", "loss_gap1", "loss_isl", "loss_fsl"
    }  # fmt: skip
    gap = losses.multilabel_soft_margin_loss(
        jnp.mean(outputs1["logits"], axis=(1, 2))[:, 1:], labels
    )
    np.testing.assert_allclose(float(terms["loss_gap1"]), float(gap), rtol=1e-6)
    np.testing.assert_allclose(float(terms["loss_isl"]), golden["w02/loss_cls_is1"], rtol=2e-6)
    np.testing.assert_allclose(float(terms["loss_fsl"]), golden["w02/loss_fs1"], rtol=2e-6)
    np.testing.assert_allclose(
        float(terms["loss"]), 0.8 * float(gap) + 0.2 * golden["w02/loss_cls_is1"]
        + golden["w02/loss_fs1"], rtol=2e-6,
    )  # fmt: skip


def test_bad_settings_name_the_field():
    with pytest.raises(ValueError, match="loss.isl_weight"):
        cam_loss.LossSettings(isl_weight=1.5)
    with pytest.raises(ValueError, match="loss.gap_source"):
        cam_loss.LossSettings(gap_source="mean")
    with pytest.raises(ValueError, match="loss.isl_posterior"):
        cam_loss.LossSettings(isl_posterior="poisson")
    with pytest.raises(ValueError, match="loss.bogus"):
        cam_loss.LossSettings.from_config({"bogus": 1})


def test_branch_two_size_mismatch_is_an_error(golden):
    outputs1, outputs2, images, labels, isl_fn = _inputs(golden)
    with pytest.raises(ValueError, match="branch 2"):
        cam_loss.seam_hfpl_losses(outputs1, outputs1, images, labels, jax.random.key(0),
                             cam_loss.LossSettings(), isl_fn=isl_fn)  # fmt: skip
