"""Where a DAKD step's teacher outputs come from: the frozen teacher run live, or the
teacher-output cache (``dakd.teacher.cache``) built once per teacher, image and transform.

``dakd.teacher.cache`` stores and checks entries and knows nothing of the config; this module
reads the config: which domains a paradigm distils on and how many outputs a run reads
(:func:`distill_reads`), whether a domain's cache is used, built or exact
(:func:`cache_decision`), what keys it (:func:`cache_spec`, and :data:`CACHE_CONFIG_KEYS`, the
config keys that key reads, from which the sweep plans its caches), and, for the trainer,
:class:`TeacherOutputs`, the teacher's predictions on a batch from whichever source a domain has.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dakd import losses
from dakd.config import ExperimentConfig
from dakd.models.domain_bn import bn_domain
from dakd.paradigms import LEVELS, STAGES, paradigm_phases, phase_at
from dakd.runtime.builders import build_network, load_teacher, spec_of, training_dataset
from dakd.runtime.device import (
    Speed,
    hold_in_amp_dtype,
    set_threads,
    speed_settings,
    training_device,
)
from dakd.runtime.distributed import World, current_world
from dakd.teacher import cache as tcache


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


#: The config keys the cache key of a domain reads besides the ``data.``, ``models.teacher.``
#: and ``teacher_cache.`` sections (see :func:`cache_spec`): the teacher checkpoint and the
#: compute setting. Two runs that agree on these share a cache.
CACHE_CONFIG_KEYS = (
    "teacher",
    "train.device",
    "train.threads",
    "train.amp",
    "train.bn_stats",
    "train.channels_last",
    "train.compile",
)
CACHE_CONFIG_SECTIONS = ("data.", "models.teacher.", "teacher_cache.")


def cache_setting(cfg: ExperimentConfig) -> dict[str, Any]:
    """The part of ``cfg`` that decides its teacher-output caches (flattened, dotted keys)."""
    return {
        k: v
        for k, v in cfg.flat().items()
        if k.startswith(CACHE_CONFIG_SECTIONS) or k in CACHE_CONFIG_KEYS
    }


def teacher_forward(cfg: ExperimentConfig, teacher, teacher_step, role: str, device, speed):
    """The frozen teacher's raw outputs (its own stride) on images of ``role``'s domain, as a
    DAKD step computes them: mixed precision and memory format of ``speed``, and the BatchNorm
    statistics of the domain (``train.bn_stats``). What the cache stores."""
    memory_format = speed.memory_format
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


@dataclass(frozen=True)
class CacheInputs:
    """What finding or building the teacher-output cache of one domain of a run needs, resolved
    in this process: the process world, the run's device and speed switches, the domain's
    training images and the cache's key (``spec``)."""

    world: World
    device: torch.device
    speed: Speed
    dataset: Any
    spec: tcache.CacheSpec


def _resolve_cache_inputs(cfg: ExperimentConfig, role: str) -> CacheInputs:
    """The :class:`CacheInputs` of ``role``'s domain in a run of ``cfg`` in this process (torch's
    thread count set as the run sets it: on CPU it enters the key)."""
    world = current_world()
    device = training_device(cfg.train.device, world)
    set_threads(cfg.train.threads)
    speed, _ = speed_settings(cfg.train, device, world)
    dataset = training_dataset(cfg, role)
    return CacheInputs(world, device, speed, dataset, cache_spec(cfg, dataset, role, device, speed))


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
    return Path(cfg.teacher_cache.dir) / _resolve_cache_inputs(cfg, role).spec.key


def find_teacher_cache(cfg: ExperimentConfig, role: str) -> dict[str, Any] | None:
    """The summary of the complete, intact teacher-output cache for ``role`` in runs of
    ``cfg``, or None when it has to be built."""
    cached = tcache.open_cache(cfg.teacher_cache.dir, _resolve_cache_inputs(cfg, role).spec)
    return None if cached is None else _cache_summary(cached, 0.0, False)


def build_teacher_cache(
    cfg: ExperimentConfig, role: str, progress: bool = True, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Build (or find) the teacher-output cache of ``role``'s training images for runs of
    ``cfg`` (a DAKD config with its teacher checkpoint): what a sweep's cache stage runs.
    Returns a summary (key, folder, entries, bytes, seconds, whether it was built)."""
    inputs = _resolve_cache_inputs(cfg, role)
    device, speed = inputs.device, inputs.speed
    root = Path(cfg.teacher_cache.dir)
    tic = time.perf_counter()
    cached = tcache.open_cache(root, inputs.spec)
    built = cached is None
    if built:
        teacher = hold_in_amp_dtype(load_teacher(cfg, device), speed)
        if speed.channels_last:
            teacher.to(memory_format=torch.channels_last)
        step = torch.compile(teacher) if speed.compile else teacher
        forward = teacher_forward(cfg, teacher, step, role, device, speed)
        batch = max(cfg.data.batch_size // inputs.world.size, 2)
        cached = tcache.ensure(
            root, inputs.spec, inputs.dataset, forward, batch, progress=progress, log=log
        )
    return _cache_summary(cached, time.perf_counter() - tic, built)


def _no_switch(model):
    return contextlib.nullcontext()


def image_size_outputs(model, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """``model``'s logits of both levels on ``images``, upsampled to the images' size (what
    every loss of a step reads)."""
    size = images.shape[-2:]
    out = model(images)
    return {level: losses.upsample(out[level], size) for level in LEVELS}


class TeacherOutputs:
    """The frozen teacher's predictions on a DAKD run's training batches, per domain from the
    teacher-output cache where the domain has one, else from the live teacher.

    The live teacher is loaded only for a domain without a cache (or to build one), and not
    kept when every domain is cached: such a run holds the student alone. ``caches`` maps the
    cached domains to their caches; ``teacher`` is the live teacher or None.
    """

    def __init__(
        self,
        cfg: ExperimentConfig,
        device: torch.device,
        speed: Speed,
        world: World,
        datasets: dict[str, Any],
        source_statistics: Callable,
    ):
        self.cfg, self.device, self.speed, self.world = cfg, device, speed, world
        self.datasets = datasets
        self.source_statistics = source_statistics
        self.memory_format = speed.memory_format
        self.teacher: torch.nn.Module | None = None
        self.teacher_step: torch.nn.Module | None = None
        self.caches = self._open_caches()
        if set(self.caches) >= set(distill_domains(cfg)):
            if self.teacher is None:
                # building the teacher draws its initial weights from the run's random stream
                # (then overwritten by the checkpoint); a run that never builds it draws the
                # same numbers here, so the discriminators that follow start as in a
                # live-teacher run, and runs from before the cache reproduce
                with torch.no_grad():
                    build_network(spec_of(cfg.models.teacher))
            self.teacher = self.teacher_step = None
            if device.type == "cuda":
                torch.cuda.empty_cache()
        else:
            self._live_teacher()

    def _open_caches(self) -> dict[str, tcache.TeacherCache]:
        """Open (or build, see :func:`cache_decision`) the teacher-output cache of each domain
        the paradigm distils on."""
        cfg, main = self.cfg, self.world.is_main
        if cfg.teacher_cache.mode == "off" or not Path(cfg.teacher).is_file():
            return {}  # a missing teacher is reported by the live teacher's loading
        reads = distill_reads(cfg)
        caches = {}
        root = Path(cfg.teacher_cache.dir)
        for role in distill_domains(cfg):
            dataset = self.datasets[role]
            decision = cache_decision(cfg, dataset, role, reads[role])
            if decision.notice and main:
                print(f"note: {decision.notice}", file=sys.stderr)
            if not decision.use:
                continue
            spec = cache_spec(cfg, dataset, role, self.device, self.speed)
            cached = tcache.open_cache(root, spec)
            if cached is None and decision.build:
                cached = self._build(root, spec, dataset, role)
            if cached is not None:
                caches[role] = cached
        return caches

    def _build(self, root: Path, spec: tcache.CacheSpec, dataset, role: str):
        """Build ``role``'s cache with the live teacher; None when the disk is full and
        ``teacher_cache.if_full`` is ``live``."""
        cfg, main = self.cfg, self.world.is_main
        try:
            return tcache.ensure(
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
            return None

    def _live_teacher(self) -> None:
        """Load the frozen teacher (once)."""
        if self.teacher is not None:
            return
        self.teacher = hold_in_amp_dtype(load_teacher(self.cfg, self.device), self.speed)
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

    def raw(self, role: str, batch) -> dict[str, torch.Tensor]:
        """The teacher's maps on a batch of ``role``'s domain at its own strides (each level's
        logit grid), on the trainer's device: read from the cache when the domain has one,
        else computed by the live teacher."""
        cache = self.caches.get(role)
        if cache is None:
            bn = self.source_statistics if role == "source" else _no_switch
            images = batch["image"].to(
                self.device, non_blocking=True, memory_format=self.memory_format
            )
            with bn(self.teacher):
                return self.teacher_step(images)
        if "geometry" in batch and tcache.geometry_of(self.datasets[role])[0] == "crop":
            raw = self.cached_crops(cache, role, batch)
        else:
            raw = cache.lookup(batch["index"], batch["flip"])
        return {level: raw[level].to(self.device, non_blocking=True) for level in LEVELS}

    def predict(self, role: str, batch, levels=LEVELS) -> dict[str, torch.Tensor]:
        """:meth:`raw` upsampled to the images' size (the ``levels`` asked for)."""
        raw, size = self.raw(role, batch), batch["image"].shape[-2:]
        return {level: losses.upsample(raw[level], size) for level in levels}

    def cached_crops(self, cache: tcache.TeacherCache, role: str, batch):
        """Stored maps cut as the real-data samples were cut (random scale, crop, flip)."""
        dataset = self.datasets[role]
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
