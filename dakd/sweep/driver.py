"""The sweep driver: spec -> plan -> stages -> Ray Tune -> summary, tracked in MLflow.

``python sweeps/run.py SPEC.yaml`` calls :func:`run_sweep`. The order follows DESIGN.md: the spec
is validated before Ray starts; the stages the trials build on (teacher-DA, student-DA) are
trained once as Ray tasks, keyed by their config, and reused by every later sweep; then the
Tuner runs the trials; at the end the best trials are printed with where to look in MLflow.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from dakd.sweep.cluster import (
    alive_nodes,
    check_cluster_resources,
    check_cluster_storage,
    start_ray,
)
from dakd.sweep.parent import close_dead_runs, log_analysis, open_parent
from dakd.sweep.plan import plan
from dakd.sweep.spec import (
    SpecError,
    SweepSpec,
)
from dakd.sweep.stages import build_caches, train_stages
from dakd.sweep.state import resumed_attempt, write_state
from dakd.sweep.summary import SweepResult, format_summary, headline_metrics, summarize
from dakd.sweep.trial import SweepContext
from dakd.sweep.tuner import one_line_trial_errors, tuner_for


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
        failed_stages = train_stages(the_plan.stages, context, log)
        build_caches(the_plan.caches, context, log)
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
