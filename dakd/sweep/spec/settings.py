"""The sections of a sweep spec besides the experiment and the search space: the Ray Tune
settings (``tune``), per-trial ``resources``, MLflow ``tracking`` and the Tune ``storage``.

They are dataclasses built by the config's own builder (:func:`dakd.config.coerce`: keys and
types), each checking its own values as the config's sections do; a problem is a ConfigError
naming the dotted key, which :func:`dakd.sweep.spec.sweep_spec.load_spec` reports with the spec file.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from dakd.config import ExperimentConfig, coerce, fail, reject_unknown, require

SEARCHERS = ("grid", "random", "optuna")
SCHEDULERS = ("fifo", "asha", "pareto", "hyperband", "pbt")
#: Schedulers that pause trials and start them again from their Tune checkpoint (PBT also from
#: another trial's): a data-parallel trial, which resumes from its Ray Train run, cannot.
PAUSING = ("hyperband", "pbt")
#: ``tune.pbt`` options: evaluations between perturbations and before the first, the fraction
#: of the population that exploits (bottom) and is exploited (top), the chance that a mutated
#: value is drawn anew from its axis instead of scaled by 0.8 or 1.2, and synchronous rounds.
PBT_OPTIONS = (
    "perturbation_interval",
    "burn_in",
    "quantile_fraction",
    "resample_probability",
    "synch",
)
#: ``tune.hyperband`` options, in evaluations like ``tune.asha``'s.
HYPERBAND_OPTIONS = ("max_t", "reduction_factor")
#: Optuna's samplers a sweep can pick: TPE (one or several objectives) and NSGA-II (several).
SAMPLERS = ("tpe", "nsga2")
#: Bounds of a constraint: ``{peak_memory_mb: {max: 512}}``.
BOUNDS = ("max", "min")
#: What Ray Tune adds to every result a trial reports.
TUNE_METRICS = ("training_iteration", "time_total_s", "time_this_iter_s")
#: Tracking stores MLflow opens: a SQLite file, a server, a database, a folder.
TRACKING_SCHEMES = ("sqlite", "http", "https", "postgresql", "mysql", "mssql", "file", "databricks")
#: Storage URIs pyarrow opens for Ray Tune (a plain path is a folder).
STORAGE_SCHEMES = ("s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss", "file")


def number(value: Any, key: str) -> float:
    """A number (ints accepted); NaN is refused too, since it passes no range check and would
    reach Tune or a trial unnoticed."""
    value = coerce(value, float, key)
    require(not math.isnan(value), key, f"expected a number, got {value!r}")
    return value


@dataclass
class TuneSettings:
    """``tune`` section: what is optimised and how trials are searched, scheduled and repeated.

    ``asha`` holds ``grace_period`` and ``reduction_factor`` in evaluations (training_iteration).
    Every configuration runs once per entry of ``seeds``.

    ``metric`` and ``mode`` are one name and direction, or lists of them (several objectives,
    e.g. ``[miou, peak_memory_mb]`` with ``[max, min]``): Optuna then searches with a
    multi-objective sampler (``sampler``), the ``pareto`` scheduler stops trials dominated at
    the same evaluation, and the summary reports the Pareto front. ``constraints`` bound the
    deployment figures (``{peak_memory_mb: {max: 512}}``): a trial outside a bound is
    recorded as infeasible as soon as its figures are measured, before it trains.

    ``max_concurrent``: trials at once; ``auto`` (default) as many as the cluster holds for one
    trial's resources (a data-parallel trial counts its workers), counted when the trials
    start. ``budget_gpu_hours``: the dry run's and the sweep's cost must stay under it.
    """

    metric: str | list[str] = "miou"
    mode: str | list[str] = "max"
    num_samples: int = 1
    search: str = "grid"
    search_seed: int = 0
    scheduler: str = "fifo"
    asha: dict[str, Any] = field(default_factory=lambda: {"grace_period": 1, "reduction_factor": 2})
    seeds: list[int] = field(default_factory=lambda: [0])
    max_concurrent: int | str | None = "auto"
    #: refuse a plan above this many GPU-hours (the dry run's cost; None: no budget)
    budget_gpu_hours: float | None = None
    max_failures: int = 2
    # off by default: with Ray 2.60, reusing a function-trainable actor after ASHA stopped its
    # trial failed the next trial ("Could not re-use actor ... reset_config") and once hung
    reuse_actors: bool = True
    #: Optuna only: its sampler, ``tpe`` or ``nsga2`` (several objectives)
    sampler: str = "tpe"
    #: the pareto scheduler: evaluations before a trial may be stopped
    pareto: dict[str, Any] = field(default_factory=lambda: {"grace_period": 1})
    #: Ray's synchronous HyperBand (:data:`HYPERBAND_OPTIONS`); ``max_t`` defaults to a trial's
    #: evaluations
    hyperband: dict[str, Any] = field(default_factory=lambda: {"reduction_factor": 3})
    #: population-based training over the search axes (:data:`PBT_OPTIONS`)
    pbt: dict[str, Any] = field(default_factory=dict)
    constraints: dict[str, dict[str, float]] = field(default_factory=dict)
    #: Optuna only: configurations TPE tries first (e.g. the paper's weights), each giving
    #: every search axis a value; stored as Tune sees them (labels of choice options)
    points_to_evaluate: list[dict[str, Any]] | None = field(default_factory=list)

    @property
    def objectives(self) -> list[str]:
        """The metrics optimised, in order (one, or several)."""
        return [self.metric] if isinstance(self.metric, str) else list(self.metric)

    @property
    def modes(self) -> list[str]:
        return [self.mode] if isinstance(self.mode, str) else list(self.mode)

    @property
    def multi(self) -> bool:
        """Several objectives: the result is a Pareto front, not one best trial."""
        return len(self.objectives) > 1

    @property
    def primary(self) -> str:
        """The first objective: what tables rank by and Tune's progress shows."""
        return self.objectives[0]

    @property
    def primary_mode(self) -> str:
        return self.modes[0]

    def check(self) -> None:
        """Reject impossible values, naming the key (types were checked when it was built)."""
        self._check_objectives()
        require(self.num_samples >= 1, "tune.num_samples", f"must be >= 1, got {self.num_samples}")
        require(
            self.search in SEARCHERS,
            "tune.search",
            f"{self.search!r} is not one of {', '.join(SEARCHERS)}",
        )
        require(self.search_seed >= 0, "tune.search_seed", f"must be >= 0, got {self.search_seed}")
        require(
            self.scheduler in SCHEDULERS,
            "tune.scheduler",
            f"{self.scheduler!r} is not one of {', '.join(SCHEDULERS)}",
        )
        self._check_asha()
        self._check_scheduler()
        self._check_seeds()
        require(
            not (self.multi and self.search == "optuna" and len(self.seeds) > 1),
            "tune.seeds",
            f"{len(self.seeds)} seeds: with several objectives Optuna takes one value per "
            "objective from each trial, so repeats cannot be averaged; give one seed (or use "
            "tune.search grid or random)",
        )
        self._check_constraints()
        if self.max_concurrent is None:
            self.max_concurrent = "auto"
        require(
            self.max_concurrent == "auto"
            or (not isinstance(self.max_concurrent, str) and self.max_concurrent >= 1),
            "tune.max_concurrent",
            f"must be auto (as many trials as the cluster holds) or >= 1, got "
            f"{self.max_concurrent!r}",
        )
        if self.budget_gpu_hours is not None:
            require(
                math.isfinite(self.budget_gpu_hours) and self.budget_gpu_hours > 0,
                "tune.budget_gpu_hours",
                f"must be > 0, got {self.budget_gpu_hours:g}",
            )
        require(
            self.max_failures >= -1, "tune.max_failures", f"must be >= -1, got {self.max_failures}"
        )

    def _check_asha(self) -> None:
        reject_unknown(self.asha, ("grace_period", "reduction_factor"), "tune.asha.")
        if "grace_period" in self.asha:
            grace = coerce(self.asha["grace_period"], int, "tune.asha.grace_period")
            require(grace >= 1, "tune.asha.grace_period", f"must be >= 1, got {grace}")
        if "reduction_factor" in self.asha:
            factor = number(self.asha["reduction_factor"], "tune.asha.reduction_factor")
            require(factor > 1, "tune.asha.reduction_factor", f"must be > 1, got {factor:g}")

    def _check_objectives(self) -> None:
        metrics, modes = self.objectives, self.modes
        require(bool(metrics), "tune.metric", "expected a metric name or a list of them")
        for i, name in enumerate(metrics):
            key = "tune.metric" if isinstance(self.metric, str) else f"tune.metric[{i}]"
            require(bool(name.strip()), key, f"expected a non-empty string, got {name!r}")
        require(len(set(metrics)) == len(metrics), "tune.metric", f"{metrics} names a metric twice")
        for i, mode in enumerate(modes):
            key = "tune.mode" if isinstance(self.mode, str) else f"tune.mode[{i}]"
            require(mode in ("max", "min"), key, f"{mode!r} is not one of max, min")
        require(
            len(modes) == len(metrics),
            "tune.mode",
            f"gives {len(modes)} direction(s) for the {len(metrics)} metric(s) {metrics}; "
            "give one of max, min per metric",
        )
        require(
            self.sampler in SAMPLERS,
            "tune.sampler",
            f"{self.sampler!r} is not one of {', '.join(SAMPLERS)}",
        )
        require(
            self.sampler == "tpe" or self.search == "optuna",
            "tune.sampler",
            f"{self.sampler} is an Optuna sampler; it needs tune.search optuna, not {self.search}",
        )

    def _check_scheduler(self) -> None:
        reject_unknown(self.pareto, ("grace_period",), "tune.pareto.")
        grace = coerce(self.pareto.get("grace_period", 1), int, "tune.pareto.grace_period")
        require(grace >= 1, "tune.pareto.grace_period", f"must be >= 1, got {grace}")
        if self.multi:
            require(
                self.scheduler in ("fifo", "pareto"),
                "tune.scheduler",
                f"{self.scheduler} ranks trials by one metric, but tune.metric has "
                f"{len(self.objectives)} ({', '.join(self.objectives)}); use pareto (stops "
                "trials dominated at the same evaluation) or fifo",
            )
        self._check_hyperband()
        self._check_pbt()

    def _check_hyperband(self) -> None:
        reject_unknown(self.hyperband, HYPERBAND_OPTIONS, "tune.hyperband.")
        if "max_t" in self.hyperband:
            max_t = coerce(self.hyperband["max_t"], int, "tune.hyperband.max_t")
            require(max_t >= 1, "tune.hyperband.max_t", f"must be >= 1 evaluation, got {max_t}")
        factor = number(
            self.hyperband.get("reduction_factor", 3), "tune.hyperband.reduction_factor"
        )
        require(factor > 1, "tune.hyperband.reduction_factor", f"must be > 1, got {factor:g}")
        require(
            self.scheduler != "hyperband" or self.search != "optuna",
            "tune.scheduler",
            "hyperband waits for every trial of a bracket, but Optuna suggests a trial only as "
            "an earlier one ends (tune.max_concurrent): use asha with optuna",
        )

    def _check_pbt(self) -> None:
        options = self.pbt_options
        interval = options["perturbation_interval"]
        require(
            interval >= 1,
            "tune.pbt.perturbation_interval",
            f"must be >= 1 evaluation, got {interval}",
        )
        burn_in = options["burn_in"]
        require(burn_in >= 0, "tune.pbt.burn_in", f"must be >= 0 evaluations, got {burn_in}")
        fraction = options["quantile_fraction"]
        require(
            0 < fraction <= 0.5,
            "tune.pbt.quantile_fraction",
            f"must be in (0, 0.5] (the bottom and top fractions of the population), got "
            f"{fraction:g}",
        )
        chance = options["resample_probability"]
        require(
            0 <= chance <= 1,
            "tune.pbt.resample_probability",
            f"must be in [0, 1], got {chance:g}",
        )
        if self.scheduler != "pbt":
            return
        require(
            self.search != "optuna",
            "tune.search",
            "pbt is not used with Optuna's searcher: PBT evolves its population itself, "
            "copying and mutating configurations Optuna would not know of; use tune.search random",
        )
        require(
            self.search == "random",
            "tune.search",
            f"pbt samples its population at random and then mutates it; use tune.search random, "
            f"not {self.search}",
        )
        require(
            self.num_samples >= 2,
            "tune.num_samples",
            f"pbt needs a population of >= 2 trials to exploit one another, got {self.num_samples}",
        )
        require(
            len(self.seeds) == 1,
            "tune.seeds",
            f"{len(self.seeds)} seeds: pbt copies weights between trials, so a trial's seed would "
            "not say where its weights came from; give one seed (a sweep per seed)",
        )

    @property
    def pbt_options(self) -> dict[str, Any]:
        """``tune.pbt`` with its defaults, each of its type (a ConfigError naming the key)."""
        reject_unknown(self.pbt, PBT_OPTIONS, "tune.pbt.")
        given = {
            "perturbation_interval": 1,
            "burn_in": 0,
            "quantile_fraction": 0.25,
            "resample_probability": 0.25,
            "synch": False,
            **self.pbt,
        }
        return {
            "perturbation_interval": coerce(
                given["perturbation_interval"], int, "tune.pbt.perturbation_interval"
            ),
            "burn_in": coerce(given["burn_in"], int, "tune.pbt.burn_in"),
            "quantile_fraction": number(given["quantile_fraction"], "tune.pbt.quantile_fraction"),
            "resample_probability": number(
                given["resample_probability"], "tune.pbt.resample_probability"
            ),
            "synch": coerce(given["synch"], bool, "tune.pbt.synch"),
        }

    def _check_constraints(self) -> None:
        for name, bounds in self.constraints.items():
            key = f"tune.constraints.{name}"
            require(bool(bounds), key, "give a bound, e.g. {max: 512}")
            reject_unknown(bounds, BOUNDS, key + ".")
            for bound, value in bounds.items():
                require(
                    math.isfinite(value), f"{key}.{bound}", f"must be a finite number, got {value}"
                )
            if "max" in bounds and "min" in bounds:
                require(
                    bounds["min"] <= bounds["max"],
                    key,
                    f"min {bounds['min']:g} is above max {bounds['max']:g}: no trial can meet it",
                )

    def _check_seeds(self) -> None:
        problem = "expected a non-empty list of distinct integers >= 0, e.g. [0, 1, 2]"
        require(bool(self.seeds), "tune.seeds", f"{problem}, got {self.seeds!r}")
        for i, seed in enumerate(self.seeds):
            require(seed >= 0, f"tune.seeds[{i}]", f"must be >= 0, got {seed}")
        require(
            len(set(self.seeds)) == len(self.seeds),
            "tune.seeds",
            f"{problem}; {self.seeds} repeats a seed",
        )


@dataclass
class Resources:
    """Per trial: CPUs, GPUs (fractional allowed) and data-parallel workers.

    With ``workers`` 1 the trial trains in its own process with ``cpu`` and ``gpu``. With more,
    the trial drives a Ray Train run of ``workers`` data-parallel processes, each with ``cpu``
    CPUs and ``gpu`` GPUs (``data.batch_size`` is the global batch, split between them).

    ``node_timeout_s``: when the cluster loses the last node that can hold one of the sweep's
    processes (a trial, a Train worker, a stage), the sweep waits this long for one to come
    back (saying so), then stops as if interrupted (``--resume`` continues it).
    """

    cpu: float = 1.0
    gpu: float = 0.0
    workers: int = 1
    node_timeout_s: float = 600.0

    def check(self) -> None:
        require(
            number(self.cpu, "resources.cpu") > 0, "resources.cpu", f"must be > 0, got {self.cpu:g}"
        )
        require(
            number(self.gpu, "resources.gpu") >= 0,
            "resources.gpu",
            f"must be >= 0, got {self.gpu:g}",
        )
        require(self.workers >= 1, "resources.workers", f"must be >= 1, got {self.workers}")
        require(
            number(self.node_timeout_s, "resources.node_timeout_s") > 0,
            "resources.node_timeout_s",
            f"must be > 0 seconds, got {self.node_timeout_s:g}",
        )


def _scheme(value: str) -> str | None:
    match = re.match(r"([a-zA-Z][a-zA-Z0-9+.-]*):", value)
    if match is None or len(match.group(1)) == 1:  # no scheme, or a Windows drive letter
        return None
    return match.group(1).lower().split("+", 1)[0]


@dataclass
class Tracking:
    """MLflow: ``uri`` None -> the default SQLite store; ``experiment`` None -> the spec's name.

    ``system_metrics``: MLflow's system metrics on each trial's run while it trains (``system/``:
    CPU and memory use, disk, network and, on a GPU, its utilisation, memory and power; see
    :mod:`dakd.tracking.system`), one sample every ``system_metrics_interval`` seconds.
    ``auto`` (default): for trials that train on a GPU; ``true``: for every trial; ``false``:
    never. MLflow's environment variables ``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL`` and
    ``MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING`` override the interval and the samples
    averaged per logged value (1 here).

    ``retry_seconds``: how long one store call keeps retrying while the store is unavailable (a
    tracking server restarting, its PostgreSQL restarting, a locked SQLite file) before the trial
    fails with one line naming the store; see :func:`dakd.tracking.store.retry_locked`.
    """

    uri: str | None = None
    experiment: str | None = None
    system_metrics: bool | str = "auto"
    system_metrics_interval: float = 10.0
    #: the default of :data:`dakd.tracking.store.RETRY_SECONDS` (not imported: it loads MLflow)
    retry_seconds: float = 300.0

    def system_metrics_on(self, device_type: str) -> bool:
        """Whether a trial training on a device of ``device_type`` logs system metrics."""
        if self.system_metrics == "auto":
            return device_type == "cuda"
        return bool(self.system_metrics)

    def check(self) -> None:
        require(
            self.system_metrics in (True, False, "auto"),
            "tracking.system_metrics",
            f"{self.system_metrics!r} is not one of auto, true, false",
        )
        require(
            self.system_metrics_interval > 0,
            "tracking.system_metrics_interval",
            f"must be > 0 seconds, got {self.system_metrics_interval:g}",
        )
        require(
            math.isfinite(self.retry_seconds) and self.retry_seconds > 0,
            "tracking.retry_seconds",
            f"must be a finite number of seconds > 0, got {self.retry_seconds:g}",
        )
        if self.uri is not None:
            require(
                bool(self.uri.strip()),
                "tracking.uri",
                f"expected a non-empty string, got {self.uri!r}",
            )
            require(
                _scheme(self.uri) in TRACKING_SCHEMES,
                "tracking.uri",
                f"{self.uri!r} is not an MLflow tracking URI: use sqlite:///PATH, "
                "http(s)://HOST:PORT (a tracking server), postgresql://... or mysql://... "
                "(a database)",
            )
        if self.experiment is not None:
            require(
                bool(self.experiment.strip()),
                "tracking.experiment",
                "must not be empty (leave it out: the spec's name)",
            )


def section(raw: Any, cls: type, key: str, defaults: Any = None) -> Any:
    """A spec section built by the config's builder and checked; a section left empty (null)
    holds the defaults."""
    built = coerce({} if raw is None else raw, cls, key, defaults)
    built.check()
    return built


def tune_settings(raw: Any) -> TuneSettings:
    """The ``tune`` section. ``points_to_evaluate`` is built from None ("not given", as null is)
    so that an empty list, given by mistake, is told apart; either way no points is []."""
    tune = section(raw, TuneSettings, "tune", TuneSettings(points_to_evaluate=None))
    points = tune.points_to_evaluate
    require(
        points != [],
        "tune.points_to_evaluate",
        f"expected a non-empty list of {{axis: value}} mappings, got {points!r}",
    )
    tune.points_to_evaluate = points or []
    return tune


def storage_of(raw: Any) -> str:
    """The Tune storage: a folder, or a URI pyarrow opens."""
    storage = coerce(raw, str, "storage")
    require(bool(storage.strip()), "storage", f"expected a non-empty string, got {storage!r}")
    scheme = _scheme(storage)
    require(
        "://" not in storage or scheme in STORAGE_SCHEMES,
        "storage",
        f"{storage!r}: Ray Tune's storage is a folder or a URI of {', '.join(STORAGE_SCHEMES)}",
    )
    return storage


def check_metric(tune: TuneSettings, base: ExperimentConfig, deploy: Any = None) -> None:
    """Every objective of ``tune.metric`` must be something a trial reports (a typo would leave
    every trial unranked and the scheduler without a signal), and every constraint a deployment
    figure the trials measure (``deploy``: the spec's deploy section, or None)."""
    from dakd.evaluation.deploy import DEPLOY_METRICS
    from dakd.evaluation.run_metrics import reported_metrics

    known = [*reported_metrics(base), *TUNE_METRICS]
    measured = "measured only when the spec has a deploy section (deploy: {size: [H, W]})"
    for i, name in enumerate(tune.objectives):
        key = "tune.metric" if isinstance(tune.metric, str) else f"tune.metric[{i}]"
        if name in DEPLOY_METRICS:
            require(deploy is not None, key, f"{name!r} is a deployment figure, {measured}")
            continue
        if name in known:
            continue
        plain = [k for k in known if "/" not in k]
        fail(
            key,
            f"{name!r} is not reported by the trials; they report {', '.join(plain)}, "
            "iou/<class> (e.g. iou/road), loss/<term> (e.g. loss/total, loss/kl_target) and, "
            f"with a deploy section, {', '.join(DEPLOY_METRICS)}",
        )
    for name in tune.constraints:
        key = f"tune.constraints.{name}"
        require(
            name in DEPLOY_METRICS,
            key,
            f"constraints bound the deployment figures measured before a trial trains "
            f"({', '.join(DEPLOY_METRICS)}); {name!r} is not one",
        )
        require(deploy is not None, key, f"no trial reports {name!r}: it is {measured}")


def check_workers(r: Resources, base: ExperimentConfig, axes: dict[str, Any]) -> None:
    """Data-parallel trials split ``data.batch_size`` between ``workers`` processes, each on its
    own device: the batch sizes the spec can give must divide, and no one GPU may be pinned."""
    if r.workers == 1:
        return
    require(
        base.train.device in ("auto", "cpu", "cuda"),
        "experiment.train.device",
        f"{base.train.device!r} pins one GPU, but each of the resources.workers "
        f"({r.workers}) processes needs its own; use auto, cuda or cpu",
    )
    axis = axes.get("data.batch_size")
    if axis is None:
        sizes = [("experiment.data.batch_size", base.data.batch_size)]
    elif axis.categorical:
        sizes = [("search.data.batch_size", value) for _, value in axis.options]
    else:  # a range: the trainer names a batch that does not split when a trial samples it
        sizes = []
    for key, size in sizes:
        require(
            not isinstance(size, int) or size % r.workers == 0,
            key,
            f"the global batch {size} does not split between resources.workers "
            f"({r.workers}) data-parallel processes",
        )
