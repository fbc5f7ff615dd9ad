"""Helpers for tests against the throwaway PostgreSQL server: make a table, read it back."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import Any

import psycopg

from geod.config import DatabaseConfig

PG_SCHEMA = (
    "CREATE TABLE geo_cache (ip TEXT PRIMARY KEY, country_code TEXT, country_name TEXT, "
    "asn TEXT, org TEXT, cached_at TEXT)"
)


def pg_config(url: str, **changes: Any) -> DatabaseConfig:
    return replace(DatabaseConfig(url=url), **changes)


def make_pg_table(
    url: str,
    rows: Iterable[tuple[Any, ...]] = (),
    schema: str = PG_SCHEMA,
    insert: str = "INSERT INTO geo_cache (ip, country_code) VALUES (%s, %s)",
) -> None:
    with psycopg.connect(url) as conn:
        conn.execute(schema)  # type: ignore[arg-type]  # test-owned SQL text
        with conn.cursor() as cur:
            cur.executemany(insert, list(rows))  # type: ignore[arg-type]


def read_pg_rows(url: str, table: str = "geo_cache", key: str = "ip") -> dict[str, dict[str, Any]]:
    """All rows of `table`, keyed by the text of `key`, as dicts."""
    with psycopg.connect(url, row_factory=psycopg.rows.dict_row) as conn:
        rows = conn.execute(f"SELECT * FROM {table}").fetchall()  # type: ignore[arg-type]  # noqa: S608
    return {str(row[key]): dict(row) for row in rows}


# Counts geod's writes per row: a second fill of the same row would show as writes = 2.
WRITES_TRIGGER = """
ALTER TABLE geo_cache ADD COLUMN writes integer NOT NULL DEFAULT 0;
CREATE FUNCTION count_fill() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF OLD.country_code IS NULL AND NEW.country_code IS NOT NULL THEN
    NEW.writes := OLD.writes + 1;
  END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER count_fill BEFORE UPDATE ON geo_cache FOR EACH ROW EXECUTE FUNCTION count_fill();
"""
