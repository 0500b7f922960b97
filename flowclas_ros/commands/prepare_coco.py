"""``flowclas prepare-coco``: COCO train2017 as outlier sources (Meta-OoD filtering)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The command's flags."""
    from flowclas_ros.training.coco import FILTERS, MIN_SIDE

    parser.add_argument("--coco-root", required=True, help="COCO folder with train2017/ and annotations/instances_train2017.json")
    parser.add_argument("--output", required=True, help="folder to write train2017/ and ood_seg_train2017/ into")
    parser.add_argument("--filter", required=True, choices=sorted(FILTERS), help="inlier domain whose classes are dropped")
    parser.add_argument("--annotations", default=None,
                        help="instances JSON (default: COCO_ROOT/annotations/instances_train2017.json)")
    parser.add_argument("--min-side", type=int, default=MIN_SIDE, help="drop images shorter than this on a side (pixels)")
    parser.add_argument("--copy", action="store_true", help="copy the kept images instead of symlinking them")


def run(args: argparse.Namespace) -> int:
    """Prepare the masks and report what was kept."""
    from flowclas_ros.training.coco import BAD_ANNOTATION, prepare_coco

    output = Path(args.output)
    kept, dropped = prepare_coco(
        Path(args.coco_root), output, args.filter, Path(args.annotations) if args.annotations else None, args.min_side, args.copy
    )
    bad_annotations = dropped.pop(BAD_ANNOTATION, 0)
    total = kept + sum(dropped.values())
    reasons = ", ".join(f"{n} {why}" for why, n in sorted(dropped.items())) or "none"
    print(f"flowclas prepare-coco: kept {kept} of {total} images (filter {args.filter}); dropped: {reasons}")
    if bad_annotations:
        print(f"flowclas prepare-coco: {bad_annotations} {BAD_ANNOTATION}")
    images = "images copied" if args.copy else "image links"
    print(f"flowclas prepare-coco: {images} -> {output / 'train2017'}, masks -> {output / 'ood_seg_train2017'}")
    return 0 if kept else 1
