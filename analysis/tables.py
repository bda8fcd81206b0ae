"""The paper's result tables of a study, from its MLflow runs.

python analysis/tables.py --experiment paradigms                       # every run
python analysis/tables.py --experiment loss_weights --sweep latest     # the newest sweep
python analysis/tables.py --experiment levels --format md,tex --best-of-evaluations
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without install

from analysis.common import add_selection, run  # noqa: E402

EPILOG = """writes runs.parquet (one row per run) and, as the runs allow: scenario_<scenario>
(source-only ... DAKD (d), 19 class IoUs, mIoU, pixel accuracy, parameters, delta mIoU),
loss_ablation, levels_paradigm, best_trials; each as .md/.tex/.csv/.parquet, all in tables.md.
Seeds are averaged (mean, sample std, n); failed and unfinished runs are counted, not averaged.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python analysis/tables.py",
        description="Result tables (Markdown, LaTeX, CSV, Parquet) from a study's MLflow runs.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_selection(parser)
    parser.add_argument(
        "--format",
        default="md,tex,csv,parquet",
        help="comma-separated formats out of md, tex, csv, parquet (default: all)",
    )
    parser.add_argument(
        "--top", type=int, default=10, help="rows of the best-configurations table (default 10)"
    )
    args = parser.parse_args(argv)
    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    bad = sorted(set(formats) - {"md", "tex", "csv", "parquet"})
    if bad or not formats:
        parser.error(f"--format: unknown format {bad[0]!r}" if bad else "--format: none given")

    def write(selection, out):
        from dakd.tracking.report import write_report

        return write_report(
            selection,
            out,
            tables=True,
            formats=formats,
            best_of_evaluations=args.best_of_evaluations,
            top=args.top,
        )

    return run(args, write)


if __name__ == "__main__":
    sys.exit(main())
