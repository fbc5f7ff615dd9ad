"""Load and validate geod's TOML config into frozen dataclasses.

`load_config` is pure: it reads one file and returns a `Config` or raises `ConfigError` naming the
file, the key and the problem. It sets nothing up (no logging, no exits); that is `cli`'s job.
Each dataclass field carries its own bounds in `metadata`, so one generic walker validates them all.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, get_origin, get_type_hints
from urllib.parse import urlsplit

from geod.credentials import read_key_file
from geod.errors import ConfigError
from geod.hostport import split_host_port

DEFAULT_CONFIG_PATH = Path("/etc/geod/config.toml")
FREE_BATCH_URL = "http://ip-api.com/batch"
PRO_BATCH_URL = "https://pro.ip-api.com/batch"
REDACTED = "<redacted>"
PROVIDERS = ("ip-api", "mmdb", "rir")

# SQL identifiers come from the config and are spliced into statements (as quoted identifiers),
# so only this conservative shape is accepted; values always travel as bound parameters.
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_DAY = 86_400


def _setting(default: Any, **rules: Any) -> Any:
    """A dataclass field whose validation rules (low, high, choices, identifier) ride along."""
    return field(default=default, metadata=rules)


@dataclass(frozen=True, slots=True)
class DaemonConfig:
    interval: float = _setting(600.0, low=1, high=30 * _DAY)
    initial_delay: float = _setting(0.0, low=0, high=_DAY)


@dataclass(frozen=True, slots=True)
class ColumnsConfig:
    """Names of the app's columns; "" means geod does not write that field."""

    ip: str = _setting("ip", identifier=True, required=True)
    country_code: str = _setting("country_code", identifier=True, required=True)
    country_name: str = _setting("country_name", identifier=True)
    asn: str = _setting("asn", identifier=True)
    org: str = _setting("org", identifier=True)
    updated_at: str = _setting("cached_at", identifier=True)
    source: str = _setting("", identifier=True)  # which provider answered ("mmdb", "ip-api")

    def written(self) -> dict[str, str]:
        """Field name -> column name for every field geod writes besides the key."""
        return {
            name: column
            for name, column in asdict(self).items()
            if column and name != "ip"
        }


@dataclass(frozen=True, slots=True)
class DatabaseConfig:
    path: str = _setting("geo.db", nonempty=True)
    table: str = _setting("geo_cache", identifier=True, required=True)
    create: bool = _setting(True)
    busy_timeout: float = _setting(30.0, low=0, high=3600)
    columns: ColumnsConfig = field(default_factory=ColumnsConfig)


@dataclass(frozen=True, slots=True)
class NegativeCacheConfig:
    ttl: int = _setting(600, low=1, high=30 * _DAY)
    max_ttl: int = _setting(_DAY, low=1, high=30 * _DAY)


@dataclass(frozen=True, slots=True)
class IpApiConfig:
    url: str = _setting("")  # "" = derived: the free endpoint, or the pro one when key is set
    key: str = _setting("")
    # A file holding the key (derived: read into `key`). "$CREDENTIALS_DIRECTORY/NAME" reads a
    # systemd LoadCredential=, so the key stays out of this world-readable file.
    key_file: str = _setting("")
    batch_size: int = _setting(100, low=1, high=100)
    timeout: float = _setting(10.0, low=0.1, high=300)
    max_attempts: int = _setting(5, low=1, high=20)
    reserve: int = _setting(0, low=0, high=14)  # the free batch limit is 15 per window
    share: str = _setting("auto", choices=("auto", "off"))  # leave the others' demand room


@dataclass(frozen=True, slots=True)
class ResolveConfig:
    # Tried in order; each provider gets only the addresses the ones before it could not answer.
    providers: tuple[str, ...] = _setting(("ip-api",), choices=PROVIDERS, item="provider")


@dataclass(frozen=True, slots=True)
class MmdbConfig:
    path: str = _setting("")  # a country/city database; required when providers has "mmdb"
    asn_path: str = _setting("")  # optional ASN database: adds asn/org to mmdb answers


@dataclass(frozen=True, slots=True)
class RirConfig:
    """No settings today (iptocc embeds its data); the table is accepted so it can grow some."""


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: str = _setting("info", choices=("debug", "info", "warning", "error"))
    format: str = _setting("auto", choices=("auto", "json", "console"))


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    listen: str = _setting("")  # "host:port" serving /metrics; "" = off


@dataclass(frozen=True, slots=True)
class Config:
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    negative_cache: NegativeCacheConfig = field(default_factory=NegativeCacheConfig)
    ipapi: IpApiConfig = field(default_factory=IpApiConfig)
    resolve: ResolveConfig = field(default_factory=ResolveConfig)
    mmdb: MmdbConfig = field(default_factory=MmdbConfig)
    rir: RirConfig = field(default_factory=RirConfig)
    log: LogConfig = field(default_factory=LogConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    source: str = field(default="", metadata={"derived": True})  # the file it was loaded from

    def redacted(self) -> dict[str, Any]:
        """The effective config as plain data, safe to print: secrets replaced."""
        data = asdict(self)
        if data["ipapi"]["key"]:
            data["ipapi"]["key"] = REDACTED
        return data


def config_path(cli_value: str | None, environ: Mapping[str, str] = os.environ) -> Path:
    """Pick the config file: --config, else $GEOD_CONFIG, else /etc/geod/config.toml."""
    if cli_value:
        return Path(cli_value)
    if environ.get("GEOD_CONFIG"):
        return Path(environ["GEOD_CONFIG"])
    return DEFAULT_CONFIG_PATH


def load_config(path: Path | str, environ: Mapping[str, str] = os.environ) -> Config:
    """Read, validate and complete the config at `path` (and the key file it names).

    Raises:
        ConfigError: the file is missing, unreadable, not TOML, or any value is invalid.
    """
    file = str(path)
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as error:
        raise ConfigError(file, "", f"cannot read config: {error.strerror or error}") from None
    except UnicodeDecodeError:
        raise ConfigError(file, "", "cannot read config: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(file, "", f"invalid TOML: {error}") from None
    config = _build(Config, raw, "", file)
    _check_relations(config, file)
    return _derive(_read_key_file(config, Path(path), environ), Path(path))


def _build(cls: type[Any], raw: Mapping[str, Any], table: str, file: str) -> Any:
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
                raise ConfigError(file, key, f"must be a table, got {_show(sub)}")
            values[name] = _build(hint, sub, key, file)  # type: ignore[arg-type]
        elif name in raw:
            values[name] = _check_value(raw[name], hint, spec.metadata, key, file)
        elif spec.default is MISSING:  # pragma: no cover - every setting has a default today
            raise ConfigError(file, key, "missing")
    return cls(**values)


def _check_value(value: Any, hint: Any, rules: Mapping[str, Any], key: str, file: str) -> Any:
    def fail(reason: str) -> ConfigError:
        return ConfigError(file, key, reason)

    if hint is bool:
        if not isinstance(value, bool):
            raise fail(f"must be true or false, got {_show(value)}")
        return value
    if hint is int or hint is float:
        # TOML booleans are not numbers, even though Python's bool subclasses int.
        is_number = isinstance(value, int | float) and not isinstance(value, bool)
        if not is_number or (hint is int and not isinstance(value, int)):
            kind = "an integer" if hint is int else "a number"
            raise fail(f"must be {kind}, got {_show(value)}")
        # Range first: math.isfinite overflows on integers beyond a float's range.
        if not rules["low"] <= value <= rules["high"] or not math.isfinite(value):
            raise fail(f"must be {rules['low']}..{rules['high']}, got {_show(value)}")
        return hint(value)
    if get_origin(hint) is tuple:
        return _check_list(value, rules, fail)
    if not isinstance(value, str):
        raise fail(f"must be a string, got {_show(value)}")
    if "choices" in rules and value not in rules["choices"]:
        raise fail(f"must be one of {', '.join(rules['choices'])}, got {_show(value)}")
    if (rules.get("required") or rules.get("nonempty")) and not value:
        raise fail("must not be empty")
    if rules.get("identifier") and value and not _IDENTIFIER.fullmatch(value):
        raise fail(
            f"must be an SQL identifier (letters, digits, _; not starting with a digit), "
            f"got {_show(value)}"
        )
    return value


def _check_list(value: Any, rules: Mapping[str, Any], fail: Callable[[str], ConfigError]) -> Any:
    """A non-empty array of distinct strings, each one of `choices`."""
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise fail(f"must be an array of strings, got {_show(value)}")
    if not value:
        raise fail("must not be empty")
    for index, item in enumerate(value):
        if item not in rules["choices"]:
            known = ", ".join(rules["choices"])
            raise fail(f"unknown {rules['item']} {_show(item)} (known: {known})")
        if item in value[:index]:
            raise fail(f"{_show(item)} is listed twice")
    return tuple(value)


def _check_relations(config: Config, file: str) -> None:
    """Rules that span several keys; single values were checked by `_build`."""
    if config.negative_cache.max_ttl < config.negative_cache.ttl:
        raise ConfigError(
            file,
            "negative_cache.max_ttl",
            f"must be at least ttl ({config.negative_cache.ttl}), "
            f"got {config.negative_cache.max_ttl}",
        )
    seen: dict[str, str] = {}
    for name, column in asdict(config.database.columns).items():
        if column and column.lower() in seen:
            raise ConfigError(
                file,
                f"database.columns.{name}",
                f"column {column!r} is already mapped to {seen[column.lower()]}",
            )
        if column:
            seen[column.lower()] = name
    if "mmdb" in config.resolve.providers and not config.mmdb.path:
        raise ConfigError(file, "mmdb.path", 'must be set when [resolve] providers has "mmdb"')
    url = config.ipapi.url
    if url:
        try:
            parts = urlsplit(url)
            host = parts.hostname
        except ValueError:  # e.g. an unclosed IPv6 bracket
            host = None
        if host is None or parts.scheme not in ("http", "https"):
            raise ConfigError(file, "ipapi.url", f"must be an http(s) URL, got {_show(url)}")
        if parts.query or parts.username or parts.password:
            raise ConfigError(
                file, "ipapi.url", "must not carry a query or credentials (use key for the key)"
            )
    if config.ipapi.key and config.ipapi.key_file:
        raise ConfigError(file, "ipapi.key_file", "set key or key_file, not both")
    if config.metrics.listen:
        try:
            split_host_port(config.metrics.listen)
        except ValueError as error:
            raise ConfigError(file, "metrics.listen", str(error)) from None


def _derive(config: Config, path: Path) -> Config:
    """Fill in values that depend on others: the file paths and the endpoint."""

    def beside_config(value: str) -> str:
        if not value or Path(value).is_absolute():
            return value
        return str(path.parent.absolute() / value)

    db_path = beside_config(config.database.path)
    mmdb = replace(
        config.mmdb,
        path=beside_config(config.mmdb.path),
        asn_path=beside_config(config.mmdb.asn_path),
    )
    url = config.ipapi.url or (PRO_BATCH_URL if config.ipapi.key else FREE_BATCH_URL)
    return replace(
        config,
        source=str(path),
        database=replace(config.database, path=db_path),
        ipapi=replace(config.ipapi, url=url),
        mmdb=mmdb,
    )


def _read_key_file(config: Config, path: Path, environ: Mapping[str, str]) -> Config:
    """Fill `ipapi.key` from `ipapi.key_file`; the key never appears in an error."""
    if not config.ipapi.key_file:
        return config
    try:
        key_path, secret = read_key_file(config.ipapi.key_file, path.parent.absolute(), environ)
    except ValueError as error:
        raise ConfigError(str(path), "ipapi.key_file", str(error)) from None
    return replace(config, ipapi=replace(config.ipapi, key=secret, key_file=str(key_path)))


def _join(table: str, key: str) -> str:
    return f"{table}.{key}" if table else key


def _show(value: Any) -> str:
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
