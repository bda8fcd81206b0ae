"""The waves of Ray tasks a sweep runs before its trials: the stages, then the teacher caches.

A stage (teacher-DA, student-DA, the fair baseline) is trained once and reused by every later
sweep; stages that do not depend on each other train side by side, and a fair baseline after
the student-DA stage it starts from. A stage that fails fails its trials only. The caches of the
teacher's outputs are built after the teacher stage, side by side; a cache that fails to build
costs speed, not results (its trials run the teacher).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from dakd.config import ExperimentConfig
from dakd.recipes.stages import clear_failure, error_line, failure_of, mark_failed, with_stages
from dakd.sweep.driver.cluster import node_sizes, stage_cpus
from dakd.sweep.driver.plan import CachePlan, StagePlan
from dakd.sweep.spec.context import SweepContext
from dakd.sweep.spec.sweep_spec import SweepSpec


def train_stages(stages: list[StagePlan], context: SweepContext, log) -> list[str]:
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

    from dakd.sweep.remote.stages import train_stage

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
    CPUs), never more CPUs than the largest node has (a task no node can hold waits forever,
    however many CPUs the cluster has in all); and the threads, which the stage trains with
    wherever it lands (its numbers depend on them)."""
    import ray

    threads = max(1, cfg.train.threads or int(spec.resources.cpu))
    cpus = stage_cpus(threads, node_sizes())
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


def build_caches(caches: list[CachePlan], context: SweepContext, log) -> None:
    """Build the teacher-output caches the trials read, as Ray tasks after the teacher stage
    (side by side); a cache an earlier sweep built is found and reused."""
    import ray

    from dakd.sweep.remote.stages import cache_stage

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
