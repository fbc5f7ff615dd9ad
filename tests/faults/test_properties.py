"""Property tests the fault suite adds: any config file at the command line is a valid config or
exit 78, never a traceback; whatever geod would send, the server's own classifier calls public.
(load_config's property test is in tests/test_config.py; response parsing and address filtering
have theirs in tests/test_ipapi.py and tests/test_addresses.py.)
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from geod import cli
from geod.addresses import sendable
from tests.fake_ipapi import classify
from tests.proc import run_geod
from tests.test_config import _documents, _emit_document

EXIT_CONFIG = 78

# Whole files: the config's own tables with every kind of value, or any text, or any bytes.
FILES = st.one_of(
    _documents().map(lambda doc: _emit_document(doc).encode()),
    st.text(max_size=200).map(str.encode),
    st.binary(max_size=200),
)


@pytest.fixture(scope="module")
def config_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield tmp_path_factory.mktemp("cli-property") / "geod.toml"


def check(code: int, out: str, err: str, path: Path) -> None:
    assert "Traceback" not in out + err
    if code == 0:
        shown: dict[str, Any] = json.loads(out)
        assert shown["source"] == str(path)
        return
    assert code == EXIT_CONFIG, (code, err)
    assert out == ""
    [line] = err.splitlines()
    assert line.startswith(f"geod: {path}: "), line


@settings(max_examples=150, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=FILES)
@example(data=b"\xff\xfe[daemon]")  # not UTF-8
@example(data=b"[daemon]\ninterval = 1e999\n")  # inf
@example(data=b"[ipapi]\nbatch_size = 99999999999999999999\n")  # beyond 64 bits
@example(data=b'[ipapi]\nurl = "http://[::1/batch"\n')
@example(data=b"daemon = 5\n")
def test_check_config_on_any_file_is_config_or_exit_78(
    data: bytes, config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`geod check-config` on any file prints a config (0) or one `geod: FILE: ...` line (78)."""
    config_file.write_bytes(data)
    code = cli.main(["--config", str(config_file), "check-config"])
    out, err = capsys.readouterr()
    check(code, out, err, config_file)


@pytest.mark.slow
@pytest.mark.parametrize("data", [
    b"\x00\x01\x02", b"[daemon]\ninterval = nan\n", b"[database.columns]\nip = \"\"\n",
    b"[[daemon]]\n",
])
def test_real_process_on_bad_files_exits_78(data: bytes, tmp_path: Path) -> None:
    """The real process, for a few of those files and each command: exit 78, one line."""
    path = tmp_path / "geod.toml"
    path.write_bytes(data)
    for command in ("check-config", "once", "run", "status"):
        result = run_geod("--config", str(path), command)
        check(result.returncode, result.stdout, result.stderr, path)


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(ip=st.ip_addresses(), form=st.sampled_from(["plain", "exploded", "mapped", "padded"]))
def test_what_geod_sends_the_server_calls_public(ip: Any, form: str) -> None:
    """An address geod would send is, to the fake server's independent rules, a public one."""
    text = {"plain": str(ip), "exploded": ip.exploded, "padded": f" {ip}\t",
            "mapped": f"::ffff:{ip}" if ip.version == 4 else str(ip)}[form]
    address = sendable(text)
    if address is not None:
        assert classify(address) is None, (text, address, classify(address))
