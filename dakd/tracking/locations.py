"""Where runs are tracked, importable without MLflow (MLflow takes seconds to import).

The default tracking store, the command that opens the MLflow UI on a store, links into the UI
and the git commit a run is tagged with. MLflow-free like the package's ``__init__``: the sweep
driver reads them from here so that importing MLflow can overlap with starting Ray.

The links follow what MLflow 3.17's UI reads (its shipped JavaScript): the runs table takes its
sort from the URL (``orderByKey``, ``orderByAsc``), but its columns only from a saved view, an
experiment tag the URL names (``viewStateShareKey``); :func:`runs_view` and :func:`view_tag`
spell that tag, :func:`dakd.tracking.runs.save_view` writes it.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from dakd.tracking.tags import MLFLOW_SAVED_VIEW


def default_uri(root: str | Path = "runs") -> str:
    """The default tracking store: ``sqlite:///<absolute root>/mlflow.db``."""
    return f"sqlite:///{(Path(root).resolve() / 'mlflow.db').as_posix()}"


UI_ADDRESS = "http://127.0.0.1:5000"

#: The column kinds of the runs table; a column named without one is a metric.
_KINDS = ("metrics", "params", "tags")


def ui_column(name: str) -> str:
    """A runs-table column as the MLflow UI keys it, in its sort and its column list:
    ``miou`` and ``metrics.miou`` are ``metrics.`miou```, ``params.optim.lr`` is
    ``params.`optim.lr```. A bare name is a metric; ``attributes.*`` is the UI's own spelling
    (``attributes.start_time``) and kept as it is."""
    kind, dot, key = name.partition(".")
    if kind == "attributes" and dot:
        return name
    if not dot or kind not in _KINDS:
        kind, key = "metrics", name
    if len(key) > 1 and key[0] == key[-1] == "`":
        key = key[1:-1]
    if not key:
        raise ValueError(f"no column name in {name!r}")
    return f"{kind}.`{key}`"


def runs_view(
    order_by: str | None = None, ascending: bool = False, columns: Iterable[str] = ()
) -> dict[str, Any]:
    """The runs table's state as the UI keeps it in a saved view: sorted by ``order_by``
    (descending unless ``ascending``) and showing ``columns`` in their order, the sort column
    first when it is not among them. The UI fills in what is left out with its defaults."""
    shown = list(dict.fromkeys(ui_column(c) for c in columns))
    view: dict[str, Any] = {}
    if order_by:
        key = ui_column(order_by)
        view = {"orderByKey": key, "orderByAsc": bool(ascending)}
        shown = shown if key in shown else [key, *shown]
    if shown:
        view |= {"selectedColumns": shown, "columnOrder": shown}
    return view


def view_key(view: dict[str, Any]) -> str:
    """The key a saved view is stored and linked under: a digest of its state, so a sweep that
    saves the same view again overwrites it and every link printed for it stays valid."""
    digest = hashlib.sha256(json.dumps(view, sort_keys=True).encode()).hexdigest()
    return f"dakd-{digest[:12]}"


def view_tag(view: dict[str, Any], name: str, saved_ms: int) -> tuple[str, str]:
    """The experiment tag (name, value) that saves ``view`` as ``name``: the UI's envelope of a
    saved view (``name``, ``createdAt``, ``updatedAt`` in ms, ``state``: the view as JSON)."""
    envelope = {"name": name, "createdAt": saved_ms, "updatedAt": saved_ms}
    return MLFLOW_SAVED_VIEW + view_key(view), json.dumps({**envelope, "state": json.dumps(view)})


def ui_link(
    experiment_id: str,
    run_id: str | None = None,
    order_by: str | None = None,
    ascending: bool = False,
    columns: Iterable[str] = (),
    address: str = "",
) -> str:
    """The MLflow UI's page of an experiment's runs (``workflowType=machine_learning``: the runs
    table, not the GenAI overview MLflow 3 opens by default), or of one run.

    ``order_by`` (``metrics.miou``, or a bare metric name; see :func:`ui_column`) sorts the table,
    descending unless ``ascending``: the URL's ``orderByKey`` and ``orderByAsc``. The UI reads no
    URL parameter for the columns shown, so given ``columns`` the link opens a saved view
    (``viewStateShareKey``) holding the sort and the columns, which
    :func:`dakd.tracking.runs.save_view` saves on the experiment with the same arguments (the UI
    passes over a saved view when the URL sorts too, so the link carries the key alone).
    ``address``: where the UI is served (default: :func:`ui_command`'s, on this machine)."""
    base = f"{(address or UI_ADDRESS).rstrip('/')}/#/experiments/{experiment_id}"
    columns = tuple(columns)
    if run_id:
        if order_by or columns:
            raise ValueError("a run's page has no runs table to sort or pick columns of")
        return f"{base}/runs/{run_id}?workflowType=machine_learning"
    query = {}
    if columns:
        query["viewStateShareKey"] = view_key(runs_view(order_by, ascending, columns))
    elif order_by:
        query = {"orderByKey": ui_column(order_by), "orderByAsc": str(bool(ascending)).lower()}
    query["workflowType"] = "machine_learning"
    return f"{base}/runs?{urlencode(query, quote_via=quote)}"


def is_server(uri: str) -> bool:
    """Whether ``uri`` is an MLflow tracking server (which serves its own UI)."""
    return uri.startswith(("http://", "https://"))


def ui_address(uri: str) -> str:
    """Where the UI of the store ``uri`` is seen: the server itself, or what
    :func:`ui_command` starts on this machine."""
    return uri.rstrip("/") if is_server(uri) else UI_ADDRESS


def ui_command(uri: str, cwd: str | Path | None = None) -> str:
    """The shell command that opens the MLflow UI on ``uri`` (http://127.0.0.1:5000): through
    ``uv run`` in a uv project (``cwd`` or a folder above it holds a ``uv.lock``, as a clone
    does), else ``mlflow ui`` of the environment dakd is installed in; a tracking server serves
    its UI itself, so for one this says where."""
    if is_server(uri):
        return f"the server's UI: {ui_address(uri)}"
    quoted = uri if re.fullmatch(r"[\w./:@%+=-]+", uri) else "'" + uri.replace("'", "'\\''") + "'"
    here = Path(cwd if cwd is not None else Path.cwd()).resolve()
    uv = any((folder / "uv.lock").is_file() for folder in (here, *here.parents))
    return f"{'uv run ' if uv else ''}mlflow ui --backend-store-uri {quoted} --host 127.0.0.1 --port 5000"


def git_commit(cwd: str | Path | None = None) -> str | None:
    """The commit checked out in ``cwd`` (default: the folder of this package), or ``None`` when
    that is not a git work tree or git is missing."""
    where = Path(cwd) if cwd is not None else Path(__file__).resolve().parent
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=where,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = done.stdout.strip()
    return commit if done.returncode == 0 and re.fullmatch(r"[0-9a-f]{7,64}", commit) else None
