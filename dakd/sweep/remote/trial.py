"""What runs inside Ray: one trial of a sweep, and the training of a reused stage.

A trial is the DAKD trainer (:func:`dakd.engine.trainer.train`) with a ``report`` callback that sends each
evaluation to Ray Tune (metrics plus the resumable checkpoint, for schedulers and retries) and to
MLflow (a child run of the sweep's parent run). A retried or resumed trial gets its checkpoint
back from Tune, copies it into its run directory and continues exactly where it stopped, in the
same MLflow run; so does a trial HyperBand paused. Under PBT a trial may get another trial's
checkpoint (each names its trial): it goes on from those weights, optimiser and step with its
own, mutated config, in its own MLflow run, which records whose weights it took. A trial that trains on a GPU also logs MLflow's system metrics (its GPU's
utilisation, memory and power, the machine's CPU and memory) to its run while it trains
(``tracking.system_metrics``: auto, true or false; :class:`dakd.sweep.remote.hooks.SystemMetrics`).

With ``resources.workers`` > 1 the trial is the driver of a Ray Train run (``TorchTrainer``):
Ray Train starts the workers and their torch process group, every worker runs the same trainer,
which sees the group (data-parallel), rank 0 logs to MLflow and hands the checkpoint to Ray
Train, and ``TuneReportCallback`` passes each evaluation on to Tune. A retried trial restarts
the Train run under the same name and storage, which resumes it from its latest checkpoint.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from dakd.config import ExperimentConfig, from_dict
from dakd.engine.trainer import TrainResult, train
from dakd.evaluation.run_metrics import evaluate_checkpoint
from dakd.recipes.stages import (
    StageFailedError,
    with_stages,
)
from dakd.runtime.device import check_device
from dakd.sweep.remote.deployment import Deployment, measure_trial
from dakd.sweep.remote.hooks import (
    LossWeights,
    SystemMetrics,
    TrialTracking,
    TuneReport,
    log_final_artifacts,
)
from dakd.sweep.remote.stages import ensure_stage
from dakd.sweep.spec.context import (
    RUN_ID_FILE,
    SELF,
    SweepContext,
    run_logger,
    run_tags,
    stages_of,
    trial_config,
)
from dakd.sweep.spec.sweep_spec import resolve, trial_label, trial_overrides
from dakd.tracking.tags import (
    DEPLOY,
    ERROR,
    INFEASIBLE,
    PBT_EXPLOITED,
    PBT_HISTORY,
    RAY_NODE_ID,
    RAY_TRIAL_ID,
    REUSED,
    TRIAL,
    WORKERS,
    tag_filter,
)

# ------------------------------------------------------------------------------------------------
# The trial (a Ray Tune function trainable)
# ------------------------------------------------------------------------------------------------


def _open_trial_run(context, cfg: ExperimentConfig, config: dict, run_id=None, **tags):
    """The MLflow run of a trial: reopened when ``run_id`` is given, else created with the
    flattened config plus the sweep's sampled values as params."""
    spec = context.spec
    label = trial_label(spec, config)
    logger = run_logger(
        context, run_name=label, tags={**run_tags(cfg, context), **tags}, run_id=run_id
    )
    if run_id is not None:
        _clear_error(logger)  # an earlier attempt's failure is not this attempt's
    if run_id is None:
        params = cfg.flat()
        params.update({f"sweep.{k}": v for k, v in trial_overrides(spec, config).items()})
        logger.log_params(params)
        logger.set_tags({TRIAL: label, RAY_TRIAL_ID: tune.get_context().get_trial_id()})
    if ray.is_initialized():  # where this attempt runs: trial placement on a cluster
        logger.set_tags({RAY_NODE_ID: ray.get_runtime_context().get_node_id()})
    return logger


def _clear_error(logger) -> None:
    from dakd.tracking.store import retry_locked

    if ERROR in retry_locked(logger.client.get_run, logger.run_id).data.tags:
        retry_locked(logger.client.delete_tag, logger.run_id, ERROR)


#: A trial's checkpoint names the trial it is of (id, label, step): a checkpoint of another
#: trial is PBT starting this one from that trial's weights.
SOURCE_FILE = "trial.json"


def _restore(run_dir: Path, trial_dir: Path) -> tuple[str | None, dict | None]:
    """Put Tune's checkpoint (if any) into ``run_dir``; return the MLflow run id it carries, and
    where it came from when it is another trial's (PBT exploiting it; the run id is then this
    trial's own, from its folder or the tracking store)."""
    run_id = source = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            run_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(Path(folder) / "last.pt", run_dir / "last.pt")
            origin = Path(folder) / SOURCE_FILE
            if origin.exists() and json.loads(origin.read_text())["trial_id"] != _trial_id():
                source = json.loads(origin.read_text())
            elif (Path(folder) / RUN_ID_FILE).exists():
                run_id = (Path(folder) / RUN_ID_FILE).read_text().strip()
    elif (run_dir / "last.pt").exists():
        (run_dir / "last.pt").unlink()  # no checkpoint from Tune: this trial starts over
    id_file = trial_dir / RUN_ID_FILE
    if run_id is None and id_file.exists():
        run_id = id_file.read_text().strip()
    return run_id, source


def _record_exploit(logger, source: dict, label: str) -> None:
    """PBT started this trial from ``source``'s checkpoint with mutated values: the run says
    so (:data:`PBT_EXPLOITED`, a line more in :data:`PBT_HISTORY`, ``pbt/exploits`` at the
    step it continues from); its params keep the values it started with."""
    from dakd.tracking.store import retry_locked

    tags = retry_locked(logger.client.get_run, logger.run_id).data.tags
    lines = [line for line in tags.get(PBT_HISTORY, "").splitlines() if line]
    lines.append(
        f"step {source['step']}: weights of {source['label']} (trial {source['trial_id']}), "
        f"continued as {label}"
    )
    logger.set_tags(
        {
            PBT_EXPLOITED: f"{source['label']} (trial {source['trial_id']})",
            PBT_HISTORY: "\n".join(lines),
        }
    )
    logger.log_metrics({"pbt/exploits": len(lines)}, step=int(source["step"]))


def run_trial(config: dict[str, Any], context: SweepContext) -> None:
    """Train one sampled configuration, reporting every evaluation to Tune and MLflow (the
    hooks :class:`TrialTracking` and :class:`TuneReport` of its training loop)."""
    started = time.perf_counter()
    spec = context.spec
    threads = max(1, int(spec.resources.cpu))
    torch.set_num_threads(threads)
    trial_dir = Path(tune.get_context().get_trial_dir())
    trial_dir.mkdir(parents=True, exist_ok=True)
    cfg = resolve(spec, config)
    check_device(cfg.train.device)  # a GPU the trial does not see: one line, before any work
    # the deployment figures first: a trial its figures rule out is recorded, not trained
    deployment = measure_trial(spec, cfg, trial_label(spec, config), threads)
    if deployment is not None and deployment.infeasible:
        _record_infeasible(context, cfg, config, deployment)
        return
    deps = stages_of(cfg, context)
    checkpoints = {}
    try:
        for field, dep in deps.items():
            # normally trained by the driver before the trials; a sampled value that changes a
            # stage (e.g. a searched teacher width) trains it here, once, under a lock (a fair
            # baseline after the student-DA stage it starts from)
            checkpoints[field] = ensure_stage(with_stages(dep, checkpoints), context, threads)
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
    run_id, source = _restore(run_dir, trial_dir)
    logger = _open_trial_run(context, cfg, config, run_id or _trial_run_id(context, _trial_id()))
    (trial_dir / RUN_ID_FILE).write_text(logger.run_id)
    label = trial_label(spec, config)
    if source is not None:
        _record_exploit(logger, source, label)
    figures = _log_deployment(logger, deployment)
    origin = {"trial_id": _trial_id(), "label": label}

    def send(metrics: dict[str, float], checkpoint: Path) -> None:
        with tempfile.TemporaryDirectory() as folder:
            shutil.copyfile(checkpoint, Path(folder) / "last.pt")
            (Path(folder) / RUN_ID_FILE).write_text(logger.run_id)
            source = {**origin, "step": int(metrics["step"])}
            (Path(folder) / SOURCE_FILE).write_text(json.dumps(source))
            tune.report(
                {**metrics, **figures, "steps": cfg.train.steps, "mlflow_run_id": logger.run_id},
                checkpoint=tune.Checkpoint.from_directory(folder),
            )

    system = SystemMetrics(context.tracking_uri, logger.run_id, spec.tracking)
    report = TuneReport(send)
    tracking = TrialTracking(
        logger, checkpoints.get("teacher"), started, label=label, report=report
    )
    hooks = [system, tracking, report]
    if spec.tune.scheduler == "pbt":  # the values change while it trains: a metric each
        hooks.append(LossWeights(logger, cfg))
    train(cfg, resume=True, hooks=hooks)


def _log_deployment(logger, deployment: Deployment | None) -> dict[str, float]:
    """Put a trial's deployment figures on its MLflow run; return them for its Tune results."""
    if deployment is None:
        return {}
    logger.set_tags({DEPLOY: deployment.where})
    logger.log_metrics(deployment.metrics, step=0)
    return deployment.metrics


def _record_infeasible(context, cfg: ExperimentConfig, config: dict, deployment: Deployment):
    """An infeasible trial: its MLflow run holds the figures and why; Tune gets one result:
    the figures, ``infeasible`` 1 and NaN for every objective it has no value of (Tune wants
    each objective in a result; Optuna counts the trial as pruned)."""
    logger = _open_trial_run(context, cfg, config, _trial_run_id(context, _trial_id()))
    logger.set_tags({INFEASIBLE: deployment.infeasible})
    figures = _log_deployment(logger, deployment)
    logger.finish("FINISHED")
    print(f"trial {trial_label(context.spec, config)}: infeasible, {deployment.infeasible}")
    missing = dict.fromkeys(context.spec.tune.objectives, math.nan)
    tune.report(
        {
            **missing,
            **figures,
            "infeasible": 1.0,
            "step": 0,
            "steps": 0,
            "mlflow_run_id": logger.run_id,
        }
    )


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

    Ray Train has joined the worker to the torch process group, so :func:`dakd.engine.trainer.train`
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
    logger = run_logger(context, run_id=run_id) if rank == 0 else None
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

    # every worker logs its own machine's system metrics to the trial's run, under rank<r>/
    system = SystemMetrics(context.tracking_uri, run_id, context.spec.tracking, f"rank{rank}")
    report = TuneReport(send)
    tracking = TrialTracking(logger, loop["teacher"], time.perf_counter(), False, report=report)
    train(cfg, resume=True, hooks=[system, tracking, report])


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


__all__ = ["run_trial", "train_run_name", "train_worker"]
