"""The real datasets of an experiment: checking a dataset tree, and the checked splits and
evaluation protocols an experiment's data section names.

The readers (one class per dataset, in :mod:`dakd.data.readers`, on the base in
:mod:`dakd.data.real`) list a split in its published layout (docs/datasets.md).
:func:`check_dataset` checks a tree (layout, pairing, readable files, sizes, label values) and
returns a :class:`CheckReport`; training refuses a split whose check fails (:func:`open_split`).
This module takes the data section (:class:`dakd.config.DataConfig`) and imports nothing of the
config: the config imports the readers' names.
"""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from dakd.data.labels import IGNORE_INDEX, NUM_CLASSES
from dakd.data.readers import (
    DATASETS,
    ENV,
    REAL_SCENARIOS,
    BDD100KDataset,
    CityscapesDataset,
    GTA5Dataset,
    SynthiaDataset,
    default_root,
    read_png16,
    reader,
)
from dakd.data.real import (
    CheckReport,
    DataError,
    Layout,
    Problem,
    RealDataset,
    SplitSummary,
    crop,
)

__all__ = [
    "DATASETS",
    "ENV",
    "REAL_SCENARIOS",
    "BDD100KDataset",
    "CheckReport",
    "CityscapesDataset",
    "DataError",
    "GTA5Dataset",
    "Layout",
    "Problem",
    "RealDataset",
    "SplitSummary",
    "SynthiaDataset",
    "check_dataset",
    "crop",
    "default_root",
    "open_split",
    "protocols",
    "read_png16",
    "reader",
    "split_of",
]


# -- checking a tree ---------------------------------------------------------------------------


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
    report = CheckReport(name, root, cls.size)
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


def split_of(data: Any, role: str, split: str) -> RealDataset:
    """The checked ``split`` of the source or target dataset of the data section ``data``
    (:class:`dakd.config.DataConfig`), with
    its recipe: training splits resized, scaled and cropped; ``val`` resized with labels at full
    resolution. The folder is ``data.root(role)``, which names the key when there is none."""
    if split == "val":
        transform = {"resize": tuple(data.val_resize), "full_label": True}
    else:
        transform = {
            "resize": tuple(getattr(data, f"{role}_resize")),
            "crop": tuple(getattr(data, f"{role}_crop")),
            "random_scale": tuple(data.random_scale),
        }
    name = data.domain(role)
    return open_split(name, data.root(role), split, data.check_sample, **transform)


def protocols(data: Any) -> dict[str, tuple[int, ...]]:
    """Extra mIoU protocols of the source dataset of the data section ``data``: SYNTHIA's 16
    and 13 classes."""
    if data.dataset != "real":
        return {}
    return dict(reader(data.domain("source")).protocols)
