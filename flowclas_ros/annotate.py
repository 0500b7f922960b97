"""Score maps, masks and overlays written for image files (``flowclas detect``)."""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from flowclas_ros.errors import UserError
from flowclas_ros.files import atomic_write, write_text
from flowclas_ros.images import read_rgb, write_png
from flowclas_ros.runtime.detector import Detector
from flowclas_ros.runtime.visualize import heatmap, overlay
from flowclas_ros.vocabulary import MASK_ON

log = logging.getLogger(__name__)


def _prefixes(images: Sequence[Path]) -> dict[Path, str]:
    """Each image's output prefix: its stem, or its whole file name where two images share a stem
    (``ok.png`` and ``ok.jpg`` must not overwrite each other's maps)."""
    stems = Counter(path.stem for path in images)
    return {path: path.stem if stems[path.stem] == 1 else path.name for path in images}


def _save_npy(path: Path, array: np.ndarray) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.save would append .npy to the temporary name
            np.save(f, array)

    atomic_write(path, write)


def annotate_images(detector: Detector, images: Sequence[Path], out: Path, progress: bool = True) -> dict:
    """For each image: ``<prefix>_score.npy``, ``_score.png``, ``_mask.png``, ``_overlay.png`` in
    ``out`` (prefix: the stem, or the file name when two images share a stem), and
    ``detections.json`` for all. Unreadable images are skipped and listed.
    Returns the report written to ``detections.json``."""
    from tqdm import tqdm

    out.mkdir(parents=True, exist_ok=True)
    prefixes = _prefixes(images)
    summary, failed = {}, []
    for path in tqdm(images, desc="detect", unit="img", disable=not progress or len(images) < 2):
        try:
            frame = read_rgb(path)
        except UserError as exc:
            log.warning("skipped: %s", exc)
            failed.append(str(path))
            continue
        det = detector.detect(frame)
        stem = prefixes[path]
        _save_npy(out / f"{stem}_score.npy", det.score)
        write_png(out / f"{stem}_score.png", heatmap(det.score))
        write_png(out / f"{stem}_mask.png", det.mask.astype(np.uint8) * np.uint8(MASK_ON))
        write_png(out / f"{stem}_overlay.png", overlay(frame, det.score, det.mask))
        summary[path.name] = {
            "outputs": stem,
            "height": int(frame.shape[0]),
            "width": int(frame.shape[1]),
            "max_score": float(det.score.max()),
            "anomalous_fraction": float(det.mask.mean()),
            "hazards": [dict(vars(h)) for h in det.hazards],
        }
    report = {"threshold": detector.threshold, "images": summary, "skipped": failed}
    write_text(out / "detections.json", json.dumps(report, indent=2) + "\n")
    return report
