"""The options ``tables.py`` and ``plots.py`` share: which runs, from which store, where to."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without install


def add_selection(parser: argparse.ArgumentParser) -> None:
    """``--experiment``, ``--sweep``, ``--tracking-uri``, ``--out``, ``--best-of-evaluations``,
    ``--no-log``."""
    parser.add_argument("--experiment", required=True, help="MLflow experiment (one per spec)")
    parser.add_argument(
        "--sweep",
        default=None,
        metavar="PARENT_RUN_ID",
        help="only the runs of this sweep (its parent run id, or 'latest' for the newest); "
        "default: every run of the experiment",
    )
    parser.add_argument(
        "--tracking-uri",
        default=None,
        metavar="URI",
        help="MLflow store (default: the project's SQLite store, runs/mlflow.db)",
    )
    parser.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="output folder (default: runs/analysis/EXPERIMENT, or .../PARENT_RUN_ID for a sweep)",
    )
    parser.add_argument(
        "--best-of-evaluations",
        action="store_true",
        help="use each run's best evaluation instead of its final checkpoint (optimistic: "
        "the checkpoint is chosen on the validation set)",
    )
    parser.add_argument(
        "--no-log",
        action="store_true",
        help="do not log the outputs as artifacts of the sweep's parent run (analysis/)",
    )


def run(args: argparse.Namespace, write: Callable) -> int:
    """Select the runs, call ``write(selection, out)`` (-> files), log them to the sweep's
    parent run; one line on stderr and exit status 2 for a selection that cannot be analysed
    (or without the sweep extra, which reading MLflow into Arrow needs)."""
    from dakd.optional_deps import missing_sweep_extra

    missing = missing_sweep_extra("the result tables")
    if missing:
        print(missing, file=sys.stderr)
        return 2

    from dakd.tracking.load import AnalysisError, select
    from dakd.tracking.locations import default_uri
    from dakd.tracking.report import log_files

    uri = args.tracking_uri or default_uri()
    try:
        selection = select(uri, args.experiment, args.sweep)
        out = Path(args.out or Path("runs", "analysis", args.experiment, selection.sweep or ""))
        files = write(selection, out)
        if not args.no_log:
            log_files(selection, files)
            if selection.sweep and files:
                print(f"logged {len(files)} files to run {selection.sweep} under analysis/")
    except AnalysisError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for path in files:
        print(path)
    return 0
