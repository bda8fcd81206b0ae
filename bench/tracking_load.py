"""Tracking under load: many trials logging at once through ``dakd.tracking``, SQLite against an
MLflow server on PostgreSQL, and whether every value arrives exactly once.

Each of ``writers`` processes plays one trial: it opens its run with
:class:`dakd.tracking.runs.RunLogger` (as a trial does, in an experiment prepared once by the
driver with :func:`dakd.tracking.store.prepare`), logs its params, then for every step:

* ``metrics_per_step`` training metrics (``train/loss/<term>``, ``train/lr``: what a trial reports
  between evaluations) with one ``log_metrics`` call;
* every ``eval_every`` steps, an evaluation: 35 metrics in one ``log_metrics`` call (``miou``,
  ``pixel_acc``, ``step``, ``lr``, the step timings, 19 ``iou/<class>``, 8 ``loss/<term>``: the
  names a trial reports, see ``dakd.evaluation.run_metrics.reported_metrics``) and one artifact of
  ``artifact_bytes`` random bytes via ``log_artifact`` (stands for the PNG panel, the confusion
  matrix and the checkpoint; default 1 MiB, between a panel and a small checkpoint). Through a
  server with ``--serve-artifacts`` the file is uploaded to the server;

and at the end its config (``log_text``, ``config.yaml``) and ``finish``. Every value is a known
function of (writer, key, step), so the read-back can tell a lost value from a wrong one.

Assumed about the load: the writers log back to back (no training between steps unless
``pause_ms``), which is the worst case for contention, not a trial's real pace; all writers start
logging at the same moment (a barrier after each has opened its run); each store call is timed
on its own and a step's logging overhead is the sum of that step's calls (writing the artifact
file to a temp folder is the trial's work, not the store's, and is not counted).

Writers are processes forked from one launcher (this file run with ``--launch``) that has
imported MLflow but opened nothing: importing MLflow costs ~3 s of CPU per process, which 16
spawned writers would each pay (most of a minute on 2 cores); the launcher is a fresh
subprocess holding no threads, clients or connections, so forking it is safe, which forking the
caller (a test process with clients, engines, Ray) would not be. Each writer builds its own
client after the fork. The caller then reads every run back and counts what arrived.

    uv run python bench/tracking_load.py                  # 16 writers, 60 steps, both stores
    uv run python bench/tracking_load.py --quick          # 8 writers, 20 steps
    uv run python bench/tracking_load.py --store sqlite   # one store only

Exit status 1 if any value was lost, duplicated or wrong, a run is missing or doubled, an
artifact is missing or any store call raised.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from dakd.data.labels import CLASS_NAMES  # noqa: E402  (numpy only: light in every writer)

#: The loss terms a DAKD (b) trial reports (``dakd.evaluation.run_metrics.loss_terms()`` of its
#: stage), written out: importing that module would import torch in every writer process.
LOSS_TERMS = (
    "total",
    "seg",
    "seg_aux",
    "adv_output",
    "adv_feature",
    "disc",
    "distill",
    "kl_target",
)
#: What one evaluation logs: 8 + 19 + 8 = 35 metrics.
EVAL_METRICS = (
    ("miou", "pixel_acc", "step", "lr", "step_ms", "samples_per_s", "raw/miou", "raw/pixel_acc")
    + tuple(f"iou/{name.replace(' ', '_')}" for name in CLASS_NAMES)
    + tuple(f"loss/{term}" for term in LOSS_TERMS)
)
#: What a step logs between evaluations (the first ``metrics_per_step`` of these, then extras).
STEP_METRICS = ("train/loss/total", "train/loss/seg", "train/loss/distill", "train/lr")
#: Writer tag on each run, so the read-back finds every run of a writer (a doubled one too).
WRITER_TAG = "bench.writer"
#: Threads reading the runs back.
READ_THREADS = 4
#: Seconds a writer waits for the others at the start barrier.
BARRIER_SECONDS = 300.0


# -- what a writer logs --------------------------------------------------------------------------


def step_keys(metrics_per_step: int) -> list[str]:
    """The metric names logged at every step."""
    extra = [f"train/extra_{i}" for i in range(max(0, metrics_per_step - len(STEP_METRICS)))]
    return [*STEP_METRICS, *extra][:metrics_per_step]


def value(writer: int, index: int, step: int) -> float:
    """The value writer ``writer`` logs for its ``index``-th key at ``step``: exact in a double
    (an integer plus a multiple of 1/64), so the read-back compares it with ``==``."""
    return float(writer * 100_000 + step) + index / 64


def expected(
    writer: int, steps: int, metrics_per_step: int, eval_every: int
) -> dict[tuple[str, int], float]:
    """Every (key, step) writer ``writer`` logs, with its value."""
    out: dict[tuple[str, int], float] = {}
    per_step = step_keys(metrics_per_step)
    for step in range(1, steps + 1):
        for index, key in enumerate(per_step):
            out[key, step] = value(writer, index, step)
        if step % eval_every == 0:
            for index, key in enumerate(EVAL_METRICS, start=len(per_step)):
                out[key, step] = value(writer, index, step)
    return out


def expected_artifacts(steps: int, eval_every: int) -> list[str]:
    """The artifact paths each run must hold."""
    return [f"eval/step_{s:06d}.bin" for s in range(eval_every, steps + 1, eval_every)] + [
        "config.yaml"
    ]


# -- one writer (a forked child of the launcher) -------------------------------------------------


def _writer(index: int, plan: dict[str, Any], barrier, results) -> None:
    """Play trial ``index``: open a run, log as the module's docstring says, time every store
    call and put a report on ``results``. Every exception of a store call is recorded with the
    call and step and the writer goes on (a trial that cannot log still trains); only a run that
    cannot be opened ends the writer early. The report always goes out, even on a crash."""
    report: dict[str, Any] = {
        "writer": index,
        "run_id": None,
        "calls": [],  # (call, ms)
        "step_ms": [],  # (step, ms, is_eval)
        "errors": [],
        "start": None,
        "end": None,
        "lock_retries": 0,
    }
    try:
        _write(index, plan, barrier, report)
    except BaseException as exc:  # noqa: BLE001 -- reported to the parent, never hidden
        report["errors"].append(
            {"call": "writer", "step": None, "error": _describe(exc), "trace": _trace()}
        )
    finally:
        from dakd.tracking import store

        report["lock_retries"] = store.retry_count
        results.put(report)


def _write(index: int, plan: dict[str, Any], barrier, report: dict[str, Any]) -> None:
    import threading

    from dakd.tracking.runs import RunLogger
    from dakd.tracking.store import client_for

    uri, steps, eval_every = plan["uri"], plan["steps"], plan["eval_every"]
    per_step = step_keys(plan["metrics_per_step"])
    folder = Path(plan["work"]) / f"writer-{index}"
    folder.mkdir(parents=True, exist_ok=True)
    calls, errors = report["calls"], report["errors"]

    def timed(call: str, step: int | None, fn, *args, **kwargs) -> tuple[Any, float]:
        start = time.perf_counter()
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 -- counted and reported, the writer goes on
            result = None
            errors.append({"call": call, "step": step, "error": _describe(exc), "trace": _trace()})
        ms = 1000 * (time.perf_counter() - start)
        calls.append((call, ms))
        return result, ms

    # the client first (imports of the store's code, the SQLite schema check: a trial pays it
    # once at its start, not per call), then the runs are created together, as a sweep starts
    timed("open_client", None, client_for, uri)
    try:
        barrier.wait(timeout=BARRIER_SECONDS)
    except threading.BrokenBarrierError:
        errors.append({"call": "barrier", "step": None, "error": "start barrier broken"})
    report["start"] = time.time()
    logger, _ = timed(
        "create_run",
        None,
        RunLogger,
        uri,
        plan["experiment_id"],
        run_name=f"writer-{index}",
        tags={WRITER_TAG: index},
    )
    if logger is None:
        report["end"] = time.time()
        return
    report["run_id"] = logger.run_id
    params = {"writer": index, "steps": steps, "eval_every": eval_every, "optim": {"lr": 0.01}}
    timed("log_params", None, logger.log_params, params)
    pause = plan["pause_ms"] / 1000
    for step in range(1, steps + 1):
        if pause:
            time.sleep(pause)
        is_eval = step % eval_every == 0
        artifact = None
        if is_eval:  # the trial's own work: writing the file it is about to log
            artifact = folder / f"step_{step:06d}.bin"
            artifact.write_bytes(os.urandom(plan["artifact_bytes"]))
        spent = 0.0
        metrics = {key: value(index, i, step) for i, key in enumerate(per_step)}
        spent += timed("log_metrics", step, logger.log_metrics, metrics, step)[1]
        if is_eval:
            first = len(per_step)
            evaluation = {key: value(index, first + i, step) for i, key in enumerate(EVAL_METRICS)}
            spent += timed("log_metrics(eval)", step, logger.log_metrics, evaluation, step)[1]
            spent += timed("log_artifact", step, logger.log_artifact, artifact, "eval")[1]
            artifact.unlink()
        report["step_ms"].append((step, spent, is_eval))
    config = "".join(f"{key}: {val}\n" for key, val in params.items())
    timed("log_text", None, logger.log_text, config, "config.yaml")
    timed("finish", None, logger.finish, "FAILED" if errors else "FINISHED")
    report["end"] = time.time()


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).strip()[:400]}"


def _trace() -> str:
    """The exception being handled, with the ones it wraps (MLflow wraps a request's failure in
    an MlflowException whose message keeps only the inner exception's ``str``)."""
    return traceback.format_exc()[-4000:]


def _launch(plan_path: str) -> int:
    """The launcher (``--launch PLAN``): import MLflow once, fork the writers, collect their
    reports into ``<plan>.results.json``. It opens no client itself (the children each open
    their own), so there is nothing in it a fork could share by mistake."""
    import multiprocessing
    import queue

    import dakd.tracking.runs  # noqa: F401 -- imported once here, inherited by every fork

    plan = json.loads(Path(plan_path).read_text())
    # the store's and artifact repository's code, which MLflow imports when a client is built:
    # imported, nothing opened (a client made here would share its connections with the forks)
    if plan["uri"].startswith(("http://", "https://")):
        import mlflow.store.artifact.mlflow_artifacts_repo  # noqa: F401
        import mlflow.store.tracking.rest_store  # noqa: F401
    else:
        import mlflow.store.artifact.local_artifact_repo  # noqa: F401
        import mlflow.store.tracking.sqlalchemy_store  # noqa: F401
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(plan["writers"]), ctx.Queue()
    processes = [
        ctx.Process(target=_writer, args=(i, plan, barrier, results), daemon=True)
        for i in range(plan["writers"])
    ]
    for process in processes:
        process.start()
    reports: dict[int, dict[str, Any]] = {}
    deadline = time.monotonic() + plan["timeout_s"]
    while len(reports) < len(processes) and time.monotonic() < deadline:
        try:
            report = results.get(timeout=1.0)
        except queue.Empty:
            if not any(p.is_alive() for p in processes) and results.empty():
                break  # the rest died without a report
            continue
        reports[report["writer"]] = report
    for process in processes:
        process.join(timeout=10)
    for i, process in enumerate(processes):
        if i not in reports:  # killed or timed out: say so rather than drop the writer
            if process.is_alive():
                process.kill()
                reason = f"no report within {plan['timeout_s']:.0f} s, killed"
            else:
                reason = f"exited with code {process.exitcode} without a report"
            reports[i] = {
                "writer": i,
                "run_id": None,
                "calls": [],
                "step_ms": [],
                "errors": [{"call": "writer", "step": None, "error": reason}],
                "start": None,
                "end": None,
                "lock_retries": 0,
            }
    out = [reports[i] for i in range(len(processes))]
    Path(plan_path + ".results.json").write_text(json.dumps(out))
    return 0


# -- the load and its read-back ------------------------------------------------------------------


def run_load(
    uri: str,
    writers: int = 16,
    steps: int = 60,
    metrics_per_step: int = 4,
    eval_every: int = 10,
    artifact_bytes: int = 1 << 20,
    experiment: str | None = None,
    pause_ms: float = 0.0,
    timeout_s: float = 600.0,
) -> dict[str, Any]:
    """Run ``writers`` concurrent writers against the store at ``uri`` and read everything back.

    ``experiment``: the experiment to log to (default: a new one, ``tracking-load-<random>``, so
    that repeated loads on one store do not see each other's runs). Returns counts (runs,
    metrics and artifacts expected and found, missing, duplicated (a (key, step) twice) and
    wrong values, extra runs, unfinished runs, errors raised in writers with their messages, lock
    retries), latencies of the store calls (p50, p99 in ms, overall and by call), the logging
    overhead per step (mean and p99 in ms, all steps and evaluation steps), the wall time of the
    logging (first writer's start to last writer's end) and of the whole call, and ``ok``.
    """
    import numpy as np

    from dakd.tracking.store import prepare

    if writers < 1 or steps < 1 or eval_every < 1 or metrics_per_step < 0 or artifact_bytes < 0:
        raise ValueError("writers, steps, eval_every must be >= 1; the sizes >= 0")
    began = time.perf_counter()
    experiment = experiment or f"tracking-load-{uuid.uuid4().hex[:8]}"
    experiment_id = prepare(uri, experiment)  # the driver's part, before any trial starts
    work = Path(tempfile.mkdtemp(prefix="dakd-tracking-load-"))
    try:
        plan = {
            "uri": uri,
            "experiment_id": experiment_id,
            "writers": writers,
            "steps": steps,
            "metrics_per_step": metrics_per_step,
            "eval_every": eval_every,
            "artifact_bytes": artifact_bytes,
            "pause_ms": pause_ms,
            "timeout_s": timeout_s,
            "work": str(work),
        }
        plan_path = work / "plan.json"
        plan_path.write_text(json.dumps(plan))
        log = work / "launcher.log"
        with open(log, "wb") as out:
            done = subprocess.run(
                [sys.executable, str(Path(__file__).resolve()), "--launch", str(plan_path)],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                timeout=timeout_s + 120,
            )
        results = Path(str(plan_path) + ".results.json")
        if done.returncode != 0 or not results.is_file():
            tail = log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"the writers' launcher failed ({done.returncode}):\n{tail}")
        reports = json.loads(results.read_text())
    finally:
        shutil.rmtree(work, ignore_errors=True)

    read_began = time.perf_counter()
    found = read_back(
        uri, experiment_id, reports, steps, metrics_per_step, eval_every, artifact_bytes
    )
    read_s = time.perf_counter() - read_began

    # opening the client is a trial's start-up, not a store call: in latency_by_call only
    latencies = [ms for r in reports for call, ms in r["calls"] if call != "open_client"]
    by_call: dict[str, list[float]] = {}
    for r in reports:
        for call, ms in r["calls"]:
            by_call.setdefault(call, []).append(ms)
    step_ms = [ms for r in reports for _, ms, _ in r["step_ms"]]
    eval_ms = [ms for r in reports for _, ms, is_eval in r["step_ms"] if is_eval]
    starts = [r["start"] for r in reports if r["start"] is not None]
    ends = [r["end"] for r in reports if r["end"] is not None]
    errors = [dict(e, writer=r["writer"]) for r in reports for e in r["errors"]]

    def pct(values: list[float], q: float) -> float:
        return float(np.percentile(values, q)) if values else float("nan")

    def mean(values: list[float]) -> float:
        return float(np.mean(values)) if values else float("nan")

    result = {
        "uri": uri,
        "experiment": experiment,
        "experiment_id": experiment_id,
        "writers": writers,
        "steps": steps,
        "eval_every": eval_every,
        "metrics_per_step": metrics_per_step,
        "artifact_bytes": artifact_bytes,
        **found,
        "errors": len(errors),
        "error_messages": errors,
        "lock_retries": sum(r["lock_retries"] for r in reports),
        "calls": len(latencies),
        "latency_p50_ms": pct(latencies, 50),
        "latency_p99_ms": pct(latencies, 99),
        "latency_by_call": {
            call: {"n": len(v), "p50_ms": pct(v, 50), "p99_ms": pct(v, 99)}
            for call, v in sorted(by_call.items())
        },
        "step_overhead_mean_ms": mean(step_ms),
        "step_overhead_p99_ms": pct(step_ms, 99),
        "eval_step_overhead_mean_ms": mean(eval_ms),
        "wall_s": (max(ends) - min(starts)) if starts and ends else float("nan"),
        "read_back_s": read_s,
        "total_s": time.perf_counter() - began,
    }
    result["ok"] = not (
        result["missing"]
        or result["duplicates"]
        or result["wrong_values"]
        or result["unexpected"]
        or result["extra_runs"]
        or result["runs_found"] != writers
        or result["unfinished"]
        or result["artifacts_found"] != result["artifacts_expected"]
        or result["errors"]
    )
    return result


def read_back(
    uri: str,
    experiment_id: str,
    reports: list[dict[str, Any]],
    steps: int,
    metrics_per_step: int,
    eval_every: int,
    artifact_bytes: int,
) -> dict[str, Any]:
    """Read every run of the experiment back and count against what the writers logged.

    Runs are matched to writers by their writer tag, so a run created twice (a retried request
    that had in fact succeeded) shows up as an extra run. For each writer's run, every key's
    whole history is read (``get_metric_history``); a (key, step) present more than once counts
    as duplicates, one absent as missing, one with another value as wrong, one never logged as
    unexpected. Artifacts count when present with the size written.
    """
    from mlflow import MlflowClient

    from dakd.tracking.store import retry_locked, search_runs

    client = MlflowClient(tracking_uri=uri)
    runs = search_runs(client, [experiment_id])
    by_writer: dict[int, list] = {}
    for run in runs:
        tag = run.data.tags.get(WRITER_TAG)
        if tag is not None and tag.isdigit():
            by_writer.setdefault(int(tag), []).append(run)
    names = expected_artifacts(steps, eval_every)
    counts = {
        "runs_expected": len(reports),
        "runs_found": 0,
        "extra_runs": len(runs) - len(by_writer),  # untagged runs and a writer's second ones
        "unfinished": 0,
        "metrics_expected": 0,
        "metrics_found": 0,
        "missing": 0,
        "duplicates": 0,
        "wrong_values": 0,
        "unexpected": 0,
        "artifacts_expected": len(names) * len(reports),
        "artifacts_found": 0,
    }
    matched: list[tuple[dict[str, Any], dict[tuple[str, int], float], Any]] = []
    for report in reports:
        want = expected(report["writer"], steps, metrics_per_step, eval_every)
        candidates = by_writer.get(report["writer"], [])
        run = next((r for r in candidates if r.info.run_id == report["run_id"]), None)
        matched.append((report, want, run or (candidates[0] if candidates else None)))

    # one request per (run, key): a few hundred round trips to a server, overlapped in threads
    # (MlflowClient's calls are independent requests or sessions)
    fetches = [
        (run.info.run_id, key)
        for _, want, run in matched
        if run is not None
        for key in sorted({key for key, _ in want} | set(run.data.metrics))
    ]
    with ThreadPoolExecutor(READ_THREADS) as pool:
        histories = dict(
            zip(
                fetches,
                pool.map(lambda f: retry_locked(client.get_metric_history, *f), fetches),
                strict=True,
            )
        )
        listings = dict(
            zip(
                [run.info.run_id for _, _, run in matched if run is not None],
                pool.map(
                    lambda run: [
                        info
                        for folder in (None, "eval")
                        for info in retry_locked(client.list_artifacts, run.info.run_id, folder)
                    ],
                    [run for _, _, run in matched if run is not None],
                ),
                strict=True,
            )
        )

    for _, want, run in matched:
        counts["metrics_expected"] += len(want)
        if run is None:
            counts["missing"] += len(want)
            continue
        counts["runs_found"] += 1
        counts["unfinished"] += run.info.status != "FINISHED"
        seen: dict[tuple[str, int], int] = {}
        for (run_id, key), history in histories.items():
            if run_id != run.info.run_id:
                continue
            for metric in history:
                at = (key, int(metric.step))
                seen[at] = seen.get(at, 0) + 1
                if at not in want:
                    counts["unexpected"] += 1
                elif seen[at] == 1 and metric.value != want[at]:
                    counts["wrong_values"] += 1
        counts["metrics_found"] += sum(1 for at in want if at in seen)
        counts["missing"] += sum(1 for at in want if at not in seen)
        counts["duplicates"] += sum(n - 1 for n in seen.values() if n > 1)
        listed = {i.path: i.file_size for i in listings[run.info.run_id] if not i.is_dir}
        for name in names:
            size = listed.get(name)
            if size is not None and (name == "config.yaml" or size == artifact_bytes):
                counts["artifacts_found"] += 1
    return counts


# -- the bench: SQLite against the MLflow server on PostgreSQL, side by side ----------------------


COLUMNS = (
    ("store", 28),
    ("writers", 7),
    ("steps", 5),
    ("metrics logged/expected", 23),
    ("lost", 4),
    ("dup", 3),
    ("wrong", 5),
    ("errors", 6),
    ("step mean/p99 ms", 16),
    ("call p50/p99 ms", 15),
    ("wall s", 6),
)


def table(rows: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """The result lines: a header and one row per store."""
    lines = [
        "  ".join(
            f"{name:>{width}}" if i else f"{name:<{width}}"
            for i, (name, width) in enumerate(COLUMNS)
        )
    ]
    for store, r in rows:
        cells = [
            store,
            str(r["writers"]),
            str(r["steps"]),
            f"{r['metrics_found']}/{r['metrics_expected']}",
            str(r["missing"]),
            str(r["duplicates"]),
            str(r["wrong_values"]),
            str(r["errors"]),
            f"{r['step_overhead_mean_ms']:.1f}/{r['step_overhead_p99_ms']:.0f}",
            f"{r['latency_p50_ms']:.1f}/{r['latency_p99_ms']:.0f}",
            f"{r['wall_s']:.1f}",
        ]
        lines.append(
            "  ".join(
                f"{cell:>{width}}" if i else f"{cell:<{width}}"
                for i, (cell, (_, width)) in enumerate(zip(cells, COLUMNS, strict=True))
            )
        )
    return lines


def notes(store: str, r: dict[str, Any]) -> list[str]:
    """What else a row should say: runs or artifacts short, doubled runs, lock retries, and each
    distinct error raised in the writers (with how often)."""
    out = []
    if r["runs_found"] != r["writers"] or r["extra_runs"] or r["unfinished"]:
        out.append(
            f"{store}: runs {r['runs_found']}/{r['writers']}, extra {r['extra_runs']}, "
            f"not FINISHED {r['unfinished']}"
        )
    if r["artifacts_found"] != r["artifacts_expected"] or r["unexpected"]:
        out.append(
            f"{store}: artifacts {r['artifacts_found']}/{r['artifacts_expected']}, "
            f"unexpected metric values {r['unexpected']}"
        )
    if r["lock_retries"]:
        out.append(f"{store}: {r['lock_retries']} store calls retried on a locked database")
    distinct: dict[str, int] = {}
    for error in r["error_messages"]:
        line = f"{error['call']}: {error['error']}".splitlines()[0][:200]
        distinct[line] = distinct.get(line, 0) + 1
    out += [f"{store}: {n}x {line}" for line, n in distinct.items()]
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--writers", type=int, default=16, help="concurrent writer processes")
    parser.add_argument("--steps", type=int, default=60, help="steps each writer logs")
    parser.add_argument("--eval-every", type=int, default=10, help="steps between evaluations")
    parser.add_argument("--metrics-per-step", type=int, default=4, help="metrics every step")
    parser.add_argument(
        "--artifact-bytes", type=int, default=1 << 20, help="size of each evaluation's artifact"
    )
    parser.add_argument(
        "--pause-ms", type=float, default=0.0, help="sleep between steps (0: back to back)"
    )
    parser.add_argument(
        "--store",
        choices=("both", "sqlite", "server"),
        default="both",
        help="which stores to load (default both, side by side)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="a small run: 8 writers, 20 steps, 256 KiB artifacts"
    )
    parser.add_argument("--json", type=Path, help="also write the full results to this file")
    args = parser.parse_args(argv)
    if args.quick:
        args.writers, args.steps, args.artifact_bytes = 8, 20, 256 << 10
    if min(args.writers, args.steps, args.eval_every) < 1 or args.metrics_per_step < 0:
        parser.error("--writers, --steps and --eval-every must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    from dakd.cluster.local import LocalCluster, PostgresMissing, postgres_bin
    from dakd.cluster.processes import free_port

    args = parse_args(argv)
    load = {
        "writers": args.writers,
        "steps": args.steps,
        "metrics_per_step": args.metrics_per_step,
        "eval_every": args.eval_every,
        "artifact_bytes": args.artifact_bytes,
        "pause_ms": args.pause_ms,
    }
    tmp = Path(tempfile.mkdtemp(prefix="dakd-tracking-load-"))
    # PostgreSQL's own user (when this runs as root) must reach its data folder inside `tmp`
    tmp.chmod(0o755)
    rows: list[tuple[str, dict[str, Any]]] = []
    cluster = None
    try:
        if args.store in ("both", "server"):
            try:
                postgres_bin()
            except PostgresMissing as err:
                print(f"skipping the MLflow server on PostgreSQL: {err}")
            else:
                ports: list[int] = []
                for _ in range(3):
                    ports.append(free_port(avoid=ports))
                cluster = LocalCluster(
                    folder=tmp / "cluster",
                    nodes=1,  # the head node only: no trial runs on Ray here
                    postgres=True,
                    mlflow_port=ports[0],
                    postgres_port=ports[1],
                    ray_port=ports[2],
                )
                started = time.perf_counter()
                cluster.up(log=lambda line: None)
                print(f"local cluster up in {time.perf_counter() - started:.1f} s")
        if args.store in ("both", "sqlite"):
            uri = f"sqlite:///{tmp / 'sqlite' / 'mlflow.db'}"
            rows.append(("SQLite file (one node)", run_load(uri, **load)))
            print(f"SQLite done in {rows[-1][1]['total_s']:.1f} s")
        if cluster is not None:
            rows.append(("MLflow server, PostgreSQL", run_load(cluster.tracking_uri, **load)))
            print(f"MLflow server done in {rows[-1][1]['total_s']:.1f} s")
    finally:
        if cluster is not None:
            cluster.down(log=lambda line: None)
            if cluster.pg_data and not Path(cluster.pg_data).is_relative_to(tmp):
                shutil.rmtree(cluster.pg_data, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)

    print()
    print(
        f"{args.writers} writers x {args.steps} steps: {args.metrics_per_step} metrics a step, "
        f"35 metrics and a {args.artifact_bytes / 1024:.0f} KiB artifact every {args.eval_every} "
        f"steps, pause {args.pause_ms:g} ms"
    )
    for line in table(rows):
        print(line)
    if len(rows) == 2:
        sqlite, server = rows[0][1], rows[1][1]
        print(
            "server / SQLite, logging overhead per step: "
            f"{server['step_overhead_mean_ms'] / sqlite['step_overhead_mean_ms']:.2f}x mean, "
            f"{server['step_overhead_p99_ms'] / sqlite['step_overhead_p99_ms']:.2f}x p99"
        )
    for store, r in rows:
        for line in notes(store, r):
            print(line)
    if args.json:
        args.json.write_text(json.dumps(dict(rows), indent=1))
    return 0 if all(r["ok"] for _, r in rows) else 1


if __name__ == "__main__":
    if sys.argv[1:2] == ["--launch"]:
        sys.exit(_launch(sys.argv[2]))
    sys.exit(main())
