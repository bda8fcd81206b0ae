"""Config values as a sweep handles them: dotted assignments merged into the experiment's tree
and built with the config's own builder, and the short labels that name them.

Options of ``choice`` and ``grid`` axes reach Tune as string labels (Optuna only accepts
primitives): :func:`label_of` makes them, and trial names use :func:`short_label`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import yaml

from dakd.config import ExperimentConfig, coerce, flatten, from_dict, path_kind, require, set_dotted
from dakd.paradigms import AUTO


def config_path(key: str) -> str | None:
    """``"leaf"``/``"section"`` when ``key`` is a dotted path into the experiment config, else
    None."""
    return path_kind(ExperimentConfig, key)


def number(value: Any, key: str) -> float:
    """A number (ints accepted); NaN is refused too, since it passes no range check and would
    reach Tune or a trial unnoticed."""
    value = coerce(value, float, key)
    require(not math.isnan(value), key, f"expected a number, got {value!r}")
    return value


def assignments(key: str, value: Any) -> dict[str, Any]:
    """Dotted leaf assignments for ``key = value``; a mapping at a section (or at the top, ``key``
    empty) is expanded so it merges into the section instead of replacing it."""
    if isinstance(value, Mapping) and (not key or config_path(key) == "section"):
        out: dict[str, Any] = {}
        for sub, item in value.items():
            out.update(assignments(f"{key}.{sub}" if key else str(sub), item))
        return out
    return {key: value}


def plain(value: Any) -> Any:
    """A deep plain copy (lists, dicts, str, numbers, bool, None); numpy scalars become Python."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, str | bytes):  # numpy scalar
        return value.item()
    return value


def merged(tree: dict[str, Any], overrides: Mapping[str, Any] = ()) -> dict[str, Any]:
    """A copy of the plain config ``tree`` with dotted ``overrides`` merged in leaf by leaf."""
    tree = json.loads(json.dumps(tree))
    for key, value in dict(overrides).items():
        for leaf, item in assignments(key, value).items():
            set_dotted(tree, leaf, plain(item))
    return tree


#: A ``teacher``/``init`` the spec's experiment section sets to "" itself (DAKD from the student's
#: ``pretrained`` weights, not from a stage): kept empty where a left-out one becomes ``auto``.
EXPLICIT_EMPTY = "<empty>"


def experiment_config(tree: dict[str, Any], overrides: Mapping[str, Any] = ()) -> ExperimentConfig:
    """``tree`` with dotted ``overrides`` (leaf-expanded), DAKD's empty teacher/init set to auto
    (those :data:`EXPLICIT_EMPTY` stay empty), built and checked by the config itself
    (ConfigError on a problem)."""
    tree = merged(tree, overrides)
    if tree.get("stage", ExperimentConfig.stage) == "dakd":
        for key in ("teacher", "init"):
            if tree.get(key, "") == "":
                tree[key] = AUTO
    for key in ("teacher", "init"):
        if tree.get(key) == EXPLICIT_EMPTY:
            tree[key] = ""
    return from_dict(tree)


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
