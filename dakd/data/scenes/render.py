"""Painting scenes: the painter, background, facades, vehicles, people, street furniture,
noise and post-processing, scene assembly, and the public rendering functions."""

from __future__ import annotations

import hashlib
import math
from functools import lru_cache
from pathlib import Path

import numpy as np

from dakd.data.labels import IGNORE_INDEX, NUM_CLASSES
from dakd.data.scenes.layout import (
    _TINY,
    _box,
    _Camera,
    _Canvas,
    _check_domain,
    _check_index,
    _check_seed,
    _check_size,
    _check_split,
    _disc,
    _pick,
    _pixel_centres,
    _plane,
    _poisson,
    _ring,
    _scene_rng,
    _sprite,
    _stroke,
)
from dakd.data.scenes.styles import (
    BICYCLE,
    BUILDING,
    BUS,
    CAR,
    DEFAULT_SIZE,
    FENCE,
    LIGHT,
    MOTORCYCLE,
    PERSON,
    POLE,
    RIDER,
    ROAD,
    SIDEWALK,
    SIGN,
    SKY,
    TERRAIN,
    TRAIN,
    TRUCK,
    VEGETATION,
    WALL,
    DomainStyle,
    randomized_style,
)

# --------------------------------------------------------------------------------------------
# Scene sampling helpers
# --------------------------------------------------------------------------------------------


class _Painter:
    """Per-scene state shared by the drawing routines."""

    def __init__(self, style: DomainStyle, rng: np.random.Generator, canvas: _Canvas,
                 cam: _Camera):  # fmt: skip
        self.style, self.rng, self.canvas, self.cam = style, rng, canvas, cam
        scene = 1.0 + style.scene_jitter * rng.standard_normal((NUM_CLASSES, 1))
        self.palette = np.clip(
            np.asarray(style.class_colors, dtype=np.float32) / 255.0 * scene, 0, 1
        ).astype(np.float32)

    def jitter(self, color, amount: float | None = None) -> np.ndarray:
        """A per-instance variation of a colour (0..1 floats or 0..255 ints)."""
        s = self.style
        amount = s.color_jitter if amount is None else amount
        e = self.rng.standard_normal(4).tolist()
        scale = (1.0 / 255.0 if max(color) > 1.0 else 1.0) * (1.0 + amount * e[0])
        return np.array(
            [
                min(max(v * scale * (1.0 + s.hue_jitter * n), 0.0), 1.0)
                for v, n in zip(color, e[1:])
            ],
            dtype=np.float32,
        )

    def cls_color(self, cls: int, amount: float | None = None) -> np.ndarray:
        return self.jitter(self.palette[cls], amount)

    def pick(self, colors) -> np.ndarray:
        return self.jitter(colors[self.rng.integers(len(colors))])


# --------------------------------------------------------------------------------------------
# Background: sky, skyline, ground
# --------------------------------------------------------------------------------------------


def _paint_sky(p: _Painter, condition: str, clouds: np.ndarray) -> None:
    c, s, cam = p.canvas, p.style, p.cam
    top = np.asarray(s.sky_top, np.float32) / 255
    hor = np.asarray(s.sky_horizon, np.float32) / 255
    if condition == "overcast":
        grey = np.float32(0.78)
        top, hor = 0.4 * top + 0.6 * grey, 0.5 * hor + 0.5 * grey
    elif condition == "dusk":
        top = top * np.array([0.55, 0.55, 0.8], np.float32)
        hor = np.array([0.95, 0.62, 0.42], np.float32)
    t = np.clip(c.ys / max(cam.h0, 1.0), 0, 1)[:, None, None]
    sky = top * (1 - t) + hor * t
    cloud_mix = np.clip(clouds * s.cloud_amount * (2.0 if condition == "overcast" else 1.0), 0, 1)
    sky = sky * (1 - cloud_mix[..., None]) + np.float32(0.9) * cloud_mix[..., None]
    c.color[:] = np.broadcast_to(sky, c.color.shape)


def _paint_skyline(p: _Painter, street_end: float | None) -> None:
    """Facades closing the street at ``street_end`` metres, or, with None, distant buildings
    and trees along the horizon. Painted column by column in one pass."""
    c, cam, rng, s = p.canvas, p.cam, p.rng, p.style
    if street_end is not None:
        z, span, heights, widths, p_tree = street_end, 70.0, s.building_height, (6.0, 25.0), 0.15
    else:
        z, span, heights, widths, p_tree = 300.0, 400.0, (4.0, 30.0), (15.0, 60.0), 0.4
    n = int(2 * span / widths[0]) + 2
    edges = np.concatenate([[0.0], np.cumsum(rng.uniform(*widths, n))]) + (cam.x - span)
    tops = rng.uniform(*heights, n)
    trees = rng.random(n) < p_tree
    tops[trees] *= 0.6
    scale = cam.f / z
    x_edges = cam.vx + scale * (edges - cam.x)
    seg = np.clip(np.searchsorted(x_edges, c.xs, side="right") - 1, 0, n - 1)
    mx = (c.xs - x_edges[seg]) / scale  # metres from the segment's left edge
    freq, phase = rng.uniform(0.5, 1.5, n), rng.uniform(0, 6.3, n)
    bumps = np.where(trees[seg], 0.85 + 0.15 * np.sin(mx * freq[seg] + phase[seg]), 1.0)
    ybot = cam.h0 + scale * cam.height
    ytop = cam.h0 + scale * (cam.height - tops[seg] * bumps)
    r1 = min(math.ceil(ybot), c.h)
    if r1 <= 0:
        return
    ys = c.ys[:r1, None]
    mask = (ys >= ytop[None, :]) & (ys < ybot)
    cls = np.where(trees, VEGETATION, BUILDING)
    colors = p.palette[cls] * (1 + s.color_jitter * rng.standard_normal((n, 1)))
    colors = np.clip(colors * (1 + s.hue_jitter * rng.standard_normal((n, 3))), 0, 1)
    color = np.broadcast_to(colors[seg].astype(np.float32), (r1, c.w, 3))
    if street_end is not None and s.window_mix > 0:
        pitch, floor = float(rng.uniform(2.4, 3.6)), float(rng.uniform(2.8, 3.4))
        my = (ybot - ys) / scale  # metres above the ground
        wu, wv = (mx % pitch) / pitch, (my % floor) / floor
        windows = (wu > 0.3) & (wu < 0.8) & (wv > 0.3) & (wv < 0.8) & (my > 3.0)
        windows &= (my < tops[seg] - 1) & ~trees[seg]
        color = _glass_mix(p, color, windows.astype(np.float32), 1.0 / scale, 1.2, s.window_mix)
    rows = slice(0, r1)
    c.label[rows][mask] = np.broadcast_to(cls[seg], (r1, c.w))[mask]
    c.color[rows][mask] = color[mask]
    c.depth[rows][mask] = z


def _paint_ground(p: _Painter, layout: dict, noise: np.ndarray) -> None:
    """Road, lane markings, sidewalks and terrain on the ground plane below the horizon."""
    c, cam, s = p.canvas, p.cam, p.style
    r0 = max(math.ceil(cam.h0 - 0.5) + 1, 0)
    if r0 >= c.h:
        return
    rows = slice(r0, c.h)
    dy = c.ys[r0:, None] - cam.h0
    z = np.minimum(cam.f * cam.height / dy, 400.0).astype(np.float32)
    lat = (c.xs[None, :] - cam.vx) * z / cam.f + cam.x
    shape = lat.shape
    a = np.abs(lat)
    side_left = lat < 0
    half = np.where(side_left, layout["road"][0], layout["road"][1])
    walk = np.where(side_left, layout["sidewalk"][0], layout["sidewalk"][1])
    grass = np.where(side_left, layout["terrain"][0], layout["terrain"][1])
    label = np.full(shape, TERRAIN, np.uint8)
    label[a < half + walk + grass] = TERRAIN
    label[a < half + walk] = SIDEWALK
    label[a < half] = ROAD
    # Beyond the terrain strip lies a forecourt in front of the facades: sidewalk-like paving.
    beyond = a >= half + walk + grass
    label[beyond & (grass == 0)] = SIDEWALK
    color = p.palette[label]
    # Paving pattern on sidewalks in ground coordinates, faded where it is smaller than a pixel.
    mpp = z / cam.f  # metres per pixel
    tile = layout["tile"]
    fade = np.clip(1.5 - 2.0 * mpp / tile, 0, 1)
    pattern = np.cos(np.float32(2 * np.pi / tile) * lat) * np.cos(np.float32(2 * np.pi / tile) * z)
    paving = np.where(label == SIDEWALK, s.tile_contrast * fade * np.sign(pattern), 0)
    color = color * (1 + paving[..., None])
    # Kerb: a lighter line at the road edge.
    kerb = (np.abs(a - half) < np.maximum(0.15, 0.5 * mpp)) & (a >= half)
    color[kerb] = color[kerb] * 1.25
    # Lane markings: alpha = coverage of the pixel by the painted line.
    marking = np.zeros(shape, np.float32)
    lane = layout["lane_width"]
    period, dash = layout["dash"]
    for k in range(-layout["lanes"] + 1, layout["lanes"]):
        width = 0.12 if k == 0 else 0.10
        cov = np.clip(width / mpp - np.abs(lat - k * lane) / mpp + 0.5, 0, 1)
        cov = np.minimum(cov, width / mpp)
        if k != 0 or layout["dashed_centre"]:
            cov = cov * (((z + layout["dash_phase"]) % period) < dash)
        marking = np.maximum(marking, cov)
    for sign, parked in zip((-1, 1), layout["parking"]):
        if layout["edge_lines"] or parked:
            edge = sign * (layout["lanes"] * lane + (0.0 if parked else -0.3))
            cov = np.clip(0.1 / mpp - np.abs(lat - edge) / mpp + 0.5, 0, 1)
            marking = np.maximum(marking, np.minimum(cov, 0.1 / mpp))
    if layout["crosswalk"] is not None:
        z0 = layout["crosswalk"]
        stripes = (np.abs(lat) % 1.0 < 0.5) & (z > z0) & (z < z0 + 3.0)
        marking = np.maximum(marking, stripes * np.clip(0.6 / mpp, 0, 1))
    marking *= label == ROAD
    mark_rgb = np.asarray(s.marking_color, np.float32) / 255
    color = color * (1 - marking[..., None]) + mark_rgb * marking[..., None]
    # Asphalt patches and wear.
    color = color * (
        1 + 0.5 * s.coarse_texture[ROAD] * noise[rows][..., None] * (label == ROAD)[..., None]
    )
    c.label[rows] = label
    c.color[rows] = color
    c.depth[rows] = z
    # Shadows cast by the buildings on the sunny side, across sidewalk and part of the road.
    if layout["sun_side"] != 0 and layout["shadow"] > 0:
        side = layout["sun_side"]
        reach = side * lat > layout["building_line"][0 if side < 0 else 1] - layout["shadow_reach"]
        built = np.zeros(shape, bool)
        for z0, z1 in layout["built"][0 if side < 0 else 1]:
            built |= (z >= z0) & (z < z1)
        c.shade[rows] *= np.where(reach & built, 1 - layout["shadow"], 1).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Planes parallel to the street: facades, walls, fences, hedges
# --------------------------------------------------------------------------------------------


def _glass_mix(p: _Painter, base: np.ndarray, pattern, mpp, size: float, mix: float):
    """Blend glass into ``base`` where ``pattern`` holds; where the pattern is smaller than a
    pixel it fades to its average, so distant windows read as texture, not aliasing."""
    glass = np.asarray(p.style.glass_color, np.float32) / 255
    resolved = np.clip(1.5 - mpp / (0.5 * size), 0, 1)
    alpha = mix * (resolved * pattern + (1 - resolved) * 0.3)
    return base + (glass - base) * alpha[..., None]


def _draw_facade(p: _Painter, lateral: float, z0: float, z1: float, top: float, light: float):
    c, s, rng = p.canvas, p.style, p.rng
    pl = _plane(c, p.cam, lateral, z0, z1, top)
    if pl is None:
        return
    wall = p.cls_color(BUILDING) * light
    shape = pl.inside.shape
    color = np.broadcast_to(wall, shape + (3,)).copy()
    # Plinth, floors of windows, shop windows on the ground floor.
    pitch, floor = float(rng.uniform(2.2, 4.0)), float(rng.uniform(2.8, 3.5))
    frac = float(rng.uniform(0.35, 0.65))
    u = (pl.along % pitch) / pitch
    v = (pl.hgt % floor) / floor
    windows = (u > 0.5 - frac / 2) & (u < 0.5 + frac / 2) & (v > 0.35) & (v < 0.8)
    windows &= (pl.hgt > floor) & (pl.hgt < top - 0.8)
    if rng.random() < 0.6:
        windows |= (pl.hgt > 0.4) & (pl.hgt < 0.8 * floor) & ((pl.along % 6.0) < 4.5)
    mpp = pl.z / p.cam.f
    if s.window_mix > 0:
        color = _glass_mix(p, color, windows.astype(np.float32), mpp, 1.2, s.window_mix)
    color[pl.hgt < 0.5] *= 0.8
    if rng.random() < 0.5:  # cornice
        color[pl.hgt > top - 0.6] *= 1.15
    c.put(pl.rows, pl.cols, pl.inside, BUILDING, color[pl.inside], pl.z)


def _draw_barrier(p: _Painter, kind: int, lateral: float, z0: float, z1: float, top: float):
    """A wall, fence or hedge along the street."""
    c, rng = p.canvas, p.rng
    pl = _plane(c, p.cam, lateral, z0, z1, top)
    if pl is None:
        return
    base = p.cls_color(kind)
    shape = pl.inside.shape
    color = np.broadcast_to(base, shape + (3,)).copy()
    mpp = np.broadcast_to(pl.z / p.cam.f, shape)
    inside = pl.inside
    if kind == FENCE:
        gap = float(rng.uniform(0.12, 0.3))
        bars = ((pl.along % gap) < 0.35 * gap) | (np.abs(pl.hgt - top * 0.85) < 0.06)
        resolved = np.clip(1.5 - mpp / (0.5 * gap), 0, 1)
        color *= (1 - 0.35 * resolved * (~bars) - 0.12 * (1 - resolved))[..., None]
    elif kind == VEGETATION:
        wobble = 0.9 + 0.1 * np.sin(pl.along * float(rng.uniform(1.5, 3.5)))
        inside = inside & (pl.hgt <= top * wobble)
    else:  # wall: coping stone on top and panels
        color[pl.hgt > top - 0.15] *= 1.15
        panel = (pl.along % float(rng.uniform(2.0, 4.0))) < 0.1
        color[np.broadcast_to(panel, shape) & (mpp < 0.1)] *= 0.8
    c.put(pl.rows, pl.cols, inside, kind, color[inside], pl.z)


# --------------------------------------------------------------------------------------------
# Vehicles: a box with a near face (rear or front) and, off-centre, a visible side
# --------------------------------------------------------------------------------------------

# kind -> (width, height, length) in metres
_VEHICLE_SIZE = {CAR: (1.8, 1.5, 4.4), TRUCK: (2.5, 3.4, 8.0), BUS: (2.55, 3.2, 12.0),
                 TRAIN: (2.65, 3.6, 30.0)}  # fmt: skip
_IS_GROUND = np.zeros(256, bool)
_IS_GROUND[[ROAD, SIDEWALK, TERRAIN]] = True
_DARK = np.array([0.06, 0.06, 0.07], np.float32)
_TAIL = np.array([0.8, 0.08, 0.06], np.float32)
_HEAD = np.array([0.95, 0.93, 0.8], np.float32)


def _vehicle_side(p: _Painter, kind: int, lateral: float, z: float, facing: int, body):
    """The long side of a vehicle; ``facing`` +1 drives away (rear is near), -1 comes towards
    the camera (front is near)."""
    w, h, length = _VEHICLE_SIZE[kind]
    pl = _plane(p.canvas, p.cam, lateral, z, z + length, h + (0.8 if kind == TRAIN else 0))
    if pl is None:
        return
    a = pl.along if facing < 0 else length - pl.along  # metres from the rear
    y = pl.hgt
    glass = np.asarray(p.style.glass_color, np.float32) / 255
    wheel_r = 0.33 if kind == CAR else 0.5
    wheels = np.zeros(pl.inside.shape, bool)
    axles = {CAR: (0.8, length - 0.9), TRUCK: (1.3, 2.6, length - 1.3),
             BUS: (2.6, length - 3.0), TRAIN: (2.0, 9.0, 12.0, 19.0, 22.0, 28.0)}[kind]  # fmt: skip
    for ax in axles:
        wheels |= _disc(a, y, ax, wheel_r, wheel_r)
    if kind == CAR:
        lower = (y >= 0.25) & (y <= 0.62 * h)
        roof = 0.62 * h
        cabin = (
            (y > roof)
            & (y <= h)
            & (a >= 0.25 * length + 0.9 * (y - roof))
            & (a <= 0.85 * length - 1.4 * (y - roof))
        )
        mask = lower | cabin | wheels
        win = cabin & (y > roof + 0.06) & (y < h - 0.08)
        win &= (a >= 0.25 * length + 0.9 * (y - roof) + 0.1) & (
            a <= 0.85 * length - 1.4 * (y - roof) - 0.1
        )
    elif kind == TRUCK:
        cargo = (a <= length - 2.6) & (y >= 1.0) & (y <= h)
        cab = (a > length - 2.5) & (y >= 0.5) & (y <= 0.82 * h)
        chassis = (y >= 0.5) & (y <= 1.0)
        mask = cargo | cab | chassis | wheels
        win = cab & (y > 0.55 * h) & (a > length - 1.6)
    elif kind == BUS:
        mask = ((y >= 0.35) & (y <= h)) | wheels
        pillar = (a % 1.6) < 0.25
        win = (y > 1.35) & (y < h - 0.35) & ~pillar & (a > 0.4) & (a < length - 0.4)
    else:
        mask = ((y >= 0.6) & (y <= h)) | wheels
        pillar = ((a % 2.2) < 0.35) | ((a % 10.0) < 0.3)
        win = (y > 1.6) & (y < h - 0.55) & ~pillar
        mask |= _stroke(a, y, (length * 0.45, h), (length * 0.5, h + 0.75), max(0.04, pl.px))
    mask &= pl.inside
    color = np.broadcast_to(body, mask.shape + (3,)).copy()
    mpp = np.broadcast_to(pl.z / p.cam.f, mask.shape)
    resolved = np.clip(1.5 - mpp / 0.4, 0, 1)[..., None]
    color = np.where(win[..., None], color + (glass - color) * (0.2 + 0.8 * resolved), color)
    color = np.where(wheels[..., None], _DARK, color)
    color *= 0.85  # the side is turned away from the light
    p.canvas.put(pl.rows, pl.cols, mask, kind, color[mask], pl.z)


def _vehicle_face(p: _Painter, kind: int, lateral: float, z: float, facing: int, body):
    """The near face: the rear of a vehicle driving away or the front of an oncoming one."""
    c, cam = p.canvas, p.cam
    w, h, _ = _VEHICLE_SIZE[kind]
    extra = 0.8 if kind == TRAIN else 0.0
    sp = _sprite(c, cam, lateral - w / 2, z, w, h + extra, base=-0.3)
    if sp is None:
        return
    mx, my = sp.mx, sp.my
    if sp.area <= 2 * _TINY:
        c.put(sp.rows, sp.cols, _box(mx, my, 0, w, 0.1, h), kind, body, z)
        return
    # Shadow on the ground beneath the vehicle.
    under = (my > -0.12) & (my < 0.25) & (mx > -0.05) & (mx < w + 0.05)
    ground = _IS_GROUND[c.label[sp.rows, sp.cols]]
    c.shade[sp.rows, sp.cols][under & ground] *= 1 - 0.8 * max(p.style.shadow_strength, 0.3)
    glass = np.asarray(p.style.glass_color, np.float32) / 255
    lamp = _TAIL if facing > 0 else _HEAD
    wheel_w = 0.22 if kind == CAR else 0.35
    wheels = (
        (my >= 0)
        & (my <= 0.4 if kind == CAR else my <= 0.6)
        & (
            ((mx >= 0.08) & (mx <= 0.08 + wheel_w))
            | ((mx >= w - 0.08 - wheel_w) & (mx <= w - 0.08))
        )
    )
    if kind == CAR:
        roof = 0.62 * h
        body_mask = _box(mx, my, 0, w, 0.2, roof) & ~(
            (my > roof - 0.12) & ((mx < 0.06) | (mx > w - 0.06))
        )
        taper = 0.14 + 0.12 * (my - roof) / (h - roof)
        cabin = (my > roof - 0.01) & (my <= h) & (mx >= taper * w) & (mx <= (1 - taper) * w)
        win = cabin & (my > roof + 0.06) & (my < h - 0.07)
        win &= (mx >= taper * w + 0.08) & (mx <= (1 - taper) * w - 0.08)
        lamps = (my > 0.5 * roof) & (my < 0.75 * roof) & ((mx < 0.22) | (mx > w - 0.22))
        plate = _box(mx, my, w / 2 - 0.26, w / 2 + 0.26, 0.32, 0.45)
        bumper = (my >= 0.2) & (my < 0.33)
        mask = body_mask | cabin | wheels
    else:
        bottom = {TRUCK: 0.5, BUS: 0.35, TRAIN: 0.6}[kind]
        mask = _box(mx, my, 0, w, bottom, h) | wheels
        if kind == TRUCK and facing > 0:
            win = _box(mx, my, w / 2 - 0.03, w / 2 + 0.03, 1.1, h - 0.1)  # door seam
            glass = body * 0.6
        elif kind == TRUCK:
            win = _box(mx, my, 0.15, w - 0.15, 0.55 * h, 0.78 * h)
        elif kind == BUS:
            lo = 1.3 if facing < 0 else 2.0
            win = _box(mx, my, 0.12, w - 0.12, lo, h - 0.3)
        else:
            win = _box(mx, my, 0.2, w - 0.2, 1.9, h - 0.4)
            pant = _stroke(mx, my, (w * 0.3, h), (w * 0.6, h + 0.7), sp.thick(0.035))
            pant |= _stroke(mx, my, (w * 0.6, h + 0.7), (w * 0.2, h + 0.75), sp.thick(0.035))
            mask |= pant
        lamps = (my > bottom + 0.15) & (my < bottom + 0.45) & ((mx < 0.3) | (mx > w - 0.3))
        plate = _box(mx, my, w / 2 - 0.26, w / 2 + 0.26, bottom + 0.1, bottom + 0.25)
        bumper = (my >= bottom) & (my < bottom + 0.12)
    c.put(sp.rows, sp.cols, mask, kind, body, z)
    mask = np.broadcast_to(mask, (sp.rows.stop - sp.rows.start, sp.cols.stop - sp.cols.start))
    c.tint(sp.rows, sp.cols, mask & bumper, body * 0.55)
    c.tint(sp.rows, sp.cols, mask & win, glass)
    if sp.px < 0.15:  # small details only where they are at least about a pixel
        c.tint(sp.rows, sp.cols, mask & lamps & ~win, lamp)
        c.tint(sp.rows, sp.cols, mask & plate, np.array([0.9, 0.9, 0.88], np.float32))
    c.tint(sp.rows, sp.cols, mask & wheels, _DARK)


def _draw_vehicle(p: _Painter, kind: int, lateral: float, z: float, facing: int):
    s = p.style
    if kind == CAR:
        body = p.pick(s.vehicle_colors)
    elif kind == TRUCK:
        body = p.pick(s.vehicle_colors) if p.rng.random() < 0.5 else p.cls_color(TRUCK)
    else:
        body = p.cls_color(kind)
    w = _VEHICLE_SIZE[kind][0]
    if p.cam.f * w / z < 5:  # a few pixels wide: the near face alone
        pass
    elif lateral - w / 2 > p.cam.x:
        _vehicle_side(p, kind, lateral - w / 2, z, facing, body)
    elif lateral + w / 2 < p.cam.x:
        _vehicle_side(p, kind, lateral + w / 2, z, facing, body)
    _vehicle_face(p, kind, lateral, z, facing, body)


# --------------------------------------------------------------------------------------------
# People, riders, bicycles, motorcycles
# --------------------------------------------------------------------------------------------

_SKIN = ((224, 182, 150), (190, 140, 105), (140, 95, 70), (95, 65, 50))


def _draw_person(p: _Painter, lateral: float, z: float, scale: float):
    c, rng = p.canvas, p.rng
    h, w = 1.75 * scale, 0.7 * scale
    sp = _sprite(c, p.cam, lateral - w / 2, z, w, h)
    if sp is None:
        return
    mx, my, t, cx = sp.mx, sp.my, sp.thick, w / 2
    if sp.area <= _TINY:
        body = np.abs(mx - cx) <= max(0.2 * scale, sp.px)
        c.put(sp.rows, sp.cols, body, PERSON, p.pick(p.style.clothing_colors), z)
        return
    stride = float(rng.uniform(0.0, 0.16)) * scale
    hip = 0.5 * h
    legs = _stroke(mx, my, (cx - 0.07 * scale, hip), (cx - 0.05 - stride, 0.03), t(0.065 * scale))
    legs |= _stroke(mx, my, (cx + 0.07 * scale, hip), (cx + 0.05 + stride, 0.03), t(0.065 * scale))
    torso = _stroke(mx, my, (cx, hip + 0.08 * h), (cx, 0.79 * h), t(0.17 * scale))
    swing = float(rng.uniform(-0.08, 0.08))
    arms = _stroke(mx, my, (cx - 0.2 * scale, 0.8 * h), (cx - 0.25 * scale + swing, 0.47 * h),
                   t(0.05 * scale))  # fmt: skip
    arms |= _stroke(mx, my, (cx + 0.2 * scale, 0.8 * h), (cx + 0.25 * scale - swing, 0.47 * h),
                    t(0.05 * scale))  # fmt: skip
    head = _disc(mx, my, cx, h - 0.115 * scale, t(0.11 * scale))
    c.put(sp.rows, sp.cols, legs, PERSON, p.pick(p.style.clothing_colors), z)
    c.put(sp.rows, sp.cols, torso | arms, PERSON, p.pick(p.style.clothing_colors), z)
    c.put(sp.rows, sp.cols, head, PERSON, p.jitter(_SKIN[rng.integers(len(_SKIN))]), z)
    if rng.random() < 0.3:  # a bag or a dark coat hem
        bag = _box(mx, my, cx + 0.15 * scale, cx + 0.33 * scale, 0.42 * h, 0.6 * h)
        c.put(sp.rows, sp.cols, bag, PERSON, p.pick(p.style.clothing_colors) * 0.6, z)


def _draw_two_wheeler(p: _Painter, lateral: float, z: float, motor: bool, ridden: bool):
    """A bicycle or motorcycle seen from the side, with or without its rider."""
    c, rng = p.canvas, p.rng
    length = 2.1 if motor else 1.75
    top = 1.85 if ridden else (1.2 if motor else 1.05)
    sp = _sprite(c, p.cam, lateral - length / 2, z, length, top)
    if sp is None:
        return
    u = sp.mx if rng.random() < 0.5 else length - sp.mx
    my, t = sp.my, sp.thick
    cls = MOTORCYCLE if motor else BICYCLE
    frame_color = p.pick(p.style.vehicle_colors)
    if sp.area <= _TINY:
        c.put(sp.rows, sp.cols, _box(u, my, 0.1, length - 0.1, 0, 0.7), cls, frame_color, z)
        if ridden:
            rider = _box(u, my, 0.6, 1.2, 0.7, top)
            c.put(sp.rows, sp.cols, rider, RIDER, p.pick(p.style.clothing_colors), z)
        return
    if motor:
        r, tyre = 0.31, t(0.07)
        rear, front = (0.35, 0.31), (1.75, 0.31)
        wheels = _ring(u, my, *rear, r, tyre) | _ring(u, my, *front, r, tyre)
        hubs = _disc(u, my, *rear, t(0.1)) | _disc(u, my, *front, t(0.1))
        body = _box(u, my, 0.55, 1.3, 0.28, 0.62)
        body |= _stroke(u, my, (0.5, 0.8), (1.35, 0.86), t(0.13))
        body |= _stroke(u, my, front, (1.52, 1.05), t(0.045))
        body |= _stroke(u, my, rear, (0.8, 0.55), t(0.06))
        c.put(sp.rows, sp.cols, body, cls, frame_color, z)
        c.put(sp.rows, sp.cols, wheels | hubs, cls, _DARK * 1.5, z)
        hip, shoulder, head, knee, foot, hand = ((0.85, 0.98), (1.05, 1.52), (1.12, 1.7),
                                                 (1.28, 0.78), (1.1, 0.38), (1.48, 1.05))  # fmt: skip
        head_r = 0.14
    else:
        r, tyre = 0.34, t(0.03)
        rear, front = (0.35, 0.34), (1.4, 0.34)
        bracket, seat, head_tube, bar = (0.78, 0.32), (0.62, 0.88), (1.22, 0.9), (1.17, 1.02)
        wheels = _ring(u, my, *rear, r, tyre) | _ring(u, my, *front, r, tyre)
        frame = np.zeros(np.broadcast_shapes(u.shape, my.shape), bool)
        for a, b in ((rear, bracket), (rear, seat), (seat, bracket), (seat, head_tube),
                     (bracket, head_tube), (head_tube, front), (head_tube, bar)):  # fmt: skip
            frame |= _stroke(u, my, a, b, t(0.025))
        c.put(sp.rows, sp.cols, wheels, cls, _DARK * 1.2, z)
        c.put(sp.rows, sp.cols, frame, cls, frame_color, z)
        hip, shoulder, head, knee, foot, hand = ((0.62, 0.96), (0.95, 1.52), (1.02, 1.71),
                                                 (0.95, 0.68), (0.8, 0.3), (1.17, 1.02))  # fmt: skip
        head_r = 0.11
    if ridden:
        clothes = p.pick(p.style.clothing_colors)
        body = _stroke(u, my, hip, shoulder, t(0.15))
        body |= _stroke(u, my, hip, knee, t(0.075)) | _stroke(u, my, knee, foot, t(0.06))
        body |= _stroke(u, my, shoulder, hand, t(0.05))
        c.put(sp.rows, sp.cols, body, RIDER, clothes, z)
        helmet = p.pick(p.style.vehicle_colors) if motor else p.jitter(_SKIN[rng.integers(4)])
        c.put(sp.rows, sp.cols, _disc(u, my, *head, t(head_r)), RIDER, helmet, z)


# --------------------------------------------------------------------------------------------
# Street furniture and trees
# --------------------------------------------------------------------------------------------

_LAMPS = (np.array([1.0, 0.15, 0.1], np.float32), np.array([1.0, 0.75, 0.1], np.float32),
          np.array([0.1, 0.9, 0.45], np.float32))  # fmt: skip


def _draw_pole(p: _Painter, lateral: float, z: float, height: float, arm: float):
    """A pole; with ``arm`` != 0 a street light reaching ``arm`` metres sideways."""
    c = p.canvas
    left = min(lateral, lateral + arm) - 0.4
    width = abs(arm) + 0.8
    sp = _sprite(c, p.cam, left, z, width, height + 0.2)
    if sp is None:
        return
    x0 = lateral - left
    mask = _stroke(sp.mx, sp.my, (x0, 0), (x0, height), sp.thick(0.09))
    head = None
    if arm:
        xe = x0 + arm
        mask |= _stroke(sp.mx, sp.my, (x0, height - 0.3), (xe, height), sp.thick(0.05))
        head = _box(sp.mx, sp.my, xe - 0.3, xe + 0.3, height - 0.15, height + 0.05)
        mask |= head
    c.put(sp.rows, sp.cols, mask, POLE, p.cls_color(POLE), z)
    if head is not None and sp.px < 0.15:
        c.tint(sp.rows, sp.cols, head, np.array([0.85, 0.85, 0.8], np.float32))


def _draw_traffic_light(p: _Painter, lateral: float, z: float, arm: float):
    """A traffic light on a post, or hanging from an arm ``arm`` metres over the road."""
    c, rng = p.canvas, p.rng
    post = 5.8 if arm else 2.4
    top = post + (0.2 if arm else 1.0)
    left = min(lateral, lateral + arm) - 0.4
    sp = _sprite(c, p.cam, left, z, abs(arm) + 0.8, top)
    if sp is None:
        return
    x0 = lateral - left
    pole = _stroke(sp.mx, sp.my, (x0, 0), (x0, post), sp.thick(0.08))
    if arm:
        xe = x0 + arm
        pole |= _stroke(sp.mx, sp.my, (x0, post - 0.2), (xe, post - 0.2), sp.thick(0.05))
        box_lo, box_hi = post - 1.25, post - 0.25
    else:
        xe, box_lo, box_hi = x0, post, post + 0.95
    housing = _box(sp.mx, sp.my, xe - 0.18, xe + 0.18, box_lo, box_hi)
    c.put(sp.rows, sp.cols, pole, POLE, p.cls_color(POLE), z)
    c.put(sp.rows, sp.cols, housing, LIGHT, p.jitter(p.style.light_housing_color), z)
    lit = int(rng.integers(3))
    if sp.px < 0.1:
        for k in range(3):
            cy = box_hi - 0.17 - k * 0.3
            lamp = _disc(sp.mx, sp.my, xe, cy, 0.1)
            c.tint(sp.rows, sp.cols, lamp, _LAMPS[k] if k == lit else _LAMPS[k] * 0.25)


def _draw_sign(p: _Painter, lateral: float, z: float):
    c, rng = p.canvas, p.rng
    shape = int(rng.integers(4))
    size = float(rng.uniform(0.55, 0.8)) * (1.6 if shape == 3 else 1.0)
    post = float(rng.uniform(1.8, 2.6))
    sp = _sprite(c, p.cam, lateral - size / 2 - 0.1, z, size + 0.2, post + size)
    if sp is None:
        return
    cx, cy, r = size / 2 + 0.1, post + size / 2, size / 2
    dx, dy = sp.mx - cx, sp.my - cy
    if shape == 0:  # round
        plate = dx * dx + dy * dy <= r * r
        inner = dx * dx + dy * dy <= (0.75 * r) ** 2
    elif shape == 1:  # triangle, point down or up
        flip = 1 if rng.random() < 0.7 else -1
        plate = (flip * dy <= 0.5 * r) & (np.abs(dx) <= (r - flip * dy) * 0.62)
        inner = (flip * dy <= 0.3 * r) & (np.abs(dx) <= (0.7 * r - flip * dy) * 0.62)
    elif shape == 2:  # diamond
        plate = np.abs(dx) + np.abs(dy) <= r
        inner = np.abs(dx) + np.abs(dy) <= 0.7 * r
    else:  # rectangle
        plate = (np.abs(dx) <= r) & (np.abs(dy) <= 0.55 * r)
        inner = (np.abs(dx) <= 0.85 * r) & (np.abs(dy) <= 0.4 * r)
    pole = _stroke(sp.mx, sp.my, (cx, 0), (cx, cy), sp.thick(0.05))
    c.put(sp.rows, sp.cols, pole, POLE, p.cls_color(POLE), z)
    if rng.random() < 0.2:  # seen from behind
        c.put(sp.rows, sp.cols, plate, SIGN, p.cls_color(POLE) * 0.9, z)
        return
    rim_c, core_c = p.style.sign_colors[rng.integers(len(p.style.sign_colors))]
    c.put(sp.rows, sp.cols, plate, SIGN, p.jitter(rim_c), z)
    if sp.px < 0.12:
        c.tint(sp.rows, sp.cols, inner, p.jitter(core_c))


def _draw_tree(p: _Painter, lateral: float, z: float, trunk: float, radius: float):
    c, rng = p.canvas, p.rng
    w = 2.3 * radius
    top = trunk + 2.2 * radius
    sp = _sprite(c, p.cam, lateral - w / 2, z, w, top)
    if sp is None:
        return
    cx, cy = w / 2, trunk + 1.05 * radius
    dx, dy = sp.mx - cx, (sp.my - cy) / 1.1
    angle = np.arctan2(dy, dx)
    phase = rng.uniform(0, 2 * np.pi, 2)
    edge = radius * (1 + 0.12 * np.sin(3 * angle + phase[0]) + 0.08 * np.sin(7 * angle + phase[1]))
    crown = dx * dx + dy * dy <= edge * edge
    stem = _stroke(sp.mx, sp.my, (cx, 0), (cx, cy), sp.thick(0.09 + 0.03 * radius))
    if sp.area <= _TINY:
        c.put(sp.rows, sp.cols, crown | stem, VEGETATION, p.cls_color(VEGETATION), z)
        return
    c.put(sp.rows, sp.cols, stem, VEGETATION, p.jitter((92, 70, 52)), z)
    leaves = p.cls_color(VEGETATION)
    shading = 1.0 + 0.25 * np.clip(dy / radius, -1, 1)  # lit from above
    color = leaves * np.broadcast_to(shading, crown.shape)[..., None]
    c.put(sp.rows, sp.cols, crown, VEGETATION, color[crown], z)


# --------------------------------------------------------------------------------------------
# Noise fields and image post-processing
# --------------------------------------------------------------------------------------------


@lru_cache(maxsize=32)
def _upsample_plan(height: int, width: int, cell: int):
    """Indices and weights for bilinear upsampling of a (h/cell + 2, w/cell + 2) grid."""

    def axis(n):
        pos = (np.arange(n, dtype=np.float32) + 0.5) / cell
        i0 = np.floor(pos).astype(np.intp)
        return i0, i0 + 1, (pos - i0).astype(np.float32)

    return axis(height), axis(width), (height // cell + 2, width // cell + 2)


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cell: int) -> np.ndarray:
    """Zero-mean, unit-scale noise that varies over about ``cell`` pixels."""
    (y0, y1, wy), (x0, x1, wx), shape = _upsample_plan(height, width, max(cell, 1))
    g = rng.standard_normal(shape, dtype=np.float32)
    top = g[y0][:, x0] * (1 - wx) + g[y0][:, x1] * wx
    bottom = g[y1][:, x0] * (1 - wx) + g[y1][:, x1] * wx
    return top * (1 - wy[:, None]) + bottom * wy[:, None]


@lru_cache(maxsize=32)
def _noise_bank(height: int, width: int) -> np.ndarray:
    """A fixed bank of Gaussian noise, twice the image size, with five channels (texture,
    luminance noise, red, green, blue noise). Scenes take crops of it at random offsets,
    which is much cheaper than drawing fresh noise for every pixel."""
    bank = np.random.default_rng(0x5CE7E5).standard_normal((2 * height, 2 * width, 5))
    bank = bank.astype(np.float32)
    bank.setflags(write=False)
    return bank


def _noise_crop(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    oy, ox = int(rng.integers(height + 1)), int(rng.integers(width + 1))
    return _noise_bank(height, width)[oy : oy + height, ox : ox + width]


@lru_cache(maxsize=32)
def _gaussian_kernel(sigma: float) -> np.ndarray:
    radius = max(1, math.ceil(2.5 * sigma))
    x = np.arange(-radius, radius + 1, dtype=np.float32)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).astype(np.float32)


def _blur_axis(img: np.ndarray, k: np.ndarray, axis: int) -> np.ndarray:
    r, n = len(k) // 2, img.shape[axis]
    src = np.take(img, np.clip(np.arange(-r, n + r), 0, n - 1), axis=axis)
    if axis == 0:
        out = k[0] * src[0:n]
        for i in range(1, len(k)):
            out += k[i] * src[i : i + n]
    else:
        out = k[0] * src[:, 0:n]
        for i in range(1, len(k)):
            out += k[i] * src[:, i : i + n]
    return out


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of an (H, W, ...) array with replicated borders."""
    if sigma < 0.15:
        return img
    k = _gaussian_kernel(round(sigma, 2))
    return _blur_axis(_blur_axis(img, k, 0), k, 1)


def _block_means(img: np.ndarray, block: int = 4) -> np.ndarray:
    """Each pixel replaced by the mean of its ``block`` x ``block`` tile."""
    h, w = img.shape[:2]
    ph, pw = -h % block, -w % block
    if ph or pw:
        img = np.pad(img, ((0, ph), (0, pw), (0, 0)), mode="edge")
    rows = img[0::block]
    for i in range(1, block):
        rows = rows + img[i::block]
    tiles = rows[:, 0::block]
    for i in range(1, block):
        tiles = tiles + rows[:, i::block]
    tiles *= np.float32(1.0 / (block * block))
    return np.repeat(np.repeat(tiles, block, 0), block, 1)[:h, :w]


@lru_cache(maxsize=16)
def _texture_luts(style: DomainStyle) -> tuple[np.ndarray, np.ndarray]:
    fine = np.zeros(256, np.float32)
    coarse = np.zeros(256, np.float32)
    fine[:NUM_CLASSES] = style.fine_texture
    coarse[:NUM_CLASSES] = style.coarse_texture
    return fine, coarse


@lru_cache(maxsize=16)
def _vignette(height: int, width: int, strength: float) -> np.ndarray:
    ys, xs = _pixel_centres(height, width)
    yy = (ys[:, None] / height - 0.5) * 2
    xx = (xs[None, :] / width - 0.5) * 2
    return (1 - strength * 0.5 * (xx * xx + yy * yy)).astype(np.float32)[..., None]


_LUMA = np.full(3, 1 / 3, np.float32)


def _finish(p: _Painter, condition: str, noise: np.ndarray, coarse: np.ndarray) -> np.ndarray:
    """Texture, shadows, haze, lighting and the sensor: colour buffer -> uint8 image.

    ``noise`` is a 5-channel crop of the noise bank, ``coarse`` smooth blotchy noise."""
    c, s, rng = p.canvas, p.style, p.rng
    fine_lut, coarse_lut = _texture_luts(s)
    label = c.label
    texture = 1 + np.take(fine_lut, label) * noise[..., 0] + np.take(coarse_lut, label) * coarse
    img = c.color * (texture * c.shade)[..., None]
    # Haze: distant things fade towards the haze colour; the sky keeps its own colour.
    haze_distance = s.haze_distance * (0.5 if condition == "overcast" else 1.0)
    alpha = 1 - np.exp(c.depth * np.float32(-1.0 / haze_distance))
    alpha[label == SKY] = 0
    img += (np.asarray(s.haze_color, np.float32) / 255 - img) * alpha[..., None]
    # Lighting of the scene.
    brightness = rng.uniform(*s.brightness)
    contrast = rng.uniform(*s.contrast)
    cast = np.asarray(s.color_cast, np.float32)
    sigma = rng.uniform(*s.noise_sigma)
    if condition == "overcast":
        contrast *= 0.85
        cast = cast * np.array([0.97, 1.0, 1.04], np.float32)
    elif condition == "dusk":
        brightness *= 0.6
        cast = cast * np.array([1.12, 0.92, 0.78], np.float32)
        sigma *= 1.8
    grey = (img @ _LUMA)[..., None]
    img = grey + (img - grey) * np.float32(rng.uniform(*s.saturation))
    img = (img - 0.5) * np.float32(contrast) + 0.5
    img *= cast * np.float32(brightness)
    if s.vignette > 0:
        img *= _vignette(c.h, c.w, s.vignette)
    # Sensor: optics blur, colour softness and blocks of compression, then noise.
    scale = c.w / 128
    img = _blur(img, rng.uniform(*s.blur_sigma) * scale)
    if s.chroma_blur > 0:
        luma = (img @ _LUMA)[..., None]
        img = luma + _blur(img - luma, s.chroma_blur * scale)
    if s.block_artifacts > 0:
        mix = np.float32(s.block_artifacts * rng.uniform(0.3, 1))
        img += (_block_means(img) - img) * mix
    if sigma > 0:
        img += noise[..., 1:2] * np.float32(sigma * 0.7) + noise[..., 2:5] * np.float32(sigma * 0.5)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# Scene assembly
# --------------------------------------------------------------------------------------------


def _compose(style: DomainStyle, rng: np.random.Generator, height: int, width: int):
    """Sample a street, paint it, and return (image uint8 HxWx3, label uint8 HxW)."""
    s = style
    conditions, weights = zip(*s.conditions)
    condition = conditions[rng.choice(len(conditions), p=np.asarray(weights) / sum(weights))]
    busy = float(rng.gamma(3.0, 1 / 3.0))

    # Street cross-section (metres, street frame: L = 0 on the centre line, right positive).
    lanes = int(_pick(rng, s.lanes_per_direction))
    lane_w = float(rng.uniform(*s.lane_width))
    parking = [2.3 if rng.random() < 0.5 else 0.0 for _ in range(2)]
    road = [lanes * lane_w + parking[0], lanes * lane_w + parking[1]]
    walk = [float(rng.uniform(*s.sidewalk_width)) for _ in range(2)]
    grass = [float(rng.uniform(1.0, 5.0)) if rng.random() < s.terrain_probability else 0.0
             for _ in range(2)]  # fmt: skip
    edge = [road[i] + walk[i] + grass[i] for i in range(2)]
    building_line = [edge[i] + float(rng.uniform(*s.building_setback)) for i in range(2)]
    end = float(rng.uniform(*s.street_end)) if rng.random() < s.street_end_probability else None
    far = end if end is not None else 160.0

    # Camera: in one of the lanes of its own direction, rightmost most often.
    lane = lanes - 1 - min(int(rng.geometric(0.6)) - 1, lanes - 1)
    cam_x = (lane + 0.5) * lane_w + float(rng.normal(0, 0.25))
    cam = _Camera(
        f=float(max(rng.normal(*s.focal), 0.5)) * width,
        vx=width / 2 + float(rng.normal(0, s.yaw)) * width,
        h0=float(np.clip(rng.normal(*s.horizon), 0.2, 0.7)) * height,
        height=float(max(rng.normal(*s.camera_height), 0.8)),
        x=cam_x,
    )
    canvas = _Canvas(height, width)
    p = _Painter(s, rng, canvas, cam)

    # Street sides: built stretches (facades), open stretches (walls, fences, hedges, trees).
    built: list[list[tuple[float, float]]] = [[], []]
    facades, barriers, back_trees = [], [], []
    for side in range(2):
        sign = -1 if side == 0 else 1
        z = 0.5
        while z < far:
            z1 = min(z + float(rng.uniform(8.0, 35.0)), far)
            if rng.random() < s.building_density:
                built[side].append((z, z1))
                facades.append((sign * building_line[side], z, z1,
                                float(rng.uniform(*s.building_height))))  # fmt: skip
                open_stretch = building_line[side] - edge[side] > 1.5
            else:
                open_stretch = True
                for _ in range(_poisson(rng, (z1 - z) / 12, busy)):
                    lat = sign * float(rng.uniform(edge[side] + 1.0, building_line[side] + 8.0))
                    back_trees.append((float(rng.uniform(z, z1)), lat))
            if open_stretch:
                r = rng.random()
                kinds = ((WALL, s.wall_probability, (0.8, 2.5)),
                         (FENCE, s.fence_probability, (0.9, 2.0)),
                         (VEGETATION, s.hedge_probability, (0.8, 1.8)))  # fmt: skip
                for kind, prob, (lo, hi) in kinds:
                    if r < prob:
                        barriers.append(
                            (kind, sign * edge[side], z, z1, float(rng.uniform(lo, hi)))
                        )
                        break
                    r -= prob
            z = z1

    sun_side = int(_pick(rng, (-1, 1))) if condition == "day" else 0
    dash_period = float(rng.uniform(6.0, 12.0))
    layout = {
        "road": road,
        "sidewalk": walk,
        "terrain": grass,
        "lanes": lanes,
        "lane_width": lane_w,
        "dash": (dash_period, dash_period * float(rng.uniform(0.3, 0.5))),
        "dash_phase": float(rng.uniform(0, 12)),
        "dashed_centre": rng.random() < 0.6,
        "edge_lines": rng.random() < 0.5,
        "parking": parking,
        "crosswalk": float(rng.uniform(8, 30)) if rng.random() < 0.25 else None,
        "tile": float(rng.uniform(0.3, 0.8)),
        "sun_side": sun_side,
        "shadow": s.shadow_strength,
        "shadow_reach": float(rng.uniform(3.0, 15.0)),
        "building_line": building_line,
        "built": built,
    }

    noise = _noise_crop(rng, height, width)
    coarse = _smooth_noise(rng, height, width, max(2, round(width / 16)))
    clouds = np.clip(_smooth_noise(rng, height, width, max(2, round(width / 10))), 0, None)

    _paint_sky(p, condition, clouds)
    _paint_skyline(p, end)
    _paint_ground(p, layout, coarse)
    light = {-1: (1.1, 0.8), 1: (0.8, 1.1), 0: (0.95, 0.95)}[sun_side]
    for lat, z0, z1, top in facades:
        _draw_facade(p, lat, z0, z1, top, light[0] if lat < 0 else light[1])
    for z, lat in sorted(back_trees, reverse=True):
        _draw_tree(p, lat, z, float(rng.uniform(1.5, 3.5)), float(rng.uniform(1.5, 4.0)))
    for kind, lat, z0, z1, top in barriers:
        _draw_barrier(p, kind, lat, z0, z1, top)

    items = _place_objects(p, layout, far, busy, cam)
    items.sort(key=lambda item: -item[0])
    for _, draw, args in items:
        draw(p, *args)

    if rng.random() < s.hood_probability:
        _paint_hood(p, float(rng.uniform(*s.hood_height)))
    image = _finish(p, condition, noise, coarse)
    return image, canvas.label


def _paint_hood(p: _Painter, fraction: float) -> None:
    """The ego vehicle's bonnet at the bottom of the frame (ignored in the labels)."""
    c = p.canvas
    bulge = 1 - 0.5 * ((c.xs - p.cam.vx) / (c.w / 2)) ** 2
    edge = c.h * (1 - fraction * bulge)
    mask = c.ys[:, None] >= edge[None, :]
    base = np.asarray(p.style.hood_color, np.float32) / 255
    depth_rows = (c.ys[:, None] - edge[None, :]) / max(fraction * c.h, 1)
    color = base * (1.3 - 0.5 * np.clip(depth_rows, 0, 1))[..., None]
    c.label[mask] = IGNORE_INDEX
    c.color[mask] = color[mask]
    c.depth[mask] = 0
    c.shade[mask] = 1


def _place_objects(p: _Painter, layout: dict, far: float, busy: float, cam: _Camera):
    """Sample the upright objects as (distance, draw function, arguments) triples."""
    s, rng = p.style, p.rng
    lanes, lane_w = layout["lanes"], layout["lane_width"]
    road, walk, parking = layout["road"], layout["sidewalk"], layout["parking"]
    items: list = []
    occupied: dict[float, list[tuple[float, float]]] = {}

    def free(lat: float, z0: float, z1: float) -> bool:
        spans = occupied.setdefault(round(lat, 1), [])
        if any(z0 < b + 1.5 and a < z1 + 1.5 for a, b in spans):
            return False
        spans.append((z0, z1))
        return True

    def vehicle(kind: int, lat: float, facing: int, z_min: float):
        length = _VEHICLE_SIZE[kind][2]
        if far - 4 <= z_min:
            return
        for _ in range(4):
            z = float(rng.uniform(z_min, far - 4))
            if free(lat, z, z + length):
                items.append((z, _draw_vehicle, (kind, lat, z, facing)))
                return

    def lane_centre(direction: int) -> float:
        return direction * (int(rng.integers(lanes)) + 0.5) * lane_w

    def on_sidewalk(side: int, lo: float, hi: float) -> float:
        i = 0 if side < 0 else 1
        return side * (road[i] + float(rng.uniform(lo, hi)) * walk[i])

    def side() -> int:
        return -1 if rng.random() < 0.5 else 1

    own_lane = round((math.floor(cam.x / lane_w) + 0.5) * lane_w, 1)
    for kind, mean in ((TRUCK, s.trucks), (BUS, s.buses), (CAR, s.cars)):
        for _ in range(_poisson(rng, mean, busy)):
            lat = lane_centre(1)
            vehicle(kind, lat, 1, 9.0 if round(lat, 1) == own_lane else 4.0)
    for _ in range(_poisson(rng, s.oncoming_cars, busy)):
        vehicle(CAR if rng.random() < 0.85 else TRUCK, lane_centre(-1), -1, 4.0)
    if rng.random() < s.train_probability:
        lat = lane_centre(-1) if rng.random() < 0.6 else 0.0
        vehicle(TRAIN, lat, -1 if lat < 0 else 1, 10.0)
    for _ in range(_poisson(rng, s.parked_cars, busy)):
        sd = side()
        i = 0 if sd < 0 else 1
        lat = sd * (lanes * lane_w + 1.15) if parking[i] else sd * (road[i] + 0.4)
        vehicle(CAR, lat, 1 if rng.random() < 0.7 else -1, 3.0)

    z_hi = max(far * 0.8, 6.0)
    for _ in range(_poisson(rng, s.people, busy)):
        group = 1 + int(rng.poisson(0.5))
        lat, z = on_sidewalk(side(), 0.15, 0.85), float(rng.uniform(3.0, z_hi))
        for _ in range(group):
            scale = float(rng.uniform(0.88, 1.1)) if rng.random() > 0.1 else 0.65
            items.append((z, _draw_person, (lat + float(rng.normal(0, 0.4)), z, scale)))
            z += float(rng.uniform(0.3, 1.5))
    if layout["crosswalk"] is not None:
        z = layout["crosswalk"] + 1.5
        for _ in range(_poisson(rng, 1.5, busy)):
            lat = float(rng.uniform(-road[0], road[1]))
            items.append((z, _draw_person, (lat, z + float(rng.uniform(-1, 1)), 1.0)))
    for _ in range(_poisson(rng, s.riders, busy)):
        sd = 1 if rng.random() < 0.75 else -1
        lat = sd * (lanes * lane_w - float(rng.uniform(0.5, 1.2)))
        z = float(rng.uniform(4.0, z_hi))
        items.append((z, _draw_two_wheeler, (lat, z, rng.random() < s.motorcycle_fraction, True)))
    for _ in range(_poisson(rng, s.bicycles, busy)):
        lat, z = on_sidewalk(side(), 0.1, 0.4), float(rng.uniform(3.0, z_hi))
        items.append((z, _draw_two_wheeler, (lat, z, rng.random() < 0.15, False)))

    for _ in range(_poisson(rng, s.poles, busy)):
        sd = side()
        lat, z = sd * (road[0 if sd < 0 else 1] + float(rng.uniform(0.3, 0.6))), 0.0
        z = float(rng.uniform(2.0, far - 2))
        arm = -sd * float(rng.uniform(1.0, 2.5)) if rng.random() < 0.4 else 0.0
        items.append((z, _draw_pole, (lat, z, float(rng.uniform(4.0, 9.0)), arm)))
    for _ in range(_poisson(rng, s.traffic_lights, busy)):
        z = float(rng.uniform(6.0, min(far - 2, 70.0)))
        for sd in (-1, 1) if rng.random() < 0.5 else (side(),):
            lat = sd * (road[0 if sd < 0 else 1] + float(rng.uniform(0.3, 0.6)))
            arm = -sd * float(rng.uniform(2.5, 5.5)) if rng.random() < 0.35 else 0.0
            items.append((z, _draw_traffic_light, (lat, z, arm)))
    for _ in range(_poisson(rng, s.traffic_signs, busy)):
        sd = side()
        lat = sd * (road[0 if sd < 0 else 1] + float(rng.uniform(0.3, 0.8)))
        z = float(rng.uniform(5.0, far - 2))
        items.append((z, _draw_sign, (lat, z)))
    for _ in range(_poisson(rng, s.trees, busy)):
        sd = side()
        i = 0 if sd < 0 else 1
        if layout["terrain"][i] > 0 and rng.random() < 0.6:
            lat = sd * (road[i] + walk[i] + float(rng.uniform(0.3, 0.9)) * layout["terrain"][i])
        else:
            lat = on_sidewalk(sd, 0.55, 0.85)
        z = float(rng.uniform(2.0, far - 2))
        items.append((z, _draw_tree, (lat, z, float(rng.uniform(1.8, 3.2)),
                                      float(rng.uniform(1.2, 2.8)))))  # fmt: skip
    return items


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def render_scene(
    domain: str, split: str, index: int, seed: int = 0, size: tuple[int, int] = DEFAULT_SIZE
) -> tuple[np.ndarray, np.ndarray]:
    """Render one scene.

    Returns ``(image, label)``: ``image`` uint8 (H, W, 3), ``label`` uint8 (H, W) holding
    trainIds 0..18 and 255 (ignore). The result depends only on the arguments.
    """
    style = _check_domain(domain)
    n = _check_split(split)
    index = _check_index(index, split, n)
    seed = _check_seed(seed)
    height, width = _check_size(size)
    rng = _scene_rng(domain, split, index, seed)
    if style is None:  # the pretraining family: this scene's own random style, then the scene
        style = randomized_style(rng)
    return _compose(style, rng, height, width)


def render_split(
    domain: str,
    split: str,
    seed: int = 0,
    size: tuple[int, int] = DEFAULT_SIZE,
    length: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Render the first ``length`` scenes of a split (all by default) into two arrays:
    images uint8 (N, H, W, 3) and labels uint8 (N, H, W), e.g. to save them once with
    ``numpy.savez`` and share them between processes."""
    _check_domain(domain)
    n = _check_split(split)
    length = n if length is None else length
    if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or not 0 < length <= n:
        raise ValueError(f"invalid length {length!r} for split {split!r}; valid: 1..{n}")
    height, width = _check_size(size)
    images = np.empty((length, height, width, 3), np.uint8)
    labels = np.empty((length, height, width), np.uint8)
    for i in range(length):
        images[i], labels[i] = render_scene(domain, split, i, seed, (height, width))
    return images, labels


_RENDERER_SOURCES = ("styles.py", "layout.py", "render.py")
"""The modules that decide the pixels, hashed in this order by :func:`renderer_version`."""

_RENDERER_VERSION = hashlib.sha256(
    b"".join((Path(__file__).parent / name).read_bytes() for name in _RENDERER_SOURCES)
).hexdigest()[:12]


def renderer_version() -> str:
    """A hash of the sources of ``styles``, ``layout`` and ``render`` (what decides the pixels,
    not the cache or dataset code) as imported: a changed renderer changes the cache key."""
    return _RENDERER_VERSION
