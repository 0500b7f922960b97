"""Samples: objects pasted into scenes with their labels, camera sequences, the dataset folder."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flowclas_ros.synthetic.objects import cut_object, sources
from flowclas_ros.synthetic.render import Light, expose, render, sensor_noise
from flowclas_ros.synthetic.scenes import DOMAINS, SCENES, check_domain, inlier_image, pick
from flowclas_ros.vocabulary import Label

# test labels 0/1/255; OBJECT marks outlier folder masks
INLIER, ANOMALY, VOID, OBJECT = (int(v) for v in (Label.INLIER, Label.ANOMALY, Label.VOID, Label.OBJECT))


# --------------------------------------------------------------------------- compositing


def _object_alpha(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Anti-aliased coverage of a boolean mask resized to ``shape``, snapped to exactly 0 and 1 near the ends."""
    from PIL import Image

    img = Image.fromarray(mask.astype(np.uint8) * 255).resize((shape[1], shape[0]), Image.Resampling.BILINEAR)
    alpha = np.asarray(img, np.float32) / 255.0
    alpha[alpha < 0.03] = 0.0
    alpha[alpha > 0.97] = 1.0
    return alpha


@dataclass
class _Placed:
    image: np.ndarray  # h x w x 3 float32 radiance
    alpha: np.ndarray  # h x w
    top: int
    left: int


def _place(obj: np.ndarray, mask: np.ndarray, height: int, top: int, left: int, gain: float) -> _Placed:
    """An object scaled to ``height`` rows, its brightness times ``gain``, at (top, left)."""
    from PIL import Image

    h = max(4, height)
    w = max(4, round(obj.shape[1] * h / obj.shape[0]))
    image = np.asarray(Image.fromarray(obj).resize((w, h), Image.Resampling.BILINEAR), np.float32) / 255.0 * gain
    return _Placed(image, _object_alpha(mask, (h, w)), top, left)


def _composite(radiance: np.ndarray, placed: list[_Placed]) -> tuple[np.ndarray, np.ndarray]:
    """Paste objects (later over earlier) into a copy of ``radiance``; return it and the total coverage."""
    out = radiance.copy()
    cover = np.zeros(radiance.shape[:2], np.float32)
    H, W = cover.shape
    for p in placed:
        h, w = p.alpha.shape
        y0, x0, y1, x1 = max(p.top, 0), max(p.left, 0), min(p.top + h, H), min(p.left + w, W)
        if y0 >= y1 or x0 >= x1:
            continue
        a = p.alpha[y0 - p.top : y1 - p.top, x0 - p.left : x1 - p.left]
        src = p.image[y0 - p.top : y1 - p.top, x0 - p.left : x1 - p.left]
        region = out[y0:y1, x0:x1]
        region += (src - region) * a[..., None]
        cover[y0:y1, x0:x1] = 1.0 - (1.0 - cover[y0:y1, x0:x1]) * (1.0 - a)
    return out, cover


def _labels(cover: np.ndarray) -> np.ndarray:
    labels = np.full(cover.shape, VOID, np.uint8)
    labels[cover == 0.0] = INLIER
    labels[cover == 1.0] = ANOMALY
    return labels


@dataclass
class AnomalySample:
    """``image`` with pasted objects, its ``labels`` (0/1/255), and the ``inlier`` image under them."""

    image: np.ndarray
    labels: np.ndarray
    inlier: np.ndarray


def anomaly_sample(domain: str, rng: np.random.Generator, size: tuple[int, int], max_objects: int = 3) -> AnomalySample:
    """An inlier scene with 1..``max_objects`` objects cut from held-out (test) photo sources."""
    check_domain(domain)
    scene_fn, light_fn = SCENES[domain]
    scene = scene_fn(rng, size)
    radiance = render(scene, light_fn(rng))
    h, w = size
    pool = sources(domain, "test")
    placed = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        obj, mask = cut_object(pick(rng, pool), rng, longest=max(h, w))
        if scene.horizon is None:
            height = int(h * rng.uniform(0.15, 0.5))
            top, left = int(rng.uniform(-0.1, 0.95) * h - height / 2), int(rng.uniform(0.0, 1.0) * w - height / 2)
        else:  # on the ground, sized by perspective
            base = rng.uniform(scene.horizon + 0.15 * (h - scene.horizon), h * 1.05)
            height = int(max(0.08 * h, (base - scene.horizon) * rng.uniform(0.5, 1.1)))
            top, left = int(base - height), int(rng.uniform(0.1, 0.9) * w - height / 2)
        placed.append(_place(obj, mask, height, top, left, gain=rng.uniform(0.6, 1.1)))
    mixed, cover = _composite(radiance, placed)
    noise = sensor_noise(rng, size)
    return AnomalySample(expose(mixed, noise), _labels(cover), expose(radiance, noise))


# --------------------------------------------------------------------------- camera sequence


def sequence(
    domain: str, frames: int, size: tuple[int, int] = (240, 320), seed: int = 0
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Temporally coherent camera frames ``(rgb, gt)`` (gt: 0/1/255) of one scene.

    The camera pans slowly over a larger canvas, the sun drifts and its strength changes,
    and held-out objects drift through the view (on the road they approach the camera and
    grow), so some frames hold no anomaly at all.
    """
    check_domain(domain)
    if frames < 1:
        raise ValueError(f"frames must be positive, got {frames}")
    rng = np.random.default_rng([seed, DOMAINS.index(domain), 7])
    h, w = size
    my, mx = max(2, h // 10), max(2, w // 5)
    scene_fn, light_fn = SCENES[domain]
    scene = scene_fn(rng, (h + 2 * my, w + 2 * mx))
    light = light_fn(rng)
    pan = rng.uniform(0, 2 * np.pi, 2)
    sway = rng.uniform(0.2, 0.6)
    pool = sources(domain, "test")
    tracks = []
    for _ in range(max(1, frames // 30)):
        obj, mask = cut_object(pick(rng, pool), rng, longest=max(h, w))
        start = rng.uniform(-0.2, 0.8) * frames
        duration = rng.uniform(0.3, 0.6) * frames
        if scene.horizon is None:
            heading = rng.uniform(0, 2 * np.pi)
            across = np.array([np.sin(heading), np.cos(heading)]) * 0.8 * np.hypot(h, w)
            middle = rng.uniform(0.25, 0.75, 2) * (h, w)
            p0, p1 = middle - across, middle + across  # enters on one side, leaves on the other
            tracks.append((obj, mask, start, duration, p0, p1, rng.uniform(0.15, 0.4) * h))
        else:
            x = rng.uniform(0.15, 0.85) * w
            tracks.append(
                (obj, mask, start, duration, np.array([0.05, x]), np.array([1.15, x + rng.uniform(-0.3, 0.3) * w]), 0.0)
            )
    for f in range(frames):
        t = f / max(frames - 1, 1)
        angle = sway * np.sin(2 * np.pi * t + pan[0])
        c, sn = np.cos(angle), np.sin(angle)
        d = light.direction
        turned = np.float32([c * d[0] - sn * d[1], sn * d[0] + c * d[1], d[2]])
        flicker = 1.0 + 0.15 * np.sin(4 * np.pi * t + pan[1])
        lit = Light(turned, light.intensity * flicker, light.ambient, light.tint)
        radiance = render(scene, lit)
        oy = int(round(my * (1 + 0.9 * np.sin(2 * np.pi * t * 0.5 + pan[1]))))
        ox = int(round(mx * (1 + 0.9 * np.sin(2 * np.pi * t + pan[0]))))
        view = radiance[oy : oy + h, ox : ox + w]
        placed = []
        for obj, mask, start, duration, p0, p1, height in tracks:
            k = (f - start) / duration
            if not 0.0 <= k <= 1.0:
                continue
            y, x = p0 + (p1 - p0) * k
            if scene.horizon is None:
                size_px = height
                top, left = y - size_px / 2, x - size_px / 2
            else:  # approaching along the road: the base row moves down from the horizon
                horizon = scene.horizon - oy
                base = horizon + (h - horizon) * y
                size_px = max(6.0, (base - horizon) * 0.6)
                top, left = base - size_px, x - size_px / 2 - (ox - mx)
            placed.append(_place(obj, mask, int(size_px), int(top), int(left), gain=0.9))
        mixed, cover = _composite(view, placed)
        yield expose(mixed, sensor_noise(rng, size)), _labels(cover)


# --------------------------------------------------------------------------- dataset writer


def _item_rng(seed: int, domain: str, split: str, index: int) -> np.random.Generator:
    """Each item has its own stream: item i is the same whatever the number of items asked."""
    return np.random.default_rng([seed, DOMAINS.index(domain), ("train", "test", "outliers").index(split), index])


def outlier_item(domain: str, seed: int, index: int, longest: int) -> tuple[np.ndarray, np.ndarray]:
    """Outlier folder item ``index``: a crop from a train-split source and its mask (254 object, 0 background).

    The crop's longest side is ``longest`` unless that would enlarge it more than twice.
    """
    rng = _item_rng(seed, domain, "outliers", index)
    image, mask = cut_object(pick(rng, sources(domain, "train")), rng, longest, max_zoom=2.0)
    return image, np.where(mask, OBJECT, 0).astype(np.uint8)


def write_dataset(
    root: str | Path,
    domain: str,
    train: int,
    test: int,
    outliers: int,
    size: tuple[int, int],
    seed: int = 0,
    progress: bool = True,
) -> dict[str, int]:
    """Write the folder layout (train/images, test/images, test/masks) and ``root/outliers``.

    Returns the number of files written per folder. Images are PNG named ``NNNNN.png``.
    """
    from PIL import Image
    from tqdm import tqdm

    check_domain(domain)
    root = Path(root)
    dirs = {k: root / k for k in ("train/images", "test/images", "test/masks", "outliers/images", "outliers/masks")}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    for i in tqdm(range(train), desc=f"synth {domain} train", unit="img", disable=not progress):
        Image.fromarray(inlier_image(domain, _item_rng(seed, domain, "train", i), size)).save(
            dirs["train/images"] / f"{i:05d}.png"
        )
    for i in tqdm(range(test), desc=f"synth {domain} test", unit="img", disable=not progress):
        sample = anomaly_sample(domain, _item_rng(seed, domain, "test", i), size)
        Image.fromarray(sample.image).save(dirs["test/images"] / f"{i:05d}.png")
        Image.fromarray(sample.labels).save(dirs["test/masks"] / f"{i:05d}.png")
    for i in tqdm(range(outliers), desc=f"synth {domain} outliers", unit="img", disable=not progress):
        image, mask = outlier_item(domain, seed, i, max(size))
        Image.fromarray(image).save(dirs["outliers/images"] / f"{i:05d}.png")
        Image.fromarray(mask).save(dirs["outliers/masks"] / f"{i:05d}.png")
    return {
        "train/images": train,
        "test/images": test,
        "test/masks": test,
        "outliers/images": outliers,
        "outliers/masks": outliers,
    }


def preview(root: str | Path, path: str | Path, columns: int = 4) -> Path:
    """A PNG montage: train images, test images with anomaly outlines (green), outlier crops (background dimmed)."""
    from PIL import Image

    from flowclas_ros.runtime.visualize import overlay

    root = Path(root)

    def read(p: Path) -> np.ndarray:
        return np.asarray(Image.open(p).convert("RGB"))

    def outlined(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return overlay(image, np.zeros(mask.shape, np.float32), mask, alpha=0.0)

    rows: list[list[np.ndarray]] = [[read(p) for p in sorted((root / "train/images").glob("*.png"))[:columns]]]
    tests = []
    for p in sorted((root / "test/images").glob("*.png"))[: 2 * columns]:
        tests.append(outlined(read(p), np.asarray(Image.open(root / "test/masks" / p.name)) == ANOMALY))
    rows += [tests[:columns], tests[columns:]]
    crops = []
    for p in sorted((root / "outliers/images").glob("*.png"))[:columns]:
        mask = np.asarray(Image.open(root / "outliers/masks" / p.name)) == OBJECT
        shown = outlined(read(p), mask)
        shown[~mask] //= 3
        crops.append(shown)
    rows.append(crops)
    rows = [row for row in rows if row]
    if not rows:
        raise ValueError(f"nothing to preview in {root}")
    th, tw = rows[0][0].shape[:2]
    grid = np.zeros((len(rows) * th, columns * tw, 3), np.uint8)
    for y, row in enumerate(rows):
        for x, tile in enumerate(row):
            k = min(th / tile.shape[0], tw / tile.shape[1])  # letterbox: keep the aspect ratio
            h, w = min(th, round(tile.shape[0] * k)), min(tw, round(tile.shape[1] * k))
            tile = np.asarray(Image.fromarray(tile).resize((w, h)))
            top, left = y * th + (th - h) // 2, x * tw + (tw - w) // 2
            grid[top : top + h, left : left + w] = tile
    path = Path(path)
    Image.fromarray(grid).save(path)
    return path
