"""The plots of a study from its groups (PNG): sensitivity to each swept loss weight, mIoU
against model size, per-class IoU of the best student against its teacher.

Figures are drawn on matplotlib's Agg canvas without pyplot, so no global figure state is
touched (the sweep driver draws them while Ray shuts down); colours, point labels and log-axis
ticks come from :mod:`~dakd.tracking.drawing`, shared with the Pareto plot.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from dakd.data.labels import CLASS_NAMES
from dakd.tracking.drawing import (
    UNKNOWN,
    figure,
    fit_tick_labels,
    paradigm_colours,
    paradigm_label,
    set_log_x,
)
from dakd.tracking.groups import (
    CLASS_KEYS,
    ROW_ORDER,
    STUDENT_ROWS,
    baseline_means,
    best_config,
    dakd_groups,
    group_parameters_m,
    varying_params,
)
from dakd.tracking.placement import place_labels
from dakd.tracking.runs_table import finite_float

__all__ = [
    "make_plots",
    "parameters_figure",
    "plot_parameters",
    "plot_per_class",
    "plot_sensitivity",
    "sensitivity_figure",
]

#: Line styles of the student-DA baselines, one per scenario (colours are the paradigms').
BASELINE_STYLES = ("--", ":", "-.")
#: Markers of the scenarios in the parameters plot (colours are the paradigms').
SCENARIO_MARKERS = ("o", "s", "^", "D", "v")


def _std(group: dict[str, Any]) -> float:
    return finite_float(group.get("miou_std")) or 0.0


def _paradigm(group: dict[str, Any]) -> str:
    """The colour key of a group: its paradigm for DAKD, its row for the baselines."""
    return group.get("paradigm") or group["row"]


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=fig.dpi)
    return path


def _legend_outside(ax, handles=None, labels=None) -> None:
    """The legend right of ``ax``, where it hides no point and no label."""
    if handles is None:
        handles, labels = ax.get_legend_handles_labels()
    ax.legend(handles, labels, fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))


def sensitivity_figure(groups: list[dict[str, Any]]):
    """:func:`plot_sensitivity`'s figure; ``None`` when no loss weight varies."""
    dakd = [g for g in dakd_groups(groups) if finite_float(g.get("miou_mean")) is not None]
    swept = [
        k
        for k in varying_params(dakd)
        if k.startswith("params.loss.") and all(finite_float(g.get(k)) is not None for g in dakd)
    ]
    if not swept:
        return None
    baselines = baseline_means(groups)
    colours = paradigm_colours(g.get("paradigm") for g in dakd)
    fig = figure(3.6 * len(swept) + 1.4, 3.4)
    axes = fig.subplots(1, len(swept), squeeze=False, sharey=True)[0]
    for ax, key in zip(axes, swept):
        for name, colour in colours.items():
            members = [g for g in dakd if (g.get("paradigm") or UNKNOWN) == name]
            ax.errorbar(
                [finite_float(g[key]) for g in members],
                [finite_float(g["miou_mean"]) for g in members],
                yerr=[_std(g) for g in members],
                fmt="o",
                ms=5,
                capsize=3,
                color=colour,
                label=paradigm_label(name),
            )
        for k, (scenario, value) in enumerate(sorted(baselines.items())):
            style = BASELINE_STYLES[k % len(BASELINE_STYLES)]
            ax.axhline(value, ls=style, color="0.35", lw=1, label=f"student-DA {scenario}")
        x = [finite_float(g[key]) for g in dakd]
        if min(x) > 0 and max(x) / min(x) >= 10:
            set_log_x(ax)
        ax.set_xlabel(key.removeprefix("params."))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("target val mIoU (%)")
    handles, labels = axes[0].get_legend_handles_labels()
    first = sorted(range(len(labels)), key=lambda k: labels[k].startswith("student-DA "))
    _legend_outside(axes[-1], [handles[k] for k in first], [labels[k] for k in first])
    fig.suptitle("DAKD mIoU against each swept weight (mean ± std over seeds)", fontsize=10)
    fig.tight_layout()
    for ax in axes:
        fit_tick_labels(ax)
    return fig


def plot_sensitivity(groups: list[dict[str, Any]], path: Path) -> Path | None:
    """mIoU (mean, seed std as error bars) against each swept loss weight of the DAKD runs, one
    colour per paradigm; the student-DA baseline as a dashed line. ``None`` when no loss weight
    varies."""
    fig = sensitivity_figure(groups)
    return None if fig is None else _save(fig, path)


def _best_per_row(groups: list[dict[str, Any]], scenario: str) -> dict[str, dict[str, Any]]:
    out = {}
    for row in ROW_ORDER:
        candidates = [
            g
            for g in groups
            if g["scenario"] == scenario and g["row"] == row and finite_float(g.get("miou_mean"))
        ]
        if candidates:
            out[row] = best_config(candidates)
    return out


def _parameter_points(groups: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Scenario -> row -> the row's best group, for teacher-DA, student-DA and the DAKD rows
    with a known parameter count; scenarios with fewer than two such rows are left out."""
    wanted = ("teacher-DA", "student-DA", *ROW_ORDER[-4:])
    scenarios = sorted({g["scenario"] for g in groups if g["scenario"]})
    points = {}
    for scenario in scenarios:
        shown = {
            r: g
            for r, g in _best_per_row(groups, scenario).items()
            if r in wanted and math.isfinite(group_parameters_m(g))
        }
        if len(shown) >= 2:
            points[scenario] = shown
    return points


def _bar_box(ax, x: float, y: float, std: float, capsize: float):
    """The display box of an error bar, caps included."""
    from matplotlib.transforms import Bbox

    (x0, y0), (x1, y1) = ax.transData.transform([(x, y - std), (x, y + std)])
    half = capsize * ax.figure.dpi / 72.0
    return Bbox.from_extents(x0 - half, y0, x1 + half, y1)


def parameters_figure(groups: list[dict[str, Any]]):
    """:func:`plot_parameters`' figure; ``None`` unless some scenario has two of its rows."""
    from matplotlib.lines import Line2D

    points = _parameter_points(groups)
    if not points:
        return None
    colours = paradigm_colours(_paradigm(g) for shown in points.values() for g in shown.values())
    markers = dict(zip(points, SCENARIO_MARKERS * len(points)))
    fig = figure(7.4, 4.4)
    ax = fig.add_subplot(1, 1, 1)
    labelled = []  # (x, y, std, row)
    for scenario, shown in points.items():
        for row, g in shown.items():
            x, y, std = group_parameters_m(g), finite_float(g["miou_mean"]), _std(g)
            colour = colours[_paradigm(g) or UNKNOWN]
            ax.errorbar([x], [y], yerr=[std], fmt=markers[scenario], capsize=3, color=colour)
            labelled.append((x, y, std, row))
    handles = [Line2D([], [], ls="", marker="o", color=c) for c in colours.values()]
    labels = [paradigm_label(name) for name in colours]
    if len(points) > 1:
        handles += [Line2D([], [], ls="", marker=m, color="0.3") for m in markers.values()]
        labels += list(markers)
    _legend_outside(ax, handles, labels)
    ax.set_xlabel("parameters (M)")
    ax.set_ylabel("target val mIoU (%)")
    ax.set_title("mIoU against model size (mean ± std over seeds)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.margins(0.12, 0.12)
    fig.tight_layout()
    bars = [_bar_box(ax, x, y, std, 3) for x, y, std, _ in labelled]
    place_labels(ax, [(x, y) for x, y, _, _ in labelled], [r for *_, r in labelled], obstacles=bars)
    return fig


def plot_parameters(groups: list[dict[str, Any]], path: Path) -> Path | None:
    """mIoU against parameters (M) for teacher-DA, student-DA and the DAKD students, one colour
    per paradigm (or baseline row) and one marker per scenario, each point labelled clear of
    the others; ``None`` unless some scenario has two of these rows."""
    fig = parameters_figure(groups)
    return None if fig is None else _save(fig, path)


def plot_per_class(groups: list[dict[str, Any]], scenario: str, path: Path) -> Path | None:
    """Per-class IoU bars of the best student (by mean mIoU) against the teacher-DA; ``None``
    unless the scenario has both."""
    shown = _best_per_row(groups, scenario)
    students = [shown[r] for r in STUDENT_ROWS if r in shown]
    if "teacher-DA" not in shown or not students:
        return None
    student = best_config(students)
    bars = {"teacher-DA": shown["teacher-DA"], f"best student: {student['row']}": student}
    fig = figure(9.0, 3.8)
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
