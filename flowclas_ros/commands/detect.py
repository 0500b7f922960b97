"""``flowclas detect``: score maps, masks and overlays for an image or a folder of images."""

from __future__ import annotations

import argparse
from pathlib import Path

from flowclas_ros.commands.common import add_inference_arguments


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The command's flags."""
    add_inference_arguments(p)
    p.add_argument("--input", required=True, help="an image file or a folder of images")
    p.add_argument("--output", required=True, help="output folder")
    p.add_argument("--threshold", type=float, default=None, help="mask threshold (default: the bundle's)")
    p.add_argument("--min-area", type=int, default=0, help="smallest hazard region in pixels")


def run(args: argparse.Namespace) -> int:
    """Detect on every image; exit 1 when none could be read."""
    from flowclas_ros.annotate import annotate_images
    from flowclas_ros.images import list_images
    from flowclas_ros.runtime import Detector

    detector = Detector.from_bundle(
        args.model, device=args.device, precision=args.precision, backend=args.backend,
        threshold=args.threshold, min_area=args.min_area,
    )
    out = Path(args.output)
    report = annotate_images(detector, list_images(Path(args.input)), out)
    done, skipped = len(report["images"]), len(report["skipped"])
    print(f"flowclas detect: {done} image(s) -> {out}" + (f" ({skipped} skipped)" if skipped else ""))
    return 0 if done else 1
