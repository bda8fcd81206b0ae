"""The DAKD trainer: one function, one loop, no framework between the reader and the math.

``train(cfg, report)`` trains the network of ``cfg.stage`` (see ``dakd.paradigms``):

* the segmenter: SGD with poly decay; per step ``L_seg(source) + L_adv(target) + L_distill``;
* one output-space discriminator per level: Adam, source predictions labelled 0, target 1;
* the teacher (stage ``dakd``): loaded from ``cfg.teacher``, frozen, in eval mode.

Every ``train.eval_interval`` steps (and at the end) the target val split is evaluated, a
checkpoint is written atomically and ``report(metrics, checkpoint_path)`` is called. The core
knows nothing of Ray or MLflow: the sweep and tracking layers adapt ``report``.

Data-parallel: when torch's default process group is initialised (``torchrun -m dakd train``,
see ``dakd.distributed``), every process runs this same loop on its share of each global batch
(``data.batch_size`` is global). The student and the discriminators are wrapped in
``DistributedDataParallel``, which averages their gradients; the frozen teacher is loaded by
every process, without a wrapper. Evaluation splits the val images between the processes and
sums their confusion matrices. Rank 0 alone writes checkpoints and metrics and shows progress.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from dakd import checkpoint as ckpt
from dakd import losses
from dakd import teacher_cache as tcache
from dakd.config import ConfigError, ExperimentConfig, ModelConfig, TrainConfig, from_dict
from dakd.data.datasets import protocols, split_of
from dakd.data.labels import CLASS_NAMES, NUM_CLASSES
from dakd.data.loader import Prefetcher, StepSampler, eval_batches
from dakd.data.scenes import SceneDataset
from dakd.distributed import World, current_world
from dakd.evaluate import SegMetrics, evaluate
from dakd.models import Discriminator, count_parameters, create_model
from dakd.models.domain_bn import add_source_statistics, bn_domain, reestimate, sync_batchnorm
from dakd.models.pretrained import PretrainedReport, load_pretrained, network_of
from dakd.paradigms import STAGES, paradigm_phases, phase_at

Report = Callable[[dict[str, float], Path | None], None]
LEVELS = ("feature", "output")


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; the message names the step and the terms."""


@dataclass
class TrainResult:
    """Final metrics, the resumable checkpoint, every evaluation's metrics, and the last
    evaluation in full (its confusion matrix; None when this call evaluated nothing)."""

    metrics: dict[str, float]
    checkpoint: Path
    history: list[dict[str, float]] = field(default_factory=list)
    evaluation: SegMetrics | None = None
    #: the domains whose teacher outputs came from the cache (DAKD; the others ran the teacher)
    cached_domains: tuple[str, ...] = ()


def resolve_device(name: str, world: World | None = None) -> torch.device:
    """``train.device`` as a torch device; data-parallel CUDA ranks use their current GPU."""
    world = world or current_world()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"train.device is {name!r} but torch sees no CUDA device")
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
    """The speed switches of ``train`` as they apply on this device (see ``TrainConfig``)."""

    amp_dtype: torch.dtype | None = None
    grad_scaling: bool = False
    channels_last: bool = False
    compile: bool = False
    cudnn_benchmark: bool = False
    sync_bn: bool = False


def speed_settings(t: TrainConfig, device: torch.device, world: World) -> tuple[Speed, list[str]]:
    """What ``t``'s speed switches do on ``device``, and a one-line notice per switch that the
    hardware cannot honour (it stays off)."""
    cuda = device.type == "cuda"
    notices = []
    amp_dtype = None
    if t.amp == "bf16":
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
    if t.cudnn_benchmark and not cuda:
        notices.append(f"train.cudnn_benchmark needs CUDA (cuDNN); off on {device.type}")
    if t.sync_bn and world.distributed and not cuda:
        notices.append(
            f"train.sync_bn needs CUDA (torch's SyncBatchNorm); on {device.type} each process "
            "normalises over its own share of the batch"
        )
    speed = Speed(
        amp_dtype=amp_dtype,
        grad_scaling=amp_dtype == torch.float16,
        channels_last=t.channels_last,
        compile=t.compile,
        cudnn_benchmark=t.cudnn_benchmark and cuda,
        sync_bn=t.sync_bn and world.distributed and cuda,
    )
    return speed, notices


def check_world(cfg: ExperimentConfig, world: World) -> None:
    """The global batch must split evenly between the data-parallel processes."""
    if cfg.data.batch_size % world.size:
        raise ConfigError(
            f"data.batch_size: {cfg.data.batch_size} (the global batch) does not split evenly "
            f"between {world.size} data-parallel processes"
        )


def _scenes(cfg: ExperimentConfig) -> dict[str, Any]:
    size = tuple(cfg.data.crop_size)
    return {"seed": cfg.data.scene_seed, "size": size, "cache_dir": cfg.data.cache_dir or None}


def val_dataset(cfg: ExperimentConfig):
    """The target val split: embedded scenes, or the real target dataset (checked first)."""
    if cfg.data.dataset == "real":
        return split_of(cfg, "target", "val")
    return SceneDataset(cfg.domains[1], "val", **_scenes(cfg))


def training_dataset(cfg: ExperimentConfig, role: str):
    """The train split of the source or target domain (real datasets checked first)."""
    if cfg.data.dataset == "real":
        return split_of(cfg, role, "train")
    domain = cfg.domains[0 if role == "source" else 1]
    return SceneDataset(domain, "train", length=cfg.data.train_size or None, **_scenes(cfg))


def build_data(cfg: ExperimentConfig, rank: int = 0, world_size: int = 1):
    """Source and target train samplers and the target val dataset of the experiment.

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
        src, tgt = Prefetcher(src, depth, last), Prefetcher(tgt, depth, last)
    return src, tgt, val_dataset(cfg)


def prefetch_depth(cfg: ExperimentConfig) -> int:
    """How many batches each training stream builds ahead (``data.prefetch``; -1 = auto)."""
    if cfg.data.prefetch >= 0:
        return cfg.data.prefetch
    return 4 if cfg.data.dataset == "real" else 0


def metrics_of(result: SegMetrics, cfg: ExperimentConfig) -> dict[str, float]:
    """An evaluation's metrics in percent, plus the source dataset's class-subset protocols
    (SYNTHIA: ``miou16``, ``miou13``)."""
    out = result.as_dict()
    for name, classes in protocols(cfg).items():
        out[name] = 100.0 * result.miou_over(classes)
    return out


#: The loss terms a step can report (``loss/<term>``), by stage and paradigm.
LOSS_TERMS = (
    "total",
    "seg",
    "seg_aux",
    "adv_output",
    "adv_feature",
    "disc",
    "distill",
    *(f"{term}_{domain}" for domain in ("source", "target") for term in losses.DISTILL_TERMS),
)


def reported_metrics(cfg: ExperimentConfig) -> list[str]:
    """Every metric name an evaluation of ``cfg`` may report (``report`` and Tune): mIoU,
    pixel accuracy, the step, learning rate and seconds per step, per-class IoU, the source
    dataset's protocols (SYNTHIA: ``miou16``, ``miou13``) and the loss terms."""
    names = ["miou", "pixel_acc", "step", "lr", "sec_per_step", "raw/miou", "raw/pixel_acc"]
    names += list(protocols(cfg))
    names += [f"iou/{name.replace(' ', '_')}" for name in CLASS_NAMES]
    return names + [f"loss/{term}" for term in LOSS_TERMS]


def build_network(spec: dict[str, Any]) -> torch.nn.Module:
    extra = {"output_stride": spec["output_stride"]} if "output_stride" in spec else {}
    return create_model(spec["name"], num_classes=spec["num_classes"], width=spec["width"], **extra)


def spec_of(model: ModelConfig, num_classes: int = NUM_CLASSES) -> dict[str, Any]:
    """The checkpoint description of the network ``model`` (``models.teacher``/``student``)."""
    return ckpt.network_spec(model.name, model.width, num_classes, model.output_stride)


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
    teacher is checked against its manifest first (``dakd.da_teacher.check_teacher``)."""
    from dakd.da_teacher import check_teacher

    check_teacher(cfg)
    spec = spec_of(cfg.models.teacher)
    state = ckpt.load(cfg.teacher)
    teacher = build_network(spec)
    ckpt.load_network(teacher, state, spec, cfg.teacher)
    teacher.eval().requires_grad_(False)
    return teacher.to(device)


def _no_switch(model):
    return contextlib.nullcontext()


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


def poly_lr(base: float, step: int, total: int, power: float) -> float:
    return base * (1.0 - step / total) ** power


def evaluate_on(
    model, val, cfg: ExperimentConfig, device, world: World | None = None
) -> SegMetrics:
    """Evaluate on the val split; data-parallel processes each take a share of the images and
    sum their confusion matrices (the result equals one process's evaluation exactly)."""
    world = world or current_world()
    batches = eval_batches(
        val, cfg.data.val_batch_size, cfg.data.val_size, rank=world.rank, world_size=world.size
    )
    return evaluate(model, batches, device=device)


def evaluate_checkpoint(path, overrides: dict[str, Any] | None = None):
    """Evaluate a checkpoint's network on its experiment's target val split.

    ``overrides`` (dotted keys) change the experiment, e.g. ``{"data.target": "dashcam"}``.
    Returns the resolved config, the network description and the metrics.
    """
    model, state = network_from_checkpoint(path)
    # evaluation needs neither the teacher nor the initial weights of the run
    base = {**state["config"], "stage": "source_only", "init": "", "teacher": ""}
    cfg = from_dict(base, overrides or {})
    device = resolve_device(cfg.train.device)
    return cfg, state["network"], evaluate_on(model.to(device), val_dataset(cfg), cfg, device)


# -- the teacher-output cache (dakd.teacher_cache) ---------------------------------------------


def distill_reads(cfg: ExperimentConfig) -> dict[str, int]:
    """Per domain (``source``, ``target``), how many samples the teacher predicts in a run of
    ``cfg`` (every step of a phase that distils on the domain reads a global batch)."""
    reads = {"source": 0, "target": 0}
    if not STAGES[cfg.stage].distill:
        return reads
    for step in range(cfg.train.steps):
        phase = phase_at(cfg.paradigm, step, cfg.train.steps, cfg.distill.sequential_split)
        reads["source"] += cfg.data.batch_size if phase.source else 0
        reads["target"] += cfg.data.batch_size if phase.target else 0
    return reads


def distill_domains(cfg: ExperimentConfig) -> tuple[str, ...]:
    """The domains the paradigm distils on at some step."""
    phases = paradigm_phases(cfg.paradigm, cfg.distill.sequential_split)
    return tuple(
        role for role in ("source", "target") if any(getattr(phase, role) for phase in phases)
    )


@dataclass(frozen=True)
class CacheDecision:
    """Whether a domain's teacher outputs come from the cache: ``use`` (read it), ``build``
    (make it when missing), ``exact`` (it equals the live teacher), ``notice`` (one line)."""

    use: bool
    build: bool
    exact: bool
    notice: str = ""


def cache_decision(cfg: ExperimentConfig, dataset, role: str, reads: int) -> CacheDecision:
    """``teacher_cache.mode`` applied to one domain of ``cfg`` (see ``TeacherCacheConfig``)."""
    tc = cfg.teacher_cache
    if tc.mode == "off":
        return CacheDecision(False, False, False)
    geometry, geometry_exact = tcache.geometry_of(dataset)
    photometric = [key for key in ("color_jitter", "grayscale") if getattr(cfg.data, key) > 0]
    reasons = []
    if photometric:
        reasons.append(
            " and ".join(f"data.{k}" for k in photometric) + " (photometric augmentation: the "
            "teacher would see other pixels than the stored images)"
        )
    if not geometry_exact:
        reasons.append(
            "random scale and crop of real data (applied to the stored maps with the same "
            "geometry, RoIAlign, as ReLabel does; the teacher on the crop itself sees its borders)"
        )
    exact = not reasons
    if tc.mode == "on":
        notice = (
            f"teacher_cache.mode=on: the {role} domain's cached teacher outputs approximate the "
            f"live teacher: {'; '.join(reasons)}"
            if reasons
            else ""
        )
        return CacheDecision(True, True, exact, notice)
    if not exact:
        notice = (
            f"teacher_cache: off for the {role} domain, since {'; '.join(reasons)} cannot be "
            "cached exactly (teacher_cache.mode: on uses it anyway)"
        )
        return CacheDecision(False, False, False, notice)
    # auto: read it when it is there; make it when this run alone reads more teacher outputs
    # than it holds (a sweep builds it as a stage, for all of its trials)
    variants = 2 if cfg.data.hflip else 1
    return CacheDecision(True, reads >= len(dataset) * variants, True)


def cache_spec(
    cfg: ExperimentConfig, dataset, role: str, device: torch.device, speed: Speed
) -> tcache.CacheSpec:
    """What decides the cached teacher outputs of ``role``'s training images in a run of
    ``cfg`` on ``device`` (the key of the cache)."""
    compute: dict[str, Any] = {
        "device": device.type,
        "amp": str(speed.amp_dtype).removeprefix("torch.") if speed.amp_dtype else "fp32",
        "channels_last": speed.channels_last,
        "compile": speed.compile,
    }
    if device.type == "cpu":
        # on CPU the thread count changes the order of float reductions (as for fingerprints)
        compute["threads"] = cfg.train.threads or torch.get_num_threads()
    bn = "source" if role == "source" and cfg.train.bn_stats == "domain" else "own"
    return tcache.CacheSpec(
        teacher_sha256=tcache.file_sha256(cfg.teacher),
        teacher_network=spec_of(cfg.models.teacher),
        dataset=tcache.dataset_identity(dataset),
        variants=2 if cfg.data.hflip else 1,
        bn=bn,
        compute=compute,
        storage=tcache.Storage(cfg.teacher_cache.dtype, cfg.teacher_cache.topk),
    )


def teacher_forward(cfg: ExperimentConfig, teacher, teacher_step, role: str, device, speed):
    """The frozen teacher's raw outputs (its own stride) on images of ``role``'s domain, as a
    DAKD step computes them: mixed precision and memory format of ``speed``, and the BatchNorm
    statistics of the domain (``train.bn_stats``). What the cache stores."""
    memory_format = torch.channels_last if speed.channels_last else torch.contiguous_format
    autocast = (
        torch.autocast(device.type, dtype=speed.amp_dtype)
        if speed.amp_dtype is not None
        else contextlib.nullcontext()
    )

    def forward(images: torch.Tensor) -> dict[str, torch.Tensor]:
        images = images.to(device, non_blocking=True, memory_format=memory_format)
        with torch.no_grad(), autocast, bn_domain(teacher, role, cfg.train.bn_stats):
            return teacher_step(images)

    return forward


def _cache_setting(cfg: ExperimentConfig, role: str):
    world = current_world()
    device = resolve_device(cfg.train.device, world)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    speed, _ = speed_settings(cfg.train, device, world)
    dataset = training_dataset(cfg, role)
    return world, device, speed, dataset, cache_spec(cfg, dataset, role, device, speed)


def _cache_summary(cached: tcache.TeacherCache, seconds: float, built: bool) -> dict[str, Any]:
    files = [cached.folder / n for shard in cached.manifest["shards"] for n in shard["files"]]
    return {
        "key": cached.manifest["key"],
        "folder": str(cached.folder),
        "label": tcache.CacheSpec.label_of(cached.spec),
        "entries": cached.entries,
        "bytes": sum(f.stat().st_size for f in files),
        "seconds": seconds,
        "built": built,
    }


def teacher_cache_folder(cfg: ExperimentConfig, role: str) -> Path:
    """Where the teacher-output cache of ``role`` for runs of ``cfg`` lives (its key's folder)."""
    *_, spec = _cache_setting(cfg, role)
    return Path(cfg.teacher_cache.dir) / spec.key


def find_teacher_cache(cfg: ExperimentConfig, role: str) -> dict[str, Any] | None:
    """The summary of the complete, intact teacher-output cache for ``role`` in runs of
    ``cfg``, or None when it has to be built."""
    *_, spec = _cache_setting(cfg, role)
    cached = tcache.open_cache(cfg.teacher_cache.dir, spec)
    return None if cached is None else _cache_summary(cached, 0.0, False)


def build_teacher_cache(
    cfg: ExperimentConfig, role: str, progress: bool = True, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Build (or find) the teacher-output cache of ``role``'s training images for runs of
    ``cfg`` (a DAKD config with its teacher checkpoint): what a sweep's cache stage runs.
    Returns a summary (key, folder, entries, bytes, seconds, whether it was built)."""
    world, device, speed, dataset, spec = _cache_setting(cfg, role)
    root = Path(cfg.teacher_cache.dir)
    tic = time.perf_counter()
    cached = tcache.open_cache(root, spec)
    built = cached is None
    if built:
        teacher = load_teacher(cfg, device)
        if speed.channels_last:
            teacher.to(memory_format=torch.channels_last)
        step = torch.compile(teacher) if speed.compile else teacher
        forward = teacher_forward(cfg, teacher, step, role, device, speed)
        batch = max(cfg.data.batch_size // world.size, 2)
        cached = tcache.ensure(root, spec, dataset, forward, batch, progress=progress, log=log)
    return _cache_summary(cached, time.perf_counter() - tic, built)


class Trainer:
    """Holds the models, optimisers and the step; ``train()`` below is the usual way in.

    ``model``, ``discriminators`` and ``teacher`` are the plain networks (what checkpoints
    hold); ``student`` and ``disc_step`` are what a step calls: the same networks behind their
    ``DistributedDataParallel`` wrapper when data-parallel, and ``torch.compile`` when asked.
    """

    def __init__(self, cfg: ExperimentConfig, device: torch.device | None = None):
        self.cfg = cfg
        self.stage = STAGES[cfg.stage]
        self.world = world = current_world()
        check_world(cfg, world)
        self.device = device or resolve_device(cfg.train.device, world)
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        seed_everything(cfg.seed, cfg.train.deterministic)
        self.speed, notices = speed_settings(cfg.train, self.device, world)
        if world.is_main:
            for notice in notices:
                print(f"note: {notice}", file=sys.stderr)
        if self.speed.cudnn_benchmark:
            torch.backends.cudnn.benchmark = True
        self.source, self.target, self.val = build_data(cfg, world.rank, world.size)
        self.memory_format = (
            torch.channels_last if self.speed.channels_last else torch.contiguous_format
        )

        trained = cfg.trained_model
        self.spec = spec_of(trained)
        self.model = build_network(self.spec)
        self.pretrained: PretrainedReport | None = None
        if cfg.init:
            ckpt.load_network(self.model, ckpt.load(cfg.init), self.spec, cfg.init)
        elif trained.pretrained:
            role = "teacher" if trained is cfg.models.teacher else "student"
            key = f"models.{role}.pretrained"
            self.pretrained = load_pretrained(
                self.model, trained.pretrained, key, network_of(trained)
            )
            if world.is_main:
                print(f"note: {self.pretrained}", file=sys.stderr)
        # a stage that sees both domains keeps the target's BatchNorm statistics for the target
        # (train.bn_stats, dakd.models.domain_bn); one that sees a single domain has only those
        self.bn_stats = cfg.train.bn_stats
        self.two_domains = self.stage.supervised_on == "source" and (
            self.stage.adversarial or self.stage.distill
        )
        if self.two_domains and self.bn_stats == "domain":
            add_source_statistics(self.model)
        if self.speed.sync_bn:
            self.model = sync_batchnorm(self.model)
        self.model.to(self.device, memory_format=self.memory_format)
        # train.ema: an exponential moving average of the weights (torch's AveragedModel; its
        # BatchNorm statistics come from the raw network at each evaluation, see evaluate)
        self.ema: AveragedModel | None = None
        if cfg.train.ema:
            average = (
                mean_teacher_average(cfg.train.ema)
                if cfg.train.ema_warmup
                else get_ema_multi_avg_fn(cfg.train.ema)
            )
            self.ema = AveragedModel(self.model, multi_avg_fn=average, use_buffers=False)
        # the teacher's outputs come from the cache where a domain has one; the live teacher
        # is loaded only for a domain without one (or to build one), and not kept when every
        # domain is cached: such a run holds the student alone
        self.teacher: torch.nn.Module | None = None
        self.teacher_step: torch.nn.Module | None = None
        self.teacher_caches: dict[str, tcache.TeacherCache] = {}
        if self.stage.distill:
            self.teacher_caches = self._teacher_caches()
            if set(self.teacher_caches) >= set(distill_domains(cfg)):
                if self.teacher is None:
                    # building the teacher draws its initial weights from the run's random
                    # stream (then overwritten by the checkpoint); a run that never builds it
                    # draws the same numbers here, so the discriminators that follow start as
                    # in a live-teacher run, and runs from before the cache reproduce
                    with torch.no_grad():
                        build_network(spec_of(cfg.models.teacher))
                self.teacher = self.teacher_step = None
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
            else:
                self._live_teacher()
        self.discriminators = torch.nn.ModuleDict()
        if self.stage.adversarial:
            for level in LEVELS:
                self.discriminators[level] = Discriminator(
                    NUM_CLASSES, ndf=cfg.models.discriminator_ndf
                )
            self.discriminators.to(self.device, memory_format=self.memory_format)

        # what a step calls: DDP (gradient averaging) and torch.compile around the networks;
        # the segmenter's adversarial term reads the discriminators without their wrapper (it
        # needs no gradient of theirs)
        self.ddp_modules: list[DistributedDataParallel] = []
        self.student = self._parallel(self.model)
        self.disc_step = {level: self._parallel(d) for level, d in self.discriminators.items()}
        if self.speed.compile:
            self.student = torch.compile(self.student)

        o = cfg.optim
        self.optimizer = torch.optim.SGD(
            self.model.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay
        )
        self.d_optimizer = (
            torch.optim.Adam(
                self.discriminators.parameters(), lr=o.disc_lr, betas=tuple(o.disc_betas)
            )
            if self.stage.adversarial
            else None
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.speed.grad_scaling)
        self.step = 0
        self.history: list[dict[str, float]] = []

    def _parallel(self, module: torch.nn.Module) -> torch.nn.Module:
        if not self.world.distributed:
            return module
        ids = [self.device.index] if self.device.type == "cuda" else None
        wrapped = DistributedDataParallel(module, device_ids=ids)
        self.ddp_modules.append(wrapped)
        return wrapped

    def autocast(self):
        """Mixed precision for a step's forward passes and losses (``train.amp``)."""
        if self.speed.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.speed.amp_dtype)

    # -- one step ------------------------------------------------------------------------------
    def _images(self, batch) -> torch.Tensor:
        return batch["image"].to(self.device, non_blocking=True, memory_format=self.memory_format)

    def _forward(self, model, images: torch.Tensor) -> dict[str, torch.Tensor]:
        size = images.shape[-2:]
        out = model(images)
        return {level: losses.upsample(out[level], size) for level in LEVELS}

    def _teacher_caches(self) -> dict[str, tcache.TeacherCache]:
        """Open (or build, see :func:`cache_decision`) the teacher-output cache of each domain
        the paradigm distils on."""
        cfg, main = self.cfg, self.world.is_main
        if cfg.teacher_cache.mode == "off" or not Path(cfg.teacher).is_file():
            return {}  # a missing teacher is reported by the live teacher's loading
        reads = distill_reads(cfg)
        caches = {}
        root = Path(cfg.teacher_cache.dir)
        for role in distill_domains(cfg):
            stream = self.source if role == "source" else self.target
            dataset = self._stream_dataset(stream)
            decision = cache_decision(cfg, dataset, role, reads[role])
            if decision.notice and main:
                print(f"note: {decision.notice}", file=sys.stderr)
            if not decision.use:
                continue
            spec = cache_spec(cfg, dataset, role, self.device, self.speed)
            cached = tcache.open_cache(root, spec)
            if cached is None and decision.build:
                try:
                    cached = tcache.ensure(
                        root,
                        spec,
                        dataset,
                        self._teacher_raw(role),
                        max(cfg.data.batch_size // self.world.size, 2),
                        progress=cfg.train.progress and main,
                        log=lambda line: print(line, file=sys.stderr) if main else None,
                    )
                except tcache.CacheFullError as err:
                    if cfg.teacher_cache.if_full != "live":
                        raise
                    if main:
                        print(f"note: {err}; running the live teacher", file=sys.stderr)
                    continue
            if cached is not None:
                caches[role] = cached
        return caches

    def _live_teacher(self) -> None:
        """Load the frozen teacher (once)."""
        if self.teacher is not None:
            return
        self.teacher = load_teacher(self.cfg, self.device)
        self.teacher.to(memory_format=self.memory_format)
        self.teacher_step = torch.compile(self.teacher) if self.speed.compile else self.teacher

    def _teacher_raw(self, role: str):
        """The live teacher's raw outputs on images of ``role``'s domain (loaded on first use)."""

        def forward(images: torch.Tensor) -> dict[str, torch.Tensor]:
            self._live_teacher()
            raw = teacher_forward(
                self.cfg, self.teacher, self.teacher_step, role, self.device, self.speed
            )
            return raw(images)

        return forward

    def _teacher_predict(self, role: str, batch) -> dict[str, torch.Tensor]:
        """The teacher's predictions on a batch, upsampled to the images: read from the cache
        when the domain has one, else computed by the live teacher."""
        cache = self.teacher_caches.get(role)
        if cache is None:
            bn = self._source_statistics if role == "source" else _no_switch
            with bn(self.teacher):
                return self._forward(self.teacher_step, self._images(batch))
        size = batch["image"].shape[-2:]
        if "geometry" in batch and tcache.geometry_of(self._dataset_of(role))[0] == "crop":
            raw = self._cached_crops(cache, role, batch)
        else:
            raw = cache.lookup(batch["index"], batch["flip"])
        return {
            level: losses.upsample(raw[level].to(self.device, non_blocking=True), size)
            for level in LEVELS
        }

    def _dataset_of(self, role: str):
        return self._stream_dataset(self.source if role == "source" else self.target)

    def _cached_crops(self, cache: tcache.TeacherCache, role: str, batch):
        """Stored maps cut as the real-data samples were cut (random scale, crop, flip)."""
        dataset = self._dataset_of(role)
        boxes, image_size = [], None
        for index, flip, draws in zip(
            batch["index"].tolist(), batch["flip"].tolist(), batch["geometry"], strict=True
        ):
            (x0, y0, x1, y1), image_size = dataset.crop_box(index, draws.tolist())
            if flip:  # the mirrored stored image: the box mirrors too
                x0, x1 = image_size[1] - x1, image_size[1] - x0
            boxes.append((x0, y0, x1, y1))
        h, w = batch["image"].shape[-2:]
        strides = {"output": self.cfg.models.teacher.output_stride, "feature": 8}
        sizes = {level: (math.ceil(h / s), math.ceil(w / s)) for level, s in strides.items()}
        return cache.crops(
            batch["index"],
            batch["flip"],
            torch.tensor(boxes, dtype=torch.float32),
            sizes,
            image_size,
        )

    def _source_statistics(self, model):
        """The BatchNorm statistics a source batch sees (and, in training, updates)."""
        if not self.two_domains:
            return contextlib.nullcontext()
        return bn_domain(model, "source", self.bn_stats)

    def _segmentation(self, pred, labels) -> tuple[torch.Tensor, torch.Tensor]:
        return losses.seg_ce(pred["output"], labels), losses.seg_ce(pred["feature"], labels)

    def _check_finite(self, total: torch.Tensor, terms: dict[str, torch.Tensor]) -> None:
        """Stop on a NaN or infinite loss; every process stops at the same step."""
        value = total.detach().float().reshape(1).clone()  # all_reduce works in place
        finite_here = math.isfinite(value.item())
        if self.world.distributed:
            dist.all_reduce(value)  # non-finite anywhere makes the sum non-finite everywhere
        if not math.isfinite(value.item()):
            shown = ", ".join(f"{k}={v.item():.4g}" for k, v in terms.items())
            where = f" on another process (this is rank {self.world.rank})" if finite_here else ""
            raise NonFiniteLossError(
                f"step {self.step}: the training loss is not finite{where} ({shown})"
            )

    def close(self) -> None:
        """Stop the threads that build batches ahead (``data.prefetch``); idempotent."""
        for stream in (self.source, self.target):
            if isinstance(stream, Prefetcher):
                stream.close()

    def train_step(self) -> dict[str, torch.Tensor]:
        """One optimisation step of the segmenter (and the discriminators). Returns loss terms."""
        cfg, stage, step = self.cfg, self.stage, self.step
        lw = cfg.loss
        lr = poly_lr(cfg.optim.lr, step, cfg.train.steps, cfg.optim.poly_power)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if self.d_optimizer is not None:
            d_lr = poly_lr(cfg.optim.disc_lr, step, cfg.train.steps, cfg.optim.poly_power)
            for group in self.d_optimizer.param_groups:
                group["lr"] = d_lr

        self.model.train()
        terms: dict[str, torch.Tensor] = {}
        needs_source = stage.supervised_on == "source"
        needs_target = stage.supervised_on == "target" or stage.adversarial
        src = self.source.batch(step) if needs_source else None
        tgt = self.target.batch(step) if needs_target else None
        with self.autocast():
            pred_s = None
            if src:
                with self._source_statistics(self.model):
                    pred_s = self._forward(self.student, self._images(src))
            pred_t = self._forward(self.student, self._images(tgt)) if tgt else None

            if stage.supervised_on == "source":
                seg, seg_aux = self._segmentation(pred_s, src["label"].to(self.device))
            else:
                seg, seg_aux = self._segmentation(pred_t, tgt["label"].to(self.device))
            terms["seg"], terms["seg_aux"] = seg, seg_aux
            total = seg + lw.seg_aux * seg_aux

            if stage.adversarial:
                self.discriminators.requires_grad_(False)
                adv = {
                    level: losses.adversarial(
                        self.discriminators[level](F.softmax(pred_t[level], dim=1)),
                        True,
                        lw.adv_kind,
                    )
                    for level in LEVELS
                }
                terms["adv_output"], terms["adv_feature"] = adv["output"], adv["feature"]
                total = total + lw.adv_output * adv["output"] + lw.adv_feature * adv["feature"]

            if stage.distill:
                phase = phase_at(cfg.paradigm, step, cfg.train.steps, cfg.distill.sequential_split)
                args = (cfg.distill.levels, lw.temperature, lw.pseudo_threshold)
                weights = {"kl": lw.kl, "mse": lw.mse, "pseudo": lw.pseudo}
                teacher_pred = {}
                with torch.no_grad():
                    for name, on, batch in (
                        ("source", phase.source, src),
                        ("target", phase.target, tgt),
                    ):
                        if on:
                            teacher_pred[name] = self._teacher_predict(name, batch)
                per_domain = {}
                for name, pred in (("source", pred_s), ("target", pred_t)):
                    if name in teacher_pred:
                        per_domain[name] = losses.distill_terms(pred, teacher_pred[name], *args)
                        for term, value in per_domain[name].items():
                            terms[f"{term}_{name}"] = value
                distill = losses.distillation_objective(
                    per_domain.get("source"), per_domain.get("target"), weights, lw.target
                )
                terms["distill"] = distill
                total = total + distill

        terms["total"] = total
        self._check_finite(total, terms)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        self.scaler.step(self.optimizer)

        if stage.adversarial:
            self.discriminators.requires_grad_(True)
            self.d_optimizer.zero_grad(set_to_none=True)
            d_loss = 0.0
            with self.autocast():
                for level in LEVELS:
                    d = self.disc_step[level]
                    d_src = losses.adversarial(
                        d(F.softmax(pred_s[level].detach(), dim=1)), True, lw.adv_kind
                    )
                    d_tgt = losses.adversarial(
                        d(F.softmax(pred_t[level].detach(), dim=1)), False, lw.adv_kind
                    )
                    d_loss = d_loss + (d_src + d_tgt) / 2
            self.scaler.scale(d_loss).backward()
            self.scaler.step(self.d_optimizer)
            terms["disc"] = d_loss
        self.scaler.update()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        self.step += 1
        return {k: v.detach() for k, v in terms.items()}

    # -- evaluation and checkpoints --------------------------------------------------------------
    def sync_buffers(self) -> None:
        """Give every process rank 0's BatchNorm running statistics (DDP does so before each
        forward; after the last step each process has updated its own from its share)."""
        if self.world.distributed:
            for buffer in self.model.buffers():
                dist.broadcast(buffer, src=0)

    def _stream_dataset(self, stream):
        sampler = stream.sampler if isinstance(stream, Prefetcher) else stream
        return sampler.dataset

    def precise_bn(self, model: torch.nn.Module | None = None) -> None:
        """Re-estimate the BatchNorm statistics with the current weights (``train.precise_bn``
        training images per pair, the first ones of each split, the same on every process):
        the pair a network is evaluated with from its evaluation domain (the target in stages
        that see both domains, else the one domain it trains on), the source pair (``domain``
        mode) from source images, and in ``blended`` mode the one pair from both halves.
        Running averages lag the weights; this is the statistics of the network as it is (the
        PreciseBN of pycls and Detectron2). Training itself never reads running statistics, so
        the trajectory is unchanged; evaluations and stored weights use these. ``model``: the
        network to re-estimate (default: the trained one; the weight average is another)."""
        n = self.cfg.train.precise_bn
        if not n:
            return
        size = self.cfg.data.val_batch_size

        def images(stream, count):
            dataset = self._stream_dataset(stream)
            for batch in eval_batches(dataset, size, count):
                yield self._images(batch)

        model = self.model if model is None else model
        if not self.two_domains:
            own = self.source if self.stage.supervised_on == "source" else self.target
            reestimate(model, images(own, n))
        elif self.bn_stats == "blended":
            half = max(n // 2, 1)
            reestimate(model, itertools.chain(images(self.source, half), images(self.target, half)))
        else:
            reestimate(model, images(self.target, n))
            if self.bn_stats == "domain":
                with bn_domain(model, "source", "domain"):
                    reestimate(model, images(self.source, n))

    def evaluate_raw(self) -> SegMetrics:
        """Evaluate the trained network's own weights (precise BN first when asked)."""
        self.precise_bn()
        self.sync_buffers()
        return evaluate_on(self.model, self.val, self.cfg, self.device, self.world)

    def evaluate(self) -> SegMetrics:
        """Evaluate the network this run reports and stores: the weight average when
        ``train.ema`` is on (call :meth:`evaluate_raw` first: the average takes the raw
        network's BatchNorm statistics, then re-estimates them for its own weights when
        ``train.precise_bn`` is on), else the trained network itself."""
        if self.ema is None:
            return self.evaluate_raw()
        averaged = self.ema.module
        with torch.no_grad():
            for mine, raw in zip(averaged.buffers(), self.model.buffers(), strict=True):
                mine.copy_(raw)
        self.precise_bn(averaged)
        return evaluate_on(averaged, self.val, self.cfg, self.device, self.world)

    def weights(self) -> dict[str, torch.Tensor]:
        """The weights later stages load: the average when ``train.ema`` is on."""
        return (self.model if self.ema is None else self.ema.module).state_dict()

    def state(self) -> dict[str, Any]:
        state = {
            "network": self.spec,
            "config": self.cfg.to_dict(),
            "stage": self.cfg.stage,
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "history": self.history,
        }
        if self.d_optimizer is not None:
            state["discriminators"] = self.discriminators.state_dict()
            state["d_optimizer"] = self.d_optimizer.state_dict()
        if self.scaler.is_enabled():
            state["grad_scaler"] = self.scaler.state_dict()
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        return state

    def load_state(self, state: dict[str, Any], path) -> None:
        ckpt.load_network(self.model, state, self.spec, path)
        if state.get("stage") != self.cfg.stage:
            raise ckpt.CheckpointError(
                f"checkpoint {path} is from stage {state.get('stage')!r}, not {self.cfg.stage!r}"
            )
        self.optimizer.load_state_dict(state["optimizer"])
        if self.d_optimizer is not None:
            self.discriminators.load_state_dict(state["discriminators"])
            self.d_optimizer.load_state_dict(state["d_optimizer"])
        if self.scaler.is_enabled() and "grad_scaler" in state:
            self.scaler.load_state_dict(state["grad_scaler"])
        if self.ema is not None:
            if "ema" not in state:
                raise ckpt.CheckpointError(
                    f"checkpoint {path} has no weight average, but train.ema is on"
                )
            self.ema.load_state_dict(state["ema"])
        torch.set_rng_state(state["torch_rng"])
        self.step = int(state["step"])
        self.history = list(state.get("history", []))


def _mean_terms(sums: dict[str, torch.Tensor], count: int, world: World) -> dict[str, float]:
    """Mean loss terms since the last report, averaged over the data-parallel processes."""
    if not sums:
        return {}
    keys = sorted(sums)
    means = torch.stack([sums[k].float() for k in keys]) / max(count, 1)
    if world.distributed:
        dist.all_reduce(means)
        means /= world.size
    return {f"loss/{k}": v for k, v in zip(keys, means.tolist(), strict=True)}


def _same_step_everywhere(step: int, world: World, device: torch.device, last: Path) -> None:
    """Every process must resume from the same step (they read ``last.pt`` from one folder)."""
    if not world.distributed:
        return
    steps = torch.tensor([step, -step], device=device)
    dist.all_reduce(steps, op=dist.ReduceOp.MAX)
    if int(steps[0]) != -int(steps[1]):
        raise ckpt.CheckpointError(
            f"data-parallel processes start from different steps ({-int(steps[1])} to "
            f"{int(steps[0])}); every process must see the same {last} (a shared filesystem)"
        )


def train(
    cfg: ExperimentConfig,
    report: Report | None = None,
    resume: bool = True,
    stop_after: int | None = None,
) -> TrainResult:
    """Train ``cfg`` to ``cfg.train.steps`` steps; resume from ``run_dir/last.pt`` if it exists.

    ``report(metrics, checkpoint)`` is called after every evaluation with the metrics in percent
    (``miou``, ``pixel_acc``, ``iou/<class>``), the mean loss terms since the last report
    (``loss/<term>``), ``step`` and ``lr``. ``stop_after`` ends the call early after that many
    steps of this call (used to test resumption); the checkpoint then holds the exact state.

    Data-parallel (an initialised default process group): every process calls ``train`` with
    the same config; metrics (but ``sec_per_step``) are the same on every process (the
    confusion matrix and the loss terms are reduced over all of them); rank 0 alone writes ``run_dir`` and shows progress;
    ``report`` is called on every process, with the checkpoint path on rank 0 and None
    elsewhere (an adapter that logs somewhere should log where the path is given). Every
    process reads ``last.pt`` to resume, so ``run_dir`` must be on a filesystem they all see.
    ``train`` returns on every process once rank 0's files are written.
    """
    for key in ("teacher", "init"):
        if getattr(cfg, key) == "auto":
            raise ConfigError(
                f"{key}: 'auto' names a reused stage; resolve it first "
                "(python -m dakd train or the sweep do; in code: dakd.pipeline.with_stages)"
            )
    trainer = Trainer(cfg)
    world = trainer.world
    main = world.is_main
    run_dir = cfg.run_dir
    last = run_dir / "last.pt"
    if resume and last.exists():
        trainer.load_state(ckpt.load(last), last)
    _same_step_everywhere(trainer.step, world, trainer.device, last)
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    t = cfg.train
    start = trainer.step
    stop = t.steps if stop_after is None else min(t.steps, start + stop_after)
    sums: dict[str, torch.Tensor] = {}
    count = 0
    metrics: dict[str, float] = dict(trainer.history[-1]) if trainer.history else {}
    bar = tqdm(
        total=t.steps,
        initial=start,
        desc=f"{cfg.stage}:{cfg.name}",
        disable=not (t.progress and main),
        dynamic_ncols=True,
        leave=False,
    )
    step_time = 0.0
    evaluation: SegMetrics | None = None
    try:
        while trainer.step < stop:
            tic = time.perf_counter()
            terms = trainer.train_step()
            step_time += time.perf_counter() - tic
            for k, v in terms.items():
                sums[k] = sums[k] + v if k in sums else v.clone()
            count += 1
            bar.update(1)
            if trainer.step % t.log_interval == 0:
                bar.set_postfix(
                    loss=f"{terms['total'].item():.3f}", miou=metrics.get("miou", float("nan"))
                )
            if trainer.step % t.eval_interval == 0 or trainer.step == t.steps:
                raw = trainer.evaluate_raw() if trainer.ema is not None else None
                result = evaluation = trainer.evaluate()
                metrics = {
                    "step": trainer.step,
                    "lr": trainer.optimizer.param_groups[0]["lr"],
                    "sec_per_step": step_time / max(count, 1),
                    **metrics_of(result, cfg),
                    **_mean_terms(sums, count, world),
                }
                if raw is not None:
                    metrics["raw/miou"] = 100.0 * raw.miou
                    metrics["raw/pixel_acc"] = 100.0 * raw.pixel_accuracy
                trainer.history.append(metrics)
                sums, count, step_time = {}, 0, 0.0
                if main:
                    ckpt.save(trainer.state(), last)
                    with (run_dir / "metrics.jsonl").open("a") as handle:
                        handle.write(json.dumps(metrics) + "\n")
                bar.set_postfix(miou=f"{metrics['miou']:.2f}")
                if report is not None:
                    report(dict(metrics), last if main else None)
    finally:
        bar.close()
        trainer.close()
    if trainer.step < t.steps and count and main:
        ckpt.save(trainer.state(), last)  # an early stop keeps its exact state
    if trainer.step == t.steps and main:
        # the final weights alone: what later stages load (no optimiser or discriminator state)
        keep = ("network", "config", "stage", "step", "model")
        final = {k: v for k, v in trainer.state().items() if k in keep}
        final["model"] = trainer.weights()
        final["metrics"] = {k: float(v) for k, v in metrics.items()}
        final["parameters"] = count_parameters(trainer.model)
        ckpt.save(final, run_dir / "model.pt")
    if world.distributed:
        dist.barrier()  # no process moves on (e.g. to a stage that loads model.pt) before rank 0
    return TrainResult(
        metrics=metrics,
        checkpoint=last,
        history=trainer.history,
        evaluation=evaluation,
        cached_domains=tuple(sorted(trainer.teacher_caches)),
    )
