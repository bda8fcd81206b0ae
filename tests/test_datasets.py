"""Real dataset readers on tiny trees in each dataset's layout: label mappings (Cityscapes against
cityscapesscripts), the recipe's resize / scale / crop, the checker's report, the `data check`
command, and training that refuses a tree failing its check."""

from pathlib import Path

import numpy as np
import pytest
import torch
from cityscapesscripts.helpers.labels import id2label

from dakd.__main__ import main
from dakd.config import ConfigError
from dakd.data import datasets
from dakd.data.datasets import DATASETS, DataError, check_dataset, read_png16
from dakd.data.labels import IGNORE_INDEX, SYNTHIA_13, SYNTHIA_16
from dakd.data.loader import StepSampler
from tests import realdata


def _by_image(dataset) -> dict[Path, int]:
    return {image: i for i, (image, _) in enumerate(dataset.pairs)}


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_readers_pair_files_and_map_labels(name, tmp_path):
    written = realdata.write(name, tmp_path / name)
    for split, items in written.items():
        data = DATASETS[name](tmp_path / name, split)
        assert len(data) == len(items)
        index = _by_image(data)
        for image, _, raw in items:
            sample = data[index[image]]
            assert sample["image"].dtype == torch.float32
            assert sample["image"].shape == (3, *realdata.SIZE)
            assert sample["label"].dtype == torch.int64
            assert torch.equal(sample["label"], torch.from_numpy(expected_train_ids(name, raw)))


def expected_train_ids(name: str, raw: np.ndarray) -> np.ndarray:
    """Each dataset's official mapping, written out independently of the readers."""
    if name in ("cityscapes", "gta5"):  # Cityscapes label ids: the official table
        table = {i: lab.trainId for i, lab in id2label.items() if i >= 0}
        return np.vectorize(lambda v: table[v] if 0 <= table[v] < 19 else IGNORE_INDEX)(raw)
    if name == "bdd100k":  # train ids already
        return raw.copy()
    synthia = {3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8, 1: 10, 10: 11, 17: 12}
    synthia.update({8: 13, 19: 15, 12: 17, 11: 18})
    return np.vectorize(lambda v: synthia.get(int(v), IGNORE_INDEX))(raw)


def test_synthia_reads_the_first_channel_of_its_16_bit_labels(tmp_path):
    root = tmp_path / "synthia"
    raw = np.array([[3, 21, 16, 22], [10, 17, 8, 0]])
    others = np.full_like(raw, 300)  # e.g. instance ids: > 255, so only 16 bits hold them
    realdata.png(root / "RGB" / "a.png", np.zeros((2, 4, 3)))
    realdata.png16(root / "GT" / "LABELS" / "a.png", np.stack([raw, others, others], axis=-1))
    rng = np.random.default_rng(0)
    values = rng.integers(0, 1 << 16, size=(7, 9, 3))  # every row filter, 16-bit values
    assert np.array_equal(read_png16(realdata.png16(tmp_path / "x.png", values)), values)
    label = DATASETS["synthia"](root, "train")[0]["label"]
    # road, wall, terrain (ignored), lane marking (ignored); person, rider, car, void
    assert label.tolist() == [[0, 3, 255, 255], [11, 12, 13, 255]]
    assert len(SYNTHIA_16) == 16 and 9 not in SYNTHIA_16 and 14 not in SYNTHIA_16
    assert set(SYNTHIA_16) - set(SYNTHIA_13) == {3, 4, 5}


def test_listed_splits_and_train_without_a_list(tmp_path):
    root = tmp_path / "gta5"
    realdata.gta5(root, n=5, lists={"val": [3, 4]})
    assert len(DATASETS["gta5"](root, "train")) == 5  # no train.txt: every image
    val = DATASETS["gta5"](root, "val")
    assert [p[0].name for p in val.pairs] == ["00004.png", "00005.png"]
    (root / "train.txt").write_text("00001.png\n00002\n# a comment\n\n00009.png\n")
    report = check_dataset("gta5", root)
    assert set(report.splits) == {"train", "val"}
    assert [(p.kind, Path(p.path).name) for p in report.problems] == [
        ("missing_image", "00009.png")
    ]
    assert report.splits["train"].pairs == 2
    with pytest.raises(DataError, match="missing_split.*test.txt"):
        DATASETS["gta5"](root, "test")


def test_transforms_resize_scale_crop_and_full_resolution_labels(tmp_path):
    realdata.cityscapes(tmp_path, {"val": 1}, size=(32, 64))
    full = DATASETS["cityscapes"](tmp_path, "val")[0]
    val = DATASETS["cityscapes"](tmp_path, "val", resize=(16, 32), full_label=True)[0]
    assert val["image"].shape == (3, 16, 32) and torch.equal(val["label"], full["label"])
    train = DATASETS["cityscapes"](
        tmp_path, "val", resize=(16, 32), crop=(8, 16), random_scale=(0.5, 2.0)
    )
    small = train.augmented(0, (0.0, 0.0, 0.0))  # scale 0.5: 8x16, exactly the crop
    assert small["image"].shape == (3, 8, 16) and small["label"].shape == (8, 16)
    # scale 2 (32x64, the file's size), crop at the bottom right: the label's own pixels
    big = train.augmented(0, (1.0, 0.999, 0.999))
    assert torch.equal(big["label"], full["label"][24:, 48:])
    assert train.augmented(0, (0.3, 0.6, 0.2))["label"].shape == (8, 16)
    padded = DATASETS["cityscapes"](tmp_path, "val", resize=(4, 8), crop=(8, 16))
    sample = padded.augmented(0, (0.5, 0.5, 0.5))
    assert (sample["label"][4:] == IGNORE_INDEX).all() and (sample["image"][:, 4:] == 0).all()


def test_sampler_batches_of_real_data_depend_only_on_seed_and_step(tmp_path):
    realdata.bdd100k(tmp_path, {"train": 4})
    data = DATASETS["bdd100k"](
        tmp_path, "train", resize=(32, 64), crop=(16, 32), random_scale=(0.75, 1.5)
    )
    sampler = StepSampler(data, 2, seed=0, stream="source")
    again = StepSampler(data, 2, seed=0, stream="source")
    assert torch.equal(sampler.batch(3)["image"], again.batch(3)["image"])
    assert sampler.batch(3)["label"].shape == (2, 16, 32)
    assert not torch.equal(sampler.batch(3)["image"], sampler.batch(4)["image"])


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_check_reports_every_broken_file_with_its_path(name, tmp_path):
    root = tmp_path / name
    train = realdata.write(name, root, train=5)["train"]
    by_name = sorted(train, key=lambda item: str(item[0]))
    (no_label, _, _), (_, corrupt, _), (_, small, raw), (_, unknown, raw2) = by_name[:4]
    missing = next(label for image, label, _ in train if image == no_label)
    missing.unlink()
    realdata.corrupt(corrupt)
    realdata.label_file(name, small, raw[:16])
    bad = raw2.copy()
    bad[0, 0] = realdata.UNKNOWN[name]
    realdata.label_file(name, unknown, bad)

    report = check_dataset(name, root, ["train"])
    found = {(p.kind, p.path) for p in report.problems}
    assert found == {
        ("missing_label", str(no_label)),
        ("unreadable", str(corrupt)),
        ("wrong_size", str(small)),
        ("unknown_label_value", str(unknown)),
    }
    assert not report.ok
    assert str(realdata.UNKNOWN[name]) in next(
        p.detail for p in report.problems if p.kind == "unknown_label_value"
    )
    summary = report.splits["train"]
    assert (summary.images, summary.pairs, summary.decoded) == (5, 4, 4)
    text = report.text()
    assert "FAILED" in text and all(path in text for _, path in found)


def test_check_finds_unpaired_labels_odd_images_and_missing_folders(tmp_path):
    items = realdata.cityscapes(tmp_path, {"train": 3, "val": 1})
    orphan = tmp_path / "gtFine" / "train" / "aachen" / "aachen_000099_000019_gtFine_labelIds.png"
    realdata.png(orphan, np.zeros((32, 64)))
    odd_image, odd_label, raw = items["train"][1]
    realdata.png(odd_image, np.zeros((16, 64, 3)))
    realdata.png(odd_label, raw[:16])
    report = check_dataset("cityscapes", tmp_path)
    assert {(p.kind, p.path) for p in report.problems} == {
        ("unpaired_label", str(orphan)),
        ("wrong_size", str(odd_image)),  # 16x64 where the split's images are 32x64
    }
    missing = check_dataset("bdd100k", tmp_path / "nothing")
    assert [p.kind for p in missing.problems] == ["missing_root"]
    (tmp_path / "bdd").mkdir()
    folders = check_dataset("bdd100k", tmp_path / "bdd", ["val"])
    assert [p.kind for p in folders.problems] == ["missing_folder", "missing_folder"]


def test_check_counts_class_pixels(tmp_path):
    root = tmp_path / "bdd"
    realdata.png(root / "images/10k/val/a.jpg", np.zeros((2, 4, 3)))
    realdata.png(
        root / "labels/sem_seg/masks/val/a.png", np.array([[0, 0, 0, 13], [13, 255, 2, 2]])
    )
    report = check_dataset("bdd100k", root, ["val"])
    assert report.ok
    expected = np.zeros(20, np.int64)
    expected[[0, 13, 2, 19]] = [3, 2, 2, 1]
    assert report.pixels.tolist() == expected.tolist()
    assert "road 42.86%" in report.text() and "12.5% of all pixels ignored" in report.text()


def test_data_check_command(tmp_path, capsys, monkeypatch):
    realdata.gta5(tmp_path / "gta5")
    monkeypatch.setenv("DAKD_DATA", str(tmp_path))
    assert main(["data", "check", "--dataset", "gta5"]) == 0  # $DAKD_DATA/gta5
    out = capsys.readouterr().out
    assert "train: 4 images, 4 labels, 4 pairs; 4 decoded" in out and "OK" in out
    label = tmp_path / "gta5" / "labels" / "00002.png"
    label.unlink()
    assert main(["data", "check", "--dataset", "gta5", "--root", str(tmp_path / "gta5")]) == 1
    out = capsys.readouterr().out
    assert f"missing_label: {tmp_path / 'gta5' / 'images' / '00002.png'}" in out
    assert "FAILED" in out
    monkeypatch.delenv("DAKD_DATA")
    assert main(["data", "check", "--dataset", "gta5"]) == 2
    assert "DAKD_DATA" in capsys.readouterr().err


# -- experiments on real data --------------------------------------------------------------------

REAL = {
    "data.dataset": "real",
    "data.source_resize": [32, 64],
    "data.source_crop": [32, 64],
    "data.target_resize": [32, 64],
    "data.target_crop": [32, 64],
    "data.val_resize": [16, 32],
    "data.random_scale": [0.75, 1.25],
}


@pytest.fixture
def trees(tmp_path):
    root = tmp_path / "data"
    for name in ("cityscapes", "gta5", "synthia"):
        realdata.write(name, root / name)
    return root


def test_config_keys_are_validated_by_name(tiny):
    with pytest.raises(ConfigError, match="data.dataset: 'kitti' is not one of scenes, real"):
        tiny(data__dataset="kitti")
    with pytest.raises(ConfigError, match="data.source: 'game' is not a real dataset"):
        tiny(**{**{k.replace(".", "__"): v for k, v in REAL.items()}, "data__source": "game"})
    with pytest.raises(ConfigError, match="data.random_scale: must be"):
        tiny(data__random_scale=[1.5, 1.0])
    with pytest.raises(ConfigError, match="data.source_crop: height and width must be multiples"):
        tiny(data__source_crop=[20, 64])
    with pytest.raises(ConfigError, match="data.val_resize: must be"):
        tiny(data__val_resize=[8])
    with pytest.raises(ConfigError, match="data.check_sample"):
        tiny(data__check_sample=-1)


def _real(tiny, stage="source_only", **changes):
    return tiny(stage, **{k.replace(".", "__"): v for k, v in REAL.items()}, **changes)


def test_roots_from_the_config_or_dakd_data(tiny, trees, monkeypatch):
    monkeypatch.delenv("DAKD_DATA", raising=False)
    cfg = _real(tiny)
    assert cfg.domains == ("gta5", "cityscapes")
    with pytest.raises(ConfigError, match=r"data.source_root: .*gta5.*DAKD_DATA"):
        cfg.data.root("source")
    monkeypatch.setenv("DAKD_DATA", str(trees))
    assert cfg.data.root("source") == trees / "gta5"
    by_env = cfg.fingerprint()
    explicit = _real(tiny, data__source_root=str(trees / "gta5"))
    assert explicit.fingerprint() == by_env  # the same folder: the same stage
    other = _real(tiny, data__source_root=str(trees / "synthia"), data__source="synthia")
    assert other.fingerprint() != by_env
    with pytest.raises(ConfigError, match=r"data.target_root: .*nowhere.*not a folder"):
        _real(tiny, data__target_root=str(trees / "nowhere")).data.root("target")


def test_splits_and_protocols_come_from_the_data_section(tiny, trees, monkeypatch):
    """The readers take the data section and import nothing of the config (the config imports
    the readers' names)."""
    import subprocess
    import sys

    code = "import sys, dakd.data.datasets; print('dakd.config' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    monkeypatch.setenv("DAKD_DATA", str(trees))
    cfg = _real(tiny, data__source="synthia")
    val = datasets.split_of(cfg.data, "target", "val")
    assert (val.name, val.split, val.full_label) == ("cityscapes", "val", True)
    train = datasets.split_of(cfg.data, "source", "train")
    assert (train.name, train.crop, train.random_scale) == ("synthia", (32, 64), (0.75, 1.25))
    assert set(datasets.protocols(cfg.data)) == {"miou16", "miou13"}
    assert datasets.protocols(tiny().data) == {}


def test_training_on_real_trees_and_the_synthia_protocols(tiny, trees, monkeypatch):
    from dakd.engine.trainer import train

    monkeypatch.setenv("DAKD_DATA", str(trees))
    cfg = _real(tiny, "student_da", train__steps=2)
    result = train(cfg)
    assert 0 <= result.metrics["miou"] <= 100 and "miou16" not in result.metrics
    from dakd.evaluation.panels import SEPARATOR
    from dakd.sweep.remote.hooks import panel_of_checkpoints

    # a sweep's prediction panel shows full-resolution labels at the images' size (16x32)
    panel = panel_of_checkpoints(cfg, {"student": str(cfg.run_dir / "model.pt")})
    assert panel.shape[1] == 3 * 32 + 2 * SEPARATOR
    synthia = train(_real(tiny, data__source="synthia", train__steps=2, name="syn"))
    # the protocols by hand from the confusion matrix: IoU per class (rows: ground truth), the
    # mean over the listed train ids that occur (SYNTHIA has no terrain, truck or train; the
    # 13-class protocol also drops wall, fence and pole)
    matrix = synthia.evaluation.matrix.astype(float)
    hits = np.diag(matrix)
    union = matrix.sum(0) + matrix.sum(1) - hits
    classes16 = [0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18]
    classes13 = [0, 1, 2, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18]
    for key, classes in (("miou16", classes16), ("miou13", classes13)):
        present = [c for c in classes if union[c] > 0]
        by_hand = 100 * sum(hits[c] / union[c] for c in present) / len(present)
        assert synthia.metrics[key] == pytest.approx(by_hand), key
    assert "miou16" not in result.metrics  # Cityscapes-trained runs report no protocols


def test_prefetching_real_batches_changes_no_result(tiny, trees, monkeypatch):
    """Real datasets build their batches ahead in threads by default (data.prefetch -1 = auto:
    4); the run is the same, weights included, as one that builds them in the loop."""
    from dakd.data.loader import Prefetcher
    from dakd.engine.state import TrainState
    from dakd.engine.trainer import train

    monkeypatch.setenv("DAKD_DATA", str(trees))
    auto = _real(tiny, "student_da", train__steps=3, name="auto")
    off = _real(tiny, "student_da", train__steps=3, name="off", data__prefetch=0)
    assert auto.fingerprint() == off.fingerprint()  # the same stage
    trainer = TrainState(auto)
    assert isinstance(trainer.source, Prefetcher) and trainer.source.depth == 4
    trainer.close()
    assert not isinstance(TrainState(off).source, Prefetcher)
    a, b = train(auto), train(off)
    assert a.metrics["miou"] == b.metrics["miou"]
    wa = torch.load(auto.run_dir / "model.pt", weights_only=True)["model"]
    wb = torch.load(off.run_dir / "model.pt", weights_only=True)["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_training_refuses_a_tree_that_fails_its_check(tiny, trees, monkeypatch, capsys):
    from dakd.engine.trainer import train

    monkeypatch.setenv("DAKD_DATA", str(trees))
    val_label = sorted((trees / "cityscapes" / "gtFine" / "val").glob("*/*.png"))[0]
    val_label.unlink()
    with pytest.raises(DataError, match="cityscapes val split fails its check") as err:
        train(_real(tiny))
    assert f"missing_label: {trees / 'cityscapes' / 'leftImg8bit' / 'val'}" in str(err.value)
    assert str(val_label) in str(err.value)
    gta = sorted((trees / "gta5" / "labels").glob("*.png"))[-1]
    realdata.corrupt(gta)  # only decoding finds this one: check_sample pairs are decoded
    with pytest.raises(DataError, match=f"unreadable: {gta}"):
        train(_real(tiny, data__check_sample=10))


def test_synthia_16_and_13_class_protocols_by_hand():
    from dakd.evaluation.segmentation import SegMetrics

    matrix = np.diag(np.full(19, 2))
    matrix[3, 0] = 2  # 2 wall pixels predicted road: IoU wall 2/4, road 2/4
    matrix[9, 9], matrix[9, 8] = 0, 4  # terrain all predicted vegetation: 0 and 2/6
    m = SegMetrics.from_matrix(matrix)
    assert m.miou == pytest.approx((0.5 + 0.5 + 0 + 1 / 3 + 15) / 19)
    assert m.miou_over(SYNTHIA_16) == pytest.approx((0.5 + 0.5 + 1 / 3 + 13) / 16)
    assert m.miou_over(SYNTHIA_13) == pytest.approx((0.5 + 1 / 3 + 11) / 13)
