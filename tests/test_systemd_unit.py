"""The shipped unit and sysusers file, checked by systemd's own tools (systemd 252 in CI).

`systemd-analyze verify` exits 0 even for directives it does not know (it warns and ignores
them), so the tests check its output, not only its exit code.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from geod.install import install_files

REPO = Path(__file__).resolve().parents[1]
UNIT = REPO / "systemd" / "geod.service"
SYSUSERS = REPO / "systemd" / "geod.sysusers"
EXPOSURE_TARGET = 1.2
HOST_UNITS = Path("/usr/lib/systemd/system")

pytestmark = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze is not installed (apt-get install systemd; .ci/run does this)",
)


def _verify_root(tmp_path: Path, unit_text: str) -> Path:
    """A file-system root with the unit installed, stand-ins for its programs and the host's
    stock units (sysinit.target, ...), so verify checks the unit exactly as shipped."""
    root = tmp_path / "root"
    for program in ("opt/geod/bin/geod", "usr/bin/kill"):
        path = root / program
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("#!/bin/sh\n", encoding="utf-8")
        path.chmod(0o755)
    (root / "bin").symlink_to("usr/bin")  # merged /usr, as on Debian 12: /bin/kill resolves
    shutil.copytree(HOST_UNITS, root / "usr/lib/systemd/system", symlinks=True)
    units = root / "etc/systemd/system"
    units.mkdir(parents=True)
    (units / "geod.service").write_text(unit_text, encoding="utf-8")
    return root


def _verify(root: Path) -> subprocess.CompletedProcess[str]:
    # verify runs `man` for each Documentation=man: page: point it at the pages that
    # `geod install-files` puts in place, so a missing or misnamed page is a failure here.
    install_files(root / "pages", io.StringIO())
    manpath = root / "pages/usr/local/share/man"
    return subprocess.run(
        ["systemd-analyze", "verify", f"--root={root}", "geod.service"],
        capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "MANPATH": str(manpath)},
    )  # fmt: skip


@pytest.mark.skipif(not HOST_UNITS.is_dir(), reason=f"{HOST_UNITS} missing: systemd not installed")
def test_verify_prints_nothing(tmp_path: Path) -> None:
    """`systemd-analyze verify` accepts the unit without a single warning."""
    result = _verify(_verify_root(tmp_path, UNIT.read_text(encoding="utf-8")))
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


@pytest.mark.skipif(not HOST_UNITS.is_dir(), reason=f"{HOST_UNITS} missing: systemd not installed")
def test_verify_would_catch_directives_newer_than_252(tmp_path: Path) -> None:
    """The check above has teeth: directives 252 does not know are reported (and ignored)."""
    text = UNIT.read_text(encoding="utf-8").replace(
        "Type=notify\n", "Type=notify\nImportCredential=ipapi-key\n"
    )
    result = _verify(_verify_root(tmp_path, text))
    if result.returncode == 0 and not result.stderr:
        pytest.skip("this systemd knows ImportCredential= (254+); the 252 check cannot fail here")
    assert "ImportCredential" in result.stderr


def test_exposure_is_at_most_the_target() -> None:
    """`systemd-analyze security --offline=yes` rates the unit at 1.2 or better."""
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(UNIT)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    match = re.search(r"Overall exposure level for geod\.service: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= EXPOSURE_TARGET, result.stdout


def test_unit_has_the_service_contract() -> None:
    """Type=notify, reload by SIGHUP, no restart on a bad config, watchdog, a 10 s stop."""
    lines = set(UNIT.read_text(encoding="utf-8").splitlines())
    for line in (
        "Type=notify",
        "NotifyAccess=main",
        "ExecStart=/opt/geod/bin/geod run --config /etc/geod/config.toml",
        "ExecReload=/opt/geod/bin/geod check-config --quiet --no-key-file "
        "--config /etc/geod/config.toml",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Restart=on-failure",
        "RestartPreventExitStatus=77 78",
        "Documentation=man:geod(8) man:geod.toml(5)",
        "TimeoutStopSec=10s",
        "User=geod",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
    ):
        assert line in lines, line
    assert any(line.startswith("WatchdogSec=") for line in lines)


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None, reason="systemd-sysusers missing")
def test_sysusers_creates_the_geod_user(tmp_path: Path) -> None:
    """The sysusers.d file is valid and creates a `geod` user and group."""
    (tmp_path / "etc").mkdir()
    conf = tmp_path / "usr/lib/sysusers.d/geod.conf"
    conf.parent.mkdir(parents=True)
    shutil.copy(SYSUSERS, conf)
    result = subprocess.run(
        ["systemd-sysusers", f"--root={tmp_path}", "--dry-run"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Creating group 'geod'" in result.stderr and "Creating user 'geod'" in result.stderr
