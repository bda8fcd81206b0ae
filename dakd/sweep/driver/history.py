"""The past sweeps of a tracking store: ``dakd sweeps`` lists them, ``--resume ID`` and
``dakd compare ID ID`` find one by its id.

A sweep is its MLflow parent run (tag ``stage=sweep``): its id is the sweep's id, its params say
what it planned (``trials``, ``metric``, ``mode``), its metrics what it found (``best_<metric>``,
``gain_over_fair_baseline``: :func:`dakd.sweep.driver.summary.headline_metrics`), its
``tune_experiment`` tag the Ray Tune experiment ``--resume`` continues. Its trials are its child
runs tagged ``trial``. MLflow is imported in the functions only.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dakd.tracking.tags import (
    MLFLOW_PARENT_RUN_ID,
    STAGE,
    SWEEP,
    SWEEP_STAGE,
    TRIAL,
    TUNE_EXPERIMENT,
    tag_filter,
)

if TYPE_CHECKING:
    from mlflow.entities import Run


class SweepLookupError(ValueError):
    """A sweep id that names no sweep (or several), or sweeps that cannot be compared."""


def parent_runs(uri: str, experiment: str | None = None) -> list[Run]:
    """The sweeps' parent runs of the store (of one experiment), newest first; raises
    :class:`~dakd.tracking.runs_table.AnalysisError` when there is no store at ``uri``."""
    from dakd.tracking.load import existing_client
    from dakd.tracking.store import retry_locked, search_runs

    client = existing_client(uri)
    if experiment is None:
        ids = [e.experiment_id for e in retry_locked(client.search_experiments)]
    else:
        found = retry_locked(client.get_experiment_by_name, experiment)
        ids = [found.experiment_id] if found is not None else []
    if not ids:
        return []
    runs = search_runs(client, ids, tag_filter(STAGE, SWEEP_STAGE))
    return sorted(runs, key=lambda r: r.info.start_time or 0, reverse=True)


def find_sweep(uri: str, sweep_id: str) -> Run:
    """The parent run whose id is ``sweep_id`` or starts with it; one
    :class:`SweepLookupError` line naming the nearest ids when none or several do."""
    from dakd.tracking.load import sweep_by_id
    from dakd.tracking.runs_table import AnalysisError

    try:
        return sweep_by_id(parent_runs(uri), sweep_id, uri)
    except AnalysisError as err:
        raise SweepLookupError(str(err)) from None


@dataclass(frozen=True)
class SweepRecord:
    """A sweep as its parent run records it."""

    run: Any  # the MLflow parent run

    @property
    def run_id(self) -> str:
        return self.run.info.run_id

    @property
    def name(self) -> str:
        return self.run.data.tags.get(SWEEP, "?")

    @property
    def metric(self) -> str:
        """The sweep's primary metric (its first objective)."""
        return self.run.data.params.get("metric", "miou").split(",")[0].strip()

    @property
    def mode(self) -> str:
        """``max`` or ``min`` for :attr:`metric` (sweeps recorded without it: ``max``)."""
        return self.run.data.params.get("mode", "max").split(",")[0].strip()

    @property
    def tune_experiment(self) -> str:
        return self.run.data.tags.get(TUNE_EXPERIMENT, "")

    @property
    def planned(self) -> str:
        return self.run.data.params.get("trials", "?")

    @property
    def best(self) -> float:
        return self.run.data.metrics.get(f"best_{self.metric}", math.nan)

    @property
    def gain(self) -> float:
        """The best trial's gain over the fair baseline (NaN: none, or several scenarios)."""
        return self.run.data.metrics.get("gain_over_fair_baseline", math.nan)

    @property
    def started(self) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.run.info.start_time / 1000))


def trial_runs(uri: str, record: SweepRecord) -> list[Run]:
    """The sweep's trial runs (its children tagged ``trial``), every status."""
    from dakd.tracking.store import client_for, search_runs

    children = search_runs(
        client_for(uri),
        [record.run.info.experiment_id],
        tag_filter(MLFLOW_PARENT_RUN_ID, record.run_id),
    )
    return [r for r in children if TRIAL in r.data.tags]


def _number(value: float, sign: bool = False) -> str:
    if math.isnan(value):
        return "-"
    return f"{value:+.2f}" if sign else f"{value:.2f}"


def sweep_table(uri: str, records: list[SweepRecord]) -> str:
    """One row per sweep: name, started, status, trials done/planned, best, gain over the fair
    baseline, id; columns aligned."""
    header = ["name", "started", "status", "trials", "best", "gain", "id"]
    rows = []
    for record in records:
        done = sum(r.info.status == "FINISHED" for r in trial_runs(uri, record))
        best = _number(record.best)
        rows.append(
            [
                record.name,
                record.started,
                record.run.info.status,
                f"{done}/{record.planned}",
                f"{record.metric} {best}" if best != "-" else "-",
                _number(record.gain, sign=True),
                record.run_id,
            ]
        )
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip()
        for row in [header, *rows]
    )


def cmd_sweeps(args: argparse.Namespace) -> int:
    """``dakd sweeps``: the store's sweeps, newest first; one line when it has none."""
    from dakd.optional_deps import missing_sweep_extra

    missing = missing_sweep_extra("the list of sweeps", ("mlflow",))
    if missing:
        print(missing, file=sys.stderr)
        return 2
    from dakd.tracking.locations import default_uri
    from dakd.tracking.runs_table import AnalysisError

    uri = args.tracking_uri or default_uri()
    try:
        runs = parent_runs(uri, args.experiment)
    except AnalysisError as err:
        print(f"no sweeps: {err}")
        return 0
    where = f"experiment {args.experiment!r} of {uri}" if args.experiment else uri
    if not runs:
        print(f"no sweeps in {where}")
        return 0
    shown = runs[: args.limit] if args.limit else runs
    print(sweep_table(uri, [SweepRecord(r) for r in shown]))
    if len(shown) < len(runs):
        print(f"({len(shown)} of {len(runs)} sweeps in {where}; --limit 0 lists all)")
    return 0


def add_sweeps_parser(sub) -> None:
    """The ``sweeps`` subcommand of ``dakd``."""
    p = sub.add_parser(
        "sweeps",
        help="the past sweeps of a tracking store, newest first, with their ids",
        description="The sweeps of an MLflow store, newest first: name, start, status, trials "
        "done of planned, the best trial's value of the sweep's metric, its gain over the fair "
        "baseline, and the sweep's id (its parent run id: what --resume ID and compare take).",
    )
    p.add_argument(
        "--tracking-uri",
        default=None,
        metavar="URI",
        help="MLflow store (default: runs/mlflow.db under the current folder, as a spec's)",
    )
    p.add_argument("--experiment", default=None, metavar="NAME", help="only this experiment's")
    p.add_argument("--limit", type=int, default=20, help="at most N sweeps (default 20; 0: all)")
    p.set_defaults(func=cmd_sweeps)
