"""Rendering: layers of coverage, albedo and normals shaded under one sun, cast shadows, exposure.

``Raster`` draws anti-aliased coverage masks, ``noise`` makes smooth random fields and
``cylinder`` a side-on shaded cylinder; the scene builders in ``scenes`` use them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Light:
    """A sun: ``direction`` unit 3-vector towards it (x right, y down, z towards the camera)."""

    direction: np.ndarray
    intensity: float
    ambient: float
    tint: np.ndarray


@dataclass
class Layer:
    """A drawn element: coverage in [0, 1], albedo, and a surface normal (None: self-lit)."""

    coverage: np.ndarray  # H x W float32
    albedo: np.ndarray  # (3,) or H x W x 3
    normal: np.ndarray | None = None  # (3,) or H x W x 3
    specular: float = 0.0
    shininess: float = 16.0
    shadow: float = 0.0  # length (px) of the shadow cast onto shadow-receiving layers below
    receives: bool = True


@dataclass
class Scene:
    """Layers back to front on a canvas; ``horizon`` row for ground scenes (None in space)."""

    layers: list[Layer]
    shape: tuple[int, int]
    horizon: float | None = None


def render(scene: Scene, light: Light) -> np.ndarray:
    """Shade and composite the layers: H x W x 3 float32 linear radiance (about 0..1)."""
    h, w = scene.shape
    canvas = np.zeros((h, w, 3), np.float32)
    receiver = np.zeros((h, w), np.float32)
    to_light = light.direction.astype(np.float32)
    half = to_light + np.float32([0, 0, 1])
    half /= np.linalg.norm(half)
    for layer in scene.layers:
        box = _bbox(layer.coverage)
        if box is None:
            continue
        a = layer.coverage[box]
        if layer.shadow:
            _cast_shadow(canvas, receiver, a, box, (-to_light[1] * layer.shadow, -to_light[0] * layer.shadow))
        if layer.normal is None:
            colour = _within(layer.albedo, box)
        else:
            normal = _within(layer.normal, box)
            lambert = np.clip(normal @ to_light, 0.0, None)
            colour = _within(layer.albedo, box) * (light.ambient + light.intensity * lambert)[..., None] * light.tint
            if layer.specular:
                glint = np.clip(normal @ half, 0.0, None) ** layer.shininess
                colour = colour + (layer.specular * light.intensity * glint)[..., None] * light.tint
        canvas[box] += (colour - canvas[box]) * a[..., None]
        receiver[box] += (float(layer.receives) - receiver[box]) * a
    return canvas


def _bbox(coverage: np.ndarray) -> tuple[slice, slice] | None:
    """The bounding box of a coverage mask's non-zero pixels (None if empty); layers only touch it."""
    rows, cols = np.flatnonzero(coverage.any(axis=1)), np.flatnonzero(coverage.any(axis=0))
    if rows.size == 0:
        return None
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def _within(field: np.ndarray, box: tuple[slice, slice]) -> np.ndarray:
    """A per-pixel field cropped to ``box``; a constant (3,) vector unchanged."""
    return field[box] if field.ndim == 3 else field


def _cast_shadow(canvas, receiver, a: np.ndarray, box: tuple[slice, slice], offset: tuple[float, float]) -> None:
    """Darken shadow-receiving pixels under ``a`` (at ``box``) moved by ``offset`` (dy, dx) pixels."""
    h, w = receiver.shape
    dy, dx = int(round(offset[0])), int(round(offset[1]))
    y0, x0 = box[0].start + dy, box[1].start + dx
    ty0, tx0 = max(y0, 0), max(x0, 0)
    ty1, tx1 = min(y0 + a.shape[0], h), min(x0 + a.shape[1], w)
    if ty0 >= ty1 or tx0 >= tx1:
        return
    cast = a[ty0 - y0 : ty1 - y0, tx0 - x0 : tx1 - x0]
    canvas[ty0:ty1, tx0:tx1] *= (1.0 - 0.85 * cast * receiver[ty0:ty1, tx0:tx1])[..., None]


class Raster:
    """Anti-aliased coverage masks: PIL draws at 2x, box-filtered down."""

    SS = 2

    def __init__(self, shape: tuple[int, int]) -> None:
        self.h, self.w = shape
        yy, xx = np.mgrid[0 : self.h, 0 : self.w].astype(np.float32)
        self.y, self.x = yy + 0.5, xx + 0.5

    def shapes(self, polygons=(), lines=(), disks=(), width: float = 1.0) -> np.ndarray:
        """Coverage of the union of polygons, lines (``width`` px) and disks ``(cx, cy, r)``."""
        from PIL import Image, ImageDraw

        polygons = [np.asarray(p, np.float32).reshape(-1, 2) for p in polygons]
        lines = [np.asarray(seg, np.float32).reshape(2, 2) for seg in lines]
        disks = [np.asarray(d, np.float32) for d in disks]
        extent = (
            [p for p in polygons] + [seg for seg in lines] + [np.stack([d[:2] - d[2], d[:2] + d[2]]) for d in disks]
        )
        out = np.zeros((self.h, self.w), np.float32)
        if not extent:
            return out
        points = np.concatenate(extent)
        pad = width + 2
        x0, y0 = (np.floor(points.min(0) - pad)).clip(0).astype(int)
        x1 = int(min(self.w, np.ceil(points[:, 0].max() + pad)))
        y1 = int(min(self.h, np.ceil(points[:, 1].max() + pad)))
        if x0 >= x1 or y0 >= y1:
            return out
        s, origin = self.SS, np.float32([x0, y0])  # draw only the shapes' box, at 2x
        img = Image.new("L", ((x1 - x0) * s, (y1 - y0) * s))
        draw = ImageDraw.Draw(img)
        for poly in polygons:
            draw.polygon([tuple(q) for q in ((poly - origin) * s).tolist()], fill=255)
        for seg in lines:
            draw.line([tuple(q) for q in ((seg - origin) * s).tolist()], fill=255, width=max(1, int(round(width * s))))
        for cx, cy, r in disks:
            cx, cy = cx - x0, cy - y0
            draw.ellipse([(cx - r) * s, (cy - r) * s, (cx + r) * s, (cy + r) * s], fill=255)
        small = img.resize((x1 - x0, y1 - y0), Image.Resampling.BOX)
        out[y0:y1, x0:x1] = np.asarray(small, np.float32) / 255.0
        return out


def noise(rng: np.random.Generator, shape: tuple[int, int], cell: float, aspect: float = 1.0) -> np.ndarray:
    """Smooth noise, about zero mean and unit spread, with features ``cell`` px wide."""
    from PIL import Image

    h, w = shape
    if cell <= 1.5 and aspect == 1.0:  # grain: white noise is as good and much cheaper
        return rng.standard_normal(shape, dtype=np.float32)
    gh, gw = max(2, int(h / cell) + 2), max(2, int(w / (cell * aspect)) + 2)
    coarse = rng.standard_normal((gh, gw)).astype(np.float32)
    field = np.asarray(Image.fromarray(coarse, "F").resize((w, h), Image.Resampling.BICUBIC))
    return (field - field.mean()) / (field.std() + 1e-6)


def _cylinder_normal(r: Raster, p0, axis, radius: float) -> np.ndarray:
    """Normals of a cylinder seen side-on: its axis through ``p0`` along the unit 2-vector ``axis``."""
    perp = np.float32([-axis[1], axis[0]])
    t = np.clip(((r.x - p0[0]) * perp[0] + (r.y - p0[1]) * perp[1]) / radius, -0.98, 0.98)
    return np.stack([perp[0] * t, perp[1] * t, np.sqrt(1.0 - t * t)], axis=-1)


def cylinder(r: Raster, p0, p1, radius: float, albedo, rounded: bool = False, **kw) -> Layer:
    """A shaded cylinder from ``p0`` to ``p1`` seen side-on (``rounded``: with disk ends); ``kw`` to ``Layer``."""
    p0, p1 = np.float32(p0), np.float32(p1)
    axis = (p1 - p0) / max(float(np.linalg.norm(p1 - p0)), 1e-3)
    side = np.float32([-axis[1], axis[0]]) * radius
    quad = [p0 + side, p1 + side, p1 - side, p0 - side]
    disks = [(*p0, radius), (*p1, radius)] if rounded else []
    return Layer(r.shapes(polygons=[quad], disks=disks), albedo, _cylinder_normal(r, p0, axis, radius), **kw)


def expose(radiance: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """Linear radiance plus sensor ``noise`` (in 0..255 units) as H x W x 3 uint8."""
    return np.clip(radiance * 255.0 + noise + 0.5, 0, 255).astype(np.uint8)


def sensor_noise(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Gaussian pixel noise of a random strength, H x W x 3 float32 (0..255 units)."""
    return rng.normal(0.0, rng.uniform(1.0, 4.0), (*shape, 3)).astype(np.float32)
