"""Run a sweep spec on Ray Tune, every trial tracked in MLflow: the same command as ``dakd sweep``.

python sweeps/run.py sweeps/loss_weights.yaml               # run it
python sweeps/run.py sweeps/loss_weights.yaml --dry-run     # validate, print the plan
python sweeps/run.py sweeps/loss_weights.yaml --resume      # continue an interrupted sweep
python sweeps/run.py sweeps/loss_weights.yaml --resume ID   # continue the sweep `dakd sweeps` lists

Ctrl-C or SIGTERM (a job's time limit, an eviction) stops the sweep cleanly: Tune saves its
trials, every MLflow run still open ends KILLED, and the exit status is 130 or 143.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without install


def main(argv: list[str] | None = None) -> int:
    from dakd.sweep.driver.cli import main as sweep

    return sweep(argv, prog="python sweeps/run.py")


if __name__ == "__main__":
    sys.exit(main())
