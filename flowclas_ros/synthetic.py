"""Synthetic anomaly segmentation data in two domains, and the ``flowclas synth`` command.

Inlier scenes are drawn procedurally (numpy + PIL rasterisation), deterministic from a seed:

- ``orbital``: black space with stars, sometimes the Earth's limb, lit structures (lattice
  trusses, solar panel wings, cylindrical modules, radiators, a robotic arm) under a sun of
  random direction and strength, cast shadows, sensor noise.
- ``road``: sky gradient with clouds, buildings with windows, trees, a perspective road
  with asphalt texture, lane markings, kerbs and pavements, varied sun and tint.

Anomalies are objects cut from real photographs and textures bundled with scikit-image
(no download), never from the synthetic inlier domain. Sources whose content belongs to a
domain are excluded from it (grass, gravel, brick and the motorcycle from ``road``; the
Moon, the Hubble deep field and the launch tower from ``orbital``). The sources are split
in two disjoint sets: ``train`` sources fill the outlier folder used for pasting during
training, ``test`` sources are held out for the test split and the camera sequence, so
evaluation measures objects the model never saw.

Test labels: 0 inlier, 1 anomaly, 255 void. Objects are pasted with anti-aliased edges;
the mixed edge pixels (object coverage strictly between 0 and 1) are void, since they are
neither clean inlier nor clean object. Every pixel labelled 0 equals the inlier image.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

DOMAINS = ("orbital", "road")
INLIER, ANOMALY, VOID, OBJECT = 0, 1, 255, 254
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
    Source("brick", "train", (0.0, 0.0, 1.0, 1.0), exclude=("road",)),
    Source("gravel", "train", (0.0, 0.0, 1.0, 1.0), exclude=("road",)),
    Source("grass", "train", (0.0, 0.0, 1.0, 1.0), exclude=("road",)),
    Source("immunohistochemistry", "train", (0.0, 0.0, 1.0, 1.0)),
    Source("moon", "train", (0.1, 0.1, 0.9, 0.9), exclude=("orbital",)),
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
    _check_domain(domain)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return [s for s in SOURCES if s.split == split and domain not in s.exclude]


def _check_domain(domain: str) -> None:
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; choose from {', '.join(DOMAINS)}")


# --------------------------------------------------------------------------- rendering


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


class _Raster:
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


def _noise(rng: np.random.Generator, shape: tuple[int, int], cell: float, aspect: float = 1.0) -> np.ndarray:
    """Smooth noise, about zero mean and unit spread, with features ``cell`` px wide."""
    from PIL import Image

    h, w = shape
    if cell <= 1.5 and aspect == 1.0:  # grain: white noise is as good and much cheaper
        return rng.standard_normal(shape, dtype=np.float32)
    gh, gw = max(2, int(h / cell) + 2), max(2, int(w / (cell * aspect)) + 2)
    coarse = rng.standard_normal((gh, gw)).astype(np.float32)
    field = np.asarray(Image.fromarray(coarse, "F").resize((w, h), Image.Resampling.BICUBIC))
    return (field - field.mean()) / (field.std() + 1e-6)


def _unit(v) -> np.ndarray:
    v = np.asarray(v, np.float32)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _cylinder_normal(r: _Raster, p0, axis, radius: float) -> np.ndarray:
    """Normals of a cylinder seen side-on: its axis through ``p0`` along the unit 2-vector ``axis``."""
    perp = np.float32([-axis[1], axis[0]])
    t = np.clip(((r.x - p0[0]) * perp[0] + (r.y - p0[1]) * perp[1]) / radius, -0.98, 0.98)
    return np.stack([perp[0] * t, perp[1] * t, np.sqrt(1.0 - t * t)], axis=-1)


def _cylinder(r: _Raster, p0, p1, radius: float, albedo, rounded: bool = False, **kw) -> Layer:
    p0, p1 = np.float32(p0), np.float32(p1)
    axis = (p1 - p0) / max(float(np.linalg.norm(p1 - p0)), 1e-3)
    side = np.float32([-axis[1], axis[0]]) * radius
    quad = [p0 + side, p1 + side, p1 - side, p0 - side]
    disks = [(*p0, radius), (*p1, radius)] if rounded else []
    return Layer(r.shapes(polygons=[quad], disks=disks), albedo, _cylinder_normal(r, p0, axis, radius), **kw)


# --------------------------------------------------------------------------- orbital


def _orbital_light(rng: np.random.Generator) -> Light:
    elevation, azimuth = rng.uniform(-0.25, 1.2), rng.uniform(0, 2 * np.pi)
    direction = [np.cos(elevation) * np.cos(azimuth), np.cos(elevation) * np.sin(azimuth), np.sin(elevation)]
    tint = _unit(1.0 + rng.uniform(-0.04, 0.04, 3)) * np.sqrt(3)
    return Light(_unit(direction), float(rng.uniform(0.8, 1.5)), float(rng.uniform(0.02, 0.08)), tint)


def _orbital_scene(rng: np.random.Generator, shape: tuple[int, int]) -> Scene:
    h, w = shape
    r = _Raster(shape)
    s = h / 240 * rng.uniform(0.7, 1.5)  # zoom
    layers: list[Layer] = []

    if rng.random() < 0.7:  # stars (often lost to the exposure of lit structures)
        field = np.zeros(shape, np.float32)
        n = int(rng.integers(40, 300) * h * w / (240 * 320))
        field[rng.integers(0, h, n), rng.integers(0, w, n)] = rng.uniform(0.1, 1.0, n) ** 2
        layers.append(Layer(np.clip(field, 0, 1), np.float32([0.95, 0.95, 1.0]), receives=False))
    if rng.random() < 0.35:  # the Earth's limb
        radius = rng.uniform(1.2, 3.0) * max(h, w)
        angle = rng.uniform(0, 2 * np.pi)
        reach = radius + rng.uniform(-0.45, 0.15) * h
        cx, cy = w / 2 + np.cos(angle) * reach, h / 2 + np.sin(angle) * reach
        dist = np.hypot(r.x - cx, r.y - cy)
        nxy = np.stack([(r.x - cx) / radius, (r.y - cy) / radius], -1)
        nz = np.sqrt(np.clip(1.0 - (nxy**2).sum(-1, keepdims=True), 0.0, 1.0))
        swirl = (
            _noise(rng, shape, 20 * s, aspect=2.0) + 0.5 * _noise(rng, shape, 5 * s) + 0.3 * _noise(rng, shape, 2 * s)
        )
        clouds = np.clip(swirl * 0.5 - 0.2, 0, 1)[..., None]
        land = (_noise(rng, shape, 40 * s) > 1.0)[..., None]
        ocean = np.where(land, np.float32([0.3, 0.3, 0.16]), np.float32([0.04, 0.14, 0.36]))
        albedo = ocean * (1 - clouds) + np.float32([0.9, 0.92, 0.95]) * clouds
        layers.append(Layer(np.clip(radius - dist + 0.5, 0, 1), albedo, np.concatenate([nxy, nz], -1), receives=False))
        glow = np.exp(-(((dist - radius) / (0.025 * h)) ** 2)) * 0.7
        layers.append(Layer(glow.astype(np.float32), np.float32([0.35, 0.55, 1.0]), receives=False))

    # the station: a main truss (sometimes a cross truss), panels, modules, radiators, an arm
    centre = np.float32([w * rng.uniform(0.3, 0.7), h * rng.uniform(0.3, 0.7)])
    theta = rng.uniform(-0.6, 0.6) + (np.pi / 2 if rng.random() < 0.3 else 0.0)
    trusses = [(centre, theta)]
    if rng.random() < 0.4:
        trusses.append(
            (centre + rng.uniform(-60, 60, 2).astype(np.float32) * s, theta + np.pi / 2 + rng.uniform(-0.2, 0.2))
        )
    truss_colour = np.float32(_pick(rng, [(0.75, 0.75, 0.74), (0.85, 0.84, 0.8), (0.75, 0.6, 0.3)]))
    width = rng.uniform(10, 22) * s
    for c, th in trusses:
        u = np.float32([np.cos(th), np.sin(th)])
        v = np.float32([-u[1], u[0]])
        half = rng.uniform(0.4, 1.0) * max(h, w)
        for _ in range(int(rng.integers(1, 4))):  # solar wings hanging off the truss, drawn behind it
            t = rng.uniform(-half, half)
            side = 1 if rng.random() < 0.5 else -1
            layers += _solar_wing(rng, r, c + u * t, u, v * side, width, s)
        if rng.random() < 0.5:  # radiator
            t = rng.uniform(-half, half)
            base = c + u * t - v * width / 2
            length, wide = rng.uniform(50, 120) * s, rng.uniform(14, 28) * s
            quad = [
                base - u * wide / 2,
                base + u * wide / 2,
                base + u * wide / 2 - v * length,
                base - u * wide / 2 - v * length,
            ]
            cov = r.shapes(polygons=[quad])
            along = (r.x - base[0]) * u[0] + (r.y - base[1]) * u[1]
            stripes = (np.mod(along / (4 * s), 1.0) < 0.2)[..., None]
            albedo = np.where(stripes, np.float32([0.55, 0.55, 0.55]), np.float32([0.9, 0.9, 0.88]))
            layers.append(Layer(cov, albedo, _tilted(rng), specular=0.2, shadow=6 * s))
        ends = [c - u * half, c + u * half]
        rails = [(e0 + v * sgn * width / 2, e1 + v * sgn * width / 2) for sgn in (-1, 1) for e0, e1 in [ends]]
        steps = np.arange(-half, half, width)
        zig = [c + u * a + v * width / 2 * (1 if i % 2 else -1) for i, a in enumerate(steps)]
        members = (
            rails
            + list(zip(zig[:-1], zig[1:]))
            + [(c + u * a - v * width / 2, c + u * a + v * width / 2) for a in steps[::2]]
        )
        cov = r.shapes(lines=members, width=max(1.0, 0.14 * width))
        layers.append(Layer(cov, truss_colour, _tilted(rng, 0.3), specular=0.3, shadow=8 * s))

    modules = []
    for _ in range(int(rng.integers(1, 4))):
        c, th = trusses[int(rng.integers(len(trusses)))]
        u = np.float32([np.cos(th), np.sin(th)])
        radius = rng.uniform(12, 32) * s
        axis = u if rng.random() < 0.6 else np.float32([-u[1], u[0]])
        mid = c + u * rng.uniform(-0.4, 0.4) * max(h, w)
        length = rng.uniform(2.5, 6.0) * radius
        p0, p1 = mid - axis * length / 2, mid + axis * length / 2
        layers.append(_module(rng, r, p0, p1, axis, radius, s))
        modules.append((mid, axis, radius))
    if rng.random() < 0.75:
        mid, axis, radius = modules[int(rng.integers(len(modules)))]
        layers += _arm(rng, r, mid + np.float32([-axis[1], axis[0]]) * radius * 0.8, s)
    return Scene(layers, shape)


def _pick(rng: np.random.Generator, options: list):
    return options[int(rng.integers(len(options)))]


def _tilted(rng: np.random.Generator, spread: float = 0.6) -> np.ndarray:
    return _unit([rng.uniform(-spread, spread), rng.uniform(-spread, spread), 1.0])


def _solar_wing(rng, r: _Raster, root, u, v, truss_width: float, s: float) -> list[Layer]:
    """A mast and a gridded solar panel sticking out of the truss along ``v``."""
    gap, length, wide = truss_width * rng.uniform(0.8, 2.0), rng.uniform(60, 170) * s, rng.uniform(24, 50) * s
    near = root + v * gap
    far_scale = rng.uniform(0.7, 1.0)  # foreshortening
    quad = [
        near - u * wide / 2,
        near + u * wide / 2,
        near + v * length + u * wide / 2 * far_scale,
        near + v * length - u * wide / 2 * far_scale,
    ]
    cov = r.shapes(polygons=[quad])
    a = (r.x - near[0]) * u[0] + (r.y - near[1]) * u[1]
    b = (r.x - near[0]) * v[0] + (r.y - near[1]) * v[1]
    cell = rng.uniform(4, 8) * s
    grid = (np.mod(a / cell, 1.0) < 0.12) | (np.mod(b / cell, 1.0) < 0.12)
    seam = np.mod(b / (cell * int(rng.integers(4, 9))), 1.0) < 0.05
    base = np.float32(_pick(rng, [(0.05, 0.08, 0.28), (0.09, 0.06, 0.2), (0.04, 0.12, 0.22), (0.06, 0.06, 0.1)]))
    albedo = np.where(grid[..., None], np.float32([0.35, 0.36, 0.4]), base)
    albedo = np.where(seam[..., None], np.float32([0.02, 0.02, 0.02]), albedo)
    mast = r.shapes(lines=[(root, near + v * length * 0.05)], width=max(1.0, 0.25 * truss_width))
    return [
        Layer(mast, np.float32([0.7, 0.7, 0.7]), _tilted(rng, 0.3)),
        Layer(cov, albedo, _tilted(rng, 0.7), specular=0.6, shininess=30.0, shadow=4 * s),
    ]


def _module(rng, r: _Raster, p0, p1, axis, radius: float, s: float) -> Layer:
    """A pressurised module: a cylinder wrapped in white, silver or gold foil with ring bands."""
    colour = np.float32(_pick(rng, [(0.88, 0.88, 0.86), (0.7, 0.72, 0.75), (0.85, 0.65, 0.28)]))
    crinkle = 1.0 + rng.uniform(0.03, 0.1) * _noise(rng, (r.h, r.w), 1.2 * s)
    along = (r.x - p0[0]) * axis[0] + (r.y - p0[1]) * axis[1]
    bands = np.mod(along / (radius * rng.uniform(0.8, 2.0)), 1.0) < 0.06
    albedo = colour * np.clip(crinkle, 0.5, 1.5)[..., None] * np.where(bands, 0.45, 1.0)[..., None]
    return _cylinder(r, p0, p1, radius, albedo.astype(np.float32), specular=0.25, shadow=10 * s)


def _arm(rng, r: _Raster, base, s: float) -> list[Layer]:
    """A robotic arm: two or three white links with dark joints and an end effector."""
    layers, p, heading = [], np.float32(base), rng.uniform(0, 2 * np.pi)
    thick = rng.uniform(4, 7) * s
    joint_colour = np.float32([0.25, 0.25, 0.27])
    joints = [(*p, thick * 1.4)]
    for _ in range(int(rng.integers(2, 4))):
        heading += rng.uniform(-1.6, 1.6)
        q = p + np.float32([np.cos(heading), np.sin(heading)]) * rng.uniform(40, 90) * s
        layers.append(
            _cylinder(r, p, q, thick, np.float32([0.9, 0.9, 0.88]), rounded=True, specular=0.3, shadow=18 * s)
        )
        joints.append((*q, thick * 1.3))
        p = q
    layers.append(Layer(r.shapes(disks=joints), joint_colour, _tilted(rng, 0.3), specular=0.2, shadow=18 * s))
    tip = p + np.float32([np.cos(heading), np.sin(heading)]) * thick * 2
    layers.append(_cylinder(r, p, tip, thick * 1.2, np.float32([0.35, 0.33, 0.3]), shadow=18 * s))
    return layers


# --------------------------------------------------------------------------- road


def _road_light(rng: np.random.Generator) -> Light:
    direction = _unit([rng.uniform(-1, 1), -rng.uniform(0.4, 1.5), rng.uniform(-0.3, 0.8)])
    warm = rng.uniform(-0.08, 0.08)
    tint = _unit([1 + warm, 1.0, 1 - warm]) * np.sqrt(3)
    return Light(direction, float(rng.uniform(0.5, 0.95)), float(rng.uniform(0.3, 0.5)), tint)


def _road_scene(rng: np.random.Generator, shape: tuple[int, int]) -> Scene:
    h, w = shape
    r = _Raster(shape)
    s = h / 240
    yh, xv = h * rng.uniform(0.33, 0.5), w * rng.uniform(0.3, 0.7)
    up = _unit([0.0, -0.9, 0.45])
    facing = lambda: _unit([rng.uniform(-0.4, 0.4), 0.0, 1.0])  # noqa: E731
    layers: list[Layer] = []
    grain, blotch = _noise(rng, shape, 1.0), _noise(rng, shape, 4 * s)

    top, low = _pick(
        rng,
        [
            ((0.25, 0.45, 0.8), (0.7, 0.8, 0.92)),
            ((0.55, 0.57, 0.6), (0.8, 0.8, 0.8)),
            ((0.3, 0.35, 0.6), (0.95, 0.7, 0.45)),
        ],
    )
    t = np.clip(r.y / yh, 0, 1)[..., None]
    sky = np.float32(top) * (1 - t) + np.float32(low) * t
    cloud = np.clip(_noise(rng, shape, 18 * s, aspect=3.0) * rng.uniform(0.2, 0.6) - 0.2, 0, 1)[..., None]
    layers.append(
        Layer(np.ones(shape, np.float32), (sky * (1 - cloud) + 0.95 * cloud).astype(np.float32), receives=False)
    )

    if rng.random() < 0.5:  # far hills or a tree line on the horizon
        ridge = yh - (0.5 + 0.5 * np.clip(_noise(rng, (1, w), 25 * s)[0] * 0.5 + 0.5, 0, 2)) * rng.uniform(6, 25) * s
        cov = np.clip(r.y - ridge[None, :], 0, 1) * (r.y < yh + 2)
        layers.append(Layer(cov.astype(np.float32), np.float32(_pick(rng, [(0.2, 0.3, 0.18), (0.35, 0.4, 0.45)])), up))

    if rng.random() < 0.8:  # buildings standing on the horizon
        x = -rng.uniform(0, 40) * s
        while x < w:
            wide = rng.uniform(30, 110) * s
            if rng.random() < 0.8:
                height = rng.uniform(0.15, 0.95) * yh
                top_y, base = yh + 2 - height, yh + 2
                cov = r.shapes(polygons=[[(x, top_y), (x + wide, top_y), (x + wide, base), (x, base)]])
                colour = np.float32(
                    _pick(
                        rng,
                        [
                            (0.75, 0.7, 0.6),
                            (0.6, 0.6, 0.62),
                            (0.55, 0.32, 0.25),
                            (0.85, 0.82, 0.72),
                            (0.35, 0.38, 0.42),
                        ],
                    )
                )
                colour = colour * rng.uniform(0.85, 1.1)
                pitch_x, pitch_y = rng.uniform(7, 14) * s, rng.uniform(8, 14) * s
                wx, wy = np.mod((r.x - x) / pitch_x, 1.0), np.mod((r.y - top_y) / pitch_y, 1.0)
                window = (wx > 0.3) & (wx < 0.8) & (wy > 0.3) & (wy < 0.8)
                glass = np.float32(_pick(rng, [(0.15, 0.2, 0.25), (0.45, 0.55, 0.65), (0.25, 0.22, 0.2)]))
                albedo = np.where(window[..., None], glass, colour * (1 + 0.04 * blotch)[..., None])
                layers.append(Layer(cov, albedo.astype(np.float32), facing()))
            x += wide + rng.uniform(0, 20) * s

    # ground: verge, pavement, kerb, road, all bounded by lines from the vanishing point
    ground = np.clip(r.y - yh, 0, 1).astype(np.float32)
    verge = np.float32(_pick(rng, [(0.25, 0.38, 0.14), (0.5, 0.48, 0.44), (0.35, 0.4, 0.2)]))
    layers.append(Layer(ground, verge * (1 + 0.12 * grain)[..., None], up))
    xl, xr = xv - w * rng.uniform(0.5, 1.1), xv + w * rng.uniform(0.5, 1.1)
    vp = (xv, yh)
    at_bottom = lambda x0, k: xv + (x0 - xv) * k  # noqa: E731  (a line from the vanishing point, widened)
    edge = lambda x0, y: xv + (x0 - xv) * (y - yh) / (h - yh)  # noqa: E731
    pave = np.float32(_pick(rng, [(0.62, 0.6, 0.57), (0.55, 0.5, 0.48)]))
    for side in (xl, xr):
        outer = at_bottom(side, rng.uniform(1.3, 1.8))
        cov = r.shapes(polygons=[[vp, (outer, h), (side, h)]])
        layers.append(Layer(cov, pave * (1 + 0.06 * grain)[..., None], up))
        kerb = r.shapes(polygons=[[vp, (at_bottom(side, 1.06), h), (side, h)]])
        layers.append(Layer(kerb, np.float32([0.78, 0.77, 0.74]), up))
    asphalt = rng.uniform(0.2, 0.38)
    texture = 1 + 0.12 * grain + 0.08 * _noise(rng, shape, 30 * s)
    road = r.shapes(polygons=[[vp, (xr, h), (xl, h)]])
    layers.append(
        Layer(road, (np.float32([asphalt, asphalt, asphalt * 1.03]) * texture[..., None]).astype(np.float32), up)
    )

    lanes = int(rng.integers(2, 5))
    marks: list = []
    for k in range(1, lanes):
        marks += _dashes(rng, edge, xl + (xr - xl) * k / lanes, yh, h, s)
    for side in (xl, xr):
        inner = at_bottom(side, 0.97)
        marks.append([vp, (inner, h), (at_bottom(side, 0.95), h)])
    paint = np.float32([0.9, 0.88, 0.8]) if rng.random() < 0.8 else np.float32([0.9, 0.75, 0.2])
    wear = np.clip(1 - 0.25 * blotch, 0.5, 1.2)[..., None]
    layers.append(Layer(r.shapes(polygons=marks), (paint * wear).astype(np.float32), up, specular=0.1))

    trees = sorted(rng.uniform(yh + 4, h * 1.15, int(rng.integers(0, 9))))
    for base in trees:  # far to near
        layers += _tree(rng, r, base, yh, edge(xl, base), edge(xr, base), blotch)
    return Scene(layers, shape, horizon=float(yh))


def _dashes(rng, edge, x_bottom: float, yh: float, h: float, s: float) -> list:
    """Dashed lane divider: dashes equally spaced in depth (1 / distance below the horizon)."""
    period, duty, phase = rng.uniform(0.6, 1.2), rng.uniform(0.3, 0.6), rng.uniform(0, 1)
    half = 1.6 * s
    quads, depth = [], 1.0 + phase * period  # depth 1 = bottom row
    while depth < 40:
        y0, y1 = yh + (h - yh) / (depth + duty * period), yh + (h - yh) / depth
        w0, w1 = half * (y0 - yh) / (h - yh), half * (y1 - yh) / (h - yh)
        x0, x1 = edge(x_bottom, y0), edge(x_bottom, y1)
        quads.append([(x0 - w0, y0), (x0 + w0, y0), (x1 + w1, y1), (x1 - w1, y1)])
        depth += period
    return quads


def _tree(
    rng, r: _Raster, base: float, yh: float, road_left: float, road_right: float, leafy: np.ndarray
) -> list[Layer]:
    """A roadside tree (its ground shadow, trunk and leafy crown), sized by perspective."""
    size = (base - yh) * rng.uniform(0.9, 1.6)
    margin = size * rng.uniform(0.25, 0.6)
    x = road_left - margin if rng.random() < 0.5 else road_right + margin
    trunk_w, trunk_h = size * 0.06, size * 0.5
    crown_c = np.float32([x, base - trunk_h - size * 0.2])
    radius = size * rng.uniform(0.2, 0.3)
    blobs = [
        (*(crown_c + rng.uniform(-0.8, 0.8, 2).astype(np.float32) * radius), radius * rng.uniform(0.6, 1.0))
        for _ in range(6)
    ]
    shadow_c = (x + rng.uniform(-1, 1) * size * 0.4, base + size * 0.05)
    shadow = r.shapes(polygons=[_ellipse(shadow_c, radius * 1.5, radius * 0.35)]) * 0.45
    trunk = r.shapes(
        polygons=[
            [(x - trunk_w, base - trunk_h), (x + trunk_w, base - trunk_h), (x + trunk_w, base), (x - trunk_w, base)]
        ]
    )
    crown = r.shapes(disks=blobs)
    green = np.float32([rng.uniform(0.12, 0.3), rng.uniform(0.28, 0.45), rng.uniform(0.06, 0.14)])
    leaves = np.clip(1 + 0.3 * leafy, 0.4, 1.6)[..., None]
    nxy = np.stack([(r.x - crown_c[0]) / (radius * 2), (r.y - crown_c[1]) / (radius * 2)], -1)
    nz = np.sqrt(np.clip(1 - (nxy**2).sum(-1, keepdims=True), 0.05, 1))
    return [
        Layer(shadow, np.float32([0, 0, 0])),
        Layer(trunk, np.float32([0.3, 0.22, 0.15]), _unit([0, 0, 1])),
        Layer(crown, (green * leaves).astype(np.float32), np.concatenate([nxy, nz], -1)),
    ]


def _ellipse(centre, rx: float, ry: float, n: int = 24) -> list:
    a = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return list(zip(centre[0] + rx * np.cos(a), centre[1] + ry * np.sin(a)))


_SCENES = {"orbital": (_orbital_scene, _orbital_light), "road": (_road_scene, _road_light)}


def _expose(radiance: np.ndarray, noise: np.ndarray) -> np.ndarray:
    return np.clip(radiance * 255.0 + noise + 0.5, 0, 255).astype(np.uint8)


def _sensor_noise(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    return rng.normal(0.0, rng.uniform(1.0, 4.0), (*shape, 3)).astype(np.float32)


def inlier_image(domain: str, rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """A random inlier scene of ``domain``: H x W x 3 uint8 RGB."""
    _check_domain(domain)
    scene_fn, light_fn = _SCENES[domain]
    scene = scene_fn(rng, size)
    return _expose(render(scene, light_fn(rng)), _sensor_noise(rng, size))


# --------------------------------------------------------------------------- outlier objects


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
        mask = d + 0.3 * _noise(rng, shape, min(h, w) / rng.uniform(2.5, 5)) < 0.85
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
    _check_domain(domain)
    scene_fn, light_fn = _SCENES[domain]
    scene = scene_fn(rng, size)
    radiance = render(scene, light_fn(rng))
    h, w = size
    pool = sources(domain, "test")
    placed = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        obj, mask = cut_object(_pick(rng, pool), rng, longest=max(h, w))
        if scene.horizon is None:
            height = int(h * rng.uniform(0.15, 0.5))
            top, left = int(rng.uniform(-0.1, 0.95) * h - height / 2), int(rng.uniform(0.0, 1.0) * w - height / 2)
        else:  # on the ground, sized by perspective
            base = rng.uniform(scene.horizon + 0.15 * (h - scene.horizon), h * 1.05)
            height = int(max(0.08 * h, (base - scene.horizon) * rng.uniform(0.5, 1.1)))
            top, left = int(base - height), int(rng.uniform(0.1, 0.9) * w - height / 2)
        placed.append(_place(obj, mask, height, top, left, gain=rng.uniform(0.6, 1.1)))
    mixed, cover = _composite(radiance, placed)
    noise = _sensor_noise(rng, size)
    return AnomalySample(_expose(mixed, noise), _labels(cover), _expose(radiance, noise))


# --------------------------------------------------------------------------- camera sequence


def sequence(
    domain: str, frames: int, size: tuple[int, int] = (240, 320), seed: int = 0
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Temporally coherent camera frames ``(rgb, gt)`` (gt: 0/1/255) of one scene.

    The camera pans slowly over a larger canvas, the sun drifts and its strength changes,
    and held-out objects drift through the view (on the road they approach the camera and
    grow), so some frames hold no anomaly at all.
    """
    _check_domain(domain)
    if frames < 1:
        raise ValueError(f"frames must be positive, got {frames}")
    rng = np.random.default_rng([seed, DOMAINS.index(domain), 7])
    h, w = size
    my, mx = max(2, h // 10), max(2, w // 5)
    scene_fn, light_fn = _SCENES[domain]
    scene = scene_fn(rng, (h + 2 * my, w + 2 * mx))
    light = light_fn(rng)
    pan = rng.uniform(0, 2 * np.pi, 2)
    sway = rng.uniform(0.2, 0.6)
    pool = sources(domain, "test")
    tracks = []
    for _ in range(max(1, frames // 30)):
        obj, mask = cut_object(_pick(rng, pool), rng, longest=max(h, w))
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
        yield _expose(mixed, _sensor_noise(rng, size)), _labels(cover)


# --------------------------------------------------------------------------- dataset writer


def _item_rng(seed: int, domain: str, split: str, index: int) -> np.random.Generator:
    """Each item has its own stream: item i is the same whatever the number of items asked."""
    return np.random.default_rng([seed, DOMAINS.index(domain), ("train", "test", "outliers").index(split), index])


def outlier_item(domain: str, seed: int, index: int, longest: int) -> tuple[np.ndarray, np.ndarray]:
    """Outlier folder item ``index``: a crop from a train-split source and its mask (254 object, 0 background).

    The crop's longest side is ``longest`` unless that would enlarge it more than twice.
    """
    rng = _item_rng(seed, domain, "outliers", index)
    image, mask = cut_object(_pick(rng, sources(domain, "train")), rng, longest, max_zoom=2.0)
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

    _check_domain(domain)
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


# --------------------------------------------------------------------------- command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", required=True, help="dataset folder (train/, test/, outliers/, preview.png)")
    parser.add_argument("--domain", default="orbital", choices=DOMAINS, help="scene domain (default: orbital)")
    parser.add_argument("--train", type=int, default=200, help="inlier training images (default: 200)")
    parser.add_argument("--test", type=int, default=50, help="test images with anomalies and masks (default: 50)")
    parser.add_argument("--outliers", type=int, default=100, help="outlier crops for pasting (default: 100)")
    parser.add_argument("--height", type=int, default=240, help="image height (default: 240)")
    parser.add_argument("--width", type=int, default=320, help="image width (default: 320)")
    parser.add_argument("--seed", type=int, default=0, help="random seed: same seed, same bytes (default: 0)")
    parser.add_argument("--bag", default=None, help="also write a camera rosbag2 of a moving sequence here")
    parser.add_argument("--bag-frames", type=int, default=100, help="frames in the bag (default: 100)")
    parser.add_argument("--bag-rate", type=float, default=10.0, help="bag frame rate in Hz (default: 10)")
    parser.add_argument("--bag-storage", default="sqlite3", choices=["sqlite3", "mcap"], help="rosbag2 storage")


def _validate(args: argparse.Namespace) -> None:
    from flowclas_ros.errors import UserError

    for name in ("train", "test", "outliers"):
        if getattr(args, name) < 0:
            raise UserError(f"--{name} must be zero or more, got {getattr(args, name)}")
    for name in ("height", "width"):
        if not 32 <= getattr(args, name) <= 4096:
            raise UserError(f"--{name} must be between 32 and 4096, got {getattr(args, name)}")
    if args.seed < 0:
        raise UserError(f"--seed must be zero or more, got {args.seed}")
    if args.bag is not None:
        if args.bag_frames < 1:
            raise UserError(f"--bag-frames must be at least 1, got {args.bag_frames}")
        if not args.bag_rate > 0:
            raise UserError(f"--bag-rate must be positive, got {args.bag_rate}")
        if Path(args.bag).exists():
            raise UserError(f"--bag {args.bag} already exists; rosbag2 writes a new folder")
    if Path(args.output).exists() and not Path(args.output).is_dir():
        raise UserError(f"--output {args.output} is a file, not a folder")


def run(args: argparse.Namespace) -> int:
    """``flowclas synth``: the folder-layout dataset, its outlier folder, a preview, optionally a bag."""
    import json

    _validate(args)
    size = (args.height, args.width)
    root = Path(args.output)
    counts = write_dataset(root, args.domain, args.train, args.test, args.outliers, size, args.seed)
    info = {
        "domain": args.domain,
        "seed": args.seed,
        "size": list(size),
        "counts": counts,
        "labels": {
            "test": {"inlier": INLIER, "anomaly": ANOMALY, "void": VOID},
            "outliers": {"object": OBJECT, "background": 0},
        },
        "void": "anti-aliased object edge pixels (coverage strictly between 0 and 1)",
        "sources": {split: [s.name for s in sources(args.domain, split)] for split in SPLITS},
        "sources_note": "scikit-image bundled pictures; train sources fill outliers/, "
        "test sources are held out for test/ and the bag",
    }
    (root / "synth.json").write_text(json.dumps(info, indent=2) + "\n")
    print(f"flowclas synth: {args.domain}, {args.height}x{args.width}, seed {args.seed} -> {root}")
    for folder, n in counts.items():
        print(f"  {n:6d} files in {root / folder}")
    if args.train or args.test or args.outliers:
        print(f"  preview: {preview(root, root / 'preview.png')}")
    if args.bag is not None:
        from tqdm import tqdm

        from flowclas_ros.bagio import write_camera_bag

        frames = tqdm(
            sequence(args.domain, args.bag_frames, size, args.seed),
            total=args.bag_frames,
            desc="synth bag",
            unit="frame",
        )
        bag = write_camera_bag(args.bag, frames, rate_hz=args.bag_rate, storage=args.bag_storage)
        print(
            f"  camera bag ({args.bag_frames} frames, /camera/image_raw + /camera/anomaly_gt, "
            f"{args.bag_storage}): {bag}"
        )
    return 0
