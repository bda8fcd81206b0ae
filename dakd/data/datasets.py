"""Readers of the real datasets: Cityscapes, GTA5, BDD100K and SYNTHIA-RAND-CITYSCAPES.

Each reader lists one split of a dataset tree in its published layout, pairs every image with
its label file, maps the labels to the 19 Cityscapes train ids (255 = ignore) and serves the
same samples as the embedded benchmark: ``{"image": float32 [3, H, W] normalised, "label":
int64 [H, W]}``. So every trainer path (samplers, evaluation, data-parallel shards) works on
them unchanged.

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

Transforms (the recipe is in :class:`dakd.config.DataConfig`): the image is resized to a fixed
size (bilinear with antialiasing; labels nearest), optionally scaled by a random factor, and
cropped at a random place (padded with the mean colour and ignore where it is smaller than the
crop). The random numbers come from the caller (:meth:`RealDataset.augmented`), which draws them
from the step's seed (:class:`dakd.data.loader.StepSampler`), so a resumed run reads exactly the
crops an uninterrupted one would. Evaluation samples keep the label at the file's resolution
(``full_label``); the evaluator upsamples the logits to it (:func:`dakd.evaluate.evaluate`).

:func:`check_dataset` checks a tree (layout, pairing, readable files, sizes, label values) and
returns a :class:`CheckReport`; training refuses a split whose check fails (:func:`open_split`).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from dakd.data.labels import (
    CLASS_NAMES,
    ID_TO_TRAINID,
    IGNORE_INDEX,
    NUM_CLASSES,
    SYNTHIA_13,
    SYNTHIA_16,
    SYNTHIA_NUM_IDS,
    SYNTHIA_TO_CITYSCAPES,
)
from dakd.data.scenes import to_tensor

ENV = "DAKD_DATA"
"""Environment variable naming the folder that holds every dataset (``$DAKD_DATA/cityscapes``...)."""

#: Label values are looked up in tables of this length (16-bit PNGs hold up to 65535).
_LUT_SIZE = 1 << 16


class DataError(ValueError):
    """A dataset that is missing or fails its check; the message names the paths."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a dataset tree: its kind, the path it concerns and what is wrong.

    Kinds: ``missing_root``, ``missing_folder``, ``missing_split`` (no split list),
    ``empty_split``, ``missing_image`` (listed but absent), ``missing_label``,
    ``unpaired_label`` (a label without an image), ``unreadable``, ``wrong_size``,
    ``unknown_label_value``.
    """

    kind: str
    path: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.kind}: {self.path}" + (f" ({self.detail})" if self.detail else "")


@dataclass
class Layout:
    """One split as found on disk: its (image, label) pairs and what does not pair up."""

    pairs: list[tuple[Path, Path]]
    images: int
    labels: int
    problems: list[Problem] = field(default_factory=list)


def _lut(mapping: dict[int, int]) -> np.ndarray:
    lut = np.full(_LUT_SIZE, IGNORE_INDEX, dtype=np.uint8)
    for raw, train_id in mapping.items():
        lut[raw] = train_id
    return lut


def _known(values: Iterable[int]) -> np.ndarray:
    known = np.zeros(_LUT_SIZE, dtype=bool)
    known[list(values)] = True
    return known


def _files(folder: Path, pattern: str) -> dict[str, Path]:
    """``{name relative to folder: path}`` of the files matching ``pattern`` under ``folder``."""
    return {
        p.relative_to(folder).as_posix(): p for p in sorted(folder.glob(pattern)) if p.is_file()
    }


def _pair(
    images: dict[str, Path],
    labels: dict[str, Path],
    label_path: Callable[[str], Path],
    image_path: Callable[[str], Path],
    unpaired: bool = True,
) -> Layout:
    """Pair images and labels by a shared key; images without a label and (``unpaired``) labels
    without an image are problems."""
    layout = Layout(pairs=[], images=len(images), labels=len(labels))
    for key, image in images.items():
        label = labels.get(key)
        if label is None:
            layout.problems.append(
                Problem("missing_label", str(image), f"no label {label_path(key)}")
            )
        else:
            layout.pairs.append((image, label))
    if unpaired:
        for key in sorted(set(labels) - set(images)):
            layout.problems.append(
                Problem("unpaired_label", str(labels[key]), f"no image {image_path(key)}")
            )
    return layout


def _folders(*folders: Path) -> list[Problem]:
    return [Problem("missing_folder", str(f)) for f in folders if not f.is_dir()]


class RealDataset(Dataset, ABC):
    """One split of a real dataset as a map-style dataset of normalised samples.

    Args:
        root: the dataset's folder (its published layout, see the module docstring).
        split: a split of :attr:`splits`.
        resize: ``(H, W)`` every image (and, unless ``full_label``, label) is resized to;
            None keeps the files' size.
        crop: ``(H, W)`` of the random crop :meth:`augmented` takes; None takes no crop.
        random_scale: ``(low, high)``: :meth:`augmented` scales the resized sample by a factor
            drawn uniformly from it before cropping; ``(1, 1)`` keeps the size.
        full_label: keep labels at the files' resolution (the evaluation protocol).
        pairs: the (image, label) pairs, e.g. from a check that listed them already; by default
            the split is listed now and a layout problem raises :class:`DataError`.
    """

    name: ClassVar[str] = ""
    folder: ClassVar[str] = ""  # under $DAKD_DATA
    splits: ClassVar[tuple[str, ...]] = ("train", "val")
    default_splits: ClassVar[tuple[str, ...]] = ("train", "val")
    #: (H, W) of the published images; None where the dataset's sizes vary.
    size: ClassVar[tuple[int, int] | None] = None
    lut: ClassVar[np.ndarray] = ID_TO_TRAINID
    known: ClassVar[np.ndarray] = np.zeros(_LUT_SIZE, dtype=bool)
    label_space: ClassVar[str] = ""  # how the check names the raw label values
    #: Extra mIoU protocols over class subsets (name -> train ids), e.g. SYNTHIA's 16 classes.
    protocols: ClassVar[dict[str, tuple[int, ...]]] = {}

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        resize: tuple[int, int] | None = None,
        crop: tuple[int, int] | None = None,
        random_scale: tuple[float, float] = (1.0, 1.0),
        full_label: bool = False,
        pairs: list[tuple[Path, Path]] | None = None,
    ):
        if split not in self.splits:
            raise DataError(f"{self.name}: no split {split!r}; splits: {', '.join(self.splits)}")
        self.root = Path(root)
        self.split = split
        self.resize = tuple(resize) if resize else None
        self.crop = tuple(crop) if crop else None
        self.random_scale = (float(random_scale[0]), float(random_scale[1]))
        self.full_label = full_label
        if pairs is None:
            layout = self.layout(self.root, split)
            if layout.problems or not layout.pairs:
                report = CheckReport(self.name, self.root)
                report.add(split, layout)
                raise DataError(report.text())
            pairs = layout.pairs
        self.pairs = list(pairs)

    # -- the layout and the files ------------------------------------------------------------
    @classmethod
    @abstractmethod
    def layout(cls, root: Path, split: str) -> Layout:
        """The image/label pairs of ``split`` under ``root`` and what is wrong with them; each
        dataset class lists its own published layout."""

    @classmethod
    def splits_in(cls, root: Path) -> tuple[str, ...]:
        """The splits ``data check`` looks at by default."""
        return cls.default_splits

    @staticmethod
    def read_image(path: Path) -> Image.Image:
        """The decoded RGB image (a truncated or corrupt file raises)."""
        with Image.open(path) as image:
            return image.convert("RGB")

    @staticmethod
    def read_raw_label(path: Path) -> np.ndarray:
        """The label file's values as an (H, W) unsigned integer array."""
        with Image.open(path) as image:
            if image.mode not in ("L", "P", "I;16", "I"):
                raise ValueError(f"expected a one-channel label image, got mode {image.mode}")
            return np.asarray(image)

    @classmethod
    def unknown_values(cls, raw: np.ndarray) -> list[int]:
        """Raw label values outside the dataset's label space, sorted."""
        if raw.dtype in (np.uint8, np.uint16):  # counting is much faster than sorting
            values = np.flatnonzero(np.bincount(raw.ravel()))
        else:
            values = np.unique(raw)
        outside = (values < 0) | (values >= _LUT_SIZE)
        inside = values[~outside].astype(np.int64)
        return sorted(values[outside].tolist() + inside[~cls.known[inside]].tolist())

    @classmethod
    def train_ids(cls, raw: np.ndarray) -> np.ndarray:
        """Raw label values -> uint8 train ids (0..18, 255 = ignore)."""
        return cls.lut[np.clip(raw, 0, _LUT_SIZE - 1).astype(np.int64)]

    # -- samples -----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.pairs)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.root)!r}, {self.split!r})"

    def load(self, index: int) -> tuple[Image.Image, np.ndarray]:
        """The RGB image and the uint8 train-id label of pair ``index``, at the files' size."""
        image_path, label_path = self.pairs[index]
        path = image_path
        try:
            image = self.read_image(image_path)
            path = label_path
            raw = self.read_raw_label(label_path)
        except Exception as err:  # noqa: BLE001 - any decoding failure means the same here
            raise DataError(f"{path}: cannot read ({type(err).__name__}: {err})") from None
        if raw.shape != (image.height, image.width):
            raise DataError(
                f"{label_path}: label {raw.shape[0]}x{raw.shape[1]} but its image "
                f"{image_path} is {image.height}x{image.width}"
            )
        unknown = self.unknown_values(raw)
        if unknown:
            raise DataError(
                f"{label_path}: label value(s) {unknown[:10]} outside the {self.name} "
                f"label space ({self.label_space})"
            )
        return image, self.train_ids(raw)

    def _resized(self, index: int, size: tuple[int, int] | None, full_label: bool):
        image, label = self.load(index)
        if size is not None and size != (image.height, image.width):
            # imported here: torchvision takes seconds to import (every trial process, every
            # CLI call), and only real datasets resize
            import torchvision.transforms.v2.functional as TF
            from torchvision.transforms import InterpolationMode

            image = TF.resize(image, list(size), InterpolationMode.BILINEAR, antialias=True)
            if not full_label:
                label = np.asarray(
                    TF.resize(Image.fromarray(label), list(size), InterpolationMode.NEAREST)
                )
        x = to_tensor(np.asarray(image))
        y = torch.from_numpy(np.asarray(label, dtype=np.int64).copy())
        return x, y

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        """The sample resized to ``resize`` (no crop, no randomness): the evaluation form."""
        image, label = self._resized(int(index), self.resize, self.full_label)
        return {"image": image, "label": label}

    def augmented(self, index: int, draws) -> dict[str, torch.Tensor]:
        """The training form: resized, scaled and cropped as three numbers in [0, 1) say.

        ``draws = (scale, top, left)``: the scale factor is ``low + scale * (high - low)`` of
        ``random_scale``; ``top``/``left`` place the crop within the scaled sample.
        """
        u_scale, u_top, u_left = (float(v) for v in draws[:3])
        index = int(index)
        low, high = self.random_scale
        size = self.resize
        if low != 1.0 or high != 1.0:
            if size is None:
                image_path = self.pairs[index][0]
                with Image.open(image_path) as im:
                    size = (im.height, im.width)
            factor = low + u_scale * (high - low)
            size = (max(1, round(size[0] * factor)), max(1, round(size[1] * factor)))
        image, label = self._resized(index, size, False)
        if self.crop is not None:
            image, label = crop(image, label, self.crop, u_top, u_left)
        return {"image": image, "label": label}

    def crop_box(
        self, index: int, draws
    ) -> tuple[tuple[float, float, float, float], tuple[int, int]]:
        """Where :meth:`augmented` with ``draws`` cuts its sample from the resized image (the
        form the teacher-output cache stores): ``(x0, y0, x1, y1)`` in pixels of that image,
        and its ``(height, width)``. Padding past the image's edge lies outside it."""
        u_scale, u_top, u_left = (float(v) for v in draws[:3])
        size = self.resize
        if size is None:
            with Image.open(self.pairs[int(index)][0]) as im:
                size = (im.height, im.width)
        low, high = self.random_scale
        scaled = size
        if low != 1.0 or high != 1.0:
            factor = low + u_scale * (high - low)
            scaled = (max(1, round(size[0] * factor)), max(1, round(size[1] * factor)))
        if self.crop is None:
            return (0.0, 0.0, float(size[1]), float(size[0])), tuple(size)
        height, width = self.crop
        h, w = max(scaled[0], height), max(scaled[1], width)
        top = min(int(u_top * (h - height + 1)), h - height)
        left = min(int(u_left * (w - width + 1)), w - width)
        sy, sx = size[0] / scaled[0], size[1] / scaled[1]
        box = (left * sx, top * sy, (left + width) * sx, (top + height) * sy)
        return box, tuple(size)


def crop(
    image: torch.Tensor, label: torch.Tensor, size: tuple[int, int], u_top: float, u_left: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """A ``size`` crop of a normalised image and its label at the place ``u_top``, ``u_left``
    (in [0, 1)) say; a sample smaller than the crop is padded at the bottom and right with 0
    (the mean colour) and ignore."""
    height, width = size
    h, w = label.shape
    pad_h, pad_w = max(height - h, 0), max(width - w, 0)
    if pad_h or pad_w:
        image = F.pad(image, (0, pad_w, 0, pad_h), value=0.0)
        label = F.pad(label, (0, pad_w, 0, pad_h), value=IGNORE_INDEX)
        h, w = label.shape
    top = min(int(u_top * (h - height + 1)), h - height)
    left = min(int(u_left * (w - width + 1)), w - width)
    return (
        image[:, top : top + height, left : left + width],
        label[top : top + height, left : left + width],
    )


# -- the four datasets --------------------------------------------------------------------------


class CityscapesDataset(RealDataset):
    """Cityscapes fine annotations: 2975 train and 500 val images of 1024x2048."""

    name = "cityscapes"
    folder = "cityscapes"
    splits = ("train", "val", "test")
    size = (1024, 2048)
    known = _known(range(34))
    label_space = "Cityscapes label ids 0..33"

    @classmethod
    def layout(cls, root: Path, split: str) -> Layout:
        images_dir = root / "leftImg8bit" / split
        labels_dir = root / "gtFine" / split
        problems = _folders(images_dir, labels_dir)
        if problems:
            return Layout([], 0, 0, problems)
        image_suffix, label_suffix = "_leftImg8bit.png", "_gtFine_labelIds.png"
        images = {
            k[: -len(image_suffix)]: p for k, p in _files(images_dir, "*/*" + image_suffix).items()
        }
        labels = {
            k[: -len(label_suffix)]: p for k, p in _files(labels_dir, "*/*" + label_suffix).items()
        }
        return _pair(
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
        problems = _folders(images_dir, labels_dir)
        if problems:
            return Layout([], 0, 0, problems)
        images = _files(images_dir, "*.png")
        labels = _files(labels_dir, "*.png")
        listing = root / f"{split}.txt"
        if not listing.is_file():
            if split != "train":
                return Layout(
                    [], 0, 0, [Problem("missing_split", str(listing), f"lists the {split} split")]
                )
            return _pair(images, labels, labels_dir.joinpath, images_dir.joinpath)
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
        layout = _pair(
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
    known = _known(range(34))
    label_space = "Cityscapes label ids 0..33"


class BDD100KDataset(RealDataset):
    """BDD100K semantic segmentation (the 10K images): 7000 train, 1000 val of 720x1280,
    labels already in train ids."""

    name = "bdd100k"
    folder = "bdd100k"
    size = (720, 1280)
    lut = _lut({i: i for i in range(NUM_CLASSES)})
    known = _known([*range(NUM_CLASSES), IGNORE_INDEX])
    label_space = f"train ids 0..{NUM_CLASSES - 1} and {IGNORE_INDEX}"

    @classmethod
    def layout(cls, root: Path, split: str) -> Layout:
        images_dir = root / "images" / "10k" / split
        labels_dir = root / "labels" / "sem_seg" / "masks" / split
        problems = _folders(images_dir, labels_dir)
        if problems:
            return Layout([], 0, 0, problems)
        images = {k[: -len(".jpg")]: p for k, p in _files(images_dir, "*.jpg").items()}
        labels = {k[: -len(".png")]: p for k, p in _files(labels_dir, "*.png").items()}
        return _pair(
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
    lut = _lut(SYNTHIA_TO_CITYSCAPES)
    known = _known(range(SYNTHIA_NUM_IDS))
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


# -- checking a tree ---------------------------------------------------------------------------


@dataclass
class SplitSummary:
    images: int = 0
    labels: int = 0
    pairs: int = 0
    decoded: int = 0
    sizes: Counter = field(default_factory=Counter)  # (H, W) -> decoded images of that size


@dataclass
class CheckReport:
    """What :func:`check_dataset` found: per split counts, every problem with its path, and the
    pixel counts of the decoded labels per train id (index 19 counts ignore)."""

    dataset: str
    root: Path
    splits: dict[str, SplitSummary] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    pixels: np.ndarray = field(default_factory=lambda: np.zeros(NUM_CLASSES + 1, np.int64))
    layouts: dict[str, Layout] = field(default_factory=dict, repr=False)

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, split: str, layout: Layout) -> SplitSummary:
        self.layouts[split] = layout
        summary = self.splits.setdefault(split, SplitSummary())
        summary.images, summary.labels, summary.pairs = (
            layout.images,
            layout.labels,
            len(layout.pairs),
        )
        self.problems += layout.problems
        if not layout.problems and not layout.pairs:
            self.problems.append(Problem("empty_split", str(self.root), f"no {split} images"))
        return summary

    def kinds(self) -> Counter:
        return Counter(p.kind for p in self.problems)

    def text(self, limit: int | None = 50) -> str:
        """The report for a person: summary per split, problems (the first ``limit``), class
        pixel frequencies, and the verdict."""
        lines = [f"{self.dataset} at {self.root}"]
        nominal = reader(self.dataset).size
        for split, s in self.splits.items():
            sizes = ", ".join(f"{h}x{w} ({n})" for (h, w), n in s.sizes.most_common(3))
            line = (
                f"  {split}: {s.images} images, {s.labels} labels, {s.pairs} pairs; "
                f"{s.decoded} decoded"
            )
            if sizes:
                line += f"; sizes {sizes}"
                top = s.sizes.most_common(1)[0][0]
                if nominal and top != nominal:
                    line += f" (the published images are {nominal[0]}x{nominal[1]})"
            lines.append(line)
        total = int(self.pixels.sum())
        if total:
            labelled = int(self.pixels[:NUM_CLASSES].sum())
            lines.append(
                f"class pixel frequencies (share of labelled pixels; "
                f"{100 * self.pixels[NUM_CLASSES] / total:.1f}% of all pixels ignored):"
            )
            cells = [
                f"{name} {100 * count / max(labelled, 1):.2f}%"
                for name, count in zip(CLASS_NAMES, self.pixels[:NUM_CLASSES], strict=True)
            ]
            lines += ["  " + "  ".join(cells[i : i + 5]) for i in range(0, len(cells), 5)]
        if self.problems:
            counts = ", ".join(f"{n} {kind}" for kind, n in sorted(self.kinds().items()))
            lines.append(f"problems: {len(self.problems)} ({counts})")
            shown = self.problems if limit is None else self.problems[:limit]
            lines += [f"  {p}" for p in shown]
            if len(shown) < len(self.problems):
                lines.append(f"  ... and {len(self.problems) - len(shown)} more")
            lines.append(f"FAILED: {self.dataset} at {self.root} fails its check")
        else:
            lines.append(f"OK: {self.dataset} at {self.root} passes its check")
        return "\n".join(lines)


def _inspect(cls: type[RealDataset], image_path: Path, label_path: Path):
    """Decode one pair: (problems, image size or None, pixel counts per train id or None)."""
    problems = []
    size = None
    try:
        image = cls.read_image(image_path)
        size = (image.height, image.width)
    except Exception as err:  # noqa: BLE001
        problems.append(Problem("unreadable", str(image_path), f"{type(err).__name__}: {err}"))
    try:
        raw = cls.read_raw_label(label_path)
        if raw.ndim != 2:
            raise ValueError(f"expected one channel, got shape {raw.shape}")
    except Exception as err:  # noqa: BLE001
        problems.append(Problem("unreadable", str(label_path), f"{type(err).__name__}: {err}"))
        return problems, size, None
    if size is not None and raw.shape != size:
        problems.append(
            Problem(
                "wrong_size",
                str(label_path),
                f"label {raw.shape[0]}x{raw.shape[1]}, its image {size[0]}x{size[1]}",
            )
        )
    unknown = cls.unknown_values(raw)
    if unknown:
        shown = ", ".join(map(str, unknown[:10])) + (" ..." if len(unknown) > 10 else "")
        problems.append(
            Problem(
                "unknown_label_value",
                str(label_path),
                f"value(s) {shown} outside {cls.label_space}",
            )
        )
    counts = np.bincount(cls.train_ids(raw).ravel(), minlength=256)
    return problems, size, np.append(counts[:NUM_CLASSES], counts[IGNORE_INDEX])


def _chosen(n: int, sample: int | None) -> list[int]:
    """Every index (``sample`` None), or ``sample`` indices spread evenly over ``n``."""
    if sample is None or sample >= n:
        return list(range(n))
    if sample <= 0:
        return []
    return sorted(set(np.linspace(0, n - 1, sample).round().astype(int).tolist()))


def check_dataset(
    name: str,
    root: str | Path,
    splits: Iterable[str] | None = None,
    sample: int | None = None,
    workers: int = 1,
) -> CheckReport:
    """Check a dataset tree; never raises for what it finds, it reports it.

    Every split (default: those the dataset has under ``root``) is listed and its images and
    labels paired. Then ``sample`` pairs per split, spread evenly (None: every pair), are
    decoded: unreadable files, labels whose size differs from their image's, images whose size
    differs from the split's most common one (for datasets of one published size), and label
    values outside the dataset's label space are reported, each with its path; the decoded
    labels give the class pixel frequencies. ``workers`` threads decode in parallel.
    """
    cls = reader(name)
    root = Path(root)
    report = CheckReport(name, root)
    if not root.is_dir():
        report.problems.append(Problem("missing_root", str(root), f"no {name} folder there"))
        return report
    for split in splits or cls.splits_in(root):
        if split not in cls.splits:
            report.problems.append(
                Problem("missing_split", str(root), f"{name} has no split {split!r}")
            )
            continue
        layout = cls.layout(root, split)
        summary = report.add(split, layout)
        chosen = [layout.pairs[i] for i in _chosen(len(layout.pairs), sample)]
        with ThreadPoolExecutor(max(1, workers)) as pool:
            results = list(pool.map(lambda pair: _inspect(cls, *pair), chosen))
        sizes = {}
        for (image_path, _), (problems, size, counts) in zip(chosen, results, strict=True):
            report.problems += problems
            if size is not None:
                sizes[image_path] = size
                summary.sizes[size] += 1
            if counts is not None:
                report.pixels += counts
        summary.decoded = len(chosen)
        if cls.size is not None and summary.sizes:
            common = summary.sizes.most_common(1)[0][0]
            for image_path, size in sizes.items():
                if size != common:
                    report.problems.append(
                        Problem(
                            "wrong_size",
                            str(image_path),
                            f"{size[0]}x{size[1]}, the split's images are {common[0]}x{common[1]}",
                        )
                    )
    return report


@lru_cache(maxsize=64)
def _checked(name: str, root: str, split: str, sample: int) -> CheckReport:
    return check_dataset(name, root, [split], sample=sample)


def open_split(name: str, root: str | Path, split: str, sample: int, **transform: Any):
    """The split as a :class:`RealDataset` after its check (layout and pairing of every file,
    ``sample`` pairs decoded; cached per process); a failed check raises :class:`DataError`
    with the report."""
    report = _checked(name, str(Path(root)), split, int(sample))
    if not report.ok:
        raise DataError(
            f"{name} {split} split fails its check (python -m dakd data check --dataset {name} "
            f"--root {root} shows every file):\n{report.text()}"
        )
    return reader(name)(root, split, pairs=report.layouts[split].pairs, **transform)


# -- the datasets of an experiment ----------------------------------------------------------------


def _root(cfg, role: str) -> tuple[Path | None, str]:
    """(folder or None, where it came from) of the source or target dataset of ``cfg``."""
    name = cfg.domains[0 if role == "source" else 1]
    value = getattr(cfg.data, f"{role}_root")
    if value:
        return Path(value), f"data.{role}_root"
    base = default_root(name)
    return base, f"${ENV}/{reader(name).folder}"


def data_root(cfg, role: str) -> Path:
    """The folder of the ``role`` (source or target) dataset: ``data.<role>_root``, else
    ``$DAKD_DATA/<dataset folder>``; one ConfigError naming the key and the variable otherwise."""
    from dakd.config import ConfigError

    key = f"data.{role}_root"
    name = cfg.domains[0 if role == "source" else 1]
    path, origin = _root(cfg, role)
    if path is None:
        raise ConfigError(
            f"{key}: no folder for the {role} dataset {name}: set {key} (experiment.{key} in "
            f"a sweep spec) or the {ENV} environment variable ({name} is then read from "
            f"${ENV}/{reader(name).folder})"
        )
    if not path.is_dir():
        hint = f"set {key} or {ENV}" if origin.startswith("$") else f"or leave it empty for ${ENV}"
        raise ConfigError(f"{key}: {path} ({origin}) is not a folder holding {name}; {hint}")
    return path


def fingerprint_roots(cfg) -> dict[str, str]:
    """The absolute dataset folders, for the fingerprint of a stage: the same config on other
    data (another folder) is another stage."""
    out = {}
    for role in ("source", "target"):
        path, _ = _root(cfg, role)
        out[f"data.{role}_root"] = os.path.abspath(path) if path is not None else ""
    return out


def split_of(cfg, role: str, split: str) -> RealDataset:
    """The checked ``split`` of the source or target dataset of ``cfg``, with the recipe of
    ``cfg.data``: training splits resized, scaled and cropped; ``val`` resized with labels at
    full resolution."""
    d = cfg.data
    name = cfg.domains[0 if role == "source" else 1]
    if split == "val":
        transform = {"resize": tuple(d.val_resize), "full_label": True}
    else:
        transform = {
            "resize": tuple(getattr(d, f"{role}_resize")),
            "crop": tuple(getattr(d, f"{role}_crop")),
            "random_scale": tuple(d.random_scale),
        }
    return open_split(name, data_root(cfg, role), split, d.check_sample, **transform)


def protocols(cfg) -> dict[str, tuple[int, ...]]:
    """Extra mIoU protocols of the experiment's source dataset (SYNTHIA: 16 and 13 classes)."""
    if cfg.data.dataset != "real":
        return {}
    return dict(reader(cfg.domains[0]).protocols)
