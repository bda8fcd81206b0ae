"""Backbone weights from a local file: key matching by name and shape, the report, the errors."""

import pytest
import torch

from dakd.models import create_backbone, create_model
from dakd.models.checkpoint import CheckpointError
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
    from dakd.engine.state import TrainState

    backbone, path = imagenet
    trainer = TrainState(
        tiny("source_only", models__student__width=0.0625, models__student__pretrained=str(path))
    )
    assert trainer.pretrained is not None and trainer.pretrained.unexpected == [
        "fc.weight",
        "fc.bias",
    ]
    assert torch.equal(trainer.model.encoder.layer8[0].weight, backbone.layer8[0].weight)
    assert "note: models.student.pretrained" in capsys.readouterr().err
    with pytest.raises(CheckpointError, match="models.teacher.pretrained: .*nope.pth"):
        TrainState(tiny("teacher_da", models__teacher__pretrained=str(path.parent / "nope.pth")))


# -- weights by their content -----------------------------------------------------------------


def test_published_names_give_a_sha256_prefix():
    from dakd.config.weights import published_prefix

    assert published_prefix("weights/drn_d_38-eebb45f0.pth") == "eebb45f0"
    assert published_prefix("/x/resnet50-0676ba61.pth") == "0676ba61"
    assert published_prefix("vgg16-397923af.pth.tar") == "397923af"
    for plain in ("model.pt", "drn_d_22-w0.5-os2.pt", "teacher_da-synth_to_real.pt", "a-beef.pt"):
        assert published_prefix(plain) == "", plain


def test_a_published_file_that_does_not_match_its_name_is_refused(imagenet, tmp_path):
    """On first use: one line naming the key, the file, what its content begins with and what
    its name says; a file named after its true digest loads."""
    import hashlib

    _, path = imagenet
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    good = tmp_path / f"drn_d_22-{digest[:8]}.pth"
    good.write_bytes(path.read_bytes())
    model = create_model("drn_d_22", num_classes=19, width=0.0625)
    assert load_pretrained(model, good, KEY).mismatched == []
    wrong = "0" * 8 if not digest.startswith("0" * 8) else "1" * 8
    bad = tmp_path / f"drn_d_22-{wrong}.pth"
    bad.write_bytes(path.read_bytes())
    with pytest.raises(CheckpointError) as err:
        load_pretrained(model, bad, KEY)
    assert str(err.value) == (
        f"{KEY}: {bad}: its sha256 begins {digest[:8]}, not {wrong} as its name says: the file "
        "is corrupt or not the published one; download it again"
    )


def test_a_files_digest_is_hashed_once_and_remembered_beside_it(tmp_path):
    """The digest is kept in <file>.sha256 with the file's size and modification time: read
    back while they hold (a forged record proves it is read, not recomputed), recomputed when
    the file changes."""
    import hashlib
    import json
    import os

    from dakd.config import weights

    path = tmp_path / "w.pth"
    path.write_bytes(b"weights, v1")
    first = weights.file_sha256(path)
    assert first == hashlib.sha256(b"weights, v1").hexdigest()
    record = json.loads((tmp_path / "w.pth.sha256").read_text())
    stat = os.stat(path)
    assert record == {"sha256": first, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}

    weights._sha256.cache_clear()  # a new process
    (tmp_path / "w.pth.sha256").write_text(json.dumps({**record, "sha256": "ab" * 32}))
    assert weights.file_sha256(path) == "ab" * 32  # read, not hashed again
    path.write_bytes(b"weights, v2 (another size)")
    assert weights.file_sha256(path) == hashlib.sha256(b"weights, v2 (another size)").hexdigest()

    read_only = tmp_path / "ro"
    read_only.mkdir()
    (read_only / "x.pth").write_bytes(b"x")
    read_only.chmod(0o555)
    try:
        assert weights.file_sha256(read_only / "x.pth") == hashlib.sha256(b"x").hexdigest()
    finally:
        read_only.chmod(0o755)


def test_stage_keys_hold_the_weights_content_not_their_path(tmp_path):
    """The same ImageNet file at another path (another clone, another node's mount) gives the
    same stage key; other content another key; a file not there yet its absolute path."""
    from dakd.config import ExperimentConfig, from_dict

    def key(path) -> str:
        changes = {"stage": "student_da", "models.student.pretrained": str(path)}
        cfg = from_dict(ExperimentConfig().to_dict(), changes)
        return cfg.fingerprint()

    here, there = tmp_path / "a" / "drn.pth", tmp_path / "b" / "drn.pth"
    for path in (here, there):
        path.parent.mkdir()
        path.write_bytes(b"the same weights")
    assert key(here) == key(there)
    other = tmp_path / "c.pth"
    other.write_bytes(b"other weights")
    assert key(other) != key(here)
    assert key(tmp_path / "missing.pth") != key(tmp_path / "also-missing.pth")
