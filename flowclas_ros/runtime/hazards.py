"""Connected anomalous regions ("hazards") of a binary mask."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class Hazard:
    """One 8-connected anomalous region: box as (x_min, y_min, width, height) in pixels."""

    x: int
    y: int
    width: int
    height: int
    area: int
    peak_score: float
    mean_score: float

    @property
    def center(self) -> tuple[float, float]:
        """Box centre (x, y) in pixels."""
        return self.x + self.width / 2.0, self.y + self.height / 2.0


def find_hazards(mask: np.ndarray, score: np.ndarray, min_area: int = 0) -> list[Hazard]:
    """Regions of ``mask`` with at least ``min_area`` pixels, highest peak score first."""
    if mask.shape != score.shape:
        raise ValueError(f"mask shape {mask.shape} differs from score shape {score.shape}")
    labels, count = ndimage.label(mask, structure=_EIGHT_CONNECTED)
    if count == 0:
        return []
    # bincount / maximum.at over the labelled pixels only: ndimage.maximum and ndimage.mean
    # sort the whole image (benchmarks/README.md)
    flat = labels.ravel()
    inside = flat.nonzero()[0]
    ids, values = flat[inside], score.ravel()[inside].astype(np.float64)
    areas = np.bincount(ids, minlength=count + 1)[1:]
    means = np.bincount(ids, weights=values, minlength=count + 1)[1:] / np.maximum(areas, 1)
    peaks = np.full(count + 1, -np.inf)
    np.maximum.at(peaks, ids, values)
    peaks = peaks[1:]
    hazards = []
    for i, box in enumerate(ndimage.find_objects(labels)):
        if box is None or areas[i] < min_area:
            continue
        ys, xs = box
        hazards.append(
            Hazard(
                x=int(xs.start),
                y=int(ys.start),
                width=int(xs.stop - xs.start),
                height=int(ys.stop - ys.start),
                area=int(areas[i]),
                peak_score=float(peaks[i]),
                mean_score=float(means[i]),
            )
        )
    return sorted(hazards, key=lambda h: -h.peak_score)
