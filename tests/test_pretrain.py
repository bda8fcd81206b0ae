"""Pretraining of the embedded backbones: the randomised scene family, the proxy labels, the
loop's determinism and resumption, and the shipped weights with their manifest."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from dakd.config import ModelConfig, load_config
from dakd.data.labels import CATEGORY_NAMES, TRAINID_TO_CATEGORY
from dakd.data.scenes import DOMAINS, PRETRAIN_DOMAIN, render_scene, renderer_version
from dakd.models import create_model
from dakd.models.checkpoint import CheckpointError
from dakd.models.pretrained import MANIFEST, load_pretrained, network_of, sha256
from dakd.recipes.pretrain import HEADS, PretrainConfig, pretrain, weights_name

ROOT = Path(__file__).resolve().parents[1]
EMBEDDED = ROOT / "configs" / "embedded.yaml"


def test_categories_by_hand():
    assert len(CATEGORY_NAMES) == 7
    # road, sidewalk -> flat; building, wall, fence -> construction; pole, light, sign ->
    # object; vegetation, terrain -> nature; sky; person, rider -> human; the rest -> vehicle
    expected = [0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 4, 5, 5, 6, 6, 6, 6, 6, 6]
    assert TRAINID_TO_CATEGORY[:19].tolist() == expected
    assert TRAINID_TO_CATEGORY[255] == 255


def test_randomized_family_draws_a_look_per_scene():
    """Each scene has its own palette: the same class differs in colour from scene to scene far
    more than in a fixed domain, and the family is deterministic like every domain."""
    assert PRETRAIN_DOMAIN not in DOMAINS  # never a source or target of the benchmark

    def sky_colours(domain):
        out = []
        for i in range(12):
            image, label = render_scene(domain, "train", i)
            sky = label == 10
            if sky.sum() > 20:
                out.append(image[sky].mean(0))
        return np.array(out)

    spread = {d: sky_colours(d).std(0).mean() for d in ("randomized", "city")}
    assert spread["randomized"] > 2 * spread["city"]
    a = render_scene(PRETRAIN_DOMAIN, "train", 3)
    b = render_scene(PRETRAIN_DOMAIN, "train", 3)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def _recipe(tmp_path, **changes):
    base = {
        "steps": 4,
        "batch_size": 2,
        "eval_interval": 2,
        "size": (32, 64),
        "cache_dir": "",
        "work_dir": str(tmp_path / "work"),
    }
    return PretrainConfig(**{**base, **changes})


TINY_NET = ModelConfig("drn_d_22", 0.0625, output_stride=2)


def test_pretraining_reproduces_and_resumes(tmp_path, monkeypatch):
    """Two runs give the same weights bit for bit; a run stopped after 2 steps and resumed
    gives them too (and the resumed call trains only the remaining steps)."""
    one = pretrain(TINY_NET, _recipe(tmp_path / "a"), tmp_path / "out_a", log=lambda *_: None)
    two = pretrain(TINY_NET, _recipe(tmp_path / "b"), tmp_path / "out_b", log=lambda *_: None)
    assert one["sha256"] is not None
    wa = torch.load(tmp_path / "out_a" / weights_name(TINY_NET), weights_only=True)["model"]
    wb = torch.load(tmp_path / "out_b" / weights_name(TINY_NET), weights_only=True)["model"]
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert one["history"] == two["history"]  # the same losses and proxy mIoU at each evaluation
    assert not any(k.startswith(HEADS) for k in wa)  # the proxy heads are not shipped
    logs = []
    partial = pretrain(
        TINY_NET, _recipe(tmp_path / "c"), tmp_path / "out_c", log=logs.append, stop_after=2
    )
    assert partial["sha256"] is None
    from dakd.data.loader import StepSampler

    steps_run = []
    batch = StepSampler.batch
    monkeypatch.setattr(
        StepSampler, "batch", lambda self, step: steps_run.append(step) or batch(self, step)
    )
    resumed = pretrain(TINY_NET, _recipe(tmp_path / "c"), tmp_path / "out_c", log=logs.append)
    assert steps_run == [2, 3]  # only the remaining steps, from the saved state
    assert logs == ["drn_d_22-w0.0625-os2.pt: resuming at step 2"]
    wc = torch.load(tmp_path / "out_c" / weights_name(TINY_NET), weights_only=True)["model"]
    assert all(torch.equal(wa[k], wc[k]) for k in wa)
    assert resumed["history"][-1]["miou"] == one["history"][-1]["miou"]
    manifest = json.loads((tmp_path / "out_a" / MANIFEST).read_text())
    entry = manifest[weights_name(TINY_NET)]
    assert entry["sha256"] == sha256(tmp_path / "out_a" / weights_name(TINY_NET))
    assert entry["renderer"] == renderer_version()
    assert entry["network"] == network_of(TINY_NET)
    # another recipe in the same work folder is refused, not silently mixed
    with pytest.raises(CheckpointError, match="another recipe"):
        pretrain(TINY_NET, _recipe(tmp_path / "c", lr=0.1, steps=8), tmp_path / "out_c")


# -- the shipped weights ------------------------------------------------------------------


def _shipped():
    cfg = load_config(EMBEDDED)
    return [(role, getattr(cfg.models, role)) for role in ("teacher", "student")]


@pytest.mark.parametrize(("role", "model"), _shipped())
def test_shipped_weights_load_and_match_their_manifest(role, model):
    path = ROOT / model.pretrained
    assert path.is_file(), f"{model.pretrained} is not in the repository"
    manifest = json.loads((path.parent / MANIFEST).read_text())
    entry = manifest[path.name]
    assert entry["sha256"] == sha256(path)
    assert entry["network"] == network_of(model)
    net = create_model(model.name, width=model.width, output_stride=model.output_stride)
    report = load_pretrained(net, path, f"models.{role}.pretrained", network_of(model))
    assert report.mismatched == [] and report.unexpected == []
    assert all(k.startswith(HEADS) for k in report.missing)  # only the 19-class heads are new
    # the proxy task was learned: the last evaluation beats the first
    assert entry["history"][-1]["miou"] > entry["history"][0]["miou"]


def test_shipped_weights_fit_the_size_budget():
    total = sum((ROOT / m.pretrained).stat().st_size for _, m in _shipped())
    assert total <= 20 * 2**20


def test_shipped_weights_were_made_with_this_renderer():
    """Fails when the scene renderer changes: the weights were pretrained on its scenes and
    must be made again (python -m dakd pretrain, then commit the files and manifest.json)."""
    for _, model in _shipped():
        path = ROOT / model.pretrained
        entry = json.loads((path.parent / MANIFEST).read_text())[path.name]
        assert entry["renderer"] == renderer_version(), (
            f"{path.name} was pretrained with renderer {entry['renderer']}, this one is "
            f"{renderer_version()}: run python -m dakd pretrain and commit the new weights"
        )


def test_bad_weights_files_are_refused(tmp_path):
    role, model = _shipped()[1]
    src = ROOT / model.pretrained
    folder = tmp_path / "w"
    folder.mkdir()
    shutil.copy(src, folder / src.name)
    shutil.copy(src.parent / MANIFEST, folder / MANIFEST)
    net = create_model(model.name, width=model.width, output_stride=model.output_stride)
    key = f"models.{role}.pretrained"
    # a corrupt (changed) file: the sha256 no longer matches
    data = bytearray((folder / src.name).read_bytes())
    data[-100] ^= 0xFF
    (folder / src.name).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=f"{key}: .*{src.name} does not match its manifest"):
        load_pretrained(net, folder / src.name, key, network_of(model))
    # the right file for another architecture
    shutil.copy(src, folder / src.name)
    other = ModelConfig(model.name, model.width * 2, output_stride=model.output_stride)
    with pytest.raises(CheckpointError, match="holds weights for"):
        load_pretrained(net, folder / src.name, key, network_of(other))
    # a file the manifest does not list, and a missing file
    shutil.copy(src, folder / "stray.pt")
    with pytest.raises(CheckpointError, match="not listed in"):
        load_pretrained(net, folder / "stray.pt", key, network_of(model))
    with pytest.raises(CheckpointError, match="does not exist"):
        load_pretrained(net, folder / "gone.pt", key, network_of(model))


def test_a_training_run_refuses_weights_of_another_width(tiny, tmp_path):
    """Through the trainer: never a silently random initialisation."""
    from dakd.engine.state import TrainState

    _, model = _shipped()[1]
    cfg = tiny(
        "source_only",
        models__student__width=model.width * 2,
        models__student__output_stride=model.output_stride,
        models__student__pretrained=str(ROOT / model.pretrained),
    )
    with pytest.raises(CheckpointError, match="holds weights for"):
        TrainState(cfg)
