"""The plots of a study from its groups (PNG): sensitivity to each swept loss weight, mIoU
against model size, per-class IoU of the best student against its teacher.

Figures are drawn on matplotlib's Agg canvas without pyplot, so no global figure state is
touched (the sweep driver draws them while Ray shuts down).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from dakd.data.labels import CLASS_NAMES
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
from dakd.tracking.runs import finite_float

__all__ = ["make_plots", "plot_parameters", "plot_per_class", "plot_sensitivity"]


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
    dakd = [g for g in dakd_groups(groups) if finite_float(g.get("miou_mean")) is not None]
    swept = [
        k
        for k in varying_params(dakd)
        if k.startswith("params.loss.") and all(finite_float(g.get(k)) is not None for g in dakd)
    ]
    if not swept:
        return None
    baselines = baseline_means(groups)
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
            out[row] = best_config(candidates)
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
        x = [group_parameters_m(g) for g in shown.values()]
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
    student = best_config(students)
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
