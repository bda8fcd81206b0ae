"""The Tuner of a sweep: its search algorithm and scheduler, and what watches its trials.

A new sweep gets a Tuner built from the spec's ``tune`` section; a resumed one restores Tune's
own experiment (errored trials included). A callback closes each trial's MLflow run from the
driver, and trial errors reach the console as one line each.
"""

from __future__ import annotations

import contextlib
import logging
import math

from dakd.config import ExperimentConfig
from dakd.recipes.stages import error_line
from dakd.sweep.driver.cluster import trial_resources
from dakd.sweep.driver.restore import restore_tuner
from dakd.sweep.remote.trial import run_trial
from dakd.sweep.spec.context import SweepContext
from dakd.sweep.spec.sweep_spec import SweepSpec, param_space
from dakd.tracking.tags import EARLY_STOPPED


def _evaluations(cfg: ExperimentConfig) -> int:
    return math.ceil(cfg.train.steps / cfg.train.eval_interval)


def _sampler(t):
    """Optuna's sampler: TPE (one or several objectives) or NSGA-II; seeded."""
    import optuna

    if t.sampler == "nsga2":
        # a generation of half the samples (at least 2): a small sweep still evolves
        population = max(2, min(50, t.num_samples // 2))
        return optuna.samplers.NSGAIISampler(seed=t.search_seed, population_size=population)
    return optuna.samplers.TPESampler(seed=t.search_seed)


def trial_limit(spec: SweepSpec, at_once: int = 0) -> int:
    """Trials at once (0: as many as Ray places): ``tune.max_concurrent``, or for ``auto`` what
    the cluster holds, ``at_once`` (:func:`dakd.sweep.driver.cost.concurrency`, counted by the sweep)."""
    limit = spec.tune.max_concurrent
    return at_once if limit == "auto" else int(limit)


def build_tuner_parts(spec: SweepSpec, at_once: int = 0):
    """(search algorithm, scheduler) for the spec's ``tune`` section; ``at_once``: what
    ``tune.max_concurrent: auto`` stands for on this cluster (0: no limit)."""
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import BasicVariantGenerator, Repeater

    from dakd.sweep.driver.objectives import ObjectivesSearch, ParetoScheduler

    t = spec.tune
    if t.search == "optuna":
        # copies: the searcher consumes its list
        points = [dict(p) for p in t.points_to_evaluate] or None
        objectives = {"metric": t.objectives, "mode": t.modes} if t.multi else {}
        searcher = ObjectivesSearch(sampler=_sampler(t), points_to_evaluate=points, **objectives)
        search_alg = Repeater(searcher, repeat=len(t.seeds)) if len(t.seeds) > 1 else searcher
    else:
        # a SearchGenerator ignores TuneConfig.max_concurrent_trials: it takes its own limit.
        # HyperBand counts a paused trial as live: with a limit, a bracket waiting for trials
        # not yet created would wait for ever, so its trials wait for the cluster's resources
        limit = 0 if t.scheduler == "hyperband" else trial_limit(spec, at_once)
        search_alg = BasicVariantGenerator(random_state=t.search_seed, max_concurrent=limit)
    scheduler = None
    if t.scheduler == "asha":
        scheduler = ASHAScheduler(
            time_attr="training_iteration",
            max_t=max(_evaluations(spec.base), 1),
            grace_period=int(t.asha.get("grace_period", 1)),
            reduction_factor=float(t.asha.get("reduction_factor", 2)),
        )
    elif t.scheduler == "pareto":
        scheduler = ParetoScheduler(
            t.objectives, t.modes, grace_period=int(t.pareto.get("grace_period", 1))
        )
    elif t.scheduler in ("hyperband", "pbt"):
        from dakd.sweep.driver import schedulers

        scheduler = getattr(schedulers, t.scheduler)(spec)
    return search_alg, scheduler


def new_tuner(spec: SweepSpec, trainable, storage: str, name: str, uri: str, at_once: int = 0):
    from ray import tune

    search_alg, scheduler = build_tuner_parts(spec, at_once)
    t = spec.tune
    # several objectives under Optuna: the searcher holds the lists (Tune would overwrite them
    # with one metric); grid and random searches rank by the first (the summary by the front)
    single = not (t.multi and t.search == "optuna")
    return tune.Tuner(
        trainable,
        param_space=param_space(spec),
        tune_config=tune.TuneConfig(
            metric=t.primary if single else None,
            mode=t.primary_mode if single else None,
            search_alg=search_alg,
            scheduler=scheduler,
            num_samples=t.num_samples * (len(t.seeds) if t.search == "optuna" else 1),
            # grid and random searches take the limit in BasicVariantGenerator
            max_concurrent_trials=(trial_limit(spec, at_once) or None)
            if t.search == "optuna"
            else None,
            reuse_actors=t.reuse_actors,
            trial_dirname_creator=lambda trial: f"trial_{trial.trial_id}",
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage,
            failure_config=tune.FailureConfig(max_failures=t.max_failures),
            # PBT restores a trial from another's checkpoint some reports after it was saved
            checkpoint_config=tune.CheckpointConfig(num_to_keep=4 if t.scheduler == "pbt" else 2),
            callbacks=[_status_callback(uri)],
            verbose=1,
        ),
    )


def tuner_for(
    context: SweepContext, storage: str, name: str, previous: str | None, log, at_once: int = 0
):
    """The Tuner of the sweep's trials: Tune's experiment ``previous`` restored when it has one to
    continue (errored trials are retried), else a new one named ``name`` under ``storage``."""
    from ray import tune

    spec = context.spec
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, context=context), trial_resources(spec)
    )
    if previous and tune.Tuner.can_restore(previous):
        log(f"resuming {previous}")
        return restore_tuner(previous, trainable)
    # a new sweep, or one killed before its trials began
    return new_tuner(spec, trainable, storage, name, context.tracking_uri, at_once)


class _Closer:
    """Closes each trial's MLflow run with the trial's final state, from the driver: a trial that
    a scheduler stopped (its thread ends at that report; a reused actor waits for it) or whose
    worker died cannot close its run itself. Stopped before its last step: tag early_stopped."""

    def __init__(self, uri: str):
        self.uri = uri
        self.last: dict[str, dict] = {}

    def result(self, trial_id: str, result: dict) -> None:
        if result.get("mlflow_run_id"):
            self.last[trial_id] = result

    def complete(self, trial_id: str, failed: bool = False) -> None:
        from dakd.tracking.runs import finish_run, set_run_tags

        last = self.last.get(trial_id)
        if last is None:
            return
        run_id = last["mlflow_run_id"]
        if not failed and last.get("step", 0) < last.get("steps", 0):
            set_run_tags(self.uri, run_id, {EARLY_STOPPED: "true"})
        finish_run(self.uri, run_id, "FAILED" if failed else "FINISHED")


def _status_callback(uri: str):
    from ray import tune

    closer = _Closer(uri)

    class MlflowStatus(tune.Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):
            closer.result(trial.trial_id, result)

        def on_trial_complete(self, iteration, trials, trial, **info):
            # the trial's final result may reach Tune only with its completion
            closer.result(trial.trial_id, trial.last_result or {})
            closer.complete(trial.trial_id)

        def on_trial_error(self, iteration, trials, trial, **info):
            closer.complete(trial.trial_id, failed=True)

    return MlflowStatus()


class _OneLine(logging.Filter):
    """Tune logs a failed trial with the whole remote traceback; the user gets its cause in one
    line (the traceback stays in the trial's ``error.txt`` and its MLflow run's tag)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            record.msg = f"{record.getMessage()}: {error_line(record.exc_info[1])}"
            record.args = ()
            record.exc_info = None
            record.exc_text = None
        return True


@contextlib.contextmanager
def one_line_trial_errors():
    logger = logging.getLogger("ray.tune.execution.tune_controller")
    one_line = _OneLine()
    logger.addFilter(one_line)
    try:
        yield
    finally:
        logger.removeFilter(one_line)
