"""geod under a real systemd (PID 1 of a Debian 12 container): tests/e2e/systemd_e2e.sh.

It runs the README's own `<!-- e2e: NAME -->` shell blocks, read from README.md at run time, for
both deployments (geod's own database; next to a running app's WAL database), then the app's
table in PostgreSQL (a server on the host, its socket bound in, the password a LoadCredential=
credential, started and reloaded), then upgrade and uninstall; and provokes the failures the old
README led to (a database beside the config, the app's 0644 -wal, an invalid config on reload),
checking `journalctl -u geod -p err` names each.

Marked `systemd_e2e` so a developer can skip it (`-m 'not systemd_e2e'`); CI runs it. The first
run builds the container's root file system (~80 s, cached in /var/cache/geod-e2e).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent / "e2e" / "systemd_e2e.sh"
SKIP = 77  # the script's "cannot run on this machine" exit code


@pytest.mark.systemd_e2e
@pytest.mark.slow
def test_geod_under_a_real_systemd() -> None:
    """The README's blocks end in a working service for both deployments; failures are named."""
    if os.geteuid() != 0:
        pytest.skip("needs root: debootstrap, systemd-nspawn and nsenter")
    env = {**os.environ, "GEOD_E2E_PYTHON": sys.executable}
    result = subprocess.run(
        ["bash", str(SCRIPT)], env=env, stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    output = result.stdout + result.stderr
    if result.returncode == SKIP:
        pytest.skip(output.strip().splitlines()[-1])
    assert result.returncode == 0, output[-6000:]
    print(output)  # the "ok N - ..." lines, shown with -s or -rP
