"""Segmentation evaluation: one confusion matrix over a whole split, per-class IoU, mIoU, accuracy.

The matrix is accumulated over every image before any ratio is taken (the Cityscapes protocol),
so large and small images weigh by their pixels, not per image. ``tests/test_evaluate.py`` checks
the numbers against the official ``cityscapesscripts`` pixel-level evaluation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from dakd.data.labels import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES


class ConfusionMatrix:
    """``matrix[g, p]`` counts pixels with ground truth ``g`` predicted as ``p``; ignore is skipped."""

    def __init__(self, num_classes: int = NUM_CLASSES, device: torch.device | str = "cpu"):
        self.num_classes = num_classes
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        if prediction.shape != target.shape:
            raise ValueError(
                f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} differ"
            )
        valid = target != IGNORE_INDEX
        bad = valid & ((target < 0) | (target >= self.num_classes))
        if bool(bad.any()):
            values = torch.unique(target[bad]).tolist()
            raise ValueError(
                f"ground truth holds labels {values} outside 0..{self.num_classes - 1}"
            )
        index = target[valid].long() * self.num_classes + prediction[valid].long()
        counts = torch.bincount(index, minlength=self.num_classes**2)
        self.matrix += counts.view(self.num_classes, self.num_classes).to(self.matrix.device)

    def all_reduce(self) -> None:
        """Sum the matrix over the processes of the default ``torch.distributed`` group."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(self.matrix)

    def compute(self) -> SegMetrics:
        return SegMetrics.from_matrix(self.matrix.cpu().numpy())


@dataclass(frozen=True)
class SegMetrics:
    """Per-class IoU (NaN for classes absent from both ground truth and prediction), mIoU over the
    classes present, pixel accuracy, and the confusion matrix they came from."""

    iou: np.ndarray
    miou: float
    pixel_accuracy: float
    matrix: np.ndarray

    @classmethod
    def from_matrix(cls, matrix: np.ndarray) -> SegMetrics:
        matrix = np.asarray(matrix, dtype=np.int64)
        tp = np.diag(matrix).astype(np.float64)
        union = matrix.sum(0) + matrix.sum(1) - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = np.where(union > 0, tp / np.maximum(union, 1), np.nan)
        present = ~np.isnan(iou)
        miou = float(iou[present].mean()) if present.any() else math.nan
        total = matrix.sum()
        accuracy = float(tp.sum() / total) if total else math.nan
        return cls(iou=iou, miou=miou, pixel_accuracy=accuracy, matrix=matrix)

    def miou_over(self, classes) -> float:
        """Mean IoU over the train ids ``classes`` (those present), e.g. SYNTHIA's 16 classes."""
        values = self.iou[list(classes)]
        values = values[~np.isnan(values)]
        return float(values.mean()) if values.size else math.nan

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        """Flat metrics in percent: ``miou``, ``pixel_acc`` and ``iou/<class name>`` (NaN skipped)."""
        out = {
            f"{prefix}miou": 100.0 * self.miou,
            f"{prefix}pixel_acc": 100.0 * self.pixel_accuracy,
        }
        for name, value in zip(CLASS_NAMES, self.iou, strict=False):
            if not math.isnan(value):
                out[f"{prefix}iou/{name.replace(' ', '_')}"] = 100.0 * float(value)
        return out

    def table(self) -> str:
        """A plain-text per-class table for the console."""
        lines = [f"{'class':<14} {'IoU':>6}"]
        for name, value in zip(CLASS_NAMES, self.iou, strict=False):
            shown = "   n/a" if math.isnan(value) else f"{100 * value:6.2f}"
            lines.append(f"{name:<14} {shown}")
        lines.append(f"{'mIoU':<14} {100 * self.miou:6.2f}")
        lines.append(f"{'pixel acc.':<14} {100 * self.pixel_accuracy:6.2f}")
        return "\n".join(lines)


@torch.no_grad()
def evaluate(model, batches, device="cpu", num_classes: int = NUM_CLASSES) -> SegMetrics:
    """Evaluate a segmenter on an iterable of ``{"image", "label"}`` batches (output level).

    Predictions are made at the image's size and their logits bilinearly upsampled
    (``align_corners=False``) to the label's resolution before the argmax: with Cityscapes val,
    images resized to 512x1024 are scored against the full 1024x2048 labels
    (:func:`predict` gives those predictions).
    """
    was_training = model.training
    model.eval()
    confusion = ConfusionMatrix(num_classes, device=device)
    for batch in batches:
        image = batch["image"].to(device, non_blocking=True)
        label = batch["label"].to(device, non_blocking=True)
        confusion.update(predict(model, image, label.shape[-2:]), label)
    confusion.all_reduce()
    model.train(was_training)
    return confusion.compute()


@torch.no_grad()
def predict(model, images: torch.Tensor, size) -> torch.Tensor:
    """Train-id predictions (N, H, W) at ``size`` (H, W): the output-level logits bilinearly
    upsampled to it (``align_corners=False``), then the argmax."""
    from dakd.losses import upsample

    return upsample(model(images)["output"], tuple(size)).argmax(1)


def grid_bound(labels: np.ndarray, stride: int, num_classes: int = NUM_CLASSES) -> float:
    """mIoU (0-1) of a perfect prediction on a logit grid of output stride ``stride``.

    The best logits a network with that grid can hold are each cell's class frequencies
    (one-hot labels average-pooled over the ``stride x stride`` cell, ignored pixels left
    out); they are bilinearly upsampled to the label size, as evaluation upsamples logits, and
    their argmax is scored against ``labels`` (N, H, W; ``IGNORE_INDEX`` ignored) over one
    confusion matrix. Classes thinner than a cell vanish, which is what this bound measures.
    """
    lab = torch.from_numpy(np.asarray(labels).astype(np.int64))
    if lab.ndim != 3:
        raise ValueError(f"labels must be (N, H, W), got shape {tuple(lab.shape)}")
    valid = lab != IGNORE_INDEX
    meter = ConfusionMatrix(num_classes)
    for i in range(lab.shape[0]):
        onehot = torch.nn.functional.one_hot(lab[i].clamp(max=num_classes - 1), num_classes)
        onehot = (onehot * valid[i, ..., None]).permute(2, 0, 1)[None].float()
        cells = torch.nn.functional.avg_pool2d(onehot, stride, ceil_mode=True)
        logits = torch.nn.functional.interpolate(
            cells, size=lab.shape[-2:], mode="bilinear", align_corners=False
        )
        meter.update(logits.argmax(1), lab[i : i + 1])
    return meter.compute().miou
