"""Tiny dataset trees in the published layouts of Cityscapes, GTA5, BDD100K and SYNTHIA.

Each writer puts a few small random images and labels (raw label values as the dataset stores
them) under ``root`` and returns ``{split: [(image path, label path, raw label array), ...]}``.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from dakd.data.labels import LABEL_IDS, SYNTHIA_TO_CITYSCAPES

SIZE = (32, 64)  # (H, W) of every fixture image

#: Raw values each dataset's labels draw from: its evaluated ids and a few it ignores.
CITYSCAPES_VALUES = np.array([*LABEL_IDS, 0, 1, 4, 6, 9, 10, 14, 15, 16, 18, 29, 30])
SYNTHIA_VALUES = np.array([*SYNTHIA_TO_CITYSCAPES, 0, 13, 14, 22])
BDD_VALUES = np.array([*range(19), 255])


def png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)
    return path


def png16(path: Path, array: np.ndarray) -> Path:
    """A 16-bit RGB PNG (what SYNTHIA's GT/LABELS hold; Pillow cannot write one). Row r uses PNG
    filter r % 5 (none, sub, up, average, Paeth), so a reader must undo all five."""
    array = np.asarray(array, dtype=">u2")
    height, width, _ = array.shape
    raw = array.view(np.uint8).reshape(height, width * 6).astype(np.int32)
    left = np.pad(raw, ((0, 0), (6, 0)))[:, :-6]  # the same byte of the pixel before (6 bytes)
    up = np.pad(raw, ((1, 0), (0, 0)))[:-1]
    up_left = np.pad(up, ((0, 0), (6, 0)))[:, :-6]
    guess = left + up - up_left
    pa, pb, pc = np.abs(guess - left), np.abs(guess - up), np.abs(guess - up_left)
    paeth = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, up_left))
    predictors = [np.zeros_like(raw), left, up, (left + up) // 2, paeth]
    rows = b"".join(
        bytes([r % 5]) + ((raw[r] - predictors[r % 5][r]) % 256).astype(np.uint8).tobytes()
        for r in range(height)
    )

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data + chunk(b"IEND", b""))
    return path


def _image(rng, size=SIZE) -> np.ndarray:
    return rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)


def _label(rng, values, size=SIZE) -> np.ndarray:
    return values[rng.integers(0, len(values), size=size)]


def label_file(dataset: str, path: Path, raw: np.ndarray) -> Path:
    """Write ``raw`` label values to ``path`` the way ``dataset`` stores its labels."""
    if dataset == "gta5":
        return _palette_png(path, raw)
    if dataset == "synthia":
        return png16(path, np.stack([raw, np.zeros_like(raw), np.zeros_like(raw)], axis=-1))
    return png(path, raw)


#: A raw label value outside each dataset's label space.
UNKNOWN = {"cityscapes": 40, "gta5": 40, "bdd100k": 19, "synthia": 23}


def cityscapes(root: Path, counts=None, size=SIZE, seed=0) -> dict[str, list]:
    rng = np.random.default_rng(seed)
    written: dict[str, list] = {}
    for split, n in (counts or {"train": 3, "val": 2}).items():
        for i in range(n):
            city = ("aachen", "bremen")[i % 2]
            stem = f"{city}_{i:06d}_000019"
            raw = _label(rng, CITYSCAPES_VALUES, size)
            image = png(
                root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", _image(rng, size)
            )
            label = png(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", raw)
            written.setdefault(split, []).append((image, label, raw))
    return written


def gta5(root: Path, n=4, size=SIZE, seed=1, lists=None) -> dict[str, list]:
    """``lists``: ``{split: [indices]}`` written as ``{split}.txt``."""
    rng = np.random.default_rng(seed)
    pairs = []
    for i in range(n):
        raw = _label(rng, CITYSCAPES_VALUES, size)
        pairs.append(
            (
                png(root / "images" / f"{i + 1:05d}.png", _image(rng, size)),
                _palette_png(root / "labels" / f"{i + 1:05d}.png", raw),
                raw,
            )
        )
    written = {"train": pairs}
    for split, indices in (lists or {}).items():
        (root / f"{split}.txt").write_text("".join(f"{i + 1:05d}.png\n" for i in indices))
        written[split] = [pairs[i] for i in indices]
    return written


def _palette_png(path: Path, raw: np.ndarray) -> Path:
    """GTA5 labels are palette PNGs whose indices are the label ids."""
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = raw.shape
    image = Image.frombytes("P", (width, height), raw.astype(np.uint8).tobytes())
    image.putpalette([v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)])
    image.save(path)
    return path


def bdd100k(root: Path, counts=None, size=SIZE, seed=2) -> dict[str, list]:
    rng = np.random.default_rng(seed)
    written: dict[str, list] = {}
    for split, n in (counts or {"train": 3, "val": 2}).items():
        for i in range(n):
            stem = f"{i:04x}abcd-0000{i:04d}"
            raw = _label(rng, BDD_VALUES, size)
            image_path = root / "images" / "10k" / split / f"{stem}.jpg"
            image_path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(_image(rng, size)).save(image_path, quality=95)
            label = png(root / "labels" / "sem_seg" / "masks" / split / f"{stem}.png", raw)
            written.setdefault(split, []).append((image_path, label, raw))
    return written


def synthia(root: Path, n=3, size=SIZE, seed=3) -> dict[str, list]:
    rng = np.random.default_rng(seed)
    pairs = []
    for i in range(n):
        raw = _label(rng, SYNTHIA_VALUES, size)
        # channel 0 holds the class; the others (instance ids in the real files) differ
        channels = np.stack([raw, rng.integers(0, 3000, size=size), np.full(size, 9)], axis=-1)
        pairs.append(
            (
                png(root / "RGB" / f"{i:07d}.png", _image(rng, size)),
                png16(root / "GT" / "LABELS" / f"{i:07d}.png", channels),
                raw,
            )
        )
    return {"train": pairs}


def corrupt(path: Path) -> Path:
    """Cut a PNG short: the header reads, the pixels do not."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def write(dataset: str, root: Path, train: int = 3, val: int = 2, size=SIZE) -> dict[str, list]:
    """A tree of ``dataset`` with ``train`` training pairs (and ``val`` for the datasets with a
    val folder; GTA5 and SYNTHIA get a ``val.txt`` list of their last ``val`` pairs instead)."""
    if dataset == "cityscapes":
        return cityscapes(root, {"train": train, "val": val}, size)
    if dataset == "bdd100k":
        return bdd100k(root, {"train": train, "val": val}, size)
    if dataset == "gta5":
        return gta5(root, train, size)
    return synthia(root, train, size)
