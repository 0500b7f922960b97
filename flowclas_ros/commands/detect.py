"""``flowclas detect``: score maps, masks and overlays for an image or a folder of images."""

from __future__ import annotations

import argparse
from pathlib import Path

from flowclas_ros.commands.common import add_inference_arguments, output_folder


def area_value(text: str) -> int:
    """``--min-area`` values: a whole number of pixels, 0 or more."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a whole number of pixels >= 0, got {text!r}")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The command's flags."""
    add_inference_arguments(p)
    p.add_argument("--input", required=True, help="an image file or a folder of images")
    p.add_argument("--output", required=True, help="output folder")
    p.add_argument("--threshold", type=float, default=None, help="mask threshold (default: the bundle's)")
    p.add_argument("--min-area", type=area_value, default=0, help="smallest hazard region in pixels")


def run(args: argparse.Namespace) -> int:
    """Detect on every image of a folder (unreadable ones are skipped, counted and logged; exit 1
    when none could be read); a single unreadable image file is an error."""
    from flowclas_ros.annotate import annotate_images
    from flowclas_ros.images import list_images, read_rgb
    from flowclas_ros.runtime import Detector

    detector = Detector.from_bundle(
        args.model, device=args.device, precision=args.precision, backend=args.backend,
        threshold=args.threshold, min_area=args.min_area,
    )
    images = list_images(Path(args.input))
    if Path(args.input).is_file():
        read_rgb(images[0])  # one unusable file: refused in one line, before any output
    out = output_folder(Path(args.output), marker=".flowclas-detect")
    report = annotate_images(detector, images, out)
    done, skipped = len(report["images"]), len(report["skipped"])
    print(f"flowclas detect: {done} image(s) -> {out}" + (f" ({skipped} skipped)" if skipped else ""))
    return 0 if done else 1
