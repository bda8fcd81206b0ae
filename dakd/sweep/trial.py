"""What runs inside Ray: one trial of a sweep, and the training of a reused stage.

A trial is the DAKD trainer (:func:`dakd.train.train`) with a ``report`` callback that sends each
evaluation to Ray Tune (metrics plus the resumable checkpoint, for schedulers and retries) and to
MLflow (a child run of the sweep's parent run). A retried or resumed trial gets its checkpoint
back from Tune, copies it into its run directory and continues exactly where it stopped, in the
same MLflow run.

With ``resources.workers`` > 1 the trial is the driver of a Ray Train run (``TorchTrainer``):
Ray Train starts the workers and their torch process group, every worker runs the same trainer,
which sees the group (data-parallel), rank 0 logs to MLflow and hands the checkpoint to Ray
Train, and ``TuneReportCallback`` passes each evaluation on to Tune. A retried trial restarts
the Train run under the same name and storage, which resumes it from its latest checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import torch
import torch.nn.functional as F
import yaml
from ray import tune

from dakd.config import ExperimentConfig, from_dict
from dakd.losses import upsample
from dakd.pipeline import (
    AUTO,
    AUTO_STAGES,
    StageFailedError,
    dependency_config,
    error_line,
    failure_of,
    fair_baseline_config,
    mark_failed,
    requirements,
    run_stage,
    stage_label,
    with_stages,
)
from dakd.sweep.spec import SweepSpec, resolve, trial_label, trial_overrides
from dakd.tracking.tags import (
    DOMAIN,
    ERROR,
    LEVELS,
    MLFLOW_PARENT_RUN_ID,
    NOT_SET,
    PARADIGM,
    RAY_NODE_ID,
    RAY_TRIAL_ID,
    REUSED,
    SCENARIO,
    SEED,
    STAGE,
    TEACHER_CACHE,
    TEACHER_CACHE_STAGE,
    TRIAL,
    WORKERS,
    tag_filter,
)
from dakd.train import (
    TrainResult,
    evaluate_checkpoint,
    network_from_checkpoint,
    train,
    val_dataset,
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
    out = {k: context.absolute((overrides or {}).get(k, flat[k])) for k in INPUT_PATHS}
    for key in ("teacher", "init"):
        value = (overrides or {}).get(key, flat[key])
        if value and value != AUTO:
            out[key] = context.absolute(value)
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
    deps = requirements(cfg, overrides)
    if cfg.stage in AUTO_STAGES.values() and not cfg.init:
        deps[SELF] = dependency_config(cfg, cfg.stage, overrides)
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
    }


class Clock:
    """Seconds a trial spends per activity: ``with clock("report"): ...``; where the rest of a
    trial's time goes is ``total - sum``. Logged as ``time/<activity>_s`` (bench/sweep_overhead.py)."""

    def __init__(self):
        self.start = time.perf_counter()
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, activity: str):
        tic = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[activity] += time.perf_counter() - tic

    def metrics(self) -> dict[str, float]:
        out = {f"time/{k}_s": v for k, v in self.seconds.items()}
        out["time/total_s"] = time.perf_counter() - self.start
        return out


def _logger(context: SweepContext, **kwargs):
    from dakd.tracking.runs import RunLogger

    return RunLogger(
        context.tracking_uri,
        context.experiment_id,
        parent_run_id=context.parent_run_id,
        **kwargs,
    )


def prediction_panel(cfg: ExperimentConfig, checkpoints: dict[str, str], count: int = 4):
    """Image / ground truth / one column per network, on the first ``count`` target val images."""
    from dakd.visualize import prediction_panel as panel

    val = val_dataset(cfg)
    samples = [val[i] for i in range(min(count, len(val)))]
    images = torch.stack([s["image"] for s in samples])
    labels = torch.stack([s["label"] for s in samples])
    if labels.shape[-2:] != images.shape[-2:]:  # real data: full-resolution labels, shown smaller
        labels = F.interpolate(labels[:, None].float(), images.shape[-2:], mode="nearest")
        labels = labels[:, 0].long()
    predictions = {}
    with torch.no_grad():
        for name, path in checkpoints.items():
            model, _ = network_from_checkpoint(path)
            logits = upsample(model.eval()(images)["output"], labels.shape[-2:])
            predictions[name] = logits.argmax(1)
    return panel(images, labels, predictions)


def log_final_artifacts(logger, cfg: ExperimentConfig, result, teacher: str | None) -> None:
    """Resolved config, final weights, confusion matrix, per-class table, prediction panel."""
    logger.log_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False), "config.yaml")
    if cfg.stage == "dakd":  # where the teacher's outputs came from
        logger.set_tags({TEACHER_CACHE: "+".join(result.cached_domains) or "live"})
    final = cfg.run_dir / "model.pt"
    if final.exists():
        logger.log_artifact(final, "weights")
    if result.evaluation is not None:
        columns = {"teacher": teacher} if teacher else {}
        columns["student" if cfg.stage in ("dakd", "student_da") else cfg.stage] = str(final)
        panel = prediction_panel(cfg, columns) if final.exists() else None
        logger.log_evaluation(result.evaluation, panel=panel)


# ------------------------------------------------------------------------------------------------
# Stages (Ray tasks launched by the driver)
# ------------------------------------------------------------------------------------------------


def _own_run(context: SweepContext, id_file: Path) -> str | None:
    """The run id in ``id_file`` when that run is a child of this sweep's parent run."""
    from dakd.tracking.store import get_run

    if not id_file.is_file():
        return None
    run_id = id_file.read_text().strip()
    try:
        run = get_run(context.tracking_uri, run_id)
    except Exception:  # noqa: BLE001 - deleted, or another store: a new run
        return None
    if run.data.tags.get(MLFLOW_PARENT_RUN_ID) != context.parent_run_id:
        return None
    return run_id


def train_stage(stage_cfg: ExperimentConfig, context: SweepContext, threads: int) -> dict:
    """Train one reused stage (or find it done) and track it in MLflow with its ``stage`` tag."""
    torch.set_num_threads(max(1, threads))
    final = stage_cfg.run_dir / "model.pt"
    if final.exists():
        return run_stage(stage_cfg, log=lambda _: None)
    label = stage_label(stage_cfg)
    # a stage this sweep began before it was interrupted continues in its own run (and from its
    # own last.pt); one begun by another sweep gets a new run under this one
    id_file = stage_cfg.run_dir / RUN_ID_FILE
    run_id = _own_run(context, id_file)
    logger = _logger(context, run_name=label, tags={**run_tags(stage_cfg, context)}, run_id=run_id)
    if run_id is None:
        logger.log_params(stage_cfg.flat())
    stage_cfg.run_dir.mkdir(parents=True, exist_ok=True)
    id_file.write_text(logger.run_id)

    def report(metrics: dict[str, float], _checkpoint: Path) -> None:
        logger.log_metrics(metrics, step=int(metrics["step"]))
        print(
            f"[stage {stage_cfg.name}] step {int(metrics['step'])}/{stage_cfg.train.steps} "
            f"target mIoU {metrics['miou']:.2f}",
            flush=True,
        )

    try:
        summary = run_stage(stage_cfg, log=lambda line: print(line, flush=True), report=report)
        logger.log_text(yaml.safe_dump(stage_cfg.to_dict(), sort_keys=False), "config.yaml")
        logger.log_artifact(final, "weights")
    except BaseException as err:
        if not isinstance(err, KeyboardInterrupt | SystemExit):
            logger.set_tags({ERROR: error_line(err)})
        logger.finish("FAILED")
        raise
    logger.finish("FINISHED")
    return summary


def cache_stage(cfg: ExperimentConfig, role: str, context: SweepContext, threads: int) -> dict:
    """Build the teacher-output cache of ``role``'s training images for the trials of ``cfg``
    (a trial config with its teacher checkpoint), or find it built; a build is tracked in
    MLflow as a run with the tag ``stage=teacher_cache``."""
    from dakd.teacher_cache import CacheFullError
    from dakd.train import build_teacher_cache, find_teacher_cache, teacher_cache_folder

    torch.set_num_threads(max(1, threads))
    found = find_teacher_cache(cfg, role)
    if found is not None:
        return found
    domain = cfg.domains[0 if role == "source" else 1]
    label = f"teacher_cache {domain} seed={cfg.seed} {cfg.data.scenario}"
    tags = {**run_tags(cfg, context), STAGE: TEACHER_CACHE_STAGE, DOMAIN: role}
    # a build this sweep began before it was interrupted continues (shards and run alike)
    folder = teacher_cache_folder(cfg, role)
    id_file = folder.parent / f"{folder.name}.{RUN_ID_FILE}"
    run_id = _own_run(context, id_file)
    logger = _logger(context, run_name=label, tags=tags, run_id=run_id)
    folder.parent.mkdir(parents=True, exist_ok=True)
    id_file.write_text(logger.run_id)
    lines: list[str] = []
    try:
        summary = build_teacher_cache(cfg, role, progress=False, log=lines.append)
        logger.log_params(
            {
                "teacher": cfg.teacher,
                "domain": domain,
                "teacher_cache.dtype": cfg.teacher_cache.dtype,
                "teacher_cache.topk": cfg.teacher_cache.topk,
                "key": summary["key"],
                "folder": summary["folder"],
            }
        )
        logger.log_metrics(
            {
                "entries": summary["entries"],
                "bytes": summary["bytes"],
                "seconds": summary["seconds"],
            },
            step=0,
        )
        logger.log_artifact(Path(summary["folder"]) / "manifest.json", "cache")
    except CacheFullError as err:
        logger.finish("FAILED")
        if cfg.teacher_cache.if_full == "live":
            return {"label": domain, "live": True, "error": str(err)}
        raise
    except BaseException:
        logger.finish("FAILED")
        raise
    for line in lines:
        print(line, flush=True)
    logger.finish("FINISHED")
    return summary


# ------------------------------------------------------------------------------------------------
# The trial (a Ray Tune function trainable)
# ------------------------------------------------------------------------------------------------


def _open_trial_run(context, cfg: ExperimentConfig, config: dict, run_id=None, **tags):
    """The MLflow run of a trial: reopened when ``run_id`` is given, else created with the
    flattened config plus the sweep's sampled values as params."""
    spec = context.spec
    label = trial_label(spec, config)
    logger = _logger(
        context, run_name=label, tags={**run_tags(cfg, context), **tags}, run_id=run_id
    )
    if run_id is None:
        params = cfg.flat()
        params.update({f"sweep.{k}": v for k, v in trial_overrides(spec, config).items()})
        logger.log_params(params)
        logger.set_tags({TRIAL: label, RAY_TRIAL_ID: tune.get_context().get_trial_id()})
    if ray.is_initialized():  # where this attempt runs: trial placement on a cluster
        logger.set_tags({RAY_NODE_ID: ray.get_runtime_context().get_node_id()})
    return logger


def _restore(run_dir: Path, trial_dir: Path) -> str | None:
    """Put Tune's checkpoint (if any) into ``run_dir``; return the MLflow run id it carries."""
    run_id = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            run_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(Path(folder) / "last.pt", run_dir / "last.pt")
            id_file = Path(folder) / RUN_ID_FILE
            if id_file.exists():
                run_id = id_file.read_text().strip()
    elif (run_dir / "last.pt").exists():
        (run_dir / "last.pt").unlink()  # no checkpoint from Tune: this trial starts over
    id_file = trial_dir / RUN_ID_FILE
    if run_id is None and id_file.exists():
        run_id = id_file.read_text().strip()
    return run_id


def run_trial(config: dict[str, Any], context: SweepContext) -> None:
    """Train one sampled configuration, reporting every evaluation to Tune and MLflow.

    The trial's own time is split into ``setup`` (stages, MLflow run), ``train`` (the trainer
    alone), ``report`` (Tune reports and checkpoints), ``logging`` (MLflow metrics) and
    ``artifacts`` (final MLflow artifacts); the split is logged to the run as ``time/*_s``.
    """
    clock = Clock()
    spec = context.spec
    threads = max(1, int(spec.resources.cpu))
    torch.set_num_threads(threads)
    trial_dir = Path(tune.get_context().get_trial_dir())
    trial_dir.mkdir(parents=True, exist_ok=True)
    cfg = resolve(spec, config)
    deps = stages_of(cfg, context)
    checkpoints = {}
    try:
        for field, dep in deps.items():
            # normally trained by the driver before the trials; a sampled value that changes a
            # stage (e.g. a searched teacher width) trains it here, once, under a lock (a fair
            # baseline after the student-DA stage it starts from)
            checkpoints[field] = _ensure_stage(with_stages(dep, checkpoints), context, threads)
    except StageFailedError as err:
        # the trial cannot run: its MLflow run records why (one line), and Tune the error
        logger = _open_trial_run(context, cfg, config, _trial_run_id(context, _trial_id()))
        logger.set_tags({ERROR: str(err)})
        logger.finish("FAILED")
        raise
    if SELF in deps:
        _replay_stage(deps[SELF], checkpoints.pop(SELF), config, context)
        return
    cfg = trial_config(cfg, context, checkpoints, name="run", out_dir=trial_dir, threads=threads)
    if spec.resources.workers > 1:
        _run_data_parallel(cfg, config, context, trial_dir, checkpoints.get("teacher"))
        return
    run_dir = cfg.run_dir
    # an earlier attempt's MLflow run continues: named by Tune's checkpoint, or found by the
    # trial id (an attempt killed before its first checkpoint, or a resumed sweep whose trial
    # folder is new)
    run_id = _restore(run_dir, trial_dir) or _trial_run_id(context, _trial_id())
    logger = _open_trial_run(context, cfg, config, run_id)
    (trial_dir / RUN_ID_FILE).write_text(logger.run_id)

    final: dict[str, Any] = {}

    def send(metrics: dict[str, float], checkpoint: Path) -> None:
        with clock("report"), tempfile.TemporaryDirectory() as folder:
            shutil.copyfile(checkpoint, Path(folder) / "last.pt")
            (Path(folder) / RUN_ID_FILE).write_text(logger.run_id)
            tune.report(
                {**metrics, "steps": cfg.train.steps, "mlflow_run_id": logger.run_id},
                checkpoint=tune.Checkpoint.from_directory(folder),
            )

    def report(metrics: dict[str, float], checkpoint: Path) -> None:
        with clock("logging"):
            logger.log_metrics(metrics, step=int(metrics["step"]))
        if int(metrics["step"]) >= cfg.train.steps:
            # the last evaluation reaches Tune only after the final weights and artifacts are
            # written: a scheduler that stops trials at their last rung (ASHA's max_t) ends
            # the trial at that report, and nothing after it would run
            final.update(metrics=metrics, checkpoint=checkpoint)
            return
        send(metrics, checkpoint)

    try:
        clock.seconds["setup"] = time.perf_counter() - clock.start
        tic = time.perf_counter()
        result = train(cfg, report=report, resume=True)
        # the trainer alone: what ran inside train() less the callbacks it called
        clock.seconds["train"] = (
            time.perf_counter() - tic - clock.seconds["logging"] - clock.seconds["report"]
        )
        with clock("artifacts"):
            log_final_artifacts(logger, cfg, result, checkpoints.get("teacher"))
        with clock("logging"):
            logger.log_metrics(clock.metrics(), step=cfg.train.steps)
    except SystemExit:
        # the scheduler stopped this trial early (Tune ends the thread at a report); the driver
        # closes its MLflow run, so the thread ends at once and its actor can be reused
        raise
    except BaseException:
        logger.finish("FAILED")
        raise
    logger.finish("FINISHED")
    if final:
        # A scheduler that stops the trial at this last report raises SystemExit here, and it
        # must end the function: swallowed, Tune's wrapper would report once more and wait for
        # a go-ahead that never comes, and a reused actor could not start its next trial.
        send(final["metrics"], final["checkpoint"])


# ------------------------------------------------------------------------------------------------
# A data-parallel trial (resources.workers > 1): a Ray Train run driven from the Tune trial
# ------------------------------------------------------------------------------------------------


def train_run_name(trial_id: str) -> str:
    """The Ray Train run of a trial: the same on every retry, so Ray Train resumes it."""
    return f"train-trial_id={trial_id}"


def _trial_id() -> str:
    return tune.get_context().get_trial_id()


def _trial_run_id(context: SweepContext, trial_id: str) -> str | None:
    """The MLflow run an earlier attempt of this trial opened (looked up by its ``ray.trial_id``
    tag in the tracking store, which every node shares), or None on the first attempt."""
    from dakd.tracking.store import find_runs

    runs = find_runs(
        context.tracking_uri,
        context.spec.experiment_name,
        tag_filter(RAY_TRIAL_ID, trial_id),
    )
    return runs[-1].info.run_id if runs else None


def _run_data_parallel(
    cfg: ExperimentConfig,
    config: dict,
    context: SweepContext,
    trial_dir: Path,
    teacher: str | None,
) -> None:
    """Train ``cfg`` on ``resources.workers`` Ray Train workers, this trial being their driver."""
    import ray.train
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    resources = context.spec.resources
    trial_id = tune.get_context().get_trial_id()
    logger = _open_trial_run(
        context, cfg, config, _trial_run_id(context, trial_id), **{WORKERS: str(resources.workers)}
    )
    per_worker = {"CPU": resources.cpu}
    if resources.gpu:
        per_worker["GPU"] = resources.gpu
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={
            "config": cfg.to_dict(),
            "context": context,
            "run_id": logger.run_id,
            "out_dir": str(trial_dir),
            "teacher": teacher,
            "threads": max(1, int(resources.cpu)),
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=resources.workers,
            use_gpu=resources.gpu > 0,
            resources_per_worker=per_worker,
        ),
        run_config=ray.train.RunConfig(
            name=train_run_name(trial_id),
            storage_path=context.storage or str(trial_dir),
            callbacks=[TuneReportCallback()],
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
        ),
    )
    try:
        trainer.fit()
    except SystemExit:
        raise  # stopped by the scheduler: the driver closes the MLflow run
    except BaseException:
        logger.finish("FAILED")
        raise


def train_worker(loop: dict[str, Any]) -> None:
    """One Ray Train worker of a data-parallel trial (its ``train_loop_per_worker``).

    Ray Train has joined the worker to the torch process group, so :func:`dakd.train.train`
    trains data-parallel. Each worker restores Ray Train's latest checkpoint into its own run
    directory (rank 0: the trial's; others: a ``rank<r>`` folder beside it), so the workers need
    no shared filesystem. Every worker reports every evaluation (``ray.train.report`` is a
    barrier); rank 0 attaches the checkpoint and logs to MLflow.
    """
    import ray.train

    context: SweepContext = loop["context"]
    rank = ray.train.get_context().get_world_rank()
    torch.set_num_threads(loop["threads"])
    out_dir = Path(loop["out_dir"])
    cfg = from_dict(
        loop["config"], {"out_dir": str(out_dir if rank == 0 else out_dir / f"rank{rank}")}
    )
    run_dir = cfg.run_dir
    run_id = loop["run_id"]
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            run_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(Path(folder) / "last.pt", run_dir / "last.pt")
    elif (run_dir / "last.pt").exists():
        (run_dir / "last.pt").unlink()  # no checkpoint from Ray Train: the run starts over
    logger = _logger(context, run_id=run_id) if rank == 0 else None
    steps = cfg.train.steps

    def send(metrics: dict[str, float], path: Path | None) -> None:
        payload = {**metrics, "steps": steps, "mlflow_run_id": run_id}
        if path is None:
            ray.train.report(payload)
            return
        with tempfile.TemporaryDirectory() as folder:
            shutil.copyfile(path, Path(folder) / "last.pt")
            (Path(folder) / RUN_ID_FILE).write_text(run_id)
            ray.train.report(payload, checkpoint=ray.train.Checkpoint.from_directory(folder))

    final: dict[str, Any] = {}

    def report(metrics: dict[str, float], path: Path | None) -> None:
        if logger is not None:
            logger.log_metrics(metrics, step=int(metrics["step"]))
        if int(metrics["step"]) >= steps:
            final.update(metrics=metrics, path=path)  # sent after the final artifacts
            return
        send(metrics, path)

    try:
        result = train(cfg, report=report, resume=True)
        if logger is not None:
            log_final_artifacts(logger, cfg, result, loop["teacher"])
    except BaseException:
        if logger is not None:
            logger.finish("FAILED")
        raise
    if logger is not None:
        logger.finish("FINISHED")
    if final:
        send(final["metrics"], final["path"])


def _replay_stage(stage: ExperimentConfig, final: str, config: dict, context: SweepContext):
    """Report a reused stage's recorded evaluations as this trial's, without training it again."""
    logger = _open_trial_run(
        context, stage, config, _trial_run_id(context, _trial_id()), **{REUSED: "true"}
    )
    history = [
        json.loads(line)
        for line in (stage.run_dir / "metrics.jsonl").read_text().splitlines()
        if line.strip()
    ]
    for metrics in history:
        logger.log_metrics(metrics, step=int(metrics["step"]))
    _, _, evaluation = evaluate_checkpoint(final)
    result = TrainResult(metrics=history[-1], checkpoint=Path(final), evaluation=evaluation)
    log_final_artifacts(logger, stage, result, None)
    logger.finish("FINISHED")
    # a scheduler may stop it at any report (SystemExit): the stage's record is complete in
    # MLflow anyway, and the exit must end the function (see the end of run_trial)
    for metrics in history:
        tune.report({**metrics, "steps": stage.train.steps, "mlflow_run_id": logger.run_id})


def _ensure_stage(dep: ExperimentConfig, context: SweepContext, threads: int) -> str:
    """The finished weights of stage ``dep``: found, or trained here once under a lock; a stage
    whose training failed (the driver's or another trial's attempt) is reported, not retried."""
    final = dep.run_dir / "model.pt"
    if final.exists():
        return str(final)
    failed = failure_of(dep)
    if failed:
        raise StageFailedError(failed)
    from filelock import FileLock

    dep.run_dir.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(dep.run_dir) + ".lock"):
        failed = failure_of(dep)
        if failed:
            raise StageFailedError(failed)
        if not final.exists():
            try:
                train_stage(dep, context, threads)
            except Exception as err:
                raise StageFailedError(mark_failed(dep, error_line(err))) from None
    return str(final)


__all__ = [
    "RUN_ID_FILE",
    "cache_stage",
    "SELF",
    "BASELINE",
    "SweepContext",
    "run_trial",
    "stages_of",
    "train_run_name",
    "train_stage",
    "train_worker",
]
