"""A throwaway PostgreSQL 15 server for the tests: initdb in a temporary directory, start, stop.

PostgreSQL refuses to run as root, and CI runs as root: then the cluster belongs to `nobody` and
its programs run as that user (subprocess `user=`). The server listens on a Unix socket in its
own directory and on a free loopback port (password tests need TCP: local connections are
`trust`, TCP ones `scram-sha-256`). Durability is off (fsync, full_page_writes): a test cluster
is thrown away, and start-up and writes are faster for it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

PG_BIN = Path(os.environ.get("GEOD_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
SUPERUSER = "postgres"
RUN_AS = "nobody"  # used only when the tests run as root


class PgUnavailable(Exception):
    """No PostgreSQL binaries here: tests that need a server are skipped with this reason."""


@dataclass(slots=True)
class PgServer:
    root: Path  # the temporary directory: data/, sock/, server.log
    port: int
    startup_s: float = 0.0

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "sock"

    def url(self, dbname: str = "postgres", user: str = SUPERUSER) -> str:
        """A libpq URL for `dbname` over the Unix socket (trust: no password)."""
        return f"postgresql://{user}@/{dbname}?host={self.socket_dir}&port={self.port}"

    def tcp_url(self, dbname: str, user: str) -> str:
        """A libpq URL over loopback TCP, where the server asks for a password."""
        return f"postgresql://{user}@127.0.0.1:{self.port}/{dbname}"

    def stop(self) -> None:
        _run([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop"],
             check=False)
        shutil.rmtree(self.root, ignore_errors=True)


def start_server() -> PgServer:
    """initdb and start a server; raises PgUnavailable when the binaries are missing."""
    if not (PG_BIN / "initdb").is_file():
        raise PgUnavailable(f"PostgreSQL 15 is not installed ({PG_BIN / 'initdb'} is missing)")
    started = time.perf_counter()
    # Not under pytest's tmp_path (0700 root) nor $TMPDIR: the server user must reach its files.
    # mkdtemp makes a fresh 0700 directory of its own, so a shared /tmp is safe here.
    root = Path(tempfile.mkdtemp(prefix="geod-pg-", dir="/tmp" if os.geteuid() == 0 else None))  # noqa: S108
    (root / "sock").mkdir()
    if os.geteuid() == 0:
        for path in (root, root / "sock"):
            shutil.chown(path, RUN_AS)
    server = PgServer(root, _free_port())
    try:
        _run([str(PG_BIN / "initdb"), "-D", str(server.data), "-U", SUPERUSER, "-E", "UTF8",
              "--locale=C", "--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync",
              "--no-instructions"])
        for attempt in range(3):  # the free port may be taken between finding and binding it
            options = (f"-k {server.socket_dir} -h 127.0.0.1 -p {server.port} -F "
                       "-c full_page_writes=off -c synchronous_commit=off -c max_connections=50")
            try:
                _run([str(PG_BIN / "pg_ctl"), "-D", str(server.data), "-l",
                      str(root / "server.log"), "-o", options, "-w", "-t", "30", "start"])
                break
            except RuntimeError:
                if attempt == 2:
                    raise
                server.port = _free_port()
    except BaseException:
        server.stop()
        raise
    server.startup_s = time.perf_counter() - started
    return server


def _run(argv: list[str], check: bool = True) -> None:
    user = RUN_AS if os.geteuid() == 0 else None
    result = subprocess.run(argv, user=user, capture_output=True, text=True, check=False,
                            cwd="/")
    if check and result.returncode != 0:
        raise RuntimeError(f"{Path(argv[0]).name} failed: {result.stderr or result.stdout}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
