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


def test_a_prefetcher_says_which_batches_are_built_and_pins_them_when_asked(dataset, monkeypatch):
    from dakd.data.loader import Prefetcher

    pinned = []

    def pin(tensor):  # page-locking needs CUDA; what matters here is what gets pinned
        pinned.append(tuple(tensor.shape))
        return tensor.clone()

    monkeypatch.setattr(torch.Tensor, "pin_memory", pin)
    plain = StepSampler(dataset, 4, 3, "source")
    ahead = Prefetcher(StepSampler(dataset, 4, 3, "source"), depth=2, last_step=9, pin=True)
    assert not ahead.ready(0) and not ahead.ready(1)
    first = ahead.batch(0)  # built here, and steps 1 and 2 queued
    ahead._ahead[1].result()
    assert ahead.ready(1) and not ahead.ready(5)
    assert torch.equal(first["image"], plain.batch(0)["image"])
    assert sorted(set(pinned)) == [(4, 3, 32, 64), (4, 32, 64)]  # images and labels only
    ahead.close()


class _FakeCuda:
    """What DeviceFeed asks of torch.cuda, recorded: copies, the events they record and the
    waits of the compute stream."""

    def __init__(self, monkeypatch):
        self.log = []
        fake = self

        class Event:
            def record(self, stream):
                fake.log.append(("record", self))

        class Stream:
            def __init__(self, device=None):
                self.name = "copies"

            def wait_event(self, event):
                fake.log.append(("wait", event))

        self.compute = Stream()
        self.compute.name = "compute"
        self.copies_made = []
        monkeypatch.setattr(torch.cuda, "Stream", Stream)
        monkeypatch.setattr(torch.cuda, "Event", Event)
        monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: self.compute)
        monkeypatch.setattr(torch.cuda, "stream", lambda s: _Within(fake, s))
        monkeypatch.setattr(torch.Tensor, "record_stream", lambda t, s: None)
        original_to = torch.Tensor.to

        def to(tensor, *args, **kwargs):
            if args and isinstance(args[0], torch.device) and args[0].type == "cuda":
                assert kwargs.get("non_blocking") is True
                fake.copies_made.append(tuple(tensor.shape))
                return tensor.clone()
            return original_to(tensor, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, "to", to)


class _Within:
    def __init__(self, fake, stream):
        self.fake, self.stream = fake, stream

    def __enter__(self):
        self.fake.log.append(("on", self.stream.name))

    def __exit__(self, *exc):
        self.fake.log.append(("off", self.stream.name))


def test_the_device_feed_copies_the_next_batch_ahead_on_a_side_stream(dataset, monkeypatch):
    from dakd.data.loader import DeviceFeed

    cuda = _FakeCuda(monkeypatch)
    plain = StepSampler(dataset, 2, 5, "target")

    class Stream:  # a prefetcher whose built batches the test decides
        built: set[int] = set()
        asked: list[int] = []

        def ready(self, step):
            return step in self.built

        def batch(self, step):
            self.asked.append(step)
            return plain.batch(step)

    stream = Stream()
    feed = DeviceFeed(stream, torch.device("cuda"), torch.channels_last, last_step=2)
    got = feed.batch(0)  # step 1 not built yet: nothing is copied ahead
    assert [entry[0] for entry in cuda.log] == ["on", "record", "off", "wait"]
    assert cuda.log[1][1] is cuda.log[3][1]  # the step waits for its own copy, on the GPU
    assert got["image"].is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(got["image"], plain.batch(0)["image"])
    assert torch.equal(got["index"], plain.batch(0)["index"])  # host keys as they were
    assert stream.asked == [0] and feed._ahead is None
    stream.built = {1, 2}
    cuda.log.clear()
    feed.batch(1)  # copied on demand, then step 2's copy queued behind it
    assert stream.asked == [0, 1, 2] and feed._ahead[0] == 2
    events = [entry[1] for entry in cuda.log if entry[0] == "record"]
    cuda.log.clear()
    second = feed.batch(2)  # served from the copy made ahead: nothing asked of the stream
    assert stream.asked == [0, 1, 2]
    assert cuda.log == [("wait", events[1])]  # waits for the copy queued a step before
    assert torch.equal(second["image"], plain.batch(2)["image"])
    assert feed._ahead is None  # nothing past the last step
    assert cuda.copies_made == [(2, 3, 32, 64), (2, 32, 64)] * 3  # images and labels


def test_the_device_feed_passes_cpu_batches_through_and_never_reads_ahead_of_a_sampler(
    dataset, monkeypatch
):
    from dakd.data.loader import DeviceFeed

    sampler = StepSampler(dataset, 2, 5, "target")
    feed = DeviceFeed(sampler, torch.device("cpu"))
    calls = []
    monkeypatch.setattr(sampler, "batch", lambda step: calls.append(step) or {"step": step})
    assert feed.batch(4) == {"step": 4} and calls == [4]
    _FakeCuda(monkeypatch)
    on_gpu = DeviceFeed(sampler, torch.device("cuda"))
    monkeypatch.setattr(
        sampler, "batch", lambda step: calls.append(step) or StepSampler.batch(sampler, step)
    )
    on_gpu.batch(1)
    on_gpu.batch(2)
    assert calls == [4, 1, 2] and on_gpu._ahead is None  # built when asked, never ahead
