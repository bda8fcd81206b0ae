"""Result tables and plots of a study, built from its MLflow runs, in one call.

The chain is :func:`~dakd.tracking.load.select` (an experiment, optionally one sweep's parent
run) -> :func:`~dakd.tracking.load.load_runs` (one row per run in a :class:`pyarrow.Table`,
saved as ``runs.parquet``) -> :func:`~dakd.tracking.results.write_results` (seeds averaged, the
paper's tables and plots; it needs the runs table alone, not MLflow). :func:`write_report` runs
it into a folder (``python -m dakd tables``, ``analysis/tables.py``, ``analysis/plots.py``);
:func:`log_sweep_analysis` into the artifacts of a sweep's parent run (the sweep driver, at the
end of a sweep).

It reads MLflow and writes files; it never trains and does not import Ray.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from dakd.tracking.load import Selection, existing_client, load_runs, select
from dakd.tracking.results import write_results
from dakd.tracking.store import retry_locked

__all__ = ["log_files", "log_sweep_analysis", "write_report"]


def write_report(
    selection: Selection,
    out: str | Path,
    tables: bool = True,
    plots: bool = False,
    formats: Sequence[str] | None = None,
    best_of_evaluations: bool = False,
    top: int = 10,
    log: Callable[[str], None] = print,
) -> list[Path]:
    """Load the selection, write ``runs.parquet`` and (as asked) its tables and plots into
    ``out``; the files written."""
    return write_results(
        load_runs(selection),
        out,
        tables=tables,
        plots=plots,
        formats=formats,
        best_of_evaluations=best_of_evaluations,
        top=top,
        source=selection.describe(),
        log=log,
    )


def log_files(selection: Selection, files: Sequence[Path], artifact_path: str = "analysis"):
    """Log ``files`` as artifacts of the selected sweep's parent run, under ``artifact_path``
    (they show in the MLflow UI next to its runs). Without a sweep, nothing is logged."""
    if not selection.sweep:
        return
    client = existing_client(selection.uri)
    for path in files:
        retry_locked(client.log_artifact, selection.sweep, str(path), artifact_path)


def log_sweep_analysis(
    uri: str, experiment: str, parent_run_id: str, log: Callable[[str], None] = print
) -> list[str]:
    """The tables and plots of one sweep, logged under ``analysis/`` of its parent run (what the
    sweep driver calls at the end of a sweep); the artifact paths."""
    selection = select(uri, experiment, parent_run_id)
    with tempfile.TemporaryDirectory(prefix="dakd-analysis-") as tmp:
        files = write_report(selection, tmp, tables=True, plots=True, log=log)
        log_files(selection, files)
    log(f"result tables and plots: artifacts analysis/ of run {parent_run_id}")
    return [f"analysis/{path.name}" for path in files]
