"""The training loop: steps, evaluations, and hooks at defined points.

``train(cfg, hooks=...)`` trains the network of ``cfg.stage`` (the state and the step are
:class:`dakd.engine.state.TrainState`'s). Every ``train.eval_interval`` steps (and at the end) the
target val split is evaluated and the hooks see the metrics and the checkpoint
(``dakd.engine.hooks``: checkpoints, the metrics file, progress and precise BN are hooks; so are the
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
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from dakd.config import ConfigError, ExperimentConfig
from dakd.engine.hooks import Hook, Report, ReportCallback, default_hooks
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
    #: seconds this call spent in each hook (by class name) and in ``train`` up to its
    #: ``after_train`` hooks (what they read; the trial's time split)
    seconds: dict[str, float] = field(default_factory=dict)


class Trainer:
    """One call of :func:`train`: what hooks read (``cfg``, ``trainer``, ``world``, ``run_dir``,
    ``last``, ``pending_steps``: steps since the last evaluation, ``meter``: the steps' time,
    FLOPs and memory) and the loop itself."""

    def __init__(self, cfg: ExperimentConfig, hooks: Sequence[Hook]):
        self.cfg = cfg
        self.hooks = list(hooks)
        self.state: TrainState | None = None
        self.run_dir = cfg.run_dir
        self.last = self.run_dir / "last.pt"
        self.pending_steps = 0
        self.seconds: dict[str, float] = defaultdict(float)
        # the counter's module hooks would break torch.compile's graph: no count when compiled
        self.count_flops = not cfg.train.compile
        self.meter: StepMeter | None = None

    @property
    def world(self) -> World:
        return self.state.world

    def call(self, point: str, *args) -> None:
        """Every hook's ``point``, in order, timed per hook."""
        for hook in self.hooks:
            tic = time.perf_counter()
            getattr(hook, point)(self, *args)
            self.seconds[type(hook).__name__] += time.perf_counter() - tic

    def run(self, resume: bool, stop_after: int | None) -> TrainResult:
        start = time.perf_counter()
        try:
            # a device torch does not see stops here, before any data or network is built
            check_device(self.cfg.train.device)
            _check_resolved(self.cfg)
            self.state = trainer = TrainState(self.cfg)
            try:
                if resume and self.last.exists():
                    trainer.load_state_dict(ckpt.load(self.last), self.last)
                _same_step_everywhere(trainer.step, trainer.world, trainer.device, self.last)
                result = self._steps(stop_after)
            finally:
                trainer.close()
            result.seconds = dict(self.seconds, train=time.perf_counter() - start)
            self.call("after_train", result)
        except BaseException as error:
            for hook in self.hooks:
                hook.on_exception(self, error)
            raise
        return result

    def _steps(self, stop_after: int | None) -> TrainResult:
        trainer, t = self.state, self.cfg.train
        self.call("before_train")
        stop = t.steps if stop_after is None else min(t.steps, trainer.step + stop_after)
        sums: dict[str, torch.Tensor] = {}
        metrics: dict[str, float] = dict(trainer.history[-1]) if trainer.history else {}
        self.meter = meter = StepMeter(trainer.device, self.count_flops)
        evaluation: SegMetrics | None = None
        while trainer.step < stop:
            try:
                terms = meter.step(trainer.train_step)
            except torch.cuda.OutOfMemoryError as error:
                raise out_of_memory_error(self.cfg, trainer, f"step {trainer.step}") from error
            for k, v in terms.items():
                sums[k] = sums[k] + v if k in sums else v.clone()
            self.pending_steps += 1
            self.call("after_step", terms)
            if trainer.step % t.eval_interval == 0 or trainer.step == t.steps:
                timing = meter.metrics()
                try:
                    evaluation, raw = self._evaluate()
                except torch.cuda.OutOfMemoryError as error:
                    where = f"the evaluation at step {trainer.step}"
                    raise out_of_memory_error(self.cfg, trainer, where) from error
                meter.reset()
                metrics = {
                    "step": trainer.step,
                    "lr": trainer.optimizer.param_groups[0]["lr"],
                    **timing,
                    **metrics_of(evaluation, self.cfg),
                    **_mean_terms(sums, self.pending_steps, trainer.world),
                }
                if raw is not None:
                    metrics["raw/miou"] = 100.0 * raw.miou
                    metrics["raw/pixel_acc"] = 100.0 * raw.pixel_accuracy
                trainer.history.append(metrics)
                sums, self.pending_steps = {}, 0
                self.call("after_evaluation", metrics, self.last if self.world.is_main else None)
        return TrainResult(
            metrics=metrics,
            checkpoint=self.last,
            history=trainer.history,
            evaluation=evaluation,
            cached_domains=tuple(sorted(trainer.teacher_caches)),
        )

    def _evaluate(self) -> tuple[SegMetrics, SegMetrics | None]:
        """The evaluation a run reports and stores (the weight average's when ``train.ema_decay`` is
        on), and the trained network's own when it differs (else None)."""
        trainer = self.state
        self.call("before_evaluation", trainer.model)
        trainer.sync_buffers()
        raw = trainer.evaluate(trainer.model)
        if trainer.ema is None:
            return raw, None
        averaged = trainer.averaged()
        self.call("before_evaluation", averaged)
        return trainer.evaluate(averaged), raw


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

    ``hooks`` (``dakd.engine.hooks.Hook``) run after the default ones (precise BN, checkpoints, the
    metrics file, progress). ``report(metrics, checkpoint)``, the simplest hook, is called
    after every evaluation with the metrics in percent (``miou``, ``pixel_acc``,
    ``iou/<class>``), the mean loss terms since the last report (``loss/<term>``), ``step`` and
    ``lr``, and what the steps cost (:data:`~dakd.runtime.performance.TIMING_KEYS`: ``sec_per_step``,
    ``step_ms``, ``tflops``, on CUDA ``gpu_peak_mb``; see ``dakd.runtime.performance``). ``stop_after`` ends the call early after that many steps of this call (used to
    test resumption); the checkpoint then holds the exact state.

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
