"""What every plot of the tracking layer shares: the Agg figure, one colour per paradigm, and
tick labels that do not run into each other (point labels: :mod:`~dakd.tracking.placement`).

Plain matplotlib (no pyplot, no MLflow, no Arrow): :mod:`~dakd.tracking.plots` and
:mod:`~dakd.tracking.pareto` both draw with it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from dakd.paradigms import PARADIGMS

__all__ = [
    "PARADIGM_COLOURS",
    "figure",
    "fit_tick_labels",
    "log_ticks",
    "paradigm_colours",
    "paradigm_label",
    "set_log_x",
    "tick_labels_overlap",
]

#: One colour per paradigm, and per baseline row drawn beside the DAKD paradigms, in every plot.
PARADIGM_COLOURS = {
    "a": "#1f77b4",
    "b": "#ff7f0e",
    "c": "#2ca02c",
    "d": "#d62728",
    "teacher-DA": "#222222",
    "student-DA": "#7f7f7f",
    "student-DA + extra steps": "#8c564b",
}
#: Colours for names outside :data:`PARADIGM_COLOURS`, handed out in sorted order of the names.
SPARE_COLOURS = ("#9467bd", "#e377c2", "#bcbd22", "#17becf", "#aec7e8", "#ffbb78", "#98df8a")
UNKNOWN = "unknown"


def figure(width: float, height: float, dpi: float = 110):
    """A figure on its own Agg canvas: no pyplot, so no global figure state is touched."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def paradigm_label(name: str | None) -> str:
    """The legend's name of a paradigm: ``DAKD (a)`` for a DAKD paradigm, else the name."""
    if not name:
        return UNKNOWN
    return f"DAKD ({name})" if name in PARADIGMS else str(name)


def paradigm_colours(names: Iterable[str | None]) -> dict[str, str]:
    """Paradigm (or baseline row) -> colour, in legend order: :data:`PARADIGM_COLOURS` for the
    known ones, in its order, then the others sorted, with the spare colours (``None`` is
    ``"unknown"``)."""
    keys = {name or UNKNOWN for name in names}
    out = {k: colour for k, colour in PARADIGM_COLOURS.items() if k in keys}
    others = sorted(keys - set(out))
    for k, name in enumerate(others):
        out[name] = SPARE_COLOURS[k % len(SPARE_COLOURS)]
    return out


# -- ticks ---------------------------------------------------------------------------------------


#: Labelled multiples of each decade on a log axis, densest first; then every decade, every
#: second one, and so on.
LOG_SUBS = ((1.0, 2.0, 5.0), (1.0, 3.0), (1.0,))
#: The most labelled ticks an axis starts with.
MAX_TICKS = 8


def log_ticks(lo: float, hi: float, level: int = 0) -> list[float]:
    """Ticks of a log axis over ``[lo, hi]``, sparser as ``level`` grows: 1, 2, 5 of each decade
    (level 0), 1, 3 (level 1), the decades (2), every second decade (3), every fourth (4)..."""
    first, last = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    subs = LOG_SUBS[min(level, len(LOG_SUBS) - 1)]
    every = 2 ** max(level - len(LOG_SUBS) + 1, 0)
    ticks = [s * 10.0**d for d in range(first, last + 1) if (d - first) % every == 0 for s in subs]
    return [t for t in ticks if lo * (1 - 1e-9) <= t <= hi * (1 + 1e-9)]


def _log_candidates(lo: float, hi: float) -> list[list[float]]:
    """The tick sets worth trying on a log axis, densest first: at least two ticks (the view's
    rounded ends when no set has two), at most :data:`MAX_TICKS`."""
    out = []
    for level in range(12):
        ticks = log_ticks(lo, hi, level)
        if len(ticks) < 2:
            break
        if len(ticks) <= MAX_TICKS:
            out.append(ticks)
    return out or [[float(f"{lo:.2g}"), float(f"{hi:.2g}")]]


def _number(value: float, _pos=None) -> str:
    return f"{value:g}"


def set_log_x(ax) -> None:
    """A log x axis with a few labelled major ticks (:func:`log_ticks`; :func:`fit_tick_labels`
    thins them) and unlabelled minor ones: matplotlib's default labels the minor ticks too when
    the axis spans a decade or two, and those labels run into each other."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(FixedLocator(_log_candidates(*ax.get_xlim())[0]))
    ax.xaxis.set_major_formatter(FuncFormatter(_number))
    ax.xaxis.set_minor_locator(LogLocator(subs="auto"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _tick_boxes(axis, renderer) -> list:
    lo, hi = sorted(axis.get_view_interval())
    tolerance = 1e-9 * max(abs(lo), abs(hi), 1.0)
    boxes = []
    for locs, ticks in (
        (axis.get_majorticklocs(), axis.get_major_ticks),
        (axis.get_minorticklocs(), axis.get_minor_ticks),
    ):
        for loc, tick in zip(locs, ticks(len(locs))):
            label = tick.label1
            if lo - tolerance <= loc <= hi + tolerance and label.get_visible() and label.get_text():
                boxes.append(label.get_window_extent(renderer))
    return boxes


def tick_labels_overlap(axis, renderer, gap: float = 0.0) -> bool:
    """Whether two visible tick labels of ``axis`` (major and minor) overlap once drawn, or
    come closer than ``gap`` pixels."""
    boxes = [box.padded(gap / 2.0) for box in _tick_boxes(axis, renderer)]
    return any(a.overlaps(b) for k, a in enumerate(boxes) for b in boxes[k + 1 :])


def fit_tick_labels(ax, gap: float = 5.0, tries: int = 8) -> None:
    """Make the x axis's tick labels sparser until they are ``gap`` points apart (each try draws
    the figure to measure them): the next of :func:`log_ticks`' sets on a log axis, every
    second tick on a linear one."""
    from matplotlib.ticker import FixedLocator

    log = ax.get_xscale() == "log"
    candidates = iter(_log_candidates(*sorted(ax.get_xlim())) if log else [])
    for _ in range(tries):
        ax.figure.canvas.draw()
        renderer = ax.figure.canvas.get_renderer()
        if not tick_labels_overlap(ax.xaxis, renderer, gap * ax.figure.dpi / 72.0):
            return
        lo, hi = sorted(ax.get_xlim())
        shown = [t for t in ax.xaxis.get_majorticklocs() if lo <= t <= hi]
        ticks = next((c for c in candidates if len(c) < len(shown)), None) if log else shown[::2]
        if ticks is None:
            return
        ax.xaxis.set_major_locator(FixedLocator(ticks))
