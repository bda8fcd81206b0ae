"""A run's evaluation on its target val split, and the metrics it reports.

``dakd.evaluation.segmentation`` holds the evaluator (one confusion matrix per split); this module applies it
to a run: the val split of the experiment, shared between data-parallel processes, the metrics
in percent with the source dataset's protocols, and every metric name a run may report (what a
sweep may optimise or stop on).
"""

from __future__ import annotations

from typing import Any

from dakd import loss_terms as terms_registry
from dakd.config import ExperimentConfig, current_tree, from_dict
from dakd.data.datasets import protocols
from dakd.data.labels import CLASS_NAMES
from dakd.data.loader import eval_batches
from dakd.evaluation.segmentation import SegMetrics, evaluate
from dakd.runtime.builders import network_from_checkpoint, val_dataset
from dakd.runtime.device import training_device
from dakd.runtime.distributed import World, current_world
from dakd.runtime.performance import TIMING_KEYS


def metrics_of(result: SegMetrics, cfg: ExperimentConfig) -> dict[str, float]:
    """An evaluation's metrics in percent, plus the source dataset's class-subset protocols
    (SYNTHIA: ``miou16``, ``miou13``)."""
    out = result.as_dict()
    for name, classes in protocols(cfg.data).items():
        out[name] = 100.0 * result.miou_over(classes)
    return out


#: The loss terms of every step a run can report (``loss/<term>``), by stage and paradigm;
#: the distillation terms' per domain follow them (:func:`loss_terms`).
STEP_TERMS = ("total", "seg", "seg_aux", "adv_output", "adv_feature", "disc", "distill")


def loss_terms() -> tuple[str, ...]:
    """Every loss term a step can report: :data:`STEP_TERMS`, then each registered
    distillation term per domain (``kl_source``, ..., ``kl_target``, ...)."""
    return (*STEP_TERMS, *terms_registry.metric_names())


def reported_metrics(cfg: ExperimentConfig) -> list[str]:
    """Every metric name an evaluation of ``cfg`` may report (``report`` and Tune): mIoU,
    pixel accuracy, the step, learning rate, what a step costs (``dakd.runtime.performance``: time,
    TFLOP/s, GPU memory), per-class IoU, the source dataset's protocols (SYNTHIA: ``miou16``,
    ``miou13``) and the loss terms."""
    names = ["miou", "pixel_acc", "step", "lr", *TIMING_KEYS, "raw/miou", "raw/pixel_acc"]
    names += list(protocols(cfg.data))
    names += [f"iou/{name.replace(' ', '_')}" for name in CLASS_NAMES]
    return names + [f"loss/{term}" for term in loss_terms()]


def evaluate_on(
    model, val, cfg: ExperimentConfig, device, world: World | None = None
) -> SegMetrics:
    """Evaluate on the val split; data-parallel processes each take a share of the images and
    sum their confusion matrices (the result equals one process's evaluation exactly)."""
    world = world or current_world()
    batches = eval_batches(
        val, cfg.data.val_batch_size, cfg.data.val_size, rank=world.rank, world_size=world.size
    )
    return evaluate(model, batches, device=device)


def evaluation_tree(stored: dict[str, Any]) -> dict[str, Any]:
    """A run's stored config as an evaluation reads it: its data, networks and evaluation
    settings, without what only its training needed (the teacher, the initial weights, the
    adversarial stage and the terms that need one, such as ``train.self_training``)."""
    train = {**stored.get("train", {}), "self_training": 0.0}
    return {**stored, "stage": "source_only", "init": "", "teacher": "", "train": train}


def evaluate_checkpoint(path, overrides: dict[str, Any] | None = None):
    """Evaluate a checkpoint's network on its experiment's target val split.

    ``overrides`` (dotted keys) change the experiment, e.g. ``{"data.target": "dashcam"}``.
    Returns the resolved config, the network description and the metrics.
    """
    model, state = network_from_checkpoint(path)
    # evaluation needs neither the teacher nor the initial weights of the run
    # a stored config is read under the names it was written with (dakd.config.renamed)
    cfg = from_dict(evaluation_tree(current_tree(state["config"], note=False)), overrides or {})
    device = training_device(cfg.train.device)
    return cfg, state["network"], evaluate_on(model.to(device), val_dataset(cfg), cfg, device)
