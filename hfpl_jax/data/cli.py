"""``hfpl-jax build-dataset NAME --data-dir D [--manual-dir M] [--skip-bad-examples]``.

Builds one of the TFDS datasets (array_record files) that every training stage reads:

- ``hfpl_shapes``: generated here, no download (size flags below; the defaults build in well under
  a minute on two cores).
- ``voc2012_wsss``: from ``--manual-dir`` holding ``VOCdevkit/VOC2012`` (see hfpl_jax/data/voc.py).
- ``coco2014_wsss``: from ``--manual-dir`` holding ``annotations/instances_{train,val}2014.json``
  and the ``train2014``/``val2014`` images (see hfpl_jax/data/coco.py).

A bad source file (undecodable or truncated image, a mask of another size, label values outside the
class range, an image without labels, a file named by a list but missing) stops the build with the
file and the problem; with ``--skip-bad-examples`` such examples are left out, counted and listed,
and the list is written to ``build_report.json`` next to the dataset.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from hfpl_jax import atomic_io
from hfpl_jax.data import sources
from hfpl_jax.data.validation import BadExampleError

__all__ = [
    "main",
]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hfpl-jax build-dataset",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
    )
    parser.add_argument("name", choices=sources.DATASET_NAMES, help="dataset to build")
    parser.add_argument("--data-dir", required=True, help="TFDS data directory to build into")
    parser.add_argument("--manual-dir", help="folder with the raw VOC/COCO files")
    parser.add_argument(
        "--skip-bad-examples",
        action="store_true",
        help="leave bad source files out (and report them) instead of stopping",
    )
    parser.add_argument(
        "--allow-unlabeled",
        action="store_true",
        help="coco2014_wsss: keep images without any annotation (all-zero labels), as the "
        "reference's lists do; otherwise they count as bad examples",
    )
    shapes = parser.add_argument_group("hfpl_shapes size (defaults: the standard build)")
    shapes.add_argument("--image-size", type=int, help="long side in pixels (160)")
    shapes.add_argument("--num-train", type=int, help="train examples (3000)")
    shapes.add_argument("--num-val", type=int, help="val examples (500)")
    shapes.add_argument("--seed", type=int, help="generator seed (0)")
    shapes.add_argument("--void-band", type=int, help="width of the 255 boundary band (0)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``hfpl-jax build-dataset``; returns the exit code."""
    args = _parser().parse_args(argv)
    builder_kwargs = {
        key: value
        for key, value in (
            ("image_size", args.image_size),
            ("num_train", args.num_train),
            ("num_val", args.num_val),
            ("seed", args.seed),
            ("void_band", args.void_band),
        )
        if value is not None
    }
    if builder_kwargs and args.name != "hfpl_shapes":
        print(
            "hfpl-jax build-dataset: error: size flags apply to hfpl_shapes only", file=sys.stderr
        )
        return 2
    if args.name != "hfpl_shapes" and not args.manual_dir:
        print(
            f"hfpl-jax build-dataset: error: {args.name} is built from the raw files: pass "
            "--manual-dir (see --help for the folder layout)",
            file=sys.stderr,
        )
        return 2
    directory = sources.dataset_dir(args.name, args.data_dir, **builder_kwargs)
    if sources.is_built(args.name, args.data_dir, **builder_kwargs):
        print(f"{args.name} is already built at {directory}; nothing to do.")
        return 0

    start = time.perf_counter()
    try:
        builder = sources.build(
            args.name,
            args.data_dir,
            manual_dir=args.manual_dir,
            skip_bad_examples=args.skip_bad_examples,
            allow_unlabeled=args.allow_unlabeled,
            **builder_kwargs,
        )
    except (BadExampleError, FileNotFoundError, ValueError) as error:
        print(f"hfpl-jax build-dataset: error: {error}", file=sys.stderr)
        return 1
    seconds = time.perf_counter() - start

    splits = {name: info.num_examples for name, info in builder.info.splits.items()}
    report = {
        "dataset": args.name,
        "directory": directory,
        "splits": splits,
        "seconds": round(seconds, 1),
        "skipped": list(builder.bad_examples.rows),
        "label_source": builder.info.metadata.get("label_source"),
    }
    atomic_io.write_json(os.path.join(directory, "build_report.json"), report)
    print(f"Built {args.name} in {seconds:.1f} s at {directory}")
    for name, count in splits.items():
        print(f"  {name}: {count} examples")
    if report["label_source"]:
        print(f"  labels from: {report['label_source']}")
    print(builder.bad_examples.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
