"""``dakd sweep SPEC``: run a sweep spec on Ray Tune, every trial tracked in MLflow.

``python sweeps/run.py SPEC`` is the same command. Exit status: 0 done, 1 a trial or stage
failed (or the sweep stopped itself, or its Tune state cannot be read), 2 bad input (the spec,
the config, the data, a missing extra), 130 or 143 stopped by Ctrl-C or SIGTERM. Ctrl-C or
SIGTERM (a job's time limit, an eviction) stops the sweep cleanly: Tune saves its trials, every
MLflow run still open ends KILLED. This module imports nothing heavy at its top: the command
line parses, and a missing extra is named in one line, without Ray, MLflow or Optuna.
"""

from __future__ import annotations

import argparse
import os
import re
import sys

EPILOG = """spec sections: name, experiment, stages, search, tune, resources, tracking, storage
(see sweeps/README.md). --set addresses the spec by dotted keys, e.g.
  --set tune.num_samples=4 --set experiment.train.steps=200 --set search.loss.kl=0.1
--resume ID continues the sweep whose parent run id (or a unique prefix of it) `dakd sweeps`
lists; --resume alone continues the latest run of the spec.
"""


def add_sweep_arguments(parser: argparse.ArgumentParser) -> None:
    """The spec, ``--resume [ID]``, the cluster, the dry run's planning options, ``--smoke``
    and ``--set``."""
    # optional only so that `--resume SPEC` (--resume before the spec) reads as it always did
    parser.add_argument("spec", nargs="?", help="sweep spec YAML (e.g. sweeps/quickstart.yaml)")
    parser.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=False,
        metavar="ID",
        help="continue the latest interrupted run of this sweep, or with ID the sweep of that "
        "parent run id (a unique prefix will do; `dakd sweeps` lists them)",
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
    plan_for = parser.add_argument_group(
        "planning (--dry-run)",
        "the cost printed by the dry run: the Ray cluster given with --address, else these "
        "nodes, else this machine; the step time measured by bench/gpu_step.py, else --step-ms",
    )
    plan_for.add_argument("--nodes", type=int, help="plan for this many nodes")
    plan_for.add_argument("--gpus-per-node", type=float, default=0.0, help="with --nodes")
    plan_for.add_argument(
        "--cpus-per-node", type=float, default=None, help="with --nodes (default: 8 per GPU)"
    )
    plan_for.add_argument("--step-ms", type=float, help="a DAKD step's time, in ms")
    plan_for.add_argument(
        "--gpu-kind", default="", help="the GPU of the measured step time, e.g. 'NVIDIA H200'"
    )
    parser.add_argument(
        "--smoke", action="store_true", help="run with tiny step counts and crops (for tests)"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a spec value by its dotted key, e.g. --set tune.num_samples=4 (repeatable)",
    )


def sweep_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Run a DAKD sweep spec: Ray Tune trials, MLflow tracking, reused stages.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_sweep_arguments(parser)
    return parser


def main(argv: list[str] | None = None, prog: str = "dakd sweep") -> int:
    """The whole command: parse ``argv``, run (or plan) the sweep; the exit status."""
    return run_command(sweep_parser(prog).parse_args(argv))


def run_command(args: argparse.Namespace) -> int:
    """Run (or with ``--dry-run`` plan) the sweep ``args`` give; one line on stderr and the exit
    status for every way it can stop."""
    from dakd.optional_deps import missing_sweep_extra

    resume = args.resume
    if args.spec is None and isinstance(resume, str) and not is_sweep_id(resume, exists=True):
        args.spec, args.resume = args.resume, True  # `--resume SPEC`: the spec, not an id
    if args.spec is None:
        print("error: no spec given (dakd sweep SPEC.yaml [--resume [ID]])", file=sys.stderr)
        return 2
    missing = missing_sweep_extra("the sweep")
    if missing:
        print(missing, file=sys.stderr)
        return 2

    from dakd.config import ConfigError
    from dakd.data.datasets import DataError
    from dakd.sweep.driver.interrupt import Stopped, Terminated
    from dakd.sweep.driver.plan import smoke
    from dakd.sweep.driver.restore import TuneStateError
    from dakd.sweep.driver.run import run_sweep
    from dakd.sweep.spec.sweep_spec import SpecError, load_spec

    try:
        spec = (
            smoke(args.spec, args.overrides) if args.smoke else load_spec(args.spec, args.overrides)
        )
        if args.dry_run:
            return dry_run(spec, args)
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
    except TuneStateError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except Stopped as stop:
        print(
            f"error: sweep {spec.name} stopped: {stop.reason}; {stop.closed} MLflow run(s) "
            "closed as KILLED; continue it with the same command and --resume",
            file=sys.stderr,
        )
        return 1
    return 1 if result.errors else 0


def is_sweep_id(text: str, exists: bool = False) -> bool:
    """Whether ``text`` can be a sweep's id or its prefix (hex digits), not a spec's path (with
    ``exists``, a file of that name is the spec)."""
    if exists and os.path.isfile(text):
        return False
    return re.fullmatch(r"[0-9a-f]+", text) is not None


def dry_run(spec, args) -> int:
    """The plan (datasets not there yet listed, not an error), the cluster's checks when one is
    given, and the cost on the cluster planned for; a budget the cost exceeds stops it."""
    from dakd.sweep.driver.cluster import dry_run_cluster, unmet_request
    from dakd.sweep.driver.cost import Shape, check_budget, plan_cost
    from dakd.sweep.driver.plan import plan
    from dakd.sweep.spec.sweep_spec import SpecError

    the_plan = plan(spec, without_data=True)
    print(the_plan.text())
    address = args.address or os.environ.get("RAY_ADDRESS")
    if address:  # the checks a sweep makes before its first task, and the nodes it has
        shape = Shape.from_ray(dry_run_cluster(spec, address, args.autoscale), address)
    elif args.nodes:
        cpus = (
            args.cpus_per_node if args.cpus_per_node is not None else 8 * max(args.gpus_per_node, 1)
        )
        shape = Shape.of(
            args.nodes,
            args.gpus_per_node,
            cpus,
            f"--nodes {args.nodes} --gpus-per-node {args.gpus_per_node:g}",
        )
        nodes = [{"ip": f"node {i}", "CPU": c, "GPU": g} for i, (c, g) in enumerate(shape.nodes)]
        unmet = unmet_request(spec, nodes)
        if unmet is not None:  # what the cluster check would say on such a cluster
            raise SpecError(f"{spec.path}: {unmet[0]}: {unmet[1]} ({shape.source})")
    else:
        shape = Shape.this_machine()
    cost = plan_cost(spec, the_plan.stages, shape, args.step_ms, args.gpu_kind)
    print(cost.text())
    check_budget(spec, cost)
    return 0


def add_sweep_parsers(sub) -> None:
    """The ``sweep``, ``sweeps`` and ``compare`` subcommands of ``dakd``."""
    from dakd.sweep.driver.compare import add_compare_parser
    from dakd.sweep.driver.history import add_sweeps_parser

    p = sub.add_parser(
        "sweep",
        help="run a sweep spec on Ray Tune, tracked in MLflow (python sweeps/run.py)",
        description="Run a DAKD sweep spec: Ray Tune trials, MLflow tracking, reused stages.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_sweep_arguments(p)
    p.set_defaults(func=run_command)
    add_sweeps_parser(sub)
    add_compare_parser(sub)
