"""``hfpl-jax convert-weights``: convert between the weight formats (``files.FORMATS``)."""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from hfpl_jax.weights.conversion import merge_variables, to_torch
from hfpl_jax.weights.files import load_weights_file, save_weights_file, weights_format
from hfpl_jax.weights.torch_names import flatten_variables, infer_model_size

__all__ = ["convert_weights_main"]


def convert_weights_main(argv: list[str] | None = None) -> int:
    """``hfpl-jax convert-weights --input F --output G --arch A``; the formats follow the suffixes.

    - ``.params`` -> ``.npz``: the MXNet ImageNet ResNet-38 -> Flax backbone variables (191
      tensors); with ``--init-seed S`` the whole model is initialised (seed S, heads random as in
      the reference) and the backbone merged in, giving complete variables.
    - ``.pth``/``.pt`` -> ``.npz``: a PyTorch state dict (reference checkpoint or torchvision
      ResNet-50) -> Flax variables.
    - ``.npz`` -> ``.pth``: Flax variables -> a PyTorch state dict with the reference's names.
    - ``.params`` -> ``.pth``: the reference's ``convert_mxnet_to_torch`` without MXNet.
    """
    from hfpl_jax import models

    parser = argparse.ArgumentParser(
        prog="hfpl-jax convert-weights", description=convert_weights_main.__doc__.split("\n")[0]
    )
    parser.add_argument("--input", required=True, help=".params, .pth/.pt or .npz")
    parser.add_argument("--output", required=True, help=".npz (Flax) or .pth (PyTorch)")
    parser.add_argument("--arch", default="seam", help=", ".join(models.ARCHS))
    parser.add_argument("--num-classes", type=int, default=20, help="with --init-seed")
    parser.add_argument(
        "--init-seed", type=int, default=None, help="initialise the model, merge the input in"
    )
    parser.add_argument(
        "--partial", action="store_true", help=".pth input: accept a subset of the tensors"
    )
    args = parser.parse_args(argv)
    spec = models.get_spec(args.arch)
    src, dst = args.input, args.output
    if not os.path.isfile(src):
        raise FileNotFoundError(f"--input {src!r} does not exist")
    weights_format(src, what="--input")
    weights_format(dst, what="--output", formats=("flax", "torch"))
    strict = not args.partial and not spec.pretrained_torch_is_partial
    variables = load_weights_file(src, args.arch, strict=strict)
    if args.init_seed is not None:
        import jax

        size = infer_model_size(to_torch(variables), args.arch)
        initial = models.init_variables(
            args.arch, args.num_classes, jax.random.key(args.init_seed),
            width=size["width"], blocks=size["blocks"],
        )  # fmt: skip
        initial = jax.tree.map(np.asarray, initial)
        variables, replaced = merge_variables(initial, variables)
        print(f"initialised {args.arch} (seed {args.init_seed}); {replaced} tensors from {src}")
    count = sum(1 for c in variables for _ in flatten_variables(variables[c]))
    save_weights_file(dst, variables, args.arch)
    print(f"wrote {dst}: {count} tensors ({args.arch})")
    return 0


if __name__ == "__main__":
    sys.exit(convert_weights_main())
