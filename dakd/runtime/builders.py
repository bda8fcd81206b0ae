"""What a run is built from: its datasets and batch streams, its networks (from a description,
a checkpoint or the config), the frozen teacher, and the weight average.

The trainer, the evaluation commands, the calibration and the sweep build through these
functions, so every path reads the config the same way.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from dakd.config import ConfigError, ExperimentConfig, ModelConfig
from dakd.data.datasets import split_of
from dakd.data.labels import NUM_CLASSES
from dakd.data.loader import Prefetcher, StepSampler
from dakd.data.scenes import SceneDataset
from dakd.models import checkpoint as ckpt
from dakd.models import create_model
from dakd.models.pretrained import check_manifest, manifest_entry, network_of, teacher_file

# -- data ----------------------------------------------------------------------------------------


def _scenes(cfg: ExperimentConfig) -> dict[str, Any]:
    size = tuple(cfg.data.crop_size)
    return {"seed": cfg.data.scene_seed, "size": size, "cache_dir": cfg.data.cache_dir or None}


def val_dataset(cfg: ExperimentConfig):
    """The target val split: embedded scenes, or the real target dataset (checked first)."""
    if cfg.data.dataset == "real":
        return split_of(cfg.data, "target", "val")
    return SceneDataset(cfg.domains[1], "val", **_scenes(cfg))


def training_dataset(cfg: ExperimentConfig, role: str):
    """The train split of the source or target domain (real datasets checked first)."""
    if cfg.data.dataset == "real":
        return split_of(cfg.data, role, "train")
    domain = cfg.domains[0 if role == "source" else 1]
    return SceneDataset(domain, "train", length=cfg.data.train_size or None, **_scenes(cfg))


def build_data(
    cfg: ExperimentConfig, rank: int = 0, world_size: int = 1, device: torch.device | None = None
):
    """Source and target train samplers and the target val dataset of the experiment.

    For a CUDA ``device`` the batches built ahead are pinned (page-locked; see
    :class:`dakd.data.loader.DeviceFeed`).

    Real datasets are checked first (``dakd.data.datasets.open_split``): a split that fails its
    check stops training here with the report.
    """
    kw = {
        "hflip": cfg.data.hflip,
        "rank": rank,
        "world_size": world_size,
        "color_jitter": cfg.data.color_jitter,
        "grayscale": cfg.data.grayscale,
    }
    source_train, target_train = training_dataset(cfg, "source"), training_dataset(cfg, "target")
    src = StepSampler(source_train, cfg.data.batch_size, cfg.seed, "source", **kw)
    tgt = StepSampler(target_train, cfg.data.batch_size, cfg.seed, "target", **kw)
    depth = prefetch_depth(cfg)
    if depth:
        last = cfg.train.steps - 1
        pin = device is not None and device.type == "cuda"
        src, tgt = Prefetcher(src, depth, last, pin), Prefetcher(tgt, depth, last, pin)
    return src, tgt, val_dataset(cfg)


def prefetch_depth(cfg: ExperimentConfig) -> int:
    """How many batches each training stream builds ahead (``data.prefetch``; -1 = auto: for
    real datasets one per CPU this process may use, 4 to 16; none for the embedded scenes)."""
    if cfg.data.prefetch >= 0:
        return cfg.data.prefetch
    return min(16, max(4, usable_cpus())) if cfg.data.dataset == "real" else 0


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity, e.g. a container's or a job's share)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


# -- networks ------------------------------------------------------------------------------------


def build_network(spec: dict[str, Any]) -> torch.nn.Module:
    extra = {"output_stride": spec["output_stride"]} if "output_stride" in spec else {}
    extra.update(spec.get("args", {}))
    return create_model(spec["name"], num_classes=spec["num_classes"], width=spec["width"], **extra)


def spec_of(model: ModelConfig, num_classes: int = NUM_CLASSES) -> dict[str, Any]:
    """The checkpoint description of the network ``model`` (``models.teacher``/``student``)."""
    return ckpt.network_spec(model.name, model.width, num_classes, model.output_stride, model.args)


def network_from_checkpoint(path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The network a checkpoint holds, built as it describes and loaded; and the checkpoint."""
    state = ckpt.load(path)
    if "config" not in state or "network" not in state:
        raise ckpt.CheckpointError(f"checkpoint {path} has no config or network description")
    model = build_network(state["network"])
    ckpt.load_network(model, state, state["network"], path)
    return model, state


def load_teacher(cfg: ExperimentConfig, device: torch.device) -> torch.nn.Module:
    """The frozen teacher: weights from ``cfg.teacher``, eval mode, no gradients. A shipped
    teacher is checked against its manifest first (``dakd.recipes.da_teacher.check_teacher``)."""
    check_teacher(cfg)
    spec = spec_of(cfg.models.teacher)
    state = ckpt.load(cfg.teacher)
    teacher = build_network(spec)
    ckpt.load_network(teacher, state, spec, cfg.teacher)
    teacher.eval().requires_grad_(False)
    return teacher.to(device)


# -- the weight average (train.ema_decay) --------------------------------------------------------


def mean_teacher_average(decay: float):
    """An ``AveragedModel`` update whose decay ramps up as the mean teacher's does: with t
    weights averaged so far, the next enters with weight 1 - min(decay, 1 - 1/(t + 1)), so the
    average is the plain mean of every weight so far until the decay takes over."""

    @torch.no_grad()
    def update(averaged, current, num_averaged) -> None:
        t = int(num_averaged)
        weight = 1.0 - min(decay, 1.0 - 1.0 / (t + 1.0))
        for mine, theirs in zip(averaged, current, strict=True):
            mine.lerp_(theirs, weight)

    return update


def weight_average(cfg: ExperimentConfig, model: torch.nn.Module) -> AveragedModel | None:
    """``train.ema_decay``: an exponential moving average of ``model``'s weights (torch's
    ``AveragedModel``; its BatchNorm statistics come from the raw network at each evaluation),
    ramped up as the mean teacher's with ``train.ema_warmup``; None when off."""
    if not cfg.train.ema_decay:
        return None
    average = (
        mean_teacher_average(cfg.train.ema_decay)
        if cfg.train.ema_warmup
        else get_ema_multi_avg_fn(cfg.train.ema_decay)
    )
    return AveragedModel(model, multi_avg_fn=average, use_buffers=False)


def check_teacher(cfg: ExperimentConfig) -> dict[str, Any] | None:
    """Refuse a teacher file that does not match its manifest (when it has one: shipped
    teachers do, a stage's ``model.pt`` does not): another sha256, network or scenario than
    ``cfg`` asks for. One line naming the file (and both scenarios). Returns the entry."""
    path = Path(cfg.teacher)
    if not path.is_file() or manifest_entry(path) is None:
        return None
    entry = check_manifest(path, network_of(cfg.models.teacher), "teacher")
    adapted = entry.get("scenario")
    if adapted is not None and adapted != cfg.data.scenario:
        raise ConfigError(
            f"teacher: {path} is adapted to {adapted} ({' -> '.join(entry.get('domains', []))}), "
            f"but data.scenario is {cfg.data.scenario}: name "
            f"{path.parent / teacher_file(cfg.data.scenario)} (or teacher: auto to train one)"
        )
    return entry
