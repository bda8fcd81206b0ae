"""Result tables and plots of a runs table, written into a folder in one call.

:func:`write_results` takes the runs table (:mod:`dakd.tracking.runs_table`: read from MLflow by
:func:`dakd.tracking.load.load_runs`, or from a ``runs.parquet`` by
:func:`~dakd.tracking.runs_table.read_runs`) -> :func:`~dakd.tracking.groups.aggregate` (runs
that differ only in their seed form one group: mean, sample std, n) -> the paper's tables
(:func:`~dakd.tracking.tables.build_tables`, written as Markdown, LaTeX, CSV and Parquet by
:func:`~dakd.tracking.tables.write_tables`) and plots (:func:`~dakd.tracking.plots.make_plots`,
PNG).

It imports pyarrow and matplotlib, never MLflow nor Ray: the tables of an exported
``runs.parquet`` need neither (``python -m dakd tables --runs``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from dakd.tracking.groups import aggregate
from dakd.tracking.plots import make_plots
from dakd.tracking.runs_table import write_runs
from dakd.tracking.tables import FORMATS, build_tables, write_tables

__all__ = ["write_results"]


def write_results(
    runs: pa.Table,
    out: str | Path,
    tables: bool = True,
    plots: bool = False,
    formats: Sequence[str] | None = None,
    best_of_evaluations: bool = False,
    top: int = 10,
    save_runs: bool = True,
    source: str = "runs",
    log: Callable[[str], None] = print,
) -> list[Path]:
    """Write the tables (in ``formats``, default all; with ``save_runs`` also ``runs.parquet``)
    and the plots of ``runs`` into ``out``, as asked; the files written. One line to ``log``
    says what ``source`` held and how many files were written."""
    groups = aggregate(runs, best_of_evaluations)
    written = []
    if tables:
        if save_runs:
            written.append(write_runs(runs, out))
        built = build_tables(groups, best_of_evaluations, top)
        written += write_tables(built, out, FORMATS if formats is None else formats)
    if plots:
        written += make_plots(groups, out, best_of_evaluations, log)
    linked = pc.sum(runs["linked"]).as_py() or 0
    duplicates = pc.sum(runs["duplicate"]).as_py() or 0
    log(
        f"{source}: {len(runs)} runs ({linked} linked stage runs, {duplicates} duplicate "
        f"records), {len(groups)} configurations, {len(written)} files written"
    )
    return written
