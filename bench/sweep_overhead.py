"""What a sweep costs beyond training: Ray Tune + MLflow against the same trials in a plain loop.

Runs a spec (default: the quickstart) twice, side by side in one invocation:

1. through ``run_sweep``, exactly as ``python sweeps/run.py`` does (Ray Tune trials, MLflow
   parent and child runs, checkpoints, the result tables at the end); each trial logs where its
   time went (``time/setup_s``, ``time/train_s``, ``time/report_s``, ``time/logging_s``,
   ``time/artifacts_s``; see ``dakd.sweep.remote.hooks.TrialTracking``);
2. the very same trial configs (read back from the Tune results) in a plain Python loop:
   ``dakd.engine.trainer.train`` one after another, no Ray, no MLflow, the same torch threads.

The stages the trials build on (teacher-DA, student-DA) are trained (or found) first and are
not part of either measurement. Printed:

* sweep efficiency = total trial compute / (wall time x concurrency), where trial compute is
  the trainer's own time inside each trial and wall time is the whole ``run_sweep`` call (Ray
  start and shutdown, stage lookup, the summary and result tables included);
* the same ratio for the plain loop (concurrency 1);
* per-trial overhead, split into start (Ray, the trial process, stage lookup, MLflow run),
  report + checkpoint (to Tune), MLflow logging, final artifacts, and the rest (scheduling,
  driver), in seconds per trial.

    uv run python bench/sweep_overhead.py [SPEC] [--set key=value ...]

Target: efficiency >= 0.85. Tracking and Tune storage go to a scratch folder (``--out``); the
stages and the scene cache are the project's own (``runs/``), so a second run reuses them.
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dakd.engine.trainer import train  # noqa: E402
from dakd.recipes.stages import run_stage  # noqa: E402
from dakd.sweep.driver.plan import plan  # noqa: E402
from dakd.sweep.driver.run import run_sweep  # noqa: E402
from dakd.sweep.spec.context import SweepContext, stages_of, trial_config  # noqa: E402
from dakd.sweep.spec.sweep_spec import load_spec, resolve  # noqa: E402

ACTIVITIES = ("setup", "report", "logging", "artifacts")


def trial_times(uri: str, parent_run_id: str) -> list[dict[str, float]]:
    """The ``time/*_s`` metrics of every child run of the sweep."""
    from mlflow.tracking import MlflowClient

    from dakd.tracking.store import search_runs
    from dakd.tracking.tags import MLFLOW_PARENT_RUN_ID, tag_filter

    client = MlflowClient(uri)
    experiment = client.get_run(parent_run_id).info.experiment_id
    runs = search_runs(client, [experiment], tag_filter(MLFLOW_PARENT_RUN_ID, parent_run_id))
    out = []
    for run in runs:
        m = run.data.metrics
        if "time/train_s" in m:
            out.append({k[5:-2]: v for k, v in m.items() if k.startswith("time/")})
    return out


def plain_loop(spec, configs: list[dict], scratch: Path, threads: int) -> tuple[float, list[float]]:
    """Train each trial config with ``dakd.engine.trainer.train``; return the wall and each trial's time."""
    context = SweepContext(
        spec=spec, root=str(ROOT), tracking_uri="", experiment_id="", parent_run_id="", tags={}
    )
    torch.set_num_threads(threads)
    seconds = []
    tic = time.perf_counter()
    for i, config in enumerate(configs):
        cfg = resolve(spec, config)
        stages = {k: str(dep.run_dir / "model.pt") for k, dep in stages_of(cfg, context).items()}
        cfg = trial_config(
            cfg, context, stages, name=f"trial{i}", out_dir=scratch / "loop", threads=threads
        )
        start = time.perf_counter()
        train(cfg, resume=False)
        seconds.append(time.perf_counter() - start)
        print(f"  plain loop: trial {i + 1}/{len(configs)} in {seconds[-1]:.1f} s", flush=True)
    return time.perf_counter() - tic, seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("spec", nargs="?", default=str(ROOT / "sweeps" / "quickstart.yaml"))
    parser.add_argument("--out", default=str(ROOT / "runs" / "bench" / "sweep_overhead"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="K=V")
    args = parser.parse_args(argv)

    scratch = Path(args.out).resolve()
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    overrides = [
        f"tracking.uri=sqlite:///{scratch / 'mlflow.db'}",
        f"storage={scratch / 'ray'}",
        *args.overrides,
    ]
    spec = load_spec(args.spec, overrides)
    the_plan = plan(spec, ROOT)
    for stage in the_plan.stages:  # the trials' stages: trained once, measured by neither arm
        if not stage.done:
            print(f"training stage {stage.config.name} (not part of the measurement)", flush=True)
            run_stage(stage.config, log=print)

    threads = max(1, int(spec.resources.cpu))
    concurrency = spec.tune.max_concurrent or 1
    print(f"\n[1/2] {spec.name} through Ray Tune + MLflow (run_sweep)", flush=True)
    tic = time.perf_counter()
    result = run_sweep(spec, root=ROOT, log=lambda line: None)
    sweep_wall = time.perf_counter() - tic
    if result.errors:
        print(f"error: {result.errors} trial(s) failed; see {result.experiment_path}")
        return 1
    times = trial_times(result.tracking_uri, result.parent_run_id)
    from ray.tune import ExperimentAnalysis

    configs = [t.config for t in ExperimentAnalysis(result.experiment_path).trials]
    print(f"  {len(times)} trials in {sweep_wall:.1f} s", flush=True)

    print(f"\n[2/2] the same {len(configs)} trials in a plain Python loop", flush=True)
    loop_wall, loop_seconds = plain_loop(spec, configs, scratch, threads)

    n = len(times)
    compute = sum(t["train"] for t in times)
    loop_compute = sum(loop_seconds)
    eff = compute / (sweep_wall * concurrency)
    loop_eff = loop_compute / loop_wall
    per = {a: sum(t.get(a, 0.0) for t in times) / n for a in ACTIVITIES}
    inside = sum(t["total"] for t in times) / n
    rest = (sweep_wall * concurrency - compute) / n - sum(per.values())

    w = 34
    print(f"\n{spec.name}: {n} trials, {threads} thread(s) each, concurrency {concurrency}")
    print(f"{'':{w}s} {'Ray Tune + MLflow':>18s} {'plain loop':>12s}")
    print(f"{'wall time (s)':{w}s} {sweep_wall:18.1f} {loop_wall:12.1f}")
    print(f"{'trial compute, total (s)':{w}s} {compute:18.1f} {loop_compute:12.1f}")
    print(f"{'concurrency':{w}s} {concurrency:18d} {1:12d}")
    print(f"{'efficiency':{w}s} {eff:18.2f} {loop_eff:12.2f}   (target >= 0.85)")
    print(f"{'trials per hour':{w}s} {3600 * n / sweep_wall:18.1f} {3600 * n / loop_wall:12.1f}")
    print(f"{'compute per trial (s)':{w}s} {compute / n:18.1f} {loop_compute / n:12.1f}")
    print(
        f"\nper-trial overhead of the sweep (s; {sweep_wall * concurrency / n:.1f} slot-s a trial)"
    )
    names = {
        "setup": "start: stages, MLflow run, params",
        "report": "report + checkpoint to Tune",
        "logging": "MLflow metrics",
        "artifacts": "MLflow artifacts (panel, weights)",
    }
    for a in ACTIVITIES:
        print(f"  {names[a]:{w - 2}s} {per[a]:8.2f}")
    print(f"  {'Ray: start, scheduling, driver':{w - 2}s} {rest:8.2f}")
    print(f"  {'(time inside the trial function)':{w - 2}s} {inside:8.2f}")
    ratio = loop_wall / sweep_wall if sweep_wall else math.nan
    print(f"\nsweep speed-up over the loop: {ratio:.2f}x with {concurrency} trials at once")
    return 0


if __name__ == "__main__":
    sys.exit(main())
