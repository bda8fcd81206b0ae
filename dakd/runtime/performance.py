"""What a run's training steps cost, and running out of GPU memory as one line.

:class:`StepMeter` times the steps of the loop (:func:`dakd.engine.trainer.train`) and counts the FLOPs of
one of them; at each evaluation its :meth:`~StepMeter.metrics` join the run's metrics:

* ``sec_per_step`` and ``step_ms``: the mean wall time of a step since the last evaluation (on
  CUDA the window ends with ``torch.cuda.synchronize``, so it is the GPU's time too, not the
  time to queue the kernels; the steps themselves are not synchronised, so the CPU queues the
  next step while the GPU runs the last);
* ``tflops``: the FLOPs of one step (``torch.utils.flop_counter.FlopCounterMode``, forward and
  backward of every network the step runs, the teacher's and the discriminators' included) per
  second of a mean step, / 1e12: the throughput achieved, to compare with the GPU's peak;
* ``gpu_peak_mb`` (CUDA only): the most memory the process's tensors held since the last
  evaluation (``torch.cuda.max_memory_allocated``, / 2**20), the evaluation itself not included.

These are the run's :data:`TIMING_KEYS`: they differ between two runs of the same config (and
between the data-parallel processes of one run), unlike every other metric; comparisons of
histories leave them out.

FLOPs are counted once, in the first step of each ``train`` call (a resumed run counts again),
and that count stands for every step: a sequential paradigm's later phase (``dakd.paradigms``),
which distils on one domain only, does somewhat less. Counting runs the step under a dispatch
mode that only looks at each operation (the step computes the same numbers bit for bit; tested)
but costs Python time per operation, so the counted step is left out of the mean step time unless
it is the only step since the last evaluation. With ``train.compile`` nothing is counted (the
counter's module hooks would break the compiled graph) and ``tflops`` is absent. Data-parallel:
each process counts and times its own share of the batch.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import torch
from torch.utils.flop_counter import FlopCounterMode

T = TypeVar("T")

#: The metrics that measure time and memory: different on every run of the same config.
TIMING_KEYS = ("sec_per_step", "step_ms", "tflops", "gpu_peak_mb")


class StepMeter:
    """Times steps on ``device``, counts the FLOPs of the first one (``count_flops``) and reads
    the peak GPU memory; :meth:`metrics` at an evaluation, :meth:`reset` after it."""

    def __init__(self, device: torch.device, count_flops: bool = True):
        self.device = device
        self.cuda = device.type == "cuda"
        self.count_flops = count_flops
        #: the FLOPs of one step (None until counted, or when not counted)
        self.flops: int | None = None
        self.reset()

    def reset(self) -> None:
        """Start a new window: no steps timed, the peak memory back to what is held now."""
        self.seconds, self.steps = 0.0, 0
        self._last_end = 0.0
        self.counted_seconds: float | None = None
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)

    def step(self, run: Callable[[], T]) -> T:
        """``run()`` (one training step), timed; the first one's FLOPs counted."""
        counting = self.count_flops and self.flops is None
        if counting and self.cuda:
            torch.cuda.synchronize(self.device)  # the counted step's time is its own
        tic = time.perf_counter()
        if counting:
            with FlopCounterMode(display=False) as counter:
                out = run()
            if self.cuda:
                torch.cuda.synchronize(self.device)
            self.flops = int(counter.get_total_flops())
            self._last_end = time.perf_counter()
            self.counted_seconds = self._last_end - tic
        else:
            out = run()
            self._last_end = time.perf_counter()
            self.seconds += self._last_end - tic
            self.steps += 1
        return out

    def metrics(self) -> dict[str, float]:
        """The window's :data:`TIMING_KEYS` (``tflops`` when the FLOPs are known, ``gpu_peak_mb``
        on CUDA). On CUDA the GPU's queue is drained first and the time it took counts as the
        window's last step's: the steps were timed as the CPU queued them."""
        if self.cuda and self.steps:
            torch.cuda.synchronize(self.device)
            self.seconds += time.perf_counter() - self._last_end
        seconds, steps = self.seconds, self.steps
        if steps == 0 and self.counted_seconds is not None:
            seconds, steps = self.counted_seconds, 1  # the counted step alone: its time it is
        per_step = seconds / max(steps, 1)
        out = {"sec_per_step": per_step, "step_ms": 1000.0 * per_step}
        if self.flops is not None and per_step > 0:
            out["tflops"] = self.flops / per_step / 1e12
        if self.cuda:
            out["gpu_peak_mb"] = torch.cuda.max_memory_allocated(self.device) / 2**20
        return out


# -- running out of GPU memory -------------------------------------------------------------------


class OutOfMemory(RuntimeError):
    """The device ran out of memory in a step or an evaluation. The message (one line) names the
    device, the process's peak memory, the batch, the crops and the networks, and the settings
    that lower memory, in the order to try them; the torch error is its ``__cause__``."""


def out_of_memory_error(cfg, trainer, where: str) -> OutOfMemory:
    """The :class:`OutOfMemory` of ``trainer`` (running ``cfg``) at ``where`` (e.g. ``step
    12``), after giving back the memory torch's allocator caches."""
    device = trainer.device
    world = trainer.world
    memory = ""
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
        total = torch.cuda.get_device_properties(device).total_memory / 2**20
        memory = f", peak {peak:.0f} MiB allocated by this process of the {total:.0f} MiB it has"
        torch.cuda.empty_cache()
    data = cfg.data
    per_process = data.batch_size // max(world.size, 1)
    batch = f"batch {per_process} per process"
    if world.size > 1:
        batch += f" (data.batch_size {data.batch_size} over {world.size} processes)"
    if data.dataset == "real":
        crops = f"crops {_size(data.source_crop)} source, {_size(data.target_crop)} target"
        smaller_crops = "data.source_crop / data.target_crop"
    else:
        crops = f"crops {_size(data.crop_size)}"
        smaller_crops = "data.crop_size"
    student = _network(cfg.models.student)
    if cfg.stage == "dakd":
        live = trainer.teacher is not None
        networks = f"student {student}, teacher {_network(cfg.models.teacher)} " + (
            "(live)" if live else "(cached outputs)"
        )
    else:
        live = False
        networks = _network(cfg.trained_model)
    tries = []
    speed = trainer.speed  # the switches as resolved on the device (auto included)
    if speed.amp_dtype is None:
        tries.append("train.amp=bf16")
    if not speed.channels_last:
        tries.append("train.channels_last=true")
    if live:
        tries.append("teacher_cache.mode=on")
    if per_process > 1:
        tries.append(f"a smaller data.batch_size (now {data.batch_size})")
    tries.append(f"smaller crops ({smaller_crops})")
    return OutOfMemory(
        f"out of memory on {device} in {where}{memory}; {batch}, {crops}, {networks}; "
        f"to use less memory try, in this order: {', '.join(tries)}"
    )


def _size(size) -> str:
    return "x".join(str(v) for v in size)


def _network(model) -> str:
    return f"{model.name} w{model.width:g} os{model.output_stride}"


__all__ = ["TIMING_KEYS", "OutOfMemory", "StepMeter", "out_of_memory_error"]
