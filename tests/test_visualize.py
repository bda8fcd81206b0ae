"""Prediction panels, confusion figures and per-class tables."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from dakd.data.labels import CLASS_NAMES, IGNORE_INDEX, PALETTE
from dakd.data.scenes import denormalize, to_tensor
from dakd.evaluation.panels import (
    SEPARATOR,
    TITLE_HEIGHT,
    confusion_figure,
    normalized_confusion,
    per_class_table,
    prediction_panel,
    save_png,
)
from dakd.evaluation.segmentation import SegMetrics

ROAD = (128, 64, 128)
CAR = (0, 0, 142)
WHITE = (255, 255, 255)
N, H, W = 2, 8, 12


@pytest.fixture
def batch():
    """Two random normalised images, their labels (road / car / ignore) and two predictions."""
    rng = np.random.default_rng(0)
    pictures = rng.integers(0, 256, size=(N, H, W, 3), dtype=np.uint8)
    images = torch.stack([to_tensor(p) for p in pictures])
    labels = np.zeros((N, H, W), dtype=np.int64)  # road everywhere ...
    labels[:, :, W // 2 :] = 13  # ... car on the right half
    labels[1, 0, 0] = IGNORE_INDEX
    teacher = np.full((N, H, W), 13, dtype=np.int64)  # all car
    student = torch.from_numpy(labels.copy()).clamp_(max=18)  # a tensor works too
    return images, labels, {"teacher": teacher, "student": student}


def _cell(panel: np.ndarray, row: int, col: int, titles: bool = True) -> np.ndarray:
    top = (TITLE_HEIGHT if titles else 0) + row * (H + SEPARATOR)
    left = col * (W + SEPARATOR)
    return panel[top : top + H, left : left + W]


def test_panel_shape_and_layout(batch):
    images, labels, predictions = batch
    panel = prediction_panel(images, labels, predictions)
    columns = 2 + len(predictions)
    assert panel.dtype == np.uint8
    assert panel.shape == (TITLE_HEIGHT + N * H + (N - 1) * SEPARATOR, columns * W + 6, 3)

    plain = prediction_panel(images, labels, predictions, titles=False)
    assert plain.shape == (N * H + SEPARATOR, columns * W + (columns - 1) * SEPARATOR, 3)
    assert np.array_equal(plain, panel[TITLE_HEIGHT:])  # the band is all that titles add
    band = panel[:TITLE_HEIGHT]
    assert (band < 128).any(), "no title text drawn"
    assert (band == 255).mean() > 0.5  # on white

    # 2 px white separators between columns and between rows
    for c in range(1, columns):
        x = c * (W + SEPARATOR) - SEPARATOR
        assert (plain[:, x : x + SEPARATOR] == 255).all()
    assert (plain[H : H + SEPARATOR] == 255).all()


def test_panel_colours(batch):
    images, labels, predictions = batch
    panel = prediction_panel(images, labels, predictions)
    for row in range(N):
        assert np.array_equal(_cell(panel, row, 0), denormalize(images[row]))
    truth = _cell(panel, 0, 1)
    assert tuple(truth[3, 1]) == ROAD  # a road pixel of the ground-truth column
    assert tuple(truth[3, W - 1]) == CAR
    assert tuple(_cell(panel, 1, 1)[0, 0]) == (0, 0, 0)  # ignore is black
    assert (_cell(panel, 0, 2) == np.array(CAR, dtype=np.uint8)).all()  # teacher: all car
    assert np.array_equal(_cell(panel, 0, 3), truth)  # student == ground truth
    assert np.array_equal(PALETTE[0], ROAD)


def test_panel_inputs(batch):
    images, labels, predictions = batch
    as_array = prediction_panel(images.numpy(), labels, predictions, titles=False)
    assert np.array_equal(as_array, prediction_panel(images, labels, predictions, titles=False))
    pictures = np.stack([denormalize(i) for i in images])
    assert np.array_equal(prediction_panel(pictures, labels, {}, titles=False)[:H, :W], pictures[0])
    single = prediction_panel(images[0], labels[0], {}, titles=False)
    assert single.shape == (H, 2 * W + SEPARATOR, 3)
    big = torch.nn.functional.interpolate(images, scale_factor=2.0, mode="nearest")
    assert prediction_panel(big, labels, {}, titles=False).shape == (2 * H + 2, 2 * W + 2, 3)

    with pytest.raises(ValueError, match="teacher"):
        prediction_panel(images, labels, {"teacher": np.zeros((N, H, W + 1), dtype=np.int64)})
    with pytest.raises(ValueError, match="images"):
        prediction_panel(images[:1], labels, {})
    with pytest.raises(ValueError, match="N, 3, H, W"):
        prediction_panel(torch.zeros(N, 4, H, W), labels, {})


def test_save_png_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    array = rng.integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    path = save_png(array, tmp_path / "deep" / "x.png")
    assert path == tmp_path / "deep" / "x.png"
    assert np.array_equal(np.asarray(Image.open(path)), array)
    with pytest.raises(ValueError, match="uint8"):
        save_png(array.astype(np.float32), tmp_path / "y.png")


def test_normalized_confusion():
    matrix = np.array([[3, 1, 0], [0, 0, 0], [2, 0, 2]])
    rows = normalized_confusion(matrix)
    assert np.allclose(rows[[0, 2]].sum(axis=1), 1.0)
    assert np.allclose(rows[0], [0.75, 0.25, 0.0])
    assert np.isnan(rows[1]).all()  # class without ground-truth pixels
    columns = normalized_confusion(matrix, "pred")
    assert np.allclose(columns[:, 0], [0.6, 0.0, 0.4])
    assert np.isclose(normalized_confusion(matrix, "all").sum(), 1.0)
    assert np.array_equal(normalized_confusion(matrix, None), matrix)
    with pytest.raises(ValueError, match="normalize"):
        normalized_confusion(matrix, "rows")
    with pytest.raises(ValueError, match="square"):
        normalized_confusion(np.zeros((2, 3)))


def test_confusion_figure_is_written(tmp_path):
    rng = np.random.default_rng(2)
    matrix = rng.integers(0, 100, size=(19, 19)) + np.diag(np.full(19, 2000))
    matrix[4] = 0
    path = confusion_figure(matrix, tmp_path / "figs" / "confusion.png")
    assert path == tmp_path / "figs" / "confusion.png"
    image = Image.open(path)
    assert image.format == "PNG"
    assert image.width > 400 and image.height > 400
    counts = confusion_figure(matrix[:3, :3], tmp_path / "small.png", normalize=None)
    assert counts.stat().st_size > 0
    with pytest.raises(ValueError):
        confusion_figure(matrix, tmp_path / "bad.png", normalize="rows")


def test_per_class_table():
    matrix = np.diag(np.arange(1, 20) * 10)
    matrix[0, 1] = 10  # road: 10 / (10 + 10) -> 50 %
    matrix[2] = 0  # building absent -> n/a
    metrics = SegMetrics.from_matrix(matrix)
    table = per_class_table(metrics)
    lines = table.strip().splitlines()
    assert lines[0] == "| class | IoU (%) |"
    assert lines[1].startswith("|")
    assert len(lines) == 2 + len(CLASS_NAMES) + 1
    assert lines[2] == "| road | 50.00 |"
    assert lines[4] == "| building | n/a |"
    assert lines[2 + CLASS_NAMES.index("sidewalk")] == f"| sidewalk | {100 * 20 / 30:.2f} |"
    assert lines[-1] == f"| **mIoU** | **{100 * metrics.miou:.2f}** |"
    assert not math.isnan(metrics.miou)
