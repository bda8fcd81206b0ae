"""The evaluator against hand-computed values and the official cityscapesscripts evaluation."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from dakd.data.labels import LABEL_IDS
from dakd.evaluation.segmentation import ConfusionMatrix, SegMetrics


def test_hand_computed_iou_miou_accuracy():
    gt = torch.tensor([[0, 0, 1, 1, 255, 2]])
    pred = torch.tensor([[0, 1, 1, 1, 2, 0]])
    cm = ConfusionMatrix(num_classes=4)
    cm.update(pred, gt)
    m = cm.compute()
    # class 0: tp 1, fp 1 (gt 2), fn 1 -> 1/3; class 1: tp 2, fp 1 -> 2/3; class 2: tp 0 -> 0
    assert m.iou[:3] == pytest.approx([1 / 3, 2 / 3, 0.0])
    assert math.isnan(m.iou[3])  # absent from ground truth and prediction: not in the mean
    assert m.miou == pytest.approx((1 / 3 + 2 / 3 + 0) / 3)
    assert m.pixel_accuracy == pytest.approx(3 / 5)


def test_matrix_accumulates_over_images_not_per_image():
    cm = ConfusionMatrix(num_classes=2)
    cm.update(torch.tensor([0, 0, 0, 0]), torch.tensor([0, 0, 0, 1]))
    cm.update(torch.tensor([1]), torch.tensor([1]))
    assert cm.compute().iou.tolist() == pytest.approx([3 / 4, 1 / 2])


def test_labels_outside_the_space_are_rejected():
    with pytest.raises(ValueError, match=r"\[19\]"):
        ConfusionMatrix().update(torch.tensor([0]), torch.tensor([19]))


def test_agrees_with_official_cityscapes_evaluation(tmp_path, monkeypatch):
    monkeypatch.setenv("CITYSCAPES_DATASET", str(tmp_path))
    monkeypatch.setenv("CITYSCAPES_EXPORT_DIR", str(tmp_path))

    rng = np.random.default_rng(0)
    to_id = np.array(list(LABEL_IDS) + [0] * (256 - 19), dtype=np.uint8)
    ours = ConfusionMatrix()
    pred_files, gt_files = [], []
    for i in range(3):
        gt = rng.integers(0, 19, size=(24, 40))
        gt[rng.random(gt.shape) < 0.1] = 255
        gt[:, :3] = 255
        pred = np.where(rng.random(gt.shape) < 0.6, gt, rng.integers(0, 19, size=gt.shape))
        pred = np.where(pred == 255, 0, pred)
        pred[0, :] = 5  # a whole row of one class: unequal class sizes
        ours.update(torch.from_numpy(pred), torch.from_numpy(gt))
        gt_ids = np.where(gt == 255, 0, to_id[np.minimum(gt, 255)])
        gt_file, pred_file = tmp_path / f"gt{i}.png", tmp_path / f"pred{i}.png"
        Image.fromarray(gt_ids.astype(np.uint8)).save(gt_file)
        Image.fromarray(to_id[pred].astype(np.uint8)).save(pred_file)
        gt_files.append(str(gt_file))
        pred_files.append(str(pred_file))

    result = official_evaluation(pred_files, gt_files, tmp_path, monkeypatch)

    metrics: SegMetrics = ours.compute()
    official_iou = [result["classScores"][name] for name in official_class_names()]
    assert metrics.iou == pytest.approx(np.array(official_iou), abs=1e-12)
    assert metrics.miou == pytest.approx(result["averageScoreClasses"], abs=1e-12)


def official_evaluation(pred_files, gt_files, tmp_path, monkeypatch):
    """cityscapesscripts' pixel-level evaluation of prediction / ground-truth PNG pairs."""
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as official

    args = official.args
    monkeypatch.setattr(args, "quiet", True)
    monkeypatch.setattr(args, "JSONOutput", False)
    monkeypatch.setattr(args, "evalInstLevelScore", False)
    monkeypatch.setattr(args, "exportFile", str(tmp_path / "result.json"))
    return official.evaluateImgLists(pred_files, gt_files, args)


def official_class_names():
    from cityscapesscripts.helpers.labels import labels

    evaluated = sorted(
        (lab for lab in labels if 0 <= lab.trainId < 255), key=lambda lab: lab.trainId
    )
    return [lab.name for lab in evaluated]


class _Logits(torch.nn.Module):
    """Stride-8 class logits from the image: a fixed random map of its 8x8 block means."""

    def __init__(self):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.weight = torch.randn(19, 3, generator=generator) * 4

    def forward(self, x):
        blocks = torch.nn.functional.avg_pool2d(x, 8, ceil_mode=True)
        return {"output": torch.einsum("kc,nchw->nkhw", self.weight, blocks)}


def test_cityscapes_val_protocol_agrees_with_the_official_evaluation(tmp_path, monkeypatch):
    """Val images read at half resolution, logits upsampled to the full-resolution label files:
    the same per-class IoU as cityscapesscripts on those predictions and the gtFine files."""
    monkeypatch.setenv("CITYSCAPES_DATASET", str(tmp_path))
    monkeypatch.setenv("CITYSCAPES_EXPORT_DIR", str(tmp_path))

    from dakd.data.datasets import CityscapesDataset
    from dakd.data.loader import eval_batches
    from dakd.evaluation.segmentation import evaluate, predict
    from tests import realdata

    realdata.cityscapes(tmp_path / "cityscapes", {"val": 3}, size=(64, 128))
    val = CityscapesDataset(tmp_path / "cityscapes", "val", resize=(32, 64), full_label=True)
    model = _Logits()
    ours = evaluate(model, eval_batches(val, 2))

    to_id = np.array(LABEL_IDS, dtype=np.uint8)
    pred_files, gt_files = [], []
    for i, (_, label_file) in enumerate(val.pairs):
        sample = val[i]
        assert sample["image"].shape[-2:] == (32, 64) and sample["label"].shape == (64, 128)
        prediction = predict(model, sample["image"][None], sample["label"].shape)[0]
        pred_file = tmp_path / f"pred{i}.png"
        Image.fromarray(to_id[prediction.numpy()]).save(pred_file)
        pred_files.append(str(pred_file))
        gt_files.append(str(label_file))
    result = official_evaluation(pred_files, gt_files, tmp_path, monkeypatch)

    official_iou = np.array([result["classScores"][name] for name in official_class_names()])
    assert (~np.isnan(official_iou)).sum() >= 10 and np.nanmax(official_iou) > 0.05
    assert ours.iou == pytest.approx(official_iou, abs=1e-12, nan_ok=True)
    assert ours.miou == pytest.approx(result["averageScoreClasses"], abs=1e-12)
