"""Batches for the trainer, as a pure function of (seed, step).

Which images form the batch at step ``t`` depends only on the experiment seed, the stream
(source or target) and ``t``, never on what ran before: a resumed run draws exactly the
batches an uninterrupted run would, and each data-parallel rank takes its slice of the same
global batch.

A dataset with an ``augmented(index, draws)`` method (the real datasets: random scale and crop)
gets three more numbers in [0, 1) per sample, drawn after all the others, so the batches of a
dataset without one are the same as before it existed.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch

from dakd.data.labels import IGNORE_INDEX, NUM_CLASSES
from dakd.data.scenes import MEAN, STD

_STREAMS = {"source": 1, "target": 2, "pretrain": 3}
_MEAN = torch.tensor(MEAN, dtype=torch.float32).view(3, 1, 1)
_STD = torch.tensor(STD, dtype=torch.float32).view(3, 1, 1)


class StepSampler:
    """Draws the batch for a step from a dataset of ``{"image", "label"}`` samples."""

    def __init__(
        self,
        dataset,
        batch_size: int,
        seed: int,
        stream: str,
        hflip: bool = True,
        rank: int = 0,
        world_size: int = 1,
        color_jitter: float = 0.0,
        grayscale: float = 0.0,
    ):
        if batch_size % world_size:
            raise ValueError(f"batch size {batch_size} is not divisible by {world_size} ranks")
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed = seed
        self.stream = _STREAMS[stream]
        self.hflip = hflip
        self.rank, self.world_size = rank, world_size
        self.color_jitter, self.grayscale = color_jitter, grayscale

    def indices(self, step: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """This rank's share of step ``step``: dataset indices, flip flags, photometric draws.

        The photometric draws are rows of (brightness, contrast, saturation, hue, grey) in [0, 1).
        """
        index, flip, photo, _ = self._draws(step)
        return index, flip, photo

    def _draws(self, step: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`indices` plus rows of (scale, crop top, crop left) in [0, 1) for datasets with
        ``augmented``; drawn last, so the other draws do not depend on them."""
        rng = np.random.default_rng([self.seed, self.stream, step])
        n = len(self.dataset)
        index = rng.choice(n, size=self.batch_size, replace=self.batch_size > n)
        flip = rng.random(self.batch_size) < 0.5 if self.hflip else np.zeros(self.batch_size, bool)
        photo = rng.random((self.batch_size, 5))
        geometry = rng.random((self.batch_size, 3))
        share = self.batch_size // self.world_size
        part = slice(self.rank * share, (self.rank + 1) * share)
        return index[part], flip[part], photo[part], geometry[part]

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        index, flip, photo, geometry = self._draws(step)
        augmented = getattr(self.dataset, "augmented", None)
        images, labels = [], []
        for i, f, draws, where in zip(index.tolist(), flip.tolist(), photo, geometry, strict=True):
            sample = self.dataset[i] if augmented is None else augmented(i, where)
            image, label = sample["image"], sample["label"]
            if f:
                image, label = image.flip(-1), label.flip(-1)
            if self.color_jitter > 0 or self.grayscale > 0:
                image = photometric(image, draws, self.color_jitter, self.grayscale)
            images.append(image)
            labels.append(label)
        batch = {
            "image": torch.stack(images),
            "label": torch.stack(labels),
            # which samples these are: what the teacher-output cache is read with
            "index": torch.from_numpy(index.astype(np.int64)),
            "flip": torch.from_numpy(flip.astype(np.bool_)),
        }
        if augmented is not None:
            batch["geometry"] = torch.from_numpy(np.asarray(geometry, dtype=np.float64))
        check_labels(batch["label"], f"{self.dataset!r} samples {index.tolist()}")
        return batch


class Prefetcher:
    """A :class:`StepSampler` whose next ``depth`` batches are built in background threads while
    the current step trains.

    Meant for datasets decoded from files (the real datasets: PNG decoding and resizing, which
    release the GIL), so that an accelerator step does not wait for them. ``batch(step)`` of a
    sampler is a pure function of ``step``, so a batch built ahead is exactly the batch the loop
    would have built: determinism and bit-identical resumption are unchanged. A build that
    fails raises at the step that asks for that batch, as it would without prefetching. A
    stream starts building ahead on its first request, so a stream a stage never reads costs
    nothing; nothing is built past ``last_step``. Everything else (``dataset``, ``indices``,
    ...) is the sampler's.
    """

    def __init__(
        self, sampler: StepSampler, depth: int, last_step: int | None = None, pin: bool = False
    ):
        if depth < 1:
            raise ValueError(f"prefetch depth must be >= 1, got {depth}")
        self.sampler = sampler
        self.depth = depth
        self.last_step = last_step
        self.pin = pin
        self._pool = ThreadPoolExecutor(depth, thread_name_prefix="dakd-prefetch")
        self._ahead: dict[int, Future] = {}

    def _build(self, step: int) -> dict[str, torch.Tensor]:
        batch = self.sampler.batch(step)
        if self.pin:  # page-locked, so that the copy to the GPU can run asynchronously
            batch = {k: v.pin_memory() if k in DEVICE_KEYS else v for k, v in batch.items()}
        return batch

    def ready(self, step: int) -> bool:
        """Whether the batch of ``step`` is built (asking for it will not wait)."""
        future = self._ahead.get(step)
        return future is not None and future.done()

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        for stale in [s for s in self._ahead if s < step]:  # steps that were skipped
            self._ahead.pop(stale).cancel()
        current = self._ahead.pop(step, None)
        end = step + self.depth
        if self.last_step is not None:
            end = min(end, self.last_step)
        for ahead in range(step + 1, end + 1):
            if ahead not in self._ahead:
                self._ahead[ahead] = self._pool.submit(self._build, ahead)
        return current.result() if current is not None else self._build(step)

    def close(self) -> None:
        """Drop the batches built ahead and stop the threads."""
        for future in self._ahead.values():
            future.cancel()
        self._ahead.clear()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __getattr__(self, name: str):
        if name == "sampler":  # not set yet (during unpickling or a failed __init__)
            raise AttributeError(name)
        return getattr(self.sampler, name)


#: What of a batch the step reads on its device; the rest (which samples, their flips and crop
#: draws) stays on the host, where the teacher-output cache reads it.
DEVICE_KEYS = ("image", "label")


class DeviceFeed:
    """A training stream's batches on the trainer's device.

    On CUDA, images and labels are copied with ``non_blocking`` on a side stream, in the
    trainer's memory format: a :class:`Prefetcher`'s batches come pinned (page-locked), so the
    copy of step ``t + 1``'s batch, queued when step ``t`` asks for its own and that batch is
    built, runs while step ``t`` computes. A step waits (on the GPU, not the host) for its
    batch's copy only. A batch that is not ready is copied when its step asks for it. On the
    CPU the stream's batches are returned as they are.

    ``stream`` is read at call time (``stream.batch(step)``), so what replaces its ``batch``
    (a benchmark's batches built ahead) is what the feed copies.
    """

    def __init__(
        self,
        stream,
        device: torch.device,
        memory_format: torch.memory_format = torch.contiguous_format,
        last_step: int | None = None,
    ):
        self.stream = stream
        self.device = device
        self.memory_format = memory_format
        self.last_step = last_step
        self.cuda = device.type == "cuda"
        self._copies = torch.cuda.Stream(device) if self.cuda else None
        self._ahead: tuple[int, dict, torch.cuda.Event] | None = None

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        if not self.cuda:
            return self.stream.batch(step)
        ahead, self._ahead = self._ahead, None
        if ahead is not None and ahead[0] == step:
            _, batch, copied = ahead
        else:
            batch, copied = self._copy(self.stream.batch(step))
        current = torch.cuda.current_stream(self.device)
        current.wait_event(copied)
        for key in DEVICE_KEYS:
            # made on the side stream, read on this one: its memory is not reused before
            batch[key].record_stream(current)
        following = step + 1
        ready = getattr(self.stream, "ready", None)  # only a prefetcher builds ahead
        if ready is not None and (self.last_step is None or following <= self.last_step):
            if ready(following):
                self._ahead = (following, *self._copy(self.stream.batch(following)))
        return batch

    def _copy(self, host: dict[str, torch.Tensor]) -> tuple[dict, torch.cuda.Event]:
        """``host``'s images and labels on the device, copied on the side stream."""
        batch = dict(host)
        with torch.cuda.stream(self._copies):
            image = host["image"].to(self.device, non_blocking=True)
            batch["image"] = image.contiguous(memory_format=self.memory_format)
            batch["label"] = host["label"].to(self.device, non_blocking=True)
            copied = torch.cuda.Event()
            copied.record(self._copies)
        return batch, copied


def photometric(image: torch.Tensor, draws, strength: float, grayscale: float) -> torch.Tensor:
    """Colour jitter of a normalised image with torchvision's functional ops.

    Brightness, contrast and saturation factors lie in ``[1 - s, 1 + s]``, the hue shift in
    ``[-s/4, s/4]`` turns (at most 0.5); with probability ``grayscale`` the image turns grey.
    ``draws`` are five uniform numbers in [0, 1) that fix every choice (see ``indices``).
    """
    # imported here: torchvision takes seconds to import, and only colour jitter needs it
    import torchvision.transforms.v2.functional as TF

    x = (image * _STD + _MEAN).clamp_(0, 1)
    b, c, s, h, g = (float(v) for v in draws)
    if strength > 0:
        x = TF.adjust_brightness(x, 1 + strength * (2 * b - 1))
        x = TF.adjust_contrast(x, 1 + strength * (2 * c - 1))
        x = TF.adjust_saturation(x, 1 + strength * (2 * s - 1))
        x = TF.adjust_hue(x, min(0.5, strength / 4) * (2 * h - 1))
    if g < grayscale:
        x = TF.rgb_to_grayscale(x, num_output_channels=3)
    return (x - _MEAN) / _STD


def check_labels(labels: torch.Tensor, where: str) -> None:
    """Raise ``ValueError`` naming ``where`` if a label lies outside train ids 0..18 and 255."""
    bad = (labels >= NUM_CLASSES) & (labels != IGNORE_INDEX) | (labels < 0)
    if bool(bad.any()):
        values = torch.unique(labels[bad]).tolist()
        raise ValueError(
            f"{where}: label value(s) {values} outside the label space "
            f"(train ids 0..{NUM_CLASSES - 1}, {IGNORE_INDEX} = ignore)"
        )


def eval_batches(dataset, batch_size: int, limit: int = 0, rank: int = 0, world_size: int = 1):
    """Fixed, ordered batches over the first ``limit`` samples (all when 0), sharded by rank."""
    n = len(dataset) if limit <= 0 else min(limit, len(dataset))
    mine = list(range(rank, n, world_size))
    for start in range(0, len(mine), batch_size):
        items = [dataset[i] for i in mine[start : start + batch_size]]
        yield {
            "image": torch.stack([s["image"] for s in items]),
            "label": torch.stack([s["label"] for s in items]),
        }
