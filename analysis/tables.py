"""The paper's result tables of a study, from its MLflow runs or a saved runs.parquet: the same
command as ``dakd tables`` (without --plots).

python analysis/tables.py --experiment paradigms                       # every run
python analysis/tables.py --experiment loss_weights --sweep latest     # the newest sweep
python analysis/tables.py --experiment levels --format md,tex --best-of-evaluations
python analysis/tables.py --runs runs/analysis/levels/runs.parquet     # no MLflow needed
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without install


def main(argv: list[str] | None = None) -> int:
    from dakd.tracking.cli import tables_main

    return tables_main(argv, prog="python analysis/tables.py")


if __name__ == "__main__":
    sys.exit(main())
