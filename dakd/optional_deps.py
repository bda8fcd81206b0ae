"""The optional ``sweep`` extra: Ray Tune, Optuna, MLflow and PyArrow.

The core trains, evaluates and calibrates without them (``pip install dakd``); the sweep and
the result tables need them (``pip install 'dakd[sweep]'``; a clone's ``uv sync`` installs them).
The entry points that need the extra check it first, so that a missing package is one line
naming the fix rather than a traceback from deep inside an import.
"""

from __future__ import annotations

import importlib.util

#: The top-level modules the ``sweep`` extra installs.
SWEEP_MODULES = ("ray", "optuna", "mlflow", "pyarrow")


def missing_sweep_extra(what: str) -> str | None:
    """``None`` when the ``sweep`` extra is importable, else the one-line error for ``what``
    (``"the sweep"``, ``"the result tables"``) that names the missing modules and the install."""
    missing = [name for name in SWEEP_MODULES if _absent(name)]
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
