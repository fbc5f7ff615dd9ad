"""Validate a TOML table against a frozen dataclass whose fields carry their own rules.

`setting(default, low=, high=, choices=, identifier=, nonempty=)` declares a field and its rules;
`build(cls, table, key, file)` checks a parsed table against the class, recursing into
sub-tables, and raises `ConfigError` naming the file, the dotted key and the bad value.
Knows nothing of geod's settings: `config` declares them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import field, fields, is_dataclass
from typing import Any, get_origin, get_type_hints

from geod.errors import ConfigError

# SQL identifiers come from the config and are spliced into statements (as quoted identifiers),
# so only this conservative shape is accepted; values always travel as bound parameters.
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


def setting(
    default: Any,
    *,
    low: float = -math.inf,
    high: float = math.inf,
    choices: tuple[str, ...] = (),
    item: str = "value",
    identifier: bool = False,
    nonempty: bool = False,
) -> Any:
    """A dataclass field whose validation rules ride along in its metadata.

    Args:
        low, high: inclusive bounds of a number.
        choices: the allowed strings (of a string, or of each item of a list).
        item: what one list item is called in errors ("provider").
        identifier: an SQL identifier ("" allowed unless `nonempty`).
        nonempty: "" is not allowed.
    """
    rules = {"low": low, "high": high, "choices": choices, "item": item,
             "identifier": identifier, "nonempty": nonempty}
    return field(default=default, metadata=rules)


def build(cls: type[Any], raw: Mapping[str, Any], table: str, file: str) -> Any:
    """Validate one TOML table against dataclass `cls`, recursing into sub-tables."""
    hints = get_type_hints(cls)
    settable = {f.name: f for f in fields(cls) if not f.metadata.get("derived")}
    for key in raw:
        if key not in settable:
            raise ConfigError(file, _join(table, key), "unknown key")
    values: dict[str, Any] = {}
    for name, spec in settable.items():
        key = _join(table, name)
        hint = hints[name]
        if is_dataclass(hint):
            sub = raw.get(name, {})
            if not isinstance(sub, dict):
                raise ConfigError(file, key, f"must be a table, got {show(sub)}")
            values[name] = build(hint, sub, key, file)  # type: ignore[arg-type]
        elif name in raw:
            values[name] = _check_value(raw[name], hint, spec.metadata, key, file)
    return cls(**values)


def _check_value(value: Any, hint: Any, rules: Mapping[str, Any], key: str, file: str) -> Any:
    def fail(reason: str) -> ConfigError:
        return ConfigError(file, key, reason)

    if hint is bool:
        if not isinstance(value, bool):
            raise fail(f"must be true or false, got {show(value)}")
        return value
    if hint is int or hint is float:
        # TOML booleans are not numbers, even though Python's bool subclasses int.
        is_number = isinstance(value, int | float) and not isinstance(value, bool)
        if not is_number or (hint is int and not isinstance(value, int)):
            kind = "an integer" if hint is int else "a number"
            raise fail(f"must be {kind}, got {show(value)}")
        # Range first: math.isfinite overflows on integers beyond a float's range.
        if not rules["low"] <= value <= rules["high"] or not math.isfinite(value):
            raise fail(f"must be {rules['low']}..{rules['high']}, got {show(value)}")
        return hint(value)
    if get_origin(hint) is tuple:
        return _check_list(value, rules, fail)
    if not isinstance(value, str):
        raise fail(f"must be a string, got {show(value)}")
    if rules["choices"] and value not in rules["choices"]:
        raise fail(f"must be one of {', '.join(rules['choices'])}, got {show(value)}")
    if rules["nonempty"] and not value:
        raise fail("must not be empty")
    if rules["identifier"] and value and not _IDENTIFIER.fullmatch(value):
        raise fail(
            f"must be an SQL identifier (letters, digits, _; not starting with a digit), "
            f"got {show(value)}"
        )
    return value


def _check_list(value: Any, rules: Mapping[str, Any], fail: Callable[[str], ConfigError]) -> Any:
    """A non-empty array of distinct strings, each one of `choices`."""
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise fail(f"must be an array of strings, got {show(value)}")
    if not value:
        raise fail("must not be empty")
    for index, item in enumerate(value):
        if item not in rules["choices"]:
            known = ", ".join(rules["choices"])
            raise fail(f"unknown {rules['item']} {show(item)} (known: {known})")
        if item in value[:index]:
            raise fail(f"{show(item)} is listed twice")
    return tuple(value)


def _join(table: str, key: str) -> str:
    return f"{table}.{key}" if table else key


def show(value: Any) -> str:
    """A config value as the user would recognise it in their file."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return repr(value) if len(value) <= 60 else repr(value[:57] + "...")
    return str(value)
