"""``hfpl-jax evaluate``: mIoU (background-threshold sweep) and contour F of saved predictions.

Ground truth from a folder of PNG masks and a list file (the reference's layout)::

    hfpl-jax evaluate --pred-dir exp/plabels/val/cam --gt-dir VOC2012/SegmentationClass \\
        --list VOC2012/ImageSets/Segmentation/val.txt --num-classes 20 --out eval/val_cam

or from a built dataset split::

    hfpl-jax evaluate --pred-dir workdir/cams/val --dataset voc2012_wsss --data-dir data \\
        --split val --out eval/val_cam

Predictions are ``<name>.npz`` (hfpl-jax CAMs), ``<name>.npy`` (the reference's ``out_cam``
dicts) or ``<name>.png`` (label maps). See ``docs/evaluation.md``.
"""

from __future__ import annotations

import argparse
import ast
import sys

from hfpl_jax.evaluation import files, miou, report, scoring


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hfpl-jax evaluate",
        description="Score CAMs or label maps: mIoU over the background-threshold sweep "
        "t = 0.00..0.59, IoU per class, mIoU at a threshold fixed without ground truth, and the "
        "contour F-score, as the reference's eval_cam_voc.py --curve and contour_fscore.py.",
    )
    parser.add_argument("--pred-dir", required=True, help="folder of <name>.npz/.npy/.png")
    parser.add_argument("--out", required=True, help="output folder for metrics.json etc.")
    parser.add_argument(
        "--pred-format",
        default="auto",
        choices=["auto", *files.PREDICTION_FORMATS],
        help="npz: hfpl-jax CAMs; npy: the reference's out_cam dicts; png: label maps "
        "(auto: whichever exists for the first name)",
    )
    ground_truth = parser.add_argument_group("ground truth (a folder, or a built dataset split)")
    ground_truth.add_argument("--gt-dir", help="folder of <name>.png masks (255 = void)")
    ground_truth.add_argument(
        "--list",
        help="image names, bare or '/JPEGImages/x.jpg /SegmentationClass/x.png' lines "
        "(required with --gt-dir; with --dataset, a subset of the split)",
    )
    ground_truth.add_argument("--image-dir", help="images for the overlays (with --gt-dir)")
    ground_truth.add_argument("--dataset", help="a built dataset: hfpl_shapes, voc2012_wsss, ...")
    ground_truth.add_argument("--data-dir", help="the datasets' root (with --dataset)")
    ground_truth.add_argument("--split", default="val", help="dataset split (default val)")
    parser.add_argument(
        "--num-classes",
        type=int,
        help="K, foreground classes (20 for VOC, 80 for COCO); labels are 0..K "
        "(default with --dataset: the dataset's)",
    )
    parser.add_argument(
        "--class-names",
        help="name the classes after a dataset (voc2012_wsss, coco2014_wsss, hfpl_shapes)",
    )
    parser.add_argument(
        "--fixed-threshold",
        type=float,
        default=report.DEFAULT_FIXED_THRESHOLD,
        help="the background threshold chosen without ground truth (default 0.25, the "
        "reference's constant for SEAM CAMs); one of the sweep's values",
    )
    parser.add_argument(
        "--contour-background",
        default="0.25",
        help="CAM -> label map for contour F: a constant background score (0.25, as "
        "contour_fscore.py --is_seam) or 'one-minus-sum' (its --no-is_seam)",
    )
    parser.add_argument(
        "--iou-epsilon",
        type=float,
        default=miou.VOC_IOU_EPSILON,
        help="IoU = TP / (T + P - TP + eps), counts in pixels: 1e-10 as eval_cam_voc.py "
        "(default); 1e-5 reproduces eval_cam_coco.py, which counts in units of 1e5 pixels",
    )
    parser.add_argument(
        "--dataset-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="builder option of --dataset (e.g. image_size=64 for a small hfpl_shapes)",
    )
    parser.add_argument("--overlays", type=int, default=4, help="overlay pictures (first N names)")
    parser.add_argument("--workers", type=int, default=None, help="threads (default: CPUs, <= 8)")
    return parser


def _contour_background(value: str) -> float | str:
    if value == "one-minus-sum":
        return value
    try:
        return float(value)
    except ValueError:
        raise ValueError(
            f"--contour-background must be a number or 'one-minus-sum', got {value!r}"
        ) from None


def _dataset_options(items: list[str]) -> dict:
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--dataset-option must be KEY=VALUE, got {item!r}")
        try:
            options[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            options[key] = value
    return options


def run(args: argparse.Namespace) -> dict:
    """Evaluates as the parsed flags say and writes the report; returns the metrics."""
    from hfpl_jax import data

    contour_background = _contour_background(args.contour_background)
    report.check_fixed_threshold(miou.THRESHOLDS, args.fixed_threshold)  # before the long pass
    class_names = None
    if args.class_names:
        class_names = data.class_names(args.class_names)
    if args.dataset:
        if args.gt_dir or args.image_dir:
            raise ValueError("give either --dataset or --gt-dir, not both")
        if not args.data_dir:
            raise ValueError("--dataset needs --data-dir")
        options = _dataset_options(args.dataset_option)
        ground_truth = files.DatasetGroundTruth(args.dataset, args.data_dir, args.split, **options)
        num_classes = data.num_classes(args.dataset, args.data_dir, **options)
        if args.num_classes is not None and args.num_classes != num_classes:
            raise ValueError(
                f"--num-classes {args.num_classes} does not match {ground_truth.description}, "
                f"which has {num_classes} classes"
            )
        if class_names is None and len(data.class_names(args.dataset)) == num_classes:
            class_names = data.class_names(args.dataset)
        names = ground_truth.names
        if args.list:
            names = files.read_name_list(args.list)
            missing = [n for n in names if n not in set(ground_truth.names)]
            if missing:
                raise FileNotFoundError(
                    f"--list {args.list!r}: {len(missing)} names are not in "
                    f"{ground_truth.description}, e.g. {missing[:5]}"
                )
        source = ground_truth.description
    else:
        if not args.gt_dir or not args.list:
            raise ValueError("give --gt-dir with --list, or --dataset with --data-dir")
        if args.num_classes is None:
            raise ValueError("--num-classes is required with --gt-dir")
        ground_truth = files.FolderGroundTruth(args.gt_dir, args.image_dir)
        names = files.read_name_list(args.list)
        num_classes = args.num_classes
        source = args.gt_dir
    predictions = files.PredictionFolder(args.pred_dir, args.pred_format)
    result = scoring.evaluate(
        predictions,
        ground_truth,
        names,
        num_classes,
        contour_background=contour_background,
        overlay_names=names[: max(0, args.overlays)],
        workers=args.workers,
        progress=sys.stderr.isatty(),
    )
    extra = {"pred_dir": args.pred_dir, "ground_truth": source}
    return report.write_report(
        args.out,
        result,
        fixed_threshold=args.fixed_threshold,
        class_names=class_names,
        iou_epsilon=args.iou_epsilon,
        extra=extra,
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``hfpl-jax evaluate``; prints the headline numbers."""
    args = _parser().parse_args(argv)
    try:
        metrics = run(args)
    except (FileNotFoundError, ValueError) as error:
        print(f"hfpl-jax evaluate: error: {error}", file=sys.stderr)
        return 2
    if metrics["best_threshold"] is None:
        print(f"mIoU {100 * metrics['miou']:.3f}%")
    else:
        print(
            f"mIoU {100 * metrics['miou']:.3f}% at the best threshold "
            f"{metrics['best_threshold']:.2f}; {100 * metrics['miou_at_fixed_threshold']:.3f}% "
            f"at the fixed threshold {metrics['fixed_threshold']:.2f}"
        )
    print(f"contour F {100 * metrics['contour_f']:.3f}% ({metrics['num_images']} images)")
    print(f"wrote {args.out}/metrics.json, summary.md")
    return 0
