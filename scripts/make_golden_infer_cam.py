"""Make the golden fixture of CAM inference by running the official ``infer_cam_voc.py`` loop body.

Command that produced the committed fixture (torch 2.13.0 CPU, float32, 1 thread):

    .venv/bin/python scripts/make_golden_infer_cam.py --reference /work/ref/hfpl \
        --out tests/testdata/golden_infer_cam.npz

What runs: the reference's ``voc12.data.VOC12ClsDatasetMSF`` (scales 0.5, 1.0, 1.5, 2.0; PIL
bicubic; ``model.normalize``) builds the 8 inputs of a synthetic 27x21 JPEG, and the body of the
script's ``for iter, (img_name, img_list, label) in ...`` loop, read from the checkout's
``infer_cam_voc.py`` with ``ast`` and executed as is, runs the full-size SEAM
(``network/resnet38_SEAM.Net``, weights from ``hfpl_jax.weights.seeded_state_dict("seam", 0)``)
on them through its ``BatchThreader``, fuses the maps and builds ``cam_dict``; its
``_crf_with_alpha`` is then called for alpha 1 and 24 with ``imutils.crf_inference`` replaced by a
recorder (pydensecrf is not needed), which keeps the CRF's input ``P``.

Stored (NHWC where spatial): ``image`` (H, W, 3) uint8 as decoded, ``label`` (20,), ``inputs/<i>``
the 8 normalised inputs (h, w, 3), ``pcm/<i>`` the network-resolution ``cam_rv`` of input ``i``
(the model's PCM output before its upsampling, recorded by wrapping ``Net.PCM`` in a second,
sequential pass), ``cam_rv/<i>``
the model's upsampled output (h, w, 21), ``norm_cam`` (H, W, 20) the script's ``norm_cam`` (every
class), ``cam_classes`` the keys of ``cam_dict``, ``crf_input_<alpha>`` (H, W, K' + 1) the ``P``
passed to ``crf_inference``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile
import types

import numpy as np

from hfpl_jax.reference import import_reference, inference_loop_statements

IMAGE_NAME = "2007_000000"
IMAGE_WH = (21, 27)  # PIL (width, height): scales give 10x14 (round-half-even), 32x40, ...
LABELS = (3, 7, 15)
SEED = 0


def synthetic_image() -> np.ndarray:
    from PIL import Image

    from hfpl_jax.data.fake_data import synthetic_image_and_mask

    # The shapes generator draws at >= 32 px; halve a 42x54 drawing.
    image, _ = synthetic_image_and_mask(1, (2 * IMAGE_WH[0], 2 * IMAGE_WH[1]), 20, seed=SEED)
    return np.asarray(Image.fromarray(image).resize(IMAGE_WH, Image.BILINEAR))


def _shim_torchvision_and_pil() -> None:
    """``voc12/data.py`` imports torchvision for ``transforms`` (unused on this path; torchvision is
    not installable beside this torch) and resizes with ``PIL.Image.CUBIC`` (now ``BICUBIC``)."""
    from PIL import Image

    if not hasattr(Image, "CUBIC"):
        Image.CUBIC = Image.BICUBIC
    if "torchvision" not in sys.modules:
        torchvision = types.ModuleType("torchvision")
        torchvision.transforms = types.ModuleType("torchvision.transforms")
        sys.modules.update(
            {"torchvision": torchvision, "torchvision.transforms": torchvision.transforms}
        )


def make(reference: str, out: str) -> None:
    import_reference(reference)
    _shim_torchvision_and_pil()
    import network.resnet38_SEAM as seam_module
    import torch
    import torch.nn.functional as F  # noqa: N812
    import voc12.data
    from PIL import Image
    from tool import imutils, pyutils

    from hfpl_jax.weights import seeded_state_dict

    torch.set_num_threads(1)
    net = seam_module.Net()
    state = {
        k: torch.from_numpy(np.array(v)) for k, v in seeded_state_dict("seam", SEED, 20).items()
    }
    missing, unexpected = net.load_state_dict(state, strict=True)
    assert not missing and not unexpected
    net.eval()

    label = np.zeros(20, np.float32)
    label[list(LABELS)] = 1.0
    with tempfile.TemporaryDirectory() as root:
        os.makedirs(os.path.join(root, "JPEGImages"))
        Image.fromarray(synthetic_image()).save(
            voc12.data.get_img_path(IMAGE_NAME, root), quality=95
        )
        # The dataset's list/label files are replaced by the one image; everything else
        # (resizing, normalisation, flips) is the reference's VOC12ClsDatasetMSF.__getitem__.
        dataset = voc12.data.VOC12ClsDatasetMSF.__new__(voc12.data.VOC12ClsDatasetMSF)
        dataset.img_name_list, dataset.voc12_root, dataset.transform = [IMAGE_NAME], root, None
        dataset.label_list = [label]
        dataset.scales, dataset.unit = [0.5, 1.0, 1.5, 2.0], 1
        # torchvision.transforms.Compose([np.asarray, model.normalize, imutils.HWC_to_CHW]) of
        # the script, composed by hand (torchvision is not a dependency).
        dataset.inter_transform = lambda img: imutils.HWC_to_CHW(net.normalize(np.asarray(img)))
        name, img_list, label_t = dataset[0]
        img_list = [torch.from_numpy(x)[None] for x in img_list]  # the DataLoader's batch of 1

        path = os.path.join(os.path.abspath(reference), "infer_cam_voc.py")
        with open(path) as f:
            body = compile(inference_loop_statements(f.read(), path), path, "exec")
        crf_inputs = {}

        def recording_crf(img, probs, labels, t=10, scale_factor=1):
            crf_inputs[len(crf_inputs)] = np.asarray(probs).copy()
            return probs

        namespace = {
            "np": np, "torch": torch, "F": F, "Image": Image, "pyutils": pyutils, "voc12": voc12,
            "imutils": imutils, "model_replicas": [net], "n_gpus": 1, "iter": 1,
            "infer_data_loader": [None], "img_name": [name], "img_list": img_list,
            "label": label_t[None],
            "args": argparse.Namespace(voc12_root=root, num_workers=1, out_cam=None, out_crf=None,
                                       out_cam_pred=None, out_cam_pred_alpha=0.26),
        }  # fmt: skip
        original_device, original_crf = torch.cuda.device, imutils.crf_inference
        torch.cuda.device = lambda index: contextlib.nullcontext()  # CPU-only torch
        imutils.crf_inference = recording_crf
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                exec(body, namespace)  # noqa: S102 - the reference's own code, by design
                for alpha in (1, 24):
                    namespace["_crf_with_alpha"](namespace["cam_dict"], alpha)
        finally:
            torch.cuda.device, imutils.crf_inference = original_device, original_crf

    # The per-input maps, recomputed one input at a time (the script's thread pool ran the same
    # deterministic forward passes): the PCM output at the network's resolution, recorded by
    # wrapping Net.PCM, and the model's upsampled cam_rv.
    arrays = {
        "image": namespace["orig_img"],
        "label": label,
        "norm_cam": np.transpose(namespace["norm_cam"], (1, 2, 0)),
        "cam_classes": np.asarray(sorted(namespace["cam_dict"]), np.int64),
    }
    pcm = net.PCM
    for i, x in enumerate(img_list):
        recorded = []
        net.PCM = lambda cam, f, recorded=recorded: recorded.append(pcm(cam, f)) or recorded[-1]
        with torch.no_grad():
            _, cam_rv, _ = net(x)
        net.PCM = pcm
        arrays[f"inputs/{i}"] = np.transpose(x[0].numpy(), (1, 2, 0))
        arrays[f"pcm/{i}"] = np.transpose(recorded[0][0].numpy(), (1, 2, 0))
        arrays[f"cam_rv/{i}"] = np.transpose(cam_rv[0].numpy(), (1, 2, 0))
    for index, alpha in enumerate((1, 24)):
        arrays[f"crf_input_{alpha}"] = np.transpose(crf_inputs[index], (1, 2, 0))
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    np.savez_compressed(out, **arrays)
    print(f"wrote {out}: {sorted(arrays)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reference", required=True, help="checkout of the official HFPL code")
    parser.add_argument("--out", default="tests/testdata/golden_infer_cam.npz")
    args = parser.parse_args(argv)
    make(args.reference, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
