"""A trial's deployment figures: measured before it trains, checked against the constraints.

With a ``deploy`` section in the spec, every trial first measures its student (parameters, peak
inference memory, latency and FLOPs at the deployment resolution, :mod:`dakd.evaluation.deploy`) on its own
device. The figures go into every result the trial reports (Tune) and onto its MLflow run. A
trial whose figures break a constraint of ``tune.constraints``, or that runs out of memory while
measured, is infeasible: it is recorded (figures, why) and not trained, and the sweep goes on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dakd.config import ExperimentConfig
from dakd.data.labels import NUM_CLASSES


@dataclass
class Deployment:
    """What a trial's measurement found: the figures (none when it ran out of memory), where
    they were measured, and why the trial is infeasible ("" when it is not)."""

    metrics: dict[str, float] = field(default_factory=dict)
    where: str = ""
    infeasible: str = ""


def broken(metrics: dict[str, float], constraints: dict[str, dict[str, float]]) -> list[str]:
    """The constraints ``metrics`` break, as text (``peak_memory_mb 612.3 > max 512``)."""
    out = []
    for name, bounds in constraints.items():
        value = metrics.get(name)
        if value is None:
            continue
        if "max" in bounds and value > bounds["max"]:
            out.append(f"{name} {value:.4g} > max {bounds['max']:g}")
        if "min" in bounds and value < bounds["min"]:
            out.append(f"{name} {value:.4g} < min {bounds['min']:g}")
    return out


def measure_trial(spec, cfg: ExperimentConfig, label: str, threads: int) -> Deployment | None:
    """The trial's :class:`Deployment`, or None when the spec measures nothing. A measurement
    that fails for another reason than memory raises :class:`~dakd.evaluation.deploy.DeployError` with one
    line naming the trial."""
    if spec.deploy is None:
        return None
    from dakd.evaluation.deploy import DeployError, DeployOutOfMemory, measure, static_figures

    settings = spec.deploy
    size = "x".join(str(v) for v in settings.size)
    where = f"{size} batch {settings.batch}"
    try:
        # parameters and FLOPs first (no pass runs): a bound on them rules a student out
        # before it is timed
        static = static_figures(cfg.models.student, settings, num_classes=NUM_CLASSES)
        why = "; ".join(broken(static, spec.tune.constraints))
        if why:
            return Deployment(static, f"{where} (parameters and FLOPs only)", why)
        figures = measure(cfg.models.student, settings, num_classes=NUM_CLASSES, threads=threads)
    except DeployOutOfMemory as err:
        return Deployment({}, where, f"out of memory while measured: {err}")
    except DeployError as err:
        raise DeployError(f"trial {label}: {err}") from None
    metrics = figures.metrics()
    return Deployment(
        metrics, f"{where} on {figures.device}", "; ".join(broken(metrics, spec.tune.constraints))
    )
