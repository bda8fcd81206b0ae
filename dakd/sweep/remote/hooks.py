"""The sweep's hooks of the training loop: a trial's MLflow run and its Tune reports, a reused
stage's MLflow run; and the final artifacts of a run (config, weights, evaluation, panel).

Their priorities (``dakd.engine.hooks``) put them after the default hooks, whose files they read
(``last.pt``, ``model.pt``), and in the order a trial's end needs: :class:`SystemMetrics`
(``BELOW_NORMAL``) stops its thread before :class:`TrialTracking` (``LOW``; a stage's
:class:`StageTracking` too) finishes the MLflow run, which happens before :class:`TuneReport`
(``VERY_LOW``) sends the last report, at which Tune may end the trial.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

from dakd.config import ExperimentConfig
from dakd.engine.hooks import BELOW_NORMAL, LOW, VERY_LOW, Hook
from dakd.losses import upsample
from dakd.recipes.stages import error_line
from dakd.runtime.builders import network_from_checkpoint, val_dataset
from dakd.tracking.tags import ERROR, TEACHER_CACHE


class TrialTracking(Hook):
    """A trial's MLflow run as a hook of its training loop: every evaluation's metrics; at the
    end the final artifacts, where the trial's time went (``time/<activity>_s``: ``setup``,
    ``train`` (the trainer alone), ``report``, ``logging``, ``artifacts``, ``total``; see
    bench/sweep_overhead.py) and FINISHED; on an error FAILED and the error in one line as its
    ``error`` tag (an out-of-memory stop says what to change there). The scheduler's stop
    (``SystemExit`` at a Tune report) is left to the driver, which closes the run, so the thread
    ends at once and its actor can be reused (``driver_closes_stops``). ``logger`` None: a
    data-parallel worker other than rank 0, which logs nothing. ``report``: the hook whose time
    counts as ``report`` (the trial's :class:`TuneReport`; the loop times each hook object, so
    no name is looked up)."""

    priority = LOW

    def __init__(
        self,
        logger,
        teacher: str | None,
        started: float,
        driver_closes_stops=True,
        label="",
        report: Hook | None = None,
    ):
        self.logger = logger
        self.report = report
        self.teacher = teacher
        self.started = started
        self.driver_closes_stops = driver_closes_stops
        self.label = label  # the trial's name in its progress lines (empty: none printed)
        self.setup = time.perf_counter() - started  # made just before train() is called

    def after_evaluation(self, trainer, metrics, checkpoint) -> None:
        if self.logger is not None:
            self.logger.log_metrics(metrics, step=int(metrics["step"]))
        if self.label:  # on the driver's console (Ray passes a worker's lines on)
            print(
                f"[trial {self.label}] step {int(metrics['step'])}/{trainer.cfg.train.steps} "
                f"target mIoU {metrics.get('miou', float('nan')):.2f}",
                flush=True,
            )

    def after_train(self, trainer, result) -> None:
        if self.logger is None:
            return
        tic = time.perf_counter()
        log_final_artifacts(self.logger, trainer.cfg, result, self.teacher)
        seconds = {
            "setup": self.setup,
            "report": 0.0 if self.report is None else trainer.seconds_of(self.report),
            "logging": trainer.seconds_of(self),
        }
        seconds["train"] = result.seconds["train"] - seconds["report"] - seconds["logging"]
        seconds["artifacts"] = time.perf_counter() - tic
        times = {f"time/{k}_s": v for k, v in seconds.items()}
        times["time/total_s"] = time.perf_counter() - self.started
        self.logger.log_metrics(times, step=trainer.cfg.train.steps)
        self.logger.finish("FINISHED")

    def on_exception(self, trainer, error) -> None:
        if self.logger is None or (self.driver_closes_stops and isinstance(error, SystemExit)):
            return
        if not isinstance(error, KeyboardInterrupt | SystemExit):
            self.logger.set_tags({ERROR: error_line(error)})
        self.logger.finish("FAILED")


class LossWeights(Hook):
    """The loss weights a trial trains with, as metrics at every evaluation (``weight/loss.kl``,
    ...): under PBT a trial goes on with values other than those it started with (which its
    params keep), and a run's params cannot be logged again with a new value."""

    priority = LOW

    def __init__(self, logger, cfg: ExperimentConfig):
        from dakd.sweep.spec.schedule import pbt_mutable

        flat = cfg.flat()
        self.logger = logger
        self.weights = {
            f"weight/{key}": float(flat[key])
            for key in pbt_mutable()
            if isinstance(flat.get(key), int | float) and not isinstance(flat[key], bool)
        }

    def after_evaluation(self, trainer, metrics, checkpoint) -> None:
        self.logger.log_metrics(self.weights, step=int(metrics["step"]))


class SystemMetrics(Hook):
    """MLflow's system metrics on a trial's run while it trains (``tracking.system_metrics``;
    :func:`dakd.tracking.system.start_system_metrics`): started once the trainer is built, when
    the setting asks for them on the trainer's device (``auto``: a GPU); stopped when the run
    ends, however it ends (a scheduler's stop included), so no thread outlives the trial on a
    reused actor. Its priority puts it before :class:`TrialTracking`, which finishes the run
    after it. A data-parallel worker logs its own machine's under ``system/rank<r>/``
    (``node_id``)."""

    priority = BELOW_NORMAL

    def __init__(self, uri: str, run_id: str, tracking, node_id: str | None = None):
        self.uri, self.run_id, self.tracking, self.node_id = uri, run_id, tracking, node_id
        self.monitor = None

    def before_train(self, trainer) -> None:
        device = trainer.state.device
        if not self.tracking.system_metrics_on(device.type):
            return
        from dakd.tracking.system import start_system_metrics

        interval = self.tracking.system_metrics_interval
        self.monitor = start_system_metrics(self.uri, self.run_id, interval, device, self.node_id)

    def after_train(self, trainer, result) -> None:
        self.stop()

    def on_exception(self, trainer, error) -> None:
        self.stop()

    def stop(self) -> None:
        if self.monitor is not None:
            monitor, self.monitor = self.monitor, None
            monitor.finish()


class TuneReport(Hook):
    """Each evaluation to Tune (or Ray Train) through ``send(metrics, checkpoint)``. The last
    one is sent only after the run has ended (final weights written, MLflow run finished): a
    scheduler that stops trials at their last rung (ASHA's max_t) ends the trial at that
    report, and nothing after it would run. Its stop (``SystemExit``) must end the function:
    swallowed, Tune's wrapper would report once more and wait for a go-ahead that never comes,
    and a reused actor could not start its next trial. Its priority puts it after every other
    hook of a trial."""

    priority = VERY_LOW

    def __init__(self, send: Callable[[dict[str, float], Path | None], None]):
        self.send = send
        self.last: tuple[dict[str, float], Path | None] | None = None

    def after_evaluation(self, trainer, metrics, checkpoint) -> None:
        if int(metrics["step"]) >= trainer.cfg.train.steps:
            self.last = (metrics, checkpoint)
            return
        self.send(metrics, checkpoint)

    def after_train(self, trainer, result) -> None:
        if self.last is not None:
            self.send(*self.last)


class StageTracking(Hook):
    """A reused stage's MLflow run as a hook: each evaluation's metrics and a progress line; at
    the end its config and weights, FINISHED; on an error its ``error`` tag (not for Ctrl-C or
    exits) and FAILED. Its priority puts it after the checkpointer, which writes ``model.pt``."""

    priority = LOW

    def __init__(self, logger, cfg: ExperimentConfig):
        self.logger, self.cfg = logger, cfg

    def after_evaluation(self, trainer, metrics, checkpoint) -> None:
        self.logger.log_metrics(metrics, step=int(metrics["step"]))
        print(
            f"[stage {self.cfg.name}] step {int(metrics['step'])}/{self.cfg.train.steps} "
            f"target mIoU {metrics['miou']:.2f}",
            flush=True,
        )

    def after_train(self, trainer, result) -> None:
        self.logger.log_text(yaml.safe_dump(self.cfg.to_dict(), sort_keys=False), "config.yaml")
        self.logger.log_artifact(self.cfg.run_dir / "model.pt", "weights")
        self.logger.finish("FINISHED")

    def on_exception(self, trainer, error) -> None:
        if not isinstance(error, KeyboardInterrupt | SystemExit):
            self.logger.set_tags({ERROR: error_line(error)})
        self.logger.finish("FAILED")


def panel_of_checkpoints(cfg: ExperimentConfig, checkpoints: dict[str, str], count: int = 4):
    """The prediction panel of the networks stored in ``checkpoints`` (column name -> path):
    image / ground truth / one column per network, on the first ``count`` target val images."""
    from dakd.evaluation.panels import prediction_panel

    val = val_dataset(cfg)
    samples = [val[i] for i in range(min(count, len(val)))]
    images = torch.stack([s["image"] for s in samples])
    labels = torch.stack([s["label"] for s in samples])
    if labels.shape[-2:] != images.shape[-2:]:  # real data: full-resolution labels, shown smaller
        labels = F.interpolate(labels[:, None].float(), images.shape[-2:], mode="nearest")
        labels = labels[:, 0].long()
    predictions = {}
    with torch.no_grad():
        for name, path in checkpoints.items():
            model, _ = network_from_checkpoint(path)
            logits = upsample(model.eval()(images)["output"], labels.shape[-2:])
            predictions[name] = logits.argmax(1)
    return prediction_panel(images, labels, predictions)


def log_final_artifacts(logger, cfg: ExperimentConfig, result, teacher: str | None) -> None:
    """Resolved config, final weights, confusion matrix, per-class table, prediction panel."""
    logger.log_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False), "config.yaml")
    if cfg.stage == "dakd":  # where the teacher's outputs came from
        logger.set_tags({TEACHER_CACHE: "+".join(result.cached_domains) or "live"})
    final = cfg.run_dir / "model.pt"
    if final.exists():
        logger.log_artifact(final, "weights")
    if result.evaluation is not None:
        columns = {"teacher": teacher} if teacher else {}
        columns["student" if cfg.stage in ("dakd", "student_da") else cfg.stage] = str(final)
        panel = panel_of_checkpoints(cfg, columns) if final.exists() else None
        logger.log_evaluation(result.evaluation, panel=panel)
