"""Sweep specs: one YAML file per study, validated before any Ray work starts.

A spec holds the base experiment (``experiment``, optionally over a ``base`` config file), the
search space (``search``: dotted config path -> distribution, or a plain value that is fixed),
the Ray Tune settings (``tune``), per-trial ``resources``, MLflow ``tracking`` and the Tune
``storage``. Every problem raises :class:`SpecError` with the message
``"<spec file>: <key>: <problem>"``.

Options of ``choice`` and ``grid`` axes reach Tune as string *labels* (Optuna only accepts
primitives); :func:`trial_overrides` maps a sampled config back to dotted config values, and
:func:`resolve` turns it into a validated :class:`~dakd.config.ExperimentConfig`.

A sweep's DAKD runs build on the reused stages: a config with ``stage: dakd`` whose ``teacher``
or ``init`` is empty gets ``auto`` there (the teacher-DA / student-DA stage of that config).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import re
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dakd.config import (
    ConfigError,
    ExperimentConfig,
    flatten,
    from_dict,
    not_text,
    parse_override,
    set_dotted,
)
from dakd.paradigms import AUTO

#: Distribution kinds of ``search`` entries, and how many numbers the range kinds take.
RANGES = {"uniform": 2, "loguniform": 2, "randint": 2, "quniform": 3}
CATEGORICAL = ("choice", "grid")
KINDS = (*CATEGORICAL, *RANGES)
SEARCHERS = ("grid", "random", "optuna")
SCHEDULERS = ("fifo", "asha")
SECTIONS = (
    "name",
    "description",
    "experiment",
    "stages",
    "search",
    "tune",
    "resources",
    "tracking",
    "storage",
)
#: Spec sections that hold a single value (an override names them without a sub-key).
SCALAR_SECTIONS = ("name", "description", "storage")
TRIAL_INDEX = "__trial_index__"  # set by ray.tune.search.Repeater(set_index=True)
_NAME = re.compile(r"[A-Za-z0-9_.-]+")


class SpecError(ValueError):
    """A problem with a sweep spec; the message is ``"<spec file>: <key>: <problem>"``."""


@dataclass(frozen=True)
class Distribution:
    """One search axis. ``kind`` is one of :data:`KINDS`.

    ``args``: the option values (choice, grid) or the numbers (low, high[, q]) of a range.
    ``options``: ``(label, value)`` pairs of choice/grid, labels as Tune sees them.
    """

    kind: str
    args: tuple
    options: tuple = ()

    @property
    def categorical(self) -> bool:
        return self.kind in CATEGORICAL

    def labels(self) -> list[str]:
        return [label for label, _ in self.options]

    def first(self) -> Any:
        """The first option's label, or a range's low bound (what a dry run shows)."""
        return self.options[0][0] if self.categorical else self.args[0]

    def __str__(self) -> str:
        if self.categorical:
            return f"{self.kind}({' | '.join(self.labels())})"
        return f"{self.kind}({', '.join(_label(a) for a in self.args)})"


@dataclass
class TuneSettings:
    """``tune`` section: what is optimised and how trials are searched, scheduled and repeated.

    ``asha`` holds ``grace_period`` and ``reduction_factor`` in evaluations (training_iteration).
    Every configuration runs once per entry of ``seeds``.
    """

    metric: str = "miou"
    mode: str = "max"
    num_samples: int = 1
    search: str = "grid"
    search_seed: int = 0
    scheduler: str = "fifo"
    asha: dict[str, Any] = field(default_factory=lambda: {"grace_period": 1, "reduction_factor": 2})
    seeds: list[int] = field(default_factory=lambda: [0])
    max_concurrent: int | None = None
    max_failures: int = 2
    # off by default: with Ray 2.60, reusing a function-trainable actor after ASHA stopped its
    # trial failed the next trial ("Could not re-use actor ... reset_config") and once hung
    reuse_actors: bool = True
    #: Optuna only: configurations TPE tries first (e.g. the paper's weights), each giving
    #: every search axis a value; stored as Tune sees them (labels of choice options)
    points_to_evaluate: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Resources:
    """Per trial: CPUs, GPUs (fractional allowed) and data-parallel workers.

    With ``workers`` 1 the trial trains in its own process with ``cpu`` and ``gpu``. With more,
    the trial drives a Ray Train run of ``workers`` data-parallel processes, each with ``cpu``
    CPUs and ``gpu`` GPUs (``data.batch_size`` is the global batch, split between them).
    """

    cpu: float = 1.0
    gpu: float = 0.0
    workers: int = 1


@dataclass
class Tracking:
    """MLflow: ``uri`` None -> the default SQLite store; ``experiment`` None -> the spec's name."""

    uri: str | None = None
    experiment: str | None = None


@dataclass
class SweepSpec:
    """A loaded, validated spec.

    ``base``: the experiment section resolved over its base file and validated, with the fixed
    values of ``search`` applied (the axes are not). ``fixed``: dotted -> value of those plain
    values. ``search``: the axes in file order. ``stages``: dotted overrides for the reused
    teacher-DA / student-DA stages. ``base_file``: the resolved ``experiment.base`` file, if any.
    ``implicit_auto``: fields (teacher, init) that ``base`` holds as ``auto`` only because its
    stage is dakd; trials that pick another stage get them empty again.
    """

    path: Path
    name: str
    description: str
    base: ExperimentConfig
    fixed: dict[str, Any]
    search: dict[str, Distribution]
    stages: dict[str, Any]
    tune: TuneSettings
    resources: Resources
    tracking: Tracking
    storage: str
    base_file: Path | None = None
    implicit_auto: tuple[str, ...] = ()

    @property
    def experiment_name(self) -> str:
        return self.tracking.experiment or self.name


# -- config paths and values ------------------------------------------------------------------


def _path_kind(key: str) -> str | None:
    """``"leaf"``/``"section"`` when ``key`` is a dotted path into ExperimentConfig, else None."""
    tp: Any = ExperimentConfig
    for part in key.split("."):
        if not dataclasses.is_dataclass(tp):
            return None
        hints = typing.get_type_hints(tp)
        if part not in hints:
            return None
        tp = hints[part]
    return "section" if dataclasses.is_dataclass(tp) else "leaf"


def _assignments(key: str, value: Any) -> dict[str, Any]:
    """Dotted leaf assignments for ``key = value``; a mapping at a section (or at the top, ``key``
    empty) is expanded so it merges into the section instead of replacing it."""
    if isinstance(value, Mapping) and (not key or _path_kind(key) == "section"):
        out: dict[str, Any] = {}
        for sub, item in value.items():
            out.update(_assignments(f"{key}.{sub}" if key else str(sub), item))
        return out
    return {key: value}


def _plain(value: Any) -> Any:
    """A deep plain copy (lists, dicts, str, numbers, bool, None); numpy scalars become Python."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, str | bytes):  # numpy scalar
        return value.item()
    return value


def _merged(tree: dict[str, Any], overrides: Mapping[str, Any] = ()) -> dict[str, Any]:
    """A copy of the plain config ``tree`` with dotted ``overrides`` merged in leaf by leaf."""
    tree = json.loads(json.dumps(tree))
    for key, value in dict(overrides).items():
        for leaf, item in _assignments(key, value).items():
            set_dotted(tree, leaf, _plain(item))
    return tree


def _config(tree: dict[str, Any], overrides: Mapping[str, Any] = ()) -> ExperimentConfig:
    """``tree`` with dotted ``overrides`` (leaf-expanded), DAKD's empty teacher/init set to auto,
    built and validated (ConfigError on a problem)."""
    tree = _merged(tree, overrides)
    if tree.get("stage", ExperimentConfig.stage) == "dakd":
        for key in ("teacher", "init"):
            if tree.get(key, "") == "":
                tree[key] = AUTO
    return from_dict(tree)


# -- labels -----------------------------------------------------------------------------------


def _label(value: Any) -> str:
    """A short string that names an option: ``0.1``, ``a``, ``output+feature``, ``k=v k2=v2``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return value or '""'
    if isinstance(value, Mapping):
        return " ".join(f"{k}={_label(v)}" for k, v in flatten(_plain(value)).items())
    if isinstance(value, list | tuple):
        if value and all(isinstance(v, str | int | float | bool) for v in value):
            return "+".join(_label(v) for v in value)
        return yaml.safe_dump(_plain(value), default_flow_style=True, width=10**6).strip()
    return str(value)


def _short(value: Any) -> str:
    """Like :func:`_label`, floats with 3 significant digits (trial names)."""
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, list | tuple) and value and all(isinstance(v, float) for v in value):
        return "+".join(f"{v:.3g}" for v in value)
    return _label(value)


# -- reading the spec -------------------------------------------------------------------------


class _Checker:
    """Raises SpecError messages that start with the spec file."""

    def __init__(self, path: Path):
        self.path = path

    def fail(self, key: str, problem: str) -> typing.NoReturn:
        raise SpecError(f"{self.path}: {key}: {problem}" if key else f"{self.path}: {problem}")

    def mapping(self, value: Any, key: str, allowed: Sequence[str] | None = None) -> dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.fail(key, f"expected a mapping, got {value!r}")
        for name in value:
            if not isinstance(name, str):
                self.fail(key, f"keys must be strings, got {name!r}")
        if allowed is not None:
            unknown = [name for name in value if name not in allowed]
            if unknown:
                self.fail(
                    f"{key}.{unknown[0]}" if key else unknown[0],
                    f"unknown key; valid keys{' under ' + key if key else ''}: "
                    + ", ".join(allowed),
                )
        return value

    def integer(self, value: Any, key: str, minimum: int | None = None) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(key, f"expected an integer, got {value!r}")
        if minimum is not None and value < minimum:
            self.fail(key, f"must be >= {minimum}, got {value}")
        return value

    def number(self, value: Any, key: str) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
            self.fail(key, f"expected a number, got {value!r}")
        return float(value)

    def string(self, value: Any, key: str, optional: bool = False) -> str | None:
        if value is None and optional:
            return None
        if not isinstance(value, str) or not value.strip():
            self.fail(key, f"expected a non-empty string, got {value!r}")
        return value

    def boolean(self, value: Any, key: str) -> bool:
        if not isinstance(value, bool):
            self.fail(key, f"expected true or false, got {value!r}")
        return value

    def one_of(self, value: Any, key: str, options: Sequence[str]) -> str:
        if value not in options:
            self.fail(key, f"{value!r} is not one of {', '.join(options)}")
        return value


def _read_yaml(path: Path, check: _Checker, key: str) -> dict:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        check.fail(key, f"{path}: {not_text(err)}")
    except yaml.YAMLError as err:
        check.fail(key, f"{path} is not valid YAML: {err}")
    except OSError as err:
        check.fail(key, f"cannot read {path}: {err}")
    if data is None:
        return {}
    if not isinstance(data, dict):
        check.fail(key, f"{path}: expected a mapping at the top level")
    return data


def _apply_overrides(
    raw: dict, overrides: Sequence[str], check: _Checker
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Apply ``--set`` overrides to the raw spec tree; return the experiment and stages ones
    (dotted, applied after the file's own keys)."""
    experiment: dict[str, Any] = {}
    stages: dict[str, Any] = {}
    for item in overrides:
        try:
            key, value = parse_override(item)
        except ConfigError as err:
            check.fail("", str(err))
        section, _, rest = key.partition(".")
        if section not in SECTIONS:
            check.fail(key, f"unknown section {section!r}; sections: {', '.join(SECTIONS)}")
        if section in SCALAR_SECTIONS:
            if rest:
                check.fail(key, f"{section} is a single value; write {section}=VALUE")
            raw[section] = value
            continue
        if not rest:
            check.fail(key, f"name a key inside {section}, e.g. {section}.KEY=VALUE")
        if section == "experiment":
            experiment[rest] = value
        elif section == "stages":
            stages[rest] = value
        elif section == "search":
            search = raw.get("search")
            search = search if isinstance(search, dict) else {}
            raw["search"] = search
            search[rest] = _pin(search.get(rest), value)
        else:
            node = raw.get(section)
            if node is None:
                node = raw[section] = {}
            if not isinstance(node, dict):
                check.fail(section, f"expected a mapping, got {node!r}")
            try:
                set_dotted(node, rest, value)
            except ConfigError as err:
                check.fail(key, str(err))
    return experiment, stages


def _pin(current: Any, value: Any) -> Any:
    """An override of a choice/grid axis by one of its labels pins that option's value."""
    if isinstance(value, str) and isinstance(current, dict) and len(current) == 1:
        (kind, options), *_ = current.items()
        if kind in CATEGORICAL and isinstance(options, list):
            for option in options:
                if _label(option) == value:
                    return option
    return value


def _experiment_tree(raw: Any, extra: dict[str, Any], path: Path, check: _Checker):
    """The experiment section as (tree of the base file, dotted assignments, base file)."""
    section = dict(check.mapping(raw, "experiment"))
    base_file = None
    tree: dict[str, Any] = {}
    if "base" in extra:
        section["base"] = extra.pop("base")
    base = section.pop("base", None)
    if base is not None:
        check.string(base, "experiment.base")
        candidates = [Path(base)] if Path(base).is_absolute() else [path.parent / base, Path(base)]
        base_file = next((Path(os.path.normpath(c)) for c in candidates if c.is_file()), None)
        if base_file is None:
            check.fail(
                "experiment.base",
                f"no such config file {base!r} (looked in {path.parent or '.'} and the "
                "current folder)",
            )
        tree = _read_yaml(base_file, check, "experiment.base")
    assignments = {**flatten(section), **extra}
    return tree, assignments, base_file


def _distribution(
    axis: str, value: dict, check: _Checker, tree: dict[str, Any], conditional: bool
) -> Distribution:
    """One axis, each option (or both ends of a range) checked on the config ``tree``."""
    key = f"search.{axis}"
    if len(value) != 1:
        check.fail(
            key,
            f"a distribution is a mapping with one key ({', '.join(KINDS)}), got "
            f"{', '.join(map(str, value))}",
        )
    ((kind, args),) = value.items()

    def try_config(overrides: dict[str, Any], what: str) -> None:
        try:
            _config(tree, overrides)
        except ConfigError as err:
            check.fail(key, f"{what}: {err}")

    if kind in CATEGORICAL:
        if not isinstance(args, list) or not args:
            check.fail(key, f"{kind} needs a non-empty list of options, got {args!r}")
        options = []
        seen: dict[str, int] = {}
        for i, option in enumerate(args):
            label = _label(option)
            if label in seen:
                check.fail(
                    key,
                    f"options {seen[label] + 1} and {i + 1} have the same label {label!r}; "
                    "labels must be unique",
                )
            seen[label] = i
            if conditional:
                if not isinstance(option, dict) or not option:
                    check.fail(
                        key,
                        f"{axis!r} is not a config path, so its options must be mappings of "
                        f"dotted config keys; option {i + 1} is {option!r}",
                    )
                assigned = _assignments("", option)
                for sub in assigned:
                    if _path_kind(sub) is None:
                        check.fail(key, f"option {label!r}: {sub!r} is not a config path")
                    if sub == "seed":
                        check.fail(key, f"option {label!r}: seeds come from tune.seeds")
                try_config(assigned, f"option {label!r}")
            else:
                try_config(_assignments(axis, option), f"option {label!r}")
            options.append((label, _plain(option)))
        return Distribution(kind, tuple(_plain(a) for a in args), tuple(options))

    if conditional:
        check.fail(
            key,
            f"{axis!r} is not a config path; only choice or grid of mappings of dotted config "
            "keys can set several keys together",
        )
    count = RANGES[kind]
    shape = "[low, high, q]" if count == 3 else "[low, high]"
    if not isinstance(args, list) or len(args) != count:
        check.fail(key, f"{kind} needs {shape}, got {args!r}")
    if kind == "randint":
        low, high = (check.integer(a, f"{key} (randint bounds)") for a in args)
        numbers: tuple = (low, high)
    else:
        numbers = tuple(check.number(a, key) for a in args)
        low, high = numbers[:2]
    if not low < high:
        check.fail(key, f"{kind} needs low < high, got {args!r}")
    if kind == "loguniform" and low <= 0:
        check.fail(key, f"loguniform needs low > 0, got {args!r}")
    if kind == "quniform":
        q = numbers[2]
        if q <= 0:
            check.fail(key, f"quniform needs q > 0, got {args!r}")
        for bound in (low, high):
            if not math.isclose(bound / q, round(bound / q)):
                check.fail(key, f"quniform bounds must be multiples of q={q:g}, got {bound:g}")
    ends = (low, high - 1) if kind == "randint" else (low, high)
    for name, end in zip(("low", "high"), ends):
        try_config({axis: end}, f"{name} {end!r}")
    return Distribution(kind, numbers)


def _search(
    raw: Any, tree: dict[str, Any], base: ExperimentConfig, check: _Checker
) -> tuple[ExperimentConfig, dict[str, Any], dict[str, Distribution]]:
    """Split ``search`` into fixed values (applied to ``base``, the config of ``tree``) and axes;
    validate both."""
    section = check.mapping(raw, "search")
    fixed: dict[str, Any] = {}
    entries: dict[str, tuple[Any, bool]] = {}
    for axis, value in section.items():
        key = f"search.{axis}"
        kind = _path_kind(axis)
        if axis == "seed":
            check.fail(key, "seeds come from tune.seeds (e.g. seeds: [0, 1, 2])")
        if kind is None and (not _NAME.fullmatch(axis) or axis.startswith("__")):
            check.fail(key, "an axis name is letters, digits, '_', '.', '-' (not starting '__')")
        if isinstance(value, dict) and any(k in KINDS for k in value):
            entries[axis] = (value, kind is None)
            continue
        if isinstance(value, dict) and kind == "leaf":
            check.fail(
                key, f"unknown distribution {next(iter(value), '')!r}; one of {', '.join(KINDS)}"
            )
        if kind is None and not isinstance(value, dict):
            check.fail(
                key,
                f"{axis!r} is not a config path; a fixed value here must be a mapping of dotted "
                "config keys",
            )
        assigned = _assignments("" if kind is None else axis, value)
        for sub in assigned:
            if _path_kind(sub) is None:
                check.fail(key, f"{sub!r} is not a config path")
        try:
            base = _config(tree, {**fixed, **assigned})
        except ConfigError as err:
            check.fail(key, str(err))
        fixed.update({k: _plain(v) for k, v in assigned.items()})
    axes = {
        axis: _distribution(axis, value, check, _merged(tree, fixed), conditional)
        for axis, (value, conditional) in entries.items()
    }
    _check_overlaps(axes, check)
    return base, fixed, axes


def _writes(axis: str, dist: Distribution) -> set[str]:
    if _path_kind(axis) is not None:
        return {axis}
    return {key for _, option in dist.options for key in _assignments("", option)}


def _check_overlaps(axes: dict[str, Distribution], check: _Checker) -> None:
    written = {axis: _writes(axis, dist) for axis, dist in axes.items()}
    for (a, keys_a), (b, keys_b) in itertools.combinations(written.items(), 2):
        for ka, kb in itertools.product(keys_a, keys_b):
            if ka == kb or ka.startswith(kb + ".") or kb.startswith(ka + "."):
                check.fail(f"search.{b}", f"sets {kb}, which axis search.{a} sets too")


def _tune(raw: Any, check: _Checker) -> TuneSettings:
    names = [f.name for f in dataclasses.fields(TuneSettings)]
    section = check.mapping(raw, "tune", names)
    t = TuneSettings()
    if "metric" in section:
        t.metric = check.string(section["metric"], "tune.metric")
    if "mode" in section:
        t.mode = check.one_of(section["mode"], "tune.mode", ("max", "min"))
    if "num_samples" in section:
        t.num_samples = check.integer(section["num_samples"], "tune.num_samples", 1)
    if "search" in section:
        t.search = check.one_of(section["search"], "tune.search", SEARCHERS)
    if "search_seed" in section:
        t.search_seed = check.integer(section["search_seed"], "tune.search_seed", 0)
    if "scheduler" in section:
        t.scheduler = check.one_of(section["scheduler"], "tune.scheduler", SCHEDULERS)
    if "asha" in section:
        asha = check.mapping(section["asha"], "tune.asha", ("grace_period", "reduction_factor"))
        if "grace_period" in asha:
            t.asha["grace_period"] = check.integer(
                asha["grace_period"], "tune.asha.grace_period", 1
            )
        if "reduction_factor" in asha:
            factor = check.number(asha["reduction_factor"], "tune.asha.reduction_factor")
            if factor <= 1:
                check.fail("tune.asha.reduction_factor", f"must be > 1, got {factor:g}")
            t.asha["reduction_factor"] = asha["reduction_factor"]
    if "seeds" in section:
        seeds = section["seeds"]
        problem = "expected a non-empty list of distinct integers >= 0, e.g. [0, 1, 2]"
        if not isinstance(seeds, list) or not seeds:
            check.fail("tune.seeds", f"{problem}, got {seeds!r}")
        for i, seed in enumerate(seeds):
            check.integer(seed, f"tune.seeds[{i}]", 0)
        if len(set(seeds)) != len(seeds):
            check.fail("tune.seeds", f"{problem}; {seeds} repeats a seed")
        t.seeds = list(seeds)
    if section.get("max_concurrent") is not None:
        t.max_concurrent = check.integer(section["max_concurrent"], "tune.max_concurrent", 1)
    if "max_failures" in section:
        t.max_failures = check.integer(section["max_failures"], "tune.max_failures", -1)
    if "reuse_actors" in section:
        t.reuse_actors = check.boolean(section["reuse_actors"], "tune.reuse_actors")
    if section.get("points_to_evaluate") is not None:
        points = section["points_to_evaluate"]
        if not isinstance(points, list) or not points:
            check.fail(
                "tune.points_to_evaluate",
                f"expected a non-empty list of {{axis: value}} mappings, got {points!r}",
            )
        t.points_to_evaluate = [
            check.mapping(point, f"tune.points_to_evaluate[{i}]") for i, point in enumerate(points)
        ]
    return t


def _points(tune: TuneSettings, axes: dict[str, Distribution], check: _Checker) -> None:
    """Check ``tune.points_to_evaluate`` against the search space and turn each value into what
    Tune samples (the label of a choice option, a number within its range)."""
    if not tune.points_to_evaluate:
        return
    if tune.search != "optuna":
        check.fail("tune.points_to_evaluate", f"needs tune.search optuna, not {tune.search}")
    for i, point in enumerate(tune.points_to_evaluate):
        key = f"tune.points_to_evaluate[{i}]"
        unknown = sorted(set(point) - set(axes))
        if unknown:
            check.fail(f"{key}.{unknown[0]}", f"not a search axis ({', '.join(axes)})")
        missing = [axis for axis in axes if axis not in point]
        if missing:
            check.fail(key, f"gives no value for search axis {', '.join(missing)}")
        for axis, dist in axes.items():
            point[axis] = _point_value(point[axis], dist, f"{key}.{axis}", check)


def _point_value(value: Any, dist: Distribution, key: str, check: _Checker) -> Any:
    if dist.categorical:
        for label, option in dist.options:
            if value == option or (isinstance(value, str) and value == label):
                return label
        check.fail(key, f"{value!r} is not one of its options ({', '.join(dist.labels())})")
    number = check.number(value, key)
    low, high = dist.args[0], dist.args[1]
    if dist.kind == "randint":
        if number != int(number) or not low <= number < high:
            check.fail(key, f"expected an integer in [{low}, {high}), got {value!r}")
        return int(number)
    if not low <= number <= high:
        check.fail(key, f"{value!r} is outside its range [{_label(low)}, {_label(high)}]")
    if dist.kind == "quniform" and not math.isclose(
        number / dist.args[2], round(number / dist.args[2])
    ):
        check.fail(key, f"{value!r} is not a multiple of its step {_label(dist.args[2])}")
    return number


#: What Ray Tune adds to every result a trial reports.
TUNE_METRICS = ("training_iteration", "time_total_s", "time_this_iter_s")


def _check_metric(tune: TuneSettings, base: ExperimentConfig, check: _Checker) -> None:
    """``tune.metric`` must be something a trial reports (a typo would leave every trial
    unranked and ASHA without a signal)."""
    from dakd.train import reported_metrics

    known = [*reported_metrics(base), *TUNE_METRICS]
    if tune.metric in known:
        return
    plain = [k for k in known if "/" not in k]
    check.fail(
        "tune.metric",
        f"{tune.metric!r} is not reported by the trials; they report {', '.join(plain)}, "
        "iou/<class> (e.g. iou/road) and loss/<term> (e.g. loss/total, loss/kl_target)",
    )


def _resources(raw: Any, check: _Checker) -> Resources:
    section = check.mapping(raw, "resources", ("cpu", "gpu", "workers"))
    r = Resources()
    if "cpu" in section:
        r.cpu = check.number(section["cpu"], "resources.cpu")
        if r.cpu <= 0:
            check.fail("resources.cpu", f"must be > 0, got {r.cpu:g}")
    if "gpu" in section:
        r.gpu = check.number(section["gpu"], "resources.gpu")
        if r.gpu < 0:
            check.fail("resources.gpu", f"must be >= 0, got {r.gpu:g}")
    if "workers" in section:
        r.workers = check.integer(section["workers"], "resources.workers", 1)
    return r


def _check_workers(
    r: Resources, base: ExperimentConfig, axes: dict[str, Distribution], check: _Checker
) -> None:
    """Data-parallel trials split ``data.batch_size`` between ``workers`` processes, each on its
    own device: the batch sizes the spec can give must divide, and no one GPU may be pinned."""
    if r.workers == 1:
        return
    if base.train.device not in ("auto", "cpu", "cuda"):
        check.fail(
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
        if isinstance(size, int) and size % r.workers:
            check.fail(
                key,
                f"the global batch {size} does not split between resources.workers "
                f"({r.workers}) data-parallel processes",
            )


#: Tracking stores MLflow opens: a SQLite file, a server, a database, a folder.
TRACKING_SCHEMES = ("sqlite", "http", "https", "postgresql", "mysql", "mssql", "file", "databricks")
#: Storage URIs pyarrow opens for Ray Tune (a plain path is a folder).
STORAGE_SCHEMES = ("s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss", "file")


def _scheme(value: str) -> str | None:
    match = re.match(r"([a-zA-Z][a-zA-Z0-9+.-]*):", value)
    if match is None or len(match.group(1)) == 1:  # no scheme, or a Windows drive letter
        return None
    return match.group(1).lower().split("+", 1)[0]


def _tracking(raw: Any, check: _Checker) -> Tracking:
    section = check.mapping(raw, "tracking", ("uri", "experiment"))
    uri = check.string(section.get("uri"), "tracking.uri", optional=True)
    if uri:
        scheme = _scheme(uri)
        if scheme not in TRACKING_SCHEMES:
            check.fail(
                "tracking.uri",
                f"{uri!r} is not an MLflow tracking URI: use sqlite:///PATH, http(s)://HOST:PORT "
                "(a tracking server), postgresql://... or mysql://... (a database)",
            )
    experiment = check.string(section.get("experiment"), "tracking.experiment", optional=True)
    if experiment is not None and not experiment.strip():
        check.fail("tracking.experiment", "must not be empty (leave it out: the spec's name)")
    return Tracking(uri=uri, experiment=experiment)


def _storage(raw: Any, check: _Checker) -> str:
    storage = check.string(raw, "storage")
    if not storage.strip():
        check.fail("storage", "must not be empty (a folder, or a URI such as s3://bucket/path)")
    scheme = _scheme(storage)
    if "://" in storage and scheme not in STORAGE_SCHEMES:
        check.fail(
            "storage",
            f"{storage!r}: Ray Tune's storage is a folder or a URI of {', '.join(STORAGE_SCHEMES)}",
        )
    return storage


def _stages(raw: Any, extra: dict[str, Any], base: ExperimentConfig, check: _Checker) -> dict:
    """Dotted overrides for the reused stages, checked on the teacher-DA and student-DA configs."""
    section = check.mapping(raw, "stages")
    stages: dict[str, Any] = {}
    for key, value in {**flatten(section), **extra}.items():
        for leaf, item in _assignments(key, value).items():
            if _path_kind(leaf) is None:
                check.fail(f"stages.{leaf}", "not a config path")
            if leaf == "stage":
                check.fail("stages.stage", "the sweep picks the stage; set other keys here")
            stages[leaf] = _plain(item)
    for stage in ("teacher_da", "student_da"):
        try:
            _config(base.to_dict(), {**stages, "teacher": "", "init": "", "stage": stage})
        except ConfigError as err:
            check.fail("stages", f"on the {stage} stage: {err}")
    return stages


def load_spec(path: str | Path, overrides: Sequence[str] = ()) -> SweepSpec:
    """Read, override (``"tune.num_samples=2"``, ``"experiment.train.steps=20"``,
    ``"search.loss.kl=0.5"``) and validate a spec; nothing of Ray is started."""
    path = Path(path)
    check = _Checker(path)
    if not path.is_file():
        check.fail("", "no such spec file")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        check.fail("", not_text(err))
    except OSError as err:
        check.fail("", f"cannot read it: {err}")
    except yaml.YAMLError as err:
        check.fail("", f"not valid YAML: {err}")
    if not isinstance(raw, dict):
        check.fail("", "expected a mapping at the top level")
    raw = check.mapping(raw, "", SECTIONS)
    experiment_extra, stages_extra = _apply_overrides(raw, overrides, check)

    if "name" not in raw:
        check.fail("name", "required (letters, digits, '_', '.', '-')")
    name = raw["name"]
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        check.fail("name", f"{name!r}: use letters, digits, '_', '.', '-'")
    description = raw.get("description") or ""
    if not isinstance(description, str):
        check.fail("description", f"expected text, got {description!r}")
    if "experiment" not in raw:
        check.fail("experiment", "required: the base experiment (base: FILE and/or config keys)")

    tree, assignments, base_file = _experiment_tree(
        raw["experiment"], experiment_extra, path, check
    )
    for key in assignments:
        if _path_kind(key) is None:
            check.fail(f"experiment.{key}", "not a config key of the experiment")
    tree = _merged(tree, assignments)
    try:
        base = _config(tree)
    except ConfigError as err:
        check.fail("experiment", str(err))
    # the fields _config filled with auto stay empty for trials that change the stage
    implicit = tuple(
        f for f in ("teacher", "init") if tree.get(f, "") == "" and getattr(base, f) == AUTO
    )
    tree = base.to_dict()
    tree.update(dict.fromkeys(implicit, ""))

    tune = _tune(raw.get("tune"), check)
    base, fixed, axes = _search(raw.get("search"), tree, base, check)
    implicit = tuple(f for f in implicit if f not in fixed)
    if tune.search == "optuna":
        for axis, dist in axes.items():
            if dist.kind == "grid":
                check.fail(
                    f"search.{axis}",
                    "grid needs tune.search grid or random (not optuna); use choice",
                )
    _points(tune, axes, check)
    _check_metric(tune, base, check)
    storage = raw.get("storage", "runs/ray")
    resources = _resources(raw.get("resources"), check)
    _check_workers(resources, base, axes, check)
    return SweepSpec(
        path=path,
        name=name,
        description=description,
        base=base,
        fixed=fixed,
        search=axes,
        stages=_stages(raw.get("stages"), stages_extra, base, check),
        tune=tune,
        resources=resources,
        tracking=_tracking(raw.get("tracking"), check),
        storage=_storage(storage, check),
        base_file=base_file,
        implicit_auto=implicit,
    )


# -- from the spec to Tune and back -----------------------------------------------------------


def param_space(spec: SweepSpec) -> dict[str, Any]:
    """The Ray Tune ``param_space``: axis name -> Tune domain (choice/grid over labels), plus
    ``"seed": tune.grid_search(seeds)`` for the grid and random searchers. With Optuna the seeds
    are not in the space: wrap the searcher in ``Repeater(repeat=len(seeds), set_index=True)``."""
    from ray import tune

    space: dict[str, Any] = {}
    for axis, dist in spec.search.items():
        if dist.kind == "choice":
            space[axis] = tune.choice(dist.labels())
        elif dist.kind == "grid":
            space[axis] = tune.grid_search(dist.labels())
        elif dist.kind == "uniform":
            space[axis] = tune.uniform(*dist.args)
        elif dist.kind == "loguniform":
            space[axis] = tune.loguniform(*dist.args)
        elif dist.kind == "randint":
            space[axis] = tune.randint(*dist.args)
        elif dist.kind == "quniform":
            space[axis] = tune.quniform(*dist.args)
        else:  # pragma: no cover - load_spec admits only KINDS
            raise SpecError(f"{spec.path}: search.{axis}: unknown distribution {dist.kind!r}")
    if spec.tune.search != "optuna":
        space["seed"] = tune.grid_search(list(spec.tune.seeds))
    return space


def _value(spec: SweepSpec, axis: str, dist: Distribution, sampled: Any) -> Any:
    """The config value behind a sampled label or number."""
    if dist.categorical:
        for label, value in dist.options:
            if isinstance(sampled, str) and sampled == label:
                return json.loads(json.dumps(value))
        for _, value in dist.options:
            if type(sampled) is type(value) and sampled == value:
                return json.loads(json.dumps(value))
        raise SpecError(
            f"{spec.path}: search.{axis}: {sampled!r} is not one of its options "
            f"({', '.join(dist.labels())})"
        )
    sampled = _plain(sampled)
    if isinstance(sampled, bool) or not isinstance(sampled, int | float):
        raise SpecError(f"{spec.path}: search.{axis}: expected a number, got {sampled!r}")
    if dist.kind == "randint":
        return int(sampled)
    if dist.kind == "quniform":
        q = dist.args[2]
        return float(f"{round(sampled / q) * q:.12g}")
    return float(sampled)


def _seed(spec: SweepSpec, sampled: Mapping) -> int:
    if "seed" in sampled:
        return int(_plain(sampled["seed"]))
    if TRIAL_INDEX in sampled:
        index = int(_plain(sampled[TRIAL_INDEX]))
        if not 0 <= index < len(spec.tune.seeds):
            raise SpecError(
                f"{spec.path}: tune.seeds: trial index {index} is outside the "
                f"{len(spec.tune.seeds)} seeds {spec.tune.seeds}"
            )
        return spec.tune.seeds[index]
    return spec.tune.seeds[0]


def trial_overrides(spec: SweepSpec, sampled: Mapping) -> dict[str, Any]:
    """Dotted config key -> value for one sampled Tune config: labels mapped back to values,
    mapping options expanded to their assignments, ``seed`` from ``"seed"`` or the Repeater's
    ``"__trial_index__"`` (``tune.seeds[0]`` when neither is there). Unknown keys are ignored."""
    out: dict[str, Any] = {}
    for axis, dist in spec.search.items():
        if axis not in sampled:
            continue
        value = _value(spec, axis, dist, sampled[axis])
        out.update(_assignments("" if _path_kind(axis) is None else axis, value))
    out["seed"] = _seed(spec, sampled)
    return out


def _base_tree(spec: SweepSpec) -> dict[str, Any]:
    tree = spec.base.to_dict()
    tree.update(dict.fromkeys(spec.implicit_auto, ""))
    return tree


def resolve(spec: SweepSpec, sampled: Mapping) -> ExperimentConfig:
    """The validated config of one trial: ``spec.base`` plus :func:`trial_overrides`."""
    return _config(_base_tree(spec), trial_overrides(spec, sampled))


def _short_names(axes: Sequence[str]) -> dict[str, str]:
    """The last path component of each axis, or as many trailing components as make it unique."""
    out = {}
    for axis in axes:
        parts = axis.split(".")
        for n in range(1, len(parts) + 1):
            name = ".".join(parts[-n:])
            others = [a for a in axes if a != axis and (a == name or a.endswith("." + name))]
            if not others:
                break
        out[axis] = name
    return out


def trial_label(spec: SweepSpec, sampled: Mapping) -> str:
    """A readable, short trial name such as ``"paradigm=d kl=0.1 seed=0"``: axes in file order
    by their last path component, floats with 3 significant digits, mapping options by label."""
    names = _short_names(list(spec.search))
    parts = []
    for axis, dist in spec.search.items():
        if axis not in sampled:
            continue
        value = _value(spec, axis, dist, sampled[axis])
        if _path_kind(axis) is None:
            parts.append(_label(value))
        else:
            parts.append(f"{names[axis]}={_short(value)}")
    parts.append(f"seed={_seed(spec, sampled)}")
    return " ".join(parts)


def num_trials(spec: SweepSpec) -> int:
    """How many trials Tune will run: grid/random: num_samples x grid sizes x seeds;
    optuna: num_samples x seeds."""
    n = spec.tune.num_samples * len(spec.tune.seeds)
    if spec.tune.search != "optuna":
        n *= math.prod(len(d.options) for d in spec.search.values() if d.kind == "grid")
    return n


def grid_variants(spec: SweepSpec) -> list[dict[str, Any]]:
    """The cartesian product of the grid axes and the seeds, as sampled-like dicts (labels and
    ``"seed"``); other axes take their first option or low bound. For ``--dry-run``."""
    grids = {axis: d.labels() for axis, d in spec.search.items() if d.kind == "grid"}
    variants = []
    for combo in itertools.product(*grids.values(), spec.tune.seeds):
        chosen = dict(zip(grids, combo[:-1]))
        sampled = {axis: chosen.get(axis, d.first()) for axis, d in spec.search.items()}
        sampled["seed"] = combo[-1]
        variants.append(sampled)
    return variants


def describe(spec: SweepSpec) -> str:
    """Several lines of text: the spec's search space, fixed values and Tune settings."""
    t = spec.tune
    lines = [f"sweep {spec.name} ({spec.path})"]
    if spec.description:
        lines.append(f"  {spec.description.strip()}")
    base = f"{spec.base_file} + " if spec.base_file else ""
    lines.append(f"base: {base}experiment section (stage {spec.base.stage})")
    if spec.fixed:
        lines.append("fixed:")
        lines += [f"  {key} = {_label(value)}" for key, value in spec.fixed.items()]
    lines.append("search:" if spec.search else "search: (no axes)")
    lines += [f"  {axis}: {dist}" for axis, dist in spec.search.items()]
    if spec.stages:
        lines.append("stages: " + ", ".join(f"{k}={_label(v)}" for k, v in spec.stages.items()))
    scheduler = t.scheduler
    if t.scheduler == "asha":
        scheduler += " " + ", ".join(f"{k}={v}" for k, v in t.asha.items())
    lines += [
        f"seeds: {t.seeds}",
        f"tune: {t.search} search, {t.num_samples} sample(s), {scheduler}; "
        f"{t.mode} {t.metric}; {num_trials(spec)} trial(s)",
        *(
            f"  tried first: {' '.join(f'{k}={_label(v)}' for k, v in point.items())}"
            for point in t.points_to_evaluate
        ),
        f"resources per trial: cpu {spec.resources.cpu:g}, gpu {spec.resources.gpu:g}, "
        f"workers {spec.resources.workers}",
        f"tracking: {spec.tracking.uri or 'default sqlite store'}, "
        f"experiment {spec.experiment_name}; storage: {spec.storage}",
    ]
    return "\n".join(lines)
