"""Validate a TOML table against a frozen dataclass whose fields carry their own rules.

`setting(default, low=, high=, choices=, identifier=, nonempty=, path=, secret=)` declares a
field and its rules (every string is also checked by `text_problem`; a `secret` is never echoed);
`build(cls, table, key, file)` checks a parsed table against the class, recursing into
sub-tables, and raises `ConfigError` naming the file, the dotted key and the bad value.
Knows nothing of geod's settings: `config` declares them.
"""

from __future__ import annotations

import math
import re
import unicodedata
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
    path: bool = False,
    secret: bool = False,
) -> Any:
    """A dataclass field whose validation rules ride along in its metadata.

    Args:
        low, high: inclusive bounds of a number.
        choices: the allowed strings (of a string, or of each item of a list).
        item: what one list item is called in errors ("provider").
        identifier: an SQL identifier ("" allowed unless `nonempty`).
        nonempty: "" is not allowed.
        path: a file name: also checked against what Linux takes (PATH_MAX, NAME_MAX).
        secret: never echoed in an error.
    """
    rules = {"low": low, "high": high, "choices": choices, "item": item,
             "identifier": identifier, "nonempty": nonempty, "path": path, "secret": secret}
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
    secret = bool(rules["secret"])
    if not isinstance(value, str):
        raise fail(f"must be a string, got {_kind(value) if secret else show(value)}")
    if (problem := text_problem(value, path=rules["path"])) is not None:
        raise fail(problem)
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


# What the OS (or a sane reader) cannot take in a config string. No setting has a use for a control
# character; in a path, a NUL would cut the name short in every C call (SQLite would quietly open
# a file called by the first part), and Linux refuses names past PATH_MAX / NAME_MAX bytes.
_PATH_MAX = 4095
_NAME_MAX = 255


def text_problem(value: str, *, path: bool = False) -> str | None:
    """Why `value` cannot be a config string, or None. Never quotes the value itself."""
    for index, char in enumerate(value):
        if unicodedata.category(char) == "Cc" or char in "\u2028\u2029":
            what = "a NUL character" if char == "\0" else f"control character U+{ord(char):04X}"
            return f"must not contain {what} (at position {index})"
    if path:
        encoded = value.encode("utf-8", "surrogateescape")
        if len(encoded) > _PATH_MAX:
            return f"path is {len(encoded):,} bytes, longer than the {_PATH_MAX:,} Linux allows"
        if any(len(part) > _NAME_MAX for part in encoded.split(b"/")):
            return f"a path component is longer than the {_NAME_MAX} bytes Linux allows"
    return None


def _kind(value: Any) -> str:
    """What sort of value was given, for settings whose value must not be echoed (secrets)."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, dict | list):
        return show(value)
    return "a date or time" if not isinstance(value, str) else "a string"


def _check_list(value: Any, rules: Mapping[str, Any], fail: Callable[[str], ConfigError]) -> Any:
    """A non-empty array of distinct strings, each one of `choices`."""
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise fail(f"must be an array of strings, got {show(value)}")
    for item in value:
        if (problem := text_problem(item)) is not None:
            raise fail(problem)
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
