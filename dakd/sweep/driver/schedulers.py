"""The schedulers that pause trials: Ray Tune's synchronous HyperBand and population-based
training (PBT) over the loss weights.

Both stop a trial at a report and start it again later from a Tune checkpoint (every report of
a trial carries its ``last.pt``, :func:`dakd.sweep.remote.trial.run_trial`); PBT starts a weak
trial from a strong trial's checkpoint with a mutated copy of its configuration. Times are
counted in evaluations (``training_iteration``), as ASHA's are.
"""

from __future__ import annotations

import math
from typing import Any

from ray.tune.schedulers import HyperBandScheduler, PopulationBasedTraining, TrialScheduler

from dakd.sweep.spec.space import Distribution
from dakd.sweep.spec.sweep_spec import SweepSpec


def evaluations(spec: SweepSpec) -> int:
    """A trial's evaluations: what ``training_iteration`` reaches at its last step."""
    train = spec.base.train
    return max(1, math.ceil(train.steps / train.eval_interval))


def hyperband(spec: SweepSpec) -> HyperBandScheduler:
    """HyperBand's brackets over ``max_t`` evaluations (default: all of a trial's); the trials
    a bracket keeps at a milestone are paused until the bracket's others reach it."""
    options = spec.tune.hyperband
    return HyperBandScheduler(
        time_attr="training_iteration",
        max_t=int(options.get("max_t", evaluations(spec))),
        reduction_factor=float(options.get("reduction_factor", 3)),
        stop_last_trials=True,
    )


class InRange:
    """PBT's explore step keeps each mutated number a value of its axis: a weight scaled by 1.2
    past its range is clipped to it, an integer stays an integer, a quantised one on its step
    (a plain class, so that Tune's saved scheduler state pickles it)."""

    def __init__(self, axes: dict[str, Distribution]):
        self.axes = {axis: dist for axis, dist in axes.items() if not dist.categorical}

    def __call__(self, config: dict[str, Any]) -> dict[str, Any]:
        for axis, dist in self.axes.items():
            if axis not in config:
                continue
            low, high = dist.args[0], dist.args[1]
            if dist.traits.integer:
                high -= 1  # randint excludes its high end
            config[axis] = dist.config_value(min(max(float(config[axis]), low), high))
        return config


class LossSchedulePBT(PopulationBasedTraining):
    """Ray's PBT, except at a trial's last evaluation: a trial that has trained all its steps
    ends with its own weights and values instead of being sent back to another trial's
    checkpoint with nothing left to train."""

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if result.get("steps") and result.get("step", 0) >= result["steps"]:
            return TrialScheduler.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)


def mutations(spec: SweepSpec) -> dict[str, Any]:
    """PBT's ``hyperparam_mutations``: every search axis, a choice as its list of labels (PBT
    moves to a neighbouring option), a range as its Tune domain (scaled by 0.8 or 1.2, or drawn
    anew with ``resample_probability``)."""
    return {
        axis: dist.labels() if dist.categorical else dist.tune_domain()
        for axis, dist in spec.search.items()
    }


def pbt(spec: SweepSpec) -> LossSchedulePBT:
    options = spec.tune.pbt_options
    return LossSchedulePBT(
        time_attr="training_iteration",
        perturbation_interval=options["perturbation_interval"],
        burn_in_period=options["burn_in"],
        hyperparam_mutations=mutations(spec),
        quantile_fraction=options["quantile_fraction"],
        resample_probability=options["resample_probability"],
        custom_explore_fn=InRange(spec.search),
        synch=options["synch"],
    )
