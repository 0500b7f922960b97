"""The ``flowclas synth`` command: a folder-layout dataset, its outlier folder, a preview, optionally a bag."""

from __future__ import annotations

import argparse
from pathlib import Path

from flowclas_ros.synthetic.objects import SPLITS, sources
from flowclas_ros.synthetic.samples import ANOMALY, INLIER, OBJECT, VOID, preview, sequence, write_dataset
from flowclas_ros.synthetic.scenes import DOMAINS


def add_arguments(parser: argparse.ArgumentParser) -> None:
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
    parser.add_argument("--bag-storage", default="sqlite3", choices=["sqlite3", "mcap"], help="rosbag2 storage")


def _validate(args: argparse.Namespace) -> None:
    from flowclas_ros.errors import UserError

    for name in ("train", "test", "outliers"):
        if getattr(args, name) < 0:
            raise UserError(f"--{name} must be zero or more, got {getattr(args, name)}")
    for name in ("height", "width"):
        if not 32 <= getattr(args, name) <= 4096:
            raise UserError(f"--{name} must be between 32 and 4096, got {getattr(args, name)}")
    if args.seed < 0:
        raise UserError(f"--seed must be zero or more, got {args.seed}")
    if args.bag is not None:
        if args.bag_frames < 1:
            raise UserError(f"--bag-frames must be at least 1, got {args.bag_frames}")
        if not args.bag_rate > 0:
            raise UserError(f"--bag-rate must be positive, got {args.bag_rate}")
        if Path(args.bag).exists():
            raise UserError(f"--bag {args.bag} already exists; rosbag2 writes a new folder")
    if Path(args.output).exists() and not Path(args.output).is_dir():
        raise UserError(f"--output {args.output} is a file, not a folder")


def run(args: argparse.Namespace) -> int:
    """``flowclas synth``: the folder-layout dataset, its outlier folder, a preview, optionally a bag."""
    import json

    _validate(args)
    size = (args.height, args.width)
    root = Path(args.output)
    counts = write_dataset(root, args.domain, args.train, args.test, args.outliers, size, args.seed)
    info = {
        "domain": args.domain,
        "seed": args.seed,
        "size": list(size),
        "counts": counts,
        "labels": {
            "test": {"inlier": INLIER, "anomaly": ANOMALY, "void": VOID},
            "outliers": {"object": OBJECT, "background": 0},
        },
        "void": "anti-aliased object edge pixels (coverage strictly between 0 and 1)",
        "sources": {split: [s.name for s in sources(args.domain, split)] for split in SPLITS},
        "sources_note": "scikit-image bundled pictures; train sources fill outliers/, "
        "test sources are held out for test/ and the bag",
    }
    (root / "synth.json").write_text(json.dumps(info, indent=2) + "\n")
    print(f"flowclas synth: {args.domain}, {args.height}x{args.width}, seed {args.seed} -> {root}")
    for folder, n in counts.items():
        print(f"  {n:6d} files in {root / folder}")
    if args.train or args.test or args.outliers:
        print(f"  preview: {preview(root, root / 'preview.png')}")
    if args.bag is not None:
        from tqdm import tqdm

        from flowclas_ros.bagio import write_camera_bag

        frames = tqdm(
            sequence(args.domain, args.bag_frames, size, args.seed),
            total=args.bag_frames,
            desc="synth bag",
            unit="frame",
        )
        bag = write_camera_bag(args.bag, frames, rate_hz=args.bag_rate, storage=args.bag_storage)
        print(
            f"  camera bag ({args.bag_frames} frames, /camera/image_raw + /camera/anomaly_gt, "
            f"{args.bag_storage}): {bag}"
        )
    return 0
