"""Result tables and plots of a study, built from its MLflow runs.

The chain is ``select`` (an experiment, optionally one sweep's parent run) -> :func:`load_runs`
(one row per run in a :class:`pyarrow.Table`, saved as ``runs.parquet``) -> :func:`aggregate`
(runs that differ only in their seed form one group: mean, sample std, n) -> the paper's tables
(:func:`build_tables`, written as Markdown, LaTeX, CSV and Parquet by :func:`write_tables`) and
plots (:func:`make_plots`, PNG).

What a run is comes from its params (the flattened config) and tags:

* ``row`` names the table row: ``source-only``, ``oracle``, ``teacher-DA``, ``student-DA``,
  ``student-DA + extra steps`` (the fair baseline: stage ``student_da`` started from ``init``),
  ``DAKD (a)`` ... ``DAKD (d)``. Sweep parent runs (tag ``stage=sweep``) and teacher-output
  cache builds (``stage=teacher_cache``) are not data.
* ``config`` is a hash of every param except the seed and run bookkeeping
  (:data:`BOOKKEEPING_PARAMS`: names, output folders, checkpoint paths, the ``sweep.*`` copies
  of the sampled values), plus the row. Runs with the same ``config`` are one group.
* The same configuration and seed recorded twice (a reused stage replayed as a table row, a
  sweep run again) counts once: the newest finished record; the others are marked
  ``duplicate``.
* When selected runs start from a stage recorded elsewhere in the store (their ``init`` or
  ``teacher`` checkpoint, trained by an earlier sweep), that stage's run is added too
  (``linked``), so a table always has its teacher-DA and student-DA baselines.

Metrics are the final checkpoint's evaluation by default (MLflow's last value per metric);
``best_of_evaluations`` takes each run's best evaluation instead (optimistic: the checkpoint is
chosen on the validation set). Only FINISHED runs are averaged; FAILED/KILLED and
RUNNING/SCHEDULED runs are counted per group (``n_failed``, ``n_unfinished``) and reported.

This module reads MLflow and writes files; it never trains and does not import Ray.
"""

from __future__ import annotations

import ast
import hashlib
import json
import math
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv
import pyarrow.parquet as pq
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from dakd.data.labels import CLASS_NAMES
from dakd.tracking.runs import finite_float
from dakd.tracking.store import retry_locked, search_runs

__all__ = [
    "FORMATS",
    "ROW_ORDER",
    "AnalysisError",
    "ResultTable",
    "Selection",
    "aggregate",
    "best_trials_table",
    "build_tables",
    "levels_table",
    "load_runs",
    "log_files",
    "log_sweep_analysis",
    "loss_ablation_table",
    "make_plots",
    "parameters_m",
    "plot_parameters",
    "plot_per_class",
    "plot_sensitivity",
    "row_name",
    "scenario_tables",
    "select",
    "write_report",
    "write_runs",
    "write_tables",
]

#: Output formats of :func:`write_tables`.
FORMATS = ("md", "tex", "csv", "parquet")
#: Metric key of each class in the MLflow runs (``iou/<key>``), in train-id order.
CLASS_KEYS = tuple(name.replace(" ", "_") for name in CLASS_NAMES)
#: Rows of the per-scenario table, in the paper's order.
ROW_ORDER = (
    "source-only",
    "source-only (teacher)",
    "oracle",
    "oracle (teacher)",
    "teacher-DA",
    "student-DA",
    "student-DA + extra steps",
    "DAKD (a)",
    "DAKD (b)",
    "DAKD (c)",
    "DAKD (d)",
)
#: Rows whose network is the teacher (their parameter count is the teacher's).
TEACHER_ROWS = ("source-only (teacher)", "oracle (teacher)", "teacher-DA")
#: Rows of trained students, the candidates for "the best student".
STUDENT_ROWS = ("student-DA", "student-DA + extra steps", *ROW_ORDER[-4:])
BASELINE_ROW = "student-DA"
#: Params that say who a run is or where it wrote, not what it trained: ignored when grouping.
#: ``init``/``teacher`` are checkpoint paths that differ per seed; their presence is in the row.
BOOKKEEPING_PARAMS = (
    "name",
    "out_dir",
    "seed",
    "init",
    "teacher",
    "data.cache_dir",
    "train.progress",
    "train.log_interval",
)
#: Distillation terms of the loss ablation: param -> column header.
LOSS_TERMS = {"loss.kl": "KL", "loss.mse": "MSE", "loss.pseudo": "pseudo-T"}
LEVEL_ORDER = ("output", "feature", "output+feature")
FAILED = ("FAILED", "KILLED")
UNFINISHED = ("RUNNING", "SCHEDULED")
#: Value columns of the aggregated groups: name -> metric key in MLflow.
VALUES = {"miou": "miou", "pixel_acc": "pixel_acc", **{f"iou/{k}": f"iou/{k}" for k in CLASS_KEYS}}
DASH = "–"


class AnalysisError(ValueError):
    """A selection that cannot be analysed (no such experiment, sweep or runs); one line."""


# ------------------------------------------------------------------------------------------------
# Selecting and loading runs
# ------------------------------------------------------------------------------------------------


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


def _client(uri: str) -> MlflowClient:
    """A client of an existing store (a missing SQLite file is an error, not a new store)."""
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///").split("?", 1)[0])
        if not db.is_file():
            raise AnalysisError(f"no MLflow store at {db} (tracking URI {uri})")
    return retry_locked(MlflowClient, tracking_uri=uri)


def _is_parent(run: Run) -> bool:
    return run.data.tags.get("stage") == "sweep"


#: Run ``stage`` tags that are not table rows: sweep parent runs and teacher-output cache builds.
NOT_DATA = ("sweep", "teacher_cache")


def _is_data(run: Run) -> bool:
    return run.data.tags.get("stage") not in NOT_DATA


def select(uri: str, experiment: str, sweep: str | None = None) -> Selection:
    """Check that ``experiment`` (and the sweep parent run ``sweep``, or ``"latest"`` for the
    newest one) exist; raise :class:`AnalysisError` naming what is missing."""
    client = _client(uri)
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
            filter_string="tags.stage = 'sweep'",
            max_results=1,
            order_by=["attributes.start_time DESC"],
        )
        if not newest:
            raise AnalysisError(f"experiment {experiment!r} has no sweep parent run")
        sweep = newest[0].info.run_id
    elif sweep:
        try:
            run = retry_locked(client.get_run, sweep)
        except MlflowException:
            raise AnalysisError(f"no run {sweep!r} in {uri}") from None
        if run.info.experiment_id != experiment_id:
            raise AnalysisError(f"run {sweep} is not in experiment {experiment!r}")
        if not _is_parent(run):
            raise AnalysisError(f"run {sweep} is not a sweep's parent run (tag stage=sweep)")
    return Selection(uri, experiment, experiment_id, sweep or None)


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
    if tags.get("levels") and tags["levels"] != "-":
        return tags["levels"]
    raw = params.get("distill.levels")
    if not raw:
        return None
    try:
        levels = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw
    return "+".join(levels) if isinstance(levels, list | tuple) else str(levels)


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except ValueError:
        return None


def _is_bookkeeping(key: str) -> bool:
    return key in BOOKKEEPING_PARAMS or key.startswith("sweep.")


def _config_hash(params: dict[str, str], row: str) -> str:
    """What was trained, apart from the seed: 12 hex digits."""
    key = {k: v for k, v in params.items() if not _is_bookkeeping(k)}
    key["row"] = row
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


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


def _record(client: MlflowClient, run: Run, linked: bool) -> dict[str, Any]:
    """One row of :func:`load_runs`."""
    params, tags = run.data.params, run.data.tags
    stage = params.get("stage") or tags.get("stage")
    paradigm = (params.get("paradigm") or tags.get("paradigm")) if stage == "dakd" else None
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
        "scenario": params.get("data.scenario") or tags.get("scenario"),
        "paradigm": paradigm,
        "levels": _levels(params, tags) if stage == "dakd" else None,
        "seed": _int(params.get("seed") or tags.get("seed")),
        "config": _config_hash(params, row),
    }
    record.update({f"tags.{k}": v for k, v in tags.items()})
    record.update({f"params.{k}": v for k, v in params.items()})
    record.update({f"metrics.{k}": v for k, v in run.data.metrics.items()})
    record.update(_best_evaluation(client, run))
    return record


_FIXED_TYPES = {
    "run_id": pa.string(),
    "run_name": pa.string(),
    "experiment_id": pa.string(),
    "status": pa.string(),
    "parent_run_id": pa.string(),
    "start_time": pa.timestamp("ms", tz="UTC"),
    "end_time": pa.timestamp("ms", tz="UTC"),
    "linked": pa.bool_(),
    "row": pa.string(),
    "stage": pa.string(),
    "scenario": pa.string(),
    "paradigm": pa.string(),
    "levels": pa.string(),
    "seed": pa.int64(),
    "config": pa.string(),
    "duplicate": pa.bool_(),
}


def _column_type(name: str) -> pa.DataType:
    if name in _FIXED_TYPES:
        return _FIXED_TYPES[name]
    if name == "best.step":
        return pa.int64()
    if name.startswith(("metrics.", "best.")):
        return pa.float64()
    return pa.string()


def _records_table(records: list[dict[str, Any]]) -> pa.Table:
    """Records with different keys -> one table (the union of columns, nulls where absent)."""
    fixed = [k for k in _FIXED_TYPES if any(k in r for r in records)]
    rest = sorted({k for r in records for k in r} - set(fixed))
    prefixes = ("tags.", "params.", "metrics.", "best.")
    rest.sort(key=lambda k: next((i for i, p in enumerate(prefixes) if k.startswith(p)), 4))
    columns = {k: pa.array([r.get(k) for r in records], type=_column_type(k)) for k in fixed + rest}
    return pa.table(columns)


def _mark_duplicates(records: list[dict[str, Any]]) -> None:
    """Set ``duplicate``: of several records of one configuration and seed, all but the newest
    finished one (the newest one, if none finished)."""
    newest: dict[tuple, dict[str, Any]] = {}
    for record in sorted(records, key=lambda r: r["start_time"] or 0):
        record["duplicate"] = False
        if record["seed"] is None:
            continue
        key = (record["config"], record["seed"])
        kept = newest.get(key)
        if kept is None or record["status"] == "FINISHED" or kept["status"] != "FINISHED":
            if kept is not None:
                kept["duplicate"] = True
            newest[key] = record
        else:
            record["duplicate"] = True


def _stage_names(runs: Iterable[Run]) -> set[str]:
    """Run-directory names of the checkpoints the runs start from (``init``, ``teacher``)."""
    names = set()
    for run in runs:
        for key in ("init", "teacher"):
            value = run.data.params.get(key, "")
            if value and value != "auto":
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
    client = _client(selection.uri)
    filter_string = (
        f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{selection.sweep}'" if selection.sweep else ""
    )
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
    _mark_duplicates(records)
    return _records_table(records)


def write_runs(runs: pa.Table, out: str | Path) -> Path:
    """``runs.parquet`` in ``out``: the table every later analysis can start from."""
    path = Path(out) / "runs.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(runs, path)
    return path


# ------------------------------------------------------------------------------------------------
# Groups of seeds
# ------------------------------------------------------------------------------------------------


def _value_column(runs: pa.Table, name: str, best: bool) -> str | None:
    column = f"{'best' if best else 'metrics'}.{VALUES[name]}"
    return column if column in runs.column_names else None


def aggregate(runs: pa.Table, best_of_evaluations: bool = False) -> pa.Table:
    """One row per configuration (``config``): for mIoU, pixel accuracy and each class IoU the
    mean, sample std (ddof=1; null for one run) and count over its finished runs, the last step
    (``steps``), ``n`` (finished runs with an mIoU), ``n_failed``, ``n_unfinished``, and the
    configuration's description (row, scenario, paradigm, levels, its ``params.*``)."""
    runs = runs.filter(pc.invert(runs["duplicate"]))
    finished = runs.filter(pc.equal(runs["status"], "FINISHED"))
    values = {n: c for n in VALUES if (c := _value_column(runs, n, best_of_evaluations))}
    step = "best.step" if best_of_evaluations else "metrics.step"
    stats = []
    for column in values.values():
        stats += [
            (column, "mean"),
            (column, "stddev", pc.VarianceOptions(ddof=1)),
            (column, "count"),
        ]
    if step in runs.column_names:
        stats.append((step, "max"))
    numbers = finished.group_by("config", use_threads=False).aggregate(stats)
    renames = {"config": "config"}
    for name, column in values.items():
        for stat in ("mean", "stddev", "count"):
            renames[f"{column}_{stat}"] = f"{name}_{'std' if stat == 'stddev' else stat}"
    renames[f"{step}_max"] = "steps"
    numbers = numbers.rename_columns([renames.get(c, c) for c in numbers.column_names])
    if "miou_count" in numbers.column_names:
        numbers = numbers.append_column("n", numbers["miou_count"])
    else:
        numbers = numbers.append_column("n", pa.array([0] * len(numbers), pa.int64()))

    counts = runs.select(["config"]).append_column(
        "failed", pc.is_in(runs["status"], pa.array(FAILED)).cast(pa.int64())
    )
    counts = counts.append_column(
        "unfinished", pc.is_in(runs["status"], pa.array(UNFINISHED)).cast(pa.int64())
    )
    counts = counts.group_by("config", use_threads=False).aggregate(
        [("failed", "sum"), ("unfinished", "sum")]
    )
    counts = counts.rename_columns(["config", "n_failed", "n_unfinished"])

    described = [
        c
        for c in runs.column_names
        if c in ("row", "stage", "scenario", "paradigm", "levels") or c.startswith("params.")
    ]
    first = runs.group_by("config", use_threads=False).aggregate([(c, "first") for c in described])
    first = first.rename_columns([c.removesuffix("_first") for c in first.column_names])

    groups = first.join(counts, "config").join(numbers, "config", join_type="left outer")
    n = pc.fill_null(groups["n"], 0)
    groups = groups.set_column(groups.column_names.index("n"), "n", n)
    return groups.sort_by([("row", "ascending"), ("config", "ascending")])


def parameters_m(name: str, width: float) -> float:
    """Parameters (millions) of the registered segmenter ``name`` at ``width``; NaN for a model
    the registry cannot build. Counted once per (name, width), on the meta device."""
    return _parameters_m(str(name), float(width))


@cache
def _parameters_m(name: str, width: float) -> float:
    import torch

    from dakd.models import count_parameters, create_model

    try:
        with torch.device("meta"):
            model = create_model(name, width=width)
    except (ValueError, TypeError, KeyError):
        return math.nan
    return count_parameters(model) / 1e6


def _group_parameters_m(group: dict[str, Any]) -> float:
    role = "teacher" if group["row"] in TEACHER_ROWS else "student"
    name = group.get(f"params.models.{role}.name")
    width = finite_float(group.get(f"params.models.{role}.width"))
    return parameters_m(name, width) if name and width else math.nan


# ------------------------------------------------------------------------------------------------
# Tables
# ------------------------------------------------------------------------------------------------


@dataclass
class ResultTable:
    """A table as displayed (``header``/``cells``, for Markdown and LaTeX) and as numbers
    (``data``, for CSV and Parquet), with its caption and footnotes."""

    name: str  # file stem
    title: str
    caption: str
    header: list[str]
    cells: list[list[str]]
    data: pa.Table
    notes: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        def line(items: Sequence[str]) -> str:
            return "| " + " | ".join(str(i).replace("|", "\\|") for i in items) + " |"

        lines = [f"### {self.title}", "", self.caption, "", line(self.header)]
        lines.append("|" + "|".join("---" for _ in self.header) + "|")
        lines += [line(row) for row in self.cells]
        if self.notes:
            lines += [""] + [f"- {note}" for note in self.notes]
        return "\n".join(lines) + "\n"

    def latex(self) -> str:
        columns = "l" + "r" * (len(self.header) - 1)
        wide = len(self.header) > 10
        lines = [
            "% needs \\usepackage{booktabs} (and graphicx, amssymb for wide tables and ticks)",
            "\\begin{table}[t]",
            "\\centering",
            f"\\caption{{{_latex(self.title)}. {_latex(self.caption)}}}",
            f"\\label{{tab:{self.name.replace('_', '-')}}}",
        ]
        if wide:
            lines.append("\\resizebox{\\linewidth}{!}{%")
        lines += [
            f"\\begin{{tabular}}{{{columns}}}",
            "\\toprule",
            " & ".join(_latex(h) for h in self.header) + " \\\\",
            "\\midrule",
        ]
        lines += [" & ".join(_latex(c) for c in row) + " \\\\" for row in self.cells]
        lines += ["\\bottomrule", "\\end{tabular}" + ("}" if wide else "")]
        for note in self.notes:
            lines.append(f"\\par\\footnotesize {_latex(note)}")
        lines.append("\\end{table}")
        return "\n".join(lines) + "\n"


_LATEX = {
    "\\": "\\textbackslash{}",
    "&": "\\&",
    "%": "\\%",
    "$": "\\$",
    "#": "\\#",
    "_": "\\_",
    "{": "\\{",
    "}": "\\}",
    "~": "\\textasciitilde{}",
    "^": "\\textasciicircum{}",
    "±": "$\\pm$",
    "–": "--",
    "✓": "\\checkmark",
    "Δ": "$\\Delta$",
}


def _latex(text: str) -> str:
    """``text`` escaped for LaTeX; a leading minus of a number is set as one (``$-$``)."""
    text = str(text)
    if len(text) > 1 and text[0] == "-" and text[1].isdigit():
        return "$-$" + _latex(text[1:])
    return "".join(_LATEX.get(ch, ch) for ch in text)


def _fmt(value: Any, digits: int = 2, sign: bool = False) -> str:
    number = finite_float(value)
    if number is None:
        return DASH
    return f"{number:+.{digits}f}" if sign else f"{number:.{digits}f}"


def _mean_std(group: dict[str, Any], name: str = "miou", digits: int = 2) -> str:
    mean = finite_float(group.get(f"{name}_mean"))
    if mean is None:
        return DASH
    return f"{mean:.{digits}f} ± {_fmt(group.get(f'{name}_std'), digits)}"


def _value(text: str | None) -> str:
    """A param value for display: numbers with 3 significant digits."""
    number = finite_float(text)
    if number is None or text in ("True", "False"):
        return str(text)
    return f"{number:.3g}"


def _caption(best: bool) -> str:
    which = (
        "best evaluation of each run (optimistic: the checkpoint is chosen on the validation set)"
        if best
        else "final checkpoint of each run"
    )
    return (
        f"Target val mIoU (%), {which}; mean ± sample std over seeds, n = runs averaged. "
        "Failed and unfinished runs are counted, never averaged."
    )


def _failure_note(label: str, failed: int, unfinished: int) -> str | None:
    parts = [f"{failed} failed"] * bool(failed) + [f"{unfinished} unfinished"] * bool(unfinished)
    return f"{label}: {' and '.join(parts)} run(s), not averaged" if parts else None


def _score(group: dict[str, Any]) -> float:
    """A group's mean mIoU; ``-inf`` for a group without one (all its runs failed, say)."""
    mean = finite_float(group.get("miou_mean"))
    return -math.inf if mean is None else mean


def _best(candidates: list[dict[str, Any]]) -> dict[str, Any]:
    """The configuration with the highest mean mIoU (configurations without one last)."""
    return max(candidates, key=_score)


def _baselines(groups: list[dict[str, Any]]) -> dict[str, float]:
    """Scenario -> the student-DA row's mean mIoU (its best configuration)."""
    out = {}
    for scenario in {g["scenario"] for g in groups}:
        rows = [g for g in groups if g["scenario"] == scenario and g["row"] == BASELINE_ROW]
        mean = finite_float(_best(rows).get("miou_mean")) if rows else None
        if mean is not None:
            out[scenario] = mean
    return out


def _delta(group: dict[str, Any], baselines: dict[str, float]) -> float:
    mean = finite_float(group.get("miou_mean"))
    base = baselines.get(group["scenario"])
    return math.nan if mean is None or base is None else mean - base


def _varying(groups: list[dict[str, Any]], exclude: Iterable[str] = ()) -> list[str]:
    """``params.*`` columns (not bookkeeping, not ``exclude``) with more than one value."""
    keys = sorted({k for g in groups for k in g if k.startswith("params.")})
    skip = set(exclude)
    out = []
    for key in keys:
        name = key.removeprefix("params.")
        if _is_bookkeeping(name) or key in skip:
            continue
        if len({g.get(key) for g in groups}) > 1:
            out.append(key)
    return out


def _data(rows: list[dict[str, Any]], columns: Sequence[str]) -> pa.Table:
    """The numbers behind a table, ``columns`` in order; a missing number (NaN) is null."""
    out = {}
    for column in columns:
        values = [row.get(column) for row in rows]
        out[column] = pa.array([None if _missing(v) else v for v in values])
    return pa.table(out)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _number_columns(name: str) -> list[str]:
    return [f"{name}_mean", f"{name}_std", f"{name}_count"]


def scenario_tables(groups: list[dict[str, Any]], best: bool = False) -> list[ResultTable]:
    """Per scenario: rows source-only ... DAKD (d) (those with runs), columns the 19 class IoUs,
    mIoU, pixel accuracy, parameters (M), ΔmIoU against student-DA and n."""
    baselines = _baselines(groups)
    tables = []
    for scenario in sorted({g["scenario"] for g in groups if g["scenario"]}):
        shown, notes = [], []
        for row in ROW_ORDER:
            candidates = [g for g in groups if g["scenario"] == scenario and g["row"] == row]
            if not candidates:
                continue
            group = dict(_best(candidates))
            group["n_configs"] = len(candidates)
            group["n_failed"] = sum(g["n_failed"] for g in candidates)
            group["n_unfinished"] = sum(g["n_unfinished"] for g in candidates)
            group["params_m"] = _group_parameters_m(group)
            group["delta_miou"] = _delta(group, baselines)
            shown.append(group)
            if len(candidates) > 1:
                notes.append(f"{row}: best of {len(candidates)} configurations by mean mIoU")
            note = _failure_note(row, group["n_failed"], group["n_unfinished"])
            notes += [note] if note else []
        if not shown:
            continue
        header = ["row", *CLASS_NAMES, "mIoU", "pixel acc.", "params (M)", "ΔmIoU", "n"]
        cells = [
            [
                g["row"],
                *(_fmt(g.get(f"iou/{k}_mean"), 1) for k in CLASS_KEYS),
                _mean_std(g),
                _mean_std(g, "pixel_acc"),
                _fmt(g["params_m"]),
                _fmt(g["delta_miou"], sign=True),
                str(g["n"]),
            ]
            for g in shown
        ]
        columns = ["scenario", "row", "config", "n", "n_failed", "n_unfinished", "n_configs"]
        columns += [*_number_columns("miou"), *_number_columns("pixel_acc")]
        columns += [c for k in CLASS_KEYS for c in (f"iou/{k}_mean", f"iou/{k}_std")]
        columns += ["params_m", "delta_miou", "steps"]
        tables.append(
            ResultTable(
                name=f"scenario_{scenario}",
                title=f"Results, {scenario.replace('_', '-')}",
                caption=_caption(best) + " ΔmIoU: against student-DA.",
                header=header,
                cells=cells,
                data=_data(shown, columns),
                notes=notes,
            )
        )
    return tables


def _dakd(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [g for g in groups if g.get("stage") == "dakd"]


def _terms(group: dict[str, Any]) -> tuple[bool, ...]:
    return tuple((finite_float(group.get(f"params.{k}")) or 0.0) > 0 for k in LOSS_TERMS)


def loss_ablation_table(groups: list[dict[str, Any]], best: bool = False) -> ResultTable | None:
    """Which of KL, MSE and pseudo-teacher CE are on (✓) -> mIoU; ``None`` unless the DAKD
    runs switch terms on and off."""
    dakd = _dakd(groups)
    if len({_terms(g) for g in dakd}) < 2:
        return None
    baselines = _baselines(groups)
    extra = _varying(dakd, exclude=[f"params.{k}" for k in LOSS_TERMS])
    dakd.sort(key=lambda g: (sum(_terms(g)), [not on for on in _terms(g)], _score(g)))
    header = [*LOSS_TERMS.values(), *(k.removeprefix("params.") for k in extra)]
    header += ["mIoU", "n", "ΔmIoU"]
    rows, cells, notes = [], [], []
    for g in dakd:
        marks = ["✓" if on else "" for on in _terms(g)]
        cells.append(
            [
                *marks,
                *(_value(g.get(k)) for k in extra),
                _mean_std(g),
                str(g["n"]),
                _fmt(_delta(g, baselines), sign=True),
            ]
        )
        rows.append(
            {
                **{k: finite_float(g.get(f"params.{k}")) for k in LOSS_TERMS},
                **{k.removeprefix("params."): g.get(k) for k in extra},
                "scenario": g["scenario"],
                "config": g["config"],
                "delta_miou": _delta(g, baselines),
                **{c: g.get(c) for c in ("n", "n_failed", "n_unfinished")},
                **{c: g.get(c) for c in _number_columns("miou")},
            }
        )
        label = " + ".join(t for t, on in zip(LOSS_TERMS.values(), _terms(g)) if on) or "none"
        note = _failure_note(label, g["n_failed"], g["n_unfinished"])
        notes += [note] if note else []
    columns = [*LOSS_TERMS, *(k.removeprefix("params.") for k in extra), "scenario", "config"]
    columns += ["n", "n_failed", "n_unfinished"]
    columns += [*_number_columns("miou"), "delta_miou"]
    return ResultTable(
        name="loss_ablation",
        title="Loss ablation (distillation terms)",
        caption=_caption(best) + " ✓: the term's weight is non-zero; ΔmIoU: against student-DA.",
        header=header,
        cells=cells,
        data=_data(rows, columns),
        notes=notes,
    )


def _level_rank(levels: str | None) -> tuple[int, str]:
    return (LEVEL_ORDER.index(levels) if levels in LEVEL_ORDER else len(LEVEL_ORDER), levels or "")


def levels_table(groups: list[dict[str, Any]], best: bool = False) -> ResultTable | None:
    """mIoU on a grid of distillation levels (rows) x paradigm (columns), per scenario; ``None``
    unless the DAKD runs use more than one set of levels."""
    dakd = _dakd(groups)
    if len({g["levels"] for g in dakd}) < 2:
        return None
    scenarios = sorted({g["scenario"] for g in dakd})
    paradigms = sorted({g["paradigm"] for g in dakd if g["paradigm"]})
    header = ["scenario", "levels", *(f"DAKD ({p})" for p in paradigms)]
    cells, rows, notes = [], [], []
    for scenario in scenarios:
        levels = sorted({g["levels"] for g in dakd if g["scenario"] == scenario}, key=_level_rank)
        for level in levels:
            line = [scenario, level]
            for paradigm in paradigms:
                cell = [
                    g
                    for g in dakd
                    if (g["scenario"], g["levels"], g["paradigm"]) == (scenario, level, paradigm)
                ]
                if not cell:
                    line.append(DASH)
                    continue
                g = _best(cell)
                mark = "*" if len(cell) > 1 else ""
                line.append(f"{_mean_std(g)} (n={g['n']}){mark}")
                failed = sum(c["n_failed"] for c in cell)
                unfinished = sum(c["n_unfinished"] for c in cell)
                rows.append(
                    {
                        "scenario": scenario,
                        "levels": level,
                        "paradigm": paradigm,
                        "config": g["config"],
                        "n": g["n"],
                        "n_failed": failed,
                        "n_unfinished": unfinished,
                        "n_configs": len(cell),
                        **{c: g.get(c) for c in _number_columns("miou")},
                    }
                )
                note = _failure_note(f"{level}, DAKD ({paradigm})", failed, unfinished)
                notes += [note] if note else []
            cells.append(line)
    if any(r["n_configs"] > 1 for r in rows):
        notes.insert(0, "*: best of several configurations by mean mIoU")
    columns = ["scenario", "levels", "paradigm", "config", "n", "n_failed", "n_unfinished"]
    columns += ["n_configs", *_number_columns("miou")]
    return ResultTable(
        name="levels_paradigm",
        title="Distillation levels x paradigm",
        caption=_caption(best),
        header=header,
        cells=cells,
        data=_data(rows, columns),
        notes=notes,
    )


def best_trials_table(
    groups: list[dict[str, Any]], best: bool = False, top: int = 10
) -> ResultTable | None:
    """The ``top`` DAKD configurations by mean mIoU with their swept values (the params that
    vary across the DAKD runs); ``None`` unless a loss weight varies."""
    dakd = _dakd(groups)
    swept = _varying(dakd)
    if not any(k.startswith("params.loss.") for k in swept):
        return None
    baselines = _baselines(groups)
    ranked = sorted(dakd, key=_score, reverse=True)[:top]
    header = ["rank", *(k.removeprefix("params.") for k in swept), "mIoU", "n", "steps", "ΔmIoU"]
    cells, rows, notes = [], [], []
    for rank, g in enumerate(ranked, 1):
        cells.append(
            [
                str(rank),
                *(_value(g.get(k)) for k in swept),
                _mean_std(g),
                str(g["n"]),
                _fmt(g.get("steps"), 0),
                _fmt(_delta(g, baselines), sign=True),
            ]
        )
        rows.append(
            {
                "rank": rank,
                **{k.removeprefix("params."): finite_float(g.get(k)) for k in swept},
                "scenario": g["scenario"],
                "config": g["config"],
                "steps": g.get("steps"),
                "delta_miou": _delta(g, baselines),
                **{c: g.get(c) for c in ("n", "n_failed", "n_unfinished")},
                **{c: g.get(c) for c in _number_columns("miou")},
            }
        )
        note = _failure_note(f"rank {rank}", g["n_failed"], g["n_unfinished"])
        notes += [note] if note else []
    base = ", ".join(f"{s} {v:.2f}" for s, v in sorted(baselines.items()))
    caption = _caption(best) + f" Top {len(ranked)} of {len(dakd)} configurations"
    caption += f"; ΔmIoU against student-DA ({base})." if base else "."
    columns = ["rank", *(k.removeprefix("params.") for k in swept), "scenario", "config", "n"]
    columns += ["n_failed", "n_unfinished", *_number_columns("miou"), "steps", "delta_miou"]
    return ResultTable(
        name="best_trials",
        title="Best configurations of the search",
        caption=caption,
        header=header,
        cells=cells,
        data=_data(rows, columns),
        notes=notes,
    )


def build_tables(
    groups: pa.Table, best_of_evaluations: bool = False, top: int = 10
) -> list[ResultTable]:
    """Every table the groups support: per scenario always; the loss ablation, levels x
    paradigm and best configurations when the DAKD runs vary what those tables compare.
    With ``best_of_evaluations`` the table names end in ``_best``."""
    rows = [g for g in groups.to_pylist() if g["row"]]
    best = best_of_evaluations
    tables = scenario_tables(rows, best)
    tables += [
        t
        for t in (
            loss_ablation_table(rows, best),
            levels_table(rows, best),
            best_trials_table(rows, best, top),
        )
        if t is not None
    ]
    if best:
        for table in tables:
            table.name += "_best"
            table.title += " (best of evaluations)"
    return tables


def write_tables(
    tables: Sequence[ResultTable], out: str | Path, formats: Sequence[str] = FORMATS
) -> list[Path]:
    """Each table as ``<name>.<format>`` in ``out`` (``md``, ``tex``, ``csv``, ``parquet``) and,
    with ``md``, all of them in ``tables.md`` (``tables_best.md`` for best-of-evaluations)."""
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise AnalysisError(f"unknown format {unknown[0]!r}; choose from {', '.join(FORMATS)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for table in tables:
        for fmt in formats:
            path = out / f"{table.name}.{fmt}"
            if fmt == "md":
                path.write_text(table.markdown())
            elif fmt == "tex":
                path.write_text(table.latex())
            elif fmt == "csv":
                pyarrow.csv.write_csv(table.data, path)
            else:
                pq.write_table(table.data, path)
            written.append(path)
    if "md" in formats and tables:
        suffix = "_best" if all(t.name.endswith("_best") for t in tables) else ""
        index = out / f"tables{suffix}.md"
        index.write_text("\n".join(t.markdown() for t in tables))
        written.append(index)
    return written


# ------------------------------------------------------------------------------------------------
# Plots
# ------------------------------------------------------------------------------------------------


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _std(group: dict[str, Any]) -> float:
    return finite_float(group.get("miou_std")) or 0.0


def plot_sensitivity(groups: list[dict[str, Any]], path: Path) -> Path | None:
    """mIoU (mean, seed std as error bars) against each swept loss weight of the DAKD runs; the
    student-DA baseline as a dashed line. ``None`` when no loss weight varies."""
    dakd = [g for g in _dakd(groups) if finite_float(g.get("miou_mean")) is not None]
    swept = [
        k
        for k in _varying(dakd)
        if k.startswith("params.loss.") and all(finite_float(g.get(k)) is not None for g in dakd)
    ]
    if not swept:
        return None
    baselines = _baselines(groups)
    fig = _figure(3.6 * len(swept), 3.4)
    axes = fig.subplots(1, len(swept), squeeze=False, sharey=True)[0]
    for ax, key in zip(axes, swept):
        x = np.array([finite_float(g[key]) for g in dakd])
        y = np.array([finite_float(g["miou_mean"]) for g in dakd])
        ax.errorbar(x, y, yerr=[_std(g) for g in dakd], fmt="o", capsize=3, color="C0")
        for k, (scenario, value) in enumerate(sorted(baselines.items())):
            ax.axhline(value, ls="--", color=f"C{k + 1}", lw=1, label=f"student-DA {scenario}")
        if x.min() > 0 and x.max() / x.min() >= 10:
            ax.set_xscale("log")
        ax.set_xlabel(key.removeprefix("params."))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("target val mIoU (%)")
    if baselines:
        axes[0].legend(fontsize=7)
    fig.suptitle("DAKD mIoU against each swept weight (mean ± std over seeds)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    return path


def _best_per_row(groups: list[dict[str, Any]], scenario: str) -> dict[str, dict[str, Any]]:
    out = {}
    for row in ROW_ORDER:
        candidates = [
            g
            for g in groups
            if g["scenario"] == scenario and g["row"] == row and finite_float(g.get("miou_mean"))
        ]
        if candidates:
            out[row] = _best(candidates)
    return out


def plot_parameters(groups: list[dict[str, Any]], path: Path) -> Path | None:
    """mIoU against parameters (M) for teacher-DA, student-DA and the DAKD students, one colour
    per scenario; ``None`` unless some scenario has two of these rows."""
    wanted = ("teacher-DA", "student-DA", *ROW_ORDER[-4:])
    scenarios = sorted({g["scenario"] for g in groups if g["scenario"]})
    points = {}
    for scenario in scenarios:
        shown = {r: g for r, g in _best_per_row(groups, scenario).items() if r in wanted}
        if len(shown) >= 2:
            points[scenario] = shown
    if not points:
        return None
    fig = _figure(6.0, 4.0)
    ax = fig.add_subplot(1, 1, 1)
    for k, (scenario, shown) in enumerate(points.items()):
        x = [_group_parameters_m(g) for g in shown.values()]
        y = [finite_float(g["miou_mean"]) for g in shown.values()]
        ax.errorbar(
            x,
            y,
            yerr=[_std(g) for g in shown.values()],
            fmt="o",
            capsize=3,
            color=f"C{k}",
            label=scenario,
        )
        for xi, yi, row in zip(x, y, shown):
            ax.annotate(row, (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel("parameters (M)")
    ax.set_ylabel("target val mIoU (%)")
    ax.set_title("mIoU against model size (mean ± std over seeds)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    return path


def plot_per_class(groups: list[dict[str, Any]], scenario: str, path: Path) -> Path | None:
    """Per-class IoU bars of the best student (by mean mIoU) against the teacher-DA; ``None``
    unless the scenario has both."""
    shown = _best_per_row(groups, scenario)
    students = [shown[r] for r in STUDENT_ROWS if r in shown]
    if "teacher-DA" not in shown or not students:
        return None
    student = _best(students)
    bars = {"teacher-DA": shown["teacher-DA"], f"best student: {student['row']}": student}
    fig = _figure(9.0, 3.8)
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(CLASS_KEYS))
    width = 0.4
    for k, (label, g) in enumerate(bars.items()):
        values = [finite_float(g.get(f"iou/{c}_mean")) or 0.0 for c in CLASS_KEYS]
        errors = [finite_float(g.get(f"iou/{c}_std")) or 0.0 for c in CLASS_KEYS]
        mean = finite_float(g["miou_mean"])
        ax.bar(
            x + (k - 0.5) * width,
            values,
            width,
            yerr=errors,
            capsize=2,
            label=f"{label} (mIoU {mean:.2f})",
        )
    ax.set_xticks(x, CLASS_NAMES, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("IoU (%)")
    ax.set_title(f"Per-class IoU, {scenario} (mean ± std over seeds)", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    return path


def make_plots(
    groups: pa.Table,
    out: str | Path,
    best_of_evaluations: bool = False,
    log: Callable[[str], None] = print,
) -> list[Path]:
    """``sensitivity.png``, ``miou_vs_parameters.png`` and ``per_class_<scenario>.png`` in
    ``out``, each skipped with a one-line notice when the runs lack what it needs."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [g for g in groups.to_pylist() if g["row"]]
    suffix = "_best" if best_of_evaluations else ""
    written = []
    plots = [
        (plot_sensitivity, (), "sensitivity", "the DAKD runs vary no loss weight"),
        (
            plot_parameters,
            (),
            "miou_vs_parameters",
            "no scenario has two of teacher-DA, student-DA, DAKD",
        ),
    ]
    scenarios = sorted({g["scenario"] for g in rows if g["scenario"]})
    plots += [
        (plot_per_class, (s,), f"per_class_{s}", f"{s} lacks a teacher-DA or a student row")
        for s in scenarios
    ]
    for plot, args, name, reason in plots:
        path = plot(rows, *args, out / f"{name}{suffix}.png")
        if path is None:
            log(f"skipped {name}{suffix}.png: {reason}")
        else:
            written.append(path)
    return written


# ------------------------------------------------------------------------------------------------
# Putting it together
# ------------------------------------------------------------------------------------------------


def write_report(
    selection: Selection,
    out: str | Path,
    tables: bool = True,
    plots: bool = False,
    formats: Sequence[str] = FORMATS,
    best_of_evaluations: bool = False,
    top: int = 10,
    log: Callable[[str], None] = print,
) -> list[Path]:
    """Load the selection, write ``runs.parquet`` and (as asked) its tables and plots into
    ``out``; the files written."""
    runs = load_runs(selection)
    groups = aggregate(runs, best_of_evaluations)
    written = []
    if tables:
        written.append(write_runs(runs, out))
        written += write_tables(build_tables(groups, best_of_evaluations, top), out, formats)
    if plots:
        written += make_plots(groups, out, best_of_evaluations, log)
    linked = pc.sum(runs["linked"]).as_py() or 0
    duplicates = pc.sum(runs["duplicate"]).as_py() or 0
    log(
        f"{selection.describe()}: {len(runs)} runs ({linked} linked stage runs, {duplicates} "
        f"duplicate records), {len(groups)} configurations, {len(written)} files written"
    )
    return written


def log_files(selection: Selection, files: Sequence[Path], artifact_path: str = "analysis"):
    """Log ``files`` as artifacts of the selected sweep's parent run, under ``artifact_path``
    (they show in the MLflow UI next to its runs). Without a sweep, nothing is logged."""
    if not selection.sweep:
        return
    client = _client(selection.uri)
    for path in files:
        retry_locked(client.log_artifact, selection.sweep, str(path), artifact_path)


def log_sweep_analysis(
    uri: str, experiment: str, parent_run_id: str, log: Callable[[str], None] = print
) -> list[str]:
    """The tables and plots of one sweep, logged under ``analysis/`` of its parent run (what the
    sweep driver calls at the end of a sweep); the artifact paths."""
    selection = select(uri, experiment, parent_run_id)
    with tempfile.TemporaryDirectory(prefix="dakd-analysis-") as tmp:
        files = write_report(selection, tmp, tables=True, plots=True, log=log)
        log_files(selection, files)
    log(f"result tables and plots: artifacts analysis/ of run {parent_run_id}")
    return [f"analysis/{path.name}" for path in files]
