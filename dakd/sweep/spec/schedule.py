"""What a scheduler that pauses trials (``tune.scheduler`` hyperband or pbt) needs of the rest
of a spec: trials that resume from Tune's checkpoint and, for PBT, search axes it can mutate
while a trial trains."""

from __future__ import annotations

from typing import Any

from dakd.config import ExperimentConfig, require
from dakd.sweep.spec.settings import PAUSING, Resources, TuneSettings


def pbt_mutable() -> tuple[str, ...]:
    """The config keys PBT may mutate: the distillation-only keys (which the reused stages are
    built without) that a trial reads at every step and its checkpoint does not depend on, the
    loss weights and the temperature; not the paradigm, levels, teacher or start, which decide
    what a trial's networks and teacher outputs are."""
    from dakd.recipes.stages import distill_only

    return tuple(key for key in distill_only() if key.startswith("loss."))


def check_schedule(
    tune: TuneSettings,
    axes: dict[str, Any],
    written: dict[str, set[str]],
    resources: Resources,
    base: ExperimentConfig,
) -> None:
    """What a pausing scheduler needs of the spec (``axes``: search axis -> its distribution;
    ``written``: axis -> the config keys it sets): trials that resume from Tune's checkpoint,
    and for PBT search axes it can mutate while a trial trains."""
    if tune.scheduler not in PAUSING:
        return
    require(
        resources.workers == 1,
        "resources.workers",
        f"{tune.scheduler} pauses trials and starts them again from Tune's checkpoint; a "
        f"data-parallel trial ({resources.workers} workers) resumes from its Ray Train run "
        "instead: use resources.workers 1, or tune.scheduler asha or fifo",
    )
    if tune.scheduler != "pbt":
        return
    require(
        base.stage == "dakd",
        "experiment.stage",
        f"pbt mutates distillation weights, which only a dakd trial reads, not {base.stage}",
    )
    mutable = pbt_mutable()
    require(
        bool(axes),
        "search",
        f"pbt mutates the search axes; give at least one of {', '.join(mutable)}",
    )
    for axis, dist in axes.items():
        require(
            not dist.grid,
            f"search.{axis}",
            "pbt mutates its axes from trial to trial; a grid axis runs every option as a trial "
            "of its own: use choice",
        )
        for key in sorted(written[axis]):
            require(
                key in mutable,
                f"search.{axis}",
                f"sets {key}, which pbt cannot change while a trial trains (it decides the stages, "
                f"networks or teacher outputs a trial's checkpoint holds); pbt mutates "
                f"{', '.join(mutable)}",
            )
