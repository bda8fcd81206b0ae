"""What a sweep will run, worked out before Ray starts (``--dry-run`` prints it).

The stages the trials build on or are measured against (trained once, reused by every later
sweep), the teacher-output caches the trials read, and the data and weight files every trial
and stage reads, checked here so that a bad path stops the sweep before anything runs.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dakd.config import ConfigError, ExperimentConfig
from dakd.paradigms import AUTO, AUTO_STAGES
from dakd.recipes.stages import is_fair_baseline
from dakd.sweep.spec.context import SweepContext, stages_of, trial_config
from dakd.sweep.spec.sweep_spec import (
    SpecError,
    SweepSpec,
    describe,
    grid_variants,
    num_trials,
    resolve,
)

SMOKE = {
    "experiment.train.steps": 4,
    "experiment.train.eval_interval": 2,
    "experiment.data.crop_size": [32, 64],
    "experiment.data.batch_size": 2,
    "experiment.data.val_batch_size": 4,
    "experiment.data.val_size": 4,
    "experiment.data.cache_dir": "",
    "experiment.train.precise_bn_images": 8,
}
"""What ``--smoke`` changes: a few steps on tiny crops rendered on the fly (the stages too), and
BatchNorm statistics re-estimated from 8 images instead of hundreds (each one rendered)."""


def smoke(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> SweepSpec:
    """The spec at smoke size: tiny steps and crops, the first seed, at most 2 samples; every
    grid option is kept, so each kind of trial of the spec runs once."""
    from dakd.sweep.spec.sweep_spec import load_spec

    small = load_spec(path, [*(f"{k}={json.dumps(v)}" for k, v in SMOKE.items()), *overrides])
    tune_settings = dataclasses.replace(
        small.tune,
        seeds=small.tune.seeds[:1],
        num_samples=min(small.tune.num_samples, 2),
    )
    stages = {
        **small.stages,
        "train.steps": 4,
        "train.eval_interval": 2,
        "train.threads": 1,
    }
    return dataclasses.replace(small, tune=tune_settings, stages=stages)


@dataclass
class StagePlan:
    config: ExperimentConfig
    done: bool  # its final weights exist: reused, not trained
    #: ``auto`` fields of the config -> the name of the stage that provides them (the fair
    #: baseline starts from the student-DA stage, so it is trained after it)
    needs: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def checkpoint(self) -> Path:
        return self.config.run_dir / "model.pt"

    @property
    def kind(self) -> str:
        """``teacher_da``, ``student_da`` or ``fair baseline``."""
        return "fair baseline" if is_fair_baseline(self.config) else self.config.stage


@dataclass
class CachePlan:
    """A teacher-output cache the trials read (``dakd.teacher.cache``): built as a stage after
    the teacher and before the trials when ``build``, else the trials run the teacher (or read
    a cache an earlier sweep built)."""

    config: ExperimentConfig  # a trial config with its teacher checkpoint and thread count
    role: str  # source or target
    reads: int  # teacher outputs the sweep's trials read from it at most
    entries: int  # what it holds (images x flips)
    build: bool
    reason: str = ""
    done: bool = False  # built by an earlier sweep (checked where the driver can: CPU trials)

    def text(self) -> str:
        domain = self.config.domains[0 if self.role == "source" else 1]
        state = "reuse" if self.done else "cache" if self.build else "live"
        why = f" ({self.reason})" if self.reason else ""
        return (
            f"  {state:5s} teacher outputs on {domain} train, seed={self.config.seed}: "
            f"{self.entries} entries for up to {self.reads} reads{why} -> "
            f"{self.config.teacher_cache.dir}"
        )


@dataclass
class Plan:
    spec: SweepSpec
    trials: int
    stages: list[StagePlan]
    tracking_uri: str
    storage: str
    inputs: list[str] = dataclasses.field(default_factory=list)  # real data splits checked
    caches: list[CachePlan] = dataclasses.field(default_factory=list)
    #: datasets and weight files not there (yet) when planned without them: one line each
    missing: list[str] = dataclasses.field(default_factory=list)

    def text(self) -> str:
        """The spec's search space and settings, then what will be trained or reused, where."""
        spec = self.spec
        lines = [
            describe(spec),
            f"trials: {self.trials}, {spec.base.train.steps} steps each, evaluated every "
            f"{spec.base.train.eval_interval}",
            f"stages the trials build on or are measured against: {len(self.stages)}"
            + (" (each trained once, then reused)" if self.stages else ""),
        ]
        for stage in self.stages:
            state = "reuse" if stage.done else "train"
            lines.append(
                f"  {state:5s} {stage.kind:13s} seed={stage.config.seed} "
                f"{stage.config.data.scenario} {stage.config.train.steps} steps -> "
                f"{stage.config.run_dir}"
            )
        if self.caches:
            lines.append("teacher outputs (dakd.teacher.cache; built once, read by every trial):")
            lines += [cache.text() for cache in self.caches]
        if self.inputs:
            lines.append("data (checked):")
            lines += [f"  {line}" for line in self.inputs]
        if self.missing:
            lines.append(
                "inputs not there yet (planned without them; the sweep checks them at launch, "
                "the datasets as `python -m dakd data check` does; the teacher caches are "
                "decided then):"
            )
            lines += [f"  {line}" for line in self.missing]
        lines += [
            f"MLflow: {self.tracking_uri} (experiment {spec.experiment_name})",
            f"Ray Tune storage: {self.storage}",
        ]
        return "\n".join(lines)


def _context(spec: SweepSpec, root: Path, uri: str = "", exp_id: str = "", parent: str = ""):
    return SweepContext(
        spec=spec,
        root=str(root),
        tracking_uri=uri,
        experiment_id=exp_id,
        parent_run_id=parent,
        tags={},
    )


def tracking_uri(spec: SweepSpec, root: Path) -> str:
    from dakd.tracking.locations import default_uri

    return spec.tracking.uri or default_uri(root / "runs")


def storage_path(spec: SweepSpec, root: Path) -> str:
    if "://" in spec.storage or os.path.isabs(spec.storage):
        return spec.storage
    return str((root / spec.storage).resolve())


def check_inputs(cfg: ExperimentConfig, missing: list[str] | None = None) -> list[str]:
    """Check what a run of ``cfg`` reads besides checkpoints: the splits of real datasets (as
    training checks them) and the backbone weights file of the trained network. One error on the
    first problem (ConfigError naming the key, or DataError with the check's report); else one
    line per split. Given ``missing`` (planning before the data is there), a split that is not
    there or fails its check is a line there instead of an error."""
    from dakd.config import ConfigError
    from dakd.data.datasets import DataError, split_of

    lines = []
    if cfg.data.dataset == "real":
        for role, split in (("source", "train"), ("target", "train"), ("target", "val")):
            try:
                data = split_of(cfg.data, role, split)
            except (ConfigError, DataError) as err:
                if missing is None:
                    raise
                name = cfg.data.domain(role)
                missing.append(f"{name} {split}: {str(err).splitlines()[0]}")
                continue
            lines.append(f"{data.name} {split} ({data.root}): {len(data)} pairs, check passed")
    model = cfg.trained_model
    if not cfg.init and model.pretrained not in ("", AUTO) and not Path(model.pretrained).is_file():
        role = "teacher" if model is cfg.models.teacher else "student"
        if missing is None:
            raise ConfigError(f"models.{role}.pretrained: {model.pretrained} does not exist")
        missing.append(f"models.{role}.pretrained: {model.pretrained} does not exist")
    for key in ("teacher", "init"):
        path = getattr(cfg, key)
        if path and path != AUTO and not Path(path).is_file():
            raise ConfigError(
                f"{key}: checkpoint {path} does not exist (give a model.pt, or auto for the "
                "stage the sweep trains)"
            )
    if cfg.stage == "dakd" and cfg.teacher and cfg.teacher != AUTO:
        from dakd.models.checkpoint import CheckpointError
        from dakd.runtime.builders import check_teacher

        try:
            check_teacher(cfg)  # a shipped teacher: its manifest, network and scenario
        except CheckpointError as err:
            raise ConfigError(str(err)) from None
    return lines


def _input_variants(spec: SweepSpec) -> list[dict[str, Any]]:
    """The grid variants, and the first one with each option of every choice axis in turn:
    every file a trial may read is checked, not only the first option's."""
    variants = grid_variants(spec)
    for axis, dist in spec.search.items():
        if dist.categorical and not dist.grid:
            variants += [{**variants[0], axis: label} for label in dist.labels()[1:]]
    return variants


def plan(spec: SweepSpec, root: Path | None = None, without_data: bool = False) -> Plan:
    """Trials and stages of a sweep, without starting Ray (``--dry-run``); the data and weight
    files every trial and stage reads are checked (:func:`check_inputs`). ``without_data``
    (the dry run): datasets that are not there yet are listed (:attr:`Plan.missing`), not an
    error, and the teacher caches, which are sized by the datasets, are decided at launch."""
    from dakd.config import from_dict
    from dakd.sweep.spec.context import input_paths

    root = (root or Path.cwd()).resolve()
    context = _context(spec, root)
    stages: dict[str, StagePlan] = {}
    inputs: dict[str, None] = {}
    missing: list[str] | None = [] if without_data else None
    try:
        for sampled in _input_variants(spec):
            cfg = resolve(spec, sampled)
            absolute = from_dict(cfg.to_dict(), input_paths(cfg, context))
            inputs.update(dict.fromkeys(check_inputs(absolute, missing)))
    except ConfigError as err:
        raise SpecError(f"{spec.path}: experiment: {err}") from None
    for sampled in grid_variants(spec):
        cfg = resolve(spec, sampled)
        deps = stages_of(cfg, context, baseline=True)
        for dep in deps.values():
            if dep.name not in stages:
                try:
                    inputs.update(dict.fromkeys(check_inputs(dep, missing)))
                except ConfigError as err:
                    raise SpecError(f"{spec.path}: experiment: {err}") from None
                needs = {f: deps[f].name for f in AUTO_STAGES if getattr(dep, f) == AUTO}
                stages[dep.name] = StagePlan(dep, (dep.run_dir / "model.pt").exists(), needs)
    return Plan(
        spec=spec,
        trials=num_trials(spec),
        stages=list(stages.values()),
        tracking_uri=tracking_uri(spec, root),
        storage=storage_path(spec, root),
        inputs=list(inputs),
        caches=[] if missing else plan_caches(spec, context),
        missing=list(dict.fromkeys(missing or [])),
    )


def plan_caches(spec: SweepSpec, context: SweepContext) -> list[CachePlan]:
    """The teacher-output caches of the sweep's DAKD trials, one per teacher, domain and
    setting, with the reads all trials sharing it may make (each trial's steps times its
    batch, in the domains its paradigm distils on; both when the paradigm is searched).
    ``teacher_cache.mode`` auto builds one where the reads reach the entries it holds."""
    from dakd.config import from_dict
    from dakd.runtime.builders import training_dataset
    from dakd.teacher.outputs import cache_decision, cache_setting, distill_domains, distill_reads

    variants = grid_variants(spec)
    share = num_trials(spec) / max(len(variants), 1)  # trials each grid variant stands for
    searched = spec.search.get("paradigm")
    both = searched is not None and not searched.grid
    threads = max(1, int(spec.resources.cpu))
    plans: dict[str, CachePlan] = {}
    datasets = {}
    for sampled in variants:
        cfg = resolve(spec, sampled)
        if cfg.stage != "dakd" or cfg.teacher_cache.mode == "off":
            continue
        deps = stages_of(cfg, context)
        paths = {
            f: str(d.run_dir / "model.pt") for f, d in deps.items() if f in ("teacher", "init")
        }
        cfg = trial_config(cfg, context, paths, name="cache", out_dir=context.root, threads=threads)
        reads = distill_reads(cfg)
        for role in ("source", "target") if both else distill_domains(cfg):
            n = round(share * (cfg.train.steps * cfg.data.batch_size if both else reads[role]))
            setting = cache_setting(cfg)  # what the cache key reads, one definition
            key = json.dumps({"role": role, **setting}, sort_keys=True, default=str)
            if key in plans:
                plans[key].reads += n
                continue
            quick = from_dict(cfg.to_dict(), {"data.cache_dir": ""})  # nothing rendered here
            datasets[key] = training_dataset(quick, role)
            entries = len(datasets[key]) * (2 if cfg.data.hflip else 1)
            plans[key] = CachePlan(cfg, role, n, entries, False)
    for key, cache in plans.items():
        decision = cache_decision(cache.config, datasets[key], cache.role, cache.reads)
        cache.build = decision.use and decision.build
        if not decision.use:
            cache.reason = decision.notice or "teacher_cache.mode: off"
        elif not cache.build:
            cache.reason = "fewer reads than entries: the trials run the teacher"
        cache.done = decision.use and _cache_done(cache.config, cache.role, spec)
    return list(plans.values())


def _cache_done(cfg: ExperimentConfig, role: str, spec: SweepSpec) -> bool:
    """Whether the cache exists, judged here when the trials run on CPUs (the key holds the
    device: on GPU nodes only the cache stage itself can tell)."""
    import torch

    from dakd.config import from_dict
    from dakd.teacher.outputs import find_teacher_cache

    if spec.resources.gpu or cfg.train.device not in ("auto", "cpu"):
        return False
    if not Path(cfg.teacher).is_file():
        return False
    threads = torch.get_num_threads()
    try:
        return (
            find_teacher_cache(from_dict(cfg.to_dict(), {"train.device": "cpu"}), role) is not None
        )
    finally:
        torch.set_num_threads(threads)
