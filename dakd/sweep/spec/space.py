"""The search space of a sweep spec: the ``search`` section as fixed values and axes
(distributions), every option or range end checked by building the trial config it gives.

``search`` maps a dotted config path to a distribution (one of :data:`KINDS`; parsed without
eval) or to a plain value that is fixed; a name that is no config path is an axis whose
choice/grid options are mappings of dotted keys set together. Problems are ConfigErrors naming
``search.<axis>``.

A :class:`Distribution` is the one place that knows what an axis is to Ray Tune and back: its
Tune domain, the config value behind what Tune samples, the label a trial name shows, and how a
point Optuna tries first is written. Options of ``choice`` and ``grid`` reach Tune as string
labels (:func:`label_of`), since Optuna only accepts primitives.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import yaml

from dakd.config import (
    ExperimentConfig,
    coerce,
    current_key,
    current_tree,
    fail,
    flatten,
    require,
    within,
)
from dakd.sweep.spec.settings import number
from dakd.sweep.spec.tree import assignments, config_path, experiment_config, merged, plain

if TYPE_CHECKING:
    from dakd.sweep.spec.settings import TuneSettings

#: What a spec's name and an axis that is no config path may be called.
NAME = re.compile(r"[A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class Kind:
    """A kind of distribution: how ``search`` writes it and what Ray Tune makes of it."""

    name: str
    #: the ``ray.tune`` function of its domain, given the option labels or the range's numbers
    tune: str
    #: how many numbers a range takes (low, high[, q]); 0: a list of options
    numbers: int = 0
    #: Tune runs every option (``tune.grid_search``) instead of sampling one: each option
    #: multiplies the trials, and Optuna, which only samples, cannot search it
    grid: bool = False
    #: integers, the high end excluded (as Ray's ``randint``)
    integer: bool = False
    #: sampled on a log scale: low must be > 0
    log: bool = False
    #: multiples of the third number, q
    quantised: bool = False

    @property
    def categorical(self) -> bool:
        return self.numbers == 0


#: The distribution kinds of ``search`` entries, in the order messages list them.
KINDS: dict[str, Kind] = {
    k.name: k
    for k in (
        Kind("choice", "choice"),
        Kind("grid", "grid_search", grid=True),
        Kind("uniform", "uniform", 2),
        Kind("loguniform", "loguniform", 2, log=True),
        Kind("randint", "randint", 2, integer=True),
        Kind("quniform", "quniform", 3, quantised=True),
    )
}


def label_of(value: Any) -> str:
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
        return " ".join(f"{k}={label_of(v)}" for k, v in flatten(plain(value)).items())
    if isinstance(value, list | tuple):
        if value and all(isinstance(v, str | int | float | bool) for v in value):
            return "+".join(label_of(v) for v in value)
        return yaml.safe_dump(plain(value), default_flow_style=True, width=10**6).strip()
    return str(value)


def short_label(value: Any) -> str:
    """Like :func:`label_of`, floats with 3 significant digits (trial names)."""
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, list | tuple) and value and all(isinstance(v, float) for v in value):
        return "+".join(f"{v:.3g}" for v in value)
    return label_of(value)


@dataclass(frozen=True)
class Distribution:
    """One search axis. ``kind`` names one of :data:`KINDS`.

    ``args``: the option values (choice, grid) or the numbers (low, high[, q]) of a range.
    ``options``: ``(label, value)`` pairs of choice/grid, labels as Tune sees them.
    """

    kind: str
    args: tuple
    options: tuple = ()

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown distribution {self.kind!r}; one of {', '.join(KINDS)}")

    @property
    def traits(self) -> Kind:
        """Its kind's entry in :data:`KINDS`."""
        return KINDS[self.kind]

    @property
    def categorical(self) -> bool:
        """Options (choice, grid) rather than a range of numbers."""
        return self.traits.categorical

    @property
    def grid(self) -> bool:
        """A grid axis: every option runs, in every sample of the space."""
        return self.traits.grid

    def labels(self) -> list[str]:
        return [label for label, _ in self.options]

    def first(self) -> Any:
        """The first option's label, or a range's low bound (what a dry run shows)."""
        return self.options[0][0] if self.categorical else self.args[0]

    def tune_domain(self) -> Any:
        """The Ray Tune domain: ``tune.choice`` or ``tune.grid_search`` over the labels, or the
        range's function over its numbers (``tune.quniform(1.0, 4.0, 0.5)``)."""
        from ray import tune

        make = getattr(tune, self.traits.tune)
        return make(self.labels()) if self.categorical else make(*self.args)

    def config_value(self, sampled: Any, key: str = "") -> Any:
        """The config value behind what Tune sampled: an option's label (or the option's value
        itself), or a number (randint: an int; quniform: a multiple of q). A ConfigError naming
        ``key`` when it is neither."""
        if self.categorical:
            return self._option(sampled, key)
        sampled = plain(sampled)
        if isinstance(sampled, bool) or not isinstance(sampled, int | float):
            fail(key, f"expected a number, got {sampled!r}")
        if self.traits.integer:
            return int(sampled)
        if self.traits.quantised:
            q = self.args[2]
            return float(f"{round(sampled / q) * q:.12g}")
        return float(sampled)

    def _option(self, sampled: Any, key: str) -> Any:
        """A copy of the option a label (or an option's value, of the same type) names."""
        for label, value in self.options:
            if isinstance(sampled, str) and sampled == label:
                return json.loads(json.dumps(value))
        for _, value in self.options:
            if type(sampled) is type(value) and sampled == value:
                return json.loads(json.dumps(value))
        fail(key, f"{sampled!r} is not one of its options ({', '.join(self.labels())})")

    def label(self, sampled: Any, key: str = "") -> str:
        """The sampled value as a trial name shows it: its config value by :func:`short_label`
        (``0.123``, ``output+feature``, ``stage=dakd paradigm=d``)."""
        return short_label(self.config_value(sampled, key))

    def point_value(self, value: Any, key: str) -> Any:
        """A value of ``tune.points_to_evaluate`` as Tune samples it: the label of the option it
        is (or names), or a number in the range (randint: an int; quniform: on its step)."""
        if self.categorical:
            for label, option in self.options:
                if value == option or (isinstance(value, str) and value == label):
                    return label
            fail(key, f"{value!r} is not one of its options ({', '.join(self.labels())})")
        num = number(value, key)
        low, high = self.args[0], self.args[1]
        if self.traits.integer:
            require(
                num == int(num) and low <= num < high,
                key,
                f"expected an integer in [{low}, {high}), got {value!r}",
            )
            return int(num)
        require(
            low <= num <= high,
            key,
            f"{value!r} is outside its range [{label_of(low)}, {label_of(high)}]",
        )
        if self.traits.quantised:
            step = self.args[2]
            require(
                math.isclose(num / step, round(num / step)),
                key,
                f"{value!r} is not a multiple of its step {label_of(step)}",
            )
        return num

    def __str__(self) -> str:
        if self.categorical:
            return f"{self.kind}({' | '.join(self.labels())})"
        return f"{self.kind}({', '.join(label_of(a) for a in self.args)})"


def _try_config(tree: dict[str, Any], overrides: dict[str, Any], key: str, what: str) -> None:
    """Build the config ``overrides`` give on ``tree``; its error names the axis and the option."""
    with within(f"{key}: {what}"):
        experiment_config(tree, overrides)


def _option(axis: str, option: Any, index: int, label: str) -> dict[str, Any]:
    """The assignments of an option of an axis that is no config path: a mapping of dotted
    config keys, none of them the seed."""
    key = f"search.{axis}"
    if not isinstance(option, dict) or not option:
        fail(
            key,
            f"{axis!r} is not a config path, so its options must be mappings of dotted config "
            f"keys; option {index + 1} is {option!r}",
        )
    assigned = assignments("", option)
    for sub in assigned:
        require(
            config_path(sub) is not None, key, f"option {label!r}: {sub!r} is not a config path"
        )
        require(sub != "seed", key, f"option {label!r}: seeds come from tune.seeds")
    return assigned


def _categorical(
    axis: str, kind: str, args: Any, tree: dict[str, Any], conditional: bool
) -> Distribution:
    """A choice or grid axis: options with unique labels, each giving a valid config."""
    key = f"search.{axis}"
    require(
        isinstance(args, list) and bool(args),
        key,
        f"{kind} needs a non-empty list of options, got {args!r}",
    )
    options = []
    seen: dict[str, int] = {}
    for i, option in enumerate(args):
        label = label_of(option)
        if label in seen:
            fail(
                key,
                f"options {seen[label] + 1} and {i + 1} have the same label {label!r}; "
                "labels must be unique",
            )
        seen[label] = i
        assigned = _option(axis, option, i, label) if conditional else assignments(axis, option)
        _try_config(tree, assigned, key, f"option {label!r}")
        options.append((label, plain(option)))
    return Distribution(kind, tuple(plain(a) for a in args), tuple(options))


def _range(axis: str, kind: str, args: Any, tree: dict[str, Any]) -> Distribution:
    """A range axis: numbers of the right shape, and both ends giving a valid config."""
    key = f"search.{axis}"
    traits = KINDS[kind]
    shape = "[low, high, q]" if traits.numbers == 3 else "[low, high]"
    require(
        isinstance(args, list) and len(args) == traits.numbers,
        key,
        f"{kind} needs {shape}, got {args!r}",
    )
    if traits.integer:
        low, high = (coerce(a, int, f"{key} ({kind} bounds)") for a in args)
        numbers: tuple = (low, high)
    else:
        numbers = tuple(number(a, key) for a in args)
        low, high = numbers[:2]
    require(low < high, key, f"{kind} needs low < high, got {args!r}")
    require(not traits.log or low > 0, key, f"{kind} needs low > 0, got {args!r}")
    if traits.quantised:
        q = numbers[2]
        require(q > 0, key, f"{kind} needs q > 0, got {args!r}")
        for bound in (low, high):
            require(
                math.isclose(bound / q, round(bound / q)),
                key,
                f"{kind} bounds must be multiples of q={q:g}, got {bound:g}",
            )
    ends = (low, high - 1) if traits.integer else (low, high)
    for name, end in zip(("low", "high"), ends):
        _try_config(tree, {axis: end}, key, f"{name} {end!r}")
    return Distribution(kind, numbers)


def _distribution(axis: str, value: dict, tree: dict[str, Any], conditional: bool) -> Distribution:
    """One axis, each option (or both ends of a range) checked on the config ``tree``."""
    key = f"search.{axis}"
    require(
        len(value) == 1,
        key,
        f"a distribution is a mapping with one key ({', '.join(KINDS)}), got "
        f"{', '.join(map(str, value))}",
    )
    ((kind, args),) = value.items()
    if KINDS[kind].categorical:
        return _categorical(axis, kind, args, tree, conditional)
    require(
        not conditional,
        key,
        f"{axis!r} is not a config path; only choice or grid of mappings of dotted config keys "
        "can set several keys together",
    )
    return _range(axis, kind, args, tree)


def _fixed(axis: str, value: Any, kind: str | None) -> dict[str, Any]:
    """The dotted assignments of a plain (fixed) value of ``search``."""
    key = f"search.{axis}"
    if isinstance(value, dict) and kind == "leaf":
        fail(key, f"unknown distribution {next(iter(value), '')!r}; one of {', '.join(KINDS)}")
    require(
        kind is not None or isinstance(value, dict),
        key,
        f"{axis!r} is not a config path; a fixed value here must be a mapping of dotted config "
        "keys",
    )
    assigned = assignments("" if kind is None else axis, value)
    for sub in assigned:
        require(config_path(sub) is not None, key, f"{sub!r} is not a config path")
    return assigned


def current_axis(axis: str, value: Any) -> tuple[str, Any]:
    """One ``search`` entry with config keys renamed since (:mod:`dakd.config.renamed`) under
    their current names: the axis itself, and the keys of mappings it sets (a fixed mapping, or
    the options of a choice or grid)."""
    axis = current_key(axis)
    prefix = f"{axis}." if config_path(axis) is not None else ""

    def current(item: Any) -> Any:
        return current_tree(item, prefix) if isinstance(item, dict) else item

    if not isinstance(value, dict):
        return axis, value
    if not any(k in KINDS for k in value):
        return axis, current(value)
    return axis, {
        kind: [current(o) for o in args]
        if kind in KINDS and KINDS[kind].categorical and isinstance(args, list)
        else args
        for kind, args in value.items()
    }


def search_space(
    raw: Any, tree: dict[str, Any], base: ExperimentConfig
) -> tuple[ExperimentConfig, dict[str, Any], dict[str, Distribution]]:
    """Split ``search`` into fixed values (applied to ``base``, the config of ``tree``) and axes;
    validate both."""
    section = coerce(raw, dict[str, Any], "search")
    fixed: dict[str, Any] = {}
    entries: dict[str, tuple[Any, bool]] = {}
    for axis, value in section.items():
        key = f"search.{axis}"
        kind = config_path(axis)
        require(axis != "seed", key, "seeds come from tune.seeds (e.g. seeds: [0, 1, 2])")
        require(
            kind is not None or bool(NAME.fullmatch(axis) and not axis.startswith("__")),
            key,
            "an axis name is letters, digits, '_', '.', '-' (not starting '__')",
        )
        if isinstance(value, dict) and any(k in KINDS for k in value):
            entries[axis] = (value, kind is None)
            continue
        assigned = _fixed(axis, value, kind)
        with within(key):
            base = experiment_config(tree, {**fixed, **assigned})
        fixed.update({k: plain(v) for k, v in assigned.items()})
    axes = {
        axis: _distribution(axis, value, merged(tree, fixed), conditional)
        for axis, (value, conditional) in entries.items()
    }
    _check_overlaps(axes)
    return base, fixed, axes


def writes(axis: str, dist: Distribution) -> set[str]:
    """The dotted config keys an axis sets."""
    if config_path(axis) is not None:
        return {axis}
    return {key for _, option in dist.options for key in assignments("", option)}


def _check_overlaps(axes: dict[str, Distribution]) -> None:
    written = {axis: writes(axis, dist) for axis, dist in axes.items()}
    for (a, keys_a), (b, keys_b) in itertools.combinations(written.items(), 2):
        for ka, kb in itertools.product(keys_a, keys_b):
            if ka == kb or ka.startswith(kb + ".") or kb.startswith(ka + "."):
                fail(f"search.{b}", f"sets {kb}, which axis search.{a} sets too")


# -- the space and the Tune settings ------------------------------------------------------------


def check_against_tune(tune: TuneSettings, axes: dict[str, Distribution]) -> None:
    """What the searcher can sample: no grid axes under Optuna; ``tune.points_to_evaluate``
    checked against the axes, each value turned into what Tune samples (the label of a choice
    option, a number within its range)."""
    if tune.search == "optuna":
        for axis, dist in axes.items():
            require(
                not dist.grid,
                f"search.{axis}",
                f"{dist.kind} needs tune.search grid or random (not optuna); use choice",
            )
    if not tune.points_to_evaluate:
        return
    require(
        tune.search == "optuna",
        "tune.points_to_evaluate",
        f"needs tune.search optuna, not {tune.search}",
    )
    for i, point in enumerate(tune.points_to_evaluate):
        key = f"tune.points_to_evaluate[{i}]"
        unknown = sorted(set(point) - set(axes))
        if unknown:
            fail(f"{key}.{unknown[0]}", f"not a search axis ({', '.join(axes)})")
        missing = [axis for axis in axes if axis not in point]
        require(not missing, key, f"gives no value for search axis {', '.join(missing)}")
        for axis, dist in axes.items():
            point[axis] = dist.point_value(point[axis], f"{key}.{axis}")


def pinned(current: Any, value: Any) -> Any:
    """What ``--set search.<axis>=<value>`` leaves in ``search``: a label of one of the axis's
    choice/grid options pins that option's value; any other value replaces the entry."""
    if isinstance(value, str) and isinstance(current, dict) and len(current) == 1:
        ((kind, options),) = current.items()
        if kind in KINDS and KINDS[kind].categorical and isinstance(options, list):
            for option in options:
                if label_of(option) == value:
                    return option
    return value
