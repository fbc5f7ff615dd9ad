"""Shared fixtures: real SQLite files, a fake clock, captured logs, the fake ip-api server."""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
from collections.abc import Callable, Iterable, Iterator, MutableMapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import structlog
from aiohttp.test_utils import TestServer

from geod.config import ColumnsConfig, Config, DatabaseConfig, load_config
from geod.daemon import Daemon
from geod.negcache import NegativeCache
from geod.provider import Provider
from geod.records import PassSummary
from geod.resolve import Pass
from geod.sqlite_store import SqliteStore
from geod.status import Phase, Status
from geod.store import Store
from tests.fake_ipapi import FakeIpApi
from tests.pg import PgServer, PgUnavailable, start_server

if TYPE_CHECKING:
    from tests.store_backends import StoreBackend

DEFAULT_SCHEMA = (
    "CREATE TABLE geo_cache (ip TEXT PRIMARY KEY, country_code TEXT, country_name TEXT, "
    "asn TEXT, org TEXT, cached_at TEXT)"
)


class FakeClock:
    """A monotonic clock that only moves when something sleeps on it (or a test advances it)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += max(seconds, 0.0)
        await asyncio.sleep(0)  # still yield, so a sleeping task stays cancellable


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    """Every test starts from structlog's defaults, whatever the last one configured."""
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
    yield
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()


Logs = list[MutableMapping[str, Any]]


@pytest.fixture
def logs() -> Iterator[Logs]:
    """Every event logged during the test, as dicts (structlog.testing.capture_logs)."""
    with structlog.testing.capture_logs(
        processors=[structlog.contextvars.merge_contextvars]
    ) as captured:
        yield captured


def events(captured: Logs, name: str) -> Logs:
    return [entry for entry in captured if entry["event"] == name]


MakeDb = Callable[..., Path]


@pytest.fixture
def make_db(tmp_path: Path) -> MakeDb:
    """Create a real SQLite file: make_db(rows=[(ip, country_code), ...], schema=..., name=...)."""

    def make(
        rows: Iterable[tuple[Any, ...]] = (),
        schema: str = DEFAULT_SCHEMA,
        name: str = "geo.db",
        insert: str = "INSERT INTO geo_cache (ip, country_code) VALUES (?, ?)",
    ) -> Path:
        path = tmp_path / name
        with sqlite3.connect(path) as conn:
            conn.execute(schema)
            conn.executemany(insert, list(rows))
        conn.close()
        return path

    return make


def read_rows(path: Path | StoreBackend, table: str = "geo_cache") -> dict[str, dict[str, Any]]:
    """All rows of `table` (a SQLite file's, or `app_db`'s in either store), keyed by ip."""
    if not isinstance(path, Path):
        return path.read(table)
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    try:
        return {row["ip"]: dict(row) for row in conn.execute(f"SELECT * FROM {table}")}  # noqa: S608
    finally:
        conn.close()


def write_config(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def toml_value(value: Any) -> str:
    """A Python value as TOML (the few kinds a geod config holds)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def toml_text(tables: dict[str, dict[str, Any]], extra: str = "") -> str:
    """TOML for {"table": {"key": value}} ("database.columns" for a sub-table), then `extra`."""
    lines: list[str] = []
    for table, values in tables.items():
        lines.append(f"[{table}]")
        lines += [f"{key} = {toml_value(value)}" for key, value in values.items()]
    return "\n".join(lines) + "\n" + extra + "\n"


MakeConfig = Callable[..., Config]


@pytest.fixture
def make_config(tmp_path: Path) -> MakeConfig:
    """make_config(extra="raw TOML", database={...}, ipapi={...}, ...): geod.toml, loaded.

    Modules with their own defaults (a fake server's URL, a fault table) wrap this one.
    """
    def make(extra: str = "", **tables: dict[str, Any]) -> Config:
        return load_config(write_config(tmp_path / "geod.toml", toml_text(tables, extra)))

    return make


@pytest.fixture
async def fake_server(aiohttp_server: Any, fake_clock: FakeClock) -> tuple[FakeIpApi, str]:
    """The fake ip-api on the fake clock, served in-process: (its state, its batch URL)."""
    fake = FakeIpApi(limit=15, window=60, clock=fake_clock)
    server: TestServer = await aiohttp_server(fake.app)
    return fake, str(server.make_url("/batch"))


def make_daemon(config: Config, clock: FakeClock,
                on_pass_done: Callable[[PassSummary], None] | None = None,
                on_change: Callable[[Status], None] | None = None) -> Daemon:
    """The real daemon on fake time, without signal handlers (tests call request_* instead).

    `on_pass_done` hears the summary of every pass that ended normally; `on_change` every change.
    """
    def changed(status: Status) -> None:
        if on_change is not None:
            on_change(status)
        if on_pass_done is not None and status.phase is Phase.PASSED and status.last is not None:
            on_pass_done(status.last)

    return Daemon(config, clock=clock, sleep=clock.sleep, handle_signals=False, on_change=changed)


async def make_pass(db: Path | StoreBackend, chain: Sequence[Provider], negcache: NegativeCache,
                    clock: FakeClock, *, columns: ColumnsConfig | None = None,
                    stamp: str = "2026-11-28T10:00:00Z") -> PassSummary:
    """One real pass over `db` (a SQLite file, or `app_db`) through `chain`, on fake time."""
    store: Store
    if isinstance(db, Path):
        config = DatabaseConfig(path=str(db), columns=columns or ColumnsConfig())
        store = await SqliteStore.open(config, "geod.toml")
    else:
        store = await db.open(columns=columns or ColumnsConfig())
    try:
        return await Pass(store, chain, negcache, clock=clock, now_utc=lambda: stamp).run()
    finally:
        await store.close()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """One throwaway PostgreSQL 15 server for the session (skipped where none is installed)."""
    try:
        server = start_server()
    except PgUnavailable as missing:
        pytest.skip(str(missing))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(pg_server: PgServer, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh, empty database on the session's server; its libpq URL (Unix socket, trust)."""
    import psycopg

    name = f"t{next(_PG_DATABASES)}"
    with psycopg.connect(pg_server.url(), autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    yield pg_server.url(name)
    with psycopg.connect(pg_server.url(), autocommit=True) as admin:
        admin.execute(f"DROP DATABASE {name} WITH (FORCE)")


_PG_DATABASES = itertools.count()


@pytest.fixture(params=["sqlite", "postgresql"])
def app_db(request: pytest.FixtureRequest, tmp_path: Path) -> StoreBackend:
    """The app's table in each store in turn (tests/store_backends.py): one scenario, two.

    Called like `make_db` (rows, schema=, insert=) it makes the table and returns itself, which
    `read_rows`, `make_pass` and `app_db.database` (the `[database]` table for make_config) take.
    """
    from tests.store_backends import PgBackend, SqliteBackend

    if request.param == "sqlite":
        return SqliteBackend(tmp_path / "geo.db")
    return PgBackend(request.getfixturevalue("pg_url"))
