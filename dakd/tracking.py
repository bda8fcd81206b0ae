"""MLflow tracking: one experiment per study, one run per trial, safe with many writers.

Everything goes through :class:`mlflow.MlflowClient` with explicit run ids -- never the fluent
``mlflow.start_run`` global state -- so one process may hold several open runs (a sweep driver's
parent run and its trials' runs, or several trials of one Ray worker).

The default backend is a SQLite file, ``runs/mlflow.db`` (:func:`default_uri`), with artifacts in
``runs/mlartifacts/<experiment>`` next to it (set as the experiment's artifact location, so
nothing lands in ``./mlruns`` of whatever folder a worker happens to run in). SQLite admits one
writer at a time; trials logging at once hit ``database is locked`` whenever SQLite gives up
waiting (a deferred transaction that must upgrade its lock while another writer commits fails at
once, whatever the busy timeout). Every store call here therefore goes through
:func:`retry_locked`: "locked"/"busy" errors are retried with jittered exponential backoff for up
to :data:`RETRY_SECONDS`, and MLflow's own log line about the error is suppressed while we retry
it. A multi-row write such as ``log_batch`` may be redone in part; that is harmless because
params with the same value, tags and metrics with the same (key, value, step, timestamp) are
idempotent in the store. Schema creation races too, so the first client of a SQLite store in
each process is built under an exclusive lock on the database's folder, and :func:`prepare`
(get-or-create the experiment) is meant to run once in the driver before workers start.

A team server (``http://...``) or PostgreSQL URI works the same way; the artifact location is then
left to the server.
"""

from __future__ import annotations

import contextlib
import contextvars
import csv
import io
import logging
import math
import os
import random
import re
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import sqlalchemy.exc
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, Run, RunTag, ViewType
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from mlflow.utils.validation import (
    MAX_METRICS_PER_BATCH,
    MAX_PARAM_VAL_LENGTH,
    MAX_PARAMS_TAGS_PER_BATCH,
    MAX_TAG_VAL_LENGTH,
)

from dakd.config import flatten
from dakd.locations import default_uri, git_commit, ui_command, ui_link  # noqa: F401 (tracking API)

if TYPE_CHECKING:
    from dakd.evaluate import SegMetrics

__all__ = [
    "RETRY_SECONDS",
    "RunLogger",
    "default_uri",
    "find_runs",
    "finish_run",
    "finite_float",
    "git_commit",
    "prepare",
    "retry_locked",
    "search_runs",
    "ui_command",
    "ui_link",
]

#: How long a store call keeps retrying a locked/busy database before giving up.
RETRY_SECONDS = 60.0
#: Terminal statuses accepted by :meth:`RunLogger.finish` and :func:`finish_run`.
STATUSES = ("FINISHED", "FAILED", "KILLED")

T = TypeVar("T")

#: Retries done in this process (read by the tests and handy when tuning).
retry_count = 0

_retrying: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "dakd_tracking_retry", default=False
)
_clients: dict[str, MlflowClient] = {}
_clients_lock = threading.Lock()


# -- retrying a locked store -------------------------------------------------------------------


_LOCK_WORDS = re.compile(r"\b(locked|busy)\b", re.IGNORECASE)


def _is_lock_error(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it wraps) is the database saying it is locked or busy:
    an ``OperationalError`` (SQLAlchemy's or sqlite3's) whose message says "locked"/"busy", or
    an MLflow error carrying one (MLflow wraps them as TEMPORARILY_UNAVAILABLE, also over REST)."""
    current: BaseException | None = exc
    for _ in range(8):
        if current is None:
            return False
        text = str(current)
        if isinstance(current, sqlalchemy.exc.OperationalError | sqlite3.OperationalError):
            if _LOCK_WORDS.search(text):
                return True
        elif isinstance(current, MlflowException):
            transient = current.error_code == "TEMPORARILY_UNAVAILABLE" or "database" in text
            if transient and _LOCK_WORDS.search(text):
                return True
        current = current.__cause__ or current.__context__
    return False


class _DropRetriedLockErrors(logging.Filter):
    """Drops MLflow's "SQLAlchemy database error ... database is locked" records while
    :func:`retry_locked` is handling that very error (elsewhere they pass through)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not _retrying.get():
            return True
        text = record.getMessage().lower()
        return not ("locked" in text or "busy" in text)


logging.getLogger("mlflow.store.db.utils").addFilter(_DropRetriedLockErrors())


def retry_locked(
    fn: Callable[..., T], *args: Any, timeout: float | None = None, **kwargs: Any
) -> T:
    """Call ``fn(*args, **kwargs)``, retrying while the store reports a locked/busy database.

    Backoff starts at 50 ms and doubles up to 2 s, each sleep jittered to 0.5-1.5x so that
    writers that collided once do not collide again; after ``timeout`` seconds (default
    :data:`RETRY_SECONDS`) the last error is raised. Any other error is raised at once.
    """
    global retry_count
    deadline = time.monotonic() + (RETRY_SECONDS if timeout is None else timeout)
    delay = 0.05
    token = _retrying.set(True)
    try:
        while True:
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                if not _is_lock_error(exc):
                    raise
                pause = delay * random.uniform(0.5, 1.5)
                if time.monotonic() + pause > deadline:
                    raise
                retry_count += 1
                time.sleep(pause)
                delay = min(2 * delay, 2.0)
    finally:
        _retrying.reset(token)


# -- stores, experiments -----------------------------------------------------------------------


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (absolute), ``None`` for any other store."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri.removeprefix("sqlite:///").split("?", 1)[0]
    if not path or path == ":memory:":
        return None
    return Path(path).resolve()


@contextlib.contextmanager
def _folder_lock(folder: Path, shared: bool = False) -> Iterator[None]:
    """A ``flock`` on ``folder`` itself (no lock file), exclusive or ``shared``; a no-op where
    fcntl is missing."""
    try:
        import fcntl
    except ImportError:  # Windows: MLflow serialises its own schema creation there
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _has_schema(db: Path) -> bool:
    """Whether ``db`` already holds an MLflow schema (read-only peek; any problem -> False)."""
    if not db.is_file() or db.stat().st_size == 0:
        return False
    try:
        with contextlib.closing(
            sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True, timeout=30)
        ) as connection:
            tables = {
                row[0]
                for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")
            }
            if not {"alembic_version", "experiments", "runs"} <= tables:
                return False
            return (
                connection.execute("SELECT version_num FROM alembic_version").fetchone() is not None
            )
    except sqlite3.Error:
        return False


def _client(uri: str) -> MlflowClient:
    """This process's client for ``uri``.

    Building the first client of a SQLite store creates its schema when the file is new, which
    must not race: that happens under an exclusive lock on the database folder. When the schema
    is already there (the usual case: :func:`prepare` ran in the driver) clients are built under
    a shared lock, so workers starting together do not wait on one another.
    """
    with _clients_lock:
        client = _clients.get(uri)
        if client is not None:
            return client
        db = _sqlite_path(uri)
        if db is None:
            client = retry_locked(MlflowClient, tracking_uri=uri)
        else:
            db.parent.mkdir(parents=True, exist_ok=True)
            with _folder_lock(db.parent, shared=True):
                if _has_schema(db):
                    client = retry_locked(MlflowClient, tracking_uri=uri)
            if client is None:
                with _folder_lock(db.parent):
                    client = retry_locked(MlflowClient, tracking_uri=uri)
        _clients[uri] = client
        return client


def _artifact_location(uri: str, experiment: str) -> str | None:
    """``file://<db folder>/mlartifacts/<experiment>`` for a SQLite store, else ``None``."""
    db = _sqlite_path(uri)
    if db is None:
        return None
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", experiment).strip("._") or "experiment"
    return (db.parent / "mlartifacts" / safe).as_uri()


def prepare(uri: str, experiment: str) -> str:
    """Create the store's schema if needed and get-or-create ``experiment``; its id.

    Call it once in the driver before workers start. It is also safe when several processes
    call it at once: on SQLite it runs under an exclusive lock on the database folder, and an
    experiment created meanwhile by someone else (a shared server) is picked up. A deleted
    experiment of that name is restored.
    """
    client = _client(uri)  # before the lock: a second flock in this process would wait on it
    db = _sqlite_path(uri)
    with contextlib.nullcontext() if db is None else _folder_lock(db.parent):
        found = retry_locked(client.get_experiment_by_name, experiment)
        if found is None:
            try:
                return retry_locked(
                    client.create_experiment,
                    experiment,
                    artifact_location=_artifact_location(uri, experiment),
                )
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
                found = retry_locked(client.get_experiment_by_name, experiment)
                if found is None:
                    raise
        if found.lifecycle_stage == "deleted":
            retry_locked(client.restore_experiment, found.experiment_id)
        return found.experiment_id


# -- runs --------------------------------------------------------------------------------------


def _chunks(items: list[T], size: int) -> Iterator[list[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


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


def _check_status(status: str) -> str:
    if status not in STATUSES:
        raise ValueError(f"run status must be one of {STATUSES}, got {status!r}")
    return status


class RunLogger:
    """One MLflow run, addressed by id, that any process may (re)open and log to.

    ``run_id=None`` creates a run in ``experiment_id`` (named ``run_name``, tagged
    ``mlflow.parentRunId = parent_run_id`` when given, plus ``tags``); a ``run_id`` reopens that
    run instead (a retried or resumed trial continues it: status back to RUNNING, new metric
    steps appended, same-valued params accepted, ``run_name``/``tags``/parent applied if given).
    Use it as a context manager to finish the run FINISHED, or FAILED/KILLED on an exception.
    """

    def __init__(
        self,
        uri: str,
        experiment_id: str,
        run_name: str | None = None,
        parent_run_id: str | None = None,
        tags: Mapping[str, Any] | None = None,
        run_id: str | None = None,
    ):
        self.uri = uri
        self.experiment_id = str(experiment_id)
        self.client = _client(uri)
        all_tags = {str(k): self._tag_value(v) for k, v in (tags or {}).items()}
        if parent_run_id:
            all_tags[MLFLOW_PARENT_RUN_ID] = str(parent_run_id)
        if run_id is None:
            run = retry_locked(
                self.client.create_run, self.experiment_id, tags=all_tags, run_name=run_name
            )
        else:
            run = retry_locked(self.client.get_run, run_id)
            if run.info.experiment_id != self.experiment_id:
                raise ValueError(
                    f"run {run_id} belongs to experiment {run.info.experiment_id}, "
                    f"not {self.experiment_id}"
                )
        #: The MLflow run id (store it to reopen the run later).
        self.run_id: str = run.info.run_id
        if run_id is not None:
            retry_locked(self.client.update_run, run_id, status="RUNNING", name=run_name or None)
            if all_tags:
                self.set_tags(all_tags)
        #: Where the run's artifacts live (``file://...`` for the default store).
        self.artifact_uri: str = run.info.artifact_uri
        #: The status the run was terminated with, ``None`` while it is open.
        self.status: str | None = None

    @staticmethod
    def _tag_value(value: Any) -> str:
        return str(value)[:MAX_TAG_VAL_LENGTH]

    # -- values ---------------------------------------------------------------------------------

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log params; nested dicts are flattened to dotted keys, values written as ``str()``
        (cut at MLflow's 6000 characters). Re-logging a param with the same value is fine;
        a different value raises MLflow's "Changing param values is not allowed"."""
        flat = flatten(dict(params))
        items = [Param(str(k), str(v)[:MAX_PARAM_VAL_LENGTH]) for k, v in flat.items()]
        for chunk in _chunks(items, MAX_PARAMS_TAGS_PER_BATCH):
            retry_locked(self.client.log_batch, self.run_id, params=chunk)

    def log_metrics(self, metrics: Mapping[str, Any], step: int) -> dict[str, float]:
        """Log ``metrics`` at ``step`` in batches; NaN, inf and non-numbers are skipped. Keys may
        hold ``/`` (``iou/road``, ``loss/kl``). Returns what was logged."""
        stamp = int(time.time() * 1000)
        logged = {
            str(k): v
            for k, v in ((k, finite_float(v)) for k, v in metrics.items())
            if v is not None
        }
        items = [Metric(k, v, stamp, int(step)) for k, v in logged.items()]
        for chunk in _chunks(items, MAX_METRICS_PER_BATCH):
            retry_locked(self.client.log_batch, self.run_id, metrics=chunk)
        return logged

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set tags (values written as ``str()``); existing tags are overwritten."""
        items = [RunTag(str(k), self._tag_value(v)) for k, v in tags.items()]
        for chunk in _chunks(items, MAX_PARAMS_TAGS_PER_BATCH):
            retry_locked(self.client.log_batch, self.run_id, tags=chunk)

    # -- artifacts ------------------------------------------------------------------------------

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Copy a file (or a folder, under its own name) into the run's artifacts, optionally
        under the artifact folder ``artifact_path``."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no artifact at {path}")
        retry_locked(self.client.log_artifact, self.run_id, str(path), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        """Write ``text`` as the artifact ``artifact_file`` (e.g. ``"eval/table.md"``)."""
        retry_locked(self.client.log_text, self.run_id, text, artifact_file)

    def log_dict(self, obj: Mapping[str, Any], artifact_file: str) -> None:
        """Write ``obj`` as the artifact ``artifact_file``: YAML for ``.yaml``/``.yml``, else JSON."""
        retry_locked(self.client.log_dict, self.run_id, dict(obj), artifact_file)

    def log_evaluation(
        self,
        metrics: SegMetrics,
        panel: np.ndarray | None = None,
        prefix: str = "eval",
    ) -> list[str]:
        """Log the pictures and tables of one evaluation under the artifact folder ``prefix``:
        ``confusion.png`` (row-normalised), ``confusion.csv`` (counts), ``per_class_iou.md``
        and ``per_class_iou.csv`` (percent, blank where absent) and, given a ``panel`` from
        :func:`dakd.visualize.prediction_panel`, ``predictions.png``. Returns the artifact paths.
        Scalars (mIoU, per-class IoU) are :meth:`log_metrics`' job."""
        from dakd.data.labels import CLASS_NAMES
        from dakd.visualize import confusion_figure, per_class_table, save_png

        matrix = np.asarray(metrics.matrix)
        names = (
            list(CLASS_NAMES)
            if len(matrix) == len(CLASS_NAMES)
            else list(map(str, range(len(matrix))))
        )
        with tempfile.TemporaryDirectory(prefix="dakd-eval-") as tmp:
            folder = Path(tmp)
            confusion_figure(matrix, folder / "confusion.png")
            buffer = io.StringIO()
            writer = csv.writer(buffer, lineterminator="\n")
            writer.writerow(["ground_truth\\prediction", *names])
            for name, row in zip(names, matrix, strict=True):
                writer.writerow([name, *(int(v) for v in row)])
            (folder / "confusion.csv").write_text(buffer.getvalue())
            (folder / "per_class_iou.md").write_text(per_class_table(metrics))
            buffer = io.StringIO()
            writer = csv.writer(buffer, lineterminator="\n")
            writer.writerow(["class", "iou"])
            for name, value in zip(CLASS_NAMES, metrics.iou, strict=False):
                writer.writerow([name, "" if math.isnan(value) else f"{100 * float(value):.4f}"])
            (folder / "per_class_iou.csv").write_text(buffer.getvalue())
            if panel is not None:
                save_png(panel, folder / "predictions.png")
            files = sorted(p.name for p in folder.iterdir())
            retry_locked(self.client.log_artifacts, self.run_id, tmp, prefix)
        return [f"{prefix}/{name}" if prefix else name for name in files]

    # -- end ------------------------------------------------------------------------------------

    def finish(self, status: str = "FINISHED") -> None:
        """Terminate the run with ``status`` (FINISHED, FAILED or KILLED) and its end time."""
        retry_locked(self.client.set_terminated, self.run_id, _check_status(status))
        self.status = status

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.finish("FINISHED")
        elif issubclass(exc_type, KeyboardInterrupt):
            self.finish("KILLED")
        else:
            self.finish("FAILED")

    def __repr__(self) -> str:
        return f"RunLogger(run_id={self.run_id!r}, experiment_id={self.experiment_id!r})"


def get_run(uri: str, run_id: str) -> Run:
    """The run ``run_id`` of the store at ``uri`` (raises when there is none)."""
    return retry_locked(_client(uri).get_run, run_id)


def finish_run(uri: str, run_id: str, status: str = "FINISHED") -> None:
    """Terminate run ``run_id`` with ``status`` without reopening it (a driver marking a crashed
    trial's run FAILED, say)."""
    retry_locked(_client(uri).set_terminated, run_id, _check_status(status))


def set_run_tags(uri: str, run_id: str, tags: dict[str, Any]) -> None:
    """Tag run ``run_id`` without reopening it."""
    client = _client(uri)
    for key, value in tags.items():
        retry_locked(client.set_tag, run_id, key, str(value))


def search_runs(
    client: MlflowClient, experiment_ids: list[str], filter_string: str = "", page_size: int = 1000
) -> list[Run]:
    """Every active run of ``experiment_ids`` matching ``filter_string``, oldest first, read page
    by page (each page retried on a locked SQLite store)."""
    runs: list[Run] = []
    token = None
    while True:
        page = retry_locked(
            client.search_runs,
            experiment_ids,
            filter_string=filter_string,
            run_view_type=ViewType.ACTIVE_ONLY,
            max_results=page_size,
            order_by=["attributes.start_time ASC"],
            page_token=token,
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def find_runs(uri: str, experiment: str, filter_string: str = "") -> list[Run]:
    """Every active run of the experiment named ``experiment`` matching ``filter_string`` (MLflow
    search syntax, e.g. ``"tags.stage = 'dakd'"``), oldest first; ``[]`` if there is no such
    experiment."""
    client = _client(uri)
    found = retry_locked(client.get_experiment_by_name, experiment)
    if found is None:
        return []
    return search_runs(client, [found.experiment_id], filter_string)
