"""Training batches: a pure function of (seed, step), sharded by rank, augmented reproducibly."""

import pytest
import torch

from dakd.data.loader import StepSampler, eval_batches
from dakd.data.scenes import MEAN, STD, SceneDataset


@pytest.fixture(scope="module")
def dataset():
    return SceneDataset("game", "train", size=(32, 64), length=40)


def test_batches_depend_only_on_seed_and_step(dataset):
    a = StepSampler(dataset, 4, seed=0, stream="source")
    b = StepSampler(dataset, 4, seed=0, stream="source")
    assert torch.equal(a.batch(5)["image"], b.batch(5)["image"])
    assert not torch.equal(a.batch(5)["image"], a.batch(6)["image"])
    other_stream = StepSampler(dataset, 4, seed=0, stream="target")
    assert not torch.equal(a.batch(5)["image"], other_stream.batch(5)["image"])


def test_ranks_split_the_global_batch(dataset):
    whole = StepSampler(dataset, 4, seed=1, stream="source").batch(3)
    parts = [StepSampler(dataset, 4, 1, "source", rank=r, world_size=2).batch(3) for r in (0, 1)]
    assert torch.equal(torch.cat([p["label"] for p in parts]), whole["label"])
    with pytest.raises(ValueError, match="not divisible"):
        StepSampler(dataset, 3, 0, "source", world_size=2)


def test_photometric_augmentation(dataset):
    plain = StepSampler(dataset, 4, 0, "source").batch(2)
    jitter = StepSampler(dataset, 4, 0, "source", color_jitter=0.5).batch(2)
    assert torch.equal(plain["label"], jitter["label"])
    assert not torch.allclose(plain["image"], jitter["image"])
    assert torch.equal(
        jitter["image"], StepSampler(dataset, 4, 0, "source", color_jitter=0.5).batch(2)["image"]
    )
    grey = StepSampler(dataset, 4, 0, "source", grayscale=1.0).batch(2)["image"]
    rgb = grey * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)
    assert torch.allclose(rgb[:, 0], rgb[:, 1], atol=1e-5) and torch.allclose(
        rgb[:, 1], rgb[:, 2], atol=1e-5
    )


def test_labels_outside_the_label_space_are_named(dataset):
    class Broken:
        def __len__(self):
            return 2

        def __getitem__(self, i):
            item = dataset[i]
            item["label"][0, 0] = 40
            return item

        def __repr__(self):
            return "Broken()"

    with pytest.raises(ValueError, match=r"Broken\(\) samples .* label value\(s\) \[40\]"):
        StepSampler(Broken(), 2, 0, "source").batch(0)


def test_eval_batches_cover_the_split_in_order(dataset):
    batches = list(eval_batches(dataset, 16, limit=20))
    assert [len(b["label"]) for b in batches] == [16, 4]
    assert torch.equal(batches[1]["label"][0], dataset[16]["label"])
    shards = [list(eval_batches(dataset, 16, limit=20, rank=r, world_size=2)) for r in (0, 1)]
    assert sum(len(b["label"]) for s in shards for b in s) == 20


def test_prefetched_batches_are_the_sampler_batches(dataset):
    """Built ahead in threads, a batch is exactly the batch of that step, whatever step the
    run starts at (a resumed run starts in the middle) and however many are built ahead."""
    from dakd.data.loader import Prefetcher

    sampler = StepSampler(dataset, 4, seed=3, stream="source", color_jitter=0.3)
    for start, depth in ((0, 1), (5, 3)):
        ahead = Prefetcher(StepSampler(dataset, 4, 3, "source", color_jitter=0.3), depth, 9)
        try:
            for step in range(start, 10):
                got, want = ahead.batch(step), sampler.batch(step)
                assert torch.equal(got["image"], want["image"])
                assert torch.equal(got["label"], want["label"])
                assert all(s <= 9 for s in ahead._ahead)  # nothing past the last step
        finally:
            ahead.close()
    assert ahead.dataset is dataset and ahead.batch_size == 4  # the rest is the sampler's


def test_prefetch_builds_in_background_and_fails_at_the_step_that_fails():
    import threading

    from dakd.data.loader import Prefetcher

    class Recorder:
        def __init__(self):
            self.threads = {}

        def batch(self, step):
            self.threads[step] = threading.current_thread().name
            if step == 3:
                raise ValueError("label 40 outside the label space in sample 7")
            return {"step": step}

    recorder = Recorder()
    ahead = Prefetcher(recorder, depth=2)
    try:
        assert ahead.batch(0) == {"step": 0}  # nothing built yet: built here, on the caller
        assert recorder.threads[0] == threading.current_thread().name
        assert ahead.batch(1) == {"step": 1} and ahead.batch(2) == {"step": 2}
        assert recorder.threads[1].startswith("dakd-prefetch")
        assert recorder.threads[2].startswith("dakd-prefetch")
        with pytest.raises(ValueError, match="sample 7"):  # raised where step 3 is asked for
            ahead.batch(3)
    finally:
        ahead.close()
    with pytest.raises(ValueError, match="depth must be >= 1"):
        Prefetcher(recorder, depth=0)
