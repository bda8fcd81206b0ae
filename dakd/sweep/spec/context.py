"""What every task of a sweep knows (:class:`SweepContext`) and how a trial's config is made
from the spec: the stages it builds on, their checkpoints, the sweep's overrides, MLflow tags.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dakd.config import ExperimentConfig, from_dict
from dakd.evaluation.deploy import network_label
from dakd.models.shipped import input_file
from dakd.paradigms import AUTO, AUTO_STAGES
from dakd.recipes.stages import (
    dependency_config,
    fair_baseline_config,
    requirements,
    with_stages,
)
from dakd.sweep.spec.sweep_spec import SweepSpec
from dakd.tracking.tags import (
    LEVELS,
    NETWORK,
    NOT_SET,
    PARADIGM,
    SCENARIO,
    SEED,
    STAGE,
    START,
)

RUN_ID_FILE = "mlflow_run_id"
"""Name of the file, in every trial checkpoint, that holds the trial's MLflow run id."""


@dataclass
class SweepContext:
    """Everything a trial needs besides its sampled config; sent to the workers once."""

    spec: SweepSpec
    root: str  # absolute folder that relative paths of the spec are read from
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    tags: dict[str, str]  # sweep-wide tags (sweep name, git commit)
    # the Tune experiment (folder or URI); data-parallel trials store their Train runs there
    storage: str = ""

    def absolute(self, path: str) -> str:
        if not path or "://" in path or os.path.isabs(path):
            return path
        return os.path.join(self.root, path)

    def input(self, path: str) -> str:
        """A file a run reads: under the root, else the shipped file of that name (a spec run
        outside the clone that names ``weights/embedded/...``: :mod:`dakd.models.shipped`)."""
        return input_file(path, self.root)


def stage_overrides(context: SweepContext) -> dict[str, Any]:
    """Dotted overrides of every reused stage: the spec's ``stages`` section, stored under the
    base experiment's ``out_dir`` (shared with ``python -m dakd calibrate``)."""
    spec = context.spec
    return {
        "out_dir": context.absolute(spec.base.out_dir),
        "data.cache_dir": context.absolute(spec.base.data.cache_dir),
        "train.progress": False,
        **spec.stages,
    }


def stage_seeds(spec: SweepSpec) -> dict[str, dict[str, int]]:
    """The seed of each reused stage not in ``stages.per_seed``: the first of ``tune.seeds``,
    whatever the trial's seed (one teacher per scenario by default: ``{"teacher_da": {"seed":
    0}}``). A stage in ``per_seed`` takes the trial's seed, one stage per seed."""
    return {
        stage: {"seed": spec.tune.seeds[0]}
        for stage in ("teacher_da", "student_da")
        if stage not in spec.per_seed
    }


SELF = "self"
"""Key of :func:`stages_of` for a trial that *is* a reused stage (a teacher-DA or student-DA row
of a table, trained from scratch): it reports that stage's evaluations instead of training again."""


#: Files and folders a config names besides its outputs: read from the spec's folder (the root)
#: when relative, whatever folder a trial runs in.
INPUT_PATHS = (
    "data.source_root",
    "data.target_root",
    "models.teacher.pretrained",
    "models.student.pretrained",
)


def input_paths(cfg: ExperimentConfig, context: SweepContext, overrides=None) -> dict[str, str]:
    """The dataset folders and weight files of ``cfg`` (or of ``overrides`` where it sets them)
    as absolute paths, and its ``teacher``/``init`` checkpoints unless they are ``auto``."""
    flat = cfg.flat()
    out = {
        k: context.input(value)
        for k in INPUT_PATHS
        if (value := (overrides or {}).get(k, flat[k])) != AUTO  # auto: the shipped weights
    }
    for key in ("teacher", "init"):
        value = (overrides or {}).get(key, flat[key])
        if value and value != AUTO:
            out[key] = context.input(value)
    return out


BASELINE = "baseline"
"""Key of :func:`stages_of` (with ``baseline=True``) for the fair baseline of a DAKD trial."""


def stages_of(
    cfg: ExperimentConfig, context: SweepContext, baseline: bool = False
) -> dict[str, ExperimentConfig]:
    """The stage configs behind the ``auto`` fields of a trial config, in the order they are
    trained (and the trial itself when it is one of the reused stages: a teacher-DA or
    student-DA stage, or the fair baseline, ``student_da`` with ``init: auto``). With
    ``baseline``, also the fair baseline of a DAKD trial that starts from the student-DA stage
    (the driver trains it as a stage; the trial itself does not need it)."""
    overrides = stage_overrides(context)
    paths = input_paths(cfg, context, overrides)
    overrides.update({k: v for k, v in paths.items() if k in INPUT_PATHS})  # not teacher/init
    seeds = stage_seeds(context.spec)
    deps = requirements(cfg, overrides, seeds)
    if cfg.stage in AUTO_STAGES.values() and not cfg.init:
        deps[SELF] = dependency_config(cfg, cfg.stage, {**overrides, **seeds.get(cfg.stage, {})})
    elif cfg.stage == "student_da" and cfg.init == AUTO:
        deps[SELF] = fair_baseline_config(cfg, overrides)
    if baseline and cfg.stage == "dakd" and cfg.init == AUTO:
        deps[BASELINE] = fair_baseline_config(cfg, overrides)
    return deps


def trial_config(
    cfg: ExperimentConfig,
    context: SweepContext,
    checkpoints: dict[str, str],
    *,
    name: str,
    out_dir: str | Path,
    threads: int,
) -> ExperimentConfig:
    """The config a trial trains: ``cfg`` with its stage checkpoints filled in, its own run
    folder, ``threads`` CPU threads, no progress bar, and every input path made absolute (a
    trial runs in a working directory of Ray's, not the user's)."""
    cfg = with_stages(cfg, checkpoints)
    return from_dict(
        cfg.to_dict(),
        {
            "name": name,
            "out_dir": str(out_dir),
            "train.threads": threads,
            "train.progress": False,
            "data.cache_dir": context.absolute(cfg.data.cache_dir),
            "teacher_cache.dir": context.absolute(cfg.teacher_cache.dir),
            **input_paths(cfg, context),
        },
    )


def run_tags(cfg: ExperimentConfig, context: SweepContext) -> dict[str, str]:
    """MLflow tags of a run: scenario, paradigm, levels, seed, stage, plus the sweep's tags."""
    return {
        **context.tags,
        SCENARIO: cfg.data.scenario,
        PARADIGM: cfg.paradigm if cfg.stage == "dakd" else NOT_SET,
        LEVELS: "+".join(cfg.distill.levels) if cfg.stage == "dakd" else NOT_SET,
        SEED: str(cfg.seed),
        STAGE: cfg.stage,
        NETWORK: network_label(cfg.trained_model),
        START: start_of(cfg),
    }


def start_of(cfg: ExperimentConfig) -> str:
    """Where the trained network's weights start (the :data:`START` tag)."""
    from dakd.models.pretrained import resolve_pretrained

    if cfg.init:
        return "init checkpoint"
    model = cfg.trained_model
    path = resolve_pretrained(model)
    if path:
        return f"pretrained {Path(path).name}"
    if model.pretrained == AUTO:
        return f"random initialisation (no shipped weights for {network_label(model)})"
    return "random initialisation"


def run_logger(context: SweepContext, **kwargs):
    """The MLflow logger of a run under the sweep's parent run (``kwargs``: RunLogger's)."""
    from dakd.tracking.runs import RunLogger

    return RunLogger(
        context.tracking_uri,
        context.experiment_id,
        parent_run_id=context.parent_run_id,
        **kwargs,
    )
