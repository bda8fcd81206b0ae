"""Domain styles: class ids, palettes and the registered domains (what scenes look like)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from dakd.data.labels import NUM_CLASSES

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
# The pretraining family: domain-randomised appearance (the ImageNet analogue)
# --------------------------------------------------------------------------------------------

PRETRAIN_DOMAIN = "randomized"
"""Name of the pretraining family: every scene draws its own style (:func:`randomized_style`)."""


def _hsv_shift(color: RGB, hue: float, saturation: float, gain: float) -> RGB:
    """Rotate a colour's hue by ``hue`` turns, scale its saturation and value."""
    import colorsys

    h, s, v = colorsys.rgb_to_hsv(*(c / 255 for c in color))
    r, g, b = colorsys.hsv_to_rgb((h + hue) % 1.0, min(1.0, s * saturation), min(1.0, v * gain))
    return (int(round(r * 255)), int(round(g * 255)), int(round(b * 255)))


def _random_colors(rng: np.random.Generator, n: int) -> tuple[RGB, ...]:
    return tuple(tuple(int(c) for c in rng.integers(10, 246, 3)) for _ in range(n))


def randomized_style(rng: np.random.Generator) -> DomainStyle:
    """A style drawn at random, per scene, for pretraining (domain randomisation).

    The base palette is rotated in hue by a random angle (each class by a further +-0.12 turns),
    its saturation and brightness scaled at random; vehicles, clothes, signs, sky and haze get
    random colours; texture, lighting, weather, sensor (noise, blur, compression), camera
    (height, horizon, focal length, yaw, hood) and street statistics are drawn from ranges that
    span and exceed the three benchmark domains. So no colour, texture or camera statistic is a
    reliable cue, and a network has to learn shapes and layout; and the family looks like none
    of ``game``, ``dashcam`` or ``city`` (their palettes are fixed, these rotate).
    """
    hue = float(rng.uniform(0, 1))
    sat = float(rng.uniform(0.4, 1.6))
    gain = float(rng.uniform(0.7, 1.25))
    palette = tuple(
        _hsv_shift(
            c, hue + float(rng.uniform(-0.12, 0.12)), sat, gain * float(rng.uniform(0.85, 1.15))
        )
        for c in _BASE_PALETTE
    )
    sky = palette[SKY]
    tint = tuple(float(t) for t in rng.uniform(0.85, 1.15, 3))
    conditions = ("day", "overcast", "dusk")
    weights = rng.dirichlet(np.ones(3))
    bright = float(rng.uniform(0.7, 1.05))
    contrast = float(rng.uniform(0.75, 1.2))
    saturation = float(rng.uniform(0.6, 1.2))
    noise = float(rng.uniform(0.0, 0.025))
    blur = float(rng.uniform(0.0, 0.7))
    return dataclasses.replace(
        CITY,
        name=PRETRAIN_DOMAIN,
        description="domain-randomised pretraining scenes",
        class_colors=palette,
        vehicle_colors=_random_colors(rng, 10),
        clothing_colors=_random_colors(rng, 8),
        sign_colors=tuple(zip(_random_colors(rng, 6), _random_colors(rng, 6), strict=True)),
        glass_color=_random_colors(rng, 1)[0],
        marking_color=_hsv_shift((230, 230, 225), hue, sat, gain),
        light_housing_color=_random_colors(rng, 1)[0],
        hood_color=_random_colors(rng, 1)[0],
        sky_top=_hsv_shift(sky, 0.0, 1.2, 0.8),
        sky_horizon=_hsv_shift(sky, 0.0, 0.6, 1.15),
        color_jitter=float(rng.uniform(0.05, 0.25)),
        hue_jitter=float(rng.uniform(0.0, 0.12)),
        scene_jitter=float(rng.uniform(0.0, 0.15)),
        fine_texture=tuple(float(v) for v in rng.uniform(0.0, 0.08, NUM_CLASSES)),
        coarse_texture=tuple(float(v) for v in rng.uniform(0.0, 0.16, NUM_CLASSES)),
        tile_contrast=float(rng.uniform(0.0, 0.12)),
        window_mix=float(rng.uniform(0.3, 1.0)),
        cloud_amount=float(rng.uniform(0.0, 0.4)),
        conditions=tuple((c, float(w)) for c, w in zip(conditions, weights, strict=True)),
        brightness=(bright, bright + 0.1),
        contrast=(contrast, contrast + 0.1),
        saturation=(saturation, saturation + 0.1),
        color_cast=tint,
        shadow_strength=float(rng.uniform(0.1, 0.5)),
        haze_distance=float(rng.uniform(150.0, 500.0)),
        haze_color=_hsv_shift(sky, 0.0, 0.5, 1.1),
        noise_sigma=(0.0, noise),
        blur_sigma=(0.0, blur),
        chroma_blur=float(rng.uniform(0.0, 1.0)),
        block_artifacts=float(rng.uniform(0.0, 0.3)),
        vignette=float(rng.uniform(0.0, 0.3)),
        camera_height=(float(rng.uniform(1.1, 1.9)), 0.1),
        horizon=(float(rng.uniform(0.38, 0.52)), 0.02),
        focal=(float(rng.uniform(0.85, 1.15)), 0.04),
        yaw=float(rng.uniform(0.02, 0.07)),
        hood_probability=0.3,
        hood_height=(0.04, 0.12),
        lanes_per_direction=(1, 2, 2, 3),
        lane_width=(3.0, 3.9),
        sidewalk_width=(1.5, 5.0),
        terrain_probability=float(rng.uniform(0.2, 0.6)),
        building_density=float(rng.uniform(0.4, 0.9)),
        building_height=(4.0, 30.0),
        building_setback=(0.0, 8.0),
        wall_probability=float(rng.uniform(0.15, 0.4)),
        fence_probability=float(rng.uniform(0.15, 0.4)),
        hedge_probability=float(rng.uniform(0.15, 0.4)),
        street_end=(50.0, 160.0),
        street_end_probability=float(rng.uniform(0.3, 0.8)),
        cars=float(rng.uniform(1.5, 3.0)),
        oncoming_cars=float(rng.uniform(1.0, 2.0)),
        parked_cars=float(rng.uniform(1.0, 4.0)),
        trucks=float(rng.uniform(0.2, 0.8)),
        buses=float(rng.uniform(0.1, 0.3)),
        train_probability=float(rng.uniform(0.03, 0.12)),
        people=float(rng.uniform(1.5, 6.0)),
        riders=float(rng.uniform(0.4, 1.0)),
        motorcycle_fraction=float(rng.uniform(0.3, 0.5)),
        bicycles=float(rng.uniform(0.3, 1.5)),
        poles=float(rng.uniform(3.0, 5.0)),
        traffic_lights=float(rng.uniform(1.0, 2.0)),
        traffic_signs=float(rng.uniform(1.5, 2.5)),
        trees=float(rng.uniform(3.0, 4.5)),
    )
