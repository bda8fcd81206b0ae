"""The Pareto front of a search: dominance and the front against hand-computed fronts and an
independent brute force, the front's table, the best trial under a budget, and the plot (labels
apart and inside, dominated trials faded, one colour per paradigm)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from dakd.tracking.pareto import (
    DOMINATED_ALPHA,
    best_under,
    dominates,
    front_table,
    pareto_figure,
    pareto_front,
    plot_pareto,
)
from dakd.tracking.placement import candidate_offsets

PNG = b"\x89PNG\r\n\x1a\n"
NAN = math.nan


# -- dominance and the front ---------------------------------------------------------------------


def test_dominates_by_hand():
    modes = ("max", "min")  # mIoU up, memory down
    assert dominates((30.0, 100.0), (29.0, 100.0), modes)
    assert dominates((30.0, 90.0), (30.0, 100.0), modes)
    assert not dominates((30.0, 100.0), (30.0, 100.0), modes)  # equal: neither
    assert not dominates((31.0, 120.0), (30.0, 100.0), modes)  # a trade-off: neither
    assert not dominates((30.0, 120.0), (31.0, 100.0), modes)
    assert dominates((1, 1, 1), (1, 1, 2), ("min", "min", "min"))
    assert not dominates((1, 1, 1), (1, 1, 2), ("min", "min", "max"))


def test_a_missing_figure_neither_dominates_nor_is_dominated():
    modes = ("max", "min")
    assert not dominates((NAN, 1.0), (0.0, 100.0), modes)
    assert not dominates((50.0, 1.0), (NAN, 100.0), modes)
    assert not dominates((50.0, 1.0), (None, 100.0), modes)


def test_modes_are_checked():
    with pytest.raises(ValueError, match="expected 'min' or 'max'"):
        dominates((1, 2), (2, 3), ("max", "lower"))
    with pytest.raises(ValueError, match="1 modes for 2 objectives"):
        pareto_front([(1, 2)], ("max",))


def test_front_by_hand_two_objectives():
    # (mIoU, memory MB); max, min
    points = [
        (30.0, 400.0),  # 0: front
        (28.0, 200.0),  # 1: front
        (27.0, 300.0),  # 2: dominated by 1
        (30.0, 500.0),  # 3: dominated by 0 (same mIoU, more memory)
        (35.0, 900.0),  # 4: front
        (20.0, 100.0),  # 5: front
        (NAN, 10.0),  # 6: missing: off the front, dominates nothing
        (28.0, 200.0),  # 7: a duplicate of 1: both kept
        (19.0, 100.0),  # 8: dominated by 5
    ]
    assert pareto_front(points, ("max", "min")) == [0, 1, 4, 5, 7]
    assert pareto_front(points, ("min", "max")) == [2, 3, 4, 8]  # the opposite corner
    assert pareto_front([], ("max", "min")) == []
    assert pareto_front([(1.0, 2.0)], ("max", "min")) == [0]
    assert pareto_front([(NAN, 2.0)], ("max", "min")) == []


def test_front_by_hand_three_objectives():
    # (mIoU max, memory min, latency min)
    points = [
        (30, 400, 10),  # 0: front
        (30, 400, 12),  # 1: dominated by 0
        (25, 100, 20),  # 2: front (least memory)
        (25, 150, 5),  # 3: front (fastest)
        (24, 150, 6),  # 4: dominated by 3
        (31, 800, 30),  # 5: front (best mIoU)
        (29, 390, 11),  # 6: front (neither 0 nor others beat it everywhere)
        (25, 100, 20),  # 7: duplicate of 2
    ]
    assert pareto_front(points, ("max", "min", "min")) == [0, 2, 3, 5, 6, 7]


def _brute_force(points: np.ndarray, modes: list[str]) -> list[int]:
    """The front by definition, written apart from the module: i is on it unless some j is no
    worse in every objective and better in one; a point with a NaN is never on it nor beats."""
    out = []
    for i, p in enumerate(points.tolist()):
        if any(math.isnan(v) for v in p):
            continue
        beaten = False
        for j, q in enumerate(points.tolist()):
            if j == i or any(math.isnan(v) for v in q):
                continue
            no_worse, better = True, False
            for a, b, mode in zip(q, p, modes):
                if (a < b) if mode == "max" else (a > b):
                    no_worse = False
                if (a > b) if mode == "max" else (a < b):
                    better = True
            if no_worse and better:
                beaten = True
                break
        if not beaten:
            out.append(i)
    return out


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("dims", [2, 3])
def test_front_against_brute_force(seed, dims):
    rng = np.random.default_rng(seed)
    for n, ties in ((40, False), (60, True), (7, True)):
        if ties:  # few distinct values: ties and duplicates are common
            points = rng.integers(0, 5, size=(n, dims)).astype(float)
        else:
            points = rng.normal(size=(n, dims))
        points[rng.random(n) < 0.1, rng.integers(dims)] = NAN
        modes = [("min", "max")[k] for k in rng.integers(0, 2, size=dims)]
        expected = _brute_force(points, modes)
        assert pareto_front(points.tolist(), modes) == expected
        assert expected  # a front is never empty while a point has every figure
        # and what dominates() says agrees
        for i, j in itertools.product(range(n), repeat=2):
            beaten = dominates(points[j].tolist(), points[i].tolist(), modes)
            assert not (beaten and i in expected)


# -- the table and the best under a budget -------------------------------------------------------


def _rows() -> list[dict]:
    return [
        {
            "label": "drn_d_22 width=0.125 os=8",
            "paradigm": "a",
            "miou": 20.0,
            "peak_memory_mb": 110.0,
            "latency_ms": 3.1,
            "params_m": 0.252152,
            "gflops": 1.5,
        },
        {
            "label": "drn_d_22 width=0.25 os=8",
            "paradigm": "b",
            "miou": 24.5,
            "peak_memory_mb": 300.0,
            "latency_ms": 5.0,
            "params_m": 0.95,
            "gflops": None,
        },
        {"label": "dominated", "paradigm": "c", "miou": 19.0, "peak_memory_mb": 320.0},
        {"label": "big", "paradigm": "d", "miou": 31.25, "peak_memory_mb": 1500.0},
        {"label": "missing memory", "paradigm": "d", "miou": 40.0, "peak_memory_mb": None},
        {"label": "a|b", "paradigm": "c", "miou": 27.0, "peak_memory_mb": 700.0},
    ]


def test_front_table_sorted_by_memory():
    table = front_table(_rows(), ["miou", "peak_memory_mb"], ["max", "min"])
    lines = table.splitlines()
    assert lines[0] == (
        "| label | paradigm | miou | peak_memory_mb | latency_ms | params_m | gflops |"
    )
    assert lines[1] == "|---|---|---|---|---|---|---|"
    assert lines[2:] == [
        "| drn_d_22 width=0.125 os=8 | a | 20.00 | 110 | 3.10 | 0.252 | 1.5 |",
        "| drn_d_22 width=0.25 os=8 | b | 24.50 | 300 | 5.00 | 0.950 | – |",
        "| a\\|b | c | 27.00 | 700 | – | – | – |",
        "| big | d | 31.25 | 1500 | – | – | – |",
    ]
    # the modes of the known objectives by default; the columns asked for
    assert front_table(_rows(), ["miou", "peak_memory_mb"]) == table
    short = front_table(_rows(), ["miou", "peak_memory_mb"], columns=["label", "miou"])
    assert short.splitlines()[2] == "| drn_d_22 width=0.125 os=8 | 20.00 |"
    # no minimised objective: best first by the first one
    by_miou = front_table(_rows(), ["miou"], ["max"], columns=["label"])
    assert by_miou.splitlines()[2:] == ["| missing memory |"]


def test_front_table_without_a_default_mode_asks_for_one():
    with pytest.raises(ValueError, match="no default mode for accuracy"):
        front_table(_rows(), ["accuracy", "peak_memory_mb"])


def test_best_under_a_budget():
    rows = _rows()
    assert best_under(rows, "miou", "max", "peak_memory_mb", 512)["label"] == (
        "drn_d_22 width=0.25 os=8"
    )
    assert best_under(rows, "miou", "max", "peak_memory_mb", 300)["miou"] == 24.5  # inclusive
    assert best_under(rows, "miou", "max", "peak_memory_mb", 100) is None
    assert best_under(rows, "miou", "max", "peak_memory_mb", 1e9)["label"] == "big"
    assert best_under(rows, "peak_memory_mb", "min", "miou", 25.0, kind="min")["label"] == "a|b"
    assert best_under(rows, "latency_ms", "min", "peak_memory_mb", 512)["miou"] == 20.0
    assert best_under([], "miou", "max", "peak_memory_mb", 512) is None
    with pytest.raises(ValueError, match="kind 'below'"):
        best_under(rows, "miou", "max", "peak_memory_mb", 512, kind="below")


# -- the plot ------------------------------------------------------------------------------------


def _crowded(n: int = 12) -> list[dict]:
    """``n`` trials all on the front within a few MB and tenths of mIoU, long labels, and two
    dominated trials among them."""
    rows = []
    for i in range(n):
        width, stride = (0.125, 0.25, 0.375)[i % 3], (2, 4, 8)[i % 3]
        rows.append(
            {
                "label": f"trial {i}",
                "short_label": f"drn_d_22 w{width} os{stride}",
                "paradigm": "abcd"[i % 4],
                "miou": 20.0 + 0.05 * i,
                "peak_memory_mb": 200.0 + 1.5 * i,
            }
        )
    rows.append({"label": "x", "paradigm": "a", "miou": 20.1, "peak_memory_mb": 210.0})
    rows.append({"label": "y", "paradigm": "c", "miou": 19.9, "peak_memory_mb": 205.0})
    return rows


def _label_boxes(fig):
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    texts = [t for t in ax.texts if t.get_text()]
    return ax, renderer, texts, [t.get_window_extent(renderer) for t in texts]


@pytest.mark.parametrize("spread", [1.0, 0.05])
def test_front_labels_do_not_overlap_and_stay_inside(spread):
    rows = _crowded()
    for r in rows:  # spread 0.05: twelve points within a few pixels of each other
        r["peak_memory_mb"] = 200.0 + spread * (r["peak_memory_mb"] - 200.0)
        r["miou"] = 20.0 + spread * (r["miou"] - 20.0)
    rows.append({"label": "far", "paradigm": "b", "miou": 24.0, "peak_memory_mb": 260.0})
    fig = pareto_figure(rows)
    ax, renderer, texts, boxes = _label_boxes(fig)
    front = pareto_front([(r["peak_memory_mb"], r["miou"]) for r in rows], ("min", "max"))
    assert len(texts) == len(front) == 13
    assert sorted(t.get_text() for t in texts) == sorted(
        rows[i].get("short_label", rows[i]["label"]) for i in front
    )
    for a, b in itertools.combinations(boxes, 2):
        assert not a.overlaps(b)
    figure_box, axes_box = fig.bbox, ax.get_window_extent(renderer)
    for box in boxes:
        assert figure_box.x0 <= box.x0 and box.x1 <= figure_box.x1
        assert figure_box.y0 <= box.y0 and box.y1 <= figure_box.y1
        assert axes_box.x0 < box.x0 and box.x1 < axes_box.x1  # clear of the axes' edge
        assert axes_box.y0 < box.y0 and box.y1 < axes_box.y1
    # no label covers a point's centre
    centres = ax.transData.transform([(r["peak_memory_mb"], r["miou"]) for r in rows])
    for box in boxes:
        assert not any(box.contains(x, y) for x, y in centres)


def test_dominated_points_are_faded_and_paradigms_have_their_own_colours():
    rows = _crowded()
    fig = pareto_figure(rows)
    ax = fig.axes[0]
    front = set(pareto_front([(r["peak_memory_mb"], r["miou"]) for r in rows], ("min", "max")))
    assert front == set(range(12))
    alpha, colour = {}, {}
    for collection in ax.collections:
        part, paradigm = collection.get_gid().split(":")
        for x, y in collection.get_offsets():
            alpha[(x, y)] = collection.get_alpha()
            colour.setdefault(paradigm, set()).add(tuple(collection.get_facecolor()[0][:3]))
    for i, r in enumerate(rows):
        expected = 1.0 if i in front else DOMINATED_ALPHA
        assert alpha[(r["peak_memory_mb"], r["miou"])] == pytest.approx(expected)
    assert DOMINATED_ALPHA < 0.5
    assert sorted(colour) == ["a", "b", "c", "d"]
    assert all(len(c) == 1 for c in colour.values())  # one colour per paradigm
    assert len(set.union(*colour.values())) == 4  # and no two alike
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[:4] == ["DAKD (a)", "DAKD (b)", "DAKD (c)", "DAKD (d)"]


def test_pareto_plot_axis_and_file(tmp_path):
    rows = _rows()
    path = plot_pareto(rows, tmp_path / "pareto.png")
    assert path == tmp_path / "pareto.png" and path.read_bytes().startswith(PNG)
    fig = pareto_figure(rows)  # 110 MB to 1500 MB: more than ten times, a log axis
    assert fig.axes[0].get_xscale() == "log"
    latency = pareto_figure(rows, x="latency_ms")  # 3.1 ms to 5 ms
    assert latency.axes[0].get_xscale() == "linear"
    assert latency.axes[0].get_xlabel() == "latency (ms)"
    assert plot_pareto([{"label": "x", "miou": 1.0}], tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()


def test_candidate_offsets_start_near_and_grow():
    offsets = candidate_offsets(6.0)
    assert [o.leader for o in offsets[:8]] == [False] * 8
    assert all(o.leader for o in offsets[8:])
    distances = [math.hypot(o.dx, o.dy) for o in offsets[8:]]
    assert distances == sorted(distances) and distances[0] > 6.0


def test_segments_against_boxes_by_hand():
    from dakd.tracking.placement import _crosses_boxes, _crosses_segments

    box = np.array([[0.0, 0.0, 10.0, 10.0]])
    segments = np.array(
        [
            [(-5, 5), (15, 5)],  # straight through
            [(-5, 20), (15, 20)],  # above
            [(5, -5), (5, 2)],  # vertical, ends inside
            [(5, 11), (5, 30)],  # vertical, above
            [(-5, -4), (20, 21)],  # diagonal through a corner's side
            [(11, -1), (20, 5)],  # right of it
            [(2, 2), (3, 3)],  # inside
        ],
        dtype=float,
    )
    expected = [True, False, True, False, True, False, True]
    assert _crosses_boxes(segments, box)[:, 0].tolist() == expected
    assert _crosses_boxes(segments, np.zeros((0, 4))).shape == (7, 0)
    crossing = np.array([[(0, 0), (10, 10)], [(0, 10), (10, 0)], [(20, 0), (30, 0)]], dtype=float)
    assert _crosses_segments(crossing[:1], crossing).tolist() == [[False, True, False]]
