"""Inlier scenes of the domains (``orbital``, ``road``, ``terrain``, ``warehouse``, ``underwater``) and ``inlier_image``."""

from __future__ import annotations

import numpy as np

from flowclas_ros.synthetic.render import Layer, Light, Raster, Scene, cylinder, expose, noise, render, sensor_noise

DOMAINS = ("orbital", "road", "terrain", "warehouse", "underwater")


def check_domain(domain: str) -> None:
    """Raise ValueError unless ``domain`` is one of ``DOMAINS``."""
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; choose from {', '.join(DOMAINS)}")


def _unit(v) -> np.ndarray:
    v = np.asarray(v, np.float32)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


# --------------------------------------------------------------------------- orbital


def _orbital_light(rng: np.random.Generator) -> Light:
    elevation, azimuth = rng.uniform(-0.25, 1.2), rng.uniform(0, 2 * np.pi)
    direction = [np.cos(elevation) * np.cos(azimuth), np.cos(elevation) * np.sin(azimuth), np.sin(elevation)]
    tint = _unit(1.0 + rng.uniform(-0.04, 0.04, 3)) * np.sqrt(3)
    return Light(_unit(direction), float(rng.uniform(0.8, 1.5)), float(rng.uniform(0.02, 0.08)), tint)


def _orbital_scene(rng: np.random.Generator, shape: tuple[int, int]) -> Scene:
    h, w = shape
    r = Raster(shape)
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
            noise(rng, shape, 20 * s, aspect=2.0) + 0.5 * noise(rng, shape, 5 * s) + 0.3 * noise(rng, shape, 2 * s)
        )
        clouds = np.clip(swirl * 0.5 - 0.2, 0, 1)[..., None]
        land = (noise(rng, shape, 40 * s) > 1.0)[..., None]
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
    truss_colour = np.float32(pick(rng, [(0.75, 0.75, 0.74), (0.85, 0.84, 0.8), (0.75, 0.6, 0.3)]))
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


def pick(rng: np.random.Generator, options: list):
    """One of ``options``, drawn uniformly."""
    return options[int(rng.integers(len(options)))]


def _tilted(rng: np.random.Generator, spread: float = 0.6) -> np.ndarray:
    return _unit([rng.uniform(-spread, spread), rng.uniform(-spread, spread), 1.0])


def _solar_wing(rng, r: Raster, root, u, v, truss_width: float, s: float) -> list[Layer]:
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
    base = np.float32(pick(rng, [(0.05, 0.08, 0.28), (0.09, 0.06, 0.2), (0.04, 0.12, 0.22), (0.06, 0.06, 0.1)]))
    albedo = np.where(grid[..., None], np.float32([0.35, 0.36, 0.4]), base)
    albedo = np.where(seam[..., None], np.float32([0.02, 0.02, 0.02]), albedo)
    mast = r.shapes(lines=[(root, near + v * length * 0.05)], width=max(1.0, 0.25 * truss_width))
    return [
        Layer(mast, np.float32([0.7, 0.7, 0.7]), _tilted(rng, 0.3)),
        Layer(cov, albedo, _tilted(rng, 0.7), specular=0.6, shininess=30.0, shadow=4 * s),
    ]


def _module(rng, r: Raster, p0, p1, axis, radius: float, s: float) -> Layer:
    """A pressurised module: a cylinder wrapped in white, silver or gold foil with ring bands."""
    colour = np.float32(pick(rng, [(0.88, 0.88, 0.86), (0.7, 0.72, 0.75), (0.85, 0.65, 0.28)]))
    crinkle = 1.0 + rng.uniform(0.03, 0.1) * noise(rng, (r.h, r.w), 1.2 * s)
    along = (r.x - p0[0]) * axis[0] + (r.y - p0[1]) * axis[1]
    bands = np.mod(along / (radius * rng.uniform(0.8, 2.0)), 1.0) < 0.06
    albedo = colour * np.clip(crinkle, 0.5, 1.5)[..., None] * np.where(bands, 0.45, 1.0)[..., None]
    return cylinder(r, p0, p1, radius, albedo.astype(np.float32), specular=0.25, shadow=10 * s)


def _arm(rng, r: Raster, base, s: float) -> list[Layer]:
    """A robotic arm: two or three white links with dark joints and an end effector."""
    layers, p, heading = [], np.float32(base), rng.uniform(0, 2 * np.pi)
    thick = rng.uniform(4, 7) * s
    joint_colour = np.float32([0.25, 0.25, 0.27])
    joints = [(*p, thick * 1.4)]
    for _ in range(int(rng.integers(2, 4))):
        heading += rng.uniform(-1.6, 1.6)
        q = p + np.float32([np.cos(heading), np.sin(heading)]) * rng.uniform(40, 90) * s
        layers.append(
            cylinder(r, p, q, thick, np.float32([0.9, 0.9, 0.88]), rounded=True, specular=0.3, shadow=18 * s)
        )
        joints.append((*q, thick * 1.3))
        p = q
    layers.append(Layer(r.shapes(disks=joints), joint_colour, _tilted(rng, 0.3), specular=0.2, shadow=18 * s))
    tip = p + np.float32([np.cos(heading), np.sin(heading)]) * thick * 2
    layers.append(cylinder(r, p, tip, thick * 1.2, np.float32([0.35, 0.33, 0.3]), shadow=18 * s))
    return layers


# --------------------------------------------------------------------------- road


def _road_light(rng: np.random.Generator) -> Light:
    direction = _unit([rng.uniform(-1, 1), -rng.uniform(0.4, 1.5), rng.uniform(-0.3, 0.8)])
    warm = rng.uniform(-0.08, 0.08)
    tint = _unit([1 + warm, 1.0, 1 - warm]) * np.sqrt(3)
    return Light(direction, float(rng.uniform(0.5, 0.95)), float(rng.uniform(0.3, 0.5)), tint)


def _road_scene(rng: np.random.Generator, shape: tuple[int, int]) -> Scene:
    h, w = shape
    r = Raster(shape)
    s = h / 240
    yh, xv = h * rng.uniform(0.33, 0.5), w * rng.uniform(0.3, 0.7)
    up = _unit([0.0, -0.9, 0.45])
    facing = lambda: _unit([rng.uniform(-0.4, 0.4), 0.0, 1.0])  # noqa: E731
    layers: list[Layer] = []
    grain, blotch = noise(rng, shape, 1.0), noise(rng, shape, 4 * s)

    top, low = pick(
        rng,
        [
            ((0.25, 0.45, 0.8), (0.7, 0.8, 0.92)),
            ((0.55, 0.57, 0.6), (0.8, 0.8, 0.8)),
            ((0.3, 0.35, 0.6), (0.95, 0.7, 0.45)),
        ],
    )
    t = np.clip(r.y / yh, 0, 1)[..., None]
    sky = np.float32(top) * (1 - t) + np.float32(low) * t
    cloud = np.clip(noise(rng, shape, 18 * s, aspect=3.0) * rng.uniform(0.2, 0.6) - 0.2, 0, 1)[..., None]
    layers.append(
        Layer(np.ones(shape, np.float32), (sky * (1 - cloud) + 0.95 * cloud).astype(np.float32), receives=False)
    )

    if rng.random() < 0.5:  # far hills or a tree line on the horizon
        ridge = yh - (0.5 + 0.5 * np.clip(noise(rng, (1, w), 25 * s)[0] * 0.5 + 0.5, 0, 2)) * rng.uniform(6, 25) * s
        cov = np.clip(r.y - ridge[None, :], 0, 1) * (r.y < yh + 2)
        layers.append(Layer(cov.astype(np.float32), np.float32(pick(rng, [(0.2, 0.3, 0.18), (0.35, 0.4, 0.45)])), up))

    if rng.random() < 0.8:  # buildings standing on the horizon
        x = -rng.uniform(0, 40) * s
        while x < w:
            wide = rng.uniform(30, 110) * s
            if rng.random() < 0.8:
                height = rng.uniform(0.15, 0.95) * yh
                top_y, base = yh + 2 - height, yh + 2
                cov = r.shapes(polygons=[[(x, top_y), (x + wide, top_y), (x + wide, base), (x, base)]])
                colour = np.float32(
                    pick(
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
                glass = np.float32(pick(rng, [(0.15, 0.2, 0.25), (0.45, 0.55, 0.65), (0.25, 0.22, 0.2)]))
                albedo = np.where(window[..., None], glass, colour * (1 + 0.04 * blotch)[..., None])
                layers.append(Layer(cov, albedo.astype(np.float32), facing()))
            x += wide + rng.uniform(0, 20) * s

    # ground: verge, pavement, kerb, road, all bounded by lines from the vanishing point
    ground = np.clip(r.y - yh, 0, 1).astype(np.float32)
    verge = np.float32(pick(rng, [(0.25, 0.38, 0.14), (0.5, 0.48, 0.44), (0.35, 0.4, 0.2)]))
    layers.append(Layer(ground, verge * (1 + 0.12 * grain)[..., None], up))
    xl, xr = xv - w * rng.uniform(0.5, 1.1), xv + w * rng.uniform(0.5, 1.1)
    vp = (xv, yh)
    at_bottom = lambda x0, k: xv + (x0 - xv) * k  # noqa: E731  (a line from the vanishing point, widened)
    edge = lambda x0, y: xv + (x0 - xv) * (y - yh) / (h - yh)  # noqa: E731
    pave = np.float32(pick(rng, [(0.62, 0.6, 0.57), (0.55, 0.5, 0.48)]))
    for side in (xl, xr):
        outer = at_bottom(side, rng.uniform(1.3, 1.8))
        cov = r.shapes(polygons=[[vp, (outer, h), (side, h)]])
        layers.append(Layer(cov, pave * (1 + 0.06 * grain)[..., None], up))
        kerb = r.shapes(polygons=[[vp, (at_bottom(side, 1.06), h), (side, h)]])
        layers.append(Layer(kerb, np.float32([0.78, 0.77, 0.74]), up))
    asphalt = rng.uniform(0.2, 0.38)
    texture = 1 + 0.12 * grain + 0.08 * noise(rng, shape, 30 * s)
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
    rng, r: Raster, base: float, yh: float, road_left: float, road_right: float, leafy: np.ndarray
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


# --------------------------------------------------------------------------- ground scenes
# terrain (a planetary rover's view), warehouse (indoor aisle), underwater (seabed): a
# horizon row, a perspective ground below it, and domain furniture standing on the ground.


def _ground_light(rng: np.random.Generator) -> Light:
    direction = _unit([rng.uniform(-1, 1), -rng.uniform(0.3, 1.5), rng.uniform(0.0, 0.8)])
    tint = _unit(1.0 + rng.uniform(-0.06, 0.06, 3)) * np.sqrt(3)
    return Light(direction, float(rng.uniform(0.6, 1.1)), float(rng.uniform(0.2, 0.45)), tint)


def _gradient(r: Raster, top, bottom, y0: float, y1: float) -> np.ndarray:
    t = np.clip((r.y - y0) / max(1.0, y1 - y0), 0, 1)[..., None]
    return (np.float32(top) * (1 - t) + np.float32(bottom) * t).astype(np.float32)


def _bumpy(rng, shape, cell: float, strength: float) -> np.ndarray:
    """Normals of a gently bumpy ground seen from above the horizon."""
    gx, gy = noise(rng, shape, cell), noise(rng, shape, cell)
    return _unit(np.stack([strength * gx, -0.9 + strength * gy, np.full(shape, 0.45, np.float32)], -1))


def _blob(rng, centre, rx: float, ry: float, n: int = 14) -> list:
    a = np.sort(rng.uniform(0, 2 * np.pi, n))
    k = rng.uniform(0.7, 1.0, n)
    return list(zip(centre[0] + rx * k * np.cos(a), centre[1] + ry * k * np.sin(a)))


def _rock(rng, r: Raster, x: float, base: float, size: float, colour) -> Layer:
    """A shaded rock resting on the ground at (x, base), ``size`` px wide."""
    rx, ry = size / 2, size * rng.uniform(0.25, 0.45)
    centre = np.float32([x, base - ry * 0.8])
    cov = r.shapes(polygons=[_blob(rng, centre, rx, ry)])
    nxy = np.stack([(r.x - centre[0]) / (rx * 1.3), (r.y - centre[1]) / (ry * 1.3)], -1)
    nz = np.sqrt(np.clip(1 - (nxy**2).sum(-1, keepdims=True), 0.05, 1))
    albedo = np.float32(colour) * rng.uniform(0.7, 1.2)
    return Layer(cov, albedo, np.concatenate([nxy, nz], -1), specular=0.05, shadow=size * 0.3)


def _terrain_scene(rng: np.random.Generator, shape: tuple[int, int]) -> Scene:
    h, w = shape
    r = Raster(shape)
    s = h / 240
    yh = h * rng.uniform(0.2, 0.45)
    layers: list[Layer] = []
    top, low = pick(rng, [((0.0, 0.0, 0.0), (0.05, 0.05, 0.06)), ((0.55, 0.42, 0.3), (0.8, 0.65, 0.5)),
                          ((0.35, 0.45, 0.6), (0.75, 0.72, 0.7))])
    layers.append(Layer(np.ones(shape, np.float32), _gradient(r, top, low, 0, yh), receives=False))
    soil = np.float32(pick(rng, [(0.55, 0.35, 0.22), (0.5, 0.48, 0.45), (0.62, 0.5, 0.36), (0.35, 0.3, 0.28)]))
    for k in range(int(rng.integers(1, 3))):  # far ridges
        ridge = yh - (1 + noise(rng, (1, w), rng.uniform(20, 60) * s)[0] * 0.5) * rng.uniform(5, 30) * s * (k + 1)
        cov = np.clip(r.y - ridge[None, :], 0, 1) * (r.y < yh + 2)
        layers.append(Layer(cov.astype(np.float32), soil * rng.uniform(0.6, 0.9) * np.float32([1, 1, 1.05]),
                            _unit([0, -0.5, 1.0])))
    grain, blotch = noise(rng, shape, 1.0), noise(rng, shape, 12 * s)
    ground = np.clip(r.y - yh, 0, 1).astype(np.float32)
    albedo = soil * (1 + 0.08 * grain + 0.15 * blotch)[..., None]
    layers.append(Layer(ground, albedo.astype(np.float32), _bumpy(rng, shape, 15 * s, 0.25)))
    for _ in range(int(rng.integers(0, 3))):  # craters: a dark bowl with a lit rim
        base = rng.uniform(yh + 0.1 * (h - yh), h)
        cx, rx = rng.uniform(0, w), (base - yh) * rng.uniform(0.3, 0.9)
        bowl = r.shapes(polygons=[_ellipse((cx, base), rx, rx * 0.25)])
        rim = r.shapes(polygons=[_ellipse((cx, base - rx * 0.04), rx * 1.1, rx * 0.3)])
        layers.append(Layer(rim, soil * 1.15, _unit([0, -0.9, 0.45])))
        layers.append(Layer(bowl, soil * 0.7, _unit([0, 0.3, 1.0])))
    if rng.random() < 0.5:  # wheel tracks towards the vanishing point
        xv, spread = rng.uniform(0.3, 0.7) * w, rng.uniform(0.2, 0.4) * w
        for side in (-1, 1):
            x0 = xv + side * spread
            quad = [(xv + side * 2, yh + 2), (x0 + 6 * s, h), (x0 - 6 * s, h)]
            layers.append(Layer(r.shapes(polygons=[quad]) * 0.6, soil * 0.6, _unit([0, -0.9, 0.45])))
    rock_colour = soil * np.float32([0.8, 0.8, 0.85])
    for base in sorted(rng.uniform(yh + 3, h * 1.1, int(rng.integers(4, 25)))):
        size = (base - yh) * rng.uniform(0.05, 0.35)
        layers.append(_rock(rng, r, rng.uniform(0, w), base, max(2.0, size), rock_colour))
    return Scene(layers, shape, horizon=float(yh))


def _warehouse_scene(rng: np.random.Generator, shape: tuple[int, int]) -> Scene:
    h, w = shape
    r = Raster(shape)
    s = h / 240
    yh = h * rng.uniform(0.3, 0.45)
    xv = w * rng.uniform(0.35, 0.65)
    layers: list[Layer] = []
    wall = np.float32(pick(rng, [(0.75, 0.75, 0.72), (0.6, 0.62, 0.65), (0.8, 0.76, 0.68)]))
    layers.append(Layer(np.ones(shape, np.float32), wall * (1 + 0.03 * noise(rng, shape, 8 * s))[..., None],
                        _unit([0, 0, 1.0])))
    for x in np.arange(rng.uniform(0, 60) * s, w, rng.uniform(50, 90) * s):  # ceiling lamps
        layers.append(Layer(r.shapes(polygons=[[(x, 4 * s), (x + 25 * s, 4 * s), (x + 25 * s, 9 * s), (x, 9 * s)]]),
                            np.float32([1.0, 1.0, 0.95]), receives=False))
    floor = np.float32(pick(rng, [(0.5, 0.5, 0.5), (0.45, 0.47, 0.5), (0.55, 0.52, 0.45)]))
    grain = noise(rng, shape, 1.0)
    layers.append(Layer(np.clip(r.y - yh, 0, 1).astype(np.float32),
                        floor * (1 + 0.06 * grain + 0.08 * noise(rng, shape, 20 * s))[..., None],
                        _unit([0, -0.9, 0.45]), specular=0.15))
    line = np.float32([0.85, 0.7, 0.1])
    for k in rng.uniform(0.25, 0.6, 2) * np.array([-1, 1]):  # painted aisle lines
        x0 = xv + k * w * 2
        layers.append(Layer(r.shapes(polygons=[[(xv + k * 8, yh + 1), (x0 + 5 * s, h), (x0 - 5 * s, h)]]), line,
                            _unit([0, -0.9, 0.45])))
    upright = np.float32(pick(rng, [(0.85, 0.45, 0.1), (0.2, 0.3, 0.6), (0.5, 0.5, 0.52)]))
    beam = np.float32(pick(rng, [(0.9, 0.55, 0.1), (0.15, 0.25, 0.55)]))
    for side in (-1, 1):  # a rack on each side of the aisle, in perspective
        near = xv + side * w * rng.uniform(0.35, 0.6)
        top_near, top_far = -0.2 * h, yh - (yh * 0.75)
        levels = int(rng.integers(3, 5))
        for j in range(levels + 1):
            f = j / levels
            y_near, y_far = top_near + (h * 0.95 - top_near) * f, top_far + (yh - top_far) * f
            xf = xv + side * w * 0.06
            layers.append(Layer(r.shapes(lines=[((near, y_near), (xf, y_far))], width=3 * s), beam,
                                _unit([0, 0, 1.0])))
        for d in np.linspace(0, 1, int(rng.integers(3, 6))):  # boxes between beams, near to far
            xa = near + (xv + side * w * 0.06 - near) * d
            for j in range(levels):
                if rng.random() < 0.3:
                    continue
                f0, f1 = j / levels, (j + 1) / levels
                y0 = top_near + (h * 0.95 - top_near) * f0
                y1 = top_near + (h * 0.95 - top_near) * f1
                scale = 1 - 0.8 * d
                yy0, yy1 = yh + (y0 - yh) * scale, yh + (y1 - yh) * scale
                bw = 40 * s * scale * rng.uniform(0.6, 1.0)
                box = [(xa - bw / 2, yy0 + (yy1 - yy0) * rng.uniform(0.2, 0.5)), (xa + bw / 2, yy0 + (yy1 - yy0) * 0.3),
                       (xa + bw / 2, yy1 - 2), (xa - bw / 2, yy1 - 2)]
                colour = np.float32(pick(rng, [(0.6, 0.45, 0.3), (0.65, 0.5, 0.35), (0.85, 0.85, 0.82), (0.3, 0.4, 0.6)]))
                layers.append(Layer(r.shapes(polygons=[box]), colour * rng.uniform(0.8, 1.1),
                                    _unit([side * -0.3, 0, 1.0]), shadow=4 * s))
        layers.append(Layer(r.shapes(lines=[((near, -10), (near, h))], width=6 * s), upright, _unit([0, 0, 1.0])))
    for _ in range(int(rng.integers(0, 3))):  # pallets on the floor
        base = rng.uniform(yh + 0.2 * (h - yh), h)
        size = (base - yh) * rng.uniform(0.6, 1.0)
        x = rng.uniform(0.1, 0.9) * w
        top = base - size * 0.15
        quad = [(x - size / 2, top), (x + size / 2, top), (x + size / 2, base), (x - size / 2, base)]
        layers.append(Layer(r.shapes(polygons=[quad]), np.float32([0.6, 0.48, 0.3]), _unit([0, -0.3, 1.0]), shadow=3 * s))
    return Scene(layers, shape, horizon=float(yh))


def _underwater_scene(rng: np.random.Generator, shape: tuple[int, int]) -> Scene:
    h, w = shape
    r = Raster(shape)
    s = h / 240
    yh = h * rng.uniform(0.25, 0.5)
    layers: list[Layer] = []
    deep, shallow = pick(rng, [((0.02, 0.12, 0.25), (0.1, 0.4, 0.5)), ((0.02, 0.18, 0.18), (0.15, 0.45, 0.35)),
                               ((0.05, 0.1, 0.3), (0.2, 0.35, 0.55))])
    water = _gradient(r, shallow, deep, 0, yh * 1.2)
    rays = np.clip(noise(rng, shape, 25 * s, aspect=0.15) * 0.15, 0, None)[..., None]
    layers.append(Layer(np.ones(shape, np.float32), (water + rays).astype(np.float32), receives=False))
    sand = np.float32(pick(rng, [(0.7, 0.65, 0.5), (0.55, 0.52, 0.42), (0.45, 0.45, 0.4)]))
    ripple = np.sin(r.y / (3 * s) * (1 + (r.y - yh).clip(0) / h) + 2 * noise(rng, shape, 15 * s))
    caustic = np.clip(1 - np.abs(noise(rng, shape, 6 * s)), 0, 1) ** 4
    albedo = sand * (1 + 0.1 * ripple + 0.35 * caustic)[..., None]
    layers.append(Layer(np.clip(r.y - yh, 0, 1).astype(np.float32), albedo.astype(np.float32),
                        _bumpy(rng, shape, 10 * s, 0.2)))
    rock_colour = np.float32(pick(rng, [(0.35, 0.38, 0.35), (0.4, 0.35, 0.3)]))
    for base in sorted(rng.uniform(yh + 3, h * 1.1, int(rng.integers(2, 10)))):
        layers.append(_rock(rng, r, rng.uniform(0, w), base, max(3.0, (base - yh) * rng.uniform(0.1, 0.5)), rock_colour))
        if rng.random() < 0.6:  # weed growing off the rock
            x = rng.uniform(0, w)
            for _ in range(int(rng.integers(2, 6))):
                height = (base - yh) * rng.uniform(0.3, 1.2)
                pts = [(x + rng.uniform(-0.1, 0.1) * height, base - height * k / 4) for k in range(5)]
                segs = list(zip(pts[:-1], pts[1:]))
                green = np.float32([rng.uniform(0.1, 0.3), rng.uniform(0.35, 0.55), rng.uniform(0.1, 0.25)])
                layers.append(Layer(r.shapes(lines=segs, width=max(1.0, height * 0.06)), green, _unit([0, 0, 1.0])))
    haze = np.clip(1 - (r.y - yh) / (0.5 * (h - yh)), 0, 1) * (r.y > yh) * rng.uniform(0.3, 0.7)
    layers.append(Layer(haze.astype(np.float32), water, receives=False))
    return Scene(layers, shape, horizon=float(yh))


# domain: (scene builder, light drawer), both taking the random generator
SCENES = {
    "orbital": (_orbital_scene, _orbital_light),
    "road": (_road_scene, _road_light),
    "terrain": (_terrain_scene, _ground_light),
    "warehouse": (_warehouse_scene, _ground_light),
    "underwater": (_underwater_scene, _ground_light),
}


def inlier_image(domain: str, rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """A random inlier scene of ``domain``: H x W x 3 uint8 RGB."""
    check_domain(domain)
    scene_fn, light_fn = SCENES[domain]
    scene = scene_fn(rng, size)
    return expose(render(scene, light_fn(rng)), sensor_noise(rng, size))
