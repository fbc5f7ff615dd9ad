"""Tests for geod.config: a table of TOML text -> expected values | exact error; a property."""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Iterator
from dataclasses import Field, fields, is_dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geod.config import (
    DEFAULT_CONFIG_PATH,
    FREE_BATCH_URL,
    PRO_BATCH_URL,
    PROVIDERS,
    REDACTED,
    ColumnsConfig,
    Config,
    DaemonConfig,
    DatabaseConfig,
    IpApiConfig,
    LogConfig,
    NegativeCacheConfig,
    config_path,
    load_config,
    parse_age,
)
from geod.errors import ConfigError
from tests.conftest import write_config

IDENT = "must be an SQL identifier (letters, digits, _; not starting with a digit), got"
COLUMNS = ("ip", "country_code", "country_name", "asn", "org", "updated_at")
MONTH = 30 * 86_400


def _range(table: str, key: str, low: Any, high: Any, bad: str) -> str:
    return f"{{file}}: [{table}] {key}: must be {low}..{high}, got {bad}"


def _edges(
    table: str, key: str, low: Any, high: Any, below: str, above: str, extra: str = ""
) -> list[Any]:
    """The four edge rows of one numeric setting: low and high pass, just outside fails."""
    kind = float if key in _FLOATS else int
    head = f"[{table}]\n{extra}{key} = "
    return [
        pytest.param(f"{head}{low}\n", {f"{table}.{key}": kind(low)}, id=f"{key}-low"),
        pytest.param(f"{head}{high}\n", {f"{table}.{key}": kind(high)}, id=f"{key}-high"),
        pytest.param(
            f"{head}{below}\n", _range(table, key, low, high, below), id=f"{key}-below"
        ),
        pytest.param(
            f"{head}{above}\n", _range(table, key, low, high, above), id=f"{key}-above"
        ),
    ]


_FLOATS = {"interval", "initial_delay", "busy_timeout", "timeout"}

CASES: list[Any] = [
    # --- defaults ---------------------------------------------------------------------------
    pytest.param(
        "",
        {
            "daemon": DaemonConfig(),
            "negative_cache": NegativeCacheConfig(),
            "log": LogConfig(),
            "database.columns": ColumnsConfig(),
            "database.table": "geo_cache",
            "database.create": True,
            "database.busy_timeout": 30.0,
            "database.path": "{dir}/geo.db",
            "ipapi": IpApiConfig(url=FREE_BATCH_URL),
            "source": "{file}",
        },
        id="empty-file-defaults",
    ),
    pytest.param("[daemon]\n[database.columns]\n", {"daemon": DaemonConfig()}, id="empty-tables"),
    # --- numeric range edges ----------------------------------------------------------------
    *_edges("daemon", "interval", 1, MONTH, "0.5", str(MONTH + 1)),
    *_edges("daemon", "initial_delay", 0, 86_400, "-1", "86401"),
    *_edges("database", "busy_timeout", 0, 3600, "-0.001", "3600.5"),
    *_edges("negative_cache", "ttl", 1, MONTH, "0", str(MONTH + 1), extra=f"max_ttl = {MONTH}\n"),
    *_edges("ipapi", "batch_size", 1, 100, "0", "101"),
    *_edges("ipapi", "timeout", 0.1, 300, "0.09", "300.01"),
    *_edges("ipapi", "max_attempts", 1, 20, "0", "21"),
    *_edges("ipapi", "reserve", 0, 14, "-1", "15"),
    pytest.param(
        "[negative_cache]\nttl = 1\nmax_ttl = 1\n", {"negative_cache.max_ttl": 1}, id="max_ttl-low"
    ),
    pytest.param(
        f"[negative_cache]\nttl = {MONTH}\nmax_ttl = {MONTH}\n",
        {"negative_cache": NegativeCacheConfig(MONTH, MONTH)},
        id="max_ttl-high",
    ),
    pytest.param(
        "[negative_cache]\nttl = 1\nmax_ttl = 0\n",
        _range("negative_cache", "max_ttl", 1, MONTH, "0"),
        id="max_ttl-below",
    ),
    pytest.param(
        f"[negative_cache]\nmax_ttl = {MONTH + 1}\n",
        _range("negative_cache", "max_ttl", 1, MONTH, str(MONTH + 1)),
        id="max_ttl-above",
    ),
    pytest.param(
        "[daemon]\ninterval = 600\n", {"daemon.interval": 600.0}, id="int-for-float-is-float"
    ),
    pytest.param(
        "[daemon]\ninterval = 1e3\n", {"daemon.interval": 1000.0}, id="float-exponent-ok"
    ),
    # --- choices ----------------------------------------------------------------------------
    *[
        pytest.param(f'[log]\nlevel = "{level}"\n', {"log.level": level}, id=f"level-{level}")
        for level in ("debug", "info", "warning", "error")
    ],
    *[
        pytest.param(f'[log]\nformat = "{fmt}"\n', {"log.format": fmt}, id=f"format-{fmt}")
        for fmt in ("auto", "json", "console")
    ],
    pytest.param(
        '[log]\nlevel = "DEBUG"\n',
        "{file}: [log] level: must be one of debug, info, warning, error, got 'DEBUG'",
        id="level-case-sensitive",
    ),
    pytest.param(
        '[log]\nlevel = ""\n',
        "{file}: [log] level: must be one of debug, info, warning, error, got ''",
        id="level-empty",
    ),
    pytest.param(
        '[log]\nformat = "text"\n',
        "{file}: [log] format: must be one of auto, json, console, got 'text'",
        id="format-unknown",
    ),
    *[
        pytest.param(f'[ipapi]\nshare = "{share}"\n', {"ipapi.share": share}, id=f"share-{share}")
        for share in ("auto", "off")
    ],
    pytest.param(
        '[ipapi]\nshare = "on"\n',
        "{file}: [ipapi] share: must be one of auto, off, got 'on'",
        id="share-unknown",
    ),
    pytest.param(
        "[log]\nlevel = 10\n", "{file}: [log] level: must be a string, got 10", id="level-int"
    ),
    # --- types ------------------------------------------------------------------------------
    pytest.param("[database]\ncreate = false\n", {"database.create": False}, id="bool-false"),
    pytest.param(
        "[database]\ncreate = 1\n",
        "{file}: [database] create: must be true or false, got 1",
        id="bool-as-int",
    ),
    pytest.param(
        "[database]\ncreate = 0\n",
        "{file}: [database] create: must be true or false, got 0",
        id="bool-as-zero",
    ),
    pytest.param(
        '[database]\ncreate = "true"\n',
        "{file}: [database] create: must be true or false, got 'true'",
        id="bool-as-string",
    ),
    pytest.param(
        "[ipapi]\nbatch_size = true\n",
        "{file}: [ipapi] batch_size: must be an integer, got true",
        id="int-as-bool",
    ),
    pytest.param(
        '[ipapi]\nbatch_size = "50"\n',
        "{file}: [ipapi] batch_size: must be an integer, got '50'",
        id="int-as-string",
    ),
    pytest.param(
        "[ipapi]\nbatch_size = 1.5\n",
        "{file}: [ipapi] batch_size: must be an integer, got 1.5",
        id="int-as-float",
    ),
    pytest.param(
        "[ipapi]\nbatch_size = 50.0\n",
        "{file}: [ipapi] batch_size: must be an integer, got 50.0",
        id="int-as-whole-float",
    ),
    pytest.param(
        "[negative_cache]\nttl = [600]\n",
        "{file}: [negative_cache] ttl: must be an integer, got an array",
        id="int-as-array",
    ),
    pytest.param(
        "[daemon]\ninterval = false\n",
        "{file}: [daemon] interval: must be a number, got false",
        id="float-as-bool",
    ),
    pytest.param(
        '[daemon]\ninterval = "600"\n',
        "{file}: [daemon] interval: must be a number, got '600'",
        id="float-as-string",
    ),
    pytest.param(
        "[daemon]\ninterval = 1979-05-27\n",
        "{file}: [daemon] interval: must be a number, got 1979-05-27",
        id="float-as-date",
    ),
    *[
        pytest.param(
            f"[daemon]\ninterval = {bad}\n", _range("daemon", "interval", 1, MONTH, bad), id=bad
        )
        for bad in ("nan", "inf")
    ],
    pytest.param(
        "[daemon]\ninitial_delay = -inf\n",
        _range("daemon", "initial_delay", 0, 86_400, "-inf"),
        id="minus-inf",
    ),
    pytest.param(
        "[ipapi]\ntimeout = -nan\n", _range("ipapi", "timeout", 0.1, 300, "nan"), id="minus-nan"
    ),
    pytest.param(
        f"[ipapi]\nbatch_size = {10**400}\n",
        _range("ipapi", "batch_size", 1, 100, str(10**400)),
        id="huge-int-for-int",
    ),
    pytest.param(
        f"[daemon]\ninterval = {10**400}\n",
        _range("daemon", "interval", 1, MONTH, str(10**400)),
        id="huge-int-for-float",
    ),
    pytest.param(
        f"[ipapi]\nbatch_size = {2**64}\n",
        _range("ipapi", "batch_size", 1, 100, str(2**64)),
        id="int-beyond-64-bit",
    ),
    pytest.param(
        "[ipapi]\nkey = 5\n", "{file}: [ipapi] key: must be a string, got a number", id="key-as-int"
    ),
    pytest.param(
        "[database]\npath = 5\n",
        "{file}: [database] path: must be a string, got 5",
        id="path-as-int",
    ),
    pytest.param(
        '[database]\npath = ""\n', "{file}: [database] path: must not be empty", id="path-empty"
    ),
    # --- unknown keys, tables, duplicates ---------------------------------------------------
    *[
        pytest.param(
            f"[{table}]\nbogus = 1\n",
            f"{{file}}: [{table}] bogus: unknown key",
            id=f"unknown-key-{table}",
        )
        for table in ("daemon", "database", "database.columns", "negative_cache", "ipapi", "log")
    ],
    pytest.param("[daemons]\n", "{file}: daemons: unknown key", id="unknown-table"),
    pytest.param("interval = 5\n", "{file}: interval: unknown key", id="top-level-scalar"),
    pytest.param('source = "x"\n', "{file}: source: unknown key", id="derived-not-settable"),
    pytest.param(
        "[daemon.sub]\nx = 1\n", "{file}: [daemon] sub: unknown key", id="unknown-subtable"
    ),
    pytest.param("daemon = 5\n", "{file}: daemon: must be a table, got 5", id="table-as-int"),
    pytest.param(
        "daemon = [1, 2]\n", "{file}: daemon: must be a table, got an array", id="table-as-array"
    ),
    pytest.param(
        '[database]\ncolumns = "ip"\n',
        "{file}: [database] columns: must be a table, got 'ip'",
        id="subtable-as-string",
    ),
    pytest.param(
        "daemon = { interval = 5 }\n", {"daemon.interval": 5.0}, id="inline-table-ok"
    ),
    pytest.param(
        "[daemon]\ninterval = 5\ninterval = 6\n",
        "{file}: invalid TOML: Cannot overwrite a value (at line 3, column 13)",
        id="duplicate-key",
    ),
    pytest.param(
        "[daemon]\n[daemon]\n",
        "{file}: invalid TOML: Cannot declare ('daemon',) twice (at line 2, column 8)",
        id="duplicate-table",
    ),
    pytest.param(
        "[daemon\n",
        "{file}: invalid TOML: Expected ']' at the end of a table declaration "
        "(at line 1, column 8)",
        id="broken-toml",
    ),
    # --- SQL identifiers --------------------------------------------------------------------
    pytest.param(
        '[database]\ntable = "select"\n', {"database.table": "select"}, id="table-keyword"
    ),
    pytest.param(
        '[database]\ntable = "x; drop table"\n',
        f"{{file}}: [database] table: {IDENT} 'x; drop table'",
        id="table-injection",
    ),
    pytest.param(
        '[database]\ntable = "1abc"\n',
        f"{{file}}: [database] table: {IDENT} '1abc'",
        id="table-leading-digit",
    ),
    pytest.param(
        '[database]\ntable = ""\n', "{file}: [database] table: must not be empty", id="table-empty"
    ),
    pytest.param(
        f'[database]\ntable = "{"t" * 63}"\n', {"database.table": "t" * 63}, id="table-63"
    ),
    pytest.param(
        f'[database]\ntable = "{"t" * 64}"\n',
        f"{{file}}: [database] table: {IDENT} '{'t' * 57}...'",
        id="table-64",
    ),
    *[
        case
        for column in COLUMNS
        for case in (
            pytest.param(
                f'[database.columns]\n{column} = "x; drop table"\n',
                f"{{file}}: [database.columns] {column}: {IDENT} 'x; drop table'",
                id=f"{column}-injection",
            ),
            pytest.param(
                f'[database.columns]\n{column} = "1abc"\n',
                f"{{file}}: [database.columns] {column}: {IDENT} '1abc'",
                id=f"{column}-leading-digit",
            ),
            pytest.param(
                f'[database.columns]\n{column} = "Select"\n',
                {f"database.columns.{column}": "Select"},
                id=f"{column}-keyword",
            ),
            pytest.param(
                f'[database.columns]\n{column} = "_{"c" * 62}"\n',
                {f"database.columns.{column}": "_" + "c" * 62},
                id=f"{column}-63",
            ),
            pytest.param(
                f'[database.columns]\n{column} = "{"c" * 64}"\n',
                f"{{file}}: [database.columns] {column}: {IDENT} '{'c' * 57}...'",
                id=f"{column}-64",
            ),
            pytest.param(
                f'[database.columns]\n{column} = "a-b"\n',
                f"{{file}}: [database.columns] {column}: {IDENT} 'a-b'",
                id=f"{column}-dash",
            ),
            pytest.param(
                f'[database.columns]\n{column} = "é"\n',
                f"{{file}}: [database.columns] {column}: {IDENT} 'é'",
                id=f"{column}-non-ascii",
            ),
        )
    ],
    *[
        pytest.param(
            f'[database.columns]\n{column} = ""\n',
            f"{{file}}: [database.columns] {column}: must not be empty",
            id=f"{column}-empty",
        )
        for column in ("ip", "country_code")
    ],
    *[
        pytest.param(
            f'[database.columns]\n{column} = ""\n',
            {f"database.columns.{column}": "", "written": f"-{column}"},
            id=f"{column}-empty-ok",
        )
        for column in ("country_name", "asn", "org", "updated_at")
    ],
    pytest.param(
        '[database.columns]\ncountry_name = ""\nasn = ""\norg = ""\nupdated_at = ""\n',
        {"written": {"country_code": "country_code"}},
        id="only-country-code-written",
    ),
    pytest.param(
        "",
        {
            "written": {
                "country_code": "country_code",
                "country_name": "country_name",
                "asn": "asn",
                "org": "org",
                "updated_at": "cached_at",
            }
        },
        id="written-default",
    ),
    pytest.param(
        '[database.columns]\ncountry_name = "IP"\n',
        "{file}: [database.columns] country_name: column 'IP' is already mapped to ip",
        id="duplicate-column-case",
    ),
    pytest.param(
        '[database.columns]\nasn = "org"\n',
        "{file}: [database.columns] org: column 'org' is already mapped to asn",
        id="duplicate-column-later-key",
    ),
    pytest.param(
        '[database.columns]\nupdated_at = "Country_Code"\n',
        "{file}: [database.columns] updated_at: column 'Country_Code' is already mapped to "
        "country_code",
        id="duplicate-column-updated-at",
    ),
    pytest.param(
        '[database.columns]\nasn = ""\norg = ""\n',
        {"database.columns.asn": "", "database.columns.org": ""},
        id="two-empty-columns-ok",
    ),
    pytest.param(
        '[database]\ntable = "ip"\n', {"database.table": "ip"}, id="table-may-share-column-name"
    ),
    # --- relations --------------------------------------------------------------------------
    pytest.param(
        "[negative_cache]\nttl = 100\nmax_ttl = 99\n",
        "{file}: [negative_cache] max_ttl: must be at least ttl (100), got 99",
        id="max_ttl-below-ttl",
    ),
    pytest.param(
        "[negative_cache]\nttl = 100\nmax_ttl = 100\n",
        {"negative_cache": NegativeCacheConfig(100, 100)},
        id="max_ttl-equals-ttl",
    ),
    pytest.param(
        "[negative_cache]\nttl = 90000\n",
        "{file}: [negative_cache] max_ttl: must be at least ttl (90000), got 86400",
        id="ttl-above-default-max_ttl",
    ),
    # --- url --------------------------------------------------------------------------------
    pytest.param("", {"ipapi.url": FREE_BATCH_URL, "ipapi.key": ""}, id="url-free"),
    pytest.param(
        '[ipapi]\nkey = "k3y"\n', {"ipapi.url": PRO_BATCH_URL, "ipapi.key": "k3y"}, id="url-pro"
    ),
    pytest.param(
        '[ipapi]\nurl = "http://127.0.0.1:8080/batch"\nkey = "k3y"\n',
        {"ipapi.url": "http://127.0.0.1:8080/batch", "ipapi.key": "k3y"},
        id="url-explicit-with-key",
    ),
    pytest.param(
        '[ipapi]\nurl = "https://[::1]:8443/batch"\n',
        {"ipapi.url": "https://[::1]:8443/batch"},
        id="url-ipv6-host",
    ),
    pytest.param(
        '[ipapi]\nurl = "ftp://ip-api.com/batch"\n',
        "{file}: [ipapi] url: must be an http(s) URL, got 'ftp://ip-api.com/batch'",
        id="url-ftp",
    ),
    pytest.param(
        '[ipapi]\nurl = "ip-api.com/batch"\n',
        "{file}: [ipapi] url: must be an http(s) URL, got 'ip-api.com/batch'",
        id="url-no-scheme",
    ),
    pytest.param(
        '[ipapi]\nurl = "http:///batch"\n',
        "{file}: [ipapi] url: must be an http(s) URL, got 'http:///batch'",
        id="url-no-host",
    ),
    pytest.param(
        '[ipapi]\nurl = "http://ip-api.com/batch?key=x"\n',
        "{file}: [ipapi] url: must not carry a query or credentials (use key for the key)",
        id="url-query",
    ),
    pytest.param(
        '[ipapi]\nurl = "http://user:pw@ip-api.com/batch"\n',
        "{file}: [ipapi] url: must not carry a query or credentials (use key for the key)",
        id="url-credentials",
    ),
    pytest.param(
        '[ipapi]\nurl = "http://:pw@ip-api.com/batch"\n',
        "{file}: [ipapi] url: must not carry a query or credentials (use key for the key)",
        id="url-password-only",
    ),
    pytest.param(
        '[ipapi]\nurl = "http://[::1/batch"\n',
        "{file}: [ipapi] url: must be an http(s) URL, got 'http://[::1/batch'",
        id="url-unclosed-bracket",
    ),
    pytest.param(
        "[ipapi]\nurl = 5\n", "{file}: [ipapi] url: must be a string, got 5", id="url-as-int"
    ),
    # --- database path ----------------------------------------------------------------------
    pytest.param(
        '[database]\npath = "data/geo.db"\n', {"database.path": "{dir}/data/geo.db"}, id="rel-path"
    ),
    pytest.param(
        '[database]\npath = "../geo.db"\n', {"database.path": "{dir}/../geo.db"}, id="parent-path"
    ),
    pytest.param(
        '[database]\npath = "/var/lib/geod/geo.db"\n',
        {"database.path": "/var/lib/geod/geo.db"},
        id="abs-path",
    ),
]


def _lookup(config: Config, dotted: str) -> Any:
    if dotted == "written":
        return config.database.columns.written()
    value: Any = config
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def check_case(tmp_path: Path, toml: str, expected: str | dict[str, Any]) -> None:
    """Load `toml`: it must fail with exactly `expected` (a str) or give the values in it."""
    path = write_config(tmp_path / "geod.toml", toml)
    subs = {"file": str(path), "dir": str(tmp_path)}
    if isinstance(expected, str):
        with pytest.raises(ConfigError) as caught:
            load_config(path)
        assert str(caught.value) == expected.format(**subs)
        return
    config = load_config(path)
    for dotted, want in expected.items():
        got = _lookup(config, dotted)
        if isinstance(want, str) and want.startswith("-") and dotted == "written":
            assert want[1:] not in got
        elif isinstance(want, str):
            assert got == want.format(**subs), dotted
        else:
            assert got == want, dotted
            assert type(got) is type(want), dotted


@pytest.mark.parametrize(("toml", "expected"), CASES)
def test_load_config(tmp_path: Path, toml: str, expected: str | dict[str, Any]) -> None:
    """Each TOML text loads to the expected values or fails with exactly the expected error."""
    check_case(tmp_path, toml, expected)


def test_load_config_accepts_str_path(tmp_path: Path) -> None:
    """A plain string path works like a Path and is recorded as the source."""
    path = write_config(tmp_path / "geod.toml", "")
    config = load_config(str(path))
    assert config.source == str(path)
    assert config.database.path == str(tmp_path / "geo.db")


def test_relative_config_path_gives_absolute_database_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A config named by a relative path still yields an absolute database path."""
    (tmp_path / "etc").mkdir()
    write_config(tmp_path / "etc" / "geod.toml", '[database]\npath = "geo.db"\n')
    monkeypatch.chdir(tmp_path)
    config = load_config("etc/geod.toml")
    assert config.database.path == str(tmp_path / "etc" / "geo.db")


@pytest.mark.parametrize(
    ("setup", "reason"),
    [
        pytest.param(lambda p: None, "cannot read config: No such file or directory", id="missing"),
        pytest.param(lambda p: p.mkdir(), "cannot read config: Is a directory", id="directory"),
        pytest.param(
            lambda p: p.write_bytes(b"[log]\nlevel = \"\xff\xfe\"\n"),
            "cannot read config: not UTF-8 text",
            id="not-utf8",
        ),
    ],
)
def test_unreadable_config(tmp_path: Path, setup: Any, reason: str) -> None:
    """A file that cannot be read as UTF-8 text is a ConfigError about the whole file."""
    path = tmp_path / "geod.toml"
    setup(path)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.key == ""
    assert caught.value.file == str(path)
    assert caught.value.reason.startswith("cannot read config:")
    assert str(caught.value) == f"{path}: {reason}"


def test_redacted_hides_key(tmp_path: Path) -> None:
    """redacted() replaces a non-empty key and leaves everything else as plain data."""
    config = load_config(write_config(tmp_path / "geod.toml", '[ipapi]\nkey = "s3cret"\n'))
    data = config.redacted()
    assert data["ipapi"]["key"] == REDACTED
    assert "s3cret" not in repr(data)
    assert data["ipapi"]["url"] == PRO_BATCH_URL
    assert data["database"]["columns"]["ip"] == "ip"
    assert config.ipapi.key == "s3cret"  # the config itself is untouched


def test_redacted_shows_empty_key(tmp_path: Path) -> None:
    """redacted() shows an unset key as the empty string, not as redacted."""
    data = load_config(write_config(tmp_path / "geod.toml", "")).redacted()
    assert data["ipapi"]["key"] == ""


@pytest.mark.parametrize(
    ("cli", "environ", "expected"),
    [
        pytest.param("/a.toml", {"GEOD_CONFIG": "/b.toml"}, Path("/a.toml"), id="cli-wins"),
        pytest.param(None, {"GEOD_CONFIG": "/b.toml"}, Path("/b.toml"), id="env"),
        pytest.param("", {"GEOD_CONFIG": "/b.toml"}, Path("/b.toml"), id="empty-cli-is-unset"),
        pytest.param(None, {"GEOD_CONFIG": ""}, DEFAULT_CONFIG_PATH, id="empty-env-is-unset"),
        pytest.param(None, {}, DEFAULT_CONFIG_PATH, id="default"),
    ],
)
def test_config_path(cli: str | None, environ: dict[str, str], expected: Path) -> None:
    """config_path prefers --config, then $GEOD_CONFIG, then /etc/geod/config.toml."""
    assert config_path(cli, environ) == expected


# --- property: any TOML document loads or raises ConfigError -----------------------------------

_TABLE_CLASSES: dict[str, type[Any]] = {
    "daemon": DaemonConfig,
    "database": DatabaseConfig,
    "columns": ColumnsConfig,
    "negative_cache": NegativeCacheConfig,
    "ipapi": IpApiConfig,
    "log": LogConfig,
}
_ALL_NAMES = sorted(
    {*_TABLE_CLASSES, "source", *(f.name for c in _TABLE_CLASSES.values() for f in fields(c))}
)
_keys = st.one_of(st.sampled_from(_ALL_NAMES), st.text(max_size=4))
_scalars = st.one_of(
    st.integers(),
    st.sampled_from([2**63, -(2**63) - 1, 10**400]),
    st.floats(),
    st.booleans(),
    st.text(max_size=6),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_keys, inner, max_size=3),
    max_leaves=4,
)
_BAD_STRINGS = ["", "IP", "x; drop", "1abc", "a" * 64, "http://[::1", "http://[x]/", "ftp://h/",
                "http://u@h/", "http://h/?q", "http://h:99999/"]


def _near(spec: Field[Any]) -> list[Any]:
    """Values of the setting's own type at and around its edges, valid or just not."""
    rules = spec.metadata
    if "low" in rules:
        low, high = rules["low"], rules["high"]
        near = [low, high, low - 1, high + 1, 10**400, -(10**400), 2**64]
        if isinstance(spec.default, float):
            near += [float(low), high - 0.5, high + 0.5, math.nan, math.inf, -math.inf]
        return near
    if isinstance(spec.default, bool):
        return [True, False, 0, 1, "true"]
    return [spec.default, *rules.get("choices", ()), "geo_cache", "http://h:1/batch",
            *_BAD_STRINGS]


_NEAR = {
    (table, spec.name): st.sampled_from(_near(spec))
    for table, cls in _TABLE_CLASSES.items()
    for spec in fields(cls)
    if not is_dataclass(spec.type) and spec.name != "columns"
}


def _roll(draw: st.DrawFn) -> int:
    return draw(st.integers(min_value=0, max_value=19))


def _draw_table(draw: st.DrawFn, table: str) -> Any:
    """A table: real keys absent, at default, near their edges or anything; maybe a stray key."""
    roll = _roll(draw)
    if roll == 0:
        return draw(_values)  # not even a table, most likely
    values: dict[str, Any] = {}
    for spec in fields(_TABLE_CLASSES[table]):
        roll = _roll(draw)
        if spec.name == "columns":
            if roll > 3:
                values["columns"] = _draw_table(draw, "columns")
        elif 7 <= roll < 18:
            values[spec.name] = spec.default if roll < 12 else draw(_NEAR[table, spec.name])
        elif roll >= 18:
            values[spec.name] = draw(_values)
    if _roll(draw) == 0:
        values[draw(_keys)] = draw(_values)
    return values


@st.composite
def _documents(draw: st.DrawFn) -> dict[str, Any]:
    """Mostly the config's own tables and keys, with values of every TOML type."""
    doc: dict[str, Any] = {}
    for table in ("daemon", "database", "negative_cache", "ipapi", "log"):
        if _roll(draw) > 3:
            doc[table] = _draw_table(draw, table)
    if _roll(draw) == 0:
        doc[draw(_keys)] = draw(_values)
    return doc


def _emit_string(text: str) -> str:
    return '"' + "".join(
        char if 0x20 <= ord(char) < 0x7F and char not in '"\\' else f"\\U{ord(char):08X}"
        for char in text
    ) + '"'


def _emit(value: Any) -> str:
    """A value as TOML: tables inline, strings fully escaped, floats via repr."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)  # nan, inf, -inf, 1e+300: all valid TOML
    if isinstance(value, str):
        return _emit_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(_emit(item) for item in value) + "]"
    return "{" + ", ".join(f"{_emit_string(k)} = {_emit(v)}" for k, v in value.items()) + "}"


def _emit_document(doc: dict[str, Any]) -> str:
    return "".join(f"{_emit_string(key)} = {_emit(value)}\n" for key, value in doc.items())


@pytest.fixture(scope="module")
def property_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, int]]:
    """One config file kept open for writing: rewriting it in place skips a slow open()."""
    path = tmp_path_factory.mktemp("property") / "geod.toml"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    yield path, fd
    os.close(fd)


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(doc=_documents())
def test_any_document_loads_or_raises_config_error(
    property_file: tuple[Path, int], doc: dict[str, Any]
) -> None:
    """Any TOML document of real and random keys and values loads or raises ConfigError only."""
    path, fd = property_file
    data = _emit_document(doc).encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)
    try:
        config = load_config(path)
    except ConfigError as error:
        assert str(error).startswith(f"{path}: ")
    else:
        assert isinstance(config, Config)


def test_emitter_round_trips() -> None:
    """The property test's tiny TOML emitter writes what tomllib reads back."""
    doc = {"a b": {"x\n\"": [1, 2.5, "é\x7f"], "t": {"": True}}, "n": -(10**30)}
    assert tomllib.loads(_emit_document(doc)) == doc


def test_a_misspelt_rule_fails_where_the_setting_is_declared() -> None:
    """setting() takes only the rules the schema checks: a typo is a TypeError at import."""
    from geod.schema import setting

    with pytest.raises(TypeError, match="lo"):
        setting(1, lo=1)  # type: ignore[call-arg]


# -- provider chains: [resolve] providers, [mmdb], [rir], the source column ------------------

PROVIDER_CASES: list[Any] = [
    pytest.param("", {"resolve.providers": ("ip-api",), "mmdb.path": "", "mmdb.asn_path": "",
                      "database.columns.source": "", "resolve.country_names": "common"},
                 id="defaults-ip-api-only"),
    pytest.param('[resolve]\ncountry_names = "iso"\n', {"resolve.country_names": "iso"},
                 id="iso-country-names"),
    pytest.param('[resolve]\ncountry_names = "ISO"\n',
                 "{file}: [resolve] country_names: must be one of common, iso, got 'ISO'",
                 id="country-names-exact"),
    pytest.param("[resolve]\ncountry_names = true\n",
                 "{file}: [resolve] country_names: must be a string, got true",
                 id="country-names-not-a-string"),
    pytest.param('[resolve]\nproviders = ["rir"]\n[rir]\n', {"resolve.providers": ("rir",)},
                 id="rir-with-empty-table"),
    pytest.param('[resolve]\nproviders = ["mmdb", "rir", "ip-api"]\n[mmdb]\npath = "c.mmdb"\n'
                 'asn_path = "/abs/asn.mmdb"\n',
                 {"resolve.providers": ("mmdb", "rir", "ip-api"), "mmdb.path": "{dir}/c.mmdb",
                  "mmdb.asn_path": "/abs/asn.mmdb"}, id="full-chain-paths-beside-config"),
    pytest.param('[mmdb]\npath = "c.mmdb"\n', {"resolve.providers": ("ip-api",)},
                 id="mmdb-table-unused-is-fine"),
    pytest.param('[database.columns]\nsource = "answered_by"\n',
                 {"database.columns.source": "answered_by"}, id="source-column"),
    pytest.param('[resolve]\nproviders = ["maxmind"]\n',
                 "{file}: [resolve] providers: unknown provider 'maxmind' "
                 "(known: ip-api, mmdb, rir)", id="unknown-provider"),
    pytest.param('[resolve]\nproviders = ["IP-API"]\n',
                 "{file}: [resolve] providers: unknown provider 'IP-API' "
                 "(known: ip-api, mmdb, rir)", id="names-are-exact"),
    pytest.param('[resolve]\nproviders = []\n', "{file}: [resolve] providers: must not be empty",
                 id="empty-chain"),
    pytest.param('[resolve]\nproviders = "rir"\n',
                 "{file}: [resolve] providers: must be an array of strings, got 'rir'",
                 id="not-an-array"),
    pytest.param('[resolve]\nproviders = ["rir", 1]\n',
                 "{file}: [resolve] providers: must be an array of strings, got an array",
                 id="not-strings"),
    pytest.param('[resolve]\nproviders = ["rir", "ip-api", "rir"]\n',
                 "{file}: [resolve] providers: 'rir' is listed twice", id="duplicate"),
    pytest.param('[resolve]\nproviders = ["mmdb"]\n',
                 '{file}: [mmdb] path: must be set when [resolve] providers has "mmdb"',
                 id="mmdb-without-path"),
    pytest.param('[rir]\nfile = "x"\n', "{file}: [rir] file: unknown key", id="rir-no-keys"),
    pytest.param("rir = 1\n", "{file}: rir: must be a table, got 1", id="rir-not-table"),
    pytest.param('[mmdb]\npaht = "x"\n', "{file}: [mmdb] paht: unknown key", id="mmdb-typo"),
    pytest.param('[database.columns]\nsource = "ip"\n',
                 "{file}: [database.columns] source: column 'ip' is already mapped to ip",
                 id="source-column-clash"),
]


@pytest.mark.parametrize(("toml", "expected"), PROVIDER_CASES)
def test_load_provider_config(tmp_path: Path, toml: str, expected: str | dict[str, Any]) -> None:
    """Each TOML text loads to the expected values or fails with exactly the expected error."""
    check_case(tmp_path, toml, expected)


def test_source_column_is_written_only_when_mapped(tmp_path: Path) -> None:
    """Off by default; mapped, it joins the columns geod writes."""
    default = load_config(write_config(tmp_path / "a.toml", ""))
    assert "source" not in default.database.columns.written()
    mapped = load_config(write_config(tmp_path / "b.toml", '[database.columns]\nsource = "s"\n'))
    assert mapped.database.columns.written()["source"] == "s"


_items = st.sampled_from([*PROVIDERS, "", "x", "mmdb ", 7, True, 1.5, ["rir"]])


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(value=st.one_of(st.lists(_items, max_size=5), _items))
def test_any_providers_value_loads_or_raises_config_error(tmp_path_factory: Any,
                                                          value: Any) -> None:
    """Whatever [resolve] providers holds, loading gives a valid chain or a ConfigError."""
    path = tmp_path_factory.mktemp("p") / "geod.toml"
    path.write_text(f"[resolve]\nproviders = {_toml(value)}\n[mmdb]\npath = 'c.mmdb'\n")
    try:
        config = load_config(path)
    except ConfigError as error:
        assert str(error).startswith(f"{path}: [resolve] providers: ")
    else:
        chain = config.resolve.providers
        assert chain and len(set(chain)) == len(chain) and set(chain) <= set(PROVIDERS)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    return repr(value)


REFRESH_CASES: list[Any] = [
    pytest.param("", {"refresh.after": "30d", "refresh.app_after": "off", "refresh.fill": True,
                      "refresh.new_mmdb_build": True, "refresh.per_pass": 10_000},
                 id="refresh-defaults"),
    pytest.param('[refresh]\nafter = "12h"\napp_after = "2w"\n',
                 {"refresh.after": "12h", "refresh.app_after": "2w"}, id="refresh-ages"),
    pytest.param('[refresh]\nafter = "30 days"\n',
                 "{file}: [refresh] after: must be \"off\" or a number and a unit (s, m, h, d, w),"
                 " got '30 days'", id="refresh-age-words"),
    pytest.param('[refresh]\nafter = "30s"\n',
                 "{file}: [refresh] after: must be between 1 minute and 10 years, got '30s'",
                 id="refresh-age-too-short"),
    pytest.param('[refresh]\napp_after = "٣d"\n',
                 "{file}: [refresh] app_after: must be \"off\" or a number and a unit "
                 "(s, m, h, d, w), got '٣d'", id="refresh-age-not-ascii"),
    pytest.param('[database.columns]\nupdated_at = ""\n[refresh]\napp_after = "90d"\n',
                 "{file}: [refresh] app_after: needs [database.columns] updated_at "
                 "(the age of the app's rows)", id="refresh-app-rows-need-a-timestamp"),
    pytest.param("[refresh]\nper_pass = 0\n",
                 "{file}: [refresh] per_pass: must be 1..1000000, got 0", id="refresh-per-pass"),
]


@pytest.mark.parametrize(("toml", "expected"), REFRESH_CASES)
def test_load_refresh_config(tmp_path: Path, toml: str, expected: str | dict[str, Any]) -> None:
    """`[refresh]` ages parse to seconds or fail naming the key; app rows need a timestamp."""
    check_case(tmp_path, toml, expected)


def test_refresh_ages_in_seconds() -> None:
    """'30d' is 30 days of seconds; 'off' is None."""
    assert (parse_age("30d"), parse_age("90m"), parse_age("off")) == (2_592_000.0, 5400.0, None)


@pytest.mark.parametrize(("value", "error"), [
    ("127.0.0.2", None),
    ("2001:db8::1", None),
    ("eth0", "[ipapi] source_address: must be an IP address, got 'eth0'"),
])
def test_source_address_is_an_ip_address(tmp_path: Path, value: str, error: str | None) -> None:
    """[ipapi] source_address binds outgoing requests: an address, not an interface name."""
    path = tmp_path / "geod.toml"
    path.write_text(f'[ipapi]\nsource_address = "{value}"\n', encoding="utf-8")
    if error is None:
        assert load_config(path, {}).ipapi.source_address == value
        return
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    assert str(info.value).endswith(error)
