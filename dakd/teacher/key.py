"""What keys a teacher-output cache (``dakd.teacher.cache``).

The key (:class:`CacheSpec`) is a hash of everything that decides a cache's numbers: the teacher
checkpoint's content and network, the dataset's identity, the flip variants, the BatchNorm
statistics, the arithmetic and the storage format (:class:`dakd.teacher.storage.Storage`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dakd.paradigms import DEFAULT_LEVELS
from dakd.teacher.storage import CacheError, Storage

FORMAT = "dakd-teacher-cache/1"


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def dataset_identity(dataset) -> dict[str, Any]:
    """What names a training split's images: the embedded domain with its seed, size and
    renderer version, or the real dataset with its folder, resize and file listing."""
    from dakd.data.scenes import SceneDataset, renderer_version

    if isinstance(dataset, SceneDataset):
        return {
            "kind": "scenes",
            "domain": dataset.domain,
            "split": dataset.split,
            "seed": dataset.seed,
            "size": list(dataset.size),
            "length": len(dataset),
            "renderer": renderer_version(),
        }
    pairs = getattr(dataset, "pairs", None)
    if pairs is None:
        raise CacheError(f"{dataset!r}: the teacher cache knows embedded scenes and real datasets")
    listing = hashlib.sha256()
    root = Path(dataset.root)
    for image, label in pairs:
        for path in (image, label):
            stat = Path(path).stat()
            listing.update(
                f"{Path(path).relative_to(root)}:{stat.st_size}:{stat.st_mtime_ns};".encode()
            )
    return {
        "kind": "real",
        "dataset": dataset.name,
        "split": dataset.split,
        "root": str(root.resolve()),
        "resize": list(dataset.resize) if dataset.resize else None,
        "length": len(dataset),
        "files": listing.hexdigest()[:20],
    }


def geometry_of(dataset) -> tuple[str, bool]:
    """How a training sample is cut from the cached image, and whether reading the cache then
    gives exactly the teacher's prediction on the sample: ``("identity", True)`` when the
    sample is the whole stored image (embedded scenes; real data without random scale whose
    crop is the resized image), else ``("crop", False)``: random scale and crop are applied to
    the stored map with the same geometry (ReLabel's RoIAlign), which is not what the teacher
    predicts on the crop itself (its receptive field sees the crop's borders)."""
    crop = getattr(dataset, "crop", None)
    if crop is None:
        return "identity", True
    scale = tuple(getattr(dataset, "random_scale", (1.0, 1.0)))
    resize = getattr(dataset, "resize", None)
    if scale == (1.0, 1.0) and resize is not None and tuple(crop) == tuple(resize):
        return "identity", True
    return "crop", False


@dataclass(frozen=True)
class CacheSpec:
    """Everything that decides a cache's numbers; its hash is the cache's key (its folder)."""

    teacher_sha256: str
    teacher_network: dict[str, Any]
    dataset: dict[str, Any]
    variants: int  # 2: each image and its mirror; 1: the image only
    bn: str  # the BatchNorm statistics the teacher predicts this domain with
    compute: dict[str, Any]  # device type, threads (CPU), amp, memory format
    storage: Storage = field(default_factory=Storage)
    levels: tuple[str, ...] = DEFAULT_LEVELS  # stored in this order: it is part of the key

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["levels"] = list(self.levels)
        return out

    @property
    def key(self) -> str:
        text = json.dumps({"format": FORMAT, **self.to_dict()}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:20]

    @property
    def entries(self) -> int:
        return int(self.dataset["length"]) * self.variants

    def label(self) -> str:
        return self.label_of(self.to_dict())

    @staticmethod
    def label_of(spec: dict[str, Any]) -> str:
        """``game train (float32)``: the images and the storage format of a cache."""
        d = spec["dataset"]
        name = d.get("domain") or d.get("dataset")
        return f"{name} {d['split']} ({Storage(**spec['storage']).describe()})"
