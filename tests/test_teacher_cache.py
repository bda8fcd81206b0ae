"""The teacher-output cache: exact against the live teacher, keyed, checked, shared, bounded."""

import json
import math
import multiprocessing
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from dakd.data.loader import StepSampler
from dakd.engine.state import TrainState
from dakd.engine.trainer import train
from dakd.models import checkpoint as ckpt
from dakd.teacher import cache as tcache
from dakd.teacher.outputs import cache_decision, distill_reads
from tests import realdata


def same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def stages(tiny):
    """A trained teacher-DA and student-DA of the tiny benchmark on 16 training images a domain
    (a cache of 32 entries: each image and its mirror)."""
    teacher = train(tiny("teacher_da", data__train_size=16))
    student = train(tiny("student_da", data__train_size=16))
    paths = {"teacher": str(teacher.checkpoint.parent / "model.pt")}
    paths["init"] = str(student.checkpoint.parent / "model.pt")

    def dakd(name, **changes):
        return tiny("dakd", name=name, data__train_size=16, **paths, **changes)

    return dakd


def caches(cfg) -> list[Path]:
    root = Path(cfg.teacher_cache.dir)
    return sorted(p for p in root.iterdir() if p.is_dir()) if root.exists() else []


@pytest.mark.parametrize("paradigm", ["a", "c", "d"])
def test_cached_run_ends_with_the_weights_of_the_live_teacher_run(stages, paradigm):
    live = train(stages("live", paradigm=paradigm, teacher_cache__mode="off"))
    cfg = stages("cached", paradigm=paradigm, teacher_cache__mode="on")
    cached = train(cfg)
    assert len(caches(cfg)) == (1 if paradigm == "a" else 2)
    assert same_weights(ckpt.load(live.checkpoint)["model"], ckpt.load(cached.checkpoint)["model"])
    assert cached.metrics["miou"] == live.metrics["miou"]
    terms = [k for k in live.metrics if k.startswith("loss/")]
    assert any(k.startswith("loss/kl_") for k in terms)
    assert all(cached.metrics[k] == live.metrics[k] for k in terms)
    # a second run reads the caches (no teacher is loaded) and ends the same
    trainer = TrainState(stages("again", paradigm=paradigm, teacher_cache__mode="on"))
    assert trainer.teacher is None and set(trainer.teacher_caches) == (
        {"source"} if paradigm == "a" else {"source", "target"}
    )
    trainer.close()


def test_entries_hold_the_teacher_on_each_image_and_its_mirror(stages):
    cfg = stages("cached", teacher_cache__mode="on")
    trainer = TrainState(cfg)
    cache = trainer.teacher_caches["target"]
    live = TrainState(stages("live", teacher_cache__mode="off"))
    dataset = trainer.dataset_of("target")
    images = torch.stack([dataset[i]["image"] for i in (3, 3, 7, 7)])
    images[1::2] = images[1::2].flip(-1)
    with torch.no_grad():
        expected = live.teacher(images)
    got = cache.lookup(torch.tensor([3, 3, 7, 7]), torch.tensor([False, True, False, True]))
    for level in ("output", "feature"):
        assert torch.equal(got[level], expected[level])
    assert cache.shapes["output"] == tuple(expected["output"].shape[1:])
    trainer.close()
    live.close()


def test_another_teacher_never_reads_the_cache(stages, tiny):
    cfg = stages("cached", paradigm="b", teacher_cache__mode="on")
    train(cfg)
    (first,) = caches(cfg)
    # the teacher checkpoint changes (another teacher trained in its place): a new key
    state = ckpt.load(cfg.teacher)
    state["model"] = {
        k: v + 0.01 if v.is_floating_point() else v for k, v in state["model"].items()
    }
    ckpt.save(state, cfg.teacher)
    trainer = TrainState(stages("other", paradigm="b", teacher_cache__mode="on"))
    assert trainer.teacher_caches["target"].folder != first
    assert len(caches(cfg)) == 2
    trainer.close()
    # so do another dataset version, transform and storage format
    spec = trainer.teacher_caches["target"].spec
    base = tcache.CacheSpec(**{**spec, "storage": tcache.Storage(**spec["storage"])})
    changed = [
        {"dataset": {**base.dataset, "renderer": "other"}},
        {"dataset": {**base.dataset, "seed": 1}},
        {"variants": 1},
        {"bn": "source"},
        {"compute": {**base.compute, "threads": 2}},
        {"storage": tcache.Storage("float16")},
    ]
    keys = {tcache.CacheSpec(**{**base.__dict__, **c}).key for c in changed}
    assert len(keys) == len(changed) and base.key not in keys


def test_a_corrupt_or_truncated_shard_is_reported_rebuilt_and_never_served(stages, capsys):
    cfg = stages("cached", paradigm="b", teacher_cache__mode="on")
    trainer = TrainState(cfg)
    cache = trainer.teacher_caches["target"]
    everything = cache.read(np.arange(cache.entries))
    trainer.close()
    shard = sorted(cache.folder.glob("output-*.npy"))[0]
    data = bytearray(shard.read_bytes())
    data[-5] ^= 0xFF  # one flipped byte, same size
    shard.write_bytes(bytes(data))
    capsys.readouterr()
    again = TrainState(stages("again", paradigm="b", teacher_cache__mode="on"))
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "checksum" in line]
    assert len(lines) == 1 and str(cache.folder) in lines[0] and "rebuilding" in lines[0]
    rebuilt = again.teacher_caches["target"].read(np.arange(cache.entries))
    assert all(torch.equal(rebuilt[k], everything[k]) for k in everything)
    again.close()
    shard.write_bytes(shard.read_bytes()[:100])  # truncated
    assert (
        tcache.open_cache(
            cfg.teacher_cache.dir,
            tcache.CacheSpec(**{**cache.spec, "storage": tcache.Storage(**cache.spec["storage"])}),
        )
        is None
    )
    third = TrainState(stages("third", paradigm="b", teacher_cache__mode="on"))
    assert "checksum" in capsys.readouterr().err
    assert torch.equal(third.teacher_caches["target"].read([0])["output"], everything["output"][:1])
    third.close()


def _build_in_process(args):
    root, spec_dict, seed = args
    from dakd.data.scenes import SceneDataset

    spec = tcache.CacheSpec(**{**spec_dict, "storage": tcache.Storage(**spec_dict["storage"])})
    dataset = SceneDataset("city", "train", size=(32, 64), length=16)
    torch.manual_seed(0)
    net = torch.nn.Conv2d(3, 19, 3, stride=2, padding=1).eval()
    lines = []
    cache = tcache.ensure(
        root,
        spec,
        dataset,
        lambda x: {"output": net(x), "feature": net(x)[..., ::4, ::4]},
        batch=4,
        progress=False,
        log=lines.append,
    )
    return cache.read(np.arange(cache.entries))["output"].numpy(), lines


def _spec(**changes):
    dataset = {"kind": "scenes", "domain": "city", "split": "train", "seed": 0}
    base = {
        "teacher_sha256": "0" * 64,
        "teacher_network": {"name": "conv"},
        "dataset": {**dataset, "size": [32, 64], "length": 16, "renderer": "x"},
        "variants": 2,
        "bn": "own",
        "compute": {"device": "cpu"},
        "storage": tcache.Storage(),
    }
    return tcache.CacheSpec(**{**base, **changes})


def test_two_builders_of_one_cache_build_it_once_and_agree(tmp_path):
    spec = _spec()
    args = (str(tmp_path), spec.to_dict(), 0)
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        (a, lines_a), (b, lines_b) = pool.map(_build_in_process, [args, args])
    assert np.array_equal(a, b) and a.shape == (32, 19, 16, 32)
    built = [line for line in lines_a + lines_b if "entries" in line]
    assert len(built) == 1  # the other waited on the lock and read the finished cache
    manifest = json.loads((tmp_path / spec.key / "manifest.json").read_text())
    assert manifest["complete"] and manifest["entries"] == 32


def test_an_interrupted_build_continues_from_its_last_shard(tmp_path, monkeypatch):
    monkeypatch.setattr(tcache, "SHARD_ENTRIES", 8)
    spec = _spec()
    calls = []
    net = torch.nn.Conv2d(3, 19, 3, stride=2, padding=1).eval()
    kill_at = [5]

    def forward(x):
        calls.append(len(x))
        if len(calls) == kill_at[0]:
            raise KeyboardInterrupt  # killed in shard 1: after the probe batch and shard 0
        return {"output": net(x), "feature": net(x)}

    from dakd.data.scenes import SceneDataset

    dataset = SceneDataset("city", "train", size=(32, 64), length=16)
    with torch.no_grad(), pytest.raises(KeyboardInterrupt):
        tcache.ensure(tmp_path, spec, dataset, forward, batch=4, progress=False)
    manifest = json.loads((tmp_path / spec.key / "manifest.json").read_text())
    assert not manifest["complete"] and sum(s is not None for s in manifest["shards"]) == 1
    assert tcache.open_cache(tmp_path, spec) is None  # incomplete: never read
    calls.clear()
    kill_at[0] = 0  # no more interruption
    with torch.no_grad():
        cache = tcache.ensure(tmp_path, spec, dataset, forward, batch=4, progress=False)
    assert len(calls) == 6  # the 3 missing shards of 8 entries, 2 batches each
    with torch.no_grad():
        whole = net(torch.stack([dataset[i]["image"] for i in range(16)]))
    assert torch.equal(cache.lookup(torch.arange(16), torch.zeros(16, dtype=bool))["output"], whole)


def test_a_full_disk_stops_naming_the_folder_and_size_or_runs_live(stages, monkeypatch):
    real = shutil.disk_usage
    monkeypatch.setattr(tcache.shutil, "disk_usage", lambda p: real(p)._replace(free=1000))
    cfg = stages("cached", paradigm="b", teacher_cache__mode="on")
    # 32 entries of 19 classes at 4x8 (output and feature level, float32): 155,648 bytes
    with pytest.raises(
        tcache.CacheFullError, match=r"needs 155\.6 KB but the disk has 1\.0 KB free"
    ):
        TrainState(cfg)
    try:
        TrainState(cfg)
    except tcache.CacheFullError as err:
        assert cfg.teacher_cache.dir in str(err)
    live = train(stages("live", paradigm="b", teacher_cache__mode="off"))
    fallback = train(
        stages("fallback", paradigm="b", teacher_cache__mode="on", teacher_cache__if_full="live")
    )
    assert same_weights(
        ckpt.load(live.checkpoint)["model"], ckpt.load(fallback.checkpoint)["model"]
    )


def test_photometric_augmentation_turns_auto_off_with_one_notice(stages, capsys):
    cfg = stages("jitter", data__color_jitter=0.2, teacher_cache__mode="auto", train__steps=400)
    trainer = TrainState(cfg)
    notes = [line for line in capsys.readouterr().err.splitlines() if "teacher_cache" in line]
    assert trainer.teacher_caches == {} and trainer.teacher is not None
    assert len(notes) == 2 and all("data.color_jitter" in n and "mode: on" in n for n in notes)
    trainer.close()
    forced = TrainState(stages("forced", data__color_jitter=0.2, teacher_cache__mode="on"))
    assert set(forced.teacher_caches) == {"source", "target"}
    assert "approximate" in capsys.readouterr().err
    forced.close()


def test_auto_builds_where_it_saves_teacher_passes_and_reads_what_exists(stages):
    short = stages("short", train__steps=4)  # 8 samples a domain; the cache holds 32
    assert distill_reads(short) == {"source": 8, "target": 8}
    trainer = TrainState(short)
    assert trainer.teacher_caches == {} and caches(short) == []
    trainer.close()
    long = stages("long", train__steps=16, paradigm="b")  # 32 target samples: worth it
    trainer = TrainState(long)
    assert set(trainer.teacher_caches) == {"target"} and trainer.teacher is None
    trainer.close()
    trainer = TrainState(stages("short2", train__steps=4))  # reads the target cache that exists
    assert set(trainer.teacher_caches) == {"target"} and trainer.teacher is not None
    trainer.close()
    d = stages("d", paradigm="d", train__steps=10, distill__sequential_split=0.3)
    assert distill_reads(d) == {"source": 6, "target": 20}
    off = stages("off", teacher_cache__mode="off", train__steps=1000)
    assert not cache_decision(off, None, "source", 10**6).use


def test_storage_formats_by_hand():
    maps = torch.tensor([[[[1.0]], [[5.0]], [[2.0]], [[-4.0]]]])  # 1 entry, 4 classes, 1x1
    dense = tcache.encode(maps, tcache.Storage())
    assert dense[""].dtype == np.float32 and torch.equal(tcache.decode(dense, 4), maps)
    half = tcache.encode(maps + 1e-4, tcache.Storage("float16"))
    assert half[""].dtype == np.float16
    assert torch.allclose(tcache.decode(half, 4), maps, atol=1e-3)
    top2 = tcache.encode(maps, tcache.Storage("float32", 2))
    assert top2["indices"].ravel().tolist() == [1, 2] and top2["values"].ravel().tolist() == [5, 2]
    assert top2["rest"].ravel().tolist() == [-1.5]  # (1 + -4) / 2
    decoded = tcache.decode(top2, 4)
    assert decoded.ravel().tolist() == [-1.5, 5.0, 2.0, -1.5]
    assert tcache.Storage("float32", 2).entry_bytes((4, 1, 1)) == 2 * 5 + 4
    assert tcache.Storage("float16").entry_bytes((19, 32, 64)) == 19 * 32 * 64 * 2


def test_real_data_crops_cut_the_stored_map_where_the_sample_was_cut(tmp_path):
    """crop_box says where augmented() cut its sample; with no rescaling, RoIAlign of a map
    that is the image itself at stride 1 gives back the sample's pixels exactly."""
    from dakd.data.datasets import DATASETS

    realdata.cityscapes(tmp_path, {"train": 2}, size=(32, 64))
    data = DATASETS["cityscapes"](tmp_path, "train", resize=(32, 64), crop=(16, 32))
    assert tcache.geometry_of(data) == ("crop", False)
    whole = DATASETS["cityscapes"](tmp_path, "train", resize=(32, 64), crop=(32, 64))
    assert tcache.geometry_of(whole) == ("identity", True)
    sampler = StepSampler(data, 2, seed=0, stream="source", hflip=True)
    for step in range(6):
        batch = sampler.batch(step)
        for i in range(2):
            index, flip = int(batch["index"][i]), bool(batch["flip"][i])
            (x0, y0, x1, y1), size = data.crop_box(index, batch["geometry"][i].tolist())
            assert size == (32, 64) and (x1 - x0, y1 - y0) == (32, 16)
            image = data._resized(index, (32, 64), False)[0]
            if flip:
                image, (x0, x1) = image.flip(-1), (64 - x1, 64 - x0)
            cut = image[:, int(y0) : int(y1), int(x0) : int(x1)]
            assert torch.equal(cut, batch["image"][i])
    scaled = DATASETS["cityscapes"](
        tmp_path, "train", resize=(32, 64), crop=(16, 32), random_scale=(2.0, 2.0)
    )
    box, _ = scaled.crop_box(0, (0.0, 0.999, 0.999))  # 64x128 scaled, bottom-right crop
    assert box == (48.0, 24.0, 64.0, 32.0)


def test_the_sweep_plans_caches_by_the_config_keys_the_cache_key_reads(stages):
    """``cache_setting`` (what the sweep groups trials by) decides the cache key: configs that
    agree on it share a key whatever else differs; each compute key it lists changes the key."""
    from dakd.config import from_dict
    from dakd.runtime.builders import training_dataset
    from dakd.runtime.device import speed_settings, training_device
    from dakd.runtime.distributed import current_world
    from dakd.teacher.outputs import cache_setting, cache_spec

    base = stages("keyed", teacher_cache__mode="on")

    def key(cfg, role="source"):
        device = training_device(cfg.train.device)
        speed, _ = speed_settings(cfg.train, device, current_world())
        return cache_spec(cfg, training_dataset(cfg, role), role, device, speed).key

    same = {"loss.kl": 3.0, "paradigm": "b", "seed": 7, "train.steps": 9, "name": "other"}
    other = from_dict(base.to_dict(), same)
    assert cache_setting(other) == cache_setting(base)
    assert key(other) == key(base) and key(other, "target") == key(base, "target")
    for dotted, value in {
        "train.threads": 2,
        "train.amp": "bf16",
        "train.channels_last": True,
        "train.bn_stats": "target",
        "teacher_cache.dtype": "float16",
        "data.hflip": not base.data.hflip,
    }.items():
        changed = from_dict(base.to_dict(), {dotted: value})
        assert cache_setting(changed) != cache_setting(base), dotted
        assert key(changed) != key(base), dotted


def test_a_dakd_step_on_random_crops_reads_the_stored_map_cut_and_mirrored_as_its_sample(
    tiny, tmp_path, monkeypatch
):
    """Real data with random scale, crop and flip, the cache forced on: the teacher outputs a
    step distils from are the stored maps of the samples' images (their mirror's for a flipped
    sample), brought into the image's orientation, cut where the sample was cut (bilinear
    RoIAlign), mirrored back where the sample is mirrored, and upsampled to the crop."""
    from torchvision.ops import roi_align

    from dakd.runtime.builders import build_network, spec_of

    realdata.write("gta5", tmp_path / "gta5")
    realdata.write("cityscapes", tmp_path / "cityscapes")
    teacher = tmp_path / "teacher.pt"
    spec = spec_of(tiny().models.teacher)
    torch.manual_seed(7)
    ckpt.save({"network": spec, "model": build_network(spec).state_dict()}, teacher)
    real = {
        "data.dataset": "real",
        "data.source_root": str(tmp_path / "gta5"),
        "data.target_root": str(tmp_path / "cityscapes"),
        "data.source_resize": [64, 128],
        "data.target_resize": [64, 128],
        "data.source_crop": [32, 64],
        "data.target_crop": [32, 64],
        "data.val_resize": [32, 64],
        "data.random_scale": [0.75, 1.5],
        "data.hflip": True,
        "data.batch_size": 4,
        "data.prefetch": 0,
    }
    cfg = tiny(
        "dakd",
        teacher=str(teacher),
        paradigm="c",
        teacher_cache__mode="on",
        **{k.replace(".", "__"): v for k, v in real.items()},
    )
    trainer = TrainState(cfg)
    assert trainer.teacher is None and set(trainer.teacher_caches) == {"source", "target"}
    used = []
    predict = trainer.teacher_outputs.predict

    def spy(role, batch, *levels):
        pred = predict(role, batch, *levels)
        used.append((role, batch, pred))
        return pred

    monkeypatch.setattr(trainer.teacher_outputs, "predict", spy)
    for _ in range(2):
        trainer.train_step()
    assert sorted(role for role, *_ in used) == ["source", "source", "target", "target"]

    mirrored_off_centre = 0
    for role, batch, pred in used:
        cache, dataset = trainer.teacher_caches[role], trainer.dataset_of(role)
        crop_h, crop_w = batch["image"].shape[-2:]
        for i in range(len(batch["index"])):
            index, flip = int(batch["index"][i]), bool(batch["flip"][i])
            (x0, y0, x1, y1), (height, width) = dataset.crop_box(
                index, batch["geometry"][i].tolist()
            )
            mirrored_off_centre += flip and x0 != width - x1
            stored = cache.read(np.array([2 * index + flip]))  # image i: entries 2i, 2i + 1
            for level in ("output", "feature"):
                full = stored[level][0]
                if flip:
                    full = full.flip(-1)  # the mirror's map, in the image's orientation
                box = torch.tensor([[0.0, x0, y0, x1, y1]])
                cut = roi_align(
                    full[None],
                    box,
                    (math.ceil(crop_h / 8), math.ceil(crop_w / 8)),
                    spatial_scale=full.shape[-1] / width,
                    sampling_ratio=2,
                    aligned=True,
                )
                if flip:
                    cut = cut.flip(-1)
                expected = torch.nn.functional.interpolate(
                    cut, size=(crop_h, crop_w), mode="bilinear", align_corners=False
                )[0]
                torch.testing.assert_close(
                    pred[level][i],
                    expected,
                    rtol=1e-5,
                    atol=1e-5,
                    msg=lambda text, where=(role, i, level): f"{where}: {text}",
                )
    assert mirrored_off_centre >= 2  # flipped samples whose box is not its own mirror image
    trainer.close()
