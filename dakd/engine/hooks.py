"""The points of the training loop where work other than the step happens, and the hooks that
do it: checkpoints, the metrics file, progress, precise BatchNorm and plain ``report`` callbacks.

The loop (:class:`dakd.engine.trainer.Trainer`, behind :func:`~dakd.engine.trainer.train`)
calls every hook at these points:

* ``before_train(trainer)``: once, after a resumed state (hook states included) is loaded,
  before the first step;
* ``before_step(trainer)``: before every step (``trainer.state.step`` is the step about to run);
* ``after_backward(trainer)``: in every step, between the segmenter's backward pass and its
  optimiser step: the gradients are on ``trainer.state.model``'s parameters (averaged over the
  processes when data-parallel) and what a hook does to them (clipping, say) is what the
  optimiser applies. Under fp16 mixed precision (a ``GradScaler``) the loop unscales them
  first (``scaler.unscale_``), so a hook sees true gradients; on a step the scaler skips they
  hold inf or NaN, and the step is skipped whatever the hook does. The discriminators' step
  has no such point;
* ``after_step(trainer, terms)``: after every step, with its loss terms (tensors);
* ``before_evaluation(trainer, network)``: before each network an evaluation reads (the
  trained one, then the weight average when ``train.ema_decay`` is on), in train mode's statistics;
* ``after_evaluation(trainer, metrics, checkpoint)``: after every evaluation, with its metrics
  and ``last.pt`` (None on processes other than rank 0, which alone writes files);
* ``after_train(trainer, result)``: once, when the steps end without an error;
* ``on_exception(trainer, error)``: when anything in ``train`` raises (an ``after_train`` hook
  included), the construction of the state included (``trainer.state`` is None then).

Order: the loop sorts its hooks by :attr:`Hook.priority` (lower first), hooks of one priority
in the order they were given. The default hooks' priorities say what each needs of the others:

* ``PreciseBN``: ``HIGHEST`` (0), the statistics are re-estimated before anything reads
  the network;
* ``Checkpointer``: ``VERY_HIGH`` (10), it makes the run folder and writes ``last.pt`` and
  ``model.pt`` before any later hook reads them;
* ``MetricsFile``: ``HIGH`` (30), it writes into the folder the checkpointer makes;
* ``Progress``: ``ABOVE_NORMAL`` (40), the bar, before the hooks a caller adds;
* a caller's hook: ``NORMAL`` (50) unless it says otherwise;
* ``ReportCallback``: ``BELOW_NORMAL`` (60), a plain ``report`` after a caller's hooks.

The sweep's hooks (``dakd.sweep.remote.hooks``) come after these: its system metrics stop
before its MLflow run finishes, which comes before its last Tune report.

Errors: at ``after_train`` and ``on_exception`` every hook runs even when an earlier one
raises, so one failing hook leaves no other hook's thread or run open. After ``after_train``
the first error raised there propagates (and reaches every ``on_exception``, so a hook whose
``after_train`` has run may see ``on_exception`` too: closing twice must be harmless); in
``on_exception`` the error that ended the run propagates, never a hook's. Each hook error that
does not propagate is added to the one that does as a note (PEP 678's ``add_note``: which
hook, at which point, and its traceback), so nothing is lost and what a caller catches is the
first error. At every other point a hook's error ends the run at once, as an error of the step
would.

State across a resume: :meth:`Hook.state_dict` (plain data: tensors, numbers, strings,
booleans, None, and lists, tuples and dicts of them; what ``torch.load(weights_only=True)``
reads) is stored in every ``last.pt`` under ``"hooks"``, keyed by :attr:`Hook.key`, as the
hook's state is when the :class:`Checkpointer` writes (a hook that changes its state at
``after_evaluation`` and wants that change kept sorts before it: a priority under
``VERY_HIGH``). A resumed run gives each hook its stored state (:meth:`Hook.load_state_dict`)
before ``before_train``; a hook with no stored state (a checkpoint from before hook states,
or a new hook) starts afresh.

As in detectron2's ``HookBase`` and Lightning's callbacks, a hook keeps its own state and reads
the run through ``trainer`` (``trainer.cfg``, ``trainer.state``: the
:class:`~dakd.engine.state.TrainState`, ``trainer.world``, ``trainer.run_dir``,
``trainer.last``, ``trainer.pending_steps``, ``trainer.meter``: the steps' time, FLOPs and GPU
memory, ``trainer.seconds_of(hook)``: the time a hook has taken). The sweep adds its Tune
report and MLflow logging as hooks (``dakd.sweep.remote.hooks``); the core knows nothing of
either.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from tqdm import tqdm

from dakd.data.loader import eval_batches
from dakd.models import checkpoint as ckpt
from dakd.models import count_parameters
from dakd.models.domain_bn import bn_domain, reestimate

Report = Callable[[dict[str, float], Path | None], None]

# Priorities (lower runs first), with the names and values of mmengine's hook priorities.
HIGHEST = 0
VERY_HIGH = 10
HIGH = 30
ABOVE_NORMAL = 40
NORMAL = 50
BELOW_NORMAL = 60
LOW = 70
VERY_LOW = 90
LOWEST = 100

#: where a checkpoint (``last.pt``) holds the hooks' states, by :attr:`Hook.key`
HOOK_STATES = "hooks"


class Hook:
    """Does nothing at every point; subclasses override the points they act at."""

    #: the order among the loop's hooks: lower first; hooks of one priority in list order
    priority: int = NORMAL
    #: the hook's key in a checkpoint's hook states and in ``TrainResult.seconds``; None: its
    #: class's qualified name. Set it to keep a state across a rename of the class, or to tell
    #: two stateful hooks of one class apart
    name: str | None = None

    @property
    def key(self) -> str:
        """:attr:`name`, else ``module.QualifiedClassName``: a storage key, never looked up by
        the loop or another hook."""
        return self.name or f"{type(self).__module__}.{type(self).__qualname__}"

    def before_train(self, trainer) -> None:
        pass

    def before_step(self, trainer) -> None:
        pass

    def after_backward(self, trainer) -> None:
        pass

    def after_step(self, trainer, terms: dict[str, torch.Tensor]) -> None:
        pass

    def before_evaluation(self, trainer, network: torch.nn.Module) -> None:
        pass

    def after_evaluation(self, trainer, metrics: dict[str, float], checkpoint: Path | None) -> None:
        pass

    def after_train(self, trainer, result) -> None:
        pass

    def on_exception(self, trainer, error: BaseException) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs of this hook (plain data); empty: nothing."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take back what :meth:`state_dict` gave, before ``before_train`` of a resumed run."""


def overrides(hook: Hook, point: str) -> bool:
    """Whether ``hook`` does something at ``point`` (its class overrides :class:`Hook`'s)."""
    return getattr(type(hook), point) is not getattr(Hook, point)


class Checkpointer(Hook):
    """``last.pt`` (the exact, resumable state, the hooks' states included) after every
    evaluation and when a run stops early; ``model.pt`` (the final weights, what later stages
    load) when it reaches its last step. Rank 0 writes; every process waits until the files
    exist."""

    priority = VERY_HIGH

    def before_train(self, trainer) -> None:
        if trainer.world.is_main:
            trainer.run_dir.mkdir(parents=True, exist_ok=True)

    def after_evaluation(self, trainer, metrics, checkpoint) -> None:
        if trainer.world.is_main:
            ckpt.save(trainer.checkpoint(), trainer.last)

    def after_train(self, trainer, result) -> None:
        state, steps = trainer.state, trainer.cfg.train.steps
        if state.step < steps and trainer.pending_steps and trainer.world.is_main:
            ckpt.save(trainer.checkpoint(), trainer.last)  # an early stop keeps its exact state
        if state.step == steps and trainer.world.is_main:
            # the final weights alone: what later stages load (no optimiser or discriminator)
            keep = ("network", "config", "stage", "step", "model")
            final = {k: v for k, v in state.state_dict().items() if k in keep}
            final["model"] = state.weights()
            final["metrics"] = {k: float(v) for k, v in result.metrics.items()}
            final["parameters"] = count_parameters(state.model)
            ckpt.save(final, trainer.run_dir / "model.pt")
        if trainer.world.distributed:
            dist.barrier()  # no process moves on (e.g. to a stage loading model.pt) before rank 0


class MetricsFile(Hook):
    """The run's record in its folder: ``config.json`` (the resolved experiment) at the start,
    one line of ``metrics.jsonl`` per evaluation (rank 0)."""

    priority = HIGH

    def before_train(self, trainer) -> None:
        if trainer.world.is_main:
            (trainer.run_dir / "config.json").write_text(
                json.dumps(trainer.cfg.to_dict(), indent=2)
            )

    def after_evaluation(self, trainer, metrics, checkpoint) -> None:
        if trainer.world.is_main:
            with (trainer.run_dir / "metrics.jsonl").open("a") as handle:
                handle.write(json.dumps(metrics) + "\n")


class Progress(Hook):
    """A tqdm bar on rank 0 (``train.progress``): the loss every ``train.log_interval`` steps,
    the last target mIoU after each evaluation."""

    priority = ABOVE_NORMAL

    def __init__(self):
        self.bar = None
        self.miou = float("nan")

    def before_train(self, trainer) -> None:
        t, state = trainer.cfg.train, trainer.state
        if state.history:
            self.miou = state.history[-1].get("miou", float("nan"))
        self.bar = tqdm(
            total=t.steps,
            initial=state.step,
            desc=f"{trainer.cfg.stage}:{trainer.cfg.name}",
            disable=not (t.progress and trainer.world.is_main),
            dynamic_ncols=True,
            leave=False,
        )

    def after_step(self, trainer, terms) -> None:
        self.bar.update(1)
        if trainer.state.step % trainer.cfg.train.log_interval == 0:
            self.bar.set_postfix(loss=f"{terms['total'].item():.3f}", miou=self.miou)

    def after_evaluation(self, trainer, metrics, checkpoint) -> None:
        self.miou = metrics["miou"]
        self.bar.set_postfix(miou=f"{metrics['miou']:.2f}")

    def after_train(self, trainer, result) -> None:
        self.close()

    def on_exception(self, trainer, error) -> None:
        self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class PreciseBN(Hook):
    """Re-estimate the BatchNorm statistics of each evaluated network with its current weights
    (``train.precise_bn_images`` training images per pair, the first ones of each split, the same on
    every process): the pair a network is evaluated with from its evaluation domain (the target
    in stages that see both domains, else the one domain it trains on), the source pair
    (``domain`` mode) from source images, and in ``blended`` mode the one pair from both halves.
    Running averages lag the weights; this is the statistics of the network as it is (the
    PreciseBN of pycls and detectron2). Training never reads running statistics, so the
    trajectory is unchanged; evaluations and stored weights use these."""

    priority = HIGHEST

    def __init__(self, images: int):
        self.images = images

    def before_evaluation(self, trainer, network) -> None:
        state, n = trainer.state, self.images
        size = trainer.cfg.data.val_batch_size

        def images(role: str, count: int):
            for batch in eval_batches(state.dataset_of(role), size, count):
                yield state.images(batch)

        if not state.two_domains:
            reestimate(network, images(state.stage.supervised_on, n))
        elif state.bn_stats == "blended":
            half = max(n // 2, 1)
            reestimate(network, itertools.chain(images("source", half), images("target", half)))
        else:
            reestimate(network, images("target", n))
            if state.bn_stats == "domain":
                with bn_domain(network, "source", "domain"):
                    reestimate(network, images("source", n))


class ReportCallback(Hook):
    """A plain ``report(metrics, checkpoint)`` function as a hook: called after every
    evaluation with a copy of the metrics, and ``last.pt`` on rank 0 (None elsewhere)."""

    priority = BELOW_NORMAL

    def __init__(self, report: Report):
        self.report = report

    def after_evaluation(self, trainer, metrics, checkpoint) -> None:
        self.report(dict(metrics), checkpoint)


def default_hooks(cfg) -> list[Hook]:
    """What every run does besides its steps: precise BN when ``train.precise_bn_images`` is on, the
    checkpoints, the metrics file and the progress bar (each at its priority)."""
    hooks: list[Hook] = [Checkpointer(), MetricsFile(), Progress()]
    if cfg.train.precise_bn_images:
        hooks.append(PreciseBN(cfg.train.precise_bn_images))
    return hooks


__all__ = [
    "ABOVE_NORMAL",
    "BELOW_NORMAL",
    "HIGH",
    "HIGHEST",
    "HOOK_STATES",
    "LOW",
    "LOWEST",
    "NORMAL",
    "VERY_HIGH",
    "VERY_LOW",
    "Checkpointer",
    "Hook",
    "MetricsFile",
    "PreciseBN",
    "Progress",
    "Report",
    "ReportCallback",
    "default_hooks",
    "overrides",
]
