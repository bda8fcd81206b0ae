"""What a sweep over students found: each trial's figures, the Pareto front, the best student
under each constraint, the front's MLflow tags and its plot.

With several objectives (``tune.metric: [miou, peak_memory_mb]``) no single trial is best: the
summary reports the trials no other trial beats on every objective at once
(:mod:`dakd.tracking.pareto`), tags their MLflow runs :data:`~dakd.tracking.tags.PARETO_FRONT`
and draws them. Trials that failed or were infeasible are never on the front.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dakd.config import ExperimentConfig
from dakd.evaluation.deploy import DEPLOY_METRICS
from dakd.tracking.pareto import best_under, front_table, nondominated_rows, plot_pareto

if TYPE_CHECKING:
    from dakd.sweep.spec.sweep_spec import SweepSpec

#: :class:`dakd.sweep.driver.summary.SweepResult` (which imports this module)
SweepResult = Any

#: The front table's columns (those some trial has).
COLUMNS = ("label", "paradigm", "miou", "peak_memory_mb", "latency_ms", "params_m", "gflops")


def student_label(cfg: ExperimentConfig) -> str:
    """A trial's student in a few characters, for plots: ``D22 w0.125 os2 o+f``."""
    model = cfg.models.student
    name = model.name.replace("drn_d_", "D")
    text = f"{name} w{model.width:g} os{model.output_stride}"
    if cfg.stage == "dakd":
        text += " " + "+".join(level[0] for level in cfg.distill.levels)
    return text


def figures_of(spec: SweepSpec, cfg: ExperimentConfig | None, metrics: dict) -> dict[str, Any]:
    """The figures of a trial's row: every objective's and deployment figure's final value, its
    paradigm and short label (what the front table and plot read)."""
    out: dict[str, Any] = {}
    for name in (*spec.tune.objectives, *DEPLOY_METRICS):
        value = metrics.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool):
            out[name] = float(value)
    if cfg is not None:
        out["short_label"] = student_label(cfg)
        out["paradigm"] = cfg.paradigm if cfg.stage == "dakd" else cfg.stage
    return out


def _candidates(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r["status"] == "done"]


def trials_on_front(rows: list[dict[str, Any]], spec: SweepSpec) -> list[dict[str, Any]]:
    """The finished rows on the Pareto front of ``spec``'s objectives, the first minimised
    objective ascending (memory, say), else the first objective best first."""
    return list(nondominated_rows(_candidates(rows), spec.tune.objectives, spec.tune.modes))


def _table_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**r, "label": r.get("trial", "")} for r in rows]


def front_markdown(result: SweepResult, spec: SweepSpec) -> list[str]:
    """The summary's lines about the front (several objectives), the best student under each
    constraint and the infeasible trials; none for a sweep of one objective and no constraint."""
    t = spec.tune
    lines: list[str] = []
    if t.multi:
        goals = ", ".join(f"{mode} {name}" for name, mode in zip(t.objectives, t.modes))
        lines += [
            "",
            f"the Pareto front ({len(result.front)} of {len(result.rows)} trials; {goals}):",
            "",
        ]
        if result.front:
            columns = [c for c in COLUMNS if any(c in r for r in _table_rows(result.front))]
            table = front_table(_table_rows(result.front), t.objectives, t.modes, columns)
            lines += table.rstrip("\n").split("\n")
    done = _candidates(result.rows)
    if t.constraints:
        lines += ["", f"the best student under each constraint ({t.primary_mode} {t.primary}):", ""]
        for name, bounds in t.constraints.items():
            for kind, bound in bounds.items():
                sign = "<=" if kind == "max" else ">="
                row = best_under(done, t.primary, t.primary_mode, name, bound, kind)
                found = (
                    f"{row['trial']}: {t.primary} {row[t.primary]:.2f}, {name} {row[name]:.4g}"
                    if row is not None
                    else "no trial"
                )
                lines.append(f"- {name} {sign} {bound:g}: {found}")
    infeasible = [r for r in result.rows if r["status"] == "infeasible"]
    if infeasible:
        lines += ["", f"infeasible, recorded and not trained ({len(infeasible)}):", ""]
        lines += [f"- {r['trial']}" for r in infeasible]
    return lines


def tag_front(uri: str, result: SweepResult) -> int:
    """Tag the front's trial runs :data:`PARETO_FRONT` ``true``; returns how many."""
    from dakd.tracking.runs import set_run_tags
    from dakd.tracking.tags import PARETO_FRONT

    tagged = 0
    for row in result.front:
        if row.get("mlflow_run_id"):
            set_run_tags(uri, row["mlflow_run_id"], {PARETO_FRONT: "true"})
            tagged += 1
    return tagged


def plot_front(result: SweepResult, spec: SweepSpec, path: Path) -> Path | None:
    """The front's plot: the first objective (mIoU) against the second (memory or latency),
    every finished trial drawn, the dominated ones faded. None with fewer than 2 objectives."""
    t = spec.tune
    if not t.multi:
        return None
    rows = [r for r in _candidates(result.rows) if not math.isnan(r.get(t.objectives[1], math.nan))]
    return plot_pareto(rows, path, x=t.objectives[1], y=t.primary, modes=[t.modes[1], t.modes[0]])
