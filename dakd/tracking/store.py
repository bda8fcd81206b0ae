"""The MLflow store: one client per store and process, retried while SQLite is locked.

Everything goes through :class:`mlflow.MlflowClient` with explicit run ids -- never the fluent
``mlflow.start_run`` global state -- so one process may hold several open runs (a sweep driver's
parent run and its trials' runs, or several trials of one Ray worker); :mod:`dakd.tracking.runs`
writes them, this module opens the store and reads it.

The default backend is a SQLite file, ``runs/mlflow.db``
(:func:`dakd.tracking.locations.default_uri`), with artifacts in
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
import logging
import os
import random
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy.exc
from mlflow import MlflowClient
from mlflow.entities import Run, ViewType
from mlflow.exceptions import MlflowException

__all__ = [
    "RETRY_SECONDS",
    "client_for",
    "find_runs",
    "get_run",
    "prepare",
    "retry_locked",
    "search_runs",
]

#: How long a store call keeps retrying a locked/busy database before giving up.
RETRY_SECONDS = 60.0

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


def client_for(uri: str) -> MlflowClient:
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
    client = client_for(uri)  # before the lock: a second flock in this process would wait on it
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


def get_run(uri: str, run_id: str) -> Run:
    """The run ``run_id`` of the store at ``uri`` (raises when there is none)."""
    return retry_locked(client_for(uri).get_run, run_id)


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
    client = client_for(uri)
    found = retry_locked(client.get_experiment_by_name, experiment)
    if found is None:
        return []
    return search_runs(client, [found.experiment_id], filter_string)
