"""The paper's result tables of a study, from its MLflow runs or a saved runs.parquet.

python analysis/tables.py --experiment paradigms                       # every run
python analysis/tables.py --experiment loss_weights --sweep latest     # the newest sweep
python analysis/tables.py --experiment levels --format md,tex --best-of-evaluations
python analysis/tables.py --runs runs/analysis/levels/runs.parquet     # no MLflow needed

The same as ``python -m dakd tables`` (without --plots).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without install

from dakd.tracking.cli import add_source, add_table_options, check_args, run  # noqa: E402

EPILOG = """writes runs.parquet (one row per run; not with --runs, which reads one) and, as the
runs allow: scenario_<scenario> (source-only ... DAKD (d), 19 class IoUs, mIoU, pixel accuracy,
parameters, delta mIoU), loss_ablation, levels_paradigm, best_trials; each as
.md/.tex/.csv/.parquet, all in tables.md. Seeds are averaged (mean, sample std, n); failed and
unfinished runs are counted, not averaged.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python analysis/tables.py",
        description="Result tables (Markdown, LaTeX, CSV, Parquet) from a study's MLflow runs "
        "or a saved runs.parquet.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_source(parser)
    add_table_options(parser)
    args = parser.parse_args(argv)
    return run(args, tables=True, plots=False, formats=check_args(parser, args))


if __name__ == "__main__":
    sys.exit(main())
