"""How a teacher-output cache's entries are stored (``dakd.teacher.cache``).

:class:`Storage` is the format: ``float32``, ``float16`` or the top-k logits per pixel, written
by :func:`encode` and read back by :func:`decode`. Entry ``e`` is image ``e // V``, variant
``e % V`` (:func:`entry_of`). What keys a cache is :mod:`dakd.teacher.key`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

DTYPES = ("float32", "float16")
_NP = {"float32": np.float32, "float16": np.float16}


class CacheError(RuntimeError):
    """A teacher cache that cannot be built or read; the message names the folder."""


class CacheFullError(CacheError):
    """The disk has no room for the cache; the message names the folder and the bytes needed."""


# ------------------------------------------------------------------------------------------------
# The format
# ------------------------------------------------------------------------------------------------


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
