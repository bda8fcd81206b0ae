"""Where and how a run computes: the device, the thread count, seeding and determinism, and the
speed switches of ``train`` (mixed precision, memory format, compilation, cuDNN autotuning,
synchronised BatchNorm) as the hardware can honour them.

Every builder of a run (the trainer, the teacher-output cache) asks here, so a run and the cache
it reads agree on what computed the numbers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from dakd.config import ConfigError, ExperimentConfig, TrainConfig
from dakd.paradigms import AUTO
from dakd.runtime.distributed import World, current_world


def check_device(name: str) -> None:
    """``train.device`` must name a device torch sees: a ConfigError (one line) for CUDA on a
    machine where torch sees none, or ``cuda:N`` past the last GPU. Cheap: the loop and the
    command line call it before any data or network is built."""
    if not name.startswith("cuda"):
        return
    try:
        index = torch.device(name).index
    except RuntimeError:
        raise ConfigError(
            f"train.device: {name!r} is not a device; use auto, cpu, cuda or cuda:N"
        ) from None
    if not torch.cuda.is_available():
        if torch.version.cuda is None and torch.version.hip is None:
            why = "this torch is a CPU-only build"
        else:
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            why = "no GPU is visible" + (
                f" (CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None else ""
            )
        raise ConfigError(
            f"train.device: {name!r} but torch sees no CUDA device ({why}); use auto or cpu"
        )
    count = torch.cuda.device_count()
    if index is not None and index >= count:
        seen = f"{count} CUDA device" + ("s" if count != 1 else "")
        raise ConfigError(
            f"train.device: {name!r} but torch sees {seen} (cuda:0 to cuda:{count - 1}); "
            "use auto, cuda or one of those"
        )


def training_device(name: str, world: World | None = None) -> torch.device:
    """``train.device`` as the torch device this process of a run computes on; data-parallel
    CUDA ranks use their current GPU. A device torch does not see is a ConfigError
    (:func:`check_device`)."""
    world = world or current_world()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    check_device(name)
    if world.distributed and name.startswith("cuda"):
        if name != "cuda":
            raise ConfigError(
                f"train.device: {name!r} pins one GPU, but each of the {world.size} processes "
                "needs its own; use auto or cuda (each process uses cuda:LOCAL_RANK)"
            )
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(name)


def seed_everything(seed: int, deterministic: bool) -> None:
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        # warn_only: CUDA has no deterministic bilinear-upsampling backward (every CPU op used
        # here has one, so CPU runs stay bit-reproducible)
        torch.use_deterministic_algorithms(True, warn_only=True)
        # ... without filling every new tensor with NaN first (torch does so under deterministic
        # algorithms in case an op reads memory it did not write; none here does, and the fills
        # cost 6% of a CPU step: 1600 per step on the embedded default)
        torch.utils.deterministic.fill_uninitialized_memory = False
        torch.backends.cudnn.benchmark = False


@dataclass(frozen=True)
class Speed:
    """The speed switches of ``train`` as they apply on this device (see ``TrainConfig``):
    ``auto`` resolved, and what the hardware cannot honour off."""

    amp_dtype: torch.dtype | None = None
    grad_scaling: bool = False
    channels_last: bool = False
    compile: bool = False
    cudnn_benchmark: bool = False
    sync_bn: bool = False
    deterministic: bool = True

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format


def _auto(value, cuda: bool) -> bool:
    """A switch that is true, false or ``auto`` (on CUDA, off on the CPU)."""
    return cuda if value == AUTO else bool(value)


def speed_settings(t: TrainConfig, device: torch.device, world: World) -> tuple[Speed, list[str]]:
    """What ``t``'s speed switches do on ``device``, and a one-line notice per switch that the
    hardware cannot honour (it stays off).

    ``auto`` is the fastest trustworthy setting of the device: on CUDA bf16 autocast (float32
    on a GPU without bfloat16, with a notice), channels_last, cuDNN autotuning and
    non-deterministic kernels (unless ``deterministic: true``); on the CPU none of them."""
    cuda = device.type == "cuda"
    notices = []
    amp_dtype = None
    if t.amp == AUTO:
        if cuda and torch.cuda.is_bf16_supported():
            amp_dtype = torch.bfloat16
        elif cuda:
            name = torch.cuda.get_device_name(device)
            notices.append(f"train.amp=auto: {name} lacks bfloat16; training in float32")
    elif t.amp == "bf16":
        if cuda and not torch.cuda.is_bf16_supported():
            name = torch.cuda.get_device_name(device)
            notices.append(f"train.amp=bf16: {name} lacks bfloat16; training in float32")
        else:
            amp_dtype = torch.bfloat16
    elif t.amp == "fp16":
        if cuda:
            amp_dtype = torch.float16
        else:
            notices.append(f"train.amp=fp16 needs CUDA; training in float32 on {device.type}")
    deterministic = not cuda if t.deterministic == AUTO else t.deterministic
    if t.cudnn_benchmark is True and not cuda:
        notices.append(f"train.cudnn_benchmark needs CUDA (cuDNN); off on {device.type}")
    if t.sync_bn and world.distributed and not cuda:
        notices.append(
            f"train.sync_bn needs CUDA (torch's SyncBatchNorm); on {device.type} each process "
            "normalises over its own share of the batch"
        )
    speed = Speed(
        amp_dtype=amp_dtype,
        grad_scaling=amp_dtype == torch.float16,
        channels_last=_auto(t.channels_last, cuda),
        compile=t.compile,
        cudnn_benchmark=_auto(t.cudnn_benchmark, cuda) and cuda and not deterministic,
        sync_bn=t.sync_bn and world.distributed and cuda,
        deterministic=bool(deterministic),
    )
    return speed, notices


def hold_in_amp_dtype(module: torch.nn.Module, speed: Speed) -> torch.nn.Module:
    """A frozen network's convolution and linear weights held in the autocast dtype, cast once.

    Autocast casts the float32 weights of every such layer on every call when they take no
    gradient (it caches casts only for leaves that require one): a copy per layer per step for
    the frozen teacher. Cast once here, the values are those autocast would compute, so the
    outputs are unchanged, bit for bit; BatchNorm keeps float32 statistics as under autocast.
    A network outside autocast (``amp`` off) is left as it is."""
    if speed.amp_dtype is None:
        return module
    for layer in module.modules():
        if isinstance(layer, torch.nn.Conv2d | torch.nn.ConvTranspose2d | torch.nn.Linear):
            layer.to(speed.amp_dtype)
    return module


def check_world(cfg: ExperimentConfig, world: World) -> None:
    """The global batch must split evenly between the data-parallel processes."""
    if cfg.data.batch_size % world.size:
        raise ConfigError(
            f"data.batch_size: {cfg.data.batch_size} (the global batch) does not split evenly "
            f"between {world.size} data-parallel processes"
        )


def set_threads(threads: int) -> None:
    """``train.threads``: torch's intra-op threads (0 leaves torch's default)."""
    if threads:
        torch.set_num_threads(threads)
