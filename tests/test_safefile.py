"""The one way geod reads a small file from its config: regular files only, size capped.

`/dev/zero` as `key_file` used to be read until memory ran out, and a FIFO hung start-up (and a
reload) in `open()`. Every such path now goes through `safefile.read_small_file`.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from geod.config import MAX_CONFIG_BYTES, load_config
from geod.errors import ConfigError
from geod.safefile import UnreadableFile, read_small_file, require_regular
from tests.proc import run_geod

CAP = 64


def make(kind: str, path: Path, size: int = 10) -> Path:
    """Put a file of `kind` at `path`: regular, fifo, device, directory, link (to a regular
    file), link-to-device, dangling link, or big (size bytes)."""
    if kind in ("regular", "big"):
        path.write_bytes(b"k" * size)
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "device":
        path.symlink_to("/dev/zero")
    elif kind == "directory":
        path.mkdir()
    elif kind == "link":
        target = path.with_name(path.name + ".target")
        target.write_bytes(b"k" * size)
        path.symlink_to(target)
    elif kind == "dangling":
        path.symlink_to(path.with_name("nowhere"))
    else:  # pragma: no cover - a typo in a test
        raise AssertionError(kind)
    return path


EXPECTED = {
    "regular": None,
    "link": None,
    "fifo": "a FIFO, not a regular file",
    "device": "a device, not a regular file",
    "directory": "Is a directory",
    "dangling": "No such file or directory",
}


@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_only_regular_files_are_read(tmp_path: Path, kind: str) -> None:
    """A regular file (or a link to one) is read; anything else is refused without blocking."""
    path = make(kind, tmp_path / "f")
    if EXPECTED[kind] is None:
        assert read_small_file(path, CAP) == b"k" * 10
        require_regular(path)
        return
    with pytest.raises(UnreadableFile) as caught:
        read_small_file(path, CAP)
    assert str(caught.value) == f"cannot read {path}: {EXPECTED[kind]}"
    with pytest.raises(UnreadableFile):
        require_regular(path)


@pytest.mark.parametrize(("size", "ok"), [(CAP, True), (CAP + 1, False), (10 * CAP, False)])
def test_size_is_capped(tmp_path: Path, size: int, ok: bool) -> None:
    """`cap` bytes are read; one more is refused."""
    path = make("big", tmp_path / "f", size)
    if ok:
        assert len(read_small_file(path, CAP)) == size
        return
    with pytest.raises(UnreadableFile, match=f"larger than {CAP} bytes"):
        read_small_file(path, CAP)


def _in_thread(target: object, *args: object) -> BaseException | None:
    """Run `target(*args)` in a thread, fail the test if it does not return within 10 s."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            target(*args)  # type: ignore[operator]
            outcome.append(None)
        except BaseException as error:  # noqa: BLE001 - handed back to the test
            outcome.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(10)
    assert outcome, "blocked: the read did not return"
    return outcome[0]


@pytest.mark.parametrize("target", ["/dev/zero", "fifo", "/dev/urandom"])
def test_key_file_that_is_a_device_or_fifo_is_a_config_error(tmp_path: Path, target: str) -> None:
    """Finding 16: key_file = /dev/zero or a FIFO is refused at once, naming the key."""
    key_file = tmp_path / "key"
    if target == "fifo":
        os.mkfifo(key_file)
    else:
        key_file = Path(target)
    config = tmp_path / "geod.toml"
    config.write_text(f'[ipapi]\nkey_file = "{key_file}"\n', encoding="utf-8")
    error = _in_thread(load_config, config)
    assert isinstance(error, ConfigError)
    assert error.key == "ipapi.key_file"
    assert error.reason.endswith(("a device, not a regular file", "a FIFO, not a regular file"))


def test_key_file_from_dev_zero_exits_78_from_the_cli(tmp_path: Path) -> None:
    """Finding 16, as the operator meets it: `geod check-config` says what is wrong, quickly."""
    config = tmp_path / "geod.toml"
    config.write_text('[ipapi]\nkey_file = "/dev/zero"\n', encoding="utf-8")
    result = run_geod("--config", str(config), "check-config", timeout=20)
    assert result.returncode == 78
    assert result.stderr == (
        f"geod: {config}: [ipapi] key_file: cannot read /dev/zero: a device, not a regular file\n"
    )


def test_config_that_is_a_fifo_or_too_big_is_refused(tmp_path: Path) -> None:
    """The config file itself is read the same way: a FIFO does not hang, a huge file is refused."""
    fifo = make("fifo", tmp_path / "fifo.toml")
    error = _in_thread(load_config, fifo)
    assert isinstance(error, ConfigError)
    assert error.reason == "cannot read config: a FIFO, not a regular file"
    big = tmp_path / "big.toml"
    big.write_bytes(b"#" * (MAX_CONFIG_BYTES + 1))
    with pytest.raises(ConfigError, match="cannot read config: larger than"):
        load_config(big)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(sorted(EXPECTED) + ["big"]), size=st.integers(0, 3 * CAP),
       cap=st.integers(0, 2 * CAP))
def test_reading_any_kind_of_file_returns_its_bytes_or_refuses(
    tmp_path_factory: pytest.TempPathFactory, kind: str, size: int, cap: int
) -> None:
    """For any file kind, size and cap: the bytes of a regular file of at most `cap` bytes, or
    UnreadableFile naming the path; never a hang, never more than cap bytes returned."""
    path = make(kind, tmp_path_factory.mktemp("k") / "f", size)
    error = _in_thread(read_small_file, path, cap)
    regular = kind in ("regular", "big", "link")
    if regular and size <= cap:
        assert error is None
        assert read_small_file(path, cap) == b"k" * size
    else:
        assert isinstance(error, UnreadableFile)
        assert str(error).startswith(f"cannot read {path}: ")
