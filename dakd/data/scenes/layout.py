"""Scene geometry: argument checking and seeding, the camera, the canvas, sprites and planes
in the street frame, shape masks, and small sampling helpers."""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from dakd.data.scenes.styles import DOMAINS, PRETRAIN_DOMAIN, SKY, SPLIT_SIZES, DomainStyle

# --------------------------------------------------------------------------------------------
# Argument checking and seeding
# --------------------------------------------------------------------------------------------


def _check_domain(domain: str) -> DomainStyle | None:
    """The domain's fixed style, or None for the pretraining family (a style per scene)."""
    if domain == PRETRAIN_DOMAIN:
        return None
    if domain not in DOMAINS:
        valid = sorted([*DOMAINS, PRETRAIN_DOMAIN])
        raise ValueError(f"unknown domain {domain!r}; valid domains: {valid}")
    return DOMAINS[domain]


def _check_split(split: str) -> int:
    if split not in SPLIT_SIZES:
        raise ValueError(f"unknown split {split!r}; valid splits: {sorted(SPLIT_SIZES)}")
    return SPLIT_SIZES[split]


def _check_size(size) -> tuple[int, int]:
    try:
        height, width = size
        ok = all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in size)
    except (TypeError, ValueError):
        ok = False
    if not ok or height <= 0 or width <= 0:
        raise ValueError(f"invalid size {size!r}; expected (height, width), two positive ints")
    return int(height), int(width)


def _check_seed(seed) -> int:
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"invalid seed {seed!r}; expected a non-negative int")
    return int(seed)


def _check_index(index, split: str, n: int) -> int:
    if not isinstance(index, (int, np.integer)) or isinstance(index, bool) or not 0 <= index < n:
        raise ValueError(f"index {index!r} out of range for split {split!r}; valid: 0..{n - 1}")
    return int(index)


def _scene_rng(domain: str, split: str, index: int, seed: int) -> np.random.Generator:
    """A generator seeded from the four values; the same in every process."""
    key = [zlib.crc32(domain.encode()), zlib.crc32(split.encode()), index, seed]
    return np.random.default_rng(np.random.SeedSequence(key))


# --------------------------------------------------------------------------------------------
# Camera and canvas
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Camera:
    """Pinhole camera in the street frame: L lateral (metres, right positive), Z forward."""

    f: float  # focal length in pixels
    vx: float  # column of the vanishing point
    h0: float  # row of the horizon
    height: float  # metres above the ground
    x: float  # lateral position in the street frame


@lru_cache(maxsize=16)
def _pixel_centres(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    ys = np.arange(height, dtype=np.float32) + 0.5
    xs = np.arange(width, dtype=np.float32) + 0.5
    ys.setflags(write=False)
    xs.setflags(write=False)
    return ys, xs


class _Canvas:
    """Label, colour and depth buffers that scene parts are painted into."""

    def __init__(self, height: int, width: int):
        self.h, self.w = height, width
        self.ys, self.xs = _pixel_centres(height, width)
        self.label = np.full((height, width), SKY, dtype=np.uint8)
        self.color = np.zeros((height, width, 3), dtype=np.float32)
        self.depth = np.full((height, width), np.inf, dtype=np.float32)
        self.shade = np.ones((height, width), dtype=np.float32)

    def put(self, rows: slice, cols: slice, mask, cls: int, color, depth) -> None:
        """Paint ``mask`` (within the window ``rows, cols``) with a class, colour and depth."""
        shape = (rows.stop - rows.start, cols.stop - cols.start)
        if np.shape(mask) != shape:
            mask = np.broadcast_to(mask, shape)
        idx = np.nonzero(mask)
        if not len(idx[0]):
            return
        self.label[rows, cols][idx] = cls
        self.color[rows, cols][idx] = color
        if np.ndim(depth) == 0:
            self.depth[rows, cols][idx] = depth
        else:
            self.depth[rows, cols][idx] = np.broadcast_to(depth, shape)[idx]

    def tint(self, rows: slice, cols: slice, mask, color) -> None:
        """Recolour ``mask`` without changing its class (windows, lamps, wheels)."""
        shape = (rows.stop - rows.start, cols.stop - cols.start)
        if np.shape(mask) != shape:
            mask = np.broadcast_to(mask, shape)
        self.color[rows, cols][mask] = color


_TINY = 16


class _Sprite:
    """Local metric coordinates of an upright, camera-facing rectangle.

    ``mx`` (1, w) is metres from the left edge, ``my`` (h, 1) metres above the base; ``px`` is
    the minimum half-thickness (metres) for a stroke to cover at least one pixel. Sprites of at
    most ``_TINY`` pixels are drawn as plain silhouettes: their details would not show.
    """

    __slots__ = ("rows", "cols", "mx", "my", "px", "z", "area")

    def __init__(self, rows, cols, mx, my, px, z):
        self.rows, self.cols, self.mx, self.my, self.px, self.z = rows, cols, mx, my, px, z
        self.area = (rows.stop - rows.start) * (cols.stop - cols.start)

    def thick(self, t: float) -> float:
        return max(t, self.px)


def _sprite(canvas: _Canvas, cam: _Camera, left: float, z: float, width: float, top: float,
            base: float = 0.0) -> _Sprite | None:  # fmt: skip
    """Window of an upright rectangle from ``left`` to ``left + width`` (street metres) at
    distance ``z``, from ``base`` to ``top`` metres above the ground; None if off-screen."""
    s = cam.f / z
    xl = cam.vx + s * (left - cam.x)
    xr = xl + s * width
    yb = cam.h0 + s * (cam.height - base)
    yt = cam.h0 + s * (cam.height - top)
    c0, c1 = max(math.floor(xl), 0), min(math.ceil(xr), canvas.w)
    r0, r1 = max(math.floor(yt), 0), min(math.ceil(yb), canvas.h)
    if c1 <= c0 or r1 <= r0:
        return None
    mx = ((canvas.xs[c0:c1] - xl) / s)[None, :]
    my = ((yb - canvas.ys[r0:r1]) / s + base)[:, None]
    return _Sprite(slice(r0, r1), slice(c0, c1), mx, my, 0.5 / s, z)


class _Plane:
    """Local metric coordinates of a vertical plane parallel to the street (L = const).

    ``along`` (1, w) is metres from the plane's near end, ``hgt`` (h, w) metres above the
    ground, ``z`` (1, w) the depth of each column, ``inside`` the pixels on the plane.
    """

    __slots__ = ("rows", "cols", "along", "hgt", "z", "inside", "px")

    def __init__(self, rows, cols, along, hgt, z, inside, px):
        self.rows, self.cols, self.along, self.hgt = rows, cols, along, hgt
        self.z, self.inside, self.px = z, inside, px


def _plane(canvas: _Canvas, cam: _Camera, lateral: float, z0: float, z1: float,
           top: float) -> _Plane | None:  # fmt: skip
    """Window of the plane ``L = lateral`` between depths ``z0 < z1``, up to ``top`` metres."""
    d = lateral - cam.x
    if abs(d) < 1e-3:
        return None
    xa, xb = cam.vx + cam.f * d / z0, cam.vx + cam.f * d / z1
    lo, hi = min(xa, xb), max(xa, xb)
    c0, c1 = max(math.floor(lo), 0), min(math.ceil(hi), canvas.w)
    if c1 <= c0:
        return None
    dx = canvas.xs[c0:c1] - cam.vx
    with np.errstate(divide="ignore"):
        z = cam.f * d / dx
    valid = (z >= z0) & (z <= z1)
    if c1 - c0 == 1:
        valid[:] = True
    z = np.clip(np.where(z > 0, z, z1), z0, z1).astype(np.float32)
    ytop = cam.h0 + cam.f * (cam.height - top) / z
    ybot = cam.h0 + cam.f * cam.height / z
    r0, r1 = max(math.floor(ytop.min()), 0), min(math.ceil(ybot.max()), canvas.h)
    if r1 <= r0:
        return None
    z = z[None, :]
    hgt = cam.height - (canvas.ys[r0:r1, None] - cam.h0) * z / cam.f
    inside = valid[None, :] & (hgt >= 0) & (hgt <= top)
    px = 0.5 * float(z.min()) / cam.f
    return _Plane(slice(r0, r1), slice(c0, c1), z - z0, hgt, z, inside, px)


# --------------------------------------------------------------------------------------------
# Shape primitives (all vectorised over a window)
# --------------------------------------------------------------------------------------------


def _box(mx, my, x0, x1, y0, y1):
    return (mx >= x0) & (mx <= x1) & (my >= y0) & (my <= y1)


def _disc(mx, my, cx, cy, r):
    return (mx - cx) ** 2 + (my - cy) ** 2 <= r * r


def _ring(mx, my, cx, cy, r, t):
    d2 = (mx - cx) ** 2 + (my - cy) ** 2
    return (d2 <= (r + t) ** 2) & (d2 >= max(r - t, 0.0) ** 2)


def _stroke(mx, my, p, q, r):
    """Pixels within ``r`` of the segment p-q."""
    (px, py), (qx, qy) = p, q
    dx, dy = qx - px, qy - py
    n2 = dx * dx + dy * dy or 1e-9
    t = np.minimum(np.maximum(((mx - px) * dx + (my - py) * dy) * (1.0 / n2), 0.0), 1.0)
    return (mx - px - t * dx) ** 2 + (my - py - t * dy) ** 2 <= r * r


# --------------------------------------------------------------------------------------------
# Sampling helpers
# --------------------------------------------------------------------------------------------


def _poisson(rng: np.random.Generator, mean: float, busy: float) -> int:
    return int(rng.poisson(max(mean * busy, 0.0)))


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]
