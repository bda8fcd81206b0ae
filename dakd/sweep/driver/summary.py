"""What a sweep found: one row per trial, best first, set against the baselines.

The rows are printed at the end of a sweep and logged on its MLflow parent run (the printed text
as ``summary.md``, its Markdown part as the run's description, the headline metrics on the run
itself, so the runs table shows them: :func:`table_view` is the table the summary links to).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dakd.config import ConfigError
from dakd.recipes.stages import error_line
from dakd.sweep.driver.front import figures_of, front_markdown, trials_on_front
from dakd.sweep.spec.sweep_spec import SpecError, SweepSpec, resolve, trial_label, trial_overrides
from dakd.tabular import markdown_table
from dakd.tracking.locations import ui_address, ui_link

if TYPE_CHECKING:
    from dakd.sweep.driver.plan import Plan


@dataclass
class SweepResult:
    experiment_path: str
    parent_run_id: str
    tracking_uri: str
    rows: list[dict[str, Any]]
    #: per (scenario, seed): ``student-DA`` and ``fair baseline`` final values
    baselines: dict[tuple[str, int], dict[str, float]]
    errors: int
    failed_stages: list[str] = dataclasses.field(default_factory=list)
    #: several objectives: the rows on the Pareto front (:mod:`dakd.sweep.driver.front`)
    front: list[dict[str, Any]] = dataclasses.field(default_factory=list)


def summarize(grid, spec: SweepSpec, the_plan: Plan, parent_run_id: str, uri: str, path: str):
    """One row per trial: label, sampled values, final and best metric, steps, status."""
    metric = spec.tune.primary
    rows = []
    errors = 0
    for result in grid:
        config = {k: v for k, v in (result.config or {}).items()}
        metrics = result.metrics or {}
        history = result.metrics_dataframe
        best = (
            float(history[metric].max()) if history is not None and metric in history else math.nan
        )
        if result.error is not None:
            errors += 1
        try:
            trial_cfg = resolve(spec, config)
            where = (trial_cfg.data.scenario, trial_cfg.seed)
        except (ConfigError, SpecError):
            trial_cfg, where = None, None
        status = "done"
        if result.error is not None:
            status = "error"
        elif metrics.get("infeasible"):
            status = "infeasible"
        rows.append(
            {
                "trial": trial_label(spec, config),
                "where": where,
                "values": trial_overrides(spec, config),
                "final": float(metrics.get(metric, math.nan)),
                "best": best,
                "step": int(metrics.get("step", 0)),
                "status": status,
                "error": error_line(result.error) if result.error is not None else "",
                "mlflow_run_id": metrics.get("mlflow_run_id", ""),
                **figures_of(spec, trial_cfg, metrics),
            }
        )
    sign = -1.0 if spec.tune.primary_mode == "max" else 1.0
    rows.sort(key=lambda r: math.inf if math.isnan(r["final"]) else sign * r["final"])
    out = SweepResult(path, parent_run_id, uri, rows, baselines_of(the_plan, metric), errors)
    out.front = trials_on_front(rows, spec) if spec.tune.multi else []
    return out


def headline_metrics(result: SweepResult, spec: SweepSpec) -> dict[str, float]:
    """The parent run's metrics: the best trial's final value and, for a sweep of one scenario
    and seed, the baselines and the gains over them (the runs table shows them unexpanded)."""
    metric = spec.tune.primary
    out = {f"best_{metric}": result.rows[0]["final"]} if result.rows else {}
    heads = headline(result, spec.tune.primary_mode)
    if len(heads) == 1:
        (row,) = heads.values()
        names = {"student-DA": "student_da", "fair baseline": "fair_baseline"}
        for key, value in row.items():
            if key in names:
                out[f"{names[key]}_{metric}"] = value  # the baselines' values
            elif key != "best":
                out[key] = value  # the gains over them
    if spec.tune.multi:
        out["front_size"] = float(len(result.front))
    return {k: v for k, v in out.items() if not math.isnan(v)}


def baselines_of(the_plan: Plan, metric: str = "miou") -> dict[tuple[str, int], dict[str, float]]:
    """Per (scenario, seed), the final ``metric`` of the student-DA stage the trials start from
    and of their fair baseline (student-DA trained on for their steps), where trained."""
    from dakd.models import checkpoint as ckpt

    out: dict[tuple[str, int], dict[str, float]] = {}
    for stage in the_plan.stages:
        kind = {"student_da": "student-DA", "fair baseline": "fair baseline"}.get(stage.kind)
        if kind is None or not stage.checkpoint.exists():
            continue
        value = ckpt.load(stage.checkpoint)["metrics"].get(metric, math.nan)
        where = (stage.config.data.scenario, stage.config.seed)
        out.setdefault(where, {})[kind] = float(value)
    return out


def headline(result: SweepResult, mode: str = "max") -> dict[tuple[str, int], dict[str, float]]:
    """Per (scenario, seed) with a fair baseline: the best trial's final value, the baselines
    and the gains over each (``gain_over_student_da``, ``gain_over_fair_baseline``)."""
    sign = 1.0 if mode == "max" else -1.0
    out = {}
    for where, values in result.baselines.items():
        finals = [
            r["final"]
            for r in result.rows
            if r.get("where") == where and not math.isnan(r["final"])
        ]
        if not finals:
            continue
        best = max(finals) if mode == "max" else min(finals)
        row = {"best": best, **values}
        if "student-DA" in values:
            row["gain_over_student_da"] = sign * (best - values["student-DA"])
        if "fair baseline" in values:
            row["gain_over_fair_baseline"] = sign * (best - values["fair baseline"])
        out[where] = row
    return out


def headline_columns(metric: str) -> list[str]:
    """Every metric :func:`headline_metrics` may put on the parent run, in the summary's order."""
    return [
        f"best_{metric}",
        f"fair_baseline_{metric}",
        "gain_over_fair_baseline",
        f"student_da_{metric}",
        "gain_over_student_da",
    ]


def table_view(spec: SweepSpec) -> dict[str, Any]:
    """The runs table the summary links to: the runs best first by the sweep's metric, which
    the trials and stages carry, beside the headline metrics, which the parent runs carry (the
    arguments of :func:`~dakd.tracking.locations.ui_link` and ``save_view``)."""
    metric = spec.tune.primary
    others = [m for m in spec.tune.objectives[1:]]
    return {
        "order_by": metric,
        "ascending": spec.tune.primary_mode == "min",
        "columns": [
            metric,
            *others,
            *headline_columns(metric),
            *(["front_size"] if spec.tune.multi else []),
        ],
    }


def summary_markdown(result: SweepResult, spec: SweepSpec, top: int = 5) -> str:
    """What the sweep found, as Markdown: the best trials as a table, the stages and trials that
    failed and the best trial against the baselines as lists. The parent run's description."""
    metric = spec.tune.primary
    lines = [
        f"best trials of {spec.name} by final {metric} (of {len(result.rows)}; "
        f"{result.errors} failed):",
        "",
    ]
    header = ["trial", f"final {metric}", f"best {metric}", "steps", "status"]
    cells = [
        [row["trial"], f"{row['final']:.2f}", f"{row['best']:.2f}", row["step"], row["status"]]
        for row in result.rows[:top]
    ]
    lines.append(markdown_table(header, cells))
    if result.failed_stages:
        lines += ["", f"stages that failed ({len(result.failed_stages)}; their trials failed):"]
        lines += ["", *(f"- {line}" for line in result.failed_stages)]
    causes = sorted({row["error"] for row in result.rows if row.get("error")})
    if causes:
        lines += ["", f"why trials failed ({result.errors}):", ""]
        lines += [f"- {cause}" for cause in causes]
    lines += front_markdown(result, spec)
    heads = headline(result, spec.tune.primary_mode)
    if heads:
        lines += ["", f"the best trial against the baselines ({metric}):", ""]
        for (scenario, seed), row in heads.items():
            parts = [f"best trial {row['best']:.2f}"]
            if "fair baseline" in row:
                parts.append(
                    f"{row['gain_over_fair_baseline']:+.2f} over the fair baseline "
                    f"{row['fair baseline']:.2f} (student-DA trained on for the trials' steps)"
                )
            if "student-DA" in row:
                parts.append(
                    f"{row['gain_over_student_da']:+.2f} over student-DA {row['student-DA']:.2f}"
                )
            lines.append(f"- {scenario} seed={seed}: " + ", ".join(parts))
    return "\n".join(lines)


def format_summary(
    result: SweepResult,
    spec: SweepSpec,
    ui: str,
    experiment: str,
    top: int = 5,
    experiment_id: str = "",
):
    """:func:`summary_markdown` and where to look: the MLflow store, the command that opens its
    UI and, given ``experiment_id``, links to the runs table (:func:`table_view`, the view the
    driver saves) and the sweep's parent run; the Ray Tune experiment to resume."""
    lines = [
        "",
        summary_markdown(result, spec, top),
        "",
        f"MLflow:   {result.tracking_uri}",
        f"          experiment {experiment!r}, parent run {result.parent_run_id}",
        f"          {ui}",
    ]
    if experiment_id:
        where = ui_address(result.tracking_uri)
        # MLflow 3's UI opens an experiment on its GenAI overview (traces); this link opens
        # the runs table, best first, with the headline metrics (the parent runs' row)
        lines += [
            f"          then open {ui_link(experiment_id, **table_view(spec), address=where)}",
            f"          (the sweep: {ui_link(experiment_id, result.parent_run_id, address=where)})",
        ]
    lines += [f"Ray Tune: {result.experiment_path} (continue with --resume)"]
    return "\n".join(lines)
