"""Plots of a study, from its MLflow runs or a saved runs.parquet (PNG): the same command as
``dakd plots``.

python analysis/plots.py --experiment loss_weights --sweep latest
python analysis/plots.py --experiment paradigms
python analysis/plots.py --runs runs/analysis/paradigms/runs.parquet   # no MLflow needed
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without install


def main(argv: list[str] | None = None) -> int:
    from dakd.tracking.cli import plots_main

    return plots_main(argv, prog="python analysis/plots.py")


if __name__ == "__main__":
    sys.exit(main())
