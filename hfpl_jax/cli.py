"""The ``hfpl-jax`` console script: one subcommand per pipeline stage.

Each subcommand is a thin ``main(argv)`` living next to the library code it drives; this module only
dispatches, importing the subcommand's module lazily so ``hfpl-jax --help`` stays fast and a stage's
heavy dependencies (TensorFlow for dataset building, torch for conversion) load only when used.
"""

from __future__ import annotations

import importlib
import sys

# name -> ("module:function", one-line help). The function takes the remaining argv (list of str)
# and returns an exit code (or None for 0).
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "build-dataset": (
        "hfpl_jax.data.cli:main",
        "Build a TFDS dataset (hfpl_shapes, voc2012_wsss, coco2014_wsss).",
    ),
    "convert-weights": (
        "hfpl_jax.weights:convert_weights_main",
        "Convert MXNet/PyTorch reference weights to Flax params (and back).",
    ),
    "compare-torch": (
        "hfpl_jax.parity:main",
        "Run the official PyTorch code and hfpl-jax on identical weights and inputs; print errors.",
    ),
    "train-cam": (
        "hfpl_jax.train.cam:main",
        "Train the CAM network (SEAM + HFPL ISL/FSL) from a config file.",
    ),
    "infer-cam": (
        "hfpl_jax.inference.cam_run:main",
        "Multi-scale CAMs and CRF marginals of a train-cam workdir over a dataset split.",
    ),
    "evaluate": (
        "hfpl_jax.evaluation.cli:main",
        "Score CAMs or label maps (also the reference's): mIoU per threshold, contour F.",
    ),
}


def _usage() -> str:
    width = max(len(name) for name in SUBCOMMANDS)
    lines = ["usage: hfpl-jax SUBCOMMAND [options]", "", "subcommands:"]
    for name, (_, help_text) in SUBCOMMANDS.items():
        lines.append(f"  {name.ljust(width)}  {help_text}")
    lines.append("")
    lines.append("Run 'hfpl-jax SUBCOMMAND --help' for the options of one subcommand.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``hfpl-jax SUBCOMMAND ...`` to the subcommand's ``main(argv)``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"hfpl-jax: unknown subcommand {name!r}.\n\n{_usage()}", file=sys.stderr)
        return 2
    target, _ = SUBCOMMANDS[name]
    module_name, function_name = target.split(":")
    function = getattr(importlib.import_module(module_name), function_name)
    result = function(rest)
    return 0 if result is None else int(result)


if __name__ == "__main__":
    sys.exit(main())
