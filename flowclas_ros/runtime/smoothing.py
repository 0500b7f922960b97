"""Mask-based score smoothing (docs/method.md section 2 item 6; the FlowCLAS supplement's Algorithm 1).

For every region M: histogram the scores inside M into N = 20 equal bins over their min..max,
take the fullest bin b* = [lo, hi), and set every pixel of M whose score is < lo or > hi to
the mean of the scores in [lo, hi) (the authors' edges; ``_smooth_flat``). Regions come
from a :class:`RegionSource`:

- ``superpixels`` (default): scikit-image SLIC with 5 iterations on a frame subsampled so its
  longer side is at most ``max_side`` = 256 pixels, labels upsampled back by nearest neighbour
  (the fastest of the segmenters tried; timings in benchmarks/README.md);
- ``components``: the 8-connected components of the thresholded mask;
- ``sam2``: SAM 2's automatic mask generator (the authors' choice), possibly overlapping masks.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence, Union

import numpy as np
from scipy import ndimage

from flowclas_ros.errors import FlowclasError


class SmoothingError(FlowclasError):
    """An unknown smoother, or options it cannot use."""


BINS = 20

Regions = Union[np.ndarray, Sequence[np.ndarray]]


class RegionSource(Protocol):
    """Where the regions come from."""

    def regions(self, rgb: np.ndarray, score: np.ndarray, threshold: float) -> Regions:
        """``H x W`` integer labels (0 = in no region, regions 1..K), or a list of ``H x W``
        boolean masks that may overlap (applied in order)."""


def _smooth_flat(values: np.ndarray, labels: np.ndarray, count: int, bins: int) -> np.ndarray:
    """Algorithm 1 on 1-D ``values`` grouped by ``labels`` in 0..count-1, as the authors' code
    runs it (numpy 2, float32 score maps): per region the edges ``np.linspace(min, max,
    bins + 1)`` in the scores' own dtype, counts as ``np.histogram`` makes them (``[e_i,
    e_i+1)``, the last bin closed), the fullest bin ``[lo, hi)`` (the first on a tie), the
    mean of the values with ``lo <= v < hi``, and replacement of ``v < lo`` or ``v > hi``
    only (so a value equal to ``hi`` is kept). A region whose ``[lo, hi)`` holds no value
    (constant regions) is left as it is. The mean is summed in float64, then cast back.
    """
    dtype = values.dtype if values.dtype.kind == "f" else np.dtype(np.float64)
    values = values.astype(dtype, copy=False)
    low = np.full(count, np.inf, dtype=dtype)
    high = np.full(count, -np.inf, dtype=dtype)
    np.minimum.at(low, labels, values)
    np.maximum.at(high, labels, values)
    edges = np.repeat(np.where(low <= high, low, 0).astype(dtype)[:, None], bins + 1, axis=1)
    spread = low < high
    if spread.any():  # one np.linspace call per region would give the same numbers
        edges[spread] = np.linspace(low[spread], high[spread], bins + 1, axis=1)
    # np.histogram: bin i holds e_i <= v < e_i+1; v = max goes to the last bin. A first
    # guess from the bin width, then steps to the neighbour while the edges disagree.
    span = (high - low).astype(np.float64)
    span[~spread] = 1.0
    wide = values.astype(np.float64)
    b = np.clip(((wide - low[labels]) / span[labels] * bins).astype(np.int64), 0, bins - 1)
    for _ in range(2):
        b -= (b > 0) & (values < edges[labels, b])
        b += (b < bins - 1) & (values >= edges[labels, np.minimum(b + 1, bins)])
    flat_bin = labels * bins + b
    counts = np.bincount(flat_bin, minlength=count * bins).reshape(count, bins)
    fullest = counts.argmax(axis=1)
    rows = np.arange(count)
    lo, hi = edges[rows, fullest][labels], edges[rows, fullest + 1][labels]
    in_mode = (values >= lo) & (values < hi)
    sums = np.bincount(labels, weights=np.where(in_mode, wide, 0.0), minlength=count)
    members = np.bincount(labels, weights=in_mode.astype(np.float64), minlength=count)
    mean = (sums / np.maximum(members, 1)).astype(dtype)
    replace = ((values < lo) | (values > hi)) & (members[labels] > 0)
    return np.where(replace, mean[labels], values)


def smooth_labels(score: np.ndarray, labels: np.ndarray, bins: int = BINS) -> np.ndarray:
    """Algorithm 1 on every region of an ``H x W`` label image at once (0 = in no region)."""
    if labels.shape != score.shape:
        raise ValueError(f"labels shape {labels.shape} differs from score shape {score.shape}")
    out = score.copy()
    flat = labels.reshape(-1)
    inside = np.flatnonzero(flat)  # only labelled pixels take part (few, for mask components)
    if inside.size == 0:
        return out
    ids = flat[inside].astype(np.int64)
    if ids.min() < 0:
        raise ValueError("region labels must be non-negative (0 = in no region)")
    if ids.max() > inside.size:  # sparse ids: compact them to 0..K-1
        _, ids = np.unique(ids, return_inverse=True)
        ids = ids.reshape(-1)
    else:
        ids -= 1
    view = out.reshape(-1)
    view[inside] = _smooth_flat(view[inside], ids, int(ids.max()) + 1, bins)
    return out


def smooth_masks(score: np.ndarray, masks: Sequence[np.ndarray], bins: int = BINS) -> np.ndarray:
    """Algorithm 1 on boolean masks that may overlap, each applied to the result of the previous."""
    out = score.copy()
    for mask in masks:
        inside = np.flatnonzero(mask)
        if inside.size:
            flat = out.reshape(-1)
            flat[inside] = _smooth_flat(flat[inside], np.zeros(inside.size, np.int64), 1, bins)
    return out


class Superpixels:
    """SLIC superpixels of the frame (compact, colour-coherent regions)."""

    def __init__(self, segments: int = 400, compactness: float = 10.0, max_side: int = 256, iterations: int = 5) -> None:
        self.segments, self.compactness = int(segments), float(compactness)
        self.max_side, self.iterations = int(max_side), int(iterations)

    def regions(self, rgb: np.ndarray, score: np.ndarray, threshold: float) -> np.ndarray:
        """Region labels (or masks) for one frame."""
        from skimage.segmentation import slic

        h, w = rgb.shape[:2]
        k = max(1, -(-max(h, w) // self.max_side))
        small = slic(rgb[::k, ::k], n_segments=self.segments, compactness=self.compactness,
                     max_num_iter=self.iterations, start_label=1)
        if k == 1:
            return small
        rows = np.minimum(np.arange(h) // k, small.shape[0] - 1)
        cols = np.minimum(np.arange(w) // k, small.shape[1] - 1)
        return small[rows[:, None], cols[None, :]]


class ConnectedComponents:
    """8-connected components of the mask ``score >= threshold``."""

    def regions(self, rgb: np.ndarray, score: np.ndarray, threshold: float) -> np.ndarray:
        """Region labels (or masks) for one frame."""
        labels, _ = ndimage.label(score >= threshold, structure=np.ones((3, 3), bool))
        return labels


class Sam2Masks:
    """SAM 2 automatic mask generator; needs the optional ``sam2`` package and a checkpoint file."""

    def __init__(self, checkpoint: str | None = None, config: str = "configs/sam2.1/sam2.1_hiera_l.yaml",
                 points_per_side: int = 32, device: str = "cpu") -> None:
        if not checkpoint:
            raise SmoothingError("SAM 2 smoothing needs a checkpoint path (option 'checkpoint')")
        try:
            from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator
            from sam2.build_sam import build_sam2
        except ImportError as exc:
            raise SmoothingError(f"SAM 2 smoothing needs the 'sam2' package, which failed to import: {exc}") from exc
        model = build_sam2(config, checkpoint, device=device)
        self.generator = SAM2AutomaticMaskGenerator(model, points_per_side=points_per_side)

    def regions(self, rgb: np.ndarray, score: np.ndarray, threshold: float) -> list[np.ndarray]:
        """Region labels (or masks) for one frame."""
        return [m["segmentation"] for m in self.generator.generate(np.ascontiguousarray(rgb))]


class Smoother:
    """Algorithm 1 over the regions of ``source``: ``smoother(rgb, score, threshold) -> score``."""

    def __init__(self, source: RegionSource, bins: int = BINS) -> None:
        self.source, self.bins = source, int(bins)

    def __call__(self, rgb: np.ndarray, score: np.ndarray, threshold: float) -> np.ndarray:
        """The score map smoothed over the frame's regions."""
        regions = self.source.regions(rgb, score, threshold)
        if isinstance(regions, np.ndarray) and regions.shape == score.shape:
            return smooth_labels(score, regions, self.bins)
        return smooth_masks(score, [regions] if isinstance(regions, np.ndarray) else regions, self.bins)


SOURCES = {"superpixels": Superpixels, "components": ConnectedComponents, "sam2": Sam2Masks}


# Choices a user can pick by name alone (SAM 2 also needs checkpoint and config paths).
CHOICES = ("none", *(name for name in SOURCES if name != "sam2"))


def build_smoother(name: str, bins: int = BINS, **options: Any) -> Smoother | None:
    """``"none"`` -> None; ``"superpixels"``, ``"components"`` or ``"sam2"`` -> a :class:`Smoother`.

    ``options`` go to the region source (e.g. ``segments``, ``max_side``; ``checkpoint``,
    ``config``, ``device`` for SAM 2). Raises ValueError for an unknown name or bad options.
    """
    if name in ("none", "off", "", None):
        return None
    if name not in SOURCES:
        raise SmoothingError(f"unknown smoothing {name!r}; choose one of none, {', '.join(SOURCES)}")
    try:
        return Smoother(SOURCES[name](**options), bins=bins)
    except TypeError as exc:
        raise SmoothingError(f"bad options for {name} smoothing: {exc}") from exc
