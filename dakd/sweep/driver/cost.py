"""What a sweep will cost, before it is launched: runs x steps x step time, per wave and in all,
in GPU-hours and in wall-clock hours on the cluster it is planned for.

A sweep runs in waves: the reused stages that need nothing (teacher-DA, student-DA) side by
side, then those built on them (the fair baselines), then the trials. Every run of a wave is
costed at the measured DAKD step of the spec's recipe and speed setting
(:mod:`dakd.runtime.step_times`, or ``--step-ms``): exact for the trials, an upper bound for the stages,
which train one network without a teacher. Trials that report a reused stage (the teacher-DA
and student-DA rows of a table) train nothing and cost nothing. ASHA may stop trials early:
their cost is then an upper bound too.

How many runs of a wave train at once comes from the cluster: each node holds as many runs
as its CPUs and GPUs allow for one run's request (a data-parallel trial needs ``workers`` of
them), bounded by ``tune.max_concurrent`` for trials. The cluster is the Ray cluster joined
with ``--address``, or ``--nodes N --gpus-per-node G`` (planning away from it), or this machine.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

from dakd.recipes.stages import is_fair_baseline
from dakd.runtime.step_times import StepTime, find, recipe_of, setting_of
from dakd.sweep.spec.sweep_spec import SpecError, SweepSpec, grid_variants, num_trials, resolve


@dataclass
class Shape:
    """The nodes a sweep is planned for: ``(CPUs, GPUs)`` each, and where that came from."""

    nodes: list[tuple[float, float]]
    source: str

    @classmethod
    def of(cls, nodes: int, gpus_per_node: float, cpus_per_node: float, source: str) -> Shape:
        return cls([(float(cpus_per_node), float(gpus_per_node))] * nodes, source)

    @classmethod
    def from_ray(cls, nodes: list[dict], address: str) -> Shape:
        return cls(
            [(float(n["CPU"]), float(n["GPU"])) for n in nodes], f"the Ray cluster at {address}"
        )

    @classmethod
    def this_machine(cls) -> Shape:
        gpus = 0
        try:
            import torch

            gpus = torch.cuda.device_count()
        except Exception:  # noqa: BLE001 - no torch or no driver: no GPU
            gpus = 0
        return cls([(float(os.cpu_count() or 1), float(gpus))], "this machine")

    @property
    def gpus(self) -> float:
        return sum(g for _, g in self.nodes)

    def describe(self) -> str:
        counts: dict[tuple[float, float], int] = {}
        for node in self.nodes:
            counts[node] = counts.get(node, 0) + 1
        kinds = ", ".join(f"{n} x ({c:g} CPU, {g:g} GPU)" for (c, g), n in counts.items())
        return f"{kinds} ({self.source})"

    def slots(self, cpu: float, gpu: float, per_run: int = 1) -> int:
        """How many runs fit at once, each of ``per_run`` processes of ``cpu`` CPUs and ``gpu``
        GPUs, every process on one node."""
        processes = 0
        for cpus, gpus in self.nodes:
            fit = [math.floor(cpus / cpu + 1e-9) if cpu else math.inf]
            fit.append(math.floor(gpus / gpu + 1e-9) if gpu else math.inf)
            n = min(fit)
            processes += 0 if n == math.inf else n
        return processes // per_run


@dataclass
class Wave:
    name: str
    runs: int
    steps: int  # each run's
    gpus: float  # each run's
    at_once: int
    reported: int = 0  # trials that report a reused stage: no training

    def gpu_hours(self, step_s: float) -> float:
        return self.runs * self.steps * step_s * self.gpus / 3600

    def wall_hours(self, step_s: float) -> float:
        if not self.runs:
            return 0.0
        return math.ceil(self.runs / max(self.at_once, 1)) * self.steps * step_s / 3600


@dataclass
class Cost:
    shape: Shape
    waves: list[Wave]
    step: StepTime | None  # the measured figure used (None: ``--step-ms``, or none known)
    step_ms: float | None
    why: str = ""  # why there is no step time
    concurrency: int = 0  # trials at once
    notes: list[str] = field(default_factory=list)

    @property
    def gpu_hours(self) -> float | None:
        if self.step_ms is None:
            return None
        return sum(w.gpu_hours(self.step_ms / 1000) for w in self.waves)

    @property
    def wall_hours(self) -> float | None:
        if self.step_ms is None:
            return None
        return sum(w.wall_hours(self.step_ms / 1000) for w in self.waves)

    def text(self) -> str:
        lines = [f"cost, on {self.shape.describe()}:"]
        if self.step_ms is None:
            lines.append(f"  {self.why}: pass --step-ms, or measure it with bench/gpu_step.py")
        else:
            where = self.step.source() if self.step else "given with --step-ms"
            lines.append(f"  step: {self.step_ms:g} ms ({where})")
        for wave in self.waves:
            line = (
                f"  {wave.name}: {wave.runs} run(s) x {wave.steps} steps x {wave.gpus:g} GPU, "
                f"{wave.at_once} at once"
            )
            if wave.reported:
                line += f" (+{wave.reported} reporting a reused stage: no training)"
            if self.step_ms is not None:
                s = self.step_ms / 1000
                line += f": {wave.gpu_hours(s):.1f} GPU-h, {wave.wall_hours(s):.1f} h"
            lines.append(line)
        if self.step_ms is not None:
            lines.append(
                f"  total: {self.gpu_hours:.1f} GPU-hours, {self.wall_hours:.1f} hours on this "
                "cluster (stages costed at the DAKD step: an upper bound; ASHA may stop trials "
                "sooner)"
            )
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def concurrency(spec: SweepSpec, shape: Shape) -> int:
    """Trials at once: what the cluster holds for one trial's request (``tune.max_concurrent:
    auto``), or the spec's number when lower."""
    r = spec.resources
    fits = shape.slots(r.cpu, r.gpu, r.workers)
    limit = spec.tune.max_concurrent
    if isinstance(limit, int):
        return max(1, min(limit, fits)) if fits else 0
    return fits


def trial_counts(spec: SweepSpec) -> tuple[int, int]:
    """(trials that train, trials that report a reused stage)."""
    total = num_trials(spec)
    variants = grid_variants(spec)
    reporting = 0
    for variant in variants:
        cfg = resolve(spec, variant)
        if (cfg.stage in ("teacher_da", "student_da") and not cfg.init) or is_fair_baseline(cfg):
            reporting += 1
    share = total / max(len(variants), 1)
    reported = round(reporting * share)
    return total - reported, reported


def plan_cost(
    spec: SweepSpec, stages: list, shape: Shape, step_ms: float | None = None, device: str = ""
) -> Cost:
    """The cost of ``spec`` with the stage plans ``stages`` (:class:`dakd.sweep.driver.plan.StagePlan`)
    on ``shape``; ``step_ms`` overrides the measured figure; ``device`` picks the GPU kind of
    the figure (default: the one measured, the slowest if several)."""
    r = spec.resources
    gpus = r.gpu * r.workers
    figure, why = None, ""
    if step_ms is None:
        setting = setting_of(spec.base.train) if (r.gpu or device) else ""
        if not (r.gpu or device):
            why = "the runs use no GPU (resources.gpu 0): no GPU step time applies"
        else:
            figure, why = find(recipe_of(spec.base), setting, device)
            step_ms = figure.step_ms if figure else None
    stage_slots = shape.slots(1.0, r.gpu)
    first = [s for s in stages if not s.done and not s.needs]
    later = [s for s in stages if not s.done and s.needs]
    waves = []
    for name, wave in (("stages, wave 1", first), ("stages, wave 2", later)):
        if wave:
            steps = max(s.config.train.steps for s in wave)
            waves.append(Wave(name, len(wave), steps, r.gpu, min(len(wave), stage_slots)))
    trained, reported = trial_counts(spec)
    at_once = concurrency(spec, shape)
    waves.append(
        Wave("trials", trained, spec.base.train.steps, gpus, min(trained, at_once), reported)
    )
    cost = Cost(shape, waves, figure, step_ms, why, at_once)
    if at_once == 0:
        cost.notes.append(
            f"no node of this cluster holds one trial ({r.cpu:g} CPU, {r.gpu:g} GPU x "
            f"{r.workers} worker(s)): the sweep would not start"
        )
    done = sum(1 for s in stages if s.done)
    if done:
        cost.notes.append(f"{done} stage(s) already trained: reused, not costed")
    return cost


def check_budget(spec: SweepSpec, cost: Cost) -> None:
    """``tune.budget_gpu_hours``: a plan above it (or one that cannot be costed) stops here."""
    budget = spec.tune.budget_gpu_hours
    if budget is None:
        return
    if cost.gpu_hours is None:
        raise SpecError(
            f"{spec.path}: tune.budget_gpu_hours: {budget:g} GPU-hours, but the plan cannot be "
            f"costed ({cost.why}); pass --step-ms, or measure it with bench/gpu_step.py"
        )
    if cost.gpu_hours > budget:
        raise SpecError(
            f"{spec.path}: tune.budget_gpu_hours: the plan needs {cost.gpu_hours:.1f} GPU-hours "
            f"(at {cost.step_ms:g} ms a step), above the budget of {budget:g}"
        )
