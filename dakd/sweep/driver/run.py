"""A sweep from its spec to its summary: spec -> plan -> stages -> Ray Tune -> summary, in MLflow.

``python sweeps/run.py SPEC.yaml`` calls :func:`run_sweep`. The order (docs/architecture.md): the spec
is validated before Ray starts; the stages the trials build on (teacher-DA, student-DA) are
trained once as Ray tasks, keyed by their config, and reused by every later sweep; then the
Tuner runs the trials; at the end the best trials are printed with where to look in MLflow.

:class:`Sweep` names those phases. Ray and the sweep's MLflow parent run are held by one context
manager (:meth:`Sweep.opened`): however a sweep ends (done, a failure, Ctrl-C), a Ray it started
is shut down and its parent run is not left RUNNING. A sweep stopped by a signal (Ctrl-C, or the
SIGTERM a scheduler sends at a job's time limit; :mod:`dakd.sweep.driver.interrupt`) leaves no run of
its own RUNNING: Tune saves its trials' state, and every run still open ends KILLED with an
``error`` tag saying so, ready for ``--resume``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dakd.sweep.driver.cluster import NodeWatch, check_cluster, start_ray
from dakd.sweep.driver.interrupt import Signals, Stopped, Terminated
from dakd.sweep.driver.parent import close_dead_runs, close_open_runs, log_analysis, open_parent
from dakd.sweep.driver.plan import Plan, plan
from dakd.sweep.driver.stages import build_caches, train_stages
from dakd.sweep.driver.state import resumed_attempt, write_state
from dakd.sweep.driver.summary import (
    SweepResult,
    format_summary,
    headline_metrics,
    summarize,
    summary_markdown,
    table_view,
)
from dakd.sweep.driver.tuner import one_line_trial_errors, tuner_for
from dakd.sweep.spec.context import SweepContext
from dakd.sweep.spec.sweep_spec import SpecError, SweepSpec
from dakd.tracking.locations import git_commit, ui_command
from dakd.tracking.tags import SWEEP, commit_tags

if TYPE_CHECKING:
    from dakd.tracking.runs import RunLogger


class Sweep:
    """One run (or, with ``resume``, the continuation) of a sweep spec, phase by phase: open,
    stages, caches, trials, summary, close. :meth:`run` runs them inside :meth:`opened`.

    ``autoscale``: the cluster adds nodes on demand, so trial resources it lacks now are not
    an error (:func:`check_cluster_resources`)."""

    plan: Plan  # what the sweep trains and reads, printed first
    context: SweepContext  # what every stage and trial is given: where to log, what to read
    experiment_id: str  # the MLflow experiment of the spec
    grid: Any  # Tune's results (a ResultGrid)

    def __init__(
        self,
        spec: SweepSpec,
        *,
        resume: bool | str = False,
        address: str | None = None,
        root: Path | None = None,
        log: Callable[[str], None] = print,
        autoscale: bool = False,
    ):
        self.spec = spec
        self.resume = resume
        self.address = address
        self.root = (root or Path.cwd()).resolve()
        self.log = log
        self.autoscale = autoscale
        self.previous: str | None = None  # the Tune experiment a resumed sweep continues
        self.state: dict[str, Any] = {}  # its state file (empty for a new sweep)
        self.name = ""  # of the Tune experiment: <spec name>-<start time>
        self.tags: dict[str, str] = {}  # on the parent run and every run under it
        self.started_ray = False  # a Ray this sweep started (one it joined stays up)
        self.parent: RunLogger | None = None
        self.failed_stages: list[str] = []
        self.result: SweepResult | None = None
        self.analysis: threading.Thread | None = None  # the result tables, logged to the parent
        self.signals = Signals()  # SIGINT and SIGTERM while the sweep runs
        self.cost = None  # what the plan costs (dakd.sweep.driver.cost.Cost), made when it opens

    @property
    def uri(self) -> str:
        return self.plan.tracking_uri

    @property
    def experiment_path(self) -> str:
        return f"{self.plan.storage.rstrip('/')}/{self.name}"

    def run(self) -> SweepResult:
        """The phases in order, with SIGINT and SIGTERM held by :attr:`signals` (the handlers
        found are back when it returns); :meth:`opened` closes Ray and the runs however they end.
        A signal ends it with :class:`Terminated`, which counts the runs closed KILLED."""
        with self.signals.installed(), self.opened():
            with self.watching():
                self.stages()
                self.caches()
                self.trials()
            self.summary()
        return self.result

    def watching(self) -> contextlib.AbstractContextManager:
        """While stages, caches and trials run: a :class:`NodeWatch` that stops the sweep (as
        :meth:`Signals.fail`) when no node is left that could run one of its processes, after
        ``resources.node_timeout_s``. An autoscaling cluster adds such nodes itself: no watch."""
        if self.autoscale:
            return contextlib.nullcontext()
        return NodeWatch(self.spec, self.signals.fail, self.log)

    @contextlib.contextmanager
    def opened(self) -> Iterator[None]:
        """Ray and the parent run, from :meth:`open` to :meth:`close`, for the phases between.

        A sweep that gets through its summary ends its parent run FINISHED (FAILED when a trial
        failed). A failure anywhere, opening and closing included, ends it KILLED; the error goes
        on to the caller. A signal (Ctrl-C, SIGTERM) ends every run still open KILLED
        (:meth:`close_stopped`) and goes on as :class:`Terminated`. Either way a Ray the sweep
        started is shut down."""
        try:
            self.open()
            yield
            self.close("FAILED" if self.result.errors else "FINISHED")
        except KeyboardInterrupt as err:
            # Ray turns an exception its wait raised on a signal into a bare KeyboardInterrupt:
            # the signal is the one ``signals`` received (none: Ctrl-C off the main thread)
            if self.signals.failure:  # the sweep stopped itself: a failure, with its reason
                raise Stopped(
                    self.signals.failure, self.close_stopped(self.signals.failure)
                ) from None
            stop = (
                err
                if isinstance(err, Terminated)
                else Terminated(self.signals.received or signal.SIGINT)
            )
            stop.closed = self.close_stopped(stop.reason)
            if stop is err:
                raise
            raise stop from err
        except BaseException:
            self.close("KILLED")
            raise

    def open(self) -> None:
        """The plan, printed, and the attempt a resumed sweep continues (a bad spec stops here,
        before anything starts); then Ray and the parent run, and the attempts before taken over."""
        spec = self.spec
        self.plan = plan(spec, self.root)
        self.log(self.plan.text())
        self._check_tracking()
        self._cost()
        if self.resume:
            sweep_id = self.resume if isinstance(self.resume, str) else None
            self.previous, self.state = resumed_attempt(spec, self.plan.storage, self.uri, sweep_id)
        stamp = f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        self.name = Path(self.previous).name if self.previous else stamp
        self.tags = {SWEEP: spec.name, **commit_tags(git_commit(self.root))}
        self._start()
        self.context = SweepContext(
            spec=spec,
            root=str(self.root),
            tracking_uri=self.uri,
            experiment_id=self.experiment_id,
            parent_run_id=self.parent.run_id,
            tags=self.tags,
            storage=self.experiment_path,
        )
        self._take_over()

    def _cost(self) -> None:
        """The plan's cost (GPU-hours do not depend on the cluster's shape, only wall time
        does); a spec over its ``tune.budget_gpu_hours`` stops here, before anything starts."""
        from dakd.sweep.driver.cost import Shape, check_budget, plan_cost

        self.cost = plan_cost(self.spec, self.plan.stages, Shape([], "the sweep's cluster"))
        check_budget(self.spec, self.cost)

    def used_gpu_hours(self) -> tuple[float, float]:
        """(run-hours, GPU-hours) the sweep's runs took: each run under the parent that trained
        (not one reporting a reused stage), its wall time from start to end, times its GPUs."""
        from dakd.tracking.store import find_runs
        from dakd.tracking.tags import REUSED

        r = self.spec.resources
        runs = find_runs(
            self.uri,
            self.spec.experiment_name,
            f"tags.mlflow.parentRunId = '{self.parent.run_id}'",
        )
        seconds = sum(
            (run.info.end_time - run.info.start_time) / 1000
            for run in runs
            if run.info.end_time and run.data.tags.get(REUSED) != "true"
        )
        return seconds / 3600, seconds / 3600 * r.gpu * r.workers

    def _cost_line(self) -> str:
        """The summary's line on cost, logged on the parent run too."""
        run_h, gpu_h = self.used_gpu_hours()
        metrics = {"run_hours": run_h, "gpu_hours": gpu_h}
        line = f"cost:     {run_h:.2f} run-hours, {gpu_h:.2f} GPU-hours"
        planned = self.cost.gpu_hours if self.cost is not None else None
        if planned is not None:
            metrics["planned_gpu_hours"] = planned
            line += f" (planned {planned:.2f} at {self.cost.step_ms:g} ms a step)"
        elif self.spec.resources.gpu and self.cost is not None:
            line += f" (not planned: {self.cost.why})"
        self.parent.log_metrics(metrics, step=0)
        return line

    def _check_tracking(self) -> None:
        """Every store call of the sweep, here and in its Ray workers, rides out a server or
        database restart for ``tracking.retry_seconds``; a store that is down now stops the sweep
        in one line before Ray starts. (MLflow is imported later, in a thread: not here.)"""
        from dakd.tracking.server import RETRY_ENV, TrackingError, check_tracking

        os.environ[RETRY_ENV] = repr(float(self.spec.tracking.retry_seconds))
        try:
            check_tracking(self.uri)
        except TrackingError as err:
            raise SpecError(f"{self.spec.path}: {err}") from None

    def _start(self) -> None:
        """Start (or join) Ray, check that it can host a trial, and open the parent run.

        Starting Ray (seconds, mostly spent in the processes it spawns: GCS, raylet, agents) and
        opening the sweep's MLflow experiment and parent run (seconds: importing MLflow, the
        store's schema) do not depend on each other: Ray starts here, MLflow opens in a thread."""
        parent_run_id = self.state.get("parent_run_id")
        with ThreadPoolExecutor(1, thread_name_prefix="dakd-mlflow") as pool:
            opening = pool.submit(
                open_parent, self.spec, self.plan, self.uri, self.name, self.tags, parent_run_id
            )
            try:
                self.started_ray = start_ray(self.address)
                self.signals.reclaim()  # ray.init sets a SIGTERM handler that exits at once
                check_cluster(self.spec, self.address, self.autoscale, self.log)
                self.experiment_id, self.parent = opening.result()
            except KeyboardInterrupt:
                # a signal: the parent run, once open, is closed with the others (close_stopped)
                with contextlib.suppress(Exception):
                    self.experiment_id, self.parent = opening.result()
                raise
            except BaseException as err:
                self._drop_parent(opening, err)
                raise

    def _drop_parent(self, opening: Future, err: BaseException) -> None:
        """The parent run, when it opened though Ray or its check failed, must not stay RUNNING:
        it ends KILLED, and is deleted when bad input stopped a new sweep before it began."""
        with contextlib.suppress(Exception):  # the error the user sees is ``err``
            _, opened = opening.result()
            opened.finish("KILLED")
            if isinstance(err, SpecError) and not self.state.get("parent_run_id"):
                # bad input: no sweep ran, so no record of one is left behind
                opened.client.delete_run(opened.run_id)

    def _take_over(self) -> None:
        """What comes before any work: the runs of dead attempts closed, the state ``--resume``
        needs written, the storage checked against the cluster."""
        spec, uri, parent_run_id = self.spec, self.uri, self.parent.run_id
        # runs a killed attempt left RUNNING: closed as KILLED (the runs this attempt continues,
        # trials and stages, are reopened by their own ids and end FINISHED or FAILED)
        closed = close_dead_runs(uri, spec, parent_run_id, self.log)
        if closed:
            self.log(f"closed {closed} run(s) of an interrupted attempt as KILLED")
        if not self.state:
            write_state(self.experiment_path, {"parent_run_id": parent_run_id, "tracking_uri": uri})

    def stages(self) -> None:
        """The stages no earlier sweep trained; those that fail are listed in the summary."""
        self.failed_stages = train_stages(self.plan.stages, self.context, self.log)

    def caches(self) -> None:
        build_caches(self.plan.caches, self.context, self.log)

    def trials(self) -> None:
        """The Tuner's trials. A signal while they run stops them through Tune, which saves its
        experiment state for ``--resume``; the sweep stops once ``fit`` has returned."""
        tuner = tuner_for(
            self.context, self.plan.storage, self.name, self.previous, self.log, self.at_once()
        )
        with one_line_trial_errors(), self.signals.tune_running():
            self.grid = tuner.fit()
        self.signals.check()

    def at_once(self) -> int:
        """What ``tune.max_concurrent: auto`` stands for: the trials the cluster holds now (a
        data-parallel trial counts its workers; no limit where the cluster adds nodes itself)."""
        from dakd.sweep.driver.cluster import node_sizes
        from dakd.sweep.driver.cost import Shape, concurrency

        if self.spec.tune.max_concurrent != "auto" or self.autoscale:
            return 0
        n = concurrency(self.spec, Shape.from_ray(node_sizes(), self.address or "local"))
        self.log(f"trials: up to {n} at once (tune.max_concurrent auto: what the cluster holds)")
        return n

    def summary(self) -> None:
        """The best trials against the baselines, printed and logged on the parent run (text,
        description and headline metrics), with a link to the runs table best first, a view saved
        on the experiment; the result tables start in a thread, to overlap Ray's shutdown."""
        from dakd.tracking.runs import save_view

        spec, uri, parent = self.spec, self.uri, self.parent
        path = f"{self.plan.storage}/{self.name}"
        self.result = summarize(self.grid, spec, self.plan, parent.run_id, uri, path)
        self.result.failed_stages = self.failed_stages
        save_view(uri, self.experiment_id, f"runs by {spec.tune.primary}", **table_view(spec))
        text = format_summary(
            self.result,
            spec,
            ui_command(uri),
            spec.experiment_name,
            experiment_id=self.experiment_id,
        )
        text += "\n" + self._cost_line()
        self.log(text)
        parent.log_text(text, "summary.md")
        parent.set_description(summary_markdown(self.result, spec))
        parent.log_metrics(headline_metrics(self.result, spec), step=0)
        if spec.tune.multi:
            self._front()
        # the result tables need MLflow only: they are built while Ray shuts down (close)
        self.analysis = threading.Thread(
            target=log_analysis,
            args=(uri, spec.experiment_name, parent.run_id, self.log),
            name="dakd-analysis",
        )
        self.analysis.start()

    def _front(self) -> None:
        """Several objectives: the front's runs tagged, its plot on the parent run."""
        import tempfile

        from dakd.sweep.driver.front import plot_front, tag_front

        tag_front(self.uri, self.result)
        with tempfile.TemporaryDirectory() as folder:
            path = plot_front(self.result, self.spec, Path(folder) / "pareto_front.png")
            if path is not None:
                self.parent.log_artifact(path, "analysis")
                self.log(
                    f"the front's plot: analysis/pareto_front.png of parent run {self.parent.run_id}"
                )

    def close(self, status: str) -> None:
        """End the parent run with ``status`` and shut down a Ray the sweep started. After the
        summary Ray shuts down first, while the result tables are logged; after a failure the
        parent run ends first. The parent run never ends while tables are being logged to it."""
        try:
            if status != "KILLED":
                self._stop_ray()
            if self.analysis is not None:
                self.analysis.join()
            if self.parent is not None:
                self.parent.finish(status)
        finally:
            self._stop_ray()

    def close_stopped(self, reason: str) -> int:
        """After a signal: Ray first, so that no worker of the sweep goes on writing to a run or
        reopens one; then every run of the sweep still RUNNING (the parent, and the stage, cache
        and trial runs under it, whichever process opened them) ends KILLED, tagged ``error:
        reason``; result tables being logged (a signal after the summary) finish after that: a
        job's grace period before SIGKILL goes first to leaving nothing RUNNING. Returns how
        many runs it closed."""
        try:
            self._stop_ray(wait=True)
        except Exception as err:  # noqa: BLE001 - the runs are closed all the same
            self.log(f"warning: Ray did not shut down cleanly ({type(err).__name__}: {err})")
        closed = 0
        if self.parent is not None:
            closed = close_open_runs(self.uri, self.parent.run_id, reason)
            self.parent.status = "KILLED"
        if self.analysis is not None:
            self.analysis.join()
        return closed

    def _stop_ray(self, wait: bool = False) -> None:
        """Shut down (or leave) a Ray the sweep started (joined). ``wait``: until the processes
        it started on this machine (GCS, raylet, the workers of stages and trials) are gone."""
        if self.started_ray:
            import ray

            self.started_ray = False
            if not wait:
                ray.shutdown()
                return
            workers = _child_processes()
            ray.shutdown(wait_for_processes=True)
            _wait_for(workers)


def _child_processes() -> list:
    """The processes under this one (a local Ray's: GCS, raylet, its workers)."""
    import psutil

    return psutil.Process().children(recursive=True)


def _wait_for(processes: list, timeout: float = 10.0) -> None:
    """Wait until ``processes`` have ended; those still there after ``timeout`` s are killed (a
    worker the raylet left behind when it stopped would go on training, and logging)."""
    import psutil

    _, alive = psutil.wait_procs(processes, timeout=timeout)
    for process in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    psutil.wait_procs(alive, timeout=5)


def run_sweep(
    spec: SweepSpec,
    resume: bool | str = False,
    address: str | None = None,
    root: Path | None = None,
    log: Callable[[str], None] = print,
    autoscale: bool = False,
) -> SweepResult:
    """Run (or with ``resume`` continue) a sweep; return its summary rows (best first).
    ``resume``: True continues the spec's latest sweep, a sweep id (or its unique prefix) that
    sweep.

    ``autoscale``: the cluster adds nodes on demand, so trial resources it lacks now are not
    an error (:func:`check_cluster_resources`)."""
    sweep = Sweep(spec, resume=resume, address=address, root=root, log=log, autoscale=autoscale)
    return sweep.run()
