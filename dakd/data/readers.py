"""Readers of the real datasets: Cityscapes, GTA5, BDD100K and SYNTHIA-RAND-CITYSCAPES.

Each reader lists one split of a dataset tree in its published layout, pairs every image with
its label file and maps the labels to the 19 Cityscapes train ids (255 = ignore); the samples
and transforms are those of :class:`dakd.data.real.RealDataset`.

=============  ====================================================  ===========================
dataset        layout under its root                                 labels
=============  ====================================================  ===========================
cityscapes     ``leftImg8bit/{split}/{city}/*_leftImg8bit.png``       label ids -> train ids
               ``gtFine/{split}/{city}/*_gtFine_labelIds.png``
gta5           ``images/*.png``, ``labels/*.png`` (same names);       Cityscapes label ids
               ``{split}.txt`` lists a split (train: all without)
bdd100k        ``images/10k/{split}/*.jpg``                           train ids already
               ``labels/sem_seg/masks/{split}/*.png``
synthia        ``RGB/*.png``, ``GT/LABELS/*.png`` (same names);       SYNTHIA ids in the first
               ``{split}.txt`` lists a split (train: all without)    channel of a 16-bit PNG
=============  ====================================================  ===========================
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar

import numpy as np
from PIL import Image

from dakd.data.labels import (
    IGNORE_INDEX,
    NUM_CLASSES,
    SYNTHIA_13,
    SYNTHIA_16,
    SYNTHIA_NUM_IDS,
    SYNTHIA_TO_CITYSCAPES,
)
from dakd.data.real import (
    DataError,
    Layout,
    Problem,
    RealDataset,
    files_matching,
    known_values,
    label_table,
    missing_folders,
    pair_files,
)

ENV = "DAKD_DATA"
"""Environment variable naming the folder that holds every dataset (``$DAKD_DATA/cityscapes``...)."""


class CityscapesDataset(RealDataset):
    """Cityscapes fine annotations: 2975 train and 500 val images of 1024x2048."""

    name = "cityscapes"
    folder = "cityscapes"
    splits = ("train", "val", "test")
    size = (1024, 2048)
    known = known_values(range(34))
    label_space = "Cityscapes label ids 0..33"

    @classmethod
    def layout(cls, root: Path, split: str) -> Layout:
        images_dir = root / "leftImg8bit" / split
        labels_dir = root / "gtFine" / split
        problems = missing_folders(images_dir, labels_dir)
        if problems:
            return Layout([], 0, 0, problems)
        image_suffix, label_suffix = "_leftImg8bit.png", "_gtFine_labelIds.png"
        images = {
            k[: -len(image_suffix)]: p
            for k, p in files_matching(images_dir, "*/*" + image_suffix).items()
        }
        labels = {
            k[: -len(label_suffix)]: p
            for k, p in files_matching(labels_dir, "*/*" + label_suffix).items()
        }
        return pair_files(
            images,
            labels,
            lambda key: labels_dir / (key + label_suffix),
            lambda key: images_dir / (key + image_suffix),
        )


class _ListedDataset(RealDataset):
    """Images and labels in two flat folders under the same names; a split is the list
    ``{root}/{split}.txt`` (one file name a line), and ``train`` without a list is every image."""

    image_dir: ClassVar[str] = "images"
    label_dir: ClassVar[str] = "labels"
    splits = ("train", "val", "test")
    default_splits = ("train",)

    @classmethod
    def splits_in(cls, root: Path) -> tuple[str, ...]:
        listed = tuple(s for s in cls.splits if s != "train" and (root / f"{s}.txt").is_file())
        return ("train", *listed)

    @classmethod
    def layout(cls, root: Path, split: str) -> Layout:
        images_dir, labels_dir = root / cls.image_dir, root / cls.label_dir
        problems = missing_folders(images_dir, labels_dir)
        if problems:
            return Layout([], 0, 0, problems)
        images = files_matching(images_dir, "*.png")
        labels = files_matching(labels_dir, "*.png")
        listing = root / f"{split}.txt"
        if not listing.is_file():
            if split != "train":
                return Layout(
                    [], 0, 0, [Problem("missing_split", str(listing), f"lists the {split} split")]
                )
            return pair_files(images, labels, labels_dir.joinpath, images_dir.joinpath)
        names = []
        for line in listing.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                name = Path(line).name
                names.append(name if name.endswith(".png") else name + ".png")
        missing = [
            Problem("missing_image", str(images_dir / n), f"listed in {listing}")
            for n in names
            if n not in images
        ]
        chosen = {n: images[n] for n in names if n in images}
        layout = pair_files(
            chosen,
            {n: labels[n] for n in names if n in labels},
            labels_dir.joinpath,
            images_dir.joinpath,
            unpaired=False,
        )
        layout.images, layout.problems = len(chosen), missing + layout.problems
        return layout


class GTA5Dataset(_ListedDataset):
    """GTA5 (Playing for Data): 24966 images of about 1052x1914, labels in Cityscapes ids."""

    name = "gta5"
    folder = "gta5"
    known = known_values(range(34))
    label_space = "Cityscapes label ids 0..33"


class BDD100KDataset(RealDataset):
    """BDD100K semantic segmentation (the 10K images): 7000 train, 1000 val of 720x1280,
    labels already in train ids."""

    name = "bdd100k"
    folder = "bdd100k"
    size = (720, 1280)
    lut = label_table({i: i for i in range(NUM_CLASSES)})
    known = known_values([*range(NUM_CLASSES), IGNORE_INDEX])
    label_space = f"train ids 0..{NUM_CLASSES - 1} and {IGNORE_INDEX}"

    @classmethod
    def layout(cls, root: Path, split: str) -> Layout:
        images_dir = root / "images" / "10k" / split
        labels_dir = root / "labels" / "sem_seg" / "masks" / split
        problems = missing_folders(images_dir, labels_dir)
        if problems:
            return Layout([], 0, 0, problems)
        images = {k[: -len(".jpg")]: p for k, p in files_matching(images_dir, "*.jpg").items()}
        labels = {k[: -len(".png")]: p for k, p in files_matching(labels_dir, "*.png").items()}
        return pair_files(
            images,
            labels,
            lambda key: labels_dir / f"{key}.png",
            lambda key: images_dir / f"{key}.jpg",
        )


def read_png16(path: Path) -> np.ndarray:
    """A PNG's values with all their bits: (H, W, C) uint16 for 16-bit colour PNGs, else what
    Pillow reads.

    Pillow has no 16-bit colour mode: it reads a 16-bit RGB(A) PNG as 8-bit RGB(A) holding each
    sample's high byte (raw mode ``RGB;16B``). Its ``RGB;16L`` raw mode takes the other byte of
    each 2-byte sample, which in PNG's big-endian order is the low byte; decoding once with each
    (same filters, same bytes per pixel) and joining the two gives the 16-bit samples, with
    Pillow alone.
    """
    with Image.open(path) as image:
        tiles = list(image.tile)
        rawmode = tiles[0].args if tiles and image.format == "PNG" else None
        if rawmode not in ("RGB;16B", "RGBA;16B"):
            return np.asarray(image)
        high = np.asarray(image)
    with Image.open(path) as image:
        image.tile = [tile._replace(args=rawmode[:-1] + "L") for tile in image.tile]
        low = np.asarray(image)
    return (high.astype(np.uint16) << 8) | low


class SynthiaDataset(_ListedDataset):
    """SYNTHIA-RAND-CITYSCAPES: 9400 images of 760x1280.

    Its labels (``GT/LABELS``) are 16-bit RGB PNGs whose first channel holds the class id (the
    channel DAFormer's converter takes with OpenCV's unchanged read); read by :func:`read_png16`.
    """

    name = "synthia"
    folder = "synthia"
    image_dir = "RGB"
    label_dir = "GT/LABELS"
    size = (760, 1280)
    lut = label_table(SYNTHIA_TO_CITYSCAPES)
    known = known_values(range(SYNTHIA_NUM_IDS))
    label_space = f"SYNTHIA ids 0..{SYNTHIA_NUM_IDS - 1}"
    protocols = {"miou16": SYNTHIA_16, "miou13": SYNTHIA_13}

    @staticmethod
    def read_raw_label(path: Path) -> np.ndarray:
        values = read_png16(path)
        return values[..., 0] if values.ndim == 3 else values


DATASETS: dict[str, type[RealDataset]] = {
    cls.name: cls for cls in (CityscapesDataset, GTA5Dataset, BDD100KDataset, SynthiaDataset)
}
"""Reader classes by dataset name (what ``data.source``/``data.target`` name)."""

#: The paper's scenarios on real data: (source, target).
REAL_SCENARIOS = {
    "synth_to_real": ("gta5", "cityscapes"),
    "real_to_real": ("bdd100k", "cityscapes"),
}


def reader(name: str) -> type[RealDataset]:
    try:
        return DATASETS[name]
    except KeyError:
        raise DataError(f"unknown dataset {name!r}; datasets: {', '.join(DATASETS)}") from None


def default_root(name: str) -> Path | None:
    """``$DAKD_DATA/<dataset folder>``, or None when the variable is unset."""
    base = os.environ.get(ENV, "")
    return Path(base) / reader(name).folder if base else None
