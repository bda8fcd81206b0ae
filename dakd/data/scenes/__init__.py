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

The package is split by concern (each module imports only the ones before it):

- :mod:`~dakd.data.scenes.styles`: class ids, :class:`DomainStyle`, the palettes and the
  registered domains (``GAME``, ``DASHCAM``, ``CITY``, :data:`DOMAINS`), split sizes,
  scenarios and the normalisation constants.
- :mod:`~dakd.data.scenes.layout`: the geometry: argument checking and seeding, the camera,
  the canvas, sprites and planes in the street frame, shape masks, sampling helpers.
- :mod:`~dakd.data.scenes.render`: painting and post-processing, scene assembly and object
  placement, :func:`render_scene`, :func:`render_split` and :func:`renderer_version` (a hash of
  the three modules above, which decide the pixels).
- :mod:`~dakd.data.scenes.cache`: the per-machine split cache (:func:`cached_split`),
  :func:`to_tensor` / :func:`denormalize`, :class:`SceneDataset` and :func:`save_samples`.
"""

# ``name as name``: re-exported for other code and tests, though not part of ``__all__``.
from dakd.data.scenes.cache import SceneDataset, denormalize, save_samples, to_tensor
from dakd.data.scenes.cache import cached_split as cached_split
from dakd.data.scenes.render import render_scene, render_split
from dakd.data.scenes.render import renderer_version as renderer_version
from dakd.data.scenes.styles import (
    DOMAINS,
    MEAN,
    PRETRAIN_DOMAIN,
    SCENARIOS,
    SPLIT_SIZES,
    STD,
    DomainStyle,
    randomized_style,
)

__all__ = [
    "DOMAINS",
    "MEAN",
    "PRETRAIN_DOMAIN",
    "SCENARIOS",
    "SPLIT_SIZES",
    "STD",
    "DomainStyle",
    "SceneDataset",
    "denormalize",
    "randomized_style",
    "render_scene",
    "render_split",
    "save_samples",
    "to_tensor",
]
