"""Plots of a study, from its MLflow runs (PNG).

python analysis/plots.py --experiment loss_weights --sweep latest
python analysis/plots.py --experiment paradigms
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without install

from analysis.common import add_selection, run  # noqa: E402

EPILOG = """writes, as the runs allow: sensitivity.png (mIoU against each swept loss weight, seed
std as error bars), miou_vs_parameters.png (teacher-DA, student-DA, DAKD students) and
per_class_<scenario>.png (the best student against the teacher); a plot the runs cannot
support is skipped with a one-line notice.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python analysis/plots.py",
        description="Plots (PNG) from a study's MLflow runs.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_selection(parser)
    args = parser.parse_args(argv)

    def write(selection, out):
        from dakd.tracking.report import write_report

        return write_report(
            selection,
            out,
            tables=False,
            plots=True,
            best_of_evaluations=args.best_of_evaluations,
        )

    return run(args, write)


if __name__ == "__main__":
    sys.exit(main())
