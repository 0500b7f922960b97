"""Outlier objects: the bundled scikit-image pictures they come from, and how they are cut."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from flowclas_ros.synthetic.render import noise
from flowclas_ros.synthetic.scenes import check_domain

SPLITS = ("train", "test")


@dataclass(frozen=True)
class Source:
    """One bundled scikit-image picture: where its objects are and how to cut them."""

    name: str  # skimage.data function
    split: str  # "train": outlier folder for pasting; "test": held out for test images and sequences
    box: tuple[float, float, float, float]  # y0, x0, y1, x1 (fractions): region holding the objects
    cut: str = "blob"  # "blob" (random blob or polygon), "coins" (one segmented coin), "horse" (silhouette)
    exclude: tuple[str, ...] = ()  # domains whose content this picture shows


SOURCES = (
    Source("chelsea", "train", (0.0, 0.2, 1.0, 0.95)),
    Source("coins", "train", (0.0, 0.0, 1.0, 1.0), "coins"),
    Source("horse", "train", (0.0, 0.0, 1.0, 1.0), "horse"),
    Source("brick", "train", (0.0, 0.0, 1.0, 1.0), exclude=("road", "warehouse")),
    Source("gravel", "train", (0.0, 0.0, 1.0, 1.0), exclude=("road", "terrain", "underwater")),
    Source("grass", "train", (0.0, 0.0, 1.0, 1.0), exclude=("road", "underwater")),
    Source("immunohistochemistry", "train", (0.0, 0.0, 1.0, 1.0)),
    Source("moon", "train", (0.1, 0.1, 0.9, 0.9), exclude=("orbital", "terrain")),
    Source("astronaut", "test", (0.05, 0.0, 1.0, 0.62)),
    Source("coffee", "test", (0.02, 0.1, 0.98, 0.75)),
    Source("rocket", "test", (0.05, 0.3, 0.95, 0.75), exclude=("orbital",)),
    Source("camera", "test", (0.1, 0.0, 0.95, 0.6)),
    Source("retina", "test", (0.15, 0.15, 0.85, 0.85)),
    Source("stereo_motorcycle", "test", (0.35, 0.0, 1.0, 0.75), exclude=("road",)),
    Source("hubble_deep_field", "test", (0.0, 0.0, 1.0, 1.0), exclude=("orbital",)),
)


def sources(domain: str, split: str) -> list[Source]:
    """The outlier sources usable for ``domain`` in ``split`` ("train" or "test")."""
    check_domain(domain)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return [s for s in SOURCES if s.split == split and domain not in s.exclude]


@lru_cache(maxsize=None)
def _picture(name: str) -> np.ndarray:
    """A bundled scikit-image picture as H x W x 3 uint8 (longest side at most 640)."""
    from PIL import Image
    from skimage import data

    image = getattr(data, name)()
    if isinstance(image, tuple):  # stereo_motorcycle: (left, right, disparity)
        image = image[0]
    if image.dtype == bool:
        image = image.astype(np.uint8) * 255
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    image = np.ascontiguousarray(image[..., :3])
    if max(image.shape[:2]) > 640:
        k = 640 / max(image.shape[:2])
        image = np.asarray(
            Image.fromarray(image).resize(
                (round(image.shape[1] * k), round(image.shape[0] * k)), Image.Resampling.LANCZOS
            )
        )
    image.setflags(write=False)
    return image


@lru_cache(maxsize=None)
def _coin_labels() -> np.ndarray:
    """One label per coin of ``coins``: watershed of the Sobel edges from dark and bright markers."""
    from scipy import ndimage
    from skimage import filters, segmentation

    grey = _picture("coins")[..., 0]
    markers = np.where(grey < 30, 1, 0) + np.where(grey > 150, 2, 0)
    coins = ndimage.binary_fill_holes(segmentation.watershed(filters.sobel(grey), markers) == 2)
    disk = np.hypot(*np.mgrid[-3:4, -3:4]) <= 3
    labels, _ = ndimage.label(ndimage.binary_opening(coins, disk))
    return labels


def _blob_mask(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """An irregular object outline filling most of ``shape``: a noisy ellipse or a star polygon."""
    from PIL import Image, ImageDraw
    from scipy import ndimage

    h, w = shape
    if rng.random() < 0.5:
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        d = np.hypot((yy - h / 2) / (h / 2), (xx - w / 2) / (w / 2))
        mask = d + 0.3 * noise(rng, shape, min(h, w) / rng.uniform(2.5, 5)) < 0.85
    else:
        n = int(rng.integers(5, 12))
        angles = np.sort(rng.uniform(0, 2 * np.pi, n))
        radii = rng.uniform(0.55, 1.0, n)
        poly = [
            (w / 2 * (1 + 0.95 * rr * np.cos(a)), h / 2 * (1 + 0.95 * rr * np.sin(a))) for a, rr in zip(angles, radii)
        ]
        img = Image.new("1", (w, h))
        ImageDraw.Draw(img).polygon(poly, fill=1)
        mask = np.asarray(img)
    labels, n = ndimage.label(mask)
    if n > 1:
        mask = labels == 1 + int(np.argmax(ndimage.sum_labels(mask, labels, range(1, n + 1))))
    return ndimage.binary_fill_holes(mask)


def cut_object(
    source: Source, rng: np.random.Generator, longest: int, max_zoom: float = float("inf")
) -> tuple[np.ndarray, np.ndarray]:
    """A photo crop (H x W x 3 uint8) and its object mask (H x W bool), longest side ``longest``.

    Crops are enlarged at most ``max_zoom`` times, so small objects (a coin) stay sharp and smaller.
    """
    from PIL import Image
    from scipy import ndimage

    picture = _picture(source.name)
    ph, pw = picture.shape[:2]
    if source.cut == "coins":
        labels = _coin_labels()
        coin = int(rng.integers(1, labels.max() + 1))
        box = ndimage.find_objects(labels)[coin - 1]
        pad = int(0.2 * (box[0].stop - box[0].start))
        y0, x0 = max(0, box[0].start - pad), max(0, box[1].start - pad)
        y1, x1 = min(ph, box[0].stop + pad), min(pw, box[1].stop + pad)
        crop, mask = picture[y0:y1, x0:x1], labels[y0:y1, x0:x1] == coin
    elif source.cut == "horse":  # the silhouette, filled with fur from the cat picture
        mask = ~np.asarray(_picture("horse")[..., 0], bool)
        fur = _picture("chelsea")
        k = max(mask.shape[0] / fur.shape[0], mask.shape[1] / fur.shape[1]) * rng.uniform(1.0, 1.6)
        fur = np.asarray(Image.fromarray(fur).resize((int(fur.shape[1] * k) + 1, int(fur.shape[0] * k) + 1)))
        oy, ox = rng.integers(0, fur.shape[0] - mask.shape[0] + 1), rng.integers(0, fur.shape[1] - mask.shape[1] + 1)
        crop = fur[oy : oy + mask.shape[0], ox : ox + mask.shape[1]]
    else:
        by0, bx0, by1, bx1 = (
            int(source.box[0] * ph),
            int(source.box[1] * pw),
            int(source.box[2] * ph),
            int(source.box[3] * pw),
        )
        ch = int((by1 - by0) * rng.uniform(0.4, 1.0))
        cw = int(min(bx1 - bx0, ch * rng.uniform(0.6, 1.6)))
        y0, x0 = rng.integers(by0, by1 - ch + 1), rng.integers(bx0, bx1 - cw + 1)
        crop = picture[y0 : y0 + ch, x0 : x0 + cw]
        mask = _blob_mask(rng, crop.shape[:2])
    if rng.random() < 0.5:
        crop, mask = crop[:, ::-1], mask[:, ::-1]
    k = min(longest / max(crop.shape[:2]), max_zoom)
    size = (max(1, round(crop.shape[1] * k)), max(1, round(crop.shape[0] * k)))
    image = np.asarray(Image.fromarray(np.ascontiguousarray(crop)).resize(size, Image.Resampling.BILINEAR))
    mask = (
        np.asarray(
            Image.fromarray(np.ascontiguousarray(mask).astype(np.uint8) * 255).resize(size, Image.Resampling.BILINEAR)
        )
        >= 128
    )
    return image, mask
