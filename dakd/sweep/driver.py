"""The sweep driver: spec -> plan -> stages -> Ray Tune -> summary, tracked in MLflow.

``python sweeps/run.py SPEC.yaml`` calls :func:`run_sweep`. The order follows DESIGN.md: the spec
is validated before Ray starts; the stages the trials build on (teacher-DA, student-DA) are
trained once as Ray tasks, keyed by their config, and reused by every later sweep; then the
Tuner runs the trials; at the end the best trials are printed with where to look in MLflow.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from dakd.config import ExperimentConfig
from dakd.pipeline import (
    clear_failure,
    error_line,
    failure_of,
    mark_failed,
    with_stages,
)
from dakd.sweep.cluster import (
    alive_nodes,
    check_cluster_resources,
    check_cluster_storage,
    start_ray,
)
from dakd.sweep.parent import close_dead_runs, log_analysis, open_parent
from dakd.sweep.plan import CachePlan, StagePlan, plan
from dakd.sweep.spec import (
    SpecError,
    SweepSpec,
)
from dakd.sweep.state import resumed_attempt, write_state
from dakd.sweep.summary import SweepResult, format_summary, headline_metrics, summarize
from dakd.sweep.trial import SweepContext
from dakd.sweep.tuner import one_line_trial_errors, tuner_for


def _train_stages(stages: list[StagePlan], context: SweepContext, log) -> list[str]:
    """Train the missing stages as Ray tasks (independent stages run side by side; a fair
    baseline after the student-DA stage it starts from); returns one line per stage that
    failed (its trials fail with it; the others go on)."""
    todo = [s for s in stages if not s.done]
    if not todo:
        return []
    log(f"training {len(todo)} stage(s) the trials build on (once; later sweeps reuse them)")
    start = time.monotonic()
    by_name = {s.config.name: s for s in stages}
    first = [s for s in todo if not s.needs]
    failed, broken = _stage_wave(first, stages, context, log, start, (0, len(todo)))
    later = []
    for stage in (s for s in todo if s.needs):
        missing = [n for n in stage.needs.values() if n in broken or n not in by_name]
        if missing:
            start_of = by_name.get(missing[0])
            cause = (failure_of(start_of.config) if start_of else None) or missing[0]
            message = mark_failed(
                stage.config,
                f"the stage it starts from failed ({cause.split(' failed: ', 1)[-1]})",
                _difference(stage, stages),
            )
            failed.append(message)
            log(f"  {message}")
            continue
        paths = {f: str(by_name[n].checkpoint) for f, n in stage.needs.items()}
        later.append(StagePlan(with_stages(stage.config, paths), False))
    more, _ = _stage_wave(later, stages, context, log, start, (len(first), len(todo)))
    return failed + more


def _stage_wave(wave, stages, context: SweepContext, log, start: float, count: tuple[int, int]):
    """Train ``wave``'s stages side by side as Ray tasks, logging each as it ends; returns the
    failure lines and the names of the stages that failed."""
    import ray

    from dakd.sweep.trial import train_stage

    pending = {}
    for stage in wave:
        clear_failure(stage.config)  # a stage that failed before is tried again
        remote, threads = _stage_task(train_stage, stage.config, context.spec)
        pending[remote.remote(stage.config, context, threads)] = stage
    failed, broken = [], set()
    # report each stage as it ends (a stage takes minutes on a laptop)
    for done, stage, ready in _as_completed(pending):
        after = f"  stage {count[0] + done}/{count[1]} after {time.monotonic() - start:.0f} s: "
        try:
            summary = ray.get(ready)
        except Exception as err:  # noqa: BLE001 - a NaN, an exception, a dead worker: the same
            # the stage's trials fail with this line; the other stages and their trials go on
            message = mark_failed(stage.config, error_line(err), _difference(stage, stages))
            failed.append(message)
            broken.add(stage.config.name)
            log(after + message + "; the trials that build on it fail")
            continue
        log(
            after + f"{stage.kind} seed={stage.config.seed} {stage.config.data.scenario}: "
            f"target mIoU {summary['metrics'].get('miou', math.nan):.2f} -> {stage.checkpoint}"
        )
    return failed, broken


def _stage_task(fn, cfg: ExperimentConfig, spec: SweepSpec):
    """``fn`` as a Ray task with a stage's resources: the config's threads (else the trial's
    CPUs), never more CPUs than the cluster has (the task would wait forever); and the threads."""
    import ray

    threads = max(1, cfg.train.threads or int(spec.resources.cpu))
    cpus = min(threads, max(1, int(ray.cluster_resources().get("CPU", 1))))
    return ray.remote(num_cpus=cpus, num_gpus=spec.resources.gpu, max_retries=1)(fn), threads


def _as_completed(pending: dict):
    """``(count, item, ref)`` for each Ray task of ``{ref: item}`` as it ends."""
    import ray

    done = 0
    while pending:
        (ready,), _ = ray.wait(list(pending), num_returns=1)
        done += 1
        yield done, pending.pop(ready), ready


#: Keys that name a stage's folder, not its training: left out of a stage's difference.
_NOT_TRAINING = ("name", "out_dir", "data.cache_dir", "teacher_cache.dir", "train.progress")


def _difference(stage: StagePlan, stages: list[StagePlan]) -> str:
    """How ``stage``'s config differs from another planned stage of the same kind, e.g.
    ``optim.lr=1e+12`` (empty when it has no peer)."""
    peers = [s for s in stages if s.kind == stage.kind and s is not stage]
    if not peers:
        return ""
    mine, theirs = stage.config.flat(), peers[0].config.flat()
    keys = [k for k in mine if k not in _NOT_TRAINING and mine[k] != theirs.get(k)]
    return " ".join(
        f"{k}={mine[k]!r}" if isinstance(mine[k], str) else f"{k}={mine[k]}" for k in keys
    )


def _build_caches(caches: list[CachePlan], context: SweepContext, log) -> None:
    """Build the teacher-output caches the trials read, as Ray tasks after the teacher stage
    (side by side); a cache an earlier sweep built is found and reused."""
    import ray

    from dakd.sweep.trial import cache_stage

    # a cache whose teacher stage failed has nothing to store: its trials fail with the stage
    todo = [c for c in caches if c.build and not c.done and Path(c.config.teacher).is_file()]
    if not todo:
        return
    spec = context.spec
    log(f"teacher outputs: {len(todo)} cache(s) the trials read (built once, then reused)")
    start = time.monotonic()
    pending = {}
    for cache in todo:
        remote, threads = _stage_task(cache_stage, cache.config, spec)
        pending[remote.remote(cache.config, cache.role, context, threads)] = cache
    for done, cache, ready in _as_completed(pending):
        after = f"  cache {done}/{len(todo)} after {time.monotonic() - start:.0f} s: "
        try:
            summary = ray.get(ready)
        except Exception as err:  # noqa: BLE001 - the trials run the teacher instead
            log(
                after
                + f"{cache.text().strip()}: failed ({error_line(err)}); the trials run the teacher"
            )
            continue
        if summary.get("live"):
            log(after + f"{summary['error']}; the trials run the teacher")
        elif summary.get("built"):
            log(
                after + f"{summary['label']}: {summary['entries']} entries, "
                f"{summary['bytes'] / 1e6:.0f} MB in {summary['seconds']:.0f} s -> {summary['folder']}"
            )
        else:
            log(after + f"reusing {summary['label']} {summary['folder']}")


def run_sweep(
    spec: SweepSpec,
    resume: bool = False,
    address: str | None = None,
    root: Path | None = None,
    log: Callable[[str], None] = print,
    autoscale: bool = False,
) -> SweepResult:
    """Run (or with ``resume`` continue) a sweep; return its summary rows (best first).

    ``autoscale``: the cluster adds nodes on demand, so trial resources it lacks now are not
    an error (:func:`check_cluster_resources`)."""
    import ray

    from dakd.locations import git_commit, ui_command

    root = (root or Path.cwd()).resolve()
    the_plan = plan(spec, root)
    log(the_plan.text())
    uri = the_plan.tracking_uri
    storage = the_plan.storage

    previous, state = resumed_attempt(spec, storage, uri) if resume else (None, {})
    name = Path(previous).name if previous else f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    sweep_tags = {"sweep": spec.name, "git_commit": git_commit(root) or "unknown"}

    # Starting Ray (seconds, mostly spent in the processes it spawns: GCS, raylet, agents) and
    # opening the sweep's MLflow experiment and parent run (seconds: importing MLflow, the
    # store's schema) do not depend on each other: Ray starts here, MLflow opens in a thread.
    started_ray = False
    with ThreadPoolExecutor(1, thread_name_prefix="dakd-mlflow") as pool:
        opening = pool.submit(
            open_parent, spec, the_plan, uri, name, sweep_tags, state.get("parent_run_id")
        )
        try:
            started_ray = start_ray(address)
            check_cluster_resources(spec, autoscale)
        except BaseException as err:
            with contextlib.suppress(Exception):  # the parent run must not stay RUNNING
                _, opened = opening.result()
                if isinstance(err, SpecError) and not state.get("parent_run_id"):
                    # bad input: no sweep ran, so no record of one is left behind
                    opened.finish("KILLED")
                    opened.client.delete_run(opened.run_id)
                else:
                    opened.finish("KILLED")
            if started_ray and isinstance(err, SpecError):
                ray.shutdown()
            raise
        try:
            experiment_id, parent = opening.result()
        except BaseException:
            if started_ray:
                ray.shutdown()
            raise
    context = SweepContext(
        spec=spec,
        root=str(root),
        tracking_uri=uri,
        experiment_id=experiment_id,
        parent_run_id=parent.run_id,
        tags=sweep_tags,
        storage=f"{storage.rstrip('/')}/{name}",
    )
    experiment_path = f"{storage.rstrip('/')}/{name}"
    analysis = None
    try:
        # runs a killed attempt left RUNNING: closed as KILLED (the runs this attempt continues,
        # trials and stages, are reopened by their own ids and end FINISHED or FAILED)
        closed = close_dead_runs(uri, spec, parent.run_id, log)
        if closed:
            log(f"closed {closed} run(s) of an interrupted attempt as KILLED")
        if not state:
            write_state(experiment_path, {"parent_run_id": parent.run_id, "tracking_uri": uri})
        check_cluster_storage(spec, address or os.environ.get("RAY_ADDRESS"), alive_nodes(), log)
        if spec.resources.workers > 1 and not spec.tune.max_concurrent:
            # a Train run starts once all its workers fit; trials beyond that only wait
            log(
                "note: tune.max_concurrent is unset; with resources.workers > 1 set it to the "
                "number of Train runs the cluster fits at once (e.g. GPUs // (workers * gpu))"
            )
        failed_stages = _train_stages(the_plan.stages, context, log)
        _build_caches(the_plan.caches, context, log)
        tuner = tuner_for(context, storage, name, previous, log)
        with one_line_trial_errors():
            grid = tuner.fit()
        result = summarize(grid, spec, the_plan, parent.run_id, uri, f"{storage}/{name}")
        result.failed_stages = failed_stages
        text = format_summary(
            result, spec, ui_command(uri), spec.experiment_name, experiment_id=experiment_id
        )
        log(text)
        parent.log_text(text, "summary.md")
        parent.log_metrics(headline_metrics(result, spec), step=0)
        # the result tables need MLflow only: build them while Ray shuts down
        analysis = threading.Thread(
            target=log_analysis,
            args=(uri, spec.experiment_name, parent.run_id, log),
            name="dakd-analysis",
        )
        analysis.start()
        if started_ray:
            started_ray = False
            ray.shutdown()
        analysis.join()
        parent.finish("FINISHED" if not result.errors else "FAILED")
        return result
    except BaseException:
        if analysis is not None and analysis.is_alive():
            analysis.join()  # never finish the parent run under the tables being logged to it
        parent.finish("KILLED")
        raise
    finally:
        if started_ray:
            ray.shutdown()


__all__ = [
    "SweepResult",
    "run_sweep",
]
