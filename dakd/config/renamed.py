"""Config keys renamed since runs were first stored, and reading them under their old names.

A key whose name read as a switch but holds a number was renamed (:data:`RENAMED_KEYS`). A
config, spec or ``--set`` override that still writes the old name works for now, with one note
on stderr per old name and process; configs stored inside checkpoints are read under either
name without a note. The old names are what stage fingerprints
(:meth:`dakd.config.ExperimentConfig.fingerprint`) and the result tables' configuration hashes
(:mod:`dakd.tracking.load`) hash, so stages and runs stored before a rename are found again.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

from dakd.config.build import fail

#: Old dotted key -> the key it is now.
RENAMED_KEYS: dict[str, str] = {
    "train.precise_bn": "train.precise_bn_images",
    "train.ema": "train.ema_decay",
}

#: New dotted key -> the old name, under which stored stages were keyed.
STORED_NAMES: dict[str, str] = {new: old for old, new in RENAMED_KEYS.items()}

_NOTED: set[str] = set()


def _note(old: str) -> None:
    if old not in _NOTED:
        _NOTED.add(old)
        print(
            f"note: {old} is now {RENAMED_KEYS[old]}; the old name is still read for now",
            file=sys.stderr,
        )


def current_key(key: str, note: bool = True) -> str:
    """The name a dotted ``key`` has now (itself unless renamed); an old name is noted once."""
    new = RENAMED_KEYS.get(key)
    if new is None:
        return key
    if note:
        _note(key)
    return new


def current_tree(tree: Mapping[str, Any], prefix: str = "", note: bool = True) -> dict[str, Any]:
    """A copy of the nested config ``tree`` (whose own dotted path is ``prefix``, with its
    trailing dot) with every old key under its current name; a tree that sets a key under both
    names is a ConfigError."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out[key] = current_tree(value, path + ".", note)
        elif path in RENAMED_KEYS:
            new = current_key(path, note).removeprefix(prefix)
            if new in tree:
                fail(path, f"renamed {prefix}{new}, which is set too; keep {prefix}{new}")
            out[new] = value
        else:
            out[key] = value
    return out


def stored_names(flat: Mapping[str, Any]) -> dict[str, Any]:
    """The dotted ``flat`` config with renamed keys under the names stages were stored with."""
    return {STORED_NAMES.get(key, key): value for key, value in flat.items()}
