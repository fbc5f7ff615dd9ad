"""Config for provider chains: [resolve] providers, [mmdb], [rir], the source column."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geod.config import PROVIDERS, load_config
from geod.errors import ConfigError
from tests.conftest import write_config
from tests.test_config import check_case

CASES: list[Any] = [
    pytest.param("", {"resolve.providers": ("ip-api",), "mmdb.path": "", "mmdb.asn_path": "",
                      "database.columns.source": ""}, id="defaults-ip-api-only"),
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


@pytest.mark.parametrize(("toml", "expected"), CASES)
def test_load_config(tmp_path: Path, toml: str, expected: str | dict[str, Any]) -> None:
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
