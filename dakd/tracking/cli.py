"""``dakd tables`` and ``dakd plots`` (``analysis/tables.py`` and ``analysis/plots.py`` are the
same commands), and the options they share.

The runs come from a saved runs table (``--runs runs.parquet``: PyArrow is all it needs, MLflow
and Ray are never imported) or from a tracking store (``--experiment``, ``--sweep``,
``--tracking-uri``: MLflow). This module imports neither at its top, so the command line parses
without them; what a command needs is checked first and named in one line when missing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = [
    "FORMATS",
    "add_source",
    "add_table_options",
    "add_plots_parser",
    "add_tables_parser",
    "check_args",
    "plots_main",
    "run",
    "tables_main",
]

#: The table formats (:data:`dakd.tracking.tables.FORMATS`, which needs PyArrow to import).
FORMATS = ("md", "tex", "csv", "parquet")


def add_source(parser: argparse.ArgumentParser) -> None:
    """Where the runs come from (``--runs`` or ``--experiment``, ``--sweep``,
    ``--tracking-uri``) and go to (``--out``, ``--no-log``); ``--best-of-evaluations``."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--runs",
        default=None,
        metavar="PARQUET",
        help="a saved runs table (runs.parquet, or its folder): needs neither MLflow nor Ray",
    )
    source.add_argument("--experiment", metavar="NAME", help="MLflow experiment (one per spec)")
    parser.add_argument(
        "--sweep",
        default=None,
        metavar="ID",
        help="only the runs of this sweep (its parent run id or a unique start of it, as `dakd sweeps` lists them, or 'latest' for the newest); "
        "default: every run of the experiment",
    )
    parser.add_argument(
        "--tracking-uri",
        default=None,
        metavar="URI",
        help="MLflow store (default: the project's SQLite store, runs/mlflow.db)",
    )
    parser.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="output folder (default: the folder of --runs; else runs/analysis/EXPERIMENT, "
        "or .../PARENT_RUN_ID for a sweep)",
    )
    parser.add_argument(
        "--best-of-evaluations",
        action="store_true",
        help="use each run's best evaluation instead of its final checkpoint (optimistic: "
        "the checkpoint is chosen on the validation set)",
    )
    parser.add_argument(
        "--no-log",
        action="store_true",
        help="do not log the outputs as artifacts of the sweep's parent run (analysis/)",
    )


def add_table_options(parser: argparse.ArgumentParser) -> None:
    """``--format`` and ``--top``."""
    parser.add_argument(
        "--format",
        default=",".join(FORMATS),
        help=f"comma-separated formats out of {', '.join(FORMATS)} (default: all)",
    )
    parser.add_argument(
        "--top", type=int, default=10, help="rows of the best-configurations table (default 10)"
    )


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[str]:
    """The formats of ``--format``; a parser error for an unknown one, or none, and for
    ``--runs`` with options of a tracking store."""
    if args.runs is not None:
        given = [
            o for o, v in (("--sweep", args.sweep), ("--tracking-uri", args.tracking_uri)) if v
        ]
        if given:
            parser.error(f"{given[0]}: a tracking store's option, not one of --runs")
    chosen = [f.strip() for f in getattr(args, "format", ",".join(FORMATS)).split(",")]
    chosen = [f for f in chosen if f]
    bad = sorted(set(chosen) - set(FORMATS))
    if bad or not chosen:
        parser.error(f"--format: unknown format {bad[0]!r}" if bad else "--format: none given")
    return chosen


def run(args: argparse.Namespace, tables: bool, plots: bool, formats: list[str]) -> int:
    """Write the tables and plots asked for, print the files; one line on stderr and exit
    status 2 for runs that cannot be analysed (or without what reading them needs)."""
    from dakd.optional_deps import missing_sweep_extra

    needs = ("pyarrow",) if args.runs is not None else ("mlflow", "pyarrow")
    missing = missing_sweep_extra("the result tables", needs)
    if missing:
        print(missing, file=sys.stderr)
        return 2

    from dakd.tracking.runs_table import AnalysisError

    options = {
        "tables": tables,
        "plots": plots,
        "formats": formats,
        "best_of_evaluations": args.best_of_evaluations,
        "top": getattr(args, "top", 10),
    }
    try:
        files = _from_file(args, options) if args.runs is not None else _from_store(args, options)
    except AnalysisError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for path in files:
        print(path)
    return 0


def _from_file(args: argparse.Namespace, options: dict) -> list[Path]:
    """The tables of a saved runs table, next to it unless ``--out`` says otherwise."""
    from dakd.tracking.results import write_results
    from dakd.tracking.runs_table import RUNS_FILE, read_runs

    path = Path(args.runs)
    runs = read_runs(path)
    out = Path(args.out) if args.out else (path if path.is_dir() else path.parent)
    source = str(path / RUNS_FILE if path.is_dir() else path)
    return write_results(runs, out, save_runs=False, source=source, **options)


def _from_store(args: argparse.Namespace, options: dict) -> list[Path]:
    """The tables of a tracking store's runs (``runs.parquet`` with them), logged to the
    sweep's parent run unless ``--no-log``."""
    from dakd.tracking.load import select
    from dakd.tracking.locations import default_uri
    from dakd.tracking.report import log_files, write_report

    uri = args.tracking_uri or default_uri()
    selection = select(uri, args.experiment, args.sweep)
    out = Path(args.out or Path("runs", "analysis", args.experiment, selection.sweep or ""))
    files = write_report(selection, out, **options)
    if not args.no_log:
        log_files(selection, files)
        if selection.sweep and files:
            print(f"logged {len(files)} files to run {selection.sweep} under analysis/")
    return files


TABLES_EPILOG = """writes, as the runs allow: scenario_<scenario> (source-only ... DAKD (d), 19 class
IoUs, mIoU, pixel accuracy, parameters, delta mIoU), loss_ablation, levels_paradigm,
best_trials; each as .md/.tex/.csv/.parquet, all in tables.md; from a tracking store also
runs.parquet (one row per run), which --runs reads back without MLflow. Seeds are averaged
(mean, sample std, n); failed and unfinished runs are counted, not averaged. With --plots:
sensitivity.png, miou_vs_parameters.png, per_class_<scenario>.png.

examples:
  python -m dakd tables --runs runs/analysis/paradigms/runs.parquet --plots
  python -m dakd tables --experiment loss_weights --sweep latest --format md,tex
"""


def add_tables_parser(sub) -> None:
    """The ``tables`` subcommand of ``python -m dakd``."""
    p = sub.add_parser(
        "tables",
        help="result tables (and plots) from a runs.parquet or a tracking store",
        description="The paper's result tables (Markdown, LaTeX, CSV, Parquet) and, with "
        "--plots, its plots (PNG), from a saved runs table (no MLflow needed) or from a "
        "study's MLflow runs (docs/analysis.md).",
        epilog=TABLES_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_source(p)
    add_table_options(p)
    p.add_argument("--plots", action="store_true", help="also write the plots (PNG)")
    p.set_defaults(func=lambda args: run(args, True, args.plots, check_args(p, args)))


PLOTS_EPILOG = """writes, as the runs allow: sensitivity.png (mIoU against each swept loss weight, seed
std as error bars), miou_vs_parameters.png (teacher-DA, student-DA, DAKD students) and
per_class_<scenario>.png (the best student against the teacher); a plot the runs cannot
support is skipped with a one-line notice.

examples:
  dakd plots --experiment loss_weights --sweep latest
  dakd plots --runs runs/analysis/paradigms/runs.parquet      (no MLflow needed)
"""

PLOTS_DESCRIPTION = "Plots (PNG) from a study's MLflow runs or a saved runs.parquet."


def add_plots_parser(sub) -> None:
    """The ``plots`` subcommand of ``dakd``."""
    p = sub.add_parser(
        "plots",
        help="result plots (PNG) from a runs.parquet or a tracking store",
        description=PLOTS_DESCRIPTION,
        epilog=PLOTS_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_source(p)
    p.set_defaults(func=lambda args: run(args, False, True, check_args(p, args)))


def plots_main(argv: list[str] | None = None, prog: str = "dakd plots") -> int:
    """``dakd plots`` as a command of its own (``analysis/plots.py``)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=PLOTS_DESCRIPTION,
        epilog=PLOTS_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_source(parser)
    args = parser.parse_args(argv)
    return run(args, tables=False, plots=True, formats=check_args(parser, args))


def tables_main(argv: list[str] | None = None, prog: str = "dakd tables") -> int:
    """``dakd tables`` without ``--plots``, as a command of its own (``analysis/tables.py``)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Result tables (Markdown, LaTeX, CSV, Parquet) from a study's MLflow runs "
        "or a saved runs.parquet.",
        epilog=TABLES_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_source(parser)
    add_table_options(parser)
    args = parser.parse_args(argv)
    return run(args, tables=True, plots=False, formats=check_args(parser, args))
