"""`[ipapi] key_file` (systemd credentials) and `[metrics] listen`: loading and validation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from geod.cli import main
from geod.config import PRO_BATCH_URL, REDACTED, load_config
from geod.errors import ConfigError
from geod.hostport import split_host_port
from tests.conftest import write_config

SECRET = "s3cr3t-Pro-Key"  # noqa: S105 - a made-up key the tests look for


def _load(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> object:
    return load_config(write_config(tmp_path / "geod.toml", text), environ or {})


def test_key_file_is_read_relative_to_the_config(tmp_path: Path) -> None:
    """A relative key_file is read beside the config; the key selects the pro endpoint."""
    (tmp_path / "ipapi.key").write_text(SECRET + "\n", encoding="utf-8")
    config = load_config(write_config(tmp_path / "geod.toml", '[ipapi]\nkey_file = "ipapi.key"\n'),
                         {})
    assert config.ipapi.key == SECRET
    assert config.ipapi.key_file == str(tmp_path / "ipapi.key")
    assert config.ipapi.url == PRO_BATCH_URL


@pytest.mark.parametrize("spelling", ["$CREDENTIALS_DIRECTORY", "${CREDENTIALS_DIRECTORY}"])
def test_key_file_understands_the_credentials_directory(tmp_path: Path, spelling: str) -> None:
    """`$CREDENTIALS_DIRECTORY/NAME` reads what LoadCredential=NAME:... placed there."""
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "ipapi-key").write_text(SECRET, encoding="utf-8")
    path = write_config(tmp_path / "geod.toml", f'[ipapi]\nkey_file = "{spelling}/ipapi-key"\n')
    config = load_config(path, {"CREDENTIALS_DIRECTORY": str(credentials)})
    assert config.ipapi.key == SECRET


@pytest.mark.parametrize(("toml", "key_text", "environ", "error"), [
    ('key = "abc"\nkey_file = "k"', SECRET, {},
     "geod.toml: [ipapi] key_file: set key or key_file, not both"),
    ('key_file = "$CREDENTIALS_DIRECTORY/ipapi-key"', SECRET, {},
     "geod.toml: [ipapi] key_file: $CREDENTIALS_DIRECTORY is not set "
     "(is LoadCredential= missing from the unit?)"),
    ('key_file = "missing"', None, {},
     "geod.toml: [ipapi] key_file: cannot read {dir}/missing: No such file or directory"),
    ('key_file = "k"', "  \n", {}, "geod.toml: [ipapi] key_file: {dir}/k is empty"),
    ('key_file = "k"', SECRET + "\n" + SECRET, {},
     "geod.toml: [ipapi] key_file: {dir}/k must hold the key alone, on one line"),
])  # fmt: skip
def test_key_file_errors_name_the_file_never_the_key(
        tmp_path: Path, toml: str, key_text: str | None, environ: dict[str, str],
        error: str) -> None:
    """Every key_file problem is a ConfigError naming file and reason, without the key."""
    if key_text is not None:
        (tmp_path / "k").write_text(key_text, encoding="utf-8")
    with pytest.raises(ConfigError) as raised:
        load_config(write_config(tmp_path / "geod.toml", f"[ipapi]\n{toml}\n"), environ)
    message = str(raised.value).replace(str(tmp_path), "{dir}")
    assert message.endswith(error)
    assert SECRET not in message


def test_check_config_redacts_a_key_read_from_a_file(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """check-config shows the key file's path but never the key itself."""
    (tmp_path / "k").write_text(SECRET, encoding="utf-8")
    config = write_config(tmp_path / "geod.toml", '[ipapi]\nkey_file = "k"\n')
    assert main(["check-config", "--config", str(config)]) == 0
    out, err = capsys.readouterr()
    assert SECRET not in out + err
    shown = json.loads(out)["ipapi"]
    assert shown["key"] == REDACTED and shown["key_file"] == str(tmp_path / "k")


@pytest.mark.parametrize(("listen", "expected"), [
    ("127.0.0.1:9108", ("127.0.0.1", 9108)),
    ("[::1]:9108", ("::1", 9108)),
    ("localhost:1", ("localhost", 1)),
    ("0.0.0.0:65535", ("0.0.0.0", 65535)),
])  # fmt: skip
def test_listen_accepts_host_port(listen: str, expected: tuple[str, int]) -> None:
    """host:port with an IPv4 address, a name, or a bracketed IPv6 address."""
    assert split_host_port(listen) == expected


@pytest.mark.parametrize(("listen", "error"), [
    ("9108", "must be host:port (IPv6 as [address]:port), got '9108'"),
    (":9108", "must be host:port (IPv6 as [address]:port), got ':9108'"),
    ("::1:9108", "must be host:port (IPv6 as [address]:port), got '::1:9108'"),
    ("[nonsense]:9108", "must be host:port (IPv6 as [address]:port), got '[nonsense]:9108'"),
    ("127.0.0.1:0", "port must be 1..65535, got '127.0.0.1:0'"),
    ("127.0.0.1:65536", "port must be 1..65535, got '127.0.0.1:65536'"),
    ("127.0.0.1:http", "port must be 1..65535, got '127.0.0.1:http'"),
])  # fmt: skip
def test_listen_errors_are_config_errors(tmp_path: Path, listen: str, error: str) -> None:
    """A bad [metrics] listen is a config error (exit 78) that quotes the value."""
    with pytest.raises(ConfigError) as raised:
        _load(tmp_path, f'[metrics]\nlisten = "{listen}"\n')
    assert str(raised.value) == f"{tmp_path / 'geod.toml'}: [metrics] listen: {error}"


def test_metrics_are_off_by_default(tmp_path: Path) -> None:
    """Without [metrics], listen is "" and nothing is served."""
    assert load_config(write_config(tmp_path / "geod.toml", ""), {}).metrics.listen == ""
