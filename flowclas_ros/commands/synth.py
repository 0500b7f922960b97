"""``flowclas synth``: a folder-layout dataset, its outlier folder, a preview, optionally a bag."""

from __future__ import annotations

import argparse
from pathlib import Path

from flowclas_ros.commands.common import options


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The command's flags."""
    from flowclas_ros.bagio import STORAGES
    from flowclas_ros.synthetic.scenes import DOMAINS

    parser.add_argument("--output", required=True, help="dataset folder (train/, test/, outliers/, preview.png)")
    parser.add_argument("--domain", default="orbital", choices=DOMAINS, help="scene domain (default: orbital)")
    parser.add_argument("--train", type=int, default=200, help="inlier training images (default: 200)")
    parser.add_argument("--test", type=int, default=50, help="test images with anomalies and masks (default: 50)")
    parser.add_argument("--outliers", type=int, default=100, help="outlier crops for pasting (default: 100)")
    parser.add_argument("--height", type=int, default=240, help="image height (default: 240)")
    parser.add_argument("--width", type=int, default=320, help="image width (default: 320)")
    parser.add_argument("--seed", type=int, default=0, help="random seed: same seed, same bytes (default: 0)")
    parser.add_argument("--bag", default=None, help="also write a camera rosbag2 of a moving sequence here")
    parser.add_argument("--bag-frames", type=int, default=100, help="frames in the bag (default: 100)")
    parser.add_argument("--bag-rate", type=float, default=10.0, help="bag frame rate in Hz (default: 10)")
    parser.add_argument("--bag-storage", default=None, choices=sorted(STORAGES),
                        help="rosbag2 storage (default: mcap when --bag ends in .mcap, else sqlite3)")


def run(args: argparse.Namespace) -> int:
    """Write the dataset and report what went where."""
    from flowclas_ros.synthetic.generate import SynthOptions, bag_storage, synthesize

    opts = options(SynthOptions, args)
    info = synthesize(opts)
    root = Path(opts.output)
    print(f"flowclas synth: {opts.domain}, {opts.height}x{opts.width}, seed {opts.seed} -> {root}")
    for folder, n in info["counts"].items():
        print(f"  {n:6d} files in {root / folder}")
    if "preview" in info["paths"]:
        print(f"  preview: {info['paths']['preview']}")
    if "bag" in info["paths"]:
        print(f"  camera bag ({opts.bag_frames} frames, /camera/image_raw + /camera/anomaly_gt, "
              f"{bag_storage(opts)}): {info['paths']['bag']}")
    return 0
