"""The experiment's config tree as a sweep spec writes it: dotted paths into it, assignments
expanded leaf by leaf and merged into a plain copy, and the config built from it by the config's
own builder (with the sweep's reading of an empty ``teacher``/``init`` in DAKD).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from dakd.config import ExperimentConfig, from_dict, path_kind, set_dotted
from dakd.paradigms import AUTO


def config_path(key: str) -> str | None:
    """``"leaf"``/``"section"`` when ``key`` is a dotted path into the experiment config, else
    None."""
    return path_kind(ExperimentConfig, key)


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
