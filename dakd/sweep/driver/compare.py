"""``dakd compare ID ID``: two sweeps' best trials and their result tables side by side.

Each sweep's best trial is its finished trial run best by the sweep's metric (the way the
sweep recorded as its ``mode``); the result tables are the ones ``dakd tables --sweep ID``
writes (:func:`dakd.tracking.tables.build_tables` over each sweep's runs), a table of one kind
from both sweeps printed as one, its first column naming the sweep of each row. Two sweeps of
different metrics are not compared: one line says so.
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

from dakd.sweep.driver.history import SweepLookupError, SweepRecord, find_sweep, trial_runs
from dakd.tabular import markdown_table
from dakd.tracking.tags import TRIAL


def best_trial(uri: str, record: SweepRecord) -> tuple[str, float, str] | None:
    """(trial label, value of the sweep's metric, run id) of the sweep's best finished trial;
    None when no trial finished with the metric."""
    scored = [
        (run.data.metrics[record.metric], run)
        for run in trial_runs(uri, record)
        if run.info.status == "FINISHED"
        and not math.isnan(run.data.metrics.get(record.metric, math.nan))
    ]
    if not scored:
        return None
    pick = max if record.mode == "max" else min
    value, run = pick(scored, key=lambda pair: pair[0])
    return run.data.tags.get(TRIAL, ""), value, run.info.run_id


def result_tables(uri: str, record: SweepRecord, best_of_evaluations: bool = False) -> list:
    """The sweep's result tables (:class:`dakd.tracking.tables.ResultTable`)."""
    from dakd.tracking.groups import aggregate
    from dakd.tracking.load import load_runs, select
    from dakd.tracking.store import client_for, retry_locked
    from dakd.tracking.tables import build_tables

    experiment = retry_locked(client_for(uri).get_experiment, record.run.info.experiment_id)
    runs = load_runs(select(uri, experiment.name, record.run_id))
    return build_tables(aggregate(runs, best_of_evaluations), best_of_evaluations)


def side_by_side(labels: tuple[str, str], tables: tuple[list, list]) -> list[str]:
    """Each kind of table once, in the order of the first sweep's then the second's: the rows of
    both under one header, a ``sweep`` column first; two tables of one kind with different
    columns (other swept values) one after the other."""
    by_name: dict[str, list[tuple[str, Any]]] = {}
    for label, found in zip(labels, tables):
        for table in found:
            by_name.setdefault(table.name, []).append((label, table))
    lines = []
    for pairs in by_name.values():
        first = pairs[0][1]
        lines += ["", f"### {first.title}", ""]
        if all(table.header == first.header for _, table in pairs):
            cells = [[label, *row] for label, table in pairs for row in table.cells]
            lines.append(markdown_table(["sweep", *first.header], cells))
        else:
            for label, table in pairs:
                lines += [f"{label}:", "", markdown_table(table.header, table.cells), ""]
        missing = [label for label in labels if label not in {lab for lab, _ in pairs}]
        if missing:
            lines.append(f"(not in the runs of {', '.join(missing)})")
    return lines


def compare(uri: str, first: str, second: str, best_of_evaluations: bool = False) -> str:
    """The comparison of the sweeps ``first`` and ``second`` (ids or unique prefixes), as text;
    :class:`SweepLookupError` for an unknown id or different metrics."""
    records = tuple(SweepRecord(find_sweep(uri, sweep_id)) for sweep_id in (first, second))
    a, b = records
    if (a.metric, a.mode) != (b.metric, b.mode):
        raise SweepLookupError(
            f"sweeps {a.run_id[:8]} ({a.name}: {a.mode} {a.metric}) and {b.run_id[:8]} "
            f"({b.name}: {b.mode} {b.metric}) optimise different metrics: nothing to compare"
        )
    labels = tuple(f"{r.name} {r.run_id[:8]}" for r in records)
    if labels[0] == labels[1]:
        labels = (f"{labels[0]} (1)", f"{labels[1]} (2)")
    header = ["sweep", "started", "status", "best trial", a.metric, "trial run"]
    cells = []
    for label, record in zip(labels, records):
        best = best_trial(uri, record)
        trial, value, run_id = best if best is not None else ("(no finished trial)", math.nan, "")
        cells.append([label, record.started, record.run.info.status, trial, f"{value:.2f}", run_id])
    lines = [f"best trials by {a.metric} ({a.mode}):", "", markdown_table(header, cells)]
    tables = tuple(result_tables(uri, r, best_of_evaluations) for r in records)
    lines += side_by_side(labels, tables)
    return "\n".join(lines)


def cmd_compare(args: argparse.Namespace) -> int:
    """``dakd compare ID ID``; one line on stderr and exit status 2 when they cannot be."""
    from dakd.optional_deps import missing_sweep_extra

    missing = missing_sweep_extra("the comparison of sweeps", ("mlflow", "pyarrow"))
    if missing:
        print(missing, file=sys.stderr)
        return 2
    from dakd.tracking.locations import default_uri
    from dakd.tracking.runs_table import AnalysisError

    uri = args.tracking_uri or default_uri()
    try:
        print(compare(uri, *args.sweeps, best_of_evaluations=args.best_of_evaluations))
    except (SweepLookupError, AnalysisError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def add_compare_parser(sub) -> None:
    """The ``compare`` subcommand of ``dakd``."""
    p = sub.add_parser(
        "compare",
        help="two sweeps' best trials and result tables side by side",
        description="Two sweeps (ids as `dakd sweeps` lists them, or unique prefixes): each "
        "one's best trial by the sweep's metric, then their result tables, one table per kind "
        "with a column naming the sweep of each row.",
    )
    p.add_argument("sweeps", nargs=2, metavar="ID", help="a sweep's id (its parent run id)")
    p.add_argument(
        "--tracking-uri",
        default=None,
        metavar="URI",
        help="MLflow store (default: runs/mlflow.db under the current folder, as a spec's)",
    )
    p.add_argument(
        "--best-of-evaluations",
        action="store_true",
        help="tables of each run's best evaluation instead of its final checkpoint",
    )
    p.set_defaults(func=cmd_compare)
