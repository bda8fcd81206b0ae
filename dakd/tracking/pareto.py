"""The Pareto front of a search over student networks: which trials no other trial beats on
every objective at once (mIoU up, peak memory or latency down), as indices, a Markdown table,
the best trial under a budget, and a plot.

A trial is a row: a dict with a ``label`` (``short_label``, when present, names its point on
the plot), a ``paradigm`` and its figures, e.g. ``miou``, ``peak_memory_mb``, ``latency_ms``,
``params_m``, ``gflops``. A figure that is missing or not a finite number (None, NaN, inf)
leaves the trial off the front: it neither is on the front nor dominates another.

Plain Python and matplotlib (numpy for the front): no MLflow, no Ray, no Arrow.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dakd.tabular import markdown_table
from dakd.tracking.drawing import (
    UNKNOWN,
    figure,
    fit_tick_labels,
    paradigm_colours,
    paradigm_label,
    set_log_x,
)
from dakd.tracking.placement import place_labels

__all__ = [
    "COLUMNS",
    "MODES",
    "best_under",
    "dominates",
    "nondominated_rows",
    "front_table",
    "pareto_figure",
    "pareto_front",
    "plot_pareto",
]

#: The direction of each known objective; ``modes=None`` reads it from here.
MODES = {
    "miou": "max",
    "pixel_acc": "max",
    "peak_memory_mb": "min",
    "latency_ms": "min",
    "params_m": "min",
    "gflops": "min",
}
#: The columns of :func:`front_table` by default (those some row has).
COLUMNS = ("label", "paradigm", "miou", "peak_memory_mb", "latency_ms", "params_m", "gflops")
#: Digits after the point of each known figure in the table.
DIGITS = {"miou": 2, "pixel_acc": 2, "peak_memory_mb": 0, "latency_ms": 2, "params_m": 3}
AXIS_LABELS = {
    "miou": "target val mIoU (%)",
    "peak_memory_mb": "peak memory (MiB)",
    "latency_ms": "latency (ms)",
    "params_m": "parameters (M)",
    "gflops": "GFLOPs",
}
NAMES = {
    "miou": "mIoU",
    "peak_memory_mb": "peak memory",
    "latency_ms": "latency",
    "params_m": "parameters",
    "gflops": "GFLOPs",
}
DASH = "–"
#: Opacity of the dominated trials' points.
DOMINATED_ALPHA = 0.25


def _number(value: Any) -> float:
    """``float(value)`` for a finite number, else NaN (booleans are not numbers here)."""
    if isinstance(value, bool):
        return math.nan
    try:
        number = float(value)
    except (TypeError, ValueError):
        return math.nan
    return number if math.isfinite(number) else math.nan


def _check_modes(modes: Sequence[str], n: int) -> None:
    if len(modes) != n:
        raise ValueError(f"{len(modes)} modes for {n} objectives")
    for mode in modes:
        if mode not in ("min", "max"):
            raise ValueError(f"mode {mode!r}: expected 'min' or 'max'")


def _modes(objectives: Sequence[str], modes: Sequence[str] | None) -> list[str]:
    if modes is not None:
        return list(modes)
    unknown = [o for o in objectives if o not in MODES]
    if unknown:
        raise ValueError(f"no default mode for {', '.join(unknown)}; pass modes")
    return [MODES[o] for o in objectives]


def dominates(a: Sequence[float], b: Sequence[float], modes: Sequence[str]) -> bool:
    """Whether ``a`` is at least as good as ``b`` in every objective and better in one
    (``modes``: ``"min"`` or ``"max"`` per objective). A point with a missing figure neither
    dominates nor is dominated."""
    _check_modes(modes, len(a))
    if len(b) != len(a):
        raise ValueError(f"points of {len(a)} and {len(b)} objectives")
    x, y = [_number(v) for v in a], [_number(v) for v in b]
    if any(math.isnan(v) for v in (*x, *y)):
        return False
    sign = [1.0 if m == "min" else -1.0 for m in modes]
    better = [s * p < s * q for s, p, q in zip(sign, x, y)]
    worse = [s * p > s * q for s, p, q in zip(sign, x, y)]
    return any(better) and not any(worse)


def pareto_front(points: list[Sequence[float]], modes: Sequence[str]) -> list[int]:
    """Indices (ascending) of the points no other point dominates, for any number of
    objectives. Points with a missing figure are never on the front and dominate none; equal
    points do not dominate each other, so duplicates on the front are all kept."""
    if not points:
        return []
    _check_modes(modes, len(points[0]))
    values = np.array([[_number(v) for v in p] for p in points], dtype=float)
    if values.ndim != 2 or values.shape[1] != len(modes):
        raise ValueError(f"every point needs {len(modes)} objectives")
    sign = np.array([1.0 if m == "min" else -1.0 for m in modes])
    ok = ~np.isnan(values).any(axis=1)
    cost = values[ok] * sign  # every objective minimised
    index = np.flatnonzero(ok)
    front = []
    for k, point in enumerate(cost):
        no_worse = (cost <= point).all(axis=1)
        better = (cost < point).any(axis=1)
        if not (no_worse & better).any():
            front.append(int(index[k]))
    return front


def nondominated_rows(
    rows: Sequence[Mapping[str, Any]], objectives: Sequence[str], modes: Sequence[str]
) -> list[Mapping[str, Any]]:
    """The non-dominated rows, sorted by the first minimised objective ascending (else the
    first objective, best first), ties by the other objectives, best first."""
    front = [rows[i] for i in pareto_front([[r.get(o) for o in objectives] for r in rows], modes)]
    order = sorted(range(len(objectives)), key=lambda k: modes[k] != "min")
    sign = [1.0 if m == "min" else -1.0 for m in modes]
    return sorted(front, key=lambda r: [sign[k] * _number(r.get(objectives[k])) for k in order])


def _cell(column: str, value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return DASH
    number = _number(value)
    if isinstance(value, str) or math.isnan(number):
        return str(value)
    if column in DIGITS:
        return f"{number:.{DIGITS[column]}f}"
    return f"{number:.4g}"


def front_table(
    rows: Sequence[Mapping[str, Any]],
    objectives: Sequence[str] = ("miou", "peak_memory_mb"),
    modes: Sequence[str] | None = None,
    columns: Sequence[str] | None = None,
) -> str:
    """The non-dominated rows as a Markdown table, sorted by the first minimised objective
    (memory ascending, say). ``modes`` defaults to :data:`MODES`; ``columns`` to those of
    :data:`COLUMNS` that some row has, the objectives included. A missing figure reads ``–``."""
    modes = _modes(objectives, modes)
    if columns is None:
        present = [c for c in COLUMNS if any(r.get(c) is not None for r in rows)]
        columns = present + [o for o in objectives if o not in present]
    cells = [
        [_cell(c, row.get(c)) for c in columns]
        for row in nondominated_rows(rows, objectives, modes)
    ]
    return markdown_table(columns, cells) + "\n"


def best_under(
    rows: Sequence[Mapping[str, Any]],
    metric: str,
    mode: str,
    constraint_metric: str,
    bound: float,
    kind: str = "max",
) -> Mapping[str, Any] | None:
    """The best row by ``metric`` (``mode`` ``"max"`` or ``"min"``) among the rows whose
    ``constraint_metric`` keeps the ``bound``: at most ``bound`` for ``kind="max"`` (a budget,
    e.g. ``peak_memory_mb <= 512``), at least for ``kind="min"``. Rows missing either figure are
    left out; the first of equal rows wins; ``None`` when no row qualifies."""
    _check_modes([mode], 1)
    if kind not in ("min", "max"):
        raise ValueError(f"kind {kind!r}: expected 'max' (an upper bound) or 'min' (a lower one)")
    best, best_value = None, math.nan
    for row in rows:
        value, limit = _number(row.get(metric)), _number(row.get(constraint_metric))
        if math.isnan(value) or math.isnan(limit):
            continue
        if (limit > bound) if kind == "max" else (limit < bound):
            continue
        if best is None or (value > best_value if mode == "max" else value < best_value):
            best, best_value = row, value
    return best


# -- the plot ------------------------------------------------------------------------------------


def _short(row: Mapping[str, Any], index: int) -> str:
    return str(row.get("short_label") or row.get("label") or f"trial {index}")


def _step_boxes(ax, xs: list[float], ys: list[float], where: str) -> list:
    """Display boxes of the step line's segments, which labels keep clear of."""
    from matplotlib.transforms import Bbox

    boxes = []
    for (x0, y0), (x1, y1) in zip(zip(xs, ys), zip(xs[1:], ys[1:])):
        corner = (x1, y0) if where == "post" else (x0, y1)
        for a, b in (((x0, y0), corner), (corner, (x1, y1))):
            (p, q), (r, s) = ax.transData.transform([a, b])
            boxes.append(Bbox.from_extents(min(p, r), min(q, s), max(p, r), max(q, s)))
    return boxes


def _scatter(ax, rows, x, y, front: set[int], colours: dict[str, str]) -> None:
    """The points, one colour per paradigm, the dominated ones faded; each collection's gid
    is ``front:<paradigm>`` or ``dominated:<paradigm>``."""
    for name, colour in colours.items():
        members = [i for i, r in enumerate(rows) if (r.get("paradigm") or UNKNOWN) == name]
        for part, alpha, keep in (("dominated", DOMINATED_ALPHA, False), ("front", 1.0, True)):
            chosen = [i for i in members if (i in front) == keep]
            if not chosen:
                continue
            ax.scatter(
                [x[i] for i in chosen],
                [y[i] for i in chosen],
                s=36,
                color=colour,
                alpha=alpha,
                edgecolors="black" if keep else "none",
                linewidths=0.6,
                zorder=3 if keep else 2,
                gid=f"{part}:{name}",
            )


def _legend(ax, colours: dict[str, str], dominated: bool) -> None:
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], ls="", marker="o", color=c) for c in colours.values()]
    labels = [paradigm_label(name) for name in colours]
    handles.append(Line2D([], [], color="0.3", lw=1.0))
    labels.append("Pareto front")
    if dominated:
        handles.append(Line2D([], [], ls="", marker="o", color="0.3", alpha=DOMINATED_ALPHA))
        labels.append("dominated")
    ax.legend(handles, labels, fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))


def pareto_figure(
    rows: Sequence[Mapping[str, Any]],
    x: str = "peak_memory_mb",
    y: str = "miou",
    modes: Sequence[str] | None = None,
    title: str | None = None,
):
    """:func:`plot_pareto`'s figure; ``None`` when no row has both figures."""
    modes = _modes((x, y), modes)
    _check_modes(modes, 2)
    rows = [r for r in rows if not math.isnan(_number(r.get(x)) + _number(r.get(y)))]
    if not rows:
        return None
    xs, ys = [_number(r[x]) for r in rows], [_number(r[y]) for r in rows]
    front = pareto_front(list(zip(xs, ys)), modes)
    front.sort(key=lambda i: (xs[i], ys[i]))
    colours = paradigm_colours(r.get("paradigm") for r in rows)
    fig = figure(7.6, 4.6)
    ax = fig.add_subplot(1, 1, 1)
    on_front = set(front)
    _scatter(ax, rows, xs, ys, on_front, colours)
    where = "post" if modes[0] == "min" else "pre"
    line = ([xs[i] for i in front], [ys[i] for i in front])
    ax.step(*line, where=where, color="0.3", lw=1.0, zorder=1)
    ax.margins(0.1, 0.12)
    if min(xs) > 0 and max(xs) / min(xs) > 10:
        set_log_x(ax)
    ax.set_xlabel(AXIS_LABELS.get(x, x))
    ax.set_ylabel(AXIS_LABELS.get(y, y))
    better = {"min": "lower is better", "max": "higher is better"}
    names = [NAMES.get(x, x), NAMES.get(y, y)]
    default = (
        f"Pareto front: {names[1]} ({better[modes[1]]}) against {names[0]} ({better[modes[0]]})"
    )
    ax.set_title(title or default, fontsize=10)
    ax.grid(alpha=0.3)
    _legend(ax, colours, len(on_front) < len(rows))
    fig.tight_layout()
    fit_tick_labels(ax)
    place_labels(
        ax,
        [(xs[i], ys[i]) for i in front],
        [_short(rows[i], i) for i in front],
        others=[(xs[i], ys[i]) for i in range(len(rows)) if i not in on_front],
        obstacles=_step_boxes(ax, *line, where),
    )
    return fig


def plot_pareto(
    rows: Sequence[Mapping[str, Any]],
    path: str | Path,
    x: str = "peak_memory_mb",
    y: str = "miou",
    modes: Sequence[str] | None = None,
    title: str | None = None,
) -> Path | None:
    """``y`` (mIoU) against ``x`` (peak memory, or latency) of every trial, coloured by
    paradigm: the dominated trials faded, the front joined by a step line and each of its
    points labelled (``short_label`` or ``label``) clear of the other labels, the points and
    the axes' edge; a log x axis when ``x`` spans more than ten times. ``modes`` defaults to
    :data:`MODES`. ``None`` when no row has both figures."""
    fig = pareto_figure(rows, x, y, modes, title)
    if fig is None:
        return None
    path = Path(path)
    fig.savefig(path, dpi=fig.dpi)
    return path
