"""Measured deployment figures of a segmentation network: parameters, peak memory, latency, FLOPs.

:func:`measure` builds a network of the config (``models.student``/``models.teacher``) with
random weights, since none of the figures depends on them, and :func:`measure_model` measures a
built one, at a deployment input of ``batch x 3 x height x width`` (:class:`DeploySettings`)::

    figures = measure(ModelConfig("drn_d_22", 0.125, output_stride=2), DeploySettings([1024, 2048]))
    figures.metrics()  # {"params_m": ..., "peak_memory_mb": ..., "latency_ms": ..., "gflops": ...}

Every figure is measured, none is estimated from the architecture:

* ``params_m``: every parameter of the network (``count_parameters``), in millions.
* ``gflops``: the FLOPs ``torch.utils.flop_counter.FlopCounterMode`` counts in one forward pass
  (a multiply-add is 2 FLOPs), / 1e9. The pass runs on the ``meta`` device (the weights and the
  input as meta tensors through ``torch.func.functional_call``), so it costs no compute and no
  memory; the counter reads shapes only, so the count is the one of a real pass. It counts what
  the counter knows: convolutions and matrix products; BatchNorm, activations and interpolation
  are not counted.
* ``latency_ms``: the median wall time of ``repeats`` forward passes after ``warmup`` untimed
  ones, in eval mode under ``torch.inference_mode``; on CUDA the device is synchronised before
  and after each pass.
* ``peak_memory_mb``: the peak of the bytes of live tensors during one inference forward pass,
  the weights (parameters and buffers) and the input included, / 2**20.

  On CUDA it is the caching allocator's own count: ``memory_allocated()`` is read before the
  network and the input are put on the device, one untimed pass runs, the peak statistics are
  reset, and the peak of the measured pass minus that baseline is the figure. Counted: every
  tensor the allocator hands out, cuDNN's workspaces and what the first pass leaves allocated
  (such as a cuBLAS workspace) included; not counted: the CUDA context, kernels, and memory the
  allocator reserves but has not handed out.

  On CPU it is read from the allocations torch's CPU allocator reports to the profiler
  (``torch.profiler`` with ``profile_memory=True``): every allocation and free of the pass, in
  time order, gives the curve of live bytes, whose maximum plus the bytes of the weights and
  the input (allocated before) is the figure. The allocator's events are read from the
  profiler's raw results (``prof.profiler.kineto_results``): the ``[memory]`` entries of
  ``prof.events()`` hold only the allocations made outside any operator, since the profiler
  adds the others to the operator that made them, where their order within it is lost.
  Counted: every buffer obtained from torch's CPU allocator, so the im2col columns of a plain
  convolution and oneDNN's copies of the weights and input in its blocked layouts (oneDNN
  allocates through torch's allocator) are in the figure; not counted: what oneDNN, MKL or
  OpenMP allocate on their own (JIT kernels, primitive caches, thread stacks), Python objects
  and the allocator's unused pages. Allocations of other Python threads are not recorded (the
  profiler follows the thread that runs the pass); a DRN's figure is the same with 1 and 2
  intra-op threads.

A measurement that runs out of memory raises :class:`DeployOutOfMemory` (the caller records
the setting as infeasible); any other failure of the network raises :class:`DeployError`, one
line naming the network, the input and the device.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from dakd.config import ConfigError, ModelConfig, require
from dakd.models import count_parameters, create_model

__all__ = [
    "DEPLOY_METRICS",
    "DeployError",
    "DeployFigures",
    "DeployOutOfMemory",
    "DeploySettings",
    "check_size",
    "measure",
    "measure_model",
]

#: The names of :meth:`DeployFigures.metrics`, in order.
DEPLOY_METRICS = ("params_m", "peak_memory_mb", "latency_ms", "gflops")

_MEMORY_EVENT = "[memory]"


class DeployError(ValueError):
    """A network that cannot be measured at a setting; one line naming the network and values."""


class DeployOutOfMemory(DeployError):
    """The measurement ran out of memory: the setting is infeasible on that device."""


@dataclass
class DeploySettings:
    """Where and how a network is measured (a sweep spec's ``deploy`` section).

    ``size``: ``[height, width]`` of the deployment input; ``batch``: its batch size;
    ``warmup``: untimed forward passes before ``repeats`` timed ones (the latency is their
    median); ``device``: ``auto`` (CUDA when present, else the CPU), ``cpu``, ``cuda`` or
    ``cuda:N``.
    """

    size: list[int] = field(default_factory=lambda: [1024, 2048])
    batch: int = 1
    warmup: int = 2
    repeats: int = 10
    device: str = "auto"

    def check(self) -> None:
        """Reject impossible values, naming the key."""
        require(
            isinstance(self.size, list | tuple)
            and len(self.size) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in self.size),
            "deploy.size",
            f"must be [height, width], two positive integers, got {self.size!r}",
        )
        require(self.batch >= 1, "deploy.batch", f"must be >= 1, got {self.batch}")
        require(self.warmup >= 0, "deploy.warmup", f"must be >= 0, got {self.warmup}")
        require(self.repeats >= 1, "deploy.repeats", f"must be >= 1, got {self.repeats}")
        require(
            self.device in ("auto", "cpu", "cuda")
            or (self.device.startswith("cuda:") and self.device[5:].isdigit()),
            "deploy.device",
            f"must be auto, cpu, cuda or cuda:N, got {self.device!r}",
        )


@dataclass
class DeployFigures:
    """What :func:`measure` found; ``device`` is where, e.g. ``cpu`` or ``cuda:0 (NVIDIA H200)``."""

    params_m: float
    peak_memory_mb: float
    latency_ms: float
    gflops: float
    device: str

    def metrics(self) -> dict[str, float]:
        """The four figures by their names (:data:`DEPLOY_METRICS`)."""
        return {name: float(getattr(self, name)) for name in DEPLOY_METRICS}


# -- the network and the setting ------------------------------------------------------------------


def network_label(model_cfg: ModelConfig) -> str:
    """``drn_d_22 w0.125 os2``: how errors and the command line name a network."""
    return f"{model_cfg.name} w{model_cfg.width:g} os{model_cfg.output_stride}"


def _where(label: str, settings: DeploySettings, device: str | None = None) -> str:
    height, width = settings.size
    text = f"{label} at {height}x{width}, batch {settings.batch}"
    return f"{text} on {device}" if device else text


def _build(model_cfg: ModelConfig, num_classes: int, device: str | None = None) -> nn.Module:
    """The network with random weights (on ``device``, e.g. ``meta``, when given); a name or a
    width the registry rejects is a :class:`DeployError`."""
    extra = {"output_stride": model_cfg.output_stride} if model_cfg.output_stride != 8 else {}
    extra.update(model_cfg.args)
    try:
        with torch.device(device) if device else nullcontext():
            return create_model(
                model_cfg.name, num_classes=num_classes, width=model_cfg.width, **extra
            )
    except (ValueError, TypeError) as err:
        raise DeployError(f"{network_label(model_cfg)}: {_first_line(err)}") from None


def check_size(model_cfg: ModelConfig, size) -> None:
    """A :class:`DeployError` unless height and width are multiples of the network's largest
    stride (its encoder's: 8 for the DRN and DeepLab networks)."""
    network = _build(model_cfg, 19, "meta")
    stride = int(getattr(network, "encoder_stride", 1))
    height, width = (int(v) for v in size)
    for name, value in (("height", height), ("width", width)):
        if value % stride:
            raise DeployError(
                f"{network_label(model_cfg)} at {height}x{width}: the {name} {value} is not a "
                f"multiple of {stride}, the network's largest stride"
            )


def deploy_device(name: str) -> torch.device:
    """``deploy.device`` as the torch device a student's deployment figures are measured on;
    CUDA that is not there is a :class:`DeployError`."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeployError(f"deploy.device is {name!r} but torch sees no CUDA device")
        index = torch.cuda.current_device() if device.index is None else device.index
        if index >= torch.cuda.device_count():
            raise DeployError(
                f"deploy.device is {name!r} but torch sees {torch.cuda.device_count()} CUDA "
                "device(s)"
            )
        device = torch.device("cuda", index)
    return device


def device_name(device: torch.device) -> str:
    """``cpu`` or ``cuda:0 (NVIDIA H200)``."""
    if device.type == "cuda":
        return f"cuda:{device.index} ({torch.cuda.get_device_name(device)})"
    return str(device)


# -- the failures ---------------------------------------------------------------------------------


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0].strip() if lines else type(err).__name__


def is_out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` says the device ran out of memory (CUDA's error, or the CPU allocator's
    "can't allocate memory")."""
    if isinstance(err, torch.cuda.OutOfMemoryError | MemoryError):
        return True
    if not isinstance(err, RuntimeError):
        return False
    text = str(err).lower()
    return any(
        words in text
        for words in (
            "can't allocate memory",
            "cannot allocate memory",
            "not enough memory",
            "out of memory",
        )
    )


@contextmanager
def _classified(where: str, device: torch.device) -> Iterator[None]:
    """Failures inside as one-line :class:`DeployError` (:class:`DeployOutOfMemory` for memory)."""
    try:
        yield
    except DeployError:
        raise
    except Exception as err:
        if is_out_of_memory(err):
            if device.type == "cuda":
                torch.cuda.empty_cache()
            raise DeployOutOfMemory(f"{where}: out of memory ({_first_line(err)})") from err
        raise DeployError(f"{where}: {type(err).__name__}: {_first_line(err)}") from err


# -- the figures ----------------------------------------------------------------------------------


def _tensor_bytes(tensors, device: torch.device | None = None) -> int:
    """Bytes of the distinct storages of ``tensors`` (those on ``device`` when given)."""
    seen: dict[tuple[str, int], int] = {}
    for t in tensors:
        if device is not None and t.device != device:
            continue
        storage = t.untyped_storage()
        seen[(str(t.device), storage.data_ptr())] = storage.nbytes()
    return sum(seen.values())


def _state(model: nn.Module) -> list[torch.Tensor]:
    return [*model.parameters(), *model.buffers()]


def _input(model: nn.Module, settings: DeploySettings, device) -> torch.Tensor:
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    return torch.randn(settings.batch, 3, *settings.size, dtype=dtype, device=device)


def count_flops(model: nn.Module, settings: DeploySettings) -> int:
    """FLOPs of one forward pass, counted on the ``meta`` device (no compute, no memory)."""
    state = {
        name: t.to("meta")
        for name, t in [*model.named_parameters(), *model.named_buffers()]
        if t is not None
    }
    x = _input(model, settings, "meta")
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        torch.func.functional_call(model, state, (x,))
    return int(counter.get_total_flops())


def memory_curve_peak(events) -> int:
    """The maximum of the running sum of allocator events ``(start, signed bytes)``, in time
    order, and 0 when nothing is allocated."""
    live = peak = 0
    for _, nbytes in sorted(events, key=lambda e: e[0]):
        live += nbytes
        peak = max(peak, live)
    return peak


def _allocator_events(prof) -> list[tuple[int, int]]:
    """The CPU allocator's ``(start ns, signed bytes)`` events a profiler recorded."""
    results = getattr(prof.profiler, "kineto_results", None)
    if results is None:
        raise RuntimeError("the profiler recorded no allocator events (profile_memory)")
    return [
        (e.start_ns(), e.nbytes())
        for e in results.events()
        if e.name() == _MEMORY_EVENT and e.device_type() == torch.autograd.DeviceType.CPU
    ]


@contextmanager
def _quiet_stderr() -> Iterator[None]:
    """The process's stderr (file descriptor 2) sent to /dev/null: the profiler's C++ side
    prints start/stop and device-probe lines there (``ERROR ... gpuGetDeviceCount failed`` on a
    CUDA build without a GPU) that say nothing about the measurement."""
    import os
    import sys

    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _cpu_peak_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Peak live bytes of one pass on the CPU: the profiled allocator curve plus the weights
    and the input, which were allocated before it."""
    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = model(x)
        del out
    return memory_curve_peak(_allocator_events(prof)) + _tensor_bytes([*_state(model), x])


def _cuda_peak_bytes(model: nn.Module, settings: DeploySettings, device: torch.device) -> int:
    """Peak live bytes of one pass on a CUDA device, counted by its caching allocator from
    before the weights and the input were put there; leaves the network on the device."""
    torch.cuda.synchronize(device)
    baseline = torch.cuda.memory_allocated(device) - _tensor_bytes(_state(model), device)
    model.to(device)
    x = _input(model, settings, device)
    with torch.inference_mode():
        model(x)  # one pass first: what it leaves allocated is counted
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        out = model(x)
        del out
        torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - baseline


def _latency_ms(model: nn.Module, x: torch.Tensor, settings: DeploySettings) -> float:
    """Median wall time of ``repeats`` passes after ``warmup`` untimed ones."""
    cuda = x.device.type == "cuda"
    for _ in range(settings.warmup):
        model(x)
    times = []
    for _ in range(settings.repeats):
        if cuda:
            torch.cuda.synchronize(x.device)
        start = time.perf_counter()
        out = model(x)
        if cuda:
            torch.cuda.synchronize(x.device)
        times.append(time.perf_counter() - start)
        del out
    return 1000.0 * statistics.median(times)


def _passes(model: nn.Module, settings: DeploySettings, device: torch.device) -> tuple[int, float]:
    """Peak bytes of one pass and the median latency on ``device``; on CUDA the memory pass
    comes first (its baseline is read before the weights are put there), on the CPU the
    profiled pass comes after the timed ones."""
    if device.type == "cuda":
        peak = _cuda_peak_bytes(model, settings, device)
        x = _input(model, settings, device)
        with torch.inference_mode():
            return peak, _latency_ms(model, x, settings)
    model.to(device)
    x = _input(model, settings, device)
    with torch.inference_mode():
        latency = _latency_ms(model, x, settings)
        return _cpu_peak_bytes(model, x), latency


def measure_model(model: nn.Module, settings: DeploySettings, label: str) -> DeployFigures:
    """The deployment figures of a built network (moved to the settings' device; its train or
    eval mode is restored afterwards). ``label`` names it in errors."""
    settings.check()
    device = deploy_device(settings.device)
    where = _where(label, settings, str(device))
    was_training = model.training
    model.eval()
    try:
        with _classified(where, device):
            flops = count_flops(model, settings)
            peak, latency = _passes(model, settings, device)
    finally:
        model.train(was_training)
    return DeployFigures(
        params_m=count_parameters(model) / 1e6,
        peak_memory_mb=peak / 2**20,
        latency_ms=latency,
        gflops=flops / 1e9,
        device=device_name(device),
    )


#: The figures known without running the network: :func:`static_figures` gives them.
STATIC_METRICS = ("params_m", "gflops")


def static_figures(
    model_cfg: ModelConfig, settings: DeploySettings, num_classes: int = 19
) -> dict[str, float]:
    """``params_m`` and ``gflops`` of the network at ``settings``, from a network on the
    ``meta`` device: known in a fraction of a second, before any pass runs (a constraint on
    them rules a network out without timing it)."""
    settings.check()
    check_size(model_cfg, settings.size)
    model = _build(model_cfg, num_classes, "meta")
    with _classified(_where(network_label(model_cfg), settings, "meta"), torch.device("meta")):
        flops = count_flops(model, settings)
    return {"params_m": count_parameters(model) / 1e6, "gflops": flops / 1e9}


def measure(
    model_cfg: ModelConfig,
    settings: DeploySettings,
    num_classes: int = 19,
    threads: int | None = None,
) -> DeployFigures:
    """The deployment figures of the network ``model_cfg`` (random weights) at ``settings``;
    ``threads``: torch's intra-op threads during the measurement (restored afterwards)."""
    settings.check()
    if threads is not None and threads < 1:
        raise ConfigError(f"threads: must be >= 1, got {threads}")
    check_size(model_cfg, settings.size)
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        model = _build(model_cfg, num_classes)
        return measure_model(model, settings, network_label(model_cfg))
    finally:
        torch.set_num_threads(previous)
