"""The search space of a sweep spec: the ``search`` section as fixed values and axes
(distributions), every option or range end checked by building the trial config it gives.

``search`` maps a dotted config path to a distribution (choice, grid, uniform, loguniform,
randint, quniform; parsed without eval) or to a plain value that is fixed; a name that is no
config path is an axis whose choice/grid options are mappings of dotted keys set together.
Problems are ConfigErrors naming ``search.<axis>``.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dakd.config import ExperimentConfig, coerce, current_key, current_tree, fail, require, within
from dakd.sweep.spec.values import (
    assignments,
    config_path,
    experiment_config,
    label_of,
    merged,
    number,
    plain,
)

if TYPE_CHECKING:
    from dakd.sweep.spec.settings import TuneSettings

#: Distribution kinds of ``search`` entries, and how many numbers the range kinds take.
RANGES = {"uniform": 2, "loguniform": 2, "randint": 2, "quniform": 3}
CATEGORICAL = ("choice", "grid")
KINDS = (*CATEGORICAL, *RANGES)
#: What a spec's name and an axis that is no config path may be called.
NAME = re.compile(r"[A-Za-z0-9_.-]+")


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
    count = RANGES[kind]
    shape = "[low, high, q]" if count == 3 else "[low, high]"
    require(
        isinstance(args, list) and len(args) == count, key, f"{kind} needs {shape}, got {args!r}"
    )
    if kind == "randint":
        low, high = (coerce(a, int, f"{key} (randint bounds)") for a in args)
        numbers: tuple = (low, high)
    else:
        numbers = tuple(number(a, key) for a in args)
        low, high = numbers[:2]
    require(low < high, key, f"{kind} needs low < high, got {args!r}")
    require(kind != "loguniform" or low > 0, key, f"loguniform needs low > 0, got {args!r}")
    if kind == "quniform":
        q = numbers[2]
        require(q > 0, key, f"quniform needs q > 0, got {args!r}")
        for bound in (low, high):
            require(
                math.isclose(bound / q, round(bound / q)),
                key,
                f"quniform bounds must be multiples of q={q:g}, got {bound:g}",
            )
    ends = (low, high - 1) if kind == "randint" else (low, high)
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
    if kind in CATEGORICAL:
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
        kind: [current(o) for o in args] if kind in CATEGORICAL and isinstance(args, list) else args
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
                dist.kind != "grid",
                f"search.{axis}",
                "grid needs tune.search grid or random (not optuna); use choice",
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
            point[axis] = _point_value(point[axis], dist, f"{key}.{axis}")


def _point_value(value: Any, dist: Distribution, key: str) -> Any:
    if dist.categorical:
        for label, option in dist.options:
            if value == option or (isinstance(value, str) and value == label):
                return label
        fail(key, f"{value!r} is not one of its options ({', '.join(dist.labels())})")
    num = number(value, key)
    low, high = dist.args[0], dist.args[1]
    if dist.kind == "randint":
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
    if dist.kind == "quniform":
        step = dist.args[2]
        require(
            math.isclose(num / step, round(num / step)),
            key,
            f"{value!r} is not a multiple of its step {label_of(step)}",
        )
    return num
