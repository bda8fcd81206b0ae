"""Rendered splits on disk and as tensors: the per-machine split cache, normalisation, the
map-style dataset and sample PNGs."""

from __future__ import annotations

import math
import multiprocessing
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from dakd.data.labels import colorize
from dakd.data.scenes.layout import _check_domain, _check_seed, _check_size, _check_split
from dakd.data.scenes.render import render_scene, renderer_version
from dakd.data.scenes.styles import DEFAULT_SIZE, MEAN, STD


def _render_chunk(args) -> tuple[np.ndarray, np.ndarray]:
    domain, split, seed, size, start, stop = args
    images = np.empty((stop - start, size[0], size[1], 3), np.uint8)
    labels = np.empty((stop - start, size[0], size[1]), np.uint8)
    for i in range(start, stop):
        images[i - start], labels[i - start] = render_scene(domain, split, i, seed, size)
    return images, labels


def cached_split(
    domain: str,
    split: str,
    seed: int,
    size: tuple[int, int],
    cache_dir: str | Path,
    workers: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """The whole split as uint8 arrays, rendered once into ``cache_dir`` and read back after.

    The file name holds the domain, split, seed, size and :func:`renderer_version`, so a changed
    renderer never serves stale scenes. Rendering uses ``workers`` processes (default: the CPUs
    this process may use); the file is written atomically, so concurrent trials never read a
    partial one (at worst two render the same split and one rename wins).
    """
    _check_domain(domain)
    n = _check_split(split)
    height, width = _check_size(size)
    path = Path(cache_dir) / f"{domain}-{split}-s{seed}-{height}x{width}-{renderer_version()}.npz"
    if path.exists():
        try:
            with np.load(path) as data:
                return data["images"], data["labels"]
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            path.unlink(missing_ok=True)  # a damaged cache file is only a cache: render again
    workers = workers or max(1, min(len(os.sched_getaffinity(0)), 8))
    bounds = np.linspace(0, n, 4 * workers + 1).astype(int)
    jobs = [(domain, split, seed, (height, width), a, b) for a, b in zip(bounds[:-1], bounds[1:])]
    if workers > 1:
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(workers) as pool:
            parts = pool.map(_render_chunk, jobs)
    else:
        parts = [_render_chunk(job) for job in jobs]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".npz", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, images=images, labels=labels)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return images, labels


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) image -> float32 [3, H, W] tensor normalised with MEAN and STD."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected a uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
    x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().div_(255)
    mean = torch.tensor(MEAN, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(STD, dtype=torch.float32).view(3, 1, 1)
    return x.sub_(mean).div_(std)


def denormalize(tensor: torch.Tensor) -> np.ndarray:
    """Inverse of :func:`to_tensor`: [3, H, W] normalised tensor -> uint8 (H, W, 3) image."""
    x = tensor.detach().to("cpu", torch.float32)
    if x.ndim != 3 or x.shape[0] != 3:
        raise ValueError(f"expected a [3, H, W] tensor, got shape {tuple(x.shape)}")
    mean = torch.tensor(MEAN).view(3, 1, 1)
    std = torch.tensor(STD).view(3, 1, 1)
    x = (x * std + mean).clamp_(0, 1).mul_(255).add_(0.5)
    return x.to(torch.uint8).permute(1, 2, 0).numpy()


class SceneDataset(Dataset):
    """One split of one domain as a map-style dataset.

    Items are ``{"image": float32 [3, H, W] normalised, "label": int64 [H, W]}``. With
    ``cache=True`` each index is rendered once per process and kept (about 25 KB per item at
    64x128 with uint8 storage). With ``cache_dir`` the whole split is rendered once per machine
    (by :func:`cached_split`) and every later dataset, process or trial reads the arrays.
    """

    def __init__(
        self,
        domain: str,
        split: str,
        seed: int = 0,
        size: tuple[int, int] = DEFAULT_SIZE,
        length: int | None = None,
        cache: bool = True,
        cache_dir: str | Path | None = None,
    ):
        _check_domain(domain)
        n = _check_split(split)
        self.seed = _check_seed(seed)
        self.size = _check_size(size)
        if length is None:
            length = n
        if (
            isinstance(length, bool)
            or not isinstance(length, (int, np.integer))
            or not (0 < length <= n)
        ):
            raise ValueError(f"invalid length {length!r} for split {split!r}; valid: 1..{n}")
        self.domain, self.split, self.length, self.cache = domain, split, int(length), cache
        self._store: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._arrays: tuple[np.ndarray, np.ndarray] | None = None
        if cache_dir:
            images, labels = cached_split(domain, split, self.seed, self.size, cache_dir)
            self._arrays = images[: self.length], labels[: self.length]

    def __len__(self) -> int:
        return self.length

    def __repr__(self) -> str:
        return f"SceneDataset({self.domain!r}, {self.split!r}, seed={self.seed}, size={self.size})"

    def raw(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The uint8 image and label of an item (cached when ``cache`` is on)."""
        if isinstance(index, (int, np.integer)) and -self.length <= index < 0:
            index += self.length
        if not isinstance(index, (int, np.integer)) or not 0 <= index < self.length:
            raise IndexError(f"index {index!r} out of range for a dataset of {self.length}")
        index = int(index)
        if self._arrays is not None:
            return self._arrays[0][index], self._arrays[1][index]
        item = self._store.get(index)
        if item is None:
            item = render_scene(self.domain, self.split, index, self.seed, self.size)
            if self.cache:
                self._store[index] = item
        return item

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        image, label = self.raw(index)
        return {"image": to_tensor(image), "label": torch.from_numpy(label.astype(np.int64))}


def save_samples(
    domain: str,
    out_dir,
    n: int = 8,
    split: str = "train",
    seed: int = 0,
    size: tuple[int, int] = DEFAULT_SIZE,
) -> list[Path]:
    """Write ``n`` scenes as PNGs for a person to look at.

    Per scene ``{domain}_{split}_{i:03d}_image.png`` and ``..._label.png`` (Cityscapes
    colours), plus ``{domain}_overview.png``: images in the top row, labels below, enlarged to
    at least 256 pixels wide per scene. Returns the written paths, the overview last.
    """
    from PIL import Image

    _check_domain(domain)
    total = _check_split(split)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 0 < n <= total:
        raise ValueError(f"invalid n {n!r}; valid: 1..{total}")
    height, width = _check_size(size)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths, images, labels = [], [], []
    for i in range(n):
        image, label = render_scene(domain, split, i, seed, (height, width))
        colour = colorize(label)
        for kind, array in (("image", image), ("label", colour)):
            path = out / f"{domain}_{split}_{i:03d}_{kind}.png"
            Image.fromarray(array).save(path)
            paths.append(path)
        images.append(image)
        labels.append(colour)
    zoom = max(1, math.ceil(256 / width))
    gap = 2
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    cell_h, cell_w = height * zoom, width * zoom
    grid = np.full(
        (rows * (2 * cell_h + gap) + (rows - 1) * 2 * gap, cols * (cell_w + gap) - gap, 3),
        255,
        np.uint8,
    )
    for i, (image, colour) in enumerate(zip(images, labels)):
        r, col = divmod(i, cols)
        y = r * (2 * cell_h + 3 * gap)
        x = col * (cell_w + gap)
        grid[y : y + cell_h, x : x + cell_w] = image.repeat(zoom, 0).repeat(zoom, 1)
        y += cell_h + gap
        grid[y : y + cell_h, x : x + cell_w] = colour.repeat(zoom, 0).repeat(zoom, 1)
    path = out / f"{domain}_overview.png"
    Image.fromarray(grid).save(path)
    paths.append(path)
    return paths
