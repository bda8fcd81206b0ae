"""Pictures of an evaluation: prediction panels, confusion matrices and per-class IoU tables.

Core module: numpy, PIL and matplotlib (Agg, no pyplot state) only; it knows nothing of MLflow
or Ray. :mod:`dakd.tracking.runs` logs what these functions produce as run artifacts.

A prediction panel is one row per image and one column per view -- the image, its ground truth,
then each prediction in the order given -- with label maps drawn in the Cityscapes palette
(ignore = black), :data:`SEPARATOR` white pixels between cells and, optionally, a white band of
:data:`TITLE_HEIGHT` pixels on top holding the column titles.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from dakd.data.labels import CLASS_NAMES, colorize
from dakd.tabular import markdown_table

if TYPE_CHECKING:
    from dakd.evaluation.segmentation import SegMetrics

#: White pixels between two cells of a panel (rows and columns).
SEPARATOR = 2
#: Height in pixels of the title band on top of a panel drawn with ``titles=True``.
TITLE_HEIGHT = 14

_WHITE = 255


def _to_numpy(x: Any) -> np.ndarray:
    """A tensor (any device) or array-like as a numpy array."""
    if hasattr(x, "detach"):
        x = x.detach().to("cpu").numpy()
    return np.asarray(x)


def _label_stack(x: Any, what: str) -> np.ndarray:
    """(N, H, W) label maps (a single (H, W) map becomes N = 1)."""
    arr = _to_numpy(x)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ValueError(f"{what}: expected (N, H, W) train ids, got shape {arr.shape}")
    return arr


def _image_stack(images: Any) -> list[np.ndarray]:
    """Images as a list of uint8 (H, W, 3) arrays.

    Accepts normalised (N, 3, H, W) / (3, H, W) float tensors or arrays (undone with
    :func:`dakd.data.scenes.denormalize`) and already displayable uint8 (N, H, W, 3) arrays.
    """
    if isinstance(images, np.ndarray) and images.dtype == np.uint8:
        arr = images[None] if images.ndim == 3 else images
        if arr.ndim != 4 or arr.shape[-1] != 3:
            raise ValueError(f"images: expected uint8 (N, H, W, 3), got shape {images.shape}")
        return list(arr)

    import torch

    from dakd.data.scenes import denormalize

    tensor = images if isinstance(images, torch.Tensor) else torch.as_tensor(np.asarray(images))
    if tensor.ndim == 3:
        tensor = tensor[None]
    if tensor.ndim != 4 or tensor.shape[1] != 3:
        raise ValueError(
            f"images: expected normalised (N, 3, H, W), got shape {tuple(tensor.shape)}"
        )
    return [denormalize(image) for image in tensor]


def _font(size: int = 10) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _title_cell(text: str, width: int) -> np.ndarray:
    """A white (TITLE_HEIGHT, width, 3) strip with ``text`` in black, centred or clipped."""
    strip = Image.new("RGB", (width, TITLE_HEIGHT), (_WHITE,) * 3)
    draw = ImageDraw.Draw(strip)
    font = _font()
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    x = max((width - (right - left)) // 2, 0) - left
    y = (TITLE_HEIGHT - (bottom - top)) // 2 - top
    draw.text((x, y), text, fill=(0, 0, 0), font=font)
    return np.asarray(strip)


def prediction_panel(
    images: Any,
    labels: Any,
    predictions: Mapping[str, Any],
    titles: bool = True,
) -> np.ndarray:
    """Draw image | ground truth | each prediction, one row per image, as a uint8 (H', W', 3) array.

    ``images`` are normalised (N, 3, H, W) tensors or arrays (or uint8 (N, H, W, 3) pictures),
    ``labels`` (N, H, W) train ids with 255 = ignore, ``predictions`` maps a column title (e.g.
    ``"teacher"``, ``"student"``) to (N, H, W) train ids shaped like ``labels``. Images of another
    size are resized (bilinear) to the label size. Cells are separated by :data:`SEPARATOR` white
    pixels; ``titles`` adds a :data:`TITLE_HEIGHT` band with the column names on top. The result is
    ``(band + N*H + (N-1)*SEPARATOR, C*W + (C-1)*SEPARATOR, 3)`` with ``C = 2 + len(predictions)``.
    """
    label_maps = _label_stack(labels, "labels")
    n, h, w = label_maps.shape
    pictures = _image_stack(images)
    if len(pictures) != n:
        raise ValueError(f"{len(pictures)} images but {n} label maps")
    columns: list[tuple[str, list[np.ndarray]]] = []
    resized = []
    for picture in pictures:
        if picture.shape[:2] != (h, w):
            picture = np.asarray(Image.fromarray(picture).resize((w, h), Image.BILINEAR))
        resized.append(picture)
    columns.append(("image", resized))
    columns.append(("ground truth", [colorize(m) for m in label_maps]))
    for name, prediction in predictions.items():
        maps = _label_stack(prediction, f"predictions[{name!r}]")
        if maps.shape != label_maps.shape:
            raise ValueError(
                f"predictions[{name!r}] has shape {maps.shape}, labels {label_maps.shape}"
            )
        columns.append((str(name), [colorize(m) for m in maps]))

    band = TITLE_HEIGHT if titles else 0
    ncols = len(columns)
    height = band + n * h + (n - 1) * SEPARATOR
    width = ncols * w + (ncols - 1) * SEPARATOR
    panel = np.full((height, width, 3), _WHITE, dtype=np.uint8)
    for c, (title, cells) in enumerate(columns):
        x = c * (w + SEPARATOR)
        if titles:
            panel[:band, x : x + w] = _title_cell(title, w)
        for r, cell in enumerate(cells):
            y = band + r * (h + SEPARATOR)
            panel[y : y + h, x : x + w] = cell
    return panel


def save_png(array: np.ndarray, path: str | Path) -> Path:
    """Write a uint8 (H, W), (H, W, 3) or (H, W, 4) array as a PNG (parents created); the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.asarray(array)
    if array.dtype != np.uint8:
        raise ValueError(f"save_png expects uint8 pixels, got {array.dtype}")
    Image.fromarray(array).save(path, format="PNG")
    return path


_NORMALIZE = {"true": 1, "pred": 0, "all": None}


def normalized_confusion(matrix: np.ndarray, normalize: str | None = "true") -> np.ndarray:
    """``matrix`` as float64: ``"true"`` divides each row by its sum (ground-truth pixels),
    ``"pred"`` each column, ``"all"`` the whole matrix, ``None`` leaves the counts. Rows
    (columns) without pixels become NaN."""
    if normalize is not None and normalize not in _NORMALIZE:
        raise ValueError(
            f"normalize must be one of {sorted(_NORMALIZE)} or None, got {normalize!r}"
        )
    counts = np.asarray(matrix, dtype=np.float64)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1]:
        raise ValueError(f"confusion matrix must be square, got shape {counts.shape}")
    if normalize is None:
        return counts
    axis = _NORMALIZE[normalize]
    total = counts.sum() if axis is None else counts.sum(axis=axis, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, counts / np.where(total > 0, total, 1), np.nan)


def confusion_figure(
    matrix: np.ndarray,
    path: str | Path,
    normalize: str | None = "true",
    title: str | None = None,
) -> Path:
    """Render ``matrix[g, p]`` (ground truth x prediction counts) as a PNG heat map; the path.

    ``normalize="true"`` divides each row by its ground-truth pixel count (rows sum to 1, the
    diagonal is per-class recall), ``"pred"`` each column, ``"all"`` the whole matrix, ``None``
    shows counts. Rows (columns) without pixels stay blank (grey). Axes carry the class names
    when the matrix is 19 x 19.
    """
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    values = normalized_confusion(matrix, normalize)
    k = values.shape[0]
    names = list(CLASS_NAMES) if k == len(CLASS_NAMES) else [str(i) for i in range(k)]

    fig = Figure(figsize=(max(4.0, 0.42 * k + 2.5), max(3.5, 0.42 * k + 1.5)), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    cmap = matplotlib.colormaps["Blues"].with_extremes(bad="#dddddd")
    vmax = 1.0 if normalize is not None else None
    image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=0.0, vmax=vmax)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(k), names, rotation=90, fontsize=7)
    ax.set_yticks(range(k), names, fontsize=7)
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    kind = {None: "pixel counts", "true": "row-normalised", "pred": "column-normalised"}
    ax.set_title(title or f"Confusion matrix ({kind.get(normalize, 'normalised')})", fontsize=9)
    if normalize is not None:
        for g in range(k):
            for p in range(k):
                v = values[g, p]
                if not math.isnan(v) and v >= 0.005:
                    colour = "white" if v > 0.5 else "black"
                    ax.text(
                        p, g, f"{100 * v:.0f}", ha="center", va="center", fontsize=5, color=colour
                    )
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def per_class_table(metrics: SegMetrics) -> str:
    """A Markdown table ``| class | IoU (%) |`` over the 19 classes (``n/a`` where a class is absent
    from both ground truth and prediction), closed by an mIoU row."""
    rows = [
        [name, "n/a" if math.isnan(value) else f"{100 * float(value):.2f}"]
        for name, value in zip(CLASS_NAMES, metrics.iou, strict=False)
    ]
    miou = "n/a" if math.isnan(metrics.miou) else f"{100 * metrics.miou:.2f}"
    rows.append(["**mIoU**", f"**{miou}**"])
    return markdown_table(["class", "IoU (%)"], rows, align="lr") + "\n"
