"""The optional ``sweep`` extra: Ray Tune, Optuna, MLflow and PyArrow.

The core trains, evaluates and calibrates without them (``pip install dakd``); the sweep and
reading runs from MLflow need them (``pip install 'dakd[sweep]'``; a clone's ``uv sync``
installs them), the result tables of an exported ``runs.parquet`` PyArrow alone.
The entry points that need the extra check it first, so that a missing package is one line
naming the fix rather than a traceback from deep inside an import.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence

#: The top-level modules the ``sweep`` extra installs.
SWEEP_MODULES = ("ray", "optuna", "mlflow", "pyarrow")


def missing_sweep_extra(what: str, modules: Sequence[str] = SWEEP_MODULES) -> str | None:
    """``None`` when the ``modules`` of the ``sweep`` extra that ``what`` (``"the sweep"``,
    ``"the result tables"``) needs are importable (default: all of them), else the one-line
    error that names the missing modules and the install."""
    missing = [name for name in modules if _absent(name)]
    if not missing:
        return None
    return (
        f"error: {what} needs the sweep extra ({', '.join(missing)} not installed): "
        "pip install 'dakd[sweep]' (in a clone: uv sync)"
    )


def _absent(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is None
    except (ImportError, ValueError):
        return True
