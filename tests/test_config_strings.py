"""Config strings the OS cannot take, a byte-order mark, and secrets that must never be echoed.

Every string in the config goes through one check (`schema.text_problem`), so a NUL or a control
character anywhere, or an over-long path, is a `ConfigError` naming file, key and problem (exit 78
from the CLI); and no error message ever shows the value of a secret, whatever its TOML type.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from geod.cli import main
from geod.config import load_config
from geod.errors import ConfigError
from geod.escape import is_safe
from tests.proc import run_geod

# Every string setting, as (table, key): the property tests put hostile text in each of them.
STRING_KEYS = [
    ("database", "path"), ("database", "table"), ("database.columns", "ip"),
    ("database.columns", "source"), ("ipapi", "url"), ("ipapi", "key"), ("ipapi", "key_file"),
    ("ipapi", "share"), ("mmdb", "path"), ("mmdb", "asn_path"), ("log", "level"),
    ("log", "format"), ("metrics", "listen"),
]


def toml_string(text: str) -> str:
    """`text` as a TOML basic string: JSON's escapes are TOML's (\\uXXXX included)."""
    return json.dumps(text, ensure_ascii=True)


def write(tmp_path: Path, body: str | bytes) -> Path:
    path = tmp_path / "geod.toml"
    if isinstance(body, str):
        body = body.encode()
    path.write_bytes(body)
    return path


@pytest.mark.parametrize(
    ("table", "key", "value", "reason"),
    [
        ("mmdb", "path", "a\0b.mmdb", "must not contain a NUL character (at position 1)"),
        ("database", "path", "g\0eo.db", "must not contain a NUL character (at position 1)"),
        ("ipapi", "key_file", "k\0", "must not contain a NUL character (at position 1)"),
        ("database", "path", "geo\n.db", "must not contain control character U+000A "
                                         "(at position 3)"),
        ("metrics", "listen", "127.0.0.1:9\x1b", "must not contain control character U+001B "
                                                 "(at position 11)"),
        ("database", "path", "/" + "d/" * 2100 + "geo.db",
         "path is 4,207 bytes, longer than the 4,095 Linux allows"),
        ("mmdb", "path", "x" * 256 + ".mmdb",
         "a path component is longer than the 255 bytes Linux allows"),
    ],
    ids=["nul-mmdb", "nul-database", "nul-key-file", "newline", "escape", "path-max",
         "name-max"],
)
def test_strings_the_os_cannot_take_are_config_errors(
    tmp_path: Path, table: str, key: str, value: str, reason: str
) -> None:
    """A NUL, a control character or an over-long path names file, key and problem."""
    path = write(tmp_path, f"[{table}]\n{key} = {toml_string(value)}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == f"{path}: [{table}] {key}: {reason}"


@pytest.mark.parametrize("command", ["once", "check-config"])
def test_nul_in_database_path_exits_78_and_creates_nothing(tmp_path: Path, command: str) -> None:
    """Finding 17: `path = "g\\u0000eo.db"` used to open a database called `g`; now exit 78."""
    path = write(tmp_path, '[database]\npath = "g\\u0000eo.db"\n[resolve]\nproviders = ["rir"]\n')
    result = run_geod("--config", str(path), command, cwd=tmp_path)
    assert result.returncode == 78, result.stderr
    assert result.stderr == (
        f"geod: {path}: [database] path: must not contain a NUL character (at position 1)\n"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["geod.toml"]


def test_nul_in_mmdb_path_exits_78(tmp_path: Path) -> None:
    """Finding 17: a NUL in [mmdb] path was an "unexpected error" (exit 1); now exit 78."""
    path = write(tmp_path, '[resolve]\nproviders = ["mmdb"]\n[mmdb]\npath = "a\\u0000.mmdb"\n')
    result = run_geod("--config", str(path), "check-config")
    assert result.returncode == 78, result.stderr
    assert "[mmdb] path: must not contain a NUL character" in result.stderr


def test_utf8_bom_is_accepted(tmp_path: Path) -> None:
    """Finding 18: a config saved with a BOM (Windows editors) loads like the same file without."""
    body = '[daemon]\ninterval = 120\n[resolve]\nproviders = ["rir"]\n'
    with_bom = load_config(write(tmp_path, b"\xef\xbb\xbf" + body.encode()))
    assert with_bom.daemon.interval == 120
    result = run_geod("--config", str(tmp_path / "geod.toml"), "check-config")
    assert result.returncode == 0, result.stderr


def test_bom_only_at_the_start(tmp_path: Path) -> None:
    """A BOM anywhere but the first bytes is still what it is: invalid TOML."""
    path = write(tmp_path, b'[daemon]\n\xef\xbb\xbfinterval = 120\n')
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(path)


SECRET = 918273645546372819


@pytest.mark.parametrize(
    "value",
    [str(SECRET), f"{SECRET}.5", "[918273645546372819]", "{ k = 918273645546372819 }",
     "1979-05-27T07:32:00Z"],
    ids=["integer", "float", "array", "table", "datetime"],
)
def test_a_key_of_the_wrong_type_is_never_echoed(tmp_path: Path, value: str) -> None:
    """Finding 19: `key = 918273645546372819` is reported without the number, at start-up."""
    path = write(tmp_path, f"[ipapi]\nkey = {value}\n")
    result = run_geod("--config", str(path), "check-config")
    assert result.returncode == 78
    assert result.stderr.startswith(f"geod: {path}: [ipapi] key: must be a string, got ")
    assert "918273645546372819" not in result.stderr
    assert "1979" not in result.stderr


def test_a_bad_inline_key_is_never_echoed(tmp_path: Path) -> None:
    """A key with a space or a control character is refused, and not shown either."""
    for value in ["secret with space", "secret\u0007bell", "s" * 300]:
        path = write(tmp_path, f"[ipapi]\nkey = {toml_string(value)}\n")
        with pytest.raises(ConfigError) as caught:
            load_config(path)
        assert caught.value.key == "ipapi.key"
        assert value[:6] not in str(caught.value)


def test_a_url_with_credentials_is_never_echoed(tmp_path: Path) -> None:
    """A malformed URL is shown, unless it holds user:password@."""
    path = write(tmp_path, '[ipapi]\nurl = "ftp://user:hunter2@host/"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert "hunter2" not in str(caught.value)


# -- properties -----------------------------------------------------------------------------

FIXTURE = HealthCheck.function_scoped_fixture  # tmp_path is rewritten by every example

_hostile_text = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",))
    | st.sampled_from(["\0", "\r", "\n", "\x1b", "\x7f", "\x9b", "\ufeff", "\u2028", "/"]),
    max_size=40,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[FIXTURE])
@given(where=st.sampled_from(STRING_KEYS), value=_hostile_text, bom=st.booleans())
def test_any_string_in_any_setting_gives_a_config_or_one_config_error(
    tmp_path: Path, where: tuple[str, str], value: str, bom: bool
) -> None:
    """Whatever text a string setting holds, the loader returns a Config or raises ConfigError
    with a one-line message; a loaded config never holds a control character or NUL; the key's
    value never appears in a message."""
    table, key = where
    body = f'[resolve]\nproviders = ["rir"]\n[{table}]\n{key} = {toml_string(value)}\n'
    path = write(tmp_path, (b"\xef\xbb\xbf" if bom else b"") + body.encode())
    try:
        config = load_config(path, environ={})
    except ConfigError as error:
        message = str(error)
        assert message.startswith(f"{path}: ")
        if key == "key" and len(value) >= 4:
            assert value not in message[len(str(path)):]
        return
    section = getattr(config, table.split(".")[0])
    if "." in table:
        section = getattr(section, table.split(".")[1])
    loaded = getattr(section, key)
    assert "\0" not in loaded
    assert all(ord(c) >= 0x20 and not 0x7F <= ord(c) <= 0x9F for c in loaded)


@settings(max_examples=200, deadline=None, suppress_health_check=[FIXTURE])
@given(value=st.one_of(st.integers(min_value=10**6), st.floats(min_value=1e6, allow_nan=False),
                       st.lists(st.integers(min_value=10**6), min_size=1, max_size=3),
                       st.text(min_size=6, max_size=30)))
def test_the_key_is_never_echoed_whatever_its_type(tmp_path: Path, value: object) -> None:
    """Any value of `[ipapi] key` that fails to load is absent from the message."""
    rendered = json.dumps(value) if not isinstance(value, str) else toml_string(value)
    path = write(tmp_path, f"[ipapi]\nkey = {rendered}\n")
    try:
        load_config(path)
    except ConfigError as error:
        shown = str(error)[len(str(path)):]
        for part in ([str(v) for v in value] if isinstance(value, list) else [str(value)]):
            assert part not in shown
        if isinstance(value, str):
            assert value not in shown and repr(value) not in shown


@settings(max_examples=150, deadline=None, suppress_health_check=[FIXTURE])
@given(where=st.sampled_from(STRING_KEYS), value=_hostile_text, bom=st.booleans())
def test_check_config_exits_0_or_78_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], where: tuple[str, str], value: str,
    bom: bool,
) -> None:
    """Through the CLI: exit 0, or exit 78 with exactly one escaped line on stderr; never a
    traceback, never the key's value."""
    table, key = where
    body = f'[resolve]\nproviders = ["rir"]\n[{table}]\n{key} = {toml_string(value)}\n'
    path = write(tmp_path, (b"\xef\xbb\xbf" if bom else b"") + body.encode())
    capsys.readouterr()
    code = main(["--config", str(path), "check-config"])
    out, err = capsys.readouterr()
    assert code in (0, 78)
    if code == 0:  # only check-config's notes (a database not created yet), one line each
        assert all(line.startswith("geod: note: ") and is_safe(line)
                   for line in err.splitlines()), err
        return
    assert err.count("\n") == 1 and err.startswith(f"geod: {path}: ")
    assert is_safe(err[:-1])  # no control, line-separator or bidi character reaches stderr
    if key == "key" and len(value) >= 4:
        assert value not in err


@pytest.mark.parametrize("nested", ["[" * 100_000 + "]" * 100_000, "{b=" * 5000 + "1" + "}" * 5000])
def test_deeply_nested_toml_is_a_config_error(tmp_path: Path, nested: str) -> None:
    """tomllib's RecursionError was an "unexpected error" (exit 1), and on reload it killed the
    daemon: it is invalid TOML like any other."""
    path = write(tmp_path, f"a = {nested}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == f"{path}: invalid TOML: nested too deeply"
