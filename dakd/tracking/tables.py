"""The paper's tables from the groups of a study, as Markdown, LaTeX, CSV and Parquet.

Per scenario always (rows source-only ... DAKD (d), the 19 class IoUs, mIoU, parameters); the
loss ablation, levels x paradigm and the best configurations of a search when the DAKD runs
vary what those tables compare. A :class:`ResultTable` holds a table both as displayed
(Markdown, LaTeX) and as numbers (CSV, Parquet).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv
import pyarrow.parquet as pq

from dakd import loss_terms
from dakd.data.labels import CLASS_NAMES
from dakd.paradigms import DEFAULT_LEVELS
from dakd.tabular import latex_table, markdown_table
from dakd.tracking.groups import (
    CLASS_KEYS,
    ROW_ORDER,
    baseline_means,
    best_config,
    dakd_groups,
    delta_miou,
    group_parameters_m,
    score,
    varying_params,
)
from dakd.tracking.runs_table import AnalysisError, finite_float
from dakd.tracking.tags import PBT_HISTORY

__all__ = [
    "FORMATS",
    "ResultTable",
    "best_trials_table",
    "build_tables",
    "levels_table",
    "loss_ablation_table",
    "scenario_tables",
    "write_tables",
]

#: Output formats of :func:`write_tables`.
FORMATS = ("md", "tex", "csv", "parquet")


def loss_columns(groups: Sequence[dict[str, Any]] = ()) -> dict[str, str]:
    """Distillation terms of the loss ablation, param -> column header, from the registry
    (``dakd.loss_terms``): the ``always`` (built-in) terms, and any other whose weight a
    group has."""
    return {
        t.key: t.title
        for t in loss_terms.terms()
        if t.always or any(f"params.{t.key}" in g for g in groups)
    }


LEVEL_ORDER = (*DEFAULT_LEVELS, "+".join(DEFAULT_LEVELS))
DASH = "–"


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
        lines = [f"### {self.title}", "", self.caption, ""]
        lines.append(markdown_table(self.header, self.cells))
        if self.notes:
            lines += [""] + [f"- {note}" for note in self.notes]
        return "\n".join(lines) + "\n"

    def latex(self) -> str:
        caption = f"{self.title}. {self.caption}"
        label = f"tab:{self.name.replace('_', '-')}"
        return latex_table(self.header, self.cells, caption, label, self.notes)


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
    baselines = baseline_means(groups)
    tables = []
    for scenario in sorted({g["scenario"] for g in groups if g["scenario"]}):
        shown, notes = [], []
        for row in ROW_ORDER:
            candidates = [g for g in groups if g["scenario"] == scenario and g["row"] == row]
            if not candidates:
                continue
            group = dict(best_config(candidates))
            group["n_configs"] = len(candidates)
            group["n_failed"] = sum(g["n_failed"] for g in candidates)
            group["n_unfinished"] = sum(g["n_unfinished"] for g in candidates)
            group["params_m"] = group_parameters_m(group)
            group["delta_miou"] = delta_miou(group, baselines)
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


def _terms(group: dict[str, Any], columns: dict[str, str]) -> tuple[bool, ...]:
    return tuple((finite_float(group.get(f"params.{k}")) or 0.0) > 0 for k in columns)


def loss_ablation_table(groups: list[dict[str, Any]], best: bool = False) -> ResultTable | None:
    """Which of KL, MSE and pseudo-teacher CE are on (✓) -> mIoU; ``None`` unless the DAKD
    runs switch terms on and off."""
    dakd = dakd_groups(groups)
    columns = loss_columns(dakd)
    if len({_terms(g, columns) for g in dakd}) < 2:
        return None
    baselines = baseline_means(groups)
    extra = varying_params(dakd, exclude=[f"params.{k}" for k in columns])
    dakd.sort(
        key=lambda g: (sum(_terms(g, columns)), [not on for on in _terms(g, columns)], score(g))
    )
    header = [*columns.values(), *(k.removeprefix("params.") for k in extra)]
    header += ["mIoU", "n", "ΔmIoU"]
    rows, cells, notes = [], [], []
    for g in dakd:
        marks = ["✓" if on else "" for on in _terms(g, columns)]
        cells.append(
            [
                *marks,
                *(_value(g.get(k)) for k in extra),
                _mean_std(g),
                str(g["n"]),
                _fmt(delta_miou(g, baselines), sign=True),
            ]
        )
        rows.append(
            {
                **{k: finite_float(g.get(f"params.{k}")) for k in columns},
                **{k.removeprefix("params."): g.get(k) for k in extra},
                "scenario": g["scenario"],
                "config": g["config"],
                "delta_miou": delta_miou(g, baselines),
                **{c: g.get(c) for c in ("n", "n_failed", "n_unfinished")},
                **{c: g.get(c) for c in _number_columns("miou")},
            }
        )
        on = zip(columns.values(), _terms(g, columns))
        label = " + ".join(t for t, term_on in on if term_on) or "none"
        note = _failure_note(label, g["n_failed"], g["n_unfinished"])
        notes += [note] if note else []
    names = [*columns, *(k.removeprefix("params.") for k in extra), "scenario", "config"]
    names += ["n", "n_failed", "n_unfinished"]
    names += [*_number_columns("miou"), "delta_miou"]
    return ResultTable(
        name="loss_ablation",
        title="Loss ablation (distillation terms)",
        caption=_caption(best) + " ✓: the term's weight is non-zero; ΔmIoU: against student-DA.",
        header=header,
        cells=cells,
        data=_data(rows, names),
        notes=notes,
    )


def _level_rank(levels: str | None) -> tuple[int, str]:
    return (LEVEL_ORDER.index(levels) if levels in LEVEL_ORDER else len(LEVEL_ORDER), levels or "")


def levels_table(groups: list[dict[str, Any]], best: bool = False) -> ResultTable | None:
    """mIoU on a grid of distillation levels (rows) x paradigm (columns), per scenario; ``None``
    unless the DAKD runs use more than one set of levels."""
    dakd = dakd_groups(groups)
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
                g = best_config(cell)
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


def _ended_with(group: dict[str, Any], swept: Sequence[str]) -> dict[str, float]:
    """For a trial PBT restarted: the values of the swept ``params.*`` it trained with last (its
    last ``metrics.weight/*``; its params keep the values it started with). Empty otherwise."""
    if not group.get(f"tags.{PBT_HISTORY}"):
        return {}
    ended = {}
    for key in swept:
        value = finite_float(group.get(f"metrics.weight/{key.removeprefix('params.')}"))
        if value is not None:
            ended[key] = value
    return ended


def _swept_value(started: str | None, ended: float | None) -> str:
    """A swept value for display; ``a → b`` where a PBT trial ended with another value."""
    shown = _value(started)
    if ended is None or finite_float(started) == ended:
        return shown
    return f"{shown} → {_value(str(ended))}"


def best_trials_table(
    groups: list[dict[str, Any]], best: bool = False, top: int = 10
) -> ResultTable | None:
    """The ``top`` DAKD configurations by mean mIoU with their swept values (the params that
    vary across the DAKD runs); ``None`` unless a loss weight varies."""
    dakd = dakd_groups(groups)
    swept = varying_params(dakd)
    if not any(k.startswith("params.loss.") for k in swept):
        return None
    baselines = baseline_means(groups)
    ranked = sorted(dakd, key=score, reverse=True)[:top]
    header = ["rank", *(k.removeprefix("params.") for k in swept), "mIoU", "n", "steps", "ΔmIoU"]
    cells, rows, notes, restarted = [], [], [], []
    for rank, g in enumerate(ranked, 1):
        ended = _ended_with(g, swept)
        cells.append(
            [
                str(rank),
                *(_swept_value(g.get(k), ended.get(k)) for k in swept),
                _mean_std(g),
                str(g["n"]),
                _fmt(g.get("steps"), 0),
                _fmt(delta_miou(g, baselines), sign=True),
            ]
        )
        rows.append(
            {
                "rank": rank,
                **{k.removeprefix("params."): finite_float(g.get(k)) for k in swept},
                **{f"{k.removeprefix('params.')}_final": ended.get(k) for k in swept},
                "pbt_history": g.get(f"tags.{PBT_HISTORY}"),
                "scenario": g["scenario"],
                "config": g["config"],
                "steps": g.get("steps"),
                "delta_miou": delta_miou(g, baselines),
                **{c: g.get(c) for c in ("n", "n_failed", "n_unfinished")},
                **{c: g.get(c) for c in _number_columns("miou")},
            }
        )
        note = _failure_note(f"rank {rank}", g["n_failed"], g["n_unfinished"])
        notes += [note] if note else []
        if g.get(f"tags.{PBT_HISTORY}"):
            restarted.append(f"{rank} ({len(g[f'tags.{PBT_HISTORY}'].splitlines())})")
    if restarted:
        notes.append(
            f"rank {', '.join(restarted)}: PBT trials restarted from other trials' weights "
            "(restarts), each a configuration of its own; a → b: the value it started with and "
            "ended with"
        )
    base = ", ".join(f"{s} {v:.2f}" for s, v in sorted(baselines.items()))
    caption = _caption(best) + f" Top {len(ranked)} of {len(dakd)} configurations"
    caption += f"; ΔmIoU against student-DA ({base})." if base else "."
    columns = ["rank", *(k.removeprefix("params.") for k in swept)]
    if restarted:
        columns += [f"{k.removeprefix('params.')}_final" for k in swept] + ["pbt_history"]
    columns += ["scenario", "config", "n"]
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
