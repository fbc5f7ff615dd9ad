"""The PostgreSQL server beside the systemd e2e container (tests/e2e/systemd_e2e.sh).

The container has no network, so the app's database runs on the host (the tests' throwaway
PostgreSQL 15) and its socket directory is bound into the container at /run/postgresql. Role
`geod` logs in with a password over that socket (scram), as the README's LoadCredential= setup
expects; the table holds two NULL-country rows.

    python host_pg.py start STATE     # prints "SOCKET_DIR PORT"; exit 77 without PostgreSQL
    python host_pg.py insert STATE IP
    python host_pg.py resolved STATE  # rows with a country
    python host_pg.py stop STATE
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import psycopg  # noqa: E402

from tests.pg import PgServer, PgUnavailable, start_server  # noqa: E402

PASSWORD = "e2e-pg-password"  # noqa: S105 - a throwaway server's test role
SKIP = 77


def _server(state: Path) -> PgServer:
    saved = json.loads(state.read_text())
    return PgServer(Path(saved["root"]), saved["port"])


def start(state: Path) -> None:
    try:
        server = start_server()
    except PgUnavailable as error:
        print(error, file=sys.stderr)
        sys.exit(SKIP)
    state.write_text(json.dumps({"root": str(server.root), "port": server.port}))
    with psycopg.connect(server.url(), autocommit=True) as conn:
        conn.execute(f"CREATE ROLE geod LOGIN PASSWORD '{PASSWORD}'")
        conn.execute("CREATE DATABASE app")
    with psycopg.connect(server.url("app"), autocommit=True) as conn:
        conn.execute("CREATE TABLE geo_cache (ip TEXT PRIMARY KEY, country_code TEXT, "
                     "country_name TEXT, asn TEXT, org TEXT, cached_at TEXT)")
        conn.execute("INSERT INTO geo_cache (ip) VALUES ('8.8.4.4'), ('9.9.9.9')")
        conn.execute("GRANT SELECT, UPDATE (country_code, country_name, asn, org, cached_at) "
                     "ON geo_cache TO geod")  # the README's grant
    hba = server.data / "pg_hba.conf"
    hba.write_text("local all geod scram-sha-256\n" + hba.read_text())
    with psycopg.connect(server.url(), autocommit=True) as conn:
        conn.execute("SELECT pg_reload_conf()")
    print(server.socket_dir, server.port)


def main(argv: list[str]) -> None:
    command, state = argv[0], Path(argv[1])
    if command == "start":
        start(state)
    elif command == "insert":
        with psycopg.connect(_server(state).url("app"), autocommit=True) as conn:
            conn.execute("INSERT INTO geo_cache (ip) VALUES (%s)", (argv[2],))
    elif command == "resolved":
        with psycopg.connect(_server(state).url("app")) as conn:
            row = conn.execute("SELECT count(*) FROM geo_cache WHERE country_code IS NOT NULL "
                               "AND cached_at IS NOT NULL").fetchone()
            print(row[0] if row else 0)
    elif command == "stop":
        _server(state).stop()


if __name__ == "__main__":
    main(sys.argv[1:])
