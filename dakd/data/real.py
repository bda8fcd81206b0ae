"""The base of the real-dataset readers: one split as a map-style dataset of normalised samples,
its layout on disk, and the report of what is wrong with it.

Every reader serves the same samples as the embedded benchmark: ``{"image": float32 [3, H, W]
normalised, "label": int64 [H, W]}`` with the 19 Cityscapes train ids (255 = ignore). So every
trainer path (samplers, evaluation, data-parallel shards) works on them unchanged.

Transforms (the recipe is in :class:`dakd.config.DataConfig`): the image is resized to a fixed
size (bilinear with antialiasing; labels nearest), optionally scaled by a random factor, and
cropped at a random place (padded with the mean colour and ignore where it is smaller than the
crop). The random numbers come from the caller (:meth:`RealDataset.augmented`), which draws them
from the step's seed (:class:`dakd.data.loader.StepSampler`), so a resumed run reads exactly the
crops an uninterrupted one would. Evaluation samples keep the label at the file's resolution
(``full_label``); the evaluator upsamples the logits to it (:func:`dakd.evaluation.segmentation.evaluate`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from dakd.data.labels import CLASS_NAMES, ID_TO_TRAINID, IGNORE_INDEX, NUM_CLASSES
from dakd.data.scenes import to_tensor

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


def label_table(mapping: dict[int, int]) -> np.ndarray:
    """Raw label value -> train id as a lookup table (every value not in ``mapping``: ignore)."""
    lut = np.full(_LUT_SIZE, IGNORE_INDEX, dtype=np.uint8)
    for raw, train_id in mapping.items():
        lut[raw] = train_id
    return lut


def known_values(values: Iterable[int]) -> np.ndarray:
    """The raw label values a dataset defines, as a mask over all values (a check reports the
    others)."""
    known = np.zeros(_LUT_SIZE, dtype=bool)
    known[list(values)] = True
    return known


def files_matching(folder: Path, pattern: str) -> dict[str, Path]:
    """``{name relative to folder: path}`` of the files matching ``pattern`` under ``folder``."""
    return {
        p.relative_to(folder).as_posix(): p for p in sorted(folder.glob(pattern)) if p.is_file()
    }


def pair_files(
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


def missing_folders(*folders: Path) -> list[Problem]:
    """A problem for each of ``folders`` that is not there."""
    return [Problem("missing_folder", str(f)) for f in folders if not f.is_dir()]


# -- what a check finds -------------------------------------------------------------------------


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
    #: (H, W) of the dataset's published images; None where the dataset's sizes vary
    size: tuple[int, int] | None = None
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
        nominal = self.size
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


# -- one split ---------------------------------------------------------------------------------


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
                report = CheckReport(self.name, self.root, self.size)
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
