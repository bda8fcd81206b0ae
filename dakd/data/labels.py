"""The 19-class Cityscapes label space shared by every dataset and the embedded benchmark.

The table follows the official ``cityscapesscripts.helpers.labels`` table (tested against it in
``tests/test_labels.py``): label ids 0-33 map to 19 training ids, everything else is ignored.
GTA5 labels use the Cityscapes label ids; BDD100K labels are already training ids.
"""

from __future__ import annotations

import numpy as np

NUM_CLASSES = 19
IGNORE_INDEX = 255

#: (name, label id, train id, colour) for the 19 evaluated classes, in train-id order.
_EVALUATED = (
    ("road", 7, (128, 64, 128)),
    ("sidewalk", 8, (244, 35, 232)),
    ("building", 11, (70, 70, 70)),
    ("wall", 12, (102, 102, 156)),
    ("fence", 13, (190, 153, 153)),
    ("pole", 17, (153, 153, 153)),
    ("traffic light", 19, (250, 170, 30)),
    ("traffic sign", 20, (220, 220, 0)),
    ("vegetation", 21, (107, 142, 35)),
    ("terrain", 22, (152, 251, 152)),
    ("sky", 23, (70, 130, 180)),
    ("person", 24, (220, 20, 60)),
    ("rider", 25, (255, 0, 0)),
    ("car", 26, (0, 0, 142)),
    ("truck", 27, (0, 0, 70)),
    ("bus", 28, (0, 60, 100)),
    ("train", 31, (0, 80, 100)),
    ("motorcycle", 32, (0, 0, 230)),
    ("bicycle", 33, (119, 11, 32)),
)

CLASS_NAMES: tuple[str, ...] = tuple(name for name, _, _ in _EVALUATED)
LABEL_IDS: tuple[int, ...] = tuple(label_id for _, label_id, _ in _EVALUATED)
PALETTE = np.array([colour for _, _, colour in _EVALUATED], dtype=np.uint8)

#: Lookup table: Cityscapes label id (0-255) -> train id (0-18, or 255 = ignore).
ID_TO_TRAINID = np.full(256, IGNORE_INDEX, dtype=np.uint8)
ID_TO_TRAINID[list(LABEL_IDS)] = np.arange(NUM_CLASSES, dtype=np.uint8)


def ids_to_train_ids(label_ids: np.ndarray) -> np.ndarray:
    """Map an array of Cityscapes label ids to train ids (unknown ids become ``IGNORE_INDEX``)."""
    label_ids = np.asarray(label_ids)
    if label_ids.dtype != np.uint8:
        if label_ids.size and (label_ids.min() < 0 or label_ids.max() > 255):
            raise ValueError(
                f"label ids must lie in 0..255, got range {label_ids.min()}..{label_ids.max()}"
            )
        label_ids = label_ids.astype(np.uint8)
    return ID_TO_TRAINID[label_ids]


def check_train_ids(train_ids, where: str = "labels") -> None:
    """Raise ``ValueError`` if ``train_ids`` holds a value outside 0..18 and 255."""
    values = np.unique(np.asarray(train_ids))
    bad = values[(values >= NUM_CLASSES) & (values != IGNORE_INDEX) | (values < 0)]
    if bad.size:
        raise ValueError(
            f"{where}: value(s) {bad.tolist()} outside the label space "
            f"(train ids 0..{NUM_CLASSES - 1} and {IGNORE_INDEX} = ignore)"
        )


def colorize(train_ids: np.ndarray) -> np.ndarray:
    """Render train ids (HxW) in the Cityscapes palette (HxWx3 uint8); ignore is black."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[:NUM_CLASSES] = PALETTE
    return lut[np.asarray(train_ids, dtype=np.uint8)]


# -- SYNTHIA-RAND-CITYSCAPES ------------------------------------------------------------------
#: SYNTHIA class id -> Cityscapes train id, for the 16 classes SYNTHIA shares with Cityscapes
#: (the table of the dataset's README, as DAFormer's and ADVENT's converters use it). SYNTHIA's
#: own ids run 0..22; void (0), parking slot (13), road work (14), terrain (16), truck (18),
#: train (20) and lane marking (22) map to ignore. Terrain, truck and train have no pixels in
#: SYNTHIA-RAND-CITYSCAPES, so the 19-class model is evaluated over the 16 classes below.
SYNTHIA_TO_CITYSCAPES = {
    3: 0,  # road
    4: 1,  # sidewalk
    2: 2,  # building
    21: 3,  # wall
    5: 4,  # fence
    7: 5,  # pole
    15: 6,  # traffic light
    9: 7,  # traffic sign
    6: 8,  # vegetation
    1: 10,  # sky
    10: 11,  # pedestrian -> person
    17: 12,  # rider
    8: 13,  # car
    19: 15,  # bus
    12: 17,  # motorcycle
    11: 18,  # bicycle
}
SYNTHIA_NUM_IDS = 23

#: The 16-class protocol (train ids; no terrain, truck, train) and the 13-class one (also no
#: wall, fence, pole), as SYNTHIA -> Cityscapes results are reported.
SYNTHIA_16: tuple[int, ...] = tuple(sorted(SYNTHIA_TO_CITYSCAPES.values()))
SYNTHIA_13: tuple[int, ...] = tuple(c for c in SYNTHIA_16 if c not in (3, 4, 5))


#: The 7 Cityscapes categories (``category`` in cityscapesscripts' table, "void" left out): the
#: proxy label set of pretraining, coarser than and different from the 19 evaluated classes.
CATEGORY_NAMES: tuple[str, ...] = (
    "flat",
    "construction",
    "object",
    "nature",
    "sky",
    "human",
    "vehicle",
)
#: train id (0-18, 255) -> category id (0-6, 255).
TRAINID_TO_CATEGORY = np.full(256, IGNORE_INDEX, dtype=np.uint8)
TRAINID_TO_CATEGORY[:NUM_CLASSES] = (0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 4, 5, 5, 6, 6, 6, 6, 6, 6)
