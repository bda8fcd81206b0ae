"""The MLflow store: one client per store and process, retried while the store is unavailable.

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
once, whatever the busy timeout). Schema creation races too, so the first client of a SQLite
store in each process is built under an exclusive lock on the database's folder, and
:func:`prepare` (get-or-create the experiment) is meant to run once in the driver before workers
start.

A tracking server (``http://...``, e.g. in front of PostgreSQL) or a database URI
(``postgresql://...``) is shared by every node of a cluster and may restart under a running
sweep: the server is redeployed, PostgreSQL fails over. Every store call here therefore goes
through :func:`retry_locked`, which retries what passes -- a locked/busy SQLite, a refused or
reset connection, a timeout, HTTP 408/429/5xx, MLflow's TEMPORARILY_UNAVAILABLE, a database
connection lost -- with jittered exponential backoff, for up to :func:`retry_seconds` (the
spec's ``tracking.retry_seconds``, 300 s by default); anything else (RESOURCE_DOES_NOT_EXIST,
INVALID_PARAMETER_VALUE, another 4xx, a wrong password) is raised at once. A server or database
that stays away longer ends the call with one :class:`TrackingError` naming it and for how long
it was tried. MLflow's own HTTP retries (7 per request by default, about 245 s of backoff before
a call fails; measured against a closed port) are turned off in processes that log to a server
(:data:`MLFLOW_RETRIES_ENV`), so that this budget alone bounds a call: a call gives up after
``retry_seconds`` plus at most one request's own timeout (``MLFLOW_HTTP_REQUEST_TIMEOUT``, 120 s,
for a server that accepts connections but never answers).

Redoing a call is harmless where the first attempt may have landed (a reset connection loses the
answer, not necessarily the write): params with the same value, tags, a run's status and
artifacts are overwritten with themselves, and MLflow's SQL store drops a metric whose (key,
value, step, timestamp) the run already has, so a ``log_batch`` sent twice logs each metric once
(:class:`dakd.tracking.runs.RunLogger` stamps a batch once, before the first attempt). Creating
a run or an experiment is the exception: a retried ``create_run`` whose first answer was lost
leaves an empty extra run (``prepare`` handles the experiment's RESOURCE_ALREADY_EXISTS).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import math
import os
import random
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import requests
import sqlalchemy.exc
from mlflow import MlflowClient
from mlflow.entities import Run, ViewType
from mlflow.exceptions import MlflowException, RestException

from dakd.tracking.server import RETRY_ENV as _RETRY_ENV
from dakd.tracking.server import (
    TrackingError,
    connect_database,
    exception_chain,
    failure_reason,
    http_status,
    is_database,
    is_server,
    redact,
)

__all__ = [
    "RETRY_ENV",
    "RETRY_SECONDS",
    "TrackingError",
    "client_for",
    "configure_retries",
    "find_runs",
    "get_run",
    "prepare",
    "retry_locked",
    "retry_seconds",
    "search_runs",
]

#: How long (seconds) a store call keeps retrying an unavailable store by default: the default
#: of the spec's ``tracking.retry_seconds`` (:class:`dakd.sweep.spec.settings.Tracking`).
RETRY_SECONDS = 300.0

#: :data:`dakd.tracking.server.RETRY_ENV`: the environment variable that carries the retry
#: budget into processes this one starts, and into Ray workers through the runtime environment
#: (set by :func:`configure_retries`).
RETRY_ENV = _RETRY_ENV

#: MLflow's HTTP retries per request, set to 0 (unless already set) by :func:`client_for` for a
#: server: with MLflow's default of 7 one call to a stopped server takes about 245 s to fail,
#: whatever our budget; a value set in the environment is kept and adds to the budget.
MLFLOW_RETRIES_ENV = "MLFLOW_HTTP_REQUEST_MAX_RETRIES"

T = TypeVar("T")

#: Retries done in this process (read by the tests and handy when tuning).
retry_count = 0

_budget: float | None = None
_logger = logging.getLogger(__name__)
_retrying: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "dakd_tracking_retry", default=False
)
_clients: dict[str, MlflowClient] = {}
_clients_lock = threading.Lock()


# -- the retry budget --------------------------------------------------------------------------


def configure_retries(seconds: float) -> None:
    """Make every store call of this process retry an unavailable store for up to ``seconds``
    (the spec's ``tracking.retry_seconds``), and export it as :data:`RETRY_ENV` so that the
    processes this one starts inherit it."""
    global _budget
    seconds = float(seconds)
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"tracking.retry_seconds must be a number > 0, got {seconds:g}")
    _budget = seconds
    os.environ[RETRY_ENV] = repr(seconds)


def retry_seconds() -> float:
    """This process's retry budget: what :func:`configure_retries` set, else :data:`RETRY_ENV`
    (a Ray worker gets it from the driver's runtime environment), else :data:`RETRY_SECONDS`."""
    if _budget is not None:
        return _budget
    text = os.environ.get(RETRY_ENV, "").strip()
    if not text:
        return RETRY_SECONDS
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{RETRY_ENV}={text!r}: expected a number of seconds > 0")
    return value


# -- what is worth retrying --------------------------------------------------------------------


_LOCK_WORDS = re.compile(r"\b(locked|busy)\b", re.IGNORECASE)

#: MLflow error codes a server answers while it, or its database, is briefly unavailable.
_TRANSIENT_CODES = frozenset(
    {
        "TEMPORARILY_UNAVAILABLE",
        "REQUEST_LIMIT_EXCEEDED",
        "RESOURCE_EXHAUSTED",
        "SERVICE_UNDER_MAINTENANCE",
        "WORKSPACE_TEMPORARILY_UNAVAILABLE",
    }
)

#: A database connection lost or refused (a restart, a failover). MLflow's server reports most
#: as TEMPORARILY_UNAVAILABLE, but a pooled connection found closed can come back as a 400.
_DB_GONE = re.compile(
    r"connection refused|server closed the connection|connection already closed|"
    r"terminating connection|the database system is (starting up|shutting down|in recovery)|"
    r"could not connect|connection (to server .* failed|reset|timed out)|timeout expired|"
    r"ssl syscall error|lost connection|server has gone away",
    re.IGNORECASE,
)

#: Database errors no wait mends: a wrong user, password, database or schema.
_DB_PERMANENT = re.compile(
    r"authentication failed|password|does not exist|no such table|permission denied|"
    r"pg_hba\.conf|invalid dsn|unknown database|access denied",
    re.IGNORECASE,
)


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


#: What the layers between a store call and the store raise.
_STORE_ERRORS = (
    MlflowException,
    requests.exceptions.RequestException,
    sqlalchemy.exc.SQLAlchemyError,
    OSError,
)


def _transient_status(status: int) -> bool:
    return status in (408, 429) or status >= 500


def _unavailable(exc: BaseException) -> str | None:
    """Why the store is unavailable, in a few words, if ``exc`` says it is and waiting may mend
    it (a server restarting, its database restarting, a database connection lost); else None.

    Only errors of the store's layers count (MLflow's, a request's, a database's, the OS's): a
    bug raised while MLflow handled a failure is not a failure of the store. The first exception
    of the chain that tells decides: an MLflow error the server answered (its code), an HTTP
    status, a connection that failed, a database error (SQLite's, other than a lock, are never
    transient: the file is there or it is not).
    """
    if not isinstance(exc, _STORE_ERRORS):
        return None
    for current in exception_chain(exc):
        if isinstance(current, RestException):  # the server answered, with an error of its own
            if current.error_code in _TRANSIENT_CODES:
                return current.error_code
            if current.error_code != "RESOURCE_DOES_NOT_EXIST" and _DB_GONE.search(str(current)):
                return "its database connection was lost"
            return None
        status = http_status(current)
        if status is not None:
            return f"HTTP {status}" if _transient_status(status) else None
        if isinstance(
            current,
            requests.exceptions.ConnectionError
            | requests.exceptions.Timeout
            | requests.exceptions.ChunkedEncodingError,
        ):
            return failure_reason(current)
        if isinstance(current, sqlalchemy.exc.DBAPIError):
            if isinstance(current.orig, sqlite3.Error):
                return None
            if _DB_PERMANENT.search(str(current.orig)):
                return None
            lost = isinstance(current, sqlalchemy.exc.OperationalError)
            if lost or current.connection_invalidated or _DB_GONE.search(str(current.orig)):
                return failure_reason(current)
            return None
    return None


class _DropRetriedStoreErrors(logging.Filter):
    """Drops MLflow's "SQLAlchemy database error ..." records (a locked SQLite, a database
    connection lost) while :func:`retry_locked` is handling that very error: it reports what
    it gives up on itself. Elsewhere they pass through."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not _retrying.get():
            return True
        text = record.getMessage().lower()
        return not (
            "locked" in text
            or "busy" in text
            or text.startswith(("sqlalchemy database error", "sqlalchemy engine could not"))
        )


logging.getLogger("mlflow.store.db.utils").addFilter(_DropRetriedStoreErrors())


# -- retrying ----------------------------------------------------------------------------------


def _store_of(fn: Callable[..., Any], kwargs: dict[str, Any], exc: BaseException) -> str | None:
    """The URI of the store ``fn`` talks to: its MlflowClient's, a ``tracking_uri`` argument,
    else the server named in MLflow's "API request to <url> failed" message."""
    owner = getattr(fn, "__self__", None)
    with contextlib.suppress(Exception):
        uri = getattr(owner, "tracking_uri", None) if owner is not None else None
        if isinstance(uri, str) and uri:
            return uri
    uri = kwargs.get("tracking_uri")
    if isinstance(uri, str) and uri:
        return uri
    match = re.search(r"API request to (https?://[^/\s]+)", str(exc))
    return match.group(1) if match else None


def _gave_up(store: str | None, budget: float, reason: str) -> str:
    """The one line a call raises when the store stayed unavailable for its whole budget."""
    if store is None:
        what = "The MLflow tracking store"
    elif is_server(store):
        what = f"MLflow tracking server {redact(store)}"
    elif is_database(store):
        what = f"MLflow tracking database {redact(store)}"
    else:
        what = f"MLflow tracking store {redact(store)}"
    return (
        f"{what} did not answer for {budget:g} s ({reason}); check that it is running "
        "(tracking.retry_seconds sets how long a trial waits for it)"
    )


def retry_locked(
    fn: Callable[..., T], *args: Any, timeout: float | None = None, **kwargs: Any
) -> T:
    """Call ``fn(*args, **kwargs)``, retrying while the store is locked or unavailable.

    A locked/busy SQLite is retried from 50 ms, a server or database that is away from 0.25 s (it
    takes seconds to restart), each doubling up to 2 s, so that a writer goes on within about
    2 s of the store's return (a tracking server took 12-19 s to restart here, on 2 busy cores);
    each sleep is jittered to 0.5-1.5x so that writers that failed together do not retry
    together. After ``timeout`` seconds (default :func:`retry_seconds`) a lock error is
    raised as it is, an unavailable store as one :class:`TrackingError` naming it. Any other
    error is raised at once. (The name predates servers; it is kept: many modules call it.)
    """
    return _retry(fn, args, kwargs, timeout, None)


def _retry(
    fn: Callable[..., T],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    timeout: float | None,
    store: str | None,
) -> T:
    global retry_count
    budget = retry_seconds() if timeout is None else timeout
    start = time.monotonic()
    deadline = start + budget
    lock_delay, away_delay = 0.05, 0.25
    away: str | None = None  # why the store was away, once a call failed for that
    name = "MLflow tracking store"
    token = _retrying.set(True)
    try:
        while True:
            try:
                result = fn(*args, **kwargs)
            except Exception as exc:
                locked = _is_lock_error(exc)
                reason = None if locked else _unavailable(exc)
                if not locked and reason is None:
                    raise
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    if locked:
                        raise
                    uri = store or _store_of(fn, kwargs, exc)
                    raise TrackingError(_gave_up(uri, budget, reason)) from exc
                if locked:
                    pause, lock_delay = lock_delay, min(2 * lock_delay, 2.0)
                else:
                    if away is None:
                        name = redact(store or _store_of(fn, kwargs, exc) or name)
                        _logger.warning(
                            "%s unavailable (%s); retrying for up to %g s", name, reason, budget
                        )
                    away = reason
                    pause, away_delay = away_delay, min(2 * away_delay, 2.0)
                retry_count += 1
                time.sleep(min(pause * random.uniform(0.5, 1.5), remaining))
            else:
                if away is not None:
                    _logger.warning(
                        "%s answered again after %.1f s", name, time.monotonic() - start
                    )
                return result
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

    For a tracking server, MLflow's own HTTP retries are turned off here
    (:data:`MLFLOW_RETRIES_ENV`, unless the environment sets them): :func:`retry_locked` retries
    instead, within its budget. For a database server, one plain connection is made first,
    retried within the budget: building MLflow's store retries its first connection on its own
    for about 100 s (10 tries), which would add to ours.
    """
    with _clients_lock:
        client = _clients.get(uri)
        if client is not None:
            return client
        db = _sqlite_path(uri)
        if is_server(uri):
            os.environ.setdefault(MLFLOW_RETRIES_ENV, "0")
        if is_database(uri):
            _retry(connect_database, (uri,), {}, None, uri)
        if db is None:
            client = _retry(MlflowClient, (), {"tracking_uri": uri}, None, uri)
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
