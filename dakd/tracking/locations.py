"""Where runs are tracked, importable without MLflow (MLflow takes seconds to import).

The default tracking store, the command that opens the MLflow UI on a store and the git commit
a run is tagged with. MLflow-free like the package's ``__init__``: the sweep driver reads them
from here so that importing MLflow can overlap with starting Ray.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path


def default_uri(root: str | Path = "runs") -> str:
    """The default tracking store: ``sqlite:///<absolute root>/mlflow.db``."""
    return f"sqlite:///{(Path(root).resolve() / 'mlflow.db').as_posix()}"


UI_ADDRESS = "http://127.0.0.1:5000"


def ui_link(experiment_id: str, run_id: str | None = None) -> str:
    """The MLflow UI's page of an experiment's runs (``workflowType=machine_learning``: the runs
    table, not the GenAI overview MLflow 3 opens by default), or of one run."""
    base = f"{UI_ADDRESS}/#/experiments/{experiment_id}"
    if run_id:
        return f"{base}/runs/{run_id}?workflowType=machine_learning"
    return f"{base}/runs?workflowType=machine_learning"


def ui_command(uri: str) -> str:
    """The shell command that opens the MLflow UI on ``uri`` (http://127.0.0.1:5000)."""
    quoted = uri if re.fullmatch(r"[\w./:@%+=-]+", uri) else "'" + uri.replace("'", "'\\''") + "'"
    return f"uv run mlflow ui --backend-store-uri {quoted} --host 127.0.0.1 --port 5000"


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
