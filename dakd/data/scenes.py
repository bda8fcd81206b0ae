"""Procedural driving scenes: the embedded benchmark.

Every scene is rendered with numpy from a single pinhole camera looking down a straight street:
a ground plane (road with lane markings, sidewalks, terrain), vertical planes parallel to the
street (building facades with windows, walls, fences, hedges, the sides of vehicles), a row of
facades or a skyline at the end of the street, sky, and upright objects standing on the ground
(cars, trucks, buses, trams, people, riders on bicycles and motorcycles, parked bicycles, poles,
street lights, traffic lights, traffic signs, trees). Everything is placed in metres in a street
frame and projected, so objects shrink and rise towards the horizon; they are painted far to
near, so nearer objects occlude farther ones.

The label map uses the 19 Cityscapes trainIds (255 = ignore, used for the ego vehicle's hood).

A *domain* (:class:`DomainStyle`) fixes how scenes look and what they contain: class colours,
texture, lighting conditions, sensor noise and blur, camera height and horizon, and object
statistics. The geometry is shared by all domains, so a model trained on one domain faces a
shift in appearance and statistics, not a different world, on another.

A scene is a pure function of ``(domain, split, index, seed)``: the four values are hashed
(``zlib.crc32`` of the strings, so the hash is the same in every process) into a
``numpy.random.SeedSequence``. The train and validation splits draw from different streams.
"""

from __future__ import annotations

import hashlib
import math
import multiprocessing
import os
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from dakd.data.labels import IGNORE_INDEX, NUM_CLASSES, colorize

__all__ = [
    "DOMAINS",
    "MEAN",
    "SCENARIOS",
    "SPLIT_SIZES",
    "STD",
    "DomainStyle",
    "SceneDataset",
    "denormalize",
    "render_scene",
    "render_split",
    "save_samples",
    "to_tensor",
]

# Cityscapes trainIds, named for readability (the order is fixed by the label space).
ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE, LIGHT, SIGN, VEGETATION, TERRAIN, SKY = range(11)
PERSON, RIDER, CAR, TRUCK, BUS, TRAIN, MOTORCYCLE, BICYCLE = range(11, 19)

SPLIT_SIZES: dict[str, int] = {"train": 2000, "val": 200}
"""Number of scenes in each split of every domain."""

SCENARIOS: dict[str, tuple[str, str]] = {
    "synth_to_real": ("game", "city"),
    "real_to_real": ("dashcam", "city"),
}
"""Paper scenario -> (source domain, target domain)."""

MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
"""Per-channel mean used to normalise images in [0, 1] (the ImageNet convention)."""
STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
"""Per-channel standard deviation used to normalise images in [0, 1]."""

DEFAULT_SIZE: tuple[int, int] = (64, 128)

RGB = tuple[int, int, int]


# --------------------------------------------------------------------------------------------
# Domain styles
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DomainStyle:
    """Everything that distinguishes one domain from another.

    Colours are 0-255 RGB. Ranges are ``(low, high)`` for uniform draws; ``(mean, std)`` pairs
    are marked as such. Object counts are Poisson means per scene, scaled by a per-scene
    "busyness" drawn from a gamma distribution, so some scenes are crowded and some empty.
    """

    name: str
    description: str
    # --- appearance -----------------------------------------------------------------------
    class_colors: tuple[RGB, ...]  # 19 base colours, one per trainId
    vehicle_colors: tuple[RGB, ...]
    clothing_colors: tuple[RGB, ...]
    sign_colors: tuple[tuple[RGB, RGB], ...]  # (rim, inner) colours of sign plates
    glass_color: RGB
    marking_color: RGB
    light_housing_color: RGB
    hood_color: RGB
    sky_top: RGB
    sky_horizon: RGB
    color_jitter: float  # per-instance brightness spread (relative)
    hue_jitter: float  # per-instance per-channel spread (relative)
    scene_jitter: float  # per-scene per-class brightness spread (relative)
    fine_texture: tuple[float, ...]  # 19 amplitudes of pixel noise, by class
    coarse_texture: tuple[float, ...]  # 19 amplitudes of blotchy low-frequency noise, by class
    tile_contrast: float  # sidewalk paving pattern strength
    window_mix: float  # how strongly windows show on facades (0 = plain walls)
    cloud_amount: float
    # --- lighting -------------------------------------------------------------------------
    conditions: tuple[tuple[str, float], ...]  # ("day" | "overcast" | "dusk", probability)
    brightness: tuple[float, float]
    contrast: tuple[float, float]
    saturation: tuple[float, float]  # applied after rendering, per scene
    color_cast: tuple[float, float, float]  # per-channel gain
    shadow_strength: float  # how much building/vehicle shadows darken (0..1)
    haze_distance: float  # metres; larger = clearer air
    haze_color: RGB
    # --- sensor ---------------------------------------------------------------------------
    noise_sigma: tuple[float, float]  # Gaussian sensor noise, in [0, 1] units
    blur_sigma: tuple[float, float]  # Gaussian blur in pixels at 128 px width
    chroma_blur: float  # extra blur of colour channels (JPEG-like softness), pixels at 128 px
    block_artifacts: float  # 0..1 mix with 4x4 block means (compression)
    vignette: float
    # --- camera ---------------------------------------------------------------------------
    camera_height: tuple[float, float]  # metres, (mean, std)
    horizon: tuple[float, float]  # horizon row as a fraction of the height, (mean, std)
    focal: tuple[float, float]  # focal length as a fraction of the width, (mean, std)
    yaw: float  # std of the vanishing point shift, fraction of the width
    hood_probability: float
    hood_height: tuple[float, float]  # fraction of the image height
    # --- street layout --------------------------------------------------------------------
    lanes_per_direction: tuple[int, ...]
    lane_width: tuple[float, float]
    sidewalk_width: tuple[float, float]
    terrain_probability: float  # per side: a grass strip between sidewalk and buildings
    building_density: float  # probability that a stretch of the street side is built up
    building_height: tuple[float, float]
    building_setback: tuple[float, float]
    wall_probability: float  # per stretch without buildings in front
    fence_probability: float
    hedge_probability: float
    street_end: tuple[float, float]  # distance of the facades closing the street (metres)
    street_end_probability: float
    # --- object statistics (Poisson means per scene) ----------------------------------------
    cars: float
    oncoming_cars: float
    parked_cars: float
    trucks: float
    buses: float
    train_probability: float
    people: float
    riders: float
    motorcycle_fraction: float
    bicycles: float
    poles: float
    traffic_lights: float
    traffic_signs: float
    trees: float


# Colours of a neutral, "real" world, from which the domain palettes are derived.
_BASE_PALETTE: tuple[RGB, ...] = (
    (88, 86, 92),  # road
    (152, 144, 140),  # sidewalk
    (138, 118, 102),  # building
    (160, 150, 128),  # wall
    (126, 112, 94),  # fence
    (118, 118, 122),  # pole
    (48, 48, 44),  # traffic light (housing)
    (196, 186, 64),  # traffic sign (default plate)
    (70, 112, 46),  # vegetation
    (132, 140, 82),  # terrain
    (140, 180, 225),  # sky
    (92, 72, 82),  # person
    (80, 80, 112),  # rider
    (120, 120, 130),  # car
    (176, 164, 150),  # truck
    (204, 162, 60),  # bus
    (172, 176, 186),  # train
    (64, 62, 72),  # motorcycle
    (76, 72, 84),  # bicycle
)


def _grade(color: RGB, saturation: float, gain: float, tint: tuple[float, float, float]) -> RGB:
    """Shift one colour: scale its saturation around its grey value, then its gain and tint."""
    c = np.asarray(color, dtype=np.float64)
    grey = c.mean()
    c = grey + (c - grey) * saturation
    c = c * gain * np.asarray(tint)
    r, g, b = (int(v) for v in np.clip(np.round(c), 0, 255))
    return (r, g, b)


def _palette(
    saturation: float,
    gain: float,
    tint: tuple[float, float, float],
    overrides: dict[int, RGB] | None = None,
) -> tuple[RGB, ...]:
    """Derive a domain palette from the base palette; ``overrides`` replace single classes."""
    overrides = overrides or {}
    return tuple(
        overrides.get(k, _grade(c, saturation, gain, tint)) for k, c in enumerate(_BASE_PALETTE)
    )


def _colors(
    colors: tuple[RGB, ...], saturation: float, gain: float, tint: tuple[float, float, float]
) -> tuple[RGB, ...]:
    return tuple(_grade(c, saturation, gain, tint) for c in colors)


def _per_class(default: float, **by_class: float) -> tuple[float, ...]:
    """A tuple of 19 per-class values: ``default`` except for the classes named."""
    names = {
        "road": ROAD,
        "sidewalk": SIDEWALK,
        "building": BUILDING,
        "wall": WALL,
        "fence": FENCE,
        "pole": POLE,
        "light": LIGHT,
        "sign": SIGN,
        "vegetation": VEGETATION,
        "terrain": TERRAIN,
        "sky": SKY,
        "person": PERSON,
        "rider": RIDER,
        "car": CAR,
        "truck": TRUCK,
        "bus": BUS,
        "train": TRAIN,
        "motorcycle": MOTORCYCLE,
        "bicycle": BICYCLE,
    }
    values = [default] * NUM_CLASSES
    for name, value in by_class.items():
        values[names[name]] = value
    return tuple(values)


_VEHICLES_BRIGHT: tuple[RGB, ...] = (
    (220, 30, 30),
    (30, 70, 220),
    (240, 200, 20),
    (20, 170, 60),
    (240, 240, 240),
    (25, 25, 30),
    (250, 120, 10),
    (140, 40, 180),
    (20, 180, 200),
)
_VEHICLES_EUROPE: tuple[RGB, ...] = (
    (38, 38, 42),
    (188, 188, 192),
    (128, 128, 134),
    (228, 228, 228),
    (40, 50, 80),
    (110, 32, 32),
    (88, 94, 100),
    (60, 70, 62),
)
_VEHICLES_US: tuple[RGB, ...] = (
    (235, 235, 235),
    (170, 170, 176),
    (30, 30, 32),
    (150, 30, 30),
    (40, 62, 122),
    (122, 110, 90),
    (204, 204, 208),
)
_CLOTHES: tuple[RGB, ...] = (
    (30, 30, 36),
    (60, 70, 110),
    (150, 30, 40),
    (200, 200, 196),
    (90, 80, 60),
    (40, 90, 60),
    (170, 120, 60),
    (120, 120, 126),
)

_SIGNS = (  # (rim, inner) colours of common plates
    ((200, 30, 30), (235, 235, 235)),
    ((200, 30, 30), (40, 80, 190)),
    ((40, 80, 190), (40, 80, 190)),
    ((240, 200, 30), (240, 200, 30)),
    ((30, 130, 60), (30, 130, 60)),
    ((235, 235, 235), (40, 80, 190)),
)


def _signs(saturation: float, gain: float, tint: tuple[float, float, float]):
    return tuple(
        (_grade(rim, saturation, gain, tint), _grade(core, saturation, gain, tint))
        for rim, core in _SIGNS
    )


GAME = DomainStyle(
    name="game",
    description="synthetic, game-engine look (GTA5 stand-in): saturated flat colours, sharp, "
    "high contrast, clean sensor, high camera",
    class_colors=_palette(
        1.7,
        1.05,
        (1.0, 1.0, 1.0),
        {
            ROAD: (70, 70, 82),
            SKY: (70, 140, 235),
            VEGETATION: (40, 140, 30),
            TERRAIN: (150, 160, 60),
        },
    ),
    vehicle_colors=_VEHICLES_BRIGHT + _VEHICLES_EUROPE,
    clothing_colors=_colors(_CLOTHES, 1.6, 1.05, (1.0, 1.0, 1.0)),
    sign_colors=_signs(1.2, 1.05, (1.0, 1.0, 1.0)),
    glass_color=(30, 40, 70),
    marking_color=(245, 245, 240),
    light_housing_color=(40, 40, 36),
    hood_color=(20, 20, 20),
    sky_top=(40, 100, 220),
    sky_horizon=(150, 200, 245),
    color_jitter=0.12,
    hue_jitter=0.10,
    scene_jitter=0.06,
    fine_texture=_per_class(0.01, vegetation=0.06, terrain=0.03, road=0.015),
    coarse_texture=_per_class(0.02, road=0.05, vegetation=0.12, terrain=0.08, building=0.03),
    tile_contrast=0.10,
    window_mix=0.9,
    cloud_amount=0.15,
    conditions=(("day", 0.9), ("overcast", 0.1)),
    brightness=(0.95, 1.1),
    contrast=(1.1, 1.3),
    saturation=(1.0, 1.15),
    color_cast=(1.0, 1.0, 1.0),
    shadow_strength=0.45,
    haze_distance=400.0,
    haze_color=(170, 200, 240),
    noise_sigma=(0.0, 0.006),
    blur_sigma=(0.0, 0.15),
    chroma_blur=0.0,
    block_artifacts=0.0,
    vignette=0.0,
    camera_height=(1.7, 0.08),
    horizon=(0.47, 0.02),
    focal=(1.0, 0.04),
    yaw=0.03,
    hood_probability=0.0,
    hood_height=(0.0, 0.0),
    lanes_per_direction=(1, 2, 2, 3),
    lane_width=(3.3, 3.8),
    sidewalk_width=(2.5, 5.0),
    terrain_probability=0.35,
    building_density=0.6,
    building_height=(6.0, 30.0),
    building_setback=(0.0, 6.0),
    wall_probability=0.25,
    fence_probability=0.25,
    hedge_probability=0.3,
    street_end=(70.0, 140.0),
    street_end_probability=0.5,
    cars=2.0,
    oncoming_cars=1.2,
    parked_cars=1.5,
    trucks=0.5,
    buses=0.25,
    train_probability=0.08,
    people=3.0,
    riders=0.7,
    motorcycle_fraction=0.5,
    bicycles=0.4,
    poles=3.0,
    traffic_lights=1.2,
    traffic_signs=1.5,
    trees=4.0,
)

DASHCAM = DomainStyle(
    name="dashcam",
    description="real dashboard camera (BDD100K stand-in): varied lighting (overcast, dusk), "
    "noisy, soft and compressed, warm cast, variable mounting height, wide suburban streets",
    class_colors=_palette(
        0.9,
        1.0,
        (1.06, 1.0, 0.9),
        {ROAD: (96, 92, 90), SKY: (165, 185, 205), BUILDING: (150, 128, 108)},
    ),
    vehicle_colors=_colors(_VEHICLES_US, 0.9, 1.0, (1.05, 1.0, 0.92)),
    clothing_colors=_colors(_CLOTHES, 0.9, 1.0, (1.05, 1.0, 0.92)),
    sign_colors=_signs(0.9, 1.0, (1.05, 1.0, 0.92)),
    glass_color=(50, 52, 58),
    marking_color=(225, 210, 150),
    light_housing_color=(160, 140, 40),
    hood_color=(28, 26, 26),
    sky_top=(120, 150, 190),
    sky_horizon=(200, 205, 210),
    color_jitter=0.18,
    hue_jitter=0.08,
    scene_jitter=0.12,
    fine_texture=_per_class(0.03, vegetation=0.08, terrain=0.06, road=0.04, sidewalk=0.04),
    coarse_texture=_per_class(
        0.05, road=0.10, vegetation=0.15, terrain=0.12, building=0.06, sidewalk=0.08
    ),
    tile_contrast=0.04,
    window_mix=0.6,
    cloud_amount=0.25,
    conditions=(("day", 0.55), ("overcast", 0.25), ("dusk", 0.20)),
    brightness=(0.8, 1.05),
    contrast=(0.85, 1.05),
    saturation=(0.85, 1.0),
    color_cast=(1.06, 1.0, 0.88),
    shadow_strength=0.35,
    haze_distance=320.0,
    haze_color=(200, 195, 185),
    noise_sigma=(0.008, 0.02),
    blur_sigma=(0.35, 0.6),
    chroma_blur=0.9,
    block_artifacts=0.25,
    vignette=0.2,
    camera_height=(1.35, 0.15),
    horizon=(0.44, 0.05),
    focal=(0.9, 0.06),
    yaw=0.06,
    hood_probability=0.4,
    hood_height=(0.04, 0.12),
    lanes_per_direction=(1, 2, 2, 3),
    lane_width=(3.4, 3.9),
    sidewalk_width=(1.5, 3.5),
    terrain_probability=0.6,
    building_density=0.45,
    building_height=(4.0, 16.0),
    building_setback=(2.0, 10.0),
    wall_probability=0.2,
    fence_probability=0.35,
    hedge_probability=0.4,
    street_end=(80.0, 160.0),
    street_end_probability=0.3,
    cars=2.5,
    oncoming_cars=1.6,
    parked_cars=1.8,
    trucks=0.7,
    buses=0.2,
    train_probability=0.04,
    people=1.5,
    riders=0.4,
    motorcycle_fraction=0.4,
    bicycles=0.3,
    poles=3.5,
    traffic_lights=1.5,
    traffic_signs=1.8,
    trees=4.0,
)

CITY = DomainStyle(
    name="city",
    description="real European city (Cityscapes stand-in): washed-out greyish palette with a "
    "green-grey cast, mild noise and blur, low camera with the hood in view, dense buildings, "
    "many cars and people",
    class_colors=_palette(
        0.45,
        0.95,
        (0.97, 1.02, 0.98),
        {ROAD: (104, 104, 104), SKY: (200, 208, 212), SIDEWALK: (140, 136, 136)},
    ),
    vehicle_colors=_colors(_VEHICLES_EUROPE, 0.6, 0.95, (0.97, 1.02, 0.98)),
    clothing_colors=_colors(_CLOTHES, 0.55, 0.9, (0.97, 1.02, 0.98)),
    sign_colors=_signs(0.6, 0.95, (0.97, 1.02, 0.98)),
    glass_color=(58, 64, 66),
    marking_color=(200, 202, 200),
    light_housing_color=(52, 54, 52),
    hood_color=(34, 36, 36),
    sky_top=(176, 190, 200),
    sky_horizon=(214, 220, 222),
    color_jitter=0.14,
    hue_jitter=0.04,
    scene_jitter=0.08,
    fine_texture=_per_class(0.02, vegetation=0.07, terrain=0.05, road=0.025, building=0.03),
    coarse_texture=_per_class(
        0.04, road=0.07, vegetation=0.12, terrain=0.10, building=0.05, sidewalk=0.06
    ),
    tile_contrast=0.07,
    window_mix=0.75,
    cloud_amount=0.2,
    conditions=(("day", 0.6), ("overcast", 0.4)),
    brightness=(0.9, 1.02),
    contrast=(0.8, 0.95),
    saturation=(0.75, 0.9),
    color_cast=(0.97, 1.02, 0.98),
    shadow_strength=0.3,
    haze_distance=220.0,
    haze_color=(205, 210, 210),
    noise_sigma=(0.008, 0.018),
    blur_sigma=(0.3, 0.55),
    chroma_blur=0.5,
    block_artifacts=0.1,
    vignette=0.1,
    camera_height=(1.22, 0.04),
    horizon=(0.41, 0.015),
    focal=(1.1, 0.02),
    yaw=0.025,
    hood_probability=1.0,
    hood_height=(0.08, 0.12),
    lanes_per_direction=(1, 1, 2),
    lane_width=(3.0, 3.4),
    sidewalk_width=(2.5, 5.0),
    terrain_probability=0.25,
    building_density=0.85,
    building_height=(10.0, 24.0),
    building_setback=(0.0, 2.0),
    wall_probability=0.35,
    fence_probability=0.3,
    hedge_probability=0.2,
    street_end=(50.0, 110.0),
    street_end_probability=0.8,
    cars=2.5,
    oncoming_cars=1.5,
    parked_cars=4.0,
    trucks=0.3,
    buses=0.2,
    train_probability=0.12,
    people=5.5,
    riders=1.0,
    motorcycle_fraction=0.3,
    bicycles=1.5,
    poles=5.0,
    traffic_lights=1.8,
    traffic_signs=2.5,
    trees=3.0,
)

DOMAINS: dict[str, DomainStyle] = {s.name: s for s in (GAME, DASHCAM, CITY)}
"""Registered domains by name. Add a domain with ``dataclasses.replace`` on an existing one."""


# --------------------------------------------------------------------------------------------
# Argument checking and seeding
# --------------------------------------------------------------------------------------------


def _check_domain(domain: str) -> DomainStyle:
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; valid domains: {sorted(DOMAINS)}")
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


def _poisson(rng: np.random.Generator, mean: float, busy: float) -> int:
    return int(rng.poisson(max(mean * busy, 0.0)))


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


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


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


_RENDERER_VERSION = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12]


def renderer_version() -> str:
    """A hash of this module's source as imported: a changed renderer changes the cache key."""
    return _RENDERER_VERSION


def _render_chunk(args) -> tuple[np.ndarray, np.ndarray]:
    domain, split, seed, size, start, stop = args
    images = np.empty((stop - start, size[0], size[1], 3), np.uint8)
    labels = np.empty((stop - start, size[0], size[1]), np.uint8)
    for i in range(start, stop):
        images[i - start], labels[i - start] = render_scene(domain, split, i, seed, size)
    return images, labels


def cached_split(
    domain: str,
    split: str,
    seed: int,
    size: tuple[int, int],
    cache_dir: str | Path,
    workers: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """The whole split as uint8 arrays, rendered once into ``cache_dir`` and read back after.

    The file name holds the domain, split, seed, size and :func:`renderer_version`, so a changed
    renderer never serves stale scenes. Rendering uses ``workers`` processes (default: the CPUs
    this process may use); the file is written atomically, so concurrent trials never read a
    partial one (at worst two render the same split and one rename wins).
    """
    _check_domain(domain)
    n = _check_split(split)
    height, width = _check_size(size)
    path = Path(cache_dir) / f"{domain}-{split}-s{seed}-{height}x{width}-{renderer_version()}.npz"
    if path.exists():
        try:
            with np.load(path) as data:
                return data["images"], data["labels"]
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            path.unlink(missing_ok=True)  # a damaged cache file is only a cache: render again
    workers = workers or max(1, min(len(os.sched_getaffinity(0)), 8))
    bounds = np.linspace(0, n, 4 * workers + 1).astype(int)
    jobs = [(domain, split, seed, (height, width), a, b) for a, b in zip(bounds[:-1], bounds[1:])]
    if workers > 1:
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(workers) as pool:
            parts = pool.map(_render_chunk, jobs)
    else:
        parts = [_render_chunk(job) for job in jobs]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".npz", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, images=images, labels=labels)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return images, labels


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) image -> float32 [3, H, W] tensor normalised with MEAN and STD."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected a uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
    x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().div_(255)
    mean = torch.tensor(MEAN, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(STD, dtype=torch.float32).view(3, 1, 1)
    return x.sub_(mean).div_(std)


def denormalize(tensor: torch.Tensor) -> np.ndarray:
    """Inverse of :func:`to_tensor`: [3, H, W] normalised tensor -> uint8 (H, W, 3) image."""
    x = tensor.detach().to("cpu", torch.float32)
    if x.ndim != 3 or x.shape[0] != 3:
        raise ValueError(f"expected a [3, H, W] tensor, got shape {tuple(x.shape)}")
    mean = torch.tensor(MEAN).view(3, 1, 1)
    std = torch.tensor(STD).view(3, 1, 1)
    x = (x * std + mean).clamp_(0, 1).mul_(255).add_(0.5)
    return x.to(torch.uint8).permute(1, 2, 0).numpy()


class SceneDataset(Dataset):
    """One split of one domain as a map-style dataset.

    Items are ``{"image": float32 [3, H, W] normalised, "label": int64 [H, W]}``. With
    ``cache=True`` each index is rendered once per process and kept (about 25 KB per item at
    64x128 with uint8 storage). With ``cache_dir`` the whole split is rendered once per machine
    (by :func:`cached_split`) and every later dataset, process or trial reads the arrays.
    """

    def __init__(
        self,
        domain: str,
        split: str,
        seed: int = 0,
        size: tuple[int, int] = DEFAULT_SIZE,
        length: int | None = None,
        cache: bool = True,
        cache_dir: str | Path | None = None,
    ):
        _check_domain(domain)
        n = _check_split(split)
        self.seed = _check_seed(seed)
        self.size = _check_size(size)
        if length is None:
            length = n
        if (
            isinstance(length, bool)
            or not isinstance(length, (int, np.integer))
            or not (0 < length <= n)
        ):
            raise ValueError(f"invalid length {length!r} for split {split!r}; valid: 1..{n}")
        self.domain, self.split, self.length, self.cache = domain, split, int(length), cache
        self._store: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._arrays: tuple[np.ndarray, np.ndarray] | None = None
        if cache_dir:
            images, labels = cached_split(domain, split, self.seed, self.size, cache_dir)
            self._arrays = images[: self.length], labels[: self.length]

    def __len__(self) -> int:
        return self.length

    def __repr__(self) -> str:
        return f"SceneDataset({self.domain!r}, {self.split!r}, seed={self.seed}, size={self.size})"

    def raw(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The uint8 image and label of an item (cached when ``cache`` is on)."""
        if isinstance(index, (int, np.integer)) and -self.length <= index < 0:
            index += self.length
        if not isinstance(index, (int, np.integer)) or not 0 <= index < self.length:
            raise IndexError(f"index {index!r} out of range for a dataset of {self.length}")
        index = int(index)
        if self._arrays is not None:
            return self._arrays[0][index], self._arrays[1][index]
        item = self._store.get(index)
        if item is None:
            item = render_scene(self.domain, self.split, index, self.seed, self.size)
            if self.cache:
                self._store[index] = item
        return item

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        image, label = self.raw(index)
        return {"image": to_tensor(image), "label": torch.from_numpy(label.astype(np.int64))}


def save_samples(
    domain: str,
    out_dir,
    n: int = 8,
    split: str = "train",
    seed: int = 0,
    size: tuple[int, int] = DEFAULT_SIZE,
) -> list[Path]:
    """Write ``n`` scenes as PNGs for a person to look at.

    Per scene ``{domain}_{split}_{i:03d}_image.png`` and ``..._label.png`` (Cityscapes
    colours), plus ``{domain}_overview.png``: images in the top row, labels below, enlarged to
    at least 256 pixels wide per scene. Returns the written paths, the overview last.
    """
    from PIL import Image

    _check_domain(domain)
    total = _check_split(split)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 0 < n <= total:
        raise ValueError(f"invalid n {n!r}; valid: 1..{total}")
    height, width = _check_size(size)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths, images, labels = [], [], []
    for i in range(n):
        image, label = render_scene(domain, split, i, seed, (height, width))
        colour = colorize(label)
        for kind, array in (("image", image), ("label", colour)):
            path = out / f"{domain}_{split}_{i:03d}_{kind}.png"
            Image.fromarray(array).save(path)
            paths.append(path)
        images.append(image)
        labels.append(colour)
    zoom = max(1, math.ceil(256 / width))
    gap = 2
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    cell_h, cell_w = height * zoom, width * zoom
    grid = np.full(
        (rows * (2 * cell_h + gap) + (rows - 1) * 2 * gap, cols * (cell_w + gap) - gap, 3),
        255,
        np.uint8,
    )
    for i, (image, colour) in enumerate(zip(images, labels)):
        r, col = divmod(i, cols)
        y = r * (2 * cell_h + 3 * gap)
        x = col * (cell_w + gap)
        grid[y : y + cell_h, x : x + cell_w] = image.repeat(zoom, 0).repeat(zoom, 1)
        y += cell_h + gap
        grid[y : y + cell_h, x : x + cell_w] = colour.repeat(zoom, 0).repeat(zoom, 1)
    path = out / f"{domain}_overview.png"
    Image.fromarray(grid).save(path)
    paths.append(path)
    return paths
