"""``flowclas replay``: a rosbag2 through the node's frame pipeline, into an annotated bag and metrics."""

from __future__ import annotations

import argparse

from flowclas_ros.commands.common import add_inference_arguments, number_type, options
from flowclas_ros.limits import METRIC_BINS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The command's flags."""
    from flowclas_ros.bagio import STORAGES
    from flowclas_ros.runtime.smoothing import CHOICES
    from flowclas_ros.vocabulary import MAX_FRAME_PIXELS

    add_inference_arguments(parser)
    parser.add_argument("--bag", required=True, help="input rosbag2 (directory, .mcap or .db3)")
    parser.add_argument("--image-topic", required=True, help="camera topic (sensor_msgs/Image or CompressedImage)")
    parser.add_argument("--output", required=True, help="output folder (annotated bag, metrics.json, replay.json)")
    parser.add_argument("--gt-topic", default=None, help="ground-truth mask topic in the bag (mono8 labels)")
    parser.add_argument("--gt-folder", default=None, help="folder of ground-truth PNGs: <stamp ns>.png or <index:06d>.png")
    parser.add_argument("--storage", default="mcap", choices=sorted(STORAGES), help="output bag storage")
    parser.add_argument("--threshold", type=float, default=None, help="mask threshold in [0, 1] (default: the bundle's)")
    parser.add_argument("--min-area", type=int, default=0, help="smallest hazard region in pixels")
    parser.add_argument(
        "--smoothing", default="none", choices=CHOICES, help="score smoothing"
    )
    parser.add_argument("--overlay", action=argparse.BooleanOptionalAction, default=True, help="write anomaly_overlay")
    parser.add_argument("--realtime", action="store_true", help="drop frames as the live node would at the bag's rate")
    parser.add_argument("--max-frames", type=int, default=None, help="stop after this many image frames")
    parser.add_argument("--bins", type=number_type(int, METRIC_BINS), default=2000, help="score bins of the streaming metrics")
    parser.add_argument("--components", action="store_true", help="also compute component metrics (SMIYC anomaly track)")
    parser.add_argument("--max-input-pixels", type=int, default=None,
                        help=f"largest frame accepted, width x height, checked before decoding (default {MAX_FRAME_PIXELS})")


def run(args: argparse.Namespace) -> int:
    """Replay and report; UserError (exit 1) when no frame could be processed."""
    from flowclas_ros.errors import UserError
    from flowclas_ros.replay import ReplayOptions, replay

    result = replay(options(ReplayOptions, args))
    r = result.report
    reasons = ", ".join(f"{n} {reason}" for reason, n in sorted(r["rejected_by_reason"].items()))
    print(
        f"flowclas replay: {r['frames']} frames ({r['processed']} processed, {r['dropped']} dropped, "
        f"{r['rejected']} rejected{': ' + reasons if reasons else ''}) in {r['seconds']:.1f} s, "
        f"{r['throughput_fps']:.1f} frames/s -> {result.output_bag}" + (f", {result.metrics}" if result.metrics else "")
    )
    if not r["processed"]:
        why = f"rejected: {reasons}" if reasons else r["damaged"] or "the topic has no messages"
        raise UserError(f"no frame of {args.image_topic} could be processed ({why})")
    return 0
