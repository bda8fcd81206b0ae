"""Sweeps with several objectives: the Optuna searcher and the early stopping that stay correct.

``tune.metric: [miou, peak_memory_mb]`` with ``mode: [max, min]`` asks for a Pareto front, not one
best trial. Optuna searches it with a multi-objective sampler (TPE, or NSGA-II); Ray Tune's
``OptunaSearch`` accepts the lists. What it does not handle is a trial without a value for every
objective (one recorded infeasible before it trained): Optuna rejects the missing values and the
trial stays RUNNING in its study. :class:`ObjectivesSearch` tells such a trial as pruned.

ASHA ranks trials by one metric; :class:`ParetoScheduler` stops a trial whose objectives at an
evaluation are dominated by another trial's at the same evaluation (after ``grace_period``
evaluations): such a trial cannot be on the front of that evaluation.

``OptunaSearch``'s private state (its study, its open trials) is read in :func:`optuna_state`
alone, which stops with one error when an installed Ray lacks it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search.optuna import OptunaSearch

from dakd.tracking.pareto import dominates

#: How often a suggestion that repeats an earlier configuration is drawn again.
RESAMPLES = 20


class ObjectivesSearch(OptunaSearch):
    """``OptunaSearch`` whose trials lacking an objective's value are told as pruned, and which
    does not train a configuration twice: over a space of choices a sampler (NSGA-II's
    crossover, TPE) often proposes one it already proposed, and a trial is deterministic for
    its seed. Such a suggestion is told to Optuna as failed and drawn again (up to
    :data:`RESAMPLES` times; then it is trained, since the sampler has nothing new to give)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        optuna_state(self)  # stops here, at the sweep's start, if Ray's private state moved
        self.proposed: set[str] = set()
        self.repeats = 0

    def suggest(self, trial_id: str):
        params = super().suggest(trial_id)
        for _ in range(RESAMPLES):
            if not isinstance(params, dict):
                return params
            key = json.dumps(params, sort_keys=True, default=str)
            if key not in self.proposed:
                break
            self.repeats += 1
            fail_suggestion(self, trial_id)
            params = super().suggest(trial_id)
        if isinstance(params, dict):
            self.proposed.add(json.dumps(params, sort_keys=True, default=str))
        return params

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        metrics = self.metric if isinstance(self.metric, list) else [self.metric]
        if result and any(_missing(result.get(m)) for m in metrics):
            result = None  # Ray then tells Optuna PRUNED (or FAIL when the trial errored)
        super().on_trial_complete(trial_id, result, error)


def optuna_state(searcher: OptunaSearch) -> tuple[Any, dict[str, Any]]:
    """``searcher``'s Optuna study (``None`` until it has a space and a metric) and the open
    Optuna trial of each Tune trial id: the one place that reads ``OptunaSearch``'s private
    attributes (``_ot_study``, ``_ot_trials``), which Ray does not document. A Ray without them
    is one error naming them, not a sweep that silently trains repeated configurations."""
    try:
        return searcher._ot_study, searcher._ot_trials
    except AttributeError as err:
        import ray

        raise RuntimeError(
            f"Ray {ray.__version__}: OptunaSearch has no attribute {err.name!r}, which "
            "dakd.sweep.driver.objectives.optuna_state reads; this Ray is not supported"
        ) from None


def fail_suggestion(searcher: OptunaSearch, trial_id: str) -> None:
    """Tell Optuna that the open trial of ``trial_id`` failed and forget it, so that the next
    ``searcher.suggest(trial_id)`` asks the study for a new one."""
    from optuna.trial import TrialState

    study, trials = optuna_state(searcher)
    study.tell(trials.pop(trial_id), state=TrialState.FAIL)


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


class ParetoScheduler(FIFOScheduler):
    """Stops a trial when another trial's objectives dominate its own at the same evaluation
    (``training_iteration``), from evaluation ``grace_period`` on. Trials run in arrival order
    (FIFO); a result without every objective never stops a trial."""

    def __init__(self, metrics: Sequence[str], modes: Sequence[str], grace_period: int = 1):
        super().__init__()
        self.metrics = list(metrics)
        self.modes = list(modes)
        self.grace_period = grace_period
        self.seen: dict[int, dict[str, tuple[float, ...]]] = {}  # evaluation -> trial -> values
        self.stopped = 0

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        return self.decide(trial.trial_id, result)

    def decide(self, trial_id: str, result: dict) -> str:
        """CONTINUE or STOP for ``trial_id`` after ``result``."""
        iteration = result.get("training_iteration")
        values = tuple(result.get(m) for m in self.metrics)
        if iteration is None or any(_missing(v) for v in values):
            return TrialScheduler.CONTINUE
        values = tuple(float(v) for v in values)
        here = self.seen.setdefault(int(iteration), {})
        here[trial_id] = values
        if iteration < self.grace_period:
            return TrialScheduler.CONTINUE
        for other, theirs in here.items():
            if other != trial_id and dominates(theirs, values, self.modes):
                self.stopped += 1
                return TrialScheduler.STOP
        return TrialScheduler.CONTINUE

    def debug_string(self) -> str:
        return f"Pareto stopping: {self.stopped} trial(s) stopped as dominated"
