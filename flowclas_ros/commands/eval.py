"""``flowclas eval``: pixel (and optionally component) metrics of a bundle on a test set."""

from __future__ import annotations

import argparse
from pathlib import Path

from flowclas_ros.commands.common import add_inference_arguments, number_type, output_folder
from flowclas_ros.errors import UserError
from flowclas_ros.limits import METRIC_BINS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The command's flags."""
    from flowclas_ros.metrics import TRACKS
    from flowclas_ros.training.evaluate import EXACT_MAX_PIXELS

    add_inference_arguments(parser)
    parser.add_argument("--dataset", required=True, help="dataset layout (folder, allo, fishyscapes_laf, ...)")
    parser.add_argument("--root", required=True, help="dataset root folder")
    parser.add_argument("--split", default=None,
                        help="split to evaluate (default: test; val for cityscapes, which has no labelled test split)")
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument("--image-topic", help="with --dataset rosbag: the camera topic (default /camera/image_raw)")
    parser.add_argument("--gt-topic", help="with --dataset rosbag: the mask topic (default /camera/anomaly_gt)")
    parser.add_argument("--bins", type=number_type(int, METRIC_BINS), default=2000,
                        help="thresholds of the binned metrics and curves")
    parser.add_argument("--max-images", type=int, default=None, help="evaluate only the first N images")
    parser.add_argument("--num-overlays", type=int, default=4, help="heatmap overlays to write")
    parser.add_argument("--component", default="none", choices=("none", *TRACKS),
                        help="SegmentMeIfYouCan component metrics for this track")
    parser.add_argument("--exact-max-pixels", type=int, default=EXACT_MAX_PIXELS,
                        help="exact metrics up to this many non-void pixels, binned beyond (0: always binned)")


def run(args: argparse.Namespace) -> int:
    """Evaluate and write metrics.json, curves and overlays."""
    from flowclas_ros.metrics import write_metrics_json
    from flowclas_ros.runtime import Detector
    from flowclas_ros.training.datasets import build_dataset
    from flowclas_ros.training.evaluate import evaluate

    for flag, value, lowest in (("--max-images", args.max_images, 1),
                                ("--num-overlays", args.num_overlays, 0),
                                ("--exact-max-pixels", args.exact_max_pixels, 0)):
        if value is not None and value < lowest:
            raise UserError(f"{flag} must be at least {lowest}, got {value}")
    options = {} if args.max_images is None else {"max_images": args.max_images}
    if args.dataset == "rosbag":
        topics = {"image_topic": args.image_topic, "mask_topic": args.gt_topic}
        options.update({k: v for k, v in topics.items() if v})
    split = args.split or ("val" if args.dataset == "cityscapes" else "test")
    dataset = build_dataset(args.dataset, args.root, split, **options)
    out = output_folder(Path(args.output), marker=".flowclas-eval")
    detector = Detector.from_bundle(args.model, device=args.device, precision=args.precision, backend=args.backend)
    component = None if args.component == "none" else args.component
    metrics = evaluate(detector, dataset, bins=args.bins, exact_max_pixels=args.exact_max_pixels,
                       component=component, output=out, num_overlays=args.num_overlays)
    write_metrics_json(out / "metrics.json", metrics, model=str(args.model), dataset=args.dataset,
                       root=str(args.root), split=split, threshold=detector.threshold)
    skipped = f" ({metrics['num_skipped']} unusable skipped)" if metrics["num_skipped"] else ""
    print(f"flowclas eval: {metrics['num_images']} image(s){skipped}, {metrics['method']} metrics: "
          f"AP (step) {100 * metrics['ap']:.1f}%, AUPRC (trapezoid) {100 * metrics['auprc_trapz']:.1f}%, "
          f"FPR95 {100 * metrics['fpr95']:.1f}% -> {out}")
    return 0
