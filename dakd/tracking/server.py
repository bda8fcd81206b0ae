"""The tracking server or database a sweep logs to: is it there before the sweep starts?

A sweep with ``tracking.uri: http://...`` or ``postgresql://...`` whose server is not running
would otherwise start Ray, build its stages and only then fail, in the first trial, after
:func:`dakd.tracking.store.retry_locked` waited out its whole retry budget (minutes).
:func:`check_tracking` asks once, with a short timeout, and raises a one-line
:class:`TrackingError` naming the store and the fix; the driver turns it into its own error.

This module imports neither MLflow nor SQLAlchemy at load time (the driver calls it before it
needs them); :mod:`dakd.tracking.store` uses its helpers to name a failure in its own errors.
"""

from __future__ import annotations

import os
import re
from typing import Any
from urllib.parse import urlsplit

__all__ = [
    "DRIVER_PACKAGES",
    "TrackingError",
    "check_tracking",
    "connect_database",
    "exception_chain",
    "failure_reason",
    "http_status",
    "is_database",
    "is_server",
    "redact",
]

#: What to install for each SQLAlchemy PostgreSQL driver (both are in the ``sweep`` extra).
#: SQLAlchemy 2.1 opens ``postgresql://`` with psycopg (3); 2.0 with psycopg2.
DRIVER_PACKAGES = {"psycopg": "psycopg[binary]", "psycopg2": "psycopg2-binary"}

#: Seconds :func:`check_tracking` waits for an answer: a live server answers in milliseconds.
CHECK_TIMEOUT = 5.0

#: The environment variable that carries the store retry budget (seconds) into the processes a
#: sweep starts and, through Ray's runtime environment, its workers on every node; here, where
#: the driver can set it without importing MLflow (:mod:`dakd.tracking.store` reads it).
RETRY_ENV = "DAKD_TRACKING_RETRY_SECONDS"


class TrackingError(Exception):
    """The tracking store cannot be used; the message is one line naming the store (its URI,
    password hidden) and what happened."""


def redact(uri: str) -> str:
    """``uri`` with the password of its ``user:password@`` part replaced by ``***``."""
    return re.sub(r"(//[^/@:]*):[^@/]*@", r"\1:***@", uri)


def _scheme(uri: str) -> str:
    """The URI's scheme without a SQLAlchemy driver (``postgresql+psycopg2`` -> ``postgresql``);
    ``""`` for a plain path."""
    scheme = urlsplit(uri).scheme.lower()
    return "" if len(scheme) <= 1 else scheme.split("+", 1)[0]  # one letter: a Windows drive


def is_server(uri: str) -> bool:
    """Whether ``uri`` is an MLflow tracking server (``http://`` or ``https://``)."""
    return _scheme(uri) in ("http", "https")


def is_database(uri: str) -> bool:
    """Whether ``uri`` is a database server MLflow opens through SQLAlchemy (not SQLite)."""
    return _scheme(uri) in ("postgresql", "postgres", "mysql", "mssql")


# -- naming a failure --------------------------------------------------------------------------

#: Phrases of a database's own messages that tell what went wrong, in the words to report.
_DB_PHRASES = (
    ("connection refused", "connection refused"),
    ("the database system is starting up", "the database system is starting up"),
    ("the database system is shutting down", "the database system is shutting down"),
    ("the database system is in recovery mode", "the database system is in recovery mode"),
    ("terminating connection due to administrator command", "connection terminated by a restart"),
    ("server closed the connection unexpectedly", "server closed the connection"),
    ("connection already closed", "connection closed"),
    ("could not translate host name", "host name not resolved"),
    ("timeout expired", "timed out"),
)


def exception_chain(exc: BaseException | None, depth: int = 12) -> list[BaseException]:
    """``exc`` and the exceptions it wraps (``__cause__``, ``__context__``, urllib3's ``reason``
    and exceptions passed as arguments), outermost first, each once."""
    found: list[BaseException] = []
    pending = [exc]
    while pending and len(found) < depth:
        current = pending.pop(0)
        if current is None or any(current is seen for seen in found):
            continue
        found.append(current)
        wrapped = [current.__cause__, current.__context__, getattr(current, "reason", None)]
        wrapped += list(current.args)  # requests and urllib3 pass the error inside as an argument
        pending.extend(item for item in wrapped if isinstance(item, BaseException))
    return found


def failure_reason(exc: BaseException) -> str:
    """A few words for what a failed request or connection ran into: ``connection refused``,
    ``connection reset``, ``timed out``, ``host name not resolved``, ``HTTP 503``, a database's
    phrase; else the innermost message, cut short."""
    chain = exception_chain(exc)
    for current in chain:
        if isinstance(current, ConnectionRefusedError):
            return "connection refused"
    for current in chain:
        if type(current).__name__ in ("RemoteDisconnected", "IncompleteRead"):
            return "connection closed"  # before its base class, ConnectionResetError
        if isinstance(current, ConnectionResetError | BrokenPipeError):
            return "connection reset"
        if isinstance(current, TimeoutError) or type(current).__name__ in (
            "ConnectTimeout",
            "ReadTimeout",
            "Timeout",
            "ConnectTimeoutError",
            "ReadTimeoutError",
        ):
            return "timed out"
        if type(current).__name__ in ("NameResolutionError", "gaierror"):
            return "host name not resolved"
        status = http_status(current)
        if status is not None:
            return f"HTTP {status}"
    text = " ".join(str(chain[-1]).split()) if chain else ""
    lowered = " ".join(str(exc).split()).lower()
    for phrase, words in _DB_PHRASES:
        if phrase in lowered:
            return words
    return (text or type(chain[-1]).__name__)[:160]


def http_status(exc: BaseException) -> int | None:
    """The HTTP status a request failed with, if ``exc`` says: a response attached to it, or
    urllib3's ``too many 503 error responses`` when it stopped retrying a status."""
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    if isinstance(status, int):
        return status
    match = re.search(r"too many (\d{3}) error responses", str(exc))
    return int(match.group(1)) if match else None


# -- checks before a sweep ---------------------------------------------------------------------


def check_tracking(uri: str, timeout: float = CHECK_TIMEOUT) -> None:
    """Raise a one-line :class:`TrackingError` when the store at ``uri`` cannot be reached.

    ``http(s)://``: one ``GET <uri>/health`` (MLflow's server answers ``OK``), no retries.
    ``postgresql://`` (any driver): the driver SQLAlchemy picks must import, then one connection
    must open. Anything else (``sqlite:``, a folder, ``file:``) is a local store: nothing to
    check. Each check takes at most about ``timeout`` seconds.
    """
    scheme = _scheme(uri)
    if scheme in ("http", "https"):
        _check_server(uri, timeout)
    elif scheme in ("postgresql", "postgres"):
        try:
            connect_database(uri, timeout)
        except TrackingError:
            raise
        except Exception as exc:
            where = _database_address(uri)
            raise TrackingError(
                f"tracking.uri: cannot connect to PostgreSQL at {where}: {_db_message(exc)}"
            ) from None


def _check_server(uri: str, timeout: float) -> None:
    import requests

    url = uri.rstrip("/") + "/health"
    try:
        response = requests.get(url, timeout=timeout, verify=_tls_verify())
    except requests.exceptions.RequestException as exc:
        raise TrackingError(
            f"tracking.uri: no MLflow server answers at {redact(uri)} ({failure_reason(exc)}); "
            "start it (docs/cluster.md) or fix tracking.uri"
        ) from None
    if response.status_code != 200:
        body = " ".join(response.text.split())[:120]
        raise TrackingError(
            f"tracking.uri: {redact(uri)} answered GET /health with HTTP {response.status_code}"
            f"{f' ({body})' if body else ''}, not an MLflow server's OK; check tracking.uri "
            "(and the server's --allowed-hosts)"
        )


def _tls_verify() -> bool | str:
    """What MLflow's client verifies an https server with: its CA bundle, or nothing when told
    to skip verification (its own environment variables)."""
    if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() in ("true", "1"):
        return False
    return os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH") or True


def _database_address(uri: str) -> str:
    """``host:port/database`` of a database URI, for messages (never its password)."""
    from sqlalchemy.engine import make_url

    try:
        url = make_url(uri)
    except Exception:
        return redact(uri)
    host = url.host or "localhost"
    port = url.port or {"postgresql": 5432, "mysql": 3306}.get(url.get_backend_name(), "")
    return f"{host}:{port}/{url.database or ''}"


def _db_message(exc: BaseException) -> str:
    """The database driver's own message of ``exc`` on one line."""
    orig = getattr(exc, "orig", None)
    text = " ".join(str(orig if orig is not None else exc).split())
    return text[:300] or type(exc).__name__


def connect_database(uri: str, timeout: float = CHECK_TIMEOUT) -> None:
    """Open and close one connection to the database at ``uri``, waiting at most ``timeout``
    seconds for it; raises what the driver raises (a missing driver: :class:`TrackingError`
    naming the package to install)."""
    import sqlalchemy
    from sqlalchemy.engine import make_url
    from sqlalchemy.pool import NullPool

    url = make_url(uri)
    driver = url.get_driver_name()
    try:
        url.get_dialect().import_dbapi()
    except ImportError:
        package = DRIVER_PACKAGES.get(driver, driver)
        raise TrackingError(
            f"tracking.uri: {redact(uri)} needs the database driver {driver}, which is not "
            f"installed: pip install '{package}' (it comes with the sweep extra: "
            "pip install 'dakd[sweep]'; in a clone: uv sync)"
        ) from None
    connect_args: dict[str, Any] = {}
    if url.get_backend_name() in ("postgresql", "mysql"):
        connect_args["connect_timeout"] = max(1, round(timeout))
    engine = sqlalchemy.create_engine(url, poolclass=NullPool, connect_args=connect_args)
    try:
        with engine.connect():
            pass
    finally:
        engine.dispose()
