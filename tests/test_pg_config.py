"""[database] url, password_file, geod_schema: loading, and the password reaching a server."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest

from geod.cli import main
from geod.config import REDACTED, load_config
from geod.errors import EXIT_CONFIG, ConfigError, StoreError, exit_code_for
from geod.pg_lease import Fleet, schema_sql
from geod.pg_store import PgStore
from geod.records import Geo, Update, Written
from tests.conftest import write_config
from tests.pg import PgServer
from tests.pg_helpers import make_pg_table, pg_config, read_pg_rows

PASSWORD = "pa ss'wo\"rd-Ѫ"  # noqa: S105 - made up; spaces, quotes and non-ASCII on purpose
URL = "postgresql://geod@db.example/app"


@pytest.mark.parametrize(("toml", "error"), [
    (f'url = "{URL.replace("geod@", "geod:pw@")}"',
     "[database] url: must not contain a password (use password_file, PGPASSFILE/.pgpass or "
     "peer auth: this file is world-readable)"),
    (f'url = "{URL}?password=pw"', "[database] url: must not contain a password"),
    ('url = "mysql://x/app"', "[database] url: must be a postgresql:// URL, got scheme 'mysql'"),
    ('url = "postgresql://[::1/app"', "[database] url: must be a postgresql:// URL"),
    ('password_file = "pw"', "[database] password_file: needs a PostgreSQL url"),
    ('geod_schema = "geod"', "[database] geod_schema: needs a PostgreSQL url"),
    (f'url = "{URL}"\ngeod_schema = "geod; drop"', "[database] geod_schema: must be an SQL "
     "identifier"),
    (f'url = "{URL}"\npassword_file = "missing"',
     "[database] password_file: cannot read {dir}/missing: No such file or directory"),
])  # fmt: skip
def test_bad_database_settings_are_config_errors(tmp_path: Path, toml: str, error: str) -> None:
    """Each problem is a ConfigError (exit 78) naming the key, and never echoes a password."""
    with pytest.raises(ConfigError) as raised:
        load_config(write_config(tmp_path / "geod.toml", f"[database]\n{toml}\n"), {})
    message = str(raised.value).replace(str(tmp_path), "{dir}")
    assert error in message
    assert "pw" not in message.replace("pwd", "").split("url:")[-1].replace("password", "")
    assert exit_code_for(raised.value) == EXIT_CONFIG


def test_password_file_is_read_from_the_credentials_directory(tmp_path: Path) -> None:
    """password_file = "$CREDENTIALS_DIRECTORY/pg" reads the whole line, spaces included."""
    credentials = tmp_path / "creds"
    credentials.mkdir()
    (credentials / "pg").write_text(PASSWORD + "\n", encoding="utf-8")
    toml = f'[database]\nurl = "{URL}"\npassword_file = "$CREDENTIALS_DIRECTORY/pg"\n'
    config = load_config(write_config(tmp_path / "geod.toml", toml),
                         {"CREDENTIALS_DIRECTORY": str(credentials)})
    assert config.database.password == PASSWORD
    assert config.database.password_file == str(credentials / "pg")


def test_check_config_redacts_the_password(tmp_path: Path, pg_url: str,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """check-config checks the table on the server and shows the password file's path, never
    the password."""
    make_pg_table(pg_url)
    (tmp_path / "pg").write_text(PASSWORD, encoding="utf-8")
    toml = f'[database]\nurl = "{pg_url}"\npassword_file = "pg"\n'
    assert main(["check-config", "--config", str(write_config(tmp_path / "g.toml", toml))]) == 0
    out, err = capsys.readouterr()
    assert PASSWORD not in out + err
    shown = json.loads(out)["database"]
    assert shown["password"] == REDACTED and shown["password_file"] == str(tmp_path / "pg")


_ROLES = itertools.count()


@pytest.fixture
def pg_role(pg_server: PgServer, pg_url: str) -> Iterator[tuple[str, str]]:
    """A login role with PASSWORD, and the URL of the test database over TCP (no password)."""
    role = f"app{next(_ROLES)}"
    with psycopg.connect(pg_server.url(), autocommit=True) as admin:
        admin.execute(
            psycopg.sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                psycopg.sql.Identifier(role), psycopg.sql.Literal(PASSWORD)))
    yield role, pg_server.tcp_url(urlsplit(pg_url).path.lstrip("/"), role)
    with psycopg.connect(pg_url, autocommit=True) as admin:
        admin.execute(psycopg.sql.SQL("DROP OWNED BY {}").format(psycopg.sql.Identifier(role)))
    with psycopg.connect(pg_server.url(), autocommit=True) as admin:
        admin.execute(psycopg.sql.SQL("DROP ROLE {}").format(psycopg.sql.Identifier(role)))


def _grant_app_table(pg_url: str, role: str) -> None:
    make_pg_table(pg_url, [("8.8.8.8", None)])
    with psycopg.connect(pg_url) as conn:
        conn.execute(psycopg.sql.SQL(
            "GRANT SELECT, UPDATE (country_code, country_name, asn, org, cached_at) "
            "ON geo_cache TO {}").format(psycopg.sql.Identifier(role)))


async def test_password_file_logs_in_over_tcp(pg_url: str, pg_role: tuple[str, str]) -> None:
    """The password from password_file authenticates (scram over TCP); a wrong one is refused
    with a StoreError that shows neither password."""
    role, tcp_url = pg_role
    _grant_app_table(pg_url, role)
    store = await PgStore.open(pg_config(tcp_url, password=PASSWORD), "geod.toml")
    assert await store.write([Update("8.8.8.8", Geo("US", None, None, None))], "t") == Written(1)
    await store.close()
    with pytest.raises(StoreError) as refused:
        await PgStore.open(pg_config(tcp_url, password="wrong"), "geod.toml")  # noqa: S106
    assert "password authentication failed" in str(refused.value)
    assert PASSWORD not in str(refused.value) and "wrong" not in str(refused.value)


async def test_libpq_pgpassfile_is_honoured(
        pg_url: str, pg_role: tuple[str, str], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """With no password in geod's config, libpq's own PGPASSFILE supplies it."""
    role, tcp_url = pg_role
    _grant_app_table(pg_url, role)
    escaped = PASSWORD.replace("\\", "\\\\").replace(":", "\\:")
    passfile = tmp_path / "pgpass"
    passfile.write_text(f"127.0.0.1:*:*:{role}:{escaped}\n", encoding="utf-8")
    passfile.chmod(0o600)  # libpq ignores a pgpass file others can read
    monkeypatch.setenv("PGPASSFILE", str(passfile))
    store = await PgStore.open(pg_config(tcp_url), "geod.toml")
    assert await store.count_due() == 1
    await store.close()


async def test_readme_grants_are_enough(pg_url: str, pg_role: tuple[str, str]) -> None:
    """A role with only the README's grants (schema made by a DBA) can read, write and lease."""
    role, tcp_url = pg_role
    _grant_app_table(pg_url, role)
    with psycopg.connect(pg_url) as dba:
        dba.execute(schema_sql("geod", role=role))  # type: ignore[arg-type]  # our own SQL
    config = pg_config(tcp_url, password=PASSWORD, geod_schema="geod")
    fleet = await Fleet.open(config)
    store = await PgStore.open(config, "geod.toml")
    try:
        assert await fleet.claim(["8.8.8.8"]) == ["8.8.8.8"]
        await fleet.record_failure(["1.1.1.1"], ttl=60, max_ttl=600)
        assert await store.write([Update("8.8.8.8", Geo("US", "United States", None, None))],
                                 "t") == Written(1)
        assert await fleet.release(["8.8.8.8"]) == 1
    finally:
        await store.close()
        await fleet.close()
    assert read_pg_rows(pg_url)["8.8.8.8"]["country_code"] == "US"


async def test_without_create_rights_a_missing_schema_is_explained(
        pg_url: str, pg_role: tuple[str, str]) -> None:
    """A role that may not create schemas gets a StoreError pointing at the README's SQL."""
    _, tcp_url = pg_role
    with pytest.raises(StoreError, match="README has the SQL and grants"):
        await Fleet.open(pg_config(tcp_url, password=PASSWORD, geod_schema="geod"))


def test_readme_has_the_dba_sql() -> None:
    """The README's hand-made schema block is exactly what schema_sql() gives (and tests use)."""
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    assert schema_sql("geod", role="geod") in readme


async def test_open_store_picks_postgresql_from_the_url(tmp_path: Path, pg_url: str) -> None:
    """A url opens the PostgreSQL store, never the SQLite path; geod_schema adds the fleet."""
    from geod.pg_fleet import FleetStore
    from geod.store import open_store
    from tests.pg_helpers import make_pg_table

    make_pg_table(pg_url, [("8.8.8.8", None)])
    text = f'[database]\nurl = "{pg_url}"\n'
    config = load_config(write_config(tmp_path / "g.toml", text), {})
    store = await open_store(config)
    assert isinstance(store, PgStore)
    assert await store.count_due() == 1
    await store.close()
    config = load_config(write_config(tmp_path / "g.toml", text + 'geod_schema = "geod"\n'), {})
    fleet = await open_store(config)
    assert isinstance(fleet, FleetStore)
    await fleet.close()
    assert not (tmp_path / "geo.db").exists()
