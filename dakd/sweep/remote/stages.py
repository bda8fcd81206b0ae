"""What runs inside Ray for a reused stage: training it (``train_stage``) or building a
teacher-output cache (``cache_stage``), each tracked as an MLflow run under the sweep's parent;
and ``ensure_stage``, a trial's way to a stage's weights (found, trained once under a lock, or
its recorded failure).
"""

from __future__ import annotations

from pathlib import Path

import torch

from dakd.config import ExperimentConfig
from dakd.recipes.stages import (
    StageFailedError,
    error_line,
    failure_of,
    mark_failed,
    run_stage,
    stage_label,
)
from dakd.sweep.remote.hooks import StageTracking
from dakd.sweep.spec.context import (
    RUN_ID_FILE,
    SweepContext,
    run_logger,
    run_tags,
)
from dakd.tracking.tags import (
    DOMAIN,
    MLFLOW_PARENT_RUN_ID,
    STAGE,
    TEACHER_CACHE_STAGE,
)


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
    logger = run_logger(
        context, run_name=label, tags={**run_tags(stage_cfg, context)}, run_id=run_id
    )
    if run_id is None:
        logger.log_params(stage_cfg.flat())
    stage_cfg.run_dir.mkdir(parents=True, exist_ok=True)
    id_file.write_text(logger.run_id)

    hooks = [StageTracking(logger, stage_cfg)]
    return run_stage(stage_cfg, log=lambda line: print(line, flush=True), hooks=hooks)


def cache_stage(cfg: ExperimentConfig, role: str, context: SweepContext, threads: int) -> dict:
    """Build the teacher-output cache of ``role``'s training images for the trials of ``cfg``
    (a trial config with its teacher checkpoint), or find it built; a build is tracked in
    MLflow as a run with the tag ``stage=teacher_cache``."""
    from dakd.teacher.cache import CacheFullError
    from dakd.teacher.outputs import build_teacher_cache, find_teacher_cache, teacher_cache_folder

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
    logger = run_logger(context, run_name=label, tags=tags, run_id=run_id)
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


def ensure_stage(dep: ExperimentConfig, context: SweepContext, threads: int) -> str:
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
