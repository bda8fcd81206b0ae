"""Point labels that keep clear of each other, of the point markers, of the lines drawn and of
the axes' edge: a small deterministic placer for matplotlib axes.

Each label, in the order given, tries offsets around its point, nearest first: eight directions
just beyond the marker, then a grid of positions further out (to the right or left of the point,
at any height, or straight above or below it), which a thin leader line joins to the point. The
text's box is measured with the figure's renderer (``Text.get_window_extent``) and a candidate
fits when the box stays inside the axes and overlaps no label placed before it, no marker, no
obstacle and no leader line, and its own leader crosses no label. The first candidate that fits
and whose leader crosses nothing wins; else the fitting one whose leader crosses fewest markers,
obstacles and other leaders; else, when nothing fits, the one that overlaps least.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Offset", "candidate_offsets", "place_labels"]

#: Gap (points) between a marker's edge and its label on the first ring.
GAP = 3.0
#: Padding (pixels) kept around every label box.
PAD = 1.5
#: The grid further out (points): horizontal and vertical steps, and how far it reaches.
STEP, ROW, REACH = 8.0, 5.0, 130.0
#: What an arrangement's penalty adds for a leader line (points, beside its length) and for
#: each marker, obstacle or other leader it crosses.
LEADER, CROSSING = 10.0, 30.0
#: Beyond this many labels, one order of placement only (each order costs a placement).
MANY = 40
#: Where the batches of candidates weighed together start (the first ring is the first).
BATCHES = (0, 8, 72, 328, 840)
#: First-ring directions (degrees), in order of preference: right, the diagonals, left, above,
#: below.
FIRST = (0, 45, -45, 180, 135, -135, 90, -90)


@dataclass(frozen=True)
class Offset:
    """Where a label goes: ``(dx, dy)`` points from its point, aligned ``ha``/``va`` there."""

    dx: float
    dy: float
    ha: str
    va: str
    leader: bool


def _align(dx: float, dy: float) -> tuple[str, str]:
    ha = "left" if dx > 0.25 else "right" if dx < -0.25 else "center"
    va = "bottom" if dy > 0.25 else "top" if dy < -0.25 else "center"
    return ha, va


def candidate_offsets(
    radius: float, reach: float = REACH, step: float = STEP, row: float = ROW
) -> list[Offset]:
    """The offsets a label tries, in order: :data:`FIRST` at ``radius`` points without a leader,
    then the grid beyond it (columns ``step`` apart left and right of the point, rows ``row``
    apart, and straight above and below), nearest first, each with a leader line."""
    out = []
    for angle in FIRST:
        dx, dy = math.cos(math.radians(angle)), math.sin(math.radians(angle))
        out.append(Offset(radius * dx, radius * dy, *_align(dx, dy), leader=False))
    grid = []
    columns = [radius + step * k for k in range(1, int((reach - radius) / step) + 1)]
    rows = [row * k for k in range(-int(reach / row), int(reach / row) + 1)]
    for dx in columns:
        for dy in rows:
            grid.append(Offset(dx, dy, "left", "center", True))
            grid.append(Offset(-dx, dy, "right", "center", True))
    for dy in (radius + row * k for k in range(1, int((reach - radius) / row) + 1)):
        grid.append(Offset(0.0, dy, "center", "bottom", True))
        grid.append(Offset(0.0, -dy, "center", "top", True))
    grid.sort(key=lambda o: (round(math.hypot(o.dx, o.dy), 6), o.dx < 0, o.dx == 0, o.dy < 0))
    return out + grid


# -- geometry on arrays of boxes (x0, y0, x1, y1) and segments ((x0, y0), (x1, y1)) -------------


def _extents(boxes) -> np.ndarray:
    return np.array([[b.x0, b.y0, b.x1, b.y1] for b in boxes], dtype=float).reshape(-1, 4)


def _overlap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Overlap areas, ``(len(a), len(b))``."""
    w = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    h = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    return np.clip(w, 0, None) * np.clip(h, 0, None)


def _slab(segments: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Whether segment k meets box k, for each k (the slab test)."""
    start, d = segments[:, 0], segments[:, 1] - segments[:, 0]
    low, high = boxes[:, :2], boxes[:, 2:]
    with np.errstate(divide="ignore", invalid="ignore"):
        t1, t2 = (low - start) / d, (high - start) / d
    flat = d == 0
    inside = (start >= low) & (start <= high)
    enter = np.where(flat, np.where(inside, -np.inf, np.inf), np.minimum(t1, t2))
    leave = np.where(flat, np.where(inside, np.inf, -np.inf), np.maximum(t1, t2))
    return np.maximum(enter.max(axis=1), 0.0) <= np.minimum(leave.min(axis=1), 1.0)


def _crosses_boxes(segments: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Whether each segment meets each box, ``(len(segments), len(boxes))``: the slab test on
    the pairs whose bounding boxes meet."""
    lo, hi = segments.min(axis=1), segments.max(axis=1)
    maybe = (
        (lo[:, None, 0] <= boxes[None, :, 2])
        & (hi[:, None, 0] >= boxes[None, :, 0])
        & (lo[:, None, 1] <= boxes[None, :, 3])
        & (hi[:, None, 1] >= boxes[None, :, 1])
    )
    i, j = np.nonzero(maybe)
    out = np.zeros(maybe.shape, dtype=bool)
    if len(i):
        out[i, j] = _slab(segments[i], boxes[j])
    return out


def _crosses_segments(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Whether each segment of ``a`` properly crosses each of ``b``, ``(len(a), len(b))``."""

    def turn(p, q, r):
        return (q[..., 0] - p[..., 0]) * (r[..., 1] - p[..., 1]) - (q[..., 1] - p[..., 1]) * (
            r[..., 0] - p[..., 0]
        )

    p, q = a[:, None, 0], a[:, None, 1]
    r, s = b[None, :, 0], b[None, :, 1]
    return (turn(p, q, r) * turn(p, q, s) < 0) & (turn(r, s, p) * turn(r, s, q) < 0)


class _Placer:
    """One axes' placement: the bounds, what labels must avoid, what is placed so far."""

    def __init__(self, ax, renderer, fixed: np.ndarray, offsets: list[Offset], start_px: float):
        self.ax, self.renderer = ax, renderer
        box = ax.get_window_extent(renderer)
        self.bounds = (box.x0 + 2.0, box.y0 + 2.0, box.x1 - 2.0, box.y1 - 2.0)
        self.fixed = fixed
        self.labels = np.zeros((0, 4))
        self.leaders = np.zeros((0, 2, 2))
        self.offsets = offsets
        scale = ax.figure.dpi / 72.0
        self.shift = np.array([(o.dx * scale, o.dy * scale) for o in offsets])
        self.leader = np.array([o.leader for o in offsets])
        length = np.hypot(self.shift[:, 0], self.shift[:, 1])[:, None]
        self.start = self.shift * np.minimum(start_px / length, 1.0)

    def move(self, text, offset: Offset):
        from matplotlib.transforms import offset_copy

        fig = self.ax.figure
        text.set_transform(
            offset_copy(self.ax.transData, fig=fig, x=offset.dx, y=offset.dy, units="points")
        )
        text.set_ha(offset.ha)
        text.set_va(offset.va)
        return text.get_window_extent(self.renderer)

    def boxes(self, text) -> np.ndarray:
        """Every candidate's padded box: the text measured once per alignment, then moved."""
        at_point = {}
        for o in self.offsets:
            key = (o.ha, o.va)
            if key not in at_point:
                box = self.move(text, Offset(0.0, 0.0, o.ha, o.va, False))
                at_point[key] = np.array([box.x0, box.y0, box.x1, box.y1])
        ref = np.array([at_point[(o.ha, o.va)] for o in self.offsets])
        return ref + np.tile(self.shift, 2) + np.array([-PAD, -PAD, PAD, PAD])

    def costs(self, boxes: np.ndarray, segments: np.ndarray, lead: np.ndarray, near) -> tuple:
        """(what must be 0 for a candidate to fit, how many things its leader crosses), given
        ``near``: the fixed boxes, labels and leaders close enough to matter."""
        fixed, labels, leaders = near
        x0, y0, x1, y1 = self.bounds
        hard = 1e3 * (
            np.clip(x0 - boxes[:, 0], 0, None)
            + np.clip(boxes[:, 2] - x1, 0, None)
            + np.clip(y0 - boxes[:, 1], 0, None)
            + np.clip(boxes[:, 3] - y1, 0, None)
        )
        hard += 1e6 * _overlap(boxes, labels).sum(axis=1)
        hard += 1e3 * _overlap(boxes, fixed).sum(axis=1)
        hard += 1e5 * _crosses_boxes(leaders, boxes).sum(axis=0)
        hard += 1e5 * lead * _crosses_boxes(segments, labels).sum(axis=1)
        soft = _crosses_boxes(segments, fixed).sum(axis=1)
        soft += _crosses_segments(segments, leaders).sum(axis=1)
        return hard, lead * soft

    def near(self, boxes: np.ndarray, segments: np.ndarray) -> tuple:
        """The fixed boxes, labels and leaders within reach of any candidate."""
        ends = segments.reshape(-1, 2)
        lo = np.minimum(boxes[:, :2].min(axis=0), ends.min(axis=0))
        hi = np.maximum(boxes[:, 2:].max(axis=0), ends.max(axis=0))

        def within(b):
            return (b[:, 0] <= hi[0]) & (b[:, 2] >= lo[0]) & (b[:, 1] <= hi[1]) & (b[:, 3] >= lo[1])

        spans = np.hstack([self.leaders.min(axis=1), self.leaders.max(axis=1)])
        return (
            self.fixed[within(self.fixed)],
            self.labels[within(self.labels)],
            self.leaders[within(spans)],
        )

    def place(self, text, anchor) -> tuple[Offset, float]:
        """Place ``text`` for the point at ``anchor`` (pixels); the offset taken and its
        penalty (0 on the first ring with nothing in the way; more for a leader, more for what
        the leader crosses, far more for a label that does not fit). Candidates are weighed in
        batches, nearest first, up to the first batch with one that fits and crosses nothing."""
        boxes = self.boxes(text)
        point = np.asarray(anchor, dtype=float)
        segments = np.stack([point + self.start, point + self.shift], axis=1)
        near = self.near(boxes, segments)
        hard, soft = np.full(len(boxes), np.inf), np.zeros(len(boxes))
        for start, stop in zip(BATCHES, [*BATCHES[1:], len(boxes)]):
            batch = slice(start, stop)
            hard[batch], soft[batch] = self.costs(
                boxes[batch], segments[batch], self.leader[batch], near
            )
            if ((hard[batch] == 0) & (soft[batch] == 0)).any():
                break
        fits = np.flatnonzero(hard == 0)
        if len(fits):
            k = int(fits[np.argmin(soft[fits])])  # argmin: the first of equals
        else:
            k = int(np.argmin(hard))
        offset = self.offsets[k]
        box = self.move(text, offset)
        padded = [box.x0 - PAD, box.y0 - PAD, box.x1 + PAD, box.y1 + PAD]
        self.labels = np.vstack([self.labels, padded])
        penalty = float(hard[k] + CROSSING * soft[k])
        if offset.leader:
            self.leaders = np.concatenate([self.leaders, segments[k : k + 1]])
            penalty += LEADER + math.hypot(offset.dx, offset.dy)
        return offset, penalty


def _orders(anchors: np.ndarray, reach_px: float) -> list[list[int]]:
    """The orders to place labels in: as given, reversed, the most crowded point first (most
    other points within ``reach_px``), the highest point first, the lowest first; as given
    alone beyond :data:`MANY` labels."""
    n = len(anchors)
    if n > MANY:
        return [list(range(n))]
    distance = np.hypot(*(anchors[:, None, :] - anchors[None, :, :]).transpose(2, 0, 1))
    crowd = (distance < reach_px).sum(axis=1)
    crowded = sorted(range(n), key=lambda i: -crowd[i])
    highest = sorted(range(n), key=lambda i: -anchors[i, 1])
    out = []
    for order in (list(range(n)), list(range(n))[::-1], crowded, highest, highest[::-1]):
        if order not in out:
            out.append(order)
    return out


def _marker_boxes(ax, points, radius_px: float) -> np.ndarray:
    xy = ax.transData.transform(np.asarray(points, dtype=float).reshape(-1, 2))
    return np.hstack([xy - radius_px, xy + radius_px])


def place_labels(
    ax,
    points: Sequence[tuple[float, float]],
    texts: Sequence[str],
    others: Sequence[tuple[float, float]] = (),
    obstacles: Sequence = (),
    marker_size: float = 6.0,
    fontsize: float = 7.0,
) -> list:
    """Label ``points`` (data coordinates) with ``texts`` so that no label overlaps another, a
    marker (of ``points`` and of the unlabelled ``others``, ``marker_size`` points across), an
    obstacle (display-coordinate ``Bbox`` es: error bars, a line's segments) or the axes' edge.
    Call it once the axes are laid out (after ``tight_layout``): positions are measured in
    pixels, and the view limits are frozen here. Returns the labels' ``Text`` artists, in the
    order of ``points``; a label away from its point is joined to it by a leader line."""
    fig = ax.figure
    ax.set_xlim(ax.get_xlim())
    ax.set_ylim(ax.get_ylim())
    renderer = fig.canvas.get_renderer()
    radius_px = (marker_size / 2.0 + 1.0) * fig.dpi / 72.0
    lines = _extents(obstacles) + np.array([-1.0, -1.0, 1.0, 1.0])  # a line has no width
    fixed = np.vstack(
        [_marker_boxes(ax, points, radius_px), _marker_boxes(ax, others, radius_px), lines]
    )
    offsets = candidate_offsets(marker_size / 2.0 + GAP)
    anchors = ax.transData.transform(np.asarray(points, dtype=float).reshape(-1, 2))
    labels = [
        ax.text(x, y, text, fontsize=fontsize, zorder=5, clip_on=False)
        for (x, y), text in zip(points, texts)
    ]
    best = None
    for order in _orders(anchors, REACH * fig.dpi / 72.0):
        placer = _Placer(ax, renderer, fixed, offsets, 1.5 * radius_px)  # out of the marker
        placed = {i: placer.place(labels[i], anchors[i]) for i in order}
        penalty = sum(p for _, p in placed.values())
        if best is None or penalty < best[0]:
            best = (penalty, {i: o for i, (o, _) in placed.items()})
    for i, label in enumerate(labels):
        offset = best[1][i]
        placer.move(label, offset)
        if offset.leader:
            ax.add_artist(_leader(points[i], label, marker_size))
    return labels


def _leader(xy, text, marker_size: float):
    """A thin line from the marker's edge at ``xy`` to ``text``'s anchor."""
    from matplotlib.patches import ConnectionPatch

    return ConnectionPatch(
        xyA=xy,
        coordsA=text.axes.transData,
        xyB=xy,
        coordsB=text.get_transform(),
        arrowstyle="-",
        shrinkA=marker_size / 2.0 + 0.5,
        shrinkB=1.0,
        color="0.45",
        lw=0.6,
        zorder=4,
    )
