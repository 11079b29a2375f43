"""The one typed loader for everything a user writes: recipe sections, method settings, architecture.

A schema is a frozen dataclass whose annotations give the types and whose field metadata gives the
bounds, as data (`bound(...)` below). `from_dict(cls, data, where)` checks unknown keys, types and
bounds and names the key path in a one-line `ConfigError`; `check_fields(obj)` runs the same checks
on a directly constructed config (call it from `__post_init__`). `load_yaml` reads YAML safely:
duplicate keys, deep nesting and alias expansion beyond a small budget are errors, found in
milliseconds. No error message echoes an unbounded value (`short`).

Leaf module: standard library, PyYAML and `ptq_bench.errors` only (no torch, no pandas).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import types
import typing
from dataclasses import MISSING, field
from typing import Any

import yaml

from ptq_bench.errors import RecipeError

MAX_DEPTH = 64  # nesting levels of a YAML document
MAX_NODES = 100_000  # values of a YAML document after expanding aliases
MAX_STR = 4096  # characters of a string value unless its field says otherwise
INT_LIMIT = 2**62  # |int| bound unless the field says otherwise (stays inside int64 arithmetic)


class ConfigError(RecipeError, ValueError):
    """A value that does not fit its schema. A RecipeError (CLI: one line, exit 2) and a ValueError."""


def short(value: Any, limit: int = 60) -> str:
    """A repr of `value` that never exceeds ~`limit` characters and never walks a large structure."""
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, int):
        return repr(value) if value.bit_length() <= 192 else f"<int of {value.bit_length()} bits>"
    if isinstance(value, dict):
        return f"<mapping of {len(value)} keys>"
    if isinstance(value, (list, tuple)):
        return f"<list of {len(value)} items>"
    text = repr(value[: limit + 1] if isinstance(value, (str, bytes)) else value)
    if isinstance(value, (str, bytes)) and len(value) > limit:
        return text[: limit - 1] + "…"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def label(key: Any) -> str:
    """A mapping key as it appears in a key path: bare when it is a short plain name, else `short(key)`."""
    plain = isinstance(key, str) and len(key) <= 60 and key.replace("-", "_").replace(".", "_").isidentifier()
    return key if plain else short(key)


def clip(text: str, limit: int = 200) -> str:
    """`text` cut to `limit` characters (an ellipsis marks the cut)."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def bound(default: Any = MISSING, *, factory: Any = MISSING, min: float | None = None, max: float | None = None,
          gt: float | None = None, lt: float | None = None, choices: tuple | None = None, max_len: int | None = None,
          unique: bool = False, nonblank: bool = False) -> Any:
    """A dataclass field with bounds as metadata: min <= x <= max, gt < x < lt, x in choices, len(str) <= max_len,
    unique list items, a string not empty or blank (a path or address: "" must not stand for the default).
    Bounds apply to the value (to each item of a list); None passes when the type allows it."""
    limits = {"min": min, "max": max, "gt": gt, "lt": lt, "choices": choices, "max_len": max_len, "unique": unique or None,
              "nonblank": nonblank or None}
    meta = {k: v for k, v in limits.items() if v is not None}
    return field(default=default, default_factory=factory, metadata=meta)


# ----------------------------------------------------------------------------------------------
# types


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _scalar(value: Any, tp: Any, where: str) -> Any:
    """int / float / bool / str: exact types (a bool is not a number, a string is not a bool)."""
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {short(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {short(value)}")
        if abs(value) > INT_LIMIT:
            raise ConfigError(f"{where}: integer out of range, got {short(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            hint = " (YAML reads 1e-3 as text: write 1.0e-3)" if _numeric_text(value) else ""
            raise ConfigError(f"{where}: expected a number, got {short(value)}{hint}")
        if isinstance(value, int) and abs(value) > INT_LIMIT:
            raise ConfigError(f"{where}: number out of range, got {short(value)}")
        if not math.isfinite(value):
            raise ConfigError(f"{where}: expected a finite number, got {short(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {short(value)}")
        if "\x00" in value:
            raise ConfigError(f"{where}: a string must not contain a NUL character, got {short(value)}")
        return value
    raise ConfigError(f"{where}: unsupported type {_type_name(tp)}")  # pragma: no cover - schema bug


def _numeric_text(value: Any) -> bool:
    try:
        return isinstance(value, str) and len(value) < 40 and math.isfinite(float(value))
    except ValueError:
        return False


def coerce(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against the annotation `tp`; return it converted (ints to float, dataclasses built)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None and len(args) < len(typing.get_args(tp)):
            return None
        if len(args) == 1:
            return coerce(value, args[0], where)
        for arg in args:
            try:
                return coerce(value, arg, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {short(value)}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {short(value)}")
        return from_dict(tp, value, where)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {short(value)}")
        (item_tp,) = typing.get_args(tp)
        return [coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {short(value)}")
        _, val_tp = typing.get_args(tp)
        return {_key(k, where): coerce(v, val_tp, f"{where}.{label(k)}") for k, v in value.items()}
    return _scalar(value, tp, where)


def _key(key: Any, where: str) -> str:
    if not isinstance(key, str):
        raise ConfigError(f"{where}: keys must be strings, got {short(key)}")
    return key


# ----------------------------------------------------------------------------------------------
# bounds


def check_value(value: Any, meta: typing.Mapping[str, Any], where: str) -> None:
    """Check one (already typed) value, or each item of a list, against a field's bounds."""
    if value is None:
        return
    if isinstance(value, list):
        if meta.get("unique") and len(set(map(repr, value))) < len(value):
            raise ConfigError(f"{where}: duplicate items")
        for i, v in enumerate(value):
            check_value(v, meta, f"{where}[{i}]")
        return
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        known = ", ".join(map(str, choices))
        known = known if len(known) <= 120 else f"{len(choices)} names (see `ptq-bench ls`)"
        raise ConfigError(f"{where}: expected one of {known}, got {short(value)}")
    if isinstance(value, str) and meta.get("nonblank") and not value.strip():
        raise ConfigError(f"{where}: empty, got {short(value)}; leave the key out for its default")
    if isinstance(value, str) and len(value) > meta.get("max_len", MAX_STR):
        raise ConfigError(f"{where}: longer than {meta.get('max_len', MAX_STR)} characters")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "min" in meta and value < meta["min"]:
            raise ConfigError(f"{where}: must be >= {meta['min']}, got {short(value)}")
        if "max" in meta and value > meta["max"]:
            raise ConfigError(f"{where}: must be <= {meta['max']}, got {short(value)}")
        if "gt" in meta and not value > meta["gt"]:
            raise ConfigError(f"{where}: must be > {meta['gt']}, got {short(value)}")
        if "lt" in meta and not value < meta["lt"]:
            raise ConfigError(f"{where}: must be < {meta['lt']}, got {short(value)}")


@functools.cache
def _schema(cls: type) -> tuple[dict[str, dataclasses.Field], dict[str, Any]]:
    return {f.name: f for f in dataclasses.fields(cls)}, typing.get_type_hints(cls)


def from_dict(cls: type, data: typing.Mapping[str, Any], where: str = "") -> Any:
    """Build dataclass `cls` from a mapping: unknown keys, wrong types and out-of-bound values are a
    ConfigError naming the key path (`train.seq_len: must be >= 1, got 0`)."""
    fields, hints = _schema(cls)
    prefix = f"{where}." if where else ""
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise ConfigError(f"{prefix}{label(key)}: unknown key (known: {', '.join(sorted(fields))})")
        kwargs[key] = coerce(value, hints[key], f"{prefix}{key}")
        check_value(kwargs[key], fields[key].metadata, f"{prefix}{key}")
    missing = [n for n, f in fields.items() if n not in kwargs and f.default is MISSING and f.default_factory is MISSING]
    if missing:
        raise ConfigError(f"{prefix}{missing[0]}: required")
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        raise ConfigError(f"{prefix}{exc}") from None
    except ValueError as exc:  # a cross-field check of __post_init__
        raise ConfigError(f"{where or cls.__name__}: {clip(str(exc))}") from None


def check_fields(obj: Any) -> None:
    """Types and bounds of a directly constructed config (from __post_init__); ConfigError names the field."""
    fields, hints = _schema(type(obj))
    for name, f in fields.items():
        value = getattr(obj, name)
        if not dataclasses.is_dataclass(hints[name]):
            coerce(value, hints[name], name)
        check_value(value, f.metadata, name)


def to_dict(obj: Any) -> Any:
    """Dataclasses (nested) -> plain dicts and lists."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_dict(v) for v in obj]
    return obj


# ----------------------------------------------------------------------------------------------
# YAML


class StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys, nesting deeper than MAX_DEPTH, and documents whose
    alias expansion exceeds MAX_NODES values (a "billion laughs" fails after a few hundred nodes)."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._depth = 0
        self._sizes: dict[int, int] = {}  # id(node) -> values in the node once aliases are expanded

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise ConfigError(f"line {self.peek_event().start_mark.line + 1}: nested deeper than {MAX_DEPTH} levels")
        alias = self.check_event(yaml.AliasEvent)
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if alias and id(node) not in self._sizes:  # an alias to a node still being composed
            raise ConfigError(f"line {node.start_mark.line + 1}: recursive YAML alias")
        if not alias:
            self._sizes[id(node)] = self._expanded_size(node)
        return node

    def _expanded_size(self, node: Any) -> int:
        children = node.value if isinstance(node, yaml.SequenceNode) else (
            [n for kv in node.value for n in kv] if isinstance(node, yaml.MappingNode) else [])
        size = 1 + sum(self._sizes[id(child)] for child in children)
        if size > MAX_NODES:
            raise ConfigError(f"line {node.start_mark.line + 1}: more than {MAX_NODES} values once YAML aliases "
                              "are expanded")
        return size

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            seen: set = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                if not isinstance(key, typing.Hashable):
                    continue  # SafeConstructor reports unhashable keys itself
                if key in seen:
                    raise ConfigError(f"line {key_node.start_mark.line + 1}: duplicate key {short(key)}")
                seen.add(key)
        return super().construct_mapping(node, deep)

    def construct_yaml_int(self, node: Any) -> int:
        if len(node.value) > 100:
            raise ConfigError(f"line {node.start_mark.line + 1}: integer literal of {len(node.value)} characters")
        return super().construct_yaml_int(node)


StrictLoader.add_constructor("tag:yaml.org,2002:int", StrictLoader.construct_yaml_int)


def load_yaml(text: str) -> Any:
    """Parse YAML text with StrictLoader; any problem is a ConfigError with its line."""
    try:
        return yaml.load(text, Loader=StrictLoader)  # noqa: S506 - StrictLoader is a SafeLoader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f"line {mark.line + 1}: " if mark else ""
        problem = clip(str(getattr(exc, "problem", "") or "parse error"), 80)
        raise ConfigError(f"{line}not valid YAML ({problem})") from None
    except RecursionError:
        raise ConfigError(f"nested deeper than {MAX_DEPTH} levels") from None


def fields_hash(fields: dict[str, Any]) -> str:
    """A recipe hash (`Recipe.digest`), the rule of every ptq-bench version so far (`meaning._hashed_then`): sha256 of
    the fields' sorted JSON, 16 hex digits."""
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:16]
