"""Outlier pasting (docs/method.md section 3): a mixed-content image and the outlier view.

Labels: 0 inlier, 1 outlier, 255 ignore. Outlier source masks: 254 object, 0 background,
255 ignore (COCO prepared the Meta-OoD way).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from flowclas_ros.training.objectives import IGNORE, INLIER, OUTLIER
from flowclas_ros.vocabulary import Label

SCALES = (0.1, 0.125, 0.25, 0.5, 0.5, 0.75)
OBJECT = int(Label.OBJECT)


@dataclass
class PasteRecipe:
    """Per-dataset pasting settings (ALLO: grayscale, both flips, background ignored)."""

    scales: tuple[float, ...] = SCALES
    grayscale_p: float = 0.0
    hflip_p: float = 0.5
    vflip_p: float = 0.0
    ignore_outlier_background: bool = False

    @classmethod
    def for_dataset(cls, name: str) -> "PasteRecipe":
        """The authors' settings for ``allo``; Cityscapes-style defaults otherwise."""
        if name == "allo":
            return cls(grayscale_p=0.5, hflip_p=0.5, vflip_p=0.5, ignore_outlier_background=True)
        return cls()


@dataclass
class PastedSample:
    """``mix``/``out``: H x W x 3 uint8; ``mix_labels``/``out_labels``: H x W uint8; ``scale`` used;
    ``mix_classes``: the inlier crop's own label values, flipped like ``mix``, with pasted
    pixels set to 255 (semantic labels for the segmentation head)."""

    mix: np.ndarray
    mix_labels: np.ndarray
    out: np.ndarray
    out_labels: np.ndarray
    scale: float
    mix_classes: np.ndarray | None = None


def _resize(array: np.ndarray, scale: float, resample: Image.Resampling) -> np.ndarray:
    h, w = array.shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(array).resize(size, resample))


def fit_to(array: np.ndarray, size: tuple[int, int], fill: int) -> np.ndarray:
    """Centre-crop or pad (with ``fill``) an array's first two axes to ``size``."""
    h, w = size
    out = np.full((h, w, *array.shape[2:]), fill, dtype=array.dtype)
    ah, aw = array.shape[:2]
    sy, sx = max(0, (ah - h) // 2), max(0, (aw - w) // 2)  # crop offsets in the source
    dy, dx = max(0, (h - ah) // 2), max(0, (w - aw) // 2)  # pad offsets in the target
    ch, cw = min(h, ah), min(w, aw)
    out[dy : dy + ch, dx : dx + cw] = array[sy : sy + ch, sx : sx + cw]
    return out


def _grayscale(image: np.ndarray) -> np.ndarray:
    grey = image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return np.repeat(np.clip(grey + 0.5, 0, 255).astype(np.uint8)[..., None], 3, axis=2)


def paste_outlier(
    inlier: np.ndarray,
    inlier_labels: np.ndarray,
    outlier: np.ndarray,
    outlier_mask: np.ndarray,
    recipe: PasteRecipe,
    rng: np.random.Generator,
) -> PastedSample:
    """Paste the object pixels of ``outlier`` at a random place in the (flipped) inlier crop.

    ``inlier_labels``: 255 = ignore, anything else inlier. The outlier image is rescaled by a
    factor drawn from ``recipe.scales`` (bicubic; mask nearest), fitted to the crop size
    (image pad 0, mask pad 255), and the tight box around its object pixels is pasted at a
    uniformly random position, copying only object pixels, which become label 1.
    """
    if inlier.shape[:2] != inlier_labels.shape or outlier.shape[:2] != outlier_mask.shape:
        raise ValueError("image and label shapes differ")
    size = inlier.shape[:2]
    mix = inlier.copy()
    mix_labels = np.where(inlier_labels == IGNORE, IGNORE, INLIER).astype(np.uint8)
    classes = inlier_labels
    if rng.random() < recipe.hflip_p:
        mix, mix_labels, classes = mix[:, ::-1], mix_labels[:, ::-1], classes[:, ::-1]
    if rng.random() < recipe.vflip_p:
        mix, mix_labels, classes = mix[::-1], mix_labels[::-1], classes[::-1]
    mix, mix_labels = np.ascontiguousarray(mix), np.ascontiguousarray(mix_labels)
    classes = np.array(classes, dtype=np.uint8)  # a copy: pasted pixels are overwritten below

    if rng.random() < recipe.grayscale_p:
        outlier = _grayscale(outlier)
    scale = float(rng.choice(recipe.scales))
    out = fit_to(_resize(outlier, scale, Image.Resampling.BICUBIC), size, 0)
    mask = fit_to(_resize(outlier_mask, scale, Image.Resampling.NEAREST), size, IGNORE)
    obj = mask == OBJECT
    background = IGNORE if recipe.ignore_outlier_background else INLIER
    out_labels = np.where(obj, OUTLIER, np.where(mask == 0, background, IGNORE)).astype(np.uint8)

    if obj.any():
        ys, xs = np.nonzero(obj)
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        ty = int(rng.integers(0, size[0] - (y1 - y0) + 1))
        tx = int(rng.integers(0, size[1] - (x1 - x0) + 1))
        box = obj[y0:y1, x0:x1]
        target = (slice(ty, ty + y1 - y0), slice(tx, tx + x1 - x0))
        mix[target][box] = out[y0:y1, x0:x1][box]
        mix_labels[target][box] = OUTLIER
        classes[target][box] = IGNORE
    return PastedSample(mix, mix_labels, out, out_labels, scale, classes)


def save_grid(samples: list[PastedSample], path: str, columns: int = 4) -> None:
    """A PNG grid: per sample the mixed image with pasted pixels tinted, and the outlier view."""
    tiles = []
    for s in samples:
        mix = s.mix.astype(np.float32)
        hit = s.mix_labels == OUTLIER
        mix[hit] = 0.5 * mix[hit] + 0.5 * np.array([255, 0, 255], np.float32)
        out = s.out.copy()
        out[s.out_labels == IGNORE] //= 3
        tiles.append(np.concatenate([mix.astype(np.uint8), out], axis=1))
    rows = [tiles[i : i + columns] for i in range(0, len(tiles), columns)]
    blank = np.zeros_like(tiles[0])
    grid = np.concatenate([np.concatenate(r + [blank] * (columns - len(r)), axis=1) for r in rows], axis=0)
    Image.fromarray(grid).save(path)
