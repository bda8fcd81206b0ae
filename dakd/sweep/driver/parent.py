"""The sweep's MLflow parent run: opened (or reopened on resume), and the runs of dead attempts.

Every stage, cache and trial run of a sweep is a child of its parent run. The parent carries the
driver's host and process id, so a later attempt can tell a killed attempt (its runs are closed
as KILLED) from one still running here or elsewhere (left alone). A sweep stopped by a signal
closes its own open runs before it exits (:func:`close_open_runs`). MLflow is imported only in
these functions: the parent run opens in a thread while Ray starts.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from dakd.sweep.spec.sweep_spec import SpecError, SweepSpec
from dakd.tracking.tags import (
    DRIVER_HOST,
    DRIVER_PID,
    ERROR,
    MLFLOW_PARENT_RUN_ID,
    STAGE,
    SWEEP,
    SWEEP_STAGE,
    TUNE_EXPERIMENT,
    tag_filter,
)

if TYPE_CHECKING:
    from dakd.sweep.driver.plan import Plan


def open_parent(spec: SweepSpec, the_plan: Plan, uri: str, name: str, tags: dict, run_id):
    """The sweep's MLflow experiment id and parent run (reopened by ``run_id`` on resume)."""
    from dakd.tracking.runs import RunLogger
    from dakd.tracking.store import configure_retries, get_run, prepare

    configure_retries(spec.tracking.retry_seconds)  # the driver's own store calls
    experiment_id = prepare(uri, spec.experiment_name)
    import socket

    driver = {DRIVER_HOST: socket.gethostname(), DRIVER_PID: str(os.getpid())}
    if run_id is not None:
        found = get_run(uri, run_id)
        if found.info.experiment_id != experiment_id:
            raise SpecError(
                f"{spec.path}: --resume: the latest sweep {name} belongs to another MLflow "
                f"experiment (id {found.info.experiment_id}) than {spec.experiment_name!r}; "
                "resume with the same tracking.experiment"
            )
    parent = RunLogger(
        uri,
        experiment_id,
        run_name=f"sweep {name}",
        tags={**tags, **driver, STAGE: SWEEP_STAGE, TUNE_EXPERIMENT: name},
        run_id=run_id,
    )
    if run_id is None:
        parent.log_params(
            {
                "spec": str(spec.path),
                "trials": the_plan.trials,
                "search": spec.tune.search,
                "scheduler": spec.tune.scheduler,
                "seeds": spec.tune.seeds,
                "metric": ", ".join(spec.tune.objectives),
                "mode": ", ".join(spec.tune.modes),  # which way each metric is better
            }
        )
        parent.log_artifact(spec.path, "spec")
    return experiment_id, parent


def close_dead_runs(uri: str, spec: SweepSpec, parent_run_id: str, log=print) -> int:
    """Close as KILLED the runs of this sweep that an earlier, killed attempt left RUNNING: its
    stage, cache and trial runs under ``parent_run_id`` (a resumed sweep; its trials and stages
    reopen their own runs when they continue), and whole earlier attempts of the sweep (a plain
    rerun) whose driver process is gone. An attempt whose driver still runs on this machine,
    or runs on another one, is left alone. Returns how many runs were closed."""
    import socket

    from dakd.tracking.runs import finish_run
    from dakd.tracking.store import find_runs

    here = socket.gethostname()
    running = find_runs(
        uri,
        spec.experiment_name,
        f"{tag_filter(SWEEP, spec.name)} and attributes.status = 'RUNNING'",
    )
    parents = {r.info.run_id: r for r in running if r.data.tags.get(STAGE) == SWEEP_STAGE}
    dead = set()
    for run_id, run in parents.items():
        if run_id == parent_run_id:
            continue
        host, pid = run.data.tags.get(DRIVER_HOST), run.data.tags.get(DRIVER_PID, "")
        if host == here and pid.isdigit() and not _alive(int(pid)):
            dead.add(run_id)
        elif host != here:
            log(
                f"note: sweep run {run_id} of {spec.name!r} is RUNNING with its driver on "
                f"{host or 'an unknown host'}; left as it is"
            )
    closed = 0
    for run in running:
        parent = run.data.tags.get(MLFLOW_PARENT_RUN_ID, "")
        if run.info.run_id == parent_run_id:
            continue
        if run.info.run_id in dead or parent == parent_run_id or parent in dead:
            finish_run(uri, run.info.run_id, "KILLED")
            closed += 1
    return closed


def close_open_runs(uri: str, parent_run_id: str, reason: str) -> int:
    """Close as KILLED, tagged ``error: reason``, the runs of a sweep that a signal stopped and
    that are still RUNNING: its stage, cache and trial runs (children of ``parent_run_id``;
    Ray's workers opened them, the driver closes them once those workers are stopped), then the
    parent run. Runs that ended before the signal keep their status. Returns how many it closed.
    """
    from dakd.tracking.runs import finish_run, set_run_tags
    from dakd.tracking.store import client_for, get_run, search_runs

    parent = get_run(uri, parent_run_id)
    children = search_runs(
        client_for(uri),
        [parent.info.experiment_id],
        f"{tag_filter(MLFLOW_PARENT_RUN_ID, parent_run_id)} and attributes.status = 'RUNNING'",
    )
    running = [run.info.run_id for run in children]
    if parent.info.status == "RUNNING":
        running.append(parent_run_id)  # last: a parent never ends before its children
    for run_id in running:
        set_run_tags(uri, run_id, {ERROR: reason})
        finish_run(uri, run_id, "KILLED")
    return len(running)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def log_analysis(uri: str, experiment: str, parent_run_id: str, log) -> None:
    """The sweep's result tables and plots (``dakd.tracking.report``) under ``analysis/`` of its
    parent run. The sweep is done by then: a failure here is a warning, never a failed sweep."""
    try:
        from dakd.tracking.report import log_sweep_analysis

        log_sweep_analysis(uri, experiment, parent_run_id, log=log)
    except Exception as exc:
        log(f"warning: result tables not written ({type(exc).__name__}: {exc})")
