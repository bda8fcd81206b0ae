"""Backbone weights from a local file: key matching by name and shape, the report, the errors."""

import pytest
import torch

from dakd.checkpoint import CheckpointError
from dakd.models import create_backbone, create_model
from dakd.models.pretrained import load_pretrained

KEY = "models.student.pretrained"
HEADS = ["feature_head.weight", "feature_head.bias", "output_head.weight", "output_head.bias"]


@pytest.fixture
def imagenet(tmp_path):
    """An ImageNet-form DRN-D-22 (with its 1000-class classifier) saved as a plain state dict."""
    torch.manual_seed(0)
    backbone = create_backbone("drn_d_22", width=0.0625)
    path = tmp_path / "drn_d_22_imagenet.pth"
    torch.save(backbone.state_dict(), path)
    return backbone, path


def _weights(module):
    return {k: v for k, v in module.state_dict().items() if not k.endswith("num_batches_tracked")}


def test_imagenet_backbone_fills_the_encoder(imagenet):
    backbone, path = imagenet
    model = create_model("drn_d_22", num_classes=19, width=0.0625)
    heads_before = model.output_head.weight.clone()
    report = load_pretrained(model, path, KEY)
    encoder = _weights(backbone)
    assert report.unexpected == ["fc.weight", "fc.bias"]  # the ImageNet classifier
    assert report.missing == HEADS  # the segmentation heads keep their initialisation
    assert report.mismatched == []
    assert len(report.matched) == len(encoder) - 2 == report.total - len(HEADS)
    for name, tensor in encoder.items():
        if not name.startswith("fc."):
            assert torch.equal(model.state_dict()[f"encoder.{name}"], tensor), name
    assert torch.equal(model.output_head.weight, heads_before)
    text = str(report)
    assert f"{KEY}: {path}: loaded {len(encoder) - 2} of the network's {report.total}" in text
    assert "2 in the file unused (fc.weight, fc.bias)" in text


def test_wrapped_and_prefixed_tensors(imagenet, tmp_path):
    backbone, _ = imagenet
    state = {f"module.{k}": v for k, v in backbone.state_dict().items()}
    path = tmp_path / "wrapped.pth"
    torch.save({"state_dict": state, "epoch": 90}, path)
    model = create_model("drn_d_22", num_classes=19, width=0.0625)
    report = load_pretrained(model, path, KEY)
    assert report.mismatched == [] and report.missing == HEADS
    assert torch.equal(model.encoder.layer1[0].weight, backbone.layer1[0].weight)


def test_an_encoder_left_partly_random_is_refused(imagenet, tmp_path):
    """A tensor of another shape, or one the file lacks, would leave part of the encoder at its
    random initialisation: one error naming the file, and the network is left untouched."""
    backbone, _ = imagenet
    state = dict(backbone.state_dict())
    state["layer0.0.weight"] = torch.zeros(3, 3, 7, 7)  # another shape
    path = tmp_path / "other_shape.pth"
    torch.save(state, path)
    model = create_model("drn_d_22", num_classes=19, width=0.0625)
    before = model.encoder.layer1[0].weight.clone()
    with pytest.raises(CheckpointError, match=f"{KEY}: .*other_shape.pth leaves 1 encoder"):
        load_pretrained(model, path, KEY)
    assert torch.equal(model.encoder.layer1[0].weight, before)  # nothing half-loaded
    del state["layer0.0.weight"], state["layer8.0.weight"]
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="leaves 2 encoder tensors"):
        load_pretrained(model, path, KEY)


def test_errors_name_the_key(imagenet, tmp_path):
    model = create_model("drn_d_22", num_classes=19, width=0.0625)
    with pytest.raises(CheckpointError, match=f"{KEY}: .*missing.pth does not exist"):
        load_pretrained(model, tmp_path / "missing.pth", KEY)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=f"{KEY}: .*junk.pth cannot be read"):
        load_pretrained(model, tmp_path / "junk.pth", KEY)
    wide = tmp_path / "wide.pth"
    torch.save(create_backbone("drn_d_22", width=0.125).state_dict(), wide)
    with pytest.raises(CheckpointError, match="no tensor fits the network.*with another shape"):
        load_pretrained(model, wide, KEY)


def test_trainer_starts_from_the_pretrained_file(imagenet, tiny, capsys):
    from dakd.trainer import Trainer

    backbone, path = imagenet
    trainer = Trainer(
        tiny("source_only", models__student__width=0.0625, models__student__pretrained=str(path))
    )
    assert trainer.pretrained is not None and trainer.pretrained.unexpected == [
        "fc.weight",
        "fc.bias",
    ]
    assert torch.equal(trainer.model.encoder.layer8[0].weight, backbone.layer8[0].weight)
    assert "note: models.student.pretrained" in capsys.readouterr().err
    with pytest.raises(CheckpointError, match="models.teacher.pretrained: .*nope.pth"):
        Trainer(tiny("teacher_da", models__teacher__pretrained=str(path.parent / "nope.pth")))
