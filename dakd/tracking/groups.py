"""Groups of seeds: runs that differ only in their seed, averaged, and what tables and plots
ask of such groups (the best configuration of a row, the student-DA baseline, the gain over it).

Metrics are the final checkpoint's evaluation by default (MLflow's last value per metric);
``best_of_evaluations`` takes each run's best evaluation instead (optimistic: the checkpoint is
chosen on the validation set). Only FINISHED runs are averaged; FAILED/KILLED and
RUNNING/SCHEDULED runs are counted per group (``n_failed``, ``n_unfinished``) and reported.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from functools import cache
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from dakd.data.labels import CLASS_NAMES
from dakd.tracking.runs_table import finite_float, is_bookkeeping, logged_value
from dakd.tracking.tags import PBT_HISTORY

__all__ = [
    "BASELINE_ROW",
    "CLASS_KEYS",
    "ROW_ORDER",
    "STUDENT_ROWS",
    "TEACHER_ROWS",
    "aggregate",
    "baseline_means",
    "best_config",
    "dakd_groups",
    "delta_miou",
    "group_parameters_m",
    "parameters_m",
    "score",
    "varying_params",
]

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
FAILED = ("FAILED", "KILLED")
UNFINISHED = ("RUNNING", "SCHEDULED")
#: Value columns of the aggregated groups: name -> metric key in MLflow.
VALUES = {"miou": "miou", "pixel_acc": "pixel_acc", **{f"iou/{k}": f"iou/{k}" for k in CLASS_KEYS}}


def _value_column(runs: pa.Table, name: str, best: bool) -> str | None:
    column = f"{'best' if best else 'metrics'}.{VALUES[name]}"
    return column if column in runs.column_names else None


def aggregate(runs: pa.Table, best_of_evaluations: bool = False) -> pa.Table:
    """One row per configuration (``config``): for mIoU, pixel accuracy and each class IoU the
    mean, sample std (ddof=1; null for one run) and count over its finished runs, the last step
    (``steps``), ``n`` (finished runs with an mIoU), ``n_failed``, ``n_unfinished``, and the
    configuration's description (row, scenario, paradigm, levels, its ``params.*``; for a trial
    PBT restarted, which is a configuration of its own, its ``tags.pbt_history`` and the last
    ``metrics.weight/*``: the values it ended with)."""
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
        if c in ("row", "stage", "scenario", "paradigm", "levels", f"tags.{PBT_HISTORY}")
        or c.startswith(("params.", "metrics.weight/"))
    ]
    first = runs.group_by("config", use_threads=False).aggregate([(c, "first") for c in described])
    first = first.rename_columns([c.removesuffix("_first") for c in first.column_names])

    groups = first.join(counts, "config").join(numbers, "config", join_type="left outer")
    n = pc.fill_null(groups["n"], 0)
    groups = groups.set_column(groups.column_names.index("n"), "n", n)
    return groups.sort_by([("row", "ascending"), ("config", "ascending")])


def parameters_m(name: str, width: float, args: dict[str, Any] | None = None) -> float:
    """Parameters (millions) of the registered segmenter ``name`` at ``width``, built with the
    builder arguments ``args`` (``models.*.args``: a decoder for ``output_stride`` 4 adds
    parameters); NaN for a model the registry cannot build. Counted once per (name, width,
    args), on the meta device."""
    frozen = tuple(sorted((str(k), v) for k, v in (args or {}).items()))
    try:
        return _parameters_m(str(name), float(width), frozen)
    except TypeError:  # an unhashable argument (a list): counted, not cached
        return _parameters_m.__wrapped__(str(name), float(width), frozen)


@cache
def _parameters_m(name: str, width: float, args: tuple[tuple[str, Any], ...]) -> float:
    import torch

    from dakd.models import count_parameters, create_model

    try:
        with torch.device("meta"):
            model = create_model(name, width=width, **dict(args))
    except (ValueError, TypeError, KeyError):
        return math.nan
    return count_parameters(model) / 1e6


def group_parameters_m(group: dict[str, Any]) -> float:
    role = "teacher" if group["row"] in TEACHER_ROWS else "student"
    name = group.get(f"params.models.{role}.name")
    width = finite_float(group.get(f"params.models.{role}.width"))
    prefix = f"params.models.{role}.args."
    args = {
        key[len(prefix) :]: logged_value(value)
        for key, value in group.items()
        if key.startswith(prefix) and value
    }
    return parameters_m(name, width, args) if name and width else math.nan


def score(group: dict[str, Any]) -> float:
    """A group's mean mIoU; ``-inf`` for a group without one (all its runs failed, say)."""
    mean = finite_float(group.get("miou_mean"))
    return -math.inf if mean is None else mean


def best_config(candidates: list[dict[str, Any]]) -> dict[str, Any]:
    """The configuration with the highest mean mIoU (configurations without one last)."""
    return max(candidates, key=score)


def baseline_means(groups: list[dict[str, Any]]) -> dict[str, float]:
    """Scenario -> the student-DA row's mean mIoU (its best configuration)."""
    out = {}
    for scenario in {g["scenario"] for g in groups}:
        rows = [g for g in groups if g["scenario"] == scenario and g["row"] == BASELINE_ROW]
        mean = finite_float(best_config(rows).get("miou_mean")) if rows else None
        if mean is not None:
            out[scenario] = mean
    return out


def delta_miou(group: dict[str, Any], baselines: dict[str, float]) -> float:
    mean = finite_float(group.get("miou_mean"))
    base = baselines.get(group["scenario"])
    return math.nan if mean is None or base is None else mean - base


def varying_params(groups: list[dict[str, Any]], exclude: Iterable[str] = ()) -> list[str]:
    """``params.*`` columns (not bookkeeping, not ``exclude``) with more than one value."""
    keys = sorted({k for g in groups for k in g if k.startswith("params.")})
    skip = set(exclude)
    out = []
    for key in keys:
        name = key.removeprefix("params.")
        if is_bookkeeping(name) or key in skip:
            continue
        if len({g.get(key) for g in groups}) > 1:
            out.append(key)
    return out


def dakd_groups(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [g for g in groups if g.get("stage") == "dakd"]
