"""Score maps, masks and overlays written for image files (``flowclas detect``)."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from flowclas_ros.errors import UserError
from flowclas_ros.images import read_rgb, write_png
from flowclas_ros.runtime.detector import Detector
from flowclas_ros.runtime.visualize import heatmap, overlay
from flowclas_ros.vocabulary import MASK_ON

log = logging.getLogger(__name__)


def annotate_images(detector: Detector, images: Sequence[Path], out: Path, progress: bool = True) -> dict:
    """For each image: ``<stem>_score.npy``, ``_score.png``, ``_mask.png``, ``_overlay.png`` in
    ``out``, and ``detections.json`` for all. Unreadable images are skipped and listed.
    Returns the report written to ``detections.json``."""
    from tqdm import tqdm

    out.mkdir(parents=True, exist_ok=True)
    summary, failed = {}, []
    for path in tqdm(images, desc="detect", unit="img", disable=not progress or len(images) < 2):
        try:
            frame = read_rgb(path)
        except UserError as exc:
            log.warning("skipped: %s", exc)
            failed.append(str(path))
            continue
        det = detector.detect(frame)
        stem = path.stem
        np.save(out / f"{stem}_score.npy", det.score)
        write_png(out / f"{stem}_score.png", heatmap(det.score))
        write_png(out / f"{stem}_mask.png", det.mask.astype(np.uint8) * np.uint8(MASK_ON))
        write_png(out / f"{stem}_overlay.png", overlay(frame, det.score, det.mask))
        summary[path.name] = {
            "height": int(frame.shape[0]),
            "width": int(frame.shape[1]),
            "max_score": float(det.score.max()),
            "anomalous_fraction": float(det.mask.mean()),
            "hazards": [dict(vars(h)) for h in det.hazards],
        }
    report = {"threshold": detector.threshold, "images": summary, "skipped": failed}
    (out / "detections.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
