"""What keys a teacher-output cache and how its entries are stored (``dakd.teacher_cache``).

The key (:class:`CacheSpec`) is a hash of everything that decides a cache's numbers: the teacher
checkpoint's content and network, the dataset's identity, the flip variants, the BatchNorm
statistics, the arithmetic and the storage format (:class:`Storage`: ``float32``, ``float16``
or the top-k logits per pixel, written by :func:`encode` and read back by :func:`decode`).
Entry ``e`` is image ``e // V``, variant ``e % V`` (:func:`entry_of`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dakd.paradigms import DEFAULT_LEVELS

#: The format of a cache's manifest and key; another format is another cache.
FORMAT = "dakd-teacher-cache/1"
DTYPES = ("float32", "float16")
_NP = {"float32": np.float32, "float16": np.float16}


class CacheError(RuntimeError):
    """A teacher cache that cannot be built or read; the message names the folder."""


class CacheFullError(CacheError):
    """The disk has no room for the cache; the message names the folder and the bytes needed."""


# ------------------------------------------------------------------------------------------------
# What decides the numbers
# ------------------------------------------------------------------------------------------------


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
class Storage:
    """``dtype``: float32 or float16; ``topk``: 0 stores every class, k > 0 the k largest."""

    dtype: str = "float32"
    topk: int = 0

    def entry_bytes(self, shape: Sequence[int]) -> int:
        classes, height, width = shape
        item = np.dtype(_NP[self.dtype]).itemsize
        if self.topk and self.topk < classes:
            return height * width * (self.topk * (item + 1) + item)
        return classes * height * width * item

    @property
    def exact(self) -> bool:
        return self.dtype == "float32" and self.topk == 0

    def describe(self) -> str:
        return f"{self.dtype}" + (f", top-{self.topk}" if self.topk else "")


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


def entry_of(index: torch.Tensor, flip: torch.Tensor, variants: int) -> np.ndarray:
    """Entry numbers of samples ``index`` with flags ``flip``."""
    index = np.asarray(index, dtype=np.int64)
    flip = np.asarray(flip, dtype=np.int64)
    if variants == 1:
        if flip.any():
            raise CacheError("a flipped sample, but the cache holds no mirrored images")
        return index
    return index * variants + flip


# ------------------------------------------------------------------------------------------------
# Encoding (storage formats)
# ------------------------------------------------------------------------------------------------


def encode(maps: torch.Tensor, storage: Storage) -> dict[str, np.ndarray]:
    """``[N, C, h, w]`` float maps -> the arrays stored for them."""
    maps = maps.detach().float().cpu()
    np_dtype = _NP[storage.dtype]
    classes = maps.shape[1]
    if not storage.topk or storage.topk >= classes:
        return {"": maps.numpy().astype(np_dtype)}
    values, indices = maps.topk(storage.topk, dim=1)
    rest = (maps.sum(1) - values.sum(1)) / (classes - storage.topk)
    return {
        "values": values.numpy().astype(np_dtype),
        "indices": indices.to(torch.uint8).numpy(),
        "rest": rest.numpy().astype(np_dtype),
    }


def decode(arrays: dict[str, np.ndarray], classes: int) -> torch.Tensor:
    """The stored arrays -> ``[N, C, h, w]`` float32 maps (top-k: the other logits are the mean
    of the ones not kept)."""
    if "" in arrays:
        return torch.from_numpy(np.ascontiguousarray(arrays[""], dtype=np.float32))
    values = torch.from_numpy(np.ascontiguousarray(arrays["values"], dtype=np.float32))
    indices = torch.from_numpy(np.ascontiguousarray(arrays["indices"])).long()
    rest = torch.from_numpy(np.ascontiguousarray(arrays["rest"], dtype=np.float32))
    n, _, h, w = values.shape
    out = rest[:, None].expand(n, classes, h, w).contiguous()
    return out.scatter_(1, indices, values)
