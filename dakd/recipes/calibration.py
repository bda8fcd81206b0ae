"""The calibration study of the embedded benchmark: ``python -m dakd calibrate``.

The benchmark's claims are measured, not assumed (docs/calibration.md): per
scenario and seed every row of :data:`CALIBRATION_ROWS` is trained (or found, as a reused
stage) and evaluated on the target val split; the table, the targets of
:mod:`dakd.recipes.calibration_targets`, the logit-grid bound and a BatchNorm check are
printed and written as ``calibration.md``, ``calibration.json`` and ``calibration.png``. It
lives beside the result tables because it is one too, but it reads no MLflow store: it trains
through :mod:`dakd.recipes.stages`'s stages and needs neither MLflow nor Ray.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dakd.config import ExperimentConfig, current_tree, from_dict, load_config
from dakd.recipes.calibration_targets import calibration_targets, format_targets, mean_std
from dakd.recipes.stages import (
    dependency_config,
    fair_baseline_config,
    run_stage,
    stage_config,
    with_stages,
)
from dakd.tabular import markdown_table

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
    ``dakd.recipes.da_teacher``: fixed while the student side's seed varies) or from the teacher-DA
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
    from dakd.evaluation.run_metrics import evaluate_checkpoint
    from dakd.models.pretrained import SHIPPED_DIR, teacher_file
    from dakd.runtime.builders import check_teacher

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
    from dakd.recipes.pretrain import machine

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
        "machine": machine(),  # dakd.recipes.pretrain
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
    ]
    rows = []
    for name, _ in CALIBRATION_ROWS:
        cells = [name]
        for scenario in scenarios:
            mean, std = mean_std(results[scenario][name])
            cells.append(f"{mean:.1f} +- {std:.1f}")
        rows.append(cells)
    lines.append(markdown_table(["row", *scenarios], rows))
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
    target val split of ``cfg`` (:func:`dakd.evaluation.segmentation.grid_bound`)."""
    import numpy as np

    from dakd.evaluation.segmentation import grid_bound
    from dakd.runtime.builders import val_dataset

    val = val_dataset(cfg)
    labels = np.stack([np.asarray(val.raw(i)[1]) for i in range(len(val))])
    return 100.0 * grid_bound(labels, cfg.models.student.output_stride)


#: Target-train images the BatchNorm check re-estimates the statistics on.
BN_CHECK_IMAGES = 400


def bn_reestimation_check(checkpoint: str) -> tuple[float, float]:
    """(mIoU with the checkpoint's stored BatchNorm statistics, mIoU after re-estimating them
    on target-train images, from the second half of the split, which ``train.precise_bn_images``
    does not read): equal up to noise when the stored statistics are the target's."""
    import torch

    from dakd.data.loader import eval_batches
    from dakd.evaluation.run_metrics import evaluate_on, evaluation_tree
    from dakd.models.domain_bn import reestimate
    from dakd.runtime.builders import build_data, network_from_checkpoint

    model, state = network_from_checkpoint(checkpoint)
    stored = current_tree(state["config"], note=False)  # under the names it was written with
    cfg = from_dict(evaluation_tree(stored))
    cfg.data.prefetch = 0
    device = torch.device("cpu")
    _, target, val = build_data(cfg)
    stored = evaluate_on(model, val, cfg, device).miou
    # images from the second half of target-train: not the ones train.precise_bn_images used
    train_set = target.dataset
    first = len(train_set) // 2
    count = min(BN_CHECK_IMAGES, len(train_set) - first)
    subset = torch.utils.data.Subset(train_set, range(first, first + count))
    reestimate(model, (b["image"] for b in eval_batches(subset, 50)))
    return 100.0 * stored, 100.0 * evaluate_on(model, val, cfg, device).miou
