"""Reading a study's runs from MLflow into one Arrow table, one row per run.

:func:`select` names the runs (an experiment, optionally one sweep's parent run) and
:func:`load_runs` reads them into the runs table (:mod:`dakd.tracking.runs_table`, saved as
``runs.parquet``), the table every later step (:mod:`dakd.tracking.groups`,
:mod:`dakd.tracking.tables`, :mod:`dakd.tracking.plots`) starts from; those steps never import
MLflow.

What a run is comes from its params (the flattened config) and tags:

* ``row`` names the table row: ``source-only``, ``oracle``, ``teacher-DA``, ``student-DA``,
  ``student-DA + extra steps`` (the fair baseline: stage ``student_da`` started from ``init``),
  ``DAKD (a)`` ... ``DAKD (d)``. Sweep parent runs (tag ``stage=sweep``) and teacher-output
  cache builds (``stage=teacher_cache``) are not data.
* ``config`` is a hash of every param except the seed and run bookkeeping
  (:data:`~dakd.tracking.runs_table.BOOKKEEPING_PARAMS`: names, output folders, checkpoint paths, the ``sweep.*`` copies
  of the sampled values), plus the row. Runs with the same ``config`` are one group.
* A param whose config key was renamed since (:mod:`dakd.config.renamed`) is read under its
  current name (``params.train.ema_decay`` for a run that logged ``train.ema``), and enters
  ``config`` under its old one, as in stage fingerprints: runs logged before and after a rename
  are one group, with the ``config`` they always had.
* The same configuration and seed recorded twice (a reused stage replayed as a table row, a
  sweep run again) counts once: the newest finished record; the others are marked
  ``duplicate``.
* When selected runs start from a stage recorded elsewhere in the store (their ``init`` or
  ``teacher`` checkpoint, trained by an earlier sweep), that stage's run is added too
  (``linked``), so a table always has its teacher-DA and student-DA baselines.

Besides MLflow's last value of each metric (``metrics.*``, the final checkpoint's evaluation),
a run's best evaluation is read too (``best.*``), for ``best_of_evaluations``.

This module reads MLflow; it never trains and does not import Ray.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.exceptions import MlflowException

from dakd.config.renamed import current_key
from dakd.paradigms import AUTO
from dakd.tracking.runs_table import (
    AnalysisError,
    config_hash,
    logged_value,
    mark_duplicates,
    records_table,
)
from dakd.tracking.store import retry_locked, search_runs
from dakd.tracking.tags import (
    LEVELS,
    MLFLOW_PARENT_RUN_ID,
    NOT_SET,
    PARADIGM,
    PBT_HISTORY,
    SCENARIO,
    SEED,
    STAGE,
    SWEEP_STAGE,
    TEACHER_CACHE_STAGE,
    tag_filter,
)

__all__ = ["Selection", "existing_client", "load_runs", "row_name", "select"]


@dataclass(frozen=True)
class Selection:
    """The runs to analyse: an experiment, or one sweep (parent run) of it."""

    uri: str
    experiment: str
    experiment_id: str
    sweep: str | None = None  # the parent run id

    def describe(self) -> str:
        where = f"sweep {self.sweep}" if self.sweep else "all runs"
        return f"experiment {self.experiment!r} ({where}) in {self.uri}"


def existing_client(uri: str) -> MlflowClient:
    """A client of an existing store (a missing SQLite file is an error, not a new store)."""
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///").split("?", 1)[0])
        if not db.is_file():
            raise AnalysisError(f"no MLflow store at {db} (tracking URI {uri})")
    return retry_locked(MlflowClient, tracking_uri=uri)


def _is_parent(run: Run) -> bool:
    return run.data.tags.get(STAGE) == SWEEP_STAGE


#: Run ``stage`` tags that are not table rows: sweep parent runs and teacher-output cache builds.
NOT_DATA = (SWEEP_STAGE, TEACHER_CACHE_STAGE)


def _is_data(run: Run) -> bool:
    return run.data.tags.get(STAGE) not in NOT_DATA


def select(uri: str, experiment: str, sweep: str | None = None) -> Selection:
    """Check that ``experiment`` (and the sweep parent run ``sweep``, or ``"latest"`` for the
    newest one) exist; raise :class:`AnalysisError` naming what is missing."""
    client = existing_client(uri)
    found = retry_locked(client.get_experiment_by_name, experiment)
    if found is None or found.lifecycle_stage != "active":
        names = sorted(e.name for e in retry_locked(client.search_experiments))
        raise AnalysisError(
            f"no experiment {experiment!r} in {uri} (there: {', '.join(names) or 'none'})"
        )
    experiment_id = found.experiment_id
    if sweep == "latest":
        newest = retry_locked(
            client.search_runs,
            [experiment_id],
            filter_string=tag_filter(STAGE, SWEEP_STAGE),
            max_results=1,
            order_by=["attributes.start_time DESC"],
        )
        if not newest:
            raise AnalysisError(f"experiment {experiment!r} has no sweep parent run")
        sweep = newest[0].info.run_id
    elif sweep:
        try:
            run = retry_locked(client.get_run, sweep)
        except MlflowException:  # not a whole run id: the start of a sweep's id
            parents = retry_locked(
                client.search_runs,
                [experiment_id],
                filter_string=tag_filter(STAGE, SWEEP_STAGE),
                order_by=["attributes.start_time DESC"],
            )
            run = sweep_by_id(parents, sweep, uri)
            sweep = run.info.run_id
        if run.info.experiment_id != experiment_id:
            raise AnalysisError(f"run {sweep} is not in experiment {experiment!r}")
        if not _is_parent(run):
            raise AnalysisError(f"run {sweep} is not a sweep's parent run (tag stage=sweep)")
    return Selection(uri, experiment, experiment_id, sweep or None)


def sweep_by_id(parents: list, sweep_id: str, uri: str):
    """The parent run among ``parents`` (newest first) whose id is ``sweep_id`` or starts with
    it; one :class:`AnalysisError` line naming the nearest ids when none or several do."""
    matches = [r for r in parents if r.info.run_id.startswith(sweep_id)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise AnalysisError(
            f"sweep id {sweep_id!r} is the start of {len(matches)} sweeps' ids "
            f"({', '.join(r.info.run_id for r in matches)}): give more of it"
        )
    ids = [r.info.run_id for r in parents]
    starts = {i[: len(sweep_id)]: i for i in reversed(ids)}  # each id by as much as was given
    near = [starts[s] for s in difflib.get_close_matches(sweep_id, list(starts), n=3, cutoff=0.3)]
    nearest = (
        f"nearest: {', '.join(near)}"
        if near
        else f"{len(ids)} sweep{'' if len(ids) == 1 else 's'} there"
    )
    raise AnalysisError(
        f"no sweep {sweep_id!r} in {uri} ({nearest}; list them with: "
        f"dakd sweeps --tracking-uri {uri})"
    )


def row_name(stage: str | None, paradigm: str | None, init: str | None, network: str | None) -> str:
    """The table row of a run from its ``stage``, ``paradigm``, ``init`` and ``network`` params."""
    if stage in ("source_only", "oracle"):
        name = "source-only" if stage == "source_only" else "oracle"
        return f"{name} (teacher)" if network == "teacher" else name
    if stage == "teacher_da":
        return "teacher-DA"
    if stage == "student_da":
        return "student-DA + extra steps" if init else "student-DA"
    if stage == "dakd":
        return f"DAKD ({paradigm})" if paradigm else "DAKD"
    return stage or ""


def _levels(params: dict[str, str], tags: dict[str, str]) -> str | None:
    """``output``, ``feature`` or ``output+feature`` for a DAKD run (tag, else the param)."""
    if tags.get(LEVELS) and tags[LEVELS] != NOT_SET:
        return tags[LEVELS]
    raw = params.get("distill.levels")
    if not raw:
        return None
    levels = logged_value(raw)
    return "+".join(levels) if isinstance(levels, list | tuple) else str(levels)


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except ValueError:
        return None


def _history_at(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    """``(step, value)`` of one metric, by step (the last value logged at a step wins)."""
    by_step = {m.step: m.value for m in retry_locked(client.get_metric_history, run_id, key)}
    return sorted(by_step.items())


def _best_evaluation(client: MlflowClient, run: Run) -> dict[str, Any]:
    """``best.*`` columns: the evaluation with the highest mIoU (the earliest on ties) and, at
    that step, pixel accuracy and per-class IoU."""
    metrics = run.data.metrics
    if "miou" not in metrics:
        return {}
    history = _history_at(client, run.info.run_id, "miou")
    steps = np.array([s for s, _ in history])
    values = np.array([v for _, v in history])
    at = int(np.argmax(values))
    best = {"best.miou": float(values[at]), "best.step": int(steps[at])}
    others = [k for k in metrics if k == "pixel_acc" or k.startswith("iou/")]
    if at == len(steps) - 1:  # the best is the final evaluation: the final values
        best.update({f"best.{k}": metrics[k] for k in others})
        return best
    for key in others:
        values_at = dict(_history_at(client, run.info.run_id, key))
        if int(steps[at]) in values_at:
            best[f"best.{key}"] = values_at[int(steps[at])]
    return best


def _trained(params: dict[str, str], tags: dict[str, str]) -> dict[str, str]:
    """What decides a run's weights, as its ``config`` hashes it: its params and, for a trial
    that PBT restarted from another's weights, its :data:`PBT_HISTORY` (the steps, the trials
    whose weights it took and the values it went on with). Such a trial's params keep the values
    it started with (MLflow params are immutable), so without its history two trials of one
    population that started alike would be one configuration: averaged together, or the older
    dropped as a duplicate of the same seed, though they trained different schedules."""
    history = tags.get(PBT_HISTORY)
    return {**params, PBT_HISTORY: history} if history else params


def _record(client: MlflowClient, run: Run, linked: bool) -> dict[str, Any]:
    """One row of :func:`load_runs`."""
    params = {current_key(k, note=False): v for k, v in run.data.params.items()}
    tags = run.data.tags
    stage = params.get("stage") or tags.get(STAGE)
    paradigm = (params.get("paradigm") or tags.get(PARADIGM)) if stage == "dakd" else None
    row = row_name(stage, paradigm, params.get("init"), params.get("network"))
    record = {
        "run_id": run.info.run_id,
        "run_name": run.info.run_name,
        "experiment_id": run.info.experiment_id,
        "status": run.info.status,
        "parent_run_id": tags.get(MLFLOW_PARENT_RUN_ID),
        "start_time": run.info.start_time,
        "end_time": run.info.end_time,
        "linked": linked,
        "row": row,
        "stage": stage,
        "scenario": params.get("data.scenario") or tags.get(SCENARIO),
        "paradigm": paradigm,
        "levels": _levels(params, tags) if stage == "dakd" else None,
        "seed": _int(params.get("seed") or tags.get(SEED)),
        "config": config_hash(_trained(params, tags), row),
    }
    record.update({f"tags.{k}": v for k, v in tags.items()})
    record.update({f"params.{k}": v for k, v in params.items()})
    record.update({f"metrics.{k}": v for k, v in run.data.metrics.items()})
    record.update(_best_evaluation(client, run))
    return record


def _stage_names(runs: Iterable[Run]) -> set[str]:
    """Run-directory names of the checkpoints the runs start from (``init``, ``teacher``)."""
    names = set()
    for run in runs:
        for key in ("init", "teacher"):
            value = run.data.params.get(key, "")
            if value and value != AUTO:
                names.add(Path(value).parent.name)
    return names


def _linked_stages(client: MlflowClient, runs: list[Run], page_size: int) -> list[Run]:
    """Runs of the stages the given runs start from that are not among them (any experiment of
    the store), found by their run-directory name (``params.name``)."""
    have = {run.data.params.get("name") for run in runs}
    wanted = sorted(_stage_names(runs) - have)
    if not wanted:
        return []
    experiments = [e.experiment_id for e in retry_locked(client.search_experiments)]
    found: list[Run] = []
    for name in wanted:
        literal = name.replace("'", "\\'")
        found += [
            run
            for run in search_runs(client, experiments, f"params.name = '{literal}'", page_size)
            if _is_data(run)
        ]
    return found


def load_runs(selection: Selection, page_size: int = 1000) -> pa.Table:
    """One row per run of ``selection`` (every status; sweep parent runs and teacher-cache
    builds left out), plus the
    runs of the stages they start from; columns: see the module docstring and ``runs.parquet``."""
    client = existing_client(selection.uri)
    filter_string = tag_filter(MLFLOW_PARENT_RUN_ID, selection.sweep) if selection.sweep else ""
    runs = [
        run
        for run in search_runs(client, [selection.experiment_id], filter_string, page_size)
        if _is_data(run)
    ]
    if not runs:
        raise AnalysisError(f"no runs to analyse in {selection.describe()}")
    selected = {run.info.run_id for run in runs}
    linked = [r for r in _linked_stages(client, runs, page_size) if r.info.run_id not in selected]
    records = [_record(client, run, False) for run in runs]
    records += [_record(client, run, True) for run in linked]
    mark_duplicates(records)
    return records_table(records)
