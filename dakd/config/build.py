"""Plain data (YAML, ``--set`` overrides) to typed dataclasses, and the errors that name the key.

One builder serves every typed tree of the project: the experiment config and the sections of a
sweep spec. It checks keys and types (ints are accepted where floats are expected, never the
reverse); values are checked by each section's ``check``. Every problem is one
:class:`ConfigError` whose message starts with the dotted key.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import yaml


class ConfigError(ValueError):
    """A configuration problem; the message names the key (and the file, when there is one)."""


def fail(key: str, problem: str) -> NoReturn:
    """Raise the error ``"<key>: <problem>"`` (just the problem when ``key`` is empty)."""
    raise ConfigError(f"{key}: {problem}" if key else problem)


def require(ok: bool, key: str, problem: str) -> None:
    """:func:`fail` with ``key`` and ``problem`` unless ``ok``."""
    if not ok:
        fail(key, problem)


@contextmanager
def within(key: str) -> Iterator[None]:
    """Prefix errors raised inside with ``key``: a nested tree's error names where it sits."""
    try:
        yield
    except ConfigError as err:
        raise ConfigError(f"{key}: {err}") from None


def reject_unknown(keys: Iterable[Any], valid: Sequence[str], prefix: str = "") -> None:
    """Fail on the first of ``keys`` not in ``valid``, listing the valid keys; ``prefix`` is the
    dotted path of the mapping with its trailing dot (empty at the top)."""
    unknown = [key for key in keys if key not in valid]
    if unknown:
        where = f" under {prefix.rstrip('.')}" if prefix else ""
        fail(f"{prefix}{unknown[0]}", f"unknown key; valid keys{where}: {', '.join(valid)}")


#: How a message names the items of a list.
_ITEMS = {int: "integers", float: "numbers", str: "strings", bool: "true/false values"}


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _items_name(tp: Any) -> str:
    if typing.get_origin(tp) is dict:
        return "mappings"
    return _ITEMS.get(tp, _type_name(tp))


def _coerce_union(value: Any, tp: Any, key: str) -> Any:
    """An optional value (``X | None``) is an X or None, and says so when it is neither; other
    unions take the first option that accepts the value."""
    options = typing.get_args(tp)
    if value is None and type(None) in options:
        return None
    present = [option for option in options if option is not type(None)]
    if len(present) == 1:
        return coerce(value, present[0], key)
    for option in present:
        try:
            return coerce(value, option, key)
        except ConfigError:
            pass
    fail(key, f"{value!r} matches none of {_type_name(tp)}")


def _coerce_mapping(value: Any, tp: Any, key: str, default: Any) -> dict[str, Any]:
    """A mapping with string keys; a partial one keeps the default's other entries, as a
    partial section does, and null is an empty one (YAML reads a key with nothing under it as
    null)."""
    _, item_tp = typing.get_args(tp)
    if value is None:
        value = {}
    if not isinstance(value, dict):
        fail(key, f"expected a mapping, got {value!r}")
    for name in value:
        if not isinstance(name, str):
            fail(key, f"keys must be strings, got {name!r}")
    merged = dict(default or {})
    merged.update({name: coerce(item, item_tp, f"{key}.{name}") for name, item in value.items()})
    return merged


def _coerce_scalar(value: Any, tp: Any, key: str) -> Any:
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            fail(key, f"expected a number, got {value!r} ({type(value).__name__})")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            fail(key, f"expected an integer, got {value!r} ({type(value).__name__})")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            fail(key, f"expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            fail(key, f"expected a string, got {value!r} ({type(value).__name__})")
        return value
    fail(key, f"unsupported type {tp}")


def coerce(value: Any, tp: Any, key: str, default: Any = None) -> Any:
    """Check ``value`` against the annotation ``tp`` and return it typed.

    A nested section starts from ``default`` (the parent's default for it), so a partial mapping
    such as ``{models: {teacher: {width: 0.5}}}`` keeps the teacher's default name.
    """
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            fail(key, f"expected a mapping of {tp.__name__} fields, got {value!r}")
        return build(tp, value, key + ".", default)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(value, tp, key)
    if origin is dict:
        return _coerce_mapping(value, tp, key, default)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            fail(key, f"expected a list of {_items_name(item_tp)}, got {value!r}")
        return [coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    return _coerce_scalar(value, tp, key)


def open_keys(cls: type) -> tuple[str, list[str]]:
    """A dataclass's open keys: ``(field, names)`` where ``cls.OPEN_FIELD`` names a mapping field
    that holds the values of the keys ``cls.open_keys()`` lists (registered names without a
    field of their own, e.g. the loss terms' weights); ``("", [])`` for other dataclasses."""
    name = getattr(cls, "OPEN_FIELD", "")
    return (name, list(cls.open_keys())) if name else ("", [])


def build(cls: type, data: dict[str, Any], prefix: str = "", defaults: Any = None) -> Any:
    """The dataclass ``cls`` from a mapping of its fields; missing fields keep ``defaults``'
    values (``cls()`` when None). Keys and types are checked here, values by the caller. A
    dataclass with open keys (:func:`open_keys`) takes those keys beside its fields, into its
    open field, which is not a key itself."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    open_field, extra = open_keys(cls)
    reject_unknown(data, sorted([n for n in names if n != open_field] + extra), prefix)
    defaults = defaults if defaults is not None else cls()
    kwargs = {}
    for name in names:
        if name == open_field:
            _, item_tp = typing.get_args(hints[name])
            given = {k: coerce(v, item_tp, prefix + k) for k, v in data.items() if k in extra}
            kwargs[name] = {**getattr(defaults, name), **given}
        elif name in data:
            kwargs[name] = coerce(data[name], hints[name], prefix + name, getattr(defaults, name))
        else:
            kwargs[name] = getattr(defaults, name)
    return cls(**kwargs)


def lift_open_fields(obj: Any, tree: dict[str, Any]) -> dict[str, Any]:
    """``tree`` (``dataclasses.asdict(obj)``) with each open field's entries lifted into the
    mapping of its dataclass, as a config writes them (:func:`build` reads them back)."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            lift_open_fields(value, tree[f.name])
    open_field = getattr(obj, "OPEN_FIELD", "")
    if open_field:
        tree.update(tree.pop(open_field))
    return tree


def path_kind(cls: type, key: str) -> str | None:
    """``"leaf"``/``"section"`` when ``key`` is a dotted path into the dataclass ``cls``, else
    None. Open keys are leaves; so is any path into a mapping field (``models.student.args.x``)."""
    tp: Any = cls
    for part in key.split("."):
        if typing.get_origin(tp) is dict:
            return "leaf"
        if not dataclasses.is_dataclass(tp):
            return None
        hints = typing.get_type_hints(tp)
        if part not in hints or part == open_keys(tp)[0]:
            return "leaf" if part in open_keys(tp)[1] else None
        tp = hints[part]
    return "section" if dataclasses.is_dataclass(tp) else "leaf"


# -- dotted keys ------------------------------------------------------------------------------


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"loss": {"kl": 0.1}}`` -> ``{"loss.kl": 0.1}``."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, path + "."))
        else:
            out[path] = value
    return out


def parse_override(item: str) -> tuple[str, Any]:
    """``"loss.kl=0.5"`` -> ``("loss.kl", 0.5)``; the value is read as YAML (``[output]``, ``true``)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected KEY=VALUE, e.g. loss.kl=0.5")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {item!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"override {key}: cannot read value {raw!r}: {err}") from None
    return key, value


def set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    """Set ``tree[a][b][c] = value`` for ``key = "a.b.c"``, creating nested mappings on the way."""
    node = tree
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {key}: {part!r} is a value, not a section")
        node = child
    node[parts[-1]] = value


# -- files ------------------------------------------------------------------------------------


def not_text(err: UnicodeDecodeError) -> str:
    """What a file that failed to decode is, in words (for one-line errors)."""
    return (
        f"not UTF-8 text (byte {err.object[err.start]:#04x} at offset {err.start}); "
        "a config or spec is a YAML text file"
    )


def read_yaml(path: Path, what: str = "config") -> dict[str, Any]:
    """The top-level mapping of a YAML file (``{}`` when it is empty). A file that is missing,
    unreadable, not text, not YAML or not a mapping is one error ``"<path>: <problem>"``."""
    if not path.is_file():
        raise ConfigError(f"{path}: no such {what} file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: {not_text(err)}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read it: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data
