"""Stages trained once and reused: the teacher, the student-DA baseline, and what builds on them.

A stage's run directory is named by a fingerprint of its config (everything that changes the
weights), so the same teacher is trained once and found again by every later run that needs it.
The calibration study of the embedded benchmark (``python -m dakd calibrate``) is built on
these stages in :mod:`dakd.recipes.calibration`.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dakd import loss_terms
from dakd.config import ExperimentConfig, from_dict
from dakd.engine.hooks import Hook
from dakd.engine.trainer import train
from dakd.models import checkpoint as ckpt
from dakd.paradigms import AUTO, AUTO_STAGES


def stage_config(base: ExperimentConfig, stage: str, **changes: Any) -> ExperimentConfig:
    """``base`` with another stage and dotted ``changes``, validated, named by its fingerprint."""
    overrides = {"stage": stage, **{k.replace("__", "."): v for k, v in changes.items()}}
    cfg = from_dict(base.to_dict(), overrides)
    cfg.name = f"{stage}-{cfg.fingerprint()}"
    return cfg


#: Keys only distillation reads besides the loss terms' weights (:func:`distill_only`).
DISTILL_ONLY = (
    "paradigm",
    "network",
    "teacher",
    "init",
    "loss.target",
    "loss.temperature",
    "loss.pseudo_threshold",
    "distill.levels",
    "distill.sequential_split",
)


def distill_only() -> list[str]:
    """Keys only distillation reads: :data:`DISTILL_ONLY` and the weight of every registered
    term that is ``distill_only`` (``dakd.loss_terms``: ``loss.kl``, ``loss.mse``,
    ``loss.pseudo``, ...). The stages a DAKD run depends on (teacher-DA, student-DA) are built
    with these at their defaults, so runs that differ only here share the same stages."""
    return [*DISTILL_ONLY, *loss_terms.distill_only_keys()]


#: The network each reused stage does not train: its keys are reset to their defaults too, so
#: a sweep over teachers shares one student-DA baseline and a sweep over students one teacher.
UNUSED_NETWORK = {"teacher_da": "models.student.", "student_da": "models.teacher."}


def dependency_config(
    cfg: ExperimentConfig, stage: str, overrides: dict[str, Any] | None = None
) -> ExperimentConfig:
    """The ``stage`` (teacher_da or student_da) that ``cfg`` builds on, named by its fingerprint.

    Everything that shapes the stage (data, its network, optimiser, adversarial weights, seed)
    comes from ``cfg``; distillation-only keys and the network the stage does not train are
    reset to their defaults; ``overrides`` (dotted, e.g. ``{"train.steps": 600}``) give the
    stage its own schedule.
    """
    defaults = ExperimentConfig().flat()
    changes: dict[str, Any] = {key: defaults[key] for key in distill_only() if key in defaults}
    unused = UNUSED_NETWORK.get(stage)
    if unused:
        changes.update({k: v for k, v in defaults.items() if k.startswith(unused)})
        changes[unused + "args"] = {}
    changes["stage"] = stage
    changes.update(overrides or {})
    dep = from_dict(cfg.to_dict(), changes)
    # the other registered terms' distillation-only weights: unset, as in a default config
    dep.loss.terms = {
        name: weight
        for name, weight in dep.loss.terms.items()
        if f"loss.{name}" not in distill_only()
    }
    dep.name = f"{stage}-{dep.fingerprint()}"
    return dep


def requirements(
    cfg: ExperimentConfig,
    overrides: dict[str, Any] | None = None,
    per_stage: dict[str, dict[str, Any]] | None = None,
) -> dict[str, ExperimentConfig]:
    """The stage configs behind each ``auto`` field of ``cfg``: ``{"teacher": ..., "init": ...}``.
    ``per_stage``: further overrides of one stage (``{"teacher_da": {"seed": 0}}``)."""
    return {
        field: dependency_config(
            cfg, stage, {**(overrides or {}), **(per_stage or {}).get(stage, {})}
        )
        for field, stage in AUTO_STAGES.items()
        if getattr(cfg, field) == AUTO
    }


def fair_baseline_config(
    cfg: ExperimentConfig, overrides: dict[str, Any] | None = None
) -> ExperimentConfig:
    """The fair baseline of the DAKD runs of ``cfg``: the student-DA stage trained on, from its
    own final weights (``init: auto``), for DAKD's steps, without a teacher. What every gain a
    sweep or the calibration reports is measured against: DAKD's extra steps alone, with no
    distillation. ``overrides`` are the reused stages' (they find the same student-DA stage);
    the schedule is the DAKD run's own."""
    changes = {
        **(overrides or {}),
        "init": AUTO,
        "train.steps": cfg.train.steps,
        "train.eval_interval": cfg.train.eval_interval,
    }
    return dependency_config(cfg, "student_da", changes)


def is_fair_baseline(cfg: ExperimentConfig) -> bool:
    """Whether ``cfg`` is a fair baseline (student-DA trained on from the student-DA stage)."""
    return cfg.stage == "student_da" and bool(cfg.init)


def stage_label(cfg: ExperimentConfig) -> str:
    """How a stage is named to a person (MLflow run names, logs, failures), e.g.
    ``fair baseline seed=0 synth_to_real``."""
    kind = "fair baseline" if is_fair_baseline(cfg) else cfg.stage
    return f"{kind} seed={cfg.seed} {cfg.data.scenario}"


def with_stages(cfg: ExperimentConfig, checkpoints: dict[str, str]) -> ExperimentConfig:
    """``cfg`` with its ``auto`` fields replaced by the given checkpoint paths."""
    changes = {field: checkpoints[field] for field in AUTO_STAGES if getattr(cfg, field) == AUTO}
    if not changes:
        return cfg
    out = from_dict(cfg.to_dict(), changes)
    out.name = cfg.name
    return out


#: Written into a stage's run folder when its training failed: what the trials that build on
#: it report instead of training it again (cleared when a sweep trains it anew).
FAILURE_FILE = "FAILED.json"


class StageFailedError(RuntimeError):
    """A stage a run builds on failed; the message names the stage, how it differs from its
    peers, and the cause."""


def error_line(err: BaseException) -> str:
    """An exception as one line: the innermost cause's type and the first line of its message
    (a Ray task error wraps the exception raised in the task)."""
    cause = err
    while getattr(cause, "cause", None) is not None and cause.cause is not cause:
        cause = cause.cause
    text = str(cause).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(cause).__name__}: {first}" if first else type(cause).__name__


def mark_failed(cfg: ExperimentConfig, cause: str, difference: str = "") -> str:
    """Record that stage ``cfg`` failed; returns the one-line message the trials report."""
    what = stage_label(cfg) + (f" ({difference})" if difference else "")
    message = f"stage {what} failed: {cause}"
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    (cfg.run_dir / FAILURE_FILE).write_text(json.dumps({"message": message, "time": time.time()}))
    return message


def failure_of(cfg: ExperimentConfig) -> str | None:
    """The recorded failure of stage ``cfg`` (None when it has none)."""
    path = cfg.run_dir / FAILURE_FILE
    if not path.is_file():
        return None
    try:
        return str(json.loads(path.read_text())["message"])
    except (OSError, ValueError, KeyError):
        return f"stage {cfg.stage} failed ({path} is unreadable)"


def clear_failure(cfg: ExperimentConfig) -> None:
    (cfg.run_dir / FAILURE_FILE).unlink(missing_ok=True)


def run_stage(
    cfg: ExperimentConfig,
    log: Callable[[str], None] = print,
    report: Callable[[dict[str, float], Path], None] | None = None,
    hooks: Sequence[Hook] = (),
) -> dict[str, Any]:
    """Train ``cfg`` unless its finished weights (``model.pt``) already exist; return its summary.
    ``report`` and ``hooks`` are :func:`dakd.engine.trainer.train`'s."""
    final = cfg.run_dir / "model.pt"
    if final.exists():
        state = ckpt.load(final)
        log(
            f"reusing {cfg.stage} {cfg.run_dir} (mIoU {state['metrics'].get('miou', math.nan):.2f})"
        )
        return {
            "checkpoint": str(final),
            "metrics": state["metrics"],
            "seconds": 0.0,
            "reused": True,
        }
    log(f"training {cfg.stage} -> {cfg.run_dir}")
    tic = time.perf_counter()
    result = train(cfg, report=report, hooks=hooks)
    seconds = time.perf_counter() - tic
    log(f"  {cfg.stage}: target mIoU {result.metrics['miou']:.2f} in {seconds:.0f} s")
    return {
        "checkpoint": str(final),
        "metrics": result.metrics,
        "seconds": seconds,
        "reused": False,
    }
