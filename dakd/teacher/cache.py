"""Teacher-output cache: the frozen teacher runs once per training image, not at every step of
every trial.

In DAKD the teacher is frozen, so what it predicts for a training image is the same at every
step, in every trial of a sweep and in every later sweep with the same teacher. The cache
stores those predictions once, at the levels distillation reads (``output`` and ``feature``)
and at the teacher's own output stride (upsampling stays in the loss path, as with the live
teacher), and every run reads them instead of running the teacher.

**Entries.** One entry per (training image, horizontal flip): with ``data.hflip`` on, both the
image and its mirror are stored, since a network is not flip-equivariant and flipping a stored
map is not what the teacher predicts on a flipped image. Entry ``e`` is image ``e // V``,
variant ``e % V`` (``V`` = 2 with flips, else 1).

**Key.** A cache lives in ``<teacher_cache.dir>/<key>/``; the key is a hash of everything that
decides its numbers (:class:`CacheSpec`): the teacher checkpoint's content hash (sha256 of the
file) and network, the dataset's identity (embedded domain, split, scene seed, size and renderer
version; or real dataset, split, folder, resize and a hash of its file listing with sizes and
modification times), the flip variants, the BatchNorm statistics the teacher predicts this
domain with, the arithmetic (device type, CPU threads, mixed precision, memory format) and the
storage format. A cache made for anything else is never read: it has another key.

**Format.** Shards of :data:`SHARD_ENTRIES` entries, one ``.npy`` file per level (memory-mapped
by every reader, so several trial processes share the page cache), written to a temporary file
and renamed into place, and a ``manifest.json`` that lists each shard's sha256. Storage is
``float32`` (exact), ``float16`` (half the bytes) or the top-k logits per pixel (ReLabel, Yun
et al. 2021): the k largest logits with their class indices, and the mean of the other logits,
which stands in for each of them when the map is read back (the argmax, hence the pseudo-label,
is exact; KL and MSE see the approximation).

**Faults.** Builders of one key take a file lock (``<key>.lock``), so two builders never write
the same shard; a build that is killed continues from its last finished shard. Readers check
every shard's sha256 when they open the cache; a truncated or corrupt shard is reported in one
line and rebuilt, so wrong numbers are never served. A disk without room for the cache stops
with :class:`CacheFullError`, naming the folder and the bytes needed.

This module knows nothing of the trainer: :func:`ensure` takes the teacher's forward as a
function, and ``dakd.teacher.outputs`` decides when the cache is used (``teacher_cache.mode``);
the key is in ``dakd.teacher.key``, the storage formats in ``dakd.teacher.storage``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dakd.teacher.key import FORMAT, CacheSpec, dataset_identity, file_sha256, geometry_of
from dakd.teacher.storage import (
    DTYPES,
    CacheError,
    CacheFullError,
    Storage,
    decode,
    encode,
    entry_of,
)

MANIFEST = "manifest.json"
SHARD_ENTRIES = 256
MODES = ("auto", "on", "off")
#: What a full disk does: stop (default) or go on with the live teacher.
IF_FULL = ("stop", "live")

Forward = Callable[[torch.Tensor], dict[str, torch.Tensor]]


# ------------------------------------------------------------------------------------------------
# Reading
# ------------------------------------------------------------------------------------------------


def _read_manifest(folder: Path) -> dict[str, Any] | None:
    path = folder / MANIFEST
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # unreadable: rebuilt like a missing one
    return manifest if manifest.get("format") == FORMAT else None


def _shard_files(level: str, shard: int, parts: Sequence[str]) -> dict[str, str]:
    return {p: f"{level}-{shard:05d}{'-' + p if p else ''}.npy" for p in parts}


def _parts(storage: Storage, classes: int) -> tuple[str, ...]:
    return ("values", "indices", "rest") if storage.topk and storage.topk < classes else ("",)


class TeacherCache:
    """A complete cache, open for reading (memory-mapped). :meth:`lookup` returns the teacher's
    raw outputs (its own stride, the dtype it produced) for a batch of samples."""

    def __init__(self, folder: Path, manifest: dict[str, Any]):
        self.folder = folder
        self.manifest = manifest
        self.spec = manifest["spec"]
        self.storage = Storage(**self.spec["storage"])
        self.variants = int(self.spec["variants"])
        self.entries = int(manifest["entries"])
        self.shapes = {lv: tuple(s) for lv, s in manifest["shapes"].items()}
        self.out_dtype = getattr(torch, manifest["out_dtype"])
        self._arrays: dict[tuple[str, int], dict[str, np.ndarray]] = {}

    def _shard(self, level: str, shard: int) -> dict[str, np.ndarray]:
        key = (level, shard)
        if key not in self._arrays:
            classes = self.shapes[level][0]
            files = _shard_files(level, shard, _parts(self.storage, classes))
            self._arrays[key] = {
                p: np.load(self.folder / name, mmap_mode="r") for p, name in files.items()
            }
        return self._arrays[key]

    def read(self, entries: np.ndarray) -> dict[str, torch.Tensor]:
        """Maps of ``entries`` per level, float32 (decoded), in the order given."""
        entries = np.asarray(entries, dtype=np.int64)
        if entries.size and (entries.min() < 0 or entries.max() >= self.entries):
            raise CacheError(f"{self.folder}: entries outside 0..{self.entries - 1} asked for")
        out = {}
        for level, shape in self.shapes.items():
            rows: list[torch.Tensor | None] = [None] * len(entries)
            for shard in np.unique(entries // SHARD_ENTRIES):
                where = np.flatnonzero(entries // SHARD_ENTRIES == shard)
                local = entries[where] - shard * SHARD_ENTRIES
                arrays = {p: a[local] for p, a in self._shard(level, int(shard)).items()}
                maps = decode(arrays, shape[0])
                for i, row in zip(where.tolist(), maps, strict=True):
                    rows[i] = row
            out[level] = torch.stack(rows) if rows else torch.empty(0, *shape)
        return out

    def lookup(self, index, flip) -> dict[str, torch.Tensor]:
        """The teacher's outputs on the samples (images ``index``, mirrored where ``flip``)."""
        maps = self.read(entry_of(index, flip, self.variants))
        return {level: m.to(self.out_dtype) for level, m in maps.items()}

    def crops(
        self,
        index,
        flip,
        boxes: torch.Tensor,
        sizes: dict[str, tuple[int, int]],
        image_size: tuple[int, int],
    ) -> dict[str, torch.Tensor]:
        """The stored maps cut and resampled as the samples were (random scale and crop of real
        data): ``boxes`` ``[B, 4]`` (x0, y0, x1, y1) in pixels of the stored (resized, already
        mirrored where ``flip``) image of size ``image_size``; ``sizes`` the teacher's output
        size per level on the crop. Bilinear RoIAlign (torchvision), as ReLabel cuts its maps."""
        from torchvision.ops import roi_align

        maps = self.read(entry_of(index, flip, self.variants))
        out = {}
        for level, m in maps.items():
            scale = m.shape[-1] / image_size[1]
            rois = torch.cat([torch.arange(len(boxes), dtype=torch.float32)[:, None], boxes], 1)
            out[level] = roi_align(
                m, rois, sizes[level], spatial_scale=scale, sampling_ratio=2, aligned=True
            ).to(self.out_dtype)
        return out


#: Files this process has checked: (path, inode, size, mtime) -> sha256. A trial process that
#: opens the same cache again (a reused Ray actor) does not read every shard again.
_CHECKED: dict[tuple[str, int, int, int], str] = {}


def _digest(path: Path) -> str | None:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    key = (str(path), stat.st_ino, stat.st_size, stat.st_mtime_ns)
    if key not in _CHECKED:
        _CHECKED[key] = file_sha256(path)
    return _CHECKED[key]


def verify(folder: Path, manifest: dict[str, Any]) -> list[int]:
    """Shards whose files are missing or differ from the sha256 the manifest lists (each file
    read once per process while its size and modification time stay the same)."""
    bad = []
    for number, shard in enumerate(manifest["shards"]):
        for name, digest in shard["files"].items():
            if _digest(folder / name) != digest:
                bad.append(number)
                break
    return bad


# ------------------------------------------------------------------------------------------------
# Building
# ------------------------------------------------------------------------------------------------


def _save_array(folder: Path, name: str, array: np.ndarray) -> str:
    """Write ``array`` as ``folder/name`` (temporary file, fsync, rename); its sha256."""
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as handle:
            np.save(handle, array)
            handle.flush()
            os.fsync(handle.fileno())
        digest = file_sha256(tmp)
        os.replace(tmp, folder / name)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        if err.errno == 28:  # ENOSPC
            raise CacheFullError(f"{folder}: the disk filled while writing {name}") from None
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return digest


def _write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".manifest.", suffix=".tmp", dir=folder)
    with os.fdopen(fd, "w") as handle:
        json.dump(manifest, handle, indent=1)
    os.replace(tmp, folder / MANIFEST)


def needed_bytes(spec: CacheSpec, shapes: dict[str, tuple[int, int, int]]) -> int:
    return sum(spec.storage.entry_bytes(shape) for shape in shapes.values()) * spec.entries


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n} B"


def check_room(folder: Path, needed: int) -> None:
    """Stop with :class:`CacheFullError` when the disk under ``folder`` cannot hold ``needed``
    more bytes (with 5% to spare)."""
    probe = folder
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < needed * 1.05:
        raise CacheFullError(
            f"{folder}: the teacher cache needs {_human(needed)} but the disk has "
            f"{_human(free)} free (free some space, choose another teacher_cache.dir, a smaller "
            "teacher_cache.dtype/topk, or teacher_cache.if_full: live to run the teacher)"
        )


def _images_of(dataset, indices: Sequence[int], variants: int) -> torch.Tensor:
    """The stored form of each image (embedded: the sample; real: resized, uncropped), with its
    mirror after it when ``variants`` is 2."""
    out = []
    for i in indices:
        if hasattr(dataset, "_resized"):
            image, _ = dataset._resized(int(i), dataset.resize, False)
        else:
            image = dataset[int(i)]["image"]
        out.append(image)
    images = torch.stack(out)
    if variants == 2:
        images = torch.stack([images, images.flip(-1)], 1).flatten(0, 1)
    return images


def _forward_entries(forward: Forward, images: torch.Tensor, batch: int) -> dict[str, torch.Tensor]:
    """The teacher on ``images`` in batches of ``batch``; a short last batch is padded with
    repeats to ``batch`` (on CPU a batch of one runs other convolution kernels than a batch of
    several, and so gives other last bits than the training step's batches)."""
    outs: dict[str, list[torch.Tensor]] = {}
    for start in range(0, len(images), batch):
        chunk = images[start : start + batch]
        n = len(chunk)
        if n < batch:
            chunk = torch.cat([chunk, chunk[-1:].expand(batch - n, *chunk.shape[1:])])
        with torch.no_grad():
            result = forward(chunk)
        for level, value in result.items():
            outs.setdefault(level, []).append(value[:n].detach().cpu())
    return {level: torch.cat(v) for level, v in outs.items()}


def build(
    folder: Path,
    spec: CacheSpec,
    dataset,
    forward: Forward,
    batch: int,
    shards: Sequence[int] | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Write the cache of ``spec`` into ``folder`` (the caller holds the key's lock). Shards a
    previous, interrupted build finished are kept; ``shards`` rebuilds those only. Returns the
    complete manifest."""
    from tqdm import tqdm

    folder.mkdir(parents=True, exist_ok=True)
    manifest = _read_manifest(folder)
    if manifest is not None and manifest["spec"] != spec.to_dict():
        manifest = None  # another format of the same folder name: never reused
    total = spec.entries
    count = math.ceil(total / SHARD_ENTRIES)
    per_image = spec.variants
    tic = time.perf_counter()
    if manifest is None:
        # the shapes and dtype of the teacher's outputs, from one padded batch
        probe = _forward_entries(forward, _images_of(dataset, [0], per_image), max(batch, 2))
        shapes = {lv: tuple(probe[lv].shape[1:]) for lv in spec.levels}
        out_dtype = str(probe[spec.levels[0]].dtype).removeprefix("torch.")
        check_room(folder, needed_bytes(spec, shapes))
        manifest = {
            "format": FORMAT,
            "key": spec.key,
            "spec": spec.to_dict(),
            "entries": total,
            "shapes": {lv: list(s) for lv, s in shapes.items()},
            "out_dtype": out_dtype,
            "shards": [None] * count,
            "complete": False,
            "build_seconds": 0.0,
        }
    shapes = {lv: tuple(s) for lv, s in manifest["shapes"].items()}
    todo = [i for i in range(count) if manifest["shards"][i] is None]
    if shards is not None:
        todo = sorted(set(todo) | set(shards))
    bar = tqdm(
        total=len(todo) * SHARD_ENTRIES,
        desc=f"teacher cache {spec.label()}",
        disable=not progress,
        dynamic_ncols=True,
        leave=False,
        file=sys.stderr,
    )
    try:
        for number in todo:
            start, stop = number * SHARD_ENTRIES, min((number + 1) * SHARD_ENTRIES, total)
            images = range(start // per_image, math.ceil(stop / per_image))
            maps = _forward_entries(forward, _images_of(dataset, images, per_image), batch)
            files = {}
            for level in spec.levels:
                encoded = encode(maps[level], spec.storage)
                names = _shard_files(level, number, _parts(spec.storage, shapes[level][0]))
                for part, array in encoded.items():
                    files[names[part]] = _save_array(folder, names[part], array)
            manifest["shards"][number] = {"start": start, "stop": stop, "files": files}
            manifest["complete"] = all(manifest["shards"])
            manifest["build_seconds"] += time.perf_counter() - tic
            tic = time.perf_counter()
            _write_manifest(folder, manifest)  # a killed build continues from here
            bar.update(stop - start)
    finally:
        bar.close()
    if log is not None:
        size = sum((folder / n).stat().st_size for s in manifest["shards"] for n in s["files"])
        log(
            f"teacher cache {spec.label()}: {total} entries, {_human(size)} in "
            f"{manifest['build_seconds']:.0f} s -> {folder}"
        )
    return manifest


def open_cache(root: str | Path, spec: CacheSpec, check: bool = True) -> TeacherCache | None:
    """The complete cache of ``spec`` under ``root``, or None when there is none (or it has a
    shard that fails its checksum: :func:`ensure` rebuilds it)."""
    folder = Path(root) / spec.key
    manifest = _read_manifest(folder)
    if manifest is None or not manifest.get("complete") or manifest["spec"] != spec.to_dict():
        return None
    if check and verify(folder, manifest):
        return None
    return TeacherCache(folder, manifest)


def ensure(
    root: str | Path,
    spec: CacheSpec,
    dataset,
    forward: Forward,
    batch: int,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> TeacherCache:
    """Open the cache of ``spec`` under ``root``, building what is missing first: a new cache,
    the rest of an interrupted build, or shards that fail their checksum (reported in one line).
    Builders of the same key take turns (a file lock beside the folder); readers of a complete
    cache need no lock."""
    from filelock import FileLock

    root = Path(root)
    folder = root / spec.key
    cached = open_cache(root, spec)
    if cached is not None:
        return cached
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        manifest = _read_manifest(folder)
        if manifest is not None and manifest["spec"] != spec.to_dict():
            manifest = None
        bad: list[int] = []
        if manifest is not None:
            done = {i: s for i, s in enumerate(manifest["shards"]) if s is not None}
            bad = verify(folder, {"shards": list(done.values())})
            bad = [list(done)[i] for i in bad]
            if bad:
                log(
                    f"teacher cache {folder}: shard(s) {bad} failed their checksum (truncated "
                    "or corrupt); rebuilding them"
                )
            if manifest.get("complete") and not bad:
                return TeacherCache(folder, manifest)
        manifest = build(folder, spec, dataset, forward, batch, bad or None, progress, log)
        return TeacherCache(folder, manifest)


def cache_size(spec: CacheSpec, shapes: dict[str, tuple[int, int, int]]) -> str:
    """The cache's size on disk, in words."""
    return _human(needed_bytes(spec, shapes))


__all__ = [
    "DTYPES",
    "IF_FULL",
    "MODES",
    "CacheError",
    "CacheFullError",
    "CacheSpec",
    "Storage",
    "TeacherCache",
    "build",
    "cache_size",
    "check_room",
    "dataset_identity",
    "decode",
    "encode",
    "ensure",
    "entry_of",
    "geometry_of",
    "open_cache",
    "verify",
]
