"""Stages trained once and reused: the teacher, the student-DA baseline, and what builds on them.

A stage's run directory is named by a fingerprint of its config (everything that changes the
weights), so the same teacher is trained once and found again by every later run that needs it.
The calibration study of the embedded benchmark (``python -m dakd calibrate``) is built here.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dakd import checkpoint as ckpt
from dakd.config import ExperimentConfig, from_dict, load_config
from dakd.hooks import Hook
from dakd.train import train

#: Rows of the calibration table, in order: (row name, key of its builder).
CALIBRATION_ROWS = (
    ("source-only", "source_only"),
    ("oracle", "oracle"),
    ("teacher-DA", "teacher_da"),
    ("teacher (shipped)", "teacher_shipped"),
    ("student-DA", "student_da"),
    ("student-DA + extra steps", "student_da_long"),
    ("DAKD (a)", "dakd_a"),
    ("DAKD (b)", "dakd_b"),
    ("DAKD (c)", "dakd_c"),
    ("DAKD (d)", "dakd_d"),
    ("oracle teacher", "oracle_teacher"),
    ("DAKD (b), oracle teacher", "dakd_b_oracle_teacher"),
)
#: Rows whose BatchNorm statistics the calibration checks against a re-estimate on target-train
#: images (a stage that saw both domains; the target statistics must be the target's).
BN_CHECK_ROWS = ("student_da", "dakd_c")


def stage_config(base: ExperimentConfig, stage: str, **changes: Any) -> ExperimentConfig:
    """``base`` with another stage and dotted ``changes``, validated, named by its fingerprint."""
    overrides = {"stage": stage, **{k.replace("__", "."): v for k, v in changes.items()}}
    cfg = from_dict(base.to_dict(), overrides)
    cfg.name = f"{stage}-{cfg.fingerprint()}"
    return cfg


AUTO = "auto"
"""``teacher: auto`` / ``init: auto``: use the reused teacher-DA / student-DA stage of this config."""

#: Keys only distillation reads. The stages a DAKD run depends on (teacher-DA, student-DA) are
#: built with these at their defaults, so runs that differ only here share the same stages.
DISTILL_ONLY = (
    "paradigm",
    "network",
    "teacher",
    "init",
    "loss.kl",
    "loss.mse",
    "loss.pseudo",
    "loss.target",
    "loss.temperature",
    "loss.pseudo_threshold",
    "distill.levels",
    "distill.sequential_split",
)

#: What an ``auto`` field stands for: config field -> the stage that provides its checkpoint.
AUTO_STAGES = {"teacher": "teacher_da", "init": "student_da"}

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
    changes: dict[str, Any] = {key: defaults[key] for key in DISTILL_ONLY}
    unused = UNUSED_NETWORK.get(stage)
    if unused:
        changes.update({k: v for k, v in defaults.items() if k.startswith(unused)})
    changes["stage"] = stage
    changes.update(overrides or {})
    dep = from_dict(cfg.to_dict(), changes)
    dep.name = f"{stage}-{dep.fingerprint()}"
    return dep


def requirements(
    cfg: ExperimentConfig, overrides: dict[str, Any] | None = None
) -> dict[str, ExperimentConfig]:
    """The stage configs behind each ``auto`` field of ``cfg``: ``{"teacher": ..., "init": ...}``."""
    return {
        field: dependency_config(cfg, stage, overrides)
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
    ``report`` and ``hooks`` are :func:`dakd.train.train`'s."""
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


def calibration_configs(
    base: ExperimentConfig,
    seed: int,
    distill_steps: int,
    teacher_steps: int = 0,
    teacher: str = "shipped",
) -> dict[str, Callable]:
    """Builders of each row's config for one seed; later rows need earlier rows' checkpoints.

    The fair baseline trains student-DA on for exactly the steps DAKD takes from the same start.
    DAKD (a)-(d) distil from the scenario's shipped teacher (``teacher="shipped"``,
    ``dakd.da_teacher``: fixed while the student side's seed varies) or from the teacher-DA
    stage of the seed (``teacher="stage"``; ``teacher_steps``, default ``base.train.steps``,
    gives it a schedule of its own). The 300-step teacher-DA stage is a row either way.
    """

    def make(stage: str, **changes):
        return stage_config(base, stage, seed=seed, **changes)

    seeded = stage_config(base, base.stage, seed=seed)

    def start(done):
        return done["student_da"]["checkpoint"]

    later = {
        "train__steps": distill_steps,
        "train__eval_interval": min(base.train.eval_interval, distill_steps),
    }
    teacher_row = {"shipped": "teacher_shipped", "stage": "teacher_da"}[teacher]

    def dakd(paradigm: str, teacher: str = teacher_row):
        return lambda done: make(
            "dakd",
            paradigm=paradigm,
            init=start(done),
            teacher=done[teacher]["checkpoint"],
            **later,
        )

    def fair(done):
        # what a sweep trains for DAKD runs of these steps (the distillation keys play no part)
        schedule = stage_config(base, "student_da", seed=seed, **later)
        return with_stages(fair_baseline_config(schedule), {"init": start(done)})

    shipped = (
        {"teacher_shipped": lambda done: shipped_teacher(base)} if teacher == "shipped" else {}
    )
    return {
        **shipped,
        "source_only": lambda done: make("source_only"),
        "oracle": lambda done: make("oracle"),
        # the distillation path's check: a teacher trained on target labels must teach
        "oracle_teacher": lambda done: make("oracle", network="teacher"),
        # the two reused stages are built as sweeps build them, so both find the same ones
        "teacher_da": lambda done: dependency_config(
            seeded,
            "teacher_da",
            {"train.steps": teacher_steps or base.train.steps},
        ),
        "student_da": lambda done: dependency_config(seeded, "student_da"),
        "student_da_long": fair,
        **{f"dakd_{p}": dakd(p) for p in "abcd"},
        "dakd_b_oracle_teacher": dakd("b", "oracle_teacher"),
    }


def shipped_teacher(base: ExperimentConfig) -> dict[str, Any]:
    """The calibration row of the scenario's shipped teacher: evaluated, not trained (it is
    the same for every seed)."""
    from dakd.da_teacher import SHIPPED_DIR, check_teacher, teacher_file
    from dakd.validation import evaluate_checkpoint

    path = str(Path(SHIPPED_DIR) / teacher_file(base.data.scenario))
    check_teacher(from_dict(base.to_dict(), {"teacher": path}))
    _, _, result = evaluate_checkpoint(path, {"train.threads": base.train.threads})
    return {"checkpoint": path, "metrics": {"miou": 100.0 * result.miou}, "reused": True}


def calibrate(
    config_path: str | None,
    scenarios: Sequence[str],
    seeds: Sequence[int],
    overrides: list[str] | None = None,
    distill_steps: int = 0,
    teacher_steps: int = 0,
    out: Path | None = None,
    log: Callable[[str], None] = print,
    teacher: str = "shipped",
    command: str = "",
) -> dict[str, Any]:
    """Run every calibration row for each scenario and seed; write and return the table (with
    the ``command`` that made it and the machine it ran on)."""
    from dakd.pretrain import machine

    results: dict[str, dict[str, list[float]]] = {}
    seconds: dict[str, list[float]] = {}
    bounds: dict[str, float] = {}
    bn_check: dict[str, dict[str, list[list[float]]]] = {}
    for scenario in scenarios:
        # each row sets its own stage, teacher and start; the base only carries the recipe
        fixed = ["stage=student_da", "teacher=", "init=", f"data.scenario={scenario}"]
        base = load_config(config_path, list(overrides or []) + fixed)
        extra = distill_steps or base.train.steps
        rows = results.setdefault(scenario, {name: [] for name, _ in CALIBRATION_ROWS})
        bounds[scenario] = logit_grid_bound(base)
        log(
            f"{scenario}: a perfect prediction on the student's logit grid scores "
            f"{bounds[scenario]:.1f} mIoU"
        )
        checks = bn_check.setdefault(scenario, {key: [] for key in BN_CHECK_ROWS})
        for seed in seeds:
            builders = calibration_configs(base, seed, extra, teacher_steps, teacher)
            done: dict[str, dict[str, Any]] = {}
            for name, key in CALIBRATION_ROWS:
                if key not in builders:
                    continue  # the shipped teacher's row, when DAKD distils from the stage
                made = builders[key](done)
                done[key] = made if isinstance(made, dict) else run_stage(made, log)
                rows[name].append(float(done[key]["metrics"]["miou"]))
                if not done[key]["reused"]:
                    seconds.setdefault(key, []).append(done[key]["seconds"])
                if key in BN_CHECK_ROWS:
                    checks[key].append(list(bn_reestimation_check(done[key]["checkpoint"])))
    table = format_calibration(results, seeds, bounds, bn_check)
    log(table)
    summary = {
        "results": results,
        "seconds": seconds,
        "seeds": list(seeds),
        "teacher": teacher,
        "table": table,
        "targets": calibration_targets(results),
        "logit_grid_bound": bounds,
        "bn_check": bn_check,
        "command": command,
        "machine": machine(),  # dakd.pretrain
    }
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "calibration.md").write_text(table + "\n")
        (out / "calibration.json").write_text(json.dumps(summary, indent=2))
        plot_calibration(results, out / "calibration.png")
    return summary


def plot_calibration(results: dict[str, dict[str, list[float]]], path: Path) -> Path:
    """Bars of mean target mIoU per row and scenario, seed standard deviation as error bars,
    each seed's value as a dot (so the spread is seen, not just summarised)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [name for name, _ in CALIBRATION_ROWS]
    scenarios = list(results)
    width = 0.8 / max(len(scenarios), 1)
    fig, ax = plt.subplots(figsize=(9, 4))
    for k, scenario in enumerate(scenarios):
        x = [i + (k - (len(scenarios) - 1) / 2) * width for i in range(len(rows))]
        stats = [mean_std(results[scenario][row]) for row in rows]
        ax.bar(
            x,
            [m for m, _ in stats],
            width,
            yerr=[s for _, s in stats],
            capsize=3,
            label=scenario.replace("_", "-"),
            alpha=0.8,
        )
        for xi, row in zip(x, rows, strict=True):
            values = results[scenario][row]
            ax.plot([xi] * len(values), values, "k.", markersize=4)
    ax.set_xticks(range(len(rows)), rows, rotation=20, ha="right")
    ax.set_ylabel("target val mIoU (%)")
    ax.set_title("Embedded benchmark calibration (mean +- std over seeds; dots: seeds)")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _best(*names: str) -> Callable[[dict[str, float]], float]:
    return lambda row: max(row[n] for n in names)


def _row(name: str) -> Callable[[dict[str, float]], float]:
    return lambda row: row[name]


def _const(value: float) -> Callable[[dict[str, float]], float]:
    return lambda row: value


#: The embedded benchmark's targets: (what, a, b, margin, rows read): per seed,
#: a(row) - b(row) >= margin (``None``: strictly greater); the target holds when every seed
#: meets it (the mean of the per-seed differences is shown too). Calibration v3: DAKD distils
#: from the shipped teacher; every gain is measured against the fair baseline.
_FAIR = "student-DA + extra steps"
_DAKD = ("DAKD (a)", "DAKD (b)", "DAKD (c)", "DAKD (d)")
CALIBRATION_TARGETS = (
    (
        "teacher (shipped) >= student-DA + 5",
        _row("teacher (shipped)"),
        _row("student-DA"),
        5.0,
        ("teacher (shipped)", "student-DA"),
    ),
    ("best DAKD paradigm >= fair baseline + 2", _best(*_DAKD), _row(_FAIR), 2.0, (*_DAKD, _FAIR)),
    ("DAKD (c) >= fair baseline + 1", _row("DAKD (c)"), _row(_FAIR), 1.0, ("DAKD (c)", _FAIR)),
    ("DAKD (d) >= fair baseline + 1", _row("DAKD (d)"), _row(_FAIR), 1.0, ("DAKD (d)", _FAIR)),
    (
        "source-only < student-DA",
        _row("student-DA"),
        _row("source-only"),
        None,
        ("student-DA", "source-only"),
    ),
    ("student-DA < fair baseline", _row(_FAIR), _row("student-DA"), None, (_FAIR, "student-DA")),
    (
        "DAKD (b) with an oracle teacher >= student-DA + 5",
        _row("DAKD (b), oracle teacher"),
        _row("student-DA"),
        5.0,
        ("DAKD (b), oracle teacher", "student-DA"),
    ),
    (
        "stretch: best DAKD paradigm >= its teacher (shipped)",
        _best(*_DAKD),
        _row("teacher (shipped)"),
        0.0,
        (*_DAKD, "teacher (shipped)"),
    ),
    (
        "teacher-DA (300 steps) >= student-DA + 3",
        _row("teacher-DA"),
        _row("student-DA"),
        3.0,
        ("teacher-DA", "student-DA"),
    ),
    ("oracle >= 50", _row("oracle"), _const(50.0), 0.0, ("oracle",)),
    (
        "source-only <= oracle - 15",
        _row("oracle"),
        _row("source-only"),
        15.0,
        ("oracle", "source-only"),
    ),
)
#: The student side may not get weaker than calibration v2 measured it: per scenario, the
#: mean over seeds of these rows is at least this (target val mIoU, %).
STUDENT_FLOORS = {
    "synth_to_real": {"student-DA": 12.3, _FAIR: 14.3},
    "real_to_real": {"student-DA": 14.6, _FAIR: 15.3},
}
#: Largest standard deviation over seeds any row may have.
MAX_SEED_STD = 2.0


def calibration_targets(results: dict[str, dict[str, list[float]]]) -> list[dict[str, Any]]:
    """Each target of :data:`CALIBRATION_TARGETS` per scenario: the per-seed (paired)
    differences, their mean, whether the mean meets it and whether every seed does; and the
    spread target (every row's standard deviation over seeds <= :data:`MAX_SEED_STD`)."""
    checks = []
    for scenario, rows in results.items():
        for what, a, b, margin, needs in CALIBRATION_TARGETS:
            if not all(rows.get(name) for name in needs):
                continue
            seeds = len(rows[needs[0]])
            at = [{name: rows[name][i] for name in needs} for i in range(seeds)]
            per_seed = [a(row) - b(row) for row in at]
            mean = statistics.fmean(per_seed)
            checks.append(
                {
                    "scenario": scenario,
                    "target": what,
                    "difference": mean,
                    "per_seed": per_seed,
                    "met": _meets(mean, margin),
                    "every_seed": all(_meets(d, margin) for d in per_seed),
                }
            )
        for name, floor in STUDENT_FLOORS.get(scenario, {}).items():
            if rows.get(name):
                mean = statistics.fmean(rows[name])
                checks.append(
                    {
                        "scenario": scenario,
                        "target": f"{name} mean >= {floor:g} (calibration v2)",
                        "difference": mean - floor,
                        "per_seed": [],
                        "met": mean >= floor,
                        "every_seed": mean >= floor,
                    }
                )
        spreads = {name: mean_std(v)[1] for name, v in rows.items() if len(v) > 1}
        if spreads:
            worst = max(spreads, key=spreads.get)
            ok = spreads[worst] <= MAX_SEED_STD
            checks.append(
                {
                    "scenario": scenario,
                    "target": f"every row's std over seeds <= {MAX_SEED_STD:g} (largest: {worst})",
                    "difference": spreads[worst],
                    "per_seed": [],
                    "met": ok,
                    "every_seed": ok,
                }
            )
    return checks


def _meets(difference: float, margin: float | None) -> bool:
    """Whether ``difference`` meets a target's margin (``None``: strictly greater than 0)."""
    return difference > 0 if margin is None else difference >= margin


def format_targets(checks: list[dict[str, Any]]) -> str:
    """A Markdown table of :func:`calibration_targets`."""
    lines = [
        "| scenario | target | difference of means | per seed | met | in every seed |",
        "|---|---|---|---|---|---|",
    ]
    for c in checks:
        seeds = ", ".join(f"{d:+.1f}" for d in c["per_seed"])
        lines.append(
            f"| {c['scenario']} | {c['target']} | {c['difference']:+.1f} | {seeds} | "
            f"{'yes' if c['met'] else 'no'} | {'yes' if c['every_seed'] else 'no'} |"
        )
    return "\n".join(lines)


def format_calibration(
    results: dict[str, dict[str, list[float]]],
    seeds: Sequence[int],
    bounds: dict[str, float] | None = None,
    bn_check: dict[str, dict[str, list[list[float]]]] | None = None,
) -> str:
    """A Markdown table: rows, then per scenario the mean +- std of target val mIoU; the
    targets; the logit-grid bound and the BatchNorm check when given."""
    scenarios = list(results)
    lines = [
        f"Target val mIoU (%), mean +- std over seeds {list(seeds)}",
        "",
        "| row | " + " | ".join(scenarios) + " |",
        "|---|" + "---|" * len(scenarios),
    ]
    for name, _ in CALIBRATION_ROWS:
        cells = []
        for scenario in scenarios:
            mean, std = mean_std(results[scenario][name])
            cells.append(f"{mean:.1f} +- {std:.1f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    checks = calibration_targets(results)
    if checks:
        lines += [
            "",
            "The benchmark's targets (differences in mIoU points):",
            "",
            format_targets(checks),
        ]
    for scenario, bound in (bounds or {}).items():
        lines += [
            "",
            f"{scenario}: logit-grid bound (a perfect prediction on the student's output grid, "
            f"bilinearly upsampled): {bound:.1f} mIoU",
        ]
    for scenario, rows in (bn_check or {}).items():
        for key, pairs in rows.items():
            if pairs:
                shown = ", ".join(f"{a:.1f} -> {b:.1f}" for a, b in pairs)
                worst = max(abs(b - a) for a, b in pairs)
                lines.append(
                    f"{scenario}: {key} mIoU with stored BatchNorm statistics -> re-estimated on "
                    f"target-train images: {shown} (largest change {worst:.2f})"
                )
    return "\n".join(lines)


def logit_grid_bound(cfg: ExperimentConfig) -> float:
    """mIoU (%) of a perfect prediction on the student's output-level logit grid for the
    target val split of ``cfg`` (:func:`dakd.evaluate.grid_bound`)."""
    import numpy as np

    from dakd.builders import val_dataset
    from dakd.evaluate import grid_bound

    val = val_dataset(cfg)
    labels = np.stack([np.asarray(val.raw(i)[1]) for i in range(len(val))])
    return 100.0 * grid_bound(labels, cfg.models.student.output_stride)


#: Target-train images the BatchNorm check re-estimates the statistics on.
BN_CHECK_IMAGES = 400


def bn_reestimation_check(checkpoint: str) -> tuple[float, float]:
    """(mIoU with the checkpoint's stored BatchNorm statistics, mIoU after re-estimating them
    on target-train images, from the second half of the split, which ``train.precise_bn``
    does not read): equal up to noise when the stored statistics are the target's."""
    import torch

    from dakd.builders import build_data, network_from_checkpoint
    from dakd.data.loader import eval_batches
    from dakd.models.domain_bn import reestimate
    from dakd.validation import evaluate_on

    model, state = network_from_checkpoint(checkpoint)
    cfg = from_dict({**state["config"], "stage": "source_only", "init": "", "teacher": ""})
    cfg.data.prefetch = 0
    device = torch.device("cpu")
    _, target, val = build_data(cfg)
    stored = evaluate_on(model, val, cfg, device).miou
    # images from the second half of target-train: not the ones train.precise_bn used
    train_set = target.dataset
    first = len(train_set) // 2
    count = min(BN_CHECK_IMAGES, len(train_set) - first)
    subset = torch.utils.data.Subset(train_set, range(first, first + count))
    reestimate(model, (b["image"] for b in eval_batches(subset, 50)))
    return 100.0 * stored, 100.0 * evaluate_on(model, val, cfg, device).miou
