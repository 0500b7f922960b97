"""Pictures people look at: colour heatmaps of score maps and overlays on the frame."""

from __future__ import annotations

import numpy as np
from matplotlib import colormaps
from scipy import ndimage

_LUT = (colormaps["inferno"](np.linspace(0.0, 1.0, 256))[:, :3] * 255).astype(np.uint8)


def heatmap(score: np.ndarray) -> np.ndarray:
    """``H x W`` scores in [0, 1] -> ``H x W x 3`` uint8 RGB (inferno colour map)."""
    index = np.clip(np.nan_to_num(score) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return _LUT[index]


def overlay(frame: np.ndarray, score: np.ndarray, mask: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Frame blended with the heatmap inside the mask, mask outline in bright green (RGB)."""
    out = frame.copy()
    weight = int(round(alpha * 256))  # integer blend of the masked pixels only (benchmarks/README.md)
    inside = frame[mask].astype(np.uint16)
    out[mask] = ((256 - weight) * inside + weight * heatmap(score[mask]).astype(np.uint16)) >> 8
    edge = mask & ~ndimage.binary_erosion(mask, iterations=max(1, min(mask.shape) // 240))
    out[edge] = (0, 255, 0)
    return out
