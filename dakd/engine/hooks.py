"""The points of the training loop where work other than the step happens, and the hooks that
do it: checkpoints, the metrics file, progress, precise BatchNorm and plain ``report`` callbacks.

The loop (:func:`dakd.engine.trainer.train`) calls every hook, in list order, at these points:

* ``before_train(loop)``: once, after a resumed state is loaded, before the first step;
* ``after_step(loop, terms)``: after every step, with its loss terms (tensors);
* ``before_evaluation(loop, network)``: before each network an evaluation reads (the trained
  one, then the weight average when ``train.ema_decay`` is on), in train mode's statistics;
* ``after_evaluation(loop, metrics, checkpoint)``: after every evaluation, with its metrics and
  ``last.pt`` (None on processes other than rank 0, which alone writes files);
* ``after_train(loop, result)``: once, when the run ends without an error;
* ``on_exception(loop, error)``: when anything in ``train`` raises, the trainer's construction
  included (``loop.state`` is None then); the error propagates after every hook has seen it.

As in detectron2's ``HookBase`` and Lightning's callbacks, a hook keeps its own state and reads
the run through ``loop`` (``loop.cfg``, ``loop.state``, ``loop.world``, ``loop.run_dir``,
``loop.last``, ``loop.pending_steps``, ``loop.meter``: the steps' time, FLOPs and GPU memory).
The sweep adds its Tune report and MLflow logging as hooks (``dakd.sweep.remote.trial``); the core knows
nothing of either.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from dakd.data.loader import eval_batches
from dakd.models import checkpoint as ckpt
from dakd.models import count_parameters
from dakd.models.domain_bn import bn_domain, reestimate

Report = Callable[[dict[str, float], Path | None], None]


class Hook:
    """Does nothing at every point; subclasses override the points they act at."""

    def before_train(self, loop) -> None:
        pass

    def after_step(self, loop, terms: dict[str, torch.Tensor]) -> None:
        pass

    def before_evaluation(self, loop, network: torch.nn.Module) -> None:
        pass

    def after_evaluation(self, loop, metrics: dict[str, float], checkpoint: Path | None) -> None:
        pass

    def after_train(self, loop, result) -> None:
        pass

    def on_exception(self, loop, error: BaseException) -> None:
        pass


class Checkpointer(Hook):
    """``last.pt`` (the exact, resumable state) after every evaluation and when a run stops
    early; ``model.pt`` (the final weights, what later stages load) when it reaches its last
    step. Rank 0 writes; every process waits until the files exist."""

    def before_train(self, loop) -> None:
        if loop.world.is_main:
            loop.run_dir.mkdir(parents=True, exist_ok=True)

    def after_evaluation(self, loop, metrics, checkpoint) -> None:
        if loop.world.is_main:
            ckpt.save(loop.state.state_dict(), loop.last)

    def after_train(self, loop, result) -> None:
        trainer, steps = loop.state, loop.cfg.train.steps
        if trainer.step < steps and loop.pending_steps and loop.world.is_main:
            ckpt.save(trainer.state_dict(), loop.last)  # an early stop keeps its exact state
        if trainer.step == steps and loop.world.is_main:
            # the final weights alone: what later stages load (no optimiser or discriminator)
            keep = ("network", "config", "stage", "step", "model")
            final = {k: v for k, v in trainer.state_dict().items() if k in keep}
            final["model"] = trainer.weights()
            final["metrics"] = {k: float(v) for k, v in result.metrics.items()}
            final["parameters"] = count_parameters(trainer.model)
            ckpt.save(final, loop.run_dir / "model.pt")
        if loop.world.distributed:
            dist.barrier()  # no process moves on (e.g. to a stage loading model.pt) before rank 0


class MetricsFile(Hook):
    """The run's record in its folder: ``config.json`` (the resolved experiment) at the start,
    one line of ``metrics.jsonl`` per evaluation (rank 0)."""

    def before_train(self, loop) -> None:
        if loop.world.is_main:
            (loop.run_dir / "config.json").write_text(json.dumps(loop.cfg.to_dict(), indent=2))

    def after_evaluation(self, loop, metrics, checkpoint) -> None:
        if loop.world.is_main:
            with (loop.run_dir / "metrics.jsonl").open("a") as handle:
                handle.write(json.dumps(metrics) + "\n")


class Progress(Hook):
    """A tqdm bar on rank 0 (``train.progress``): the loss every ``train.log_interval`` steps,
    the last target mIoU after each evaluation."""

    def __init__(self):
        self.bar = None
        self.miou = float("nan")

    def before_train(self, loop) -> None:
        t = loop.cfg.train
        if loop.state.history:
            self.miou = loop.state.history[-1].get("miou", float("nan"))
        self.bar = tqdm(
            total=t.steps,
            initial=loop.state.step,
            desc=f"{loop.cfg.stage}:{loop.cfg.name}",
            disable=not (t.progress and loop.world.is_main),
            dynamic_ncols=True,
            leave=False,
        )

    def after_step(self, loop, terms) -> None:
        self.bar.update(1)
        if loop.state.step % loop.cfg.train.log_interval == 0:
            self.bar.set_postfix(loss=f"{terms['total'].item():.3f}", miou=self.miou)

    def after_evaluation(self, loop, metrics, checkpoint) -> None:
        self.miou = metrics["miou"]
        self.bar.set_postfix(miou=f"{metrics['miou']:.2f}")

    def after_train(self, loop, result) -> None:
        self.close()

    def on_exception(self, loop, error) -> None:
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

    def __init__(self, images: int):
        self.images = images

    def before_evaluation(self, loop, network) -> None:
        trainer, n = loop.state, self.images
        size = loop.cfg.data.val_batch_size

        def images(role: str, count: int):
            for batch in eval_batches(trainer.dataset_of(role), size, count):
                yield trainer.images(batch)

        if not trainer.two_domains:
            reestimate(network, images(trainer.stage.supervised_on, n))
        elif trainer.bn_stats == "blended":
            half = max(n // 2, 1)
            reestimate(network, itertools.chain(images("source", half), images("target", half)))
        else:
            reestimate(network, images("target", n))
            if trainer.bn_stats == "domain":
                with bn_domain(network, "source", "domain"):
                    reestimate(network, images("source", n))


class ReportCallback(Hook):
    """A plain ``report(metrics, checkpoint)`` function as a hook: called after every
    evaluation with a copy of the metrics, and ``last.pt`` on rank 0 (None elsewhere)."""

    def __init__(self, report: Report):
        self.report = report

    def after_evaluation(self, loop, metrics, checkpoint) -> None:
        self.report(dict(metrics), checkpoint)


def default_hooks(cfg) -> list[Hook]:
    """What every run does besides its steps, in the order it happens at an evaluation:
    precise BN (before), then the checkpoint, the metrics file and the progress bar."""
    hooks: list[Hook] = [Checkpointer(), MetricsFile(), Progress()]
    if cfg.train.precise_bn_images:
        hooks.insert(0, PreciseBN(cfg.train.precise_bn_images))
    return hooks


__all__ = [
    "Checkpointer",
    "Hook",
    "MetricsFile",
    "PreciseBN",
    "Progress",
    "Report",
    "ReportCallback",
    "default_hooks",
]
