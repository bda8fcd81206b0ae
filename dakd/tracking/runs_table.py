"""The runs table: one row per run, the Arrow table every result table and plot starts from.

:func:`dakd.tracking.load.load_runs` reads it from MLflow; :func:`write_runs` saves it as
``runs.parquet`` and :func:`read_runs` reads that file back, so tables and plots can be built
from the file alone, in an interpreter without MLflow or Ray (``python -m dakd tables --runs``).

Columns, in this order: the fixed ones (:data:`FIXED_TYPES`: ``run_id`` ... ``config``,
``duplicate``), then ``tags.*``, ``params.*`` (strings, as MLflow stores them), ``metrics.*``
(float64, the final evaluation) and ``best.*`` (float64, the best evaluation; ``best.step``
int64). A column a run lacks is null in its row.

This module imports pyarrow, never MLflow nor Ray.
"""

from __future__ import annotations

import ast
import hashlib
import json
import math
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from dakd.config.renamed import stored_names

__all__ = [
    "BOOKKEEPING_PARAMS",
    "FIXED_TYPES",
    "RUNS_FILE",
    "AnalysisError",
    "config_hash",
    "finite_float",
    "is_bookkeeping",
    "logged_value",
    "mark_duplicates",
    "read_runs",
    "records_table",
    "write_runs",
]

#: The file name of a saved runs table.
RUNS_FILE = "runs.parquet"

#: Params that say who a run is or where it wrote, not what it trained: ignored when grouping.
#: ``init``/``teacher`` are checkpoint paths that differ per seed; their presence is in the row.
BOOKKEEPING_PARAMS = (
    "name",
    "out_dir",
    "seed",
    "init",
    "teacher",
    "data.cache_dir",
    "train.progress",
    "train.log_interval",
)

#: The fixed columns and their types, in table order.
FIXED_TYPES = {
    "run_id": pa.string(),
    "run_name": pa.string(),
    "experiment_id": pa.string(),
    "status": pa.string(),
    "parent_run_id": pa.string(),
    "start_time": pa.timestamp("ms", tz="UTC"),
    "end_time": pa.timestamp("ms", tz="UTC"),
    "linked": pa.bool_(),
    "row": pa.string(),
    "stage": pa.string(),
    "scenario": pa.string(),
    "paradigm": pa.string(),
    "levels": pa.string(),
    "seed": pa.int64(),
    "config": pa.string(),
    "duplicate": pa.bool_(),
}

#: What the groups, tables and plots read of a runs table: a file without them is not one.
REQUIRED = (
    "status",
    "linked",
    "row",
    "stage",
    "scenario",
    "paradigm",
    "levels",
    "config",
    "duplicate",
)


class AnalysisError(ValueError):
    """A selection that cannot be analysed (no such experiment, sweep, runs or runs table);
    one line."""


def finite_float(value: Any) -> float | None:
    """``float(value)`` if it is a finite number (or a numeric string), else ``None``; booleans
    are not numbers here."""
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def logged_value(text: str) -> Any:
    """A param as logged (``str()`` of its value, see ``RunLogger.log_params``) back to the
    value: ``"4"`` -> 4, ``"['output']"`` -> ``['output']``; text that is no Python literal
    stays text."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError):
        return text


def is_bookkeeping(key: str) -> bool:
    return key in BOOKKEEPING_PARAMS or key.startswith("sweep.")


def config_hash(params: dict[str, str], row: str) -> str:
    """What was trained, apart from the seed: 12 hex digits (renamed params under the names
    they had before, so the hash of a run does not change with a rename)."""
    key = stored_names({k: v for k, v in params.items() if not is_bookkeeping(k)})
    key["row"] = row
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


def _column_type(name: str) -> pa.DataType:
    if name in FIXED_TYPES:
        return FIXED_TYPES[name]
    if name == "best.step":
        return pa.int64()
    if name.startswith(("metrics.", "best.")):
        return pa.float64()
    return pa.string()


def records_table(records: list[dict[str, Any]]) -> pa.Table:
    """Records with different keys -> one table (the union of columns, nulls where absent)."""
    fixed = [k for k in FIXED_TYPES if any(k in r for r in records)]
    rest = sorted({k for r in records for k in r} - set(fixed))
    prefixes = ("tags.", "params.", "metrics.", "best.")
    rest.sort(key=lambda k: next((i for i, p in enumerate(prefixes) if k.startswith(p)), 4))
    columns = {k: pa.array([r.get(k) for r in records], type=_column_type(k)) for k in fixed + rest}
    return pa.table(columns)


def mark_duplicates(records: list[dict[str, Any]]) -> None:
    """Set ``duplicate``: of several records of one configuration and seed, all but the newest
    finished one (the newest one, if none finished)."""
    newest: dict[tuple, dict[str, Any]] = {}
    for record in sorted(records, key=lambda r: r["start_time"] or 0):
        record["duplicate"] = False
        if record["seed"] is None:
            continue
        key = (record["config"], record["seed"])
        kept = newest.get(key)
        if kept is None or record["status"] == "FINISHED" or kept["status"] != "FINISHED":
            if kept is not None:
                kept["duplicate"] = True
            newest[key] = record
        else:
            record["duplicate"] = True


def write_runs(runs: pa.Table, out: str | Path) -> Path:
    """``runs.parquet`` in ``out``: the table every later analysis can start from."""
    path = Path(out) / RUNS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(runs, path)
    return path


def read_runs(path: str | Path) -> pa.Table:
    """The runs table saved by :func:`write_runs` at ``path`` (a ``runs.parquet``, or the folder
    holding one); :class:`AnalysisError` naming the file when it is missing, unreadable or not a
    runs table."""
    path = Path(path)
    if path.is_dir():
        path = path / RUNS_FILE
    if not path.is_file():
        raise AnalysisError(f"no runs table at {path}")
    try:
        runs = pq.read_table(path)
    except (pa.ArrowException, OSError) as err:
        raise AnalysisError(f"{path} cannot be read as Parquet: {err}") from None
    missing = [c for c in REQUIRED if c not in runs.column_names]
    if missing:
        raise AnalysisError(f"{path} is not a runs table (no column {', '.join(missing)})")
    if runs.num_rows == 0:
        raise AnalysisError(f"no runs to analyse in {path}")
    return runs
