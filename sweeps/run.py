"""Run a sweep spec on Ray Tune, every trial tracked in MLflow.

python sweeps/run.py sweeps/loss_weights.yaml            # run it
python sweeps/run.py sweeps/loss_weights.yaml --dry-run  # validate, print the plan
python sweeps/run.py sweeps/loss_weights.yaml --resume   # continue an interrupted sweep

Ctrl-C or SIGTERM (a job's time limit, an eviction) stops the sweep cleanly: Tune saves its
trials, every MLflow run still open ends KILLED, and the exit status is 130 or 143.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without install

EPILOG = """spec sections: name, experiment, stages, search, tune, resources, tracking, storage
(see sweeps/README.md). --set addresses the spec by dotted keys, e.g.
  --set tune.num_samples=4 --set experiment.train.steps=200 --set search.loss.kl=0.1
"""


def main(argv: list[str] | None = None) -> int:
    from dakd.__main__ import add_overrides

    parser = argparse.ArgumentParser(
        prog="python sweeps/run.py",
        description="Run a DAKD sweep spec: Ray Tune trials, MLflow tracking, reused stages.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("spec", help="sweep spec YAML (e.g. sweeps/quickstart.yaml)")
    parser.add_argument(
        "--resume", action="store_true", help="continue the latest interrupted run of this sweep"
    )
    parser.add_argument(
        "--address",
        default=None,
        help="join a Ray cluster: 'auto' or ray://host:port (default: $RAY_ADDRESS if set, else a "
        "new local Ray, never one left running on this machine)",
    )
    parser.add_argument(
        "--autoscale",
        action="store_true",
        help="the Ray cluster adds nodes on demand: do not stop when it lacks the resources a "
        "trial asks for (without it, a spec asking for more than the cluster has stops at once)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="validate the spec and print the trial plan without starting Ray",
    )
    parser.add_argument(
        "--smoke", action="store_true", help="run with tiny step counts and crops (for tests)"
    )
    add_overrides(parser, "a spec value", "tune.num_samples=4")
    args = parser.parse_args(argv)

    from dakd.extras import missing_sweep_extra

    missing = missing_sweep_extra("the sweep")
    if missing:
        print(missing, file=sys.stderr)
        return 2

    from dakd.config import ConfigError
    from dakd.data.datasets import DataError
    from dakd.sweep.cluster import dry_run_cluster
    from dakd.sweep.interrupt import Stopped, Terminated
    from dakd.sweep.plan import plan, smoke
    from dakd.sweep.run import run_sweep
    from dakd.sweep.spec import SpecError, load_spec

    try:
        spec = (
            smoke(args.spec, args.overrides) if args.smoke else load_spec(args.spec, args.overrides)
        )
        if args.dry_run:
            print(plan(spec).text())
            address = args.address or os.environ.get("RAY_ADDRESS")
            if address:  # the checks a sweep makes before its first task, on that cluster
                dry_run_cluster(spec, address, args.autoscale)
            return 0
        result = run_sweep(spec, resume=args.resume, address=args.address, autoscale=args.autoscale)
    except (SpecError, ConfigError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Terminated as stop:
        # one line, what a job's log shows last: the status a shell gives a signal's end
        print(
            f"sweep {spec.name} terminated by {stop.signal_name}: {stop.closed} MLflow run(s) "
            "closed as KILLED; continue it with the same command and --resume",
            file=sys.stderr,
        )
        return stop.exit_code
    except Stopped as stop:
        print(
            f"error: sweep {spec.name} stopped: {stop.reason}; {stop.closed} MLflow run(s) "
            "closed as KILLED; continue it with the same command and --resume",
            file=sys.stderr,
        )
        return 1
    return 1 if result.errors else 0


if __name__ == "__main__":
    sys.exit(main())
