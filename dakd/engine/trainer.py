"""The training loop: steps, evaluations, and hooks at defined points.

``train(cfg, hooks=...)`` trains the network of ``cfg.stage`` (the state and the step are
:class:`dakd.engine.state.TrainState`'s). Every ``train.eval_interval`` steps (and at the end) the
target val split is evaluated and the hooks see the metrics and the checkpoint
(``dakd.engine.hooks``: the points, the order, what happens when a hook raises, hook states
across a resume; checkpoints, the metrics file, progress and precise BN are hooks; so are the
sweep's Tune report and MLflow logging). The core knows nothing of Ray or MLflow.

Each evaluation's metrics hold, besides the evaluation and the mean loss terms, what the steps
since the previous one cost (``dakd.runtime.performance``: the mean step time, the TFLOP/s achieved and,
on CUDA, the peak GPU memory). Running out of GPU memory stops the run with
:class:`~dakd.runtime.performance.OutOfMemory`, one line that says what to change.

Data-parallel: when torch's default process group is initialised (``torchrun -m dakd train``,
see ``dakd.runtime.distributed``), every process runs this same loop on its share of each global batch
(``data.batch_size`` is global). Evaluation splits the val images between the processes and
sums their confusion matrices. Rank 0 alone writes checkpoints and metrics and shows progress.
"""

from __future__ import annotations

import time
import traceback
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from dakd.config import ConfigError, ExperimentConfig
from dakd.config.plugins import load_plugins
from dakd.engine.hooks import HOOK_STATES, Hook, Report, ReportCallback, default_hooks, overrides
from dakd.engine.state import NonFiniteLossError, TrainState
from dakd.evaluation.run_metrics import metrics_of
from dakd.evaluation.segmentation import SegMetrics
from dakd.models import checkpoint as ckpt
from dakd.paradigms import AUTO
from dakd.runtime.device import check_device
from dakd.runtime.distributed import World
from dakd.runtime.performance import TIMING_KEYS, OutOfMemory, StepMeter, out_of_memory_error


@dataclass
class TrainResult:
    """Final metrics, the resumable checkpoint, every evaluation's metrics, and the last
    evaluation in full (its confusion matrix; None when this call evaluated nothing)."""

    metrics: dict[str, float]
    checkpoint: Path
    history: list[dict[str, float]] = field(default_factory=list)
    evaluation: SegMetrics | None = None
    #: the domains whose teacher outputs came from the cache (DAKD; the others ran the teacher)
    cached_domains: tuple[str, ...] = ()
    #: seconds this call spent in its hooks (by :attr:`~dakd.engine.hooks.Hook.key`; for a
    #: reader, not for lookups: :meth:`Trainer.seconds_of` is a hook's own) and in ``train``
    #: up to its ``after_train`` hooks (``train``)
    seconds: dict[str, float] = field(default_factory=dict)


class Trainer:
    """One call of :func:`train`: what hooks read (``cfg``, ``state``: the
    :class:`~dakd.engine.state.TrainState`, ``world``, ``run_dir``, ``last``,
    ``pending_steps``: steps since the last evaluation, ``meter``: the steps' time, FLOPs and
    memory, :meth:`seconds_of`) and the loop itself. ``hooks`` are sorted by priority (lower
    first; a stable sort: hooks of one priority keep the order given)."""

    def __init__(self, cfg: ExperimentConfig, hooks: Sequence[Hook]):
        load_plugins(cfg.plugins)  # a config sent to another process: its terms and networks
        self.cfg = cfg
        self.hooks = sorted(hooks, key=lambda hook: hook.priority)
        _check_state_keys(self.hooks)
        self.state: TrainState | None = None
        self.run_dir = cfg.run_dir
        self.last = self.run_dir / "last.pt"
        self.pending_steps = 0
        self._seconds = {id(hook): 0.0 for hook in self.hooks}
        # the counter's module hooks would break torch.compile's graph: no count when compiled
        self.count_flops = not cfg.train.compile
        self.meter: StepMeter | None = None

    @property
    def world(self) -> World:
        return self.state.world

    def seconds_of(self, hook: Hook) -> float:
        """The seconds ``hook`` (this very object, one of the loop's) has taken so far."""
        if id(hook) not in self._seconds:
            raise ValueError(f"{hook.key} is not one of this loop's hooks")
        return self._seconds[id(hook)]

    def call(self, point: str, *args) -> None:
        """Every hook's ``point``, in order, timed per hook; the first error ends the call."""
        for hook in self.hooks:
            self._timed(hook, point, args)

    def call_every(self, point: str, *args) -> list[tuple[Hook, BaseException]]:
        """Every hook's ``point``, in order, timed per hook, each even when an earlier one
        raises; returns the hooks that raised and their errors."""
        errors = []
        for hook in self.hooks:
            try:
                self._timed(hook, point, args)
            except BaseException as error:  # every hook still runs; the caller raises
                errors.append((hook, error))
        return errors

    def _timed(self, hook: Hook, point: str, args: tuple) -> None:
        tic = time.perf_counter()
        try:
            getattr(hook, point)(self, *args)
        finally:
            self._seconds[id(hook)] += time.perf_counter() - tic

    def checkpoint(self) -> dict[str, Any]:
        """What ``last.pt`` holds: the state's :meth:`~TrainState.state_dict` and, under
        :data:`~dakd.engine.hooks.HOOK_STATES`, every hook's non-empty state by its key."""
        states = {}
        for hook in self.hooks:
            state = hook.state_dict()
            if state:
                _check_plain(state, f"the state of hook {hook.key}")
                states[hook.key] = state
        return {**self.state.state_dict(), HOOK_STATES: states}

    def load_hook_states(self, states: dict[str, Any]) -> None:
        """Give each hook its stored state; a hook without one (an older checkpoint, a new
        hook) keeps its own."""
        for hook in self.hooks:
            if hook.key in states:
                hook.load_state_dict(states[hook.key])

    def run(self, resume: bool, stop_after: int | None) -> TrainResult:
        start = time.perf_counter()
        try:
            result = self._train(resume, stop_after)
            seconds: dict[str, float] = defaultdict(float)
            for hook in self.hooks:
                seconds[hook.key] += self.seconds_of(hook)
            result.seconds = dict(seconds, train=time.perf_counter() - start)
            errors = self.call_every("after_train", result)
            if errors:
                (_, first), *others = errors
                _add_notes(first, others, "after_train")
                raise first
        except BaseException as error:
            # the error that ended the run propagates; the hooks' own errors become its notes
            _add_notes(error, self.call_every("on_exception", error), "on_exception")
            raise
        return result

    def _train(self, resume: bool, stop_after: int | None) -> TrainResult:
        # a device torch does not see stops here, before any data or network is built
        check_device(self.cfg.train.device)
        _check_resolved(self.cfg)
        self.state = state = TrainState(self.cfg)
        try:
            if resume and self.last.exists():
                stored = ckpt.load(self.last)
                state.load_state_dict(stored, self.last)
                self.load_hook_states(stored.get(HOOK_STATES, {}))
            _same_step_everywhere(state.step, state.world, state.device, self.last)
            if any(overrides(hook, "after_backward") for hook in self.hooks):
                # only then: the default step stays as it is (no early unscaling under AMP)
                state.after_backward = lambda: self.call("after_backward")
            return self._steps(stop_after)
        finally:
            state.close()

    def _steps(self, stop_after: int | None) -> TrainResult:
        state, t = self.state, self.cfg.train
        self.call("before_train")
        stop = t.steps if stop_after is None else min(t.steps, state.step + stop_after)
        sums: dict[str, torch.Tensor] = {}
        metrics: dict[str, float] = dict(state.history[-1]) if state.history else {}
        self.meter = meter = StepMeter(state.device, self.count_flops)
        evaluation: SegMetrics | None = None
        while state.step < stop:
            self.call("before_step")
            try:
                terms = meter.step(state.train_step)
            except torch.cuda.OutOfMemoryError as error:
                raise out_of_memory_error(self.cfg, state, f"step {state.step}") from error
            for k, v in terms.items():
                sums[k] = sums[k] + v if k in sums else v.clone()
            self.pending_steps += 1
            self.call("after_step", terms)
            if state.step % t.eval_interval == 0 or state.step == t.steps:
                timing = meter.metrics()
                try:
                    evaluation, raw = self._evaluate()
                except torch.cuda.OutOfMemoryError as error:
                    where = f"the evaluation at step {state.step}"
                    raise out_of_memory_error(self.cfg, state, where) from error
                meter.reset()
                metrics = {
                    "step": state.step,
                    "lr": state.optimizer.param_groups[0]["lr"],
                    **timing,
                    **metrics_of(evaluation, self.cfg),
                    **_mean_terms(sums, self.pending_steps, state.world),
                }
                if raw is not None:
                    metrics["raw/miou"] = 100.0 * raw.miou
                    metrics["raw/pixel_acc"] = 100.0 * raw.pixel_accuracy
                state.history.append(metrics)
                sums, self.pending_steps = {}, 0
                self.call("after_evaluation", metrics, self.last if self.world.is_main else None)
        return TrainResult(
            metrics=metrics,
            checkpoint=self.last,
            history=state.history,
            evaluation=evaluation,
            cached_domains=tuple(sorted(state.teacher_caches)),
        )

    def _evaluate(self) -> tuple[SegMetrics, SegMetrics | None]:
        """The evaluation a run reports and stores (the weight average's when ``train.ema_decay`` is
        on), and the trained network's own when it differs (else None)."""
        state = self.state
        self.call("before_evaluation", state.model)
        state.sync_buffers()
        raw = state.evaluate(state.model)
        if state.ema is None:
            return raw, None
        averaged = state.averaged()
        self.call("before_evaluation", averaged)
        return state.evaluate(averaged), raw


def _add_notes(error: BaseException, others: list[tuple[Hook, BaseException]], point: str) -> None:
    """Each other hook error as a note on ``error`` (the one that propagates): the hook, the
    point and the error's traceback."""
    for hook, other in others:
        if other is not error:
            shown = "".join(traceback.format_exception(other, chain=False)).rstrip()
            error.add_note(f"{point} of hook {hook.key} also raised:\n{shown}")


def _check_state_keys(hooks: list[Hook]) -> None:
    """Hooks that keep a state need keys of their own (the checkpoint stores states by key)."""
    seen: set[str] = set()
    for hook in hooks:
        if overrides(hook, "state_dict"):
            if hook.key in seen:
                raise ValueError(
                    f"two hooks keep their state under the key {hook.key!r}: give each its own "
                    "`name`"
                )
            seen.add(hook.key)


_PRIMITIVES = (str, int, float, bool, type(None))


def _check_plain(value: Any, what: str) -> None:
    """``value`` is what ``torch.load(weights_only=True)`` reads back: tensors, numbers,
    strings, booleans, None, and lists, tuples and dicts (string or integer keys) of them;
    exact types (a NumPy float or a named tuple is not read back)."""
    if type(value) is dict:
        for key, item in value.items():
            if type(key) not in (str, int):
                raise TypeError(f"{what} has a {type(key).__name__} key; keys are str or int")
            _check_plain(item, what)
    elif type(value) in (list, tuple):
        for item in value:
            _check_plain(item, what)
    elif not (isinstance(value, torch.Tensor) or type(value) in _PRIMITIVES):
        raise TypeError(
            f"{what} holds a {type(value).__name__}; a checkpoint holds plain data only "
            "(tensors, numbers, strings, booleans, None, and lists, tuples and dicts of them)"
        )


def _check_resolved(cfg: ExperimentConfig) -> None:
    for key in ("teacher", "init"):
        if getattr(cfg, key) == AUTO:
            raise ConfigError(
                f"{key}: 'auto' names a reused stage; resolve it first "
                "(python -m dakd train or the sweep do; in code: dakd.recipes.stages.with_stages)"
            )


def _mean_terms(sums: dict[str, torch.Tensor], count: int, world: World) -> dict[str, float]:
    """Mean loss terms since the last report, averaged over the data-parallel processes."""
    if not sums:
        return {}
    keys = sorted(sums)
    means = torch.stack([sums[k].float() for k in keys]) / max(count, 1)
    if world.distributed:
        dist.all_reduce(means)
        means /= world.size
    return {f"loss/{k}": v for k, v in zip(keys, means.tolist(), strict=True)}


def _same_step_everywhere(step: int, world: World, device: torch.device, last: Path) -> None:
    """Every process must resume from the same step (they read ``last.pt`` from one folder)."""
    if not world.distributed:
        return
    steps = torch.tensor([step, -step], device=device)
    dist.all_reduce(steps, op=dist.ReduceOp.MAX)
    if int(steps[0]) != -int(steps[1]):
        raise ckpt.CheckpointError(
            f"data-parallel processes start from different steps ({-int(steps[1])} to "
            f"{int(steps[0])}); every process must see the same {last} (a shared filesystem)"
        )


def train(
    cfg: ExperimentConfig,
    report: Report | None = None,
    resume: bool = True,
    stop_after: int | None = None,
    hooks: Sequence[Hook] = (),
) -> TrainResult:
    """Train ``cfg`` to ``cfg.train.steps`` steps; resume from ``run_dir/last.pt`` if it exists.

    ``hooks`` (``dakd.engine.hooks.Hook``) run with the default ones (precise BN, checkpoints,
    the metrics file, progress) in the order of their priorities (a hook of the default
    priority after the default hooks). ``report(metrics, checkpoint)``, the simplest hook, is called
    after every evaluation with the metrics in percent (``miou``, ``pixel_acc``,
    ``iou/<class>``), the mean loss terms since the last report (``loss/<term>``), ``step`` and
    ``lr``, and what the steps cost (:data:`~dakd.runtime.performance.TIMING_KEYS`: ``sec_per_step``,
    ``step_ms``, ``tflops``, on CUDA ``gpu_peak_mb``; see ``dakd.runtime.performance``). ``stop_after`` ends the call early after that many steps of this call (used to
    test resumption); the checkpoint then holds the exact state, the hooks' states included
    (``Hook.state_dict``), which a resumed run gives back to its hooks before ``before_train``.

    Data-parallel (an initialised default process group): every process calls ``train`` with
    the same config; metrics (but the timing ones) are the same on every process (the
    confusion matrix and the loss terms are reduced over all of them); rank 0 alone writes
    ``run_dir`` and shows progress; hooks run on every process, with the checkpoint path on
    rank 0 and None elsewhere (a hook that logs somewhere should log where the path is given).
    Every process reads ``last.pt`` to resume, so ``run_dir`` must be on a filesystem they all
    see. ``train`` returns on every process once rank 0's files are written.
    """
    extra = [*hooks, *([ReportCallback(report)] if report is not None else [])]
    return Trainer(cfg, [*default_hooks(cfg), *extra]).run(resume, stop_after)


__all__ = ["TIMING_KEYS", "Trainer", "NonFiniteLossError", "OutOfMemory", "TrainResult", "train"]
