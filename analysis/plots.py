"""Plots of a study, from its MLflow runs or a saved runs.parquet (PNG).

python analysis/plots.py --experiment loss_weights --sweep latest
python analysis/plots.py --experiment paradigms
python analysis/plots.py --runs runs/analysis/paradigms/runs.parquet   # no MLflow needed
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without install

from dakd.tracking.cli import add_source, check_args, run  # noqa: E402

EPILOG = """writes, as the runs allow: sensitivity.png (mIoU against each swept loss weight, seed
std as error bars), miou_vs_parameters.png (teacher-DA, student-DA, DAKD students) and
per_class_<scenario>.png (the best student against the teacher); a plot the runs cannot
support is skipped with a one-line notice.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python analysis/plots.py",
        description="Plots (PNG) from a study's MLflow runs or a saved runs.parquet.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_source(parser)
    args = parser.parse_args(argv)
    return run(args, tables=False, plots=True, formats=check_args(parser, args))


if __name__ == "__main__":
    sys.exit(main())
