"""Load and validate geod's TOML config into frozen dataclasses.

`load_config` is pure: it reads one file and returns a `Config` or raises `ConfigError` naming the
file, the key and the problem. It sets nothing up (no logging, no exits); that is `cli`'s job.
Each field declares its own bounds (`schema.setting`), so one generic walker checks them all.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from geod.country_names import COMMON, STYLES
from geod.credentials import MAX_KEY, read_key_file
from geod.errors import ConfigError
from geod.hostport import split_host_port
from geod.pg_url import check_url, read_password_file
from geod.safefile import UnreadableFile, read_small_file
from geod.schema import build, setting, show

DEFAULT_CONFIG_PATH = Path("/etc/geod/config.toml")
FREE_BATCH_URL = "http://ip-api.com/batch"
PRO_BATCH_URL = "https://pro.ip-api.com/batch"
REDACTED = "<redacted>"
PROVIDERS = ("ip-api", "mmdb", "rir")

_DAY = 86_400
MAX_CONFIG_BYTES = 1 << 20  # a real config is a few KiB; more is the wrong file


@dataclass(frozen=True, slots=True)
class DaemonConfig:
    interval: float = setting(600.0, low=1, high=30 * _DAY)
    initial_delay: float = setting(0.0, low=0, high=_DAY)
    # geod's own memory across restarts; "" = state.json in $STATE_DIRECTORY (none: not kept)
    state_file: str = setting("")


@dataclass(frozen=True, slots=True)
class ColumnsConfig:
    """Names of the app's columns; "" means geod does not write that field."""

    ip: str = setting("ip", identifier=True, nonempty=True)
    country_code: str = setting("country_code", identifier=True, nonempty=True)
    country_name: str = setting("country_name", identifier=True)
    asn: str = setting("asn", identifier=True)
    org: str = setting("org", identifier=True)
    updated_at: str = setting("cached_at", identifier=True)
    source: str = setting("", identifier=True)  # which provider answered ("mmdb", "ip-api")

    def written(self) -> dict[str, str]:
        """Field name -> column name for every field geod writes besides the key."""
        return {
            name: column
            for name, column in asdict(self).items()
            if column and name != "ip"
        }


@dataclass(frozen=True, slots=True)
class DatabaseConfig:
    # the shipped config says /var/lib/geod/geo.db
    path: str = setting("geo.db", nonempty=True, path=True)
    table: str = setting("geo_cache", identifier=True, nonempty=True)
    create: bool = setting(True)
    busy_timeout: float = setting(30.0, low=0, high=3600)
    # "postgresql://user@host/db": the app's table is in PostgreSQL (then `path` is unused).
    # The password never goes here: password_file, PGPASSFILE/.pgpass or peer auth.
    url: str = setting("")
    password_file: str = setting("")  # "$CREDENTIALS_DIRECTORY/NAME" reads a systemd credential
    # A schema geod may create and own (the fleet's leases, the shared attempt log); "" = none.
    geod_schema: str = setting("", identifier=True)
    # With geod_schema: how long a claim on a batch of addresses lasts unless renewed. A killed
    # instance's rows wait this long before another instance takes them over.
    lease_ttl: float = setting(120.0, low=2, high=3600)
    columns: ColumnsConfig = field(default_factory=ColumnsConfig)
    password: str = field(default="", metadata={"derived": True})  # read from password_file


@dataclass(frozen=True, slots=True)
class NegativeCacheConfig:
    ttl: int = setting(600, low=1, high=30 * _DAY)
    max_ttl: int = setting(_DAY, low=1, high=30 * _DAY)


@dataclass(frozen=True, slots=True)
class IpApiConfig:
    url: str = setting("")  # "" = derived: the free endpoint, or the pro one when key is set
    key: str = setting("", secret=True)  # never echoed in an error, a log line or check-config
    # A file holding the key (derived: read into `key`). "$CREDENTIALS_DIRECTORY/NAME" reads a
    # systemd LoadCredential=, so the key stays out of this world-readable file.
    key_file: str = setting("", path=True)
    batch_size: int = setting(100, low=1, high=100)
    timeout: float = setting(10.0, low=0.1, high=300)
    max_attempts: int = setting(5, low=1, high=20)
    reserve: int = setting(0, low=0, high=14)  # the free batch limit is 15 per window
    share: str = setting("auto", choices=("auto", "off"))  # leave the others' demand room
    # The local address requests leave from ("" = the system's choice), for a multi-homed host
    # whose route to ip-api.com must use one interface.
    source_address: str = setting("")


@dataclass(frozen=True, slots=True)
class ResolveConfig:
    # Tried in order; each provider gets only the addresses the ones before it could not answer.
    providers: tuple[str, ...] = setting(("ip-api",), choices=PROVIDERS, item="provider")
    # The one name written per country code, whichever provider answered: the short English
    # names ip-api and MaxMind use ("South Korea"), or ISO 3166-1's ("Korea, Republic of").
    country_names: str = setting(COMMON, choices=STYLES)


@dataclass(frozen=True, slots=True)
class RefreshConfig:
    """Keeping written rows right: fill their gaps, re-resolve them when old (see `upkeep`)."""

    # Rows geod wrote (known by the `source` column) are re-resolved once older than this.
    after: str = setting("30d")
    # Rows the app wrote: never ("off"), or once older than this. Needs `updated_at`.
    app_after: str = setting("off")
    # Fill NULL country_name/asn/org of rows that have a country, from a provider that has them.
    fill: bool = setting(True)
    # Re-check offline the rows an older build of the mmdb file answered, once it is replaced.
    new_mmdb_build: bool = setting(True)
    # Rows examined per pass for all of the above, after the NULL rows: bounds a pass's length.
    per_pass: int = setting(10_000, low=1, high=1_000_000)

    def after_s(self) -> float | None:
        """`after` in seconds; None = off."""
        return parse_age(self.after)

    def app_after_s(self) -> float | None:
        return parse_age(self.app_after)


_AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": _DAY, "w": 7 * _DAY}


def parse_age(text: str) -> float | None:
    """'30d' -> seconds (units s, m, h, d, w); 'off' -> None.

    Raises:
        ValueError: anything else, or an age outside 1 minute .. 10 years.
    """
    if text == "off":
        return None
    number, unit = text[:-1], text[-1:]
    if unit not in _AGE_UNITS or not number.isascii() or not number.isdigit():
        raise ValueError(f'must be "off" or a number and a unit (s, m, h, d, w), got {show(text)}')
    seconds = float(int(number) * _AGE_UNITS[unit])
    if not 60 <= seconds <= 3650 * _DAY:
        raise ValueError(f"must be between 1 minute and 10 years, got {show(text)}")
    return seconds


@dataclass(frozen=True, slots=True)
class MmdbConfig:
    path: str = setting("", path=True)  # a country/city database; required with providers "mmdb"
    asn_path: str = setting("", path=True)  # optional ASN database: adds asn/org to mmdb answers


@dataclass(frozen=True, slots=True)
class RirConfig:
    """No settings today (iptocc embeds its data); the table is accepted so it can grow some."""


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: str = setting("info", choices=("debug", "info", "warning", "error"))
    format: str = setting("auto", choices=("auto", "json", "console"))


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    listen: str = setting("")  # "host:port" serving /metrics; "" = off


@dataclass(frozen=True, slots=True)
class Config:
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    negative_cache: NegativeCacheConfig = field(default_factory=NegativeCacheConfig)
    ipapi: IpApiConfig = field(default_factory=IpApiConfig)
    resolve: ResolveConfig = field(default_factory=ResolveConfig)
    refresh: RefreshConfig = field(default_factory=RefreshConfig)
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
        if data["database"]["password"]:
            data["database"]["password"] = REDACTED
        return data


def config_path(cli_value: str | None, environ: Mapping[str, str] = os.environ) -> Path:
    """Pick the config file: --config, else $GEOD_CONFIG, else /etc/geod/config.toml."""
    if cli_value:
        return Path(cli_value)
    if environ.get("GEOD_CONFIG"):
        return Path(environ["GEOD_CONFIG"])
    return DEFAULT_CONFIG_PATH


def load_config(
    path: Path | str, environ: Mapping[str, str] = os.environ, *, read_secrets: bool = True
) -> Config:
    """Read, validate and complete the config at `path` (and the secret files it names).

    `read_secrets=False` leaves `ipapi.key_file` and `database.password_file` unread
    (`check-config --no-key-file`, which `systemctl reload` runs: LoadCredential= files are
    fixed at start, and systemd 252 does not give them to ExecReload= in the unit's sandbox).

    Raises:
        ConfigError: the file is missing, unreadable, not TOML, or any value is invalid.
    """
    file = str(path)
    try:
        data = read_small_file(path, MAX_CONFIG_BYTES)
        # A leading UTF-8 byte-order mark (Windows editors write one) carries no meaning in
        # TOML; it is dropped rather than reported as "invalid statement" at line 1, column 1.
        raw = tomllib.loads(data.decode("utf-8-sig"))
    except UnreadableFile as error:
        raise ConfigError(file, "", f"cannot read config: {error.reason}") from None
    except UnicodeDecodeError:
        raise ConfigError(file, "", "cannot read config: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(file, "", f"invalid TOML: {error}") from None
    except RecursionError:  # tomllib recurses into nested arrays and inline tables
        raise ConfigError(file, "", "invalid TOML: nested too deeply") from None
    config = build(Config, raw, "", file)
    _check_relations(config, file)
    if read_secrets:
        config = _read_password_file(config, Path(path), environ)
        config = _read_key_file(config, Path(path), environ)
    return _derive(config, Path(path))


def _check_relations(config: Config, file: str) -> None:
    """Rules that span several keys; single values were checked by `schema.build`."""
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
            shown = "a URL with credentials" if "@" in url else show(url)  # never echo a password
            raise ConfigError(file, "ipapi.url", f"must be an http(s) URL, got {shown}")
        if parts.query or parts.username or parts.password:
            raise ConfigError(
                file, "ipapi.url", "must not carry a query or credentials (use key for the key)"
            )
    for key in ("after", "app_after"):
        try:
            parse_age(getattr(config.refresh, key))
        except ValueError as error:
            raise ConfigError(file, f"refresh.{key}", str(error)) from None
    if config.refresh.app_after != "off" and not config.database.columns.updated_at:
        raise ConfigError(file, "refresh.app_after",
                          "needs [database.columns] updated_at (the age of the app's rows)")
    if config.ipapi.source_address:
        try:
            ipaddress.ip_address(config.ipapi.source_address)
        except ValueError:
            raise ConfigError(file, "ipapi.source_address",
                              f"must be an IP address, got {show(config.ipapi.source_address)}"
                              ) from None
    if config.database.url:
        try:
            check_url(config.database.url)
        except ValueError as error:
            raise ConfigError(file, "database.url", str(error)) from None
    elif config.database.password_file or config.database.geod_schema:
        key = "password_file" if config.database.password_file else "geod_schema"
        raise ConfigError(file, f"database.{key}", "needs a PostgreSQL url")
    key = config.ipapi.key
    if key and (len(key) > MAX_KEY or not key.isprintable() or any(c.isspace() for c in key)):
        # Like a key file's check, and like it without the value: it is a secret.
        raise ConfigError(file, "ipapi.key", f"must be the key alone (printable, no spaces, "
                                             f"at most {MAX_KEY} characters)")
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
        daemon=replace(config.daemon, state_file=beside_config(config.daemon.state_file)),
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


def _read_password_file(config: Config, path: Path, environ: Mapping[str, str]) -> Config:
    """Fill `database.password` from `database.password_file`; never shown in an error."""
    if not config.database.password_file:
        return config
    try:
        file, secret = read_password_file(
            config.database.password_file, path.parent.absolute(), environ)
    except ValueError as error:
        raise ConfigError(str(path), "database.password_file", str(error)) from None
    database = replace(config.database, password=secret, password_file=str(file))
    return replace(config, database=database)
