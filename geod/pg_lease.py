"""The fleet's shared state in PostgreSQL: leases on addresses, and the shared attempt log.

Several geod instances drain one table. Before asking about an address an instance claims a short
lease on it in geod's own table (never a lock on the app's rows): one `INSERT … ON CONFLICT DO
UPDATE … WHERE expired` statement, so claims are atomic, never overlap, and a killed instance's
leases are simply taken over once they expire. The owner is a fresh uuid4 per start, so a
restarted instance never mistakes an older self's leases for its own. Expiry is judged by the
server's clock (`now()`), the one clock every host agrees on. The attempt log is the negative
cache, shared: an address one instance just failed on is not claimed by another until its
back-off ends. Scheduling (when to claim, renew, release) is the caller's.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection
from typing import Any

import psycopg
from psycopg import sql

from geod.config import DatabaseConfig
from geod.errors import StoreError
from geod.pg_store import connect

LEASE_TTL = 120.0  # seconds; renewed every third of it while the holder waits on its rate limit
MAX_BACKOFF_EXPONENT = 40  # as NegativeCache: caps 2**n, the wait is capped by max_ttl anyway

TABLES = """\
CREATE TABLE IF NOT EXISTS {schema}.lease (
    address    text PRIMARY KEY,
    owner      uuid NOT NULL,            -- one geod process start (uuid4)
    expires_at timestamptz NOT NULL      -- server clock; past it, any instance may take over
);
CREATE TABLE IF NOT EXISTS {schema}.attempt (
    address      text PRIMARY KEY,
    failures     integer NOT NULL,       -- consecutive failed look-ups
    next_attempt timestamptz NOT NULL    -- no instance claims the address before this
)"""

GRANTS = """\
GRANT USAGE ON SCHEMA {schema} TO {role};
GRANT SELECT, INSERT, UPDATE, DELETE ON {schema}.lease, {schema}.attempt TO {role}"""


def schema_sql(schema: str, role: str | None = None) -> str:
    """The SQL a DBA runs to create geod's schema by hand (and the grants for `role`)."""
    text = f"CREATE SCHEMA IF NOT EXISTS {schema};\n" + TABLES.format(schema=schema) + ";\n"
    if role:
        text += GRANTS.format(schema=schema, role=role) + ";\n"
    return text


class Fleet:
    """One instance's view of the shared lease table and attempt log."""

    def __init__(self, conn: psycopg.AsyncConnection[Any], schema: str,
                 owner: uuid.UUID | None = None, ttl: float = LEASE_TTL) -> None:
        self._conn = conn
        self.owner = owner or uuid.uuid4()
        self.ttl = ttl
        s = sql.Identifier(schema)
        self._lease = sql.SQL("{}.lease").format(s)
        self._attempt = sql.SQL("{}.attempt").format(s)

    @classmethod
    async def open(cls, config: DatabaseConfig, ttl: float = LEASE_TTL) -> Fleet:
        """Connect, create geod's schema and tables where missing, and start as a new owner.

        Raises:
            StoreError: the server is unreachable, or the tables are missing and cannot be made.
        """
        conn = await connect(config)
        try:
            # The lease table goes from empty to thousands of pages of dead rows within one
            # long pass (every chunk inserts and deletes its leases; autovacuum comes round
            # once a minute). A generic plan the server keeps for a statement psycopg prepared
            # while the table was small scans it whole ever after: plan each run afresh.
            await conn.execute("SELECT set_config('plan_cache_mode', 'force_custom_plan', false)")
            await _ensure_schema(conn, config.geod_schema)
        except psycopg.Error as error:
            await conn.close()
            raise StoreError(
                f"preparing schema {config.geod_schema!r}: {str(error).strip().splitlines()[0]} "
                "(README has the SQL and grants to create it by hand)") from None
        except BaseException:
            await conn.close()
            raise
        return cls(conn, config.geod_schema, ttl=ttl)

    async def close(self) -> None:
        await self._conn.close()

    async def claim(self, addresses: Collection[str], ttl: float | None = None) -> list[str]:
        """Lease those of `addresses` nobody holds and nobody has just failed on; returns them.

        Taken in sorted order, so two instances claiming overlapping sets never deadlock; a
        concurrent claim of the same address waits only for the other's one-statement insert.
        """
        query = sql.SQL(
            "INSERT INTO {lease} AS l (address, owner, expires_at) "
            "SELECT c.a, %(owner)s, now() + make_interval(secs => %(ttl)s) "
            "FROM (SELECT DISTINCT a FROM unnest(%(addresses)s::text[]) AS a) AS c "
            "WHERE NOT EXISTS (SELECT 1 FROM {attempt} t "
            "                  WHERE t.address = c.a AND t.next_attempt > now()) "
            "ORDER BY c.a "
            "ON CONFLICT (address) DO UPDATE "
            "SET owner = excluded.owner, expires_at = excluded.expires_at "
            "WHERE l.expires_at <= now() OR l.owner = excluded.owner "
            "RETURNING l.address").format(lease=self._lease, attempt=self._attempt)
        params = {"owner": self.owner, "ttl": self.ttl if ttl is None else ttl,
                  "addresses": list(addresses)}
        return await self._addresses(query, params)

    async def take_expired(self, limit: int) -> list[str]:
        """Drop up to `limit` leases other owners let expire (a killed or stalled instance);
        returns their addresses, for the caller to claim if they are still due.

        Locks only the lease rows it drops (SKIP LOCKED: two instances never drop the same).
        """
        query = sql.SQL(
            "DELETE FROM {lease} WHERE address IN ("
            "  SELECT address FROM {lease} WHERE expires_at <= now() AND owner <> %(owner)s "
            "  ORDER BY address LIMIT %(limit)s FOR UPDATE SKIP LOCKED) "
            "RETURNING address").format(lease=self._lease)
        return await self._addresses(query, {"owner": self.owner, "limit": limit})

    async def foreign_lease_left(self, addresses: Collection[str]) -> float | None:
        """Seconds until the last unexpired lease another owner holds on `addresses` ends.

        None when nobody else holds any of them.
        """
        if not addresses:
            return None
        query = sql.SQL(
            "SELECT extract(epoch FROM max(expires_at) - now())::float8 FROM {lease} "
            "WHERE address = ANY(%(addresses)s::text[]) AND owner <> %(owner)s "
            "AND expires_at > now()").format(lease=self._lease)
        try:
            cur = await self._conn.execute(
                query, {"owner": self.owner, "addresses": list(addresses)})
            row = await cur.fetchone()
        except psycopg.Error as error:
            raise StoreError(f"fleet tables: {str(error).strip().splitlines()[0]}") from None
        return None if row is None or row[0] is None else max(0.0, float(row[0]))

    async def renew(self, addresses: Collection[str]) -> list[str]:
        """Push the expiry of our leases on `addresses` out by ttl; returns those still ours."""
        query = sql.SQL(
            "UPDATE {lease} SET expires_at = now() + make_interval(secs => %(ttl)s) "
            "WHERE owner = %(owner)s AND address = ANY(%(addresses)s::text[]) "
            "RETURNING address").format(lease=self._lease)
        params = {"owner": self.owner, "ttl": self.ttl, "addresses": list(addresses)}
        return await self._addresses(query, params)

    async def release(self, addresses: Collection[str]) -> int:
        """Drop our leases on `addresses` (done with them, answered or not); returns how many."""
        query = sql.SQL(
            "DELETE FROM {lease} WHERE owner = %(owner)s AND address = ANY(%(addresses)s::text[])"
        ).format(lease=self._lease)
        return await self._count(query, {"owner": self.owner, "addresses": list(addresses)})


    async def record_failure(self, addresses: Collection[str], ttl: float,
                             max_ttl: float) -> None:
        """Back `addresses` off for every instance: ttl, doubling per failure, capped at max_ttl."""
        await self._back_off(addresses, sql.SQL(
            "least(%(ttl)s * power(2, least(a.failures, {cap})), %(max_ttl)s)").format(
                cap=sql.Literal(MAX_BACKOFF_EXPONENT)), ttl, max_ttl)

    async def record_permanent(self, addresses: Collection[str], max_ttl: float) -> None:
        """Back `addresses` off for max_ttl at once: the answer will not change soon."""
        await self._back_off(addresses, sql.SQL("%(max_ttl)s"), max_ttl, max_ttl)

    async def forget(self, addresses: Collection[str]) -> int:
        """Answered: drop `addresses` from the attempt log."""
        query = sql.SQL("DELETE FROM {attempt} WHERE address = ANY(%(addresses)s::text[])").format(
            attempt=self._attempt)
        return await self._count(query, {"addresses": list(addresses)})

    async def clear(self) -> int:
        """SIGHUP: end every back-off in the shared log (for all instances); returns how many.

        The operator's "try again now" is about the addresses, not about this one host: a
        per-host view would make the answer depend on which instance holds the address next.
        """
        return await self._count(sql.SQL("DELETE FROM {}").format(self._attempt), {})

    async def backing_off(self, addresses: Collection[str]) -> set[str]:
        """Those of `addresses` whose back-off has not ended."""
        query = sql.SQL(
            "SELECT address FROM {attempt} "
            "WHERE address = ANY(%(addresses)s::text[]) AND next_attempt > now()").format(
                attempt=self._attempt)
        return set(await self._addresses(query, {"addresses": list(addresses)}))

    async def prune(self, max_ttl: float) -> int:
        """Drop leases long expired and back-offs ended more than max_ttl ago; returns how many.

        Keeping recently ended back-offs is what lets consecutive failures keep doubling.
        """
        horizon = {"max_ttl": max_ttl}
        leases = await self._count(sql.SQL(
            "DELETE FROM {} WHERE expires_at < now() - make_interval(secs => %(max_ttl)s)").format(
                self._lease), horizon)
        attempts = await self._count(sql.SQL(
            "DELETE FROM {} WHERE next_attempt < now() - make_interval(secs => %(max_ttl)s)"
        ).format(self._attempt), horizon)
        return leases + attempts

    async def _back_off(self, addresses: Collection[str], wait: sql.Composable, ttl: float,
                        max_ttl: float) -> None:
        query = sql.SQL(
            "INSERT INTO {attempt} AS a (address, failures, next_attempt) "
            "SELECT DISTINCT x, 1, now() + make_interval(secs => least(%(ttl)s, %(max_ttl)s)) "
            "FROM unnest(%(addresses)s::text[]) AS x ORDER BY x "
            "ON CONFLICT (address) DO UPDATE SET failures = a.failures + 1, "
            "next_attempt = now() + make_interval(secs => {wait})").format(
                attempt=self._attempt, wait=wait)
        params = {"addresses": list(addresses), "ttl": float(ttl), "max_ttl": float(max_ttl)}
        await self._count(query, params)

    async def _addresses(self, query: sql.Composed, params: dict[str, Any]) -> list[str]:
        try:
            cur = await self._conn.execute(query, params)
            return [str(address) for (address,) in await cur.fetchall()]
        except psycopg.Error as error:
            raise StoreError(f"fleet tables: {str(error).strip().splitlines()[0]}") from None

    async def _count(self, query: sql.Composed, params: dict[str, Any]) -> int:
        try:
            cur = await self._conn.execute(query, params)
        except psycopg.Error as error:
            raise StoreError(f"fleet tables: {str(error).strip().splitlines()[0]}") from None
        return max(cur.rowcount, 0)


async def _ensure_schema(conn: psycopg.AsyncConnection[Any], schema: str) -> None:
    """Create what is missing, and only that: tables a DBA made need no CREATE privilege.

    Instances started together would race `IF NOT EXISTS` (it is not atomic in PostgreSQL):
    the check and the creation run in one transaction under an advisory lock on the schema.
    """
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"geod:{schema}",))
        await _create_missing(conn, schema)


async def _create_missing(conn: psycopg.AsyncConnection[Any], schema: str) -> None:
    s = sql.Identifier(schema)
    cur = await conn.execute("SELECT to_regnamespace(quote_ident(%s))", (schema,))
    if (await cur.fetchone() or (None,))[0] is None:
        await conn.execute(sql.SQL("CREATE SCHEMA {}").format(s))
    for table in ("lease", "attempt"):
        cur = await conn.execute("SELECT to_regclass(quote_ident(%s) || '.' || %s)",
                                 (schema, table))
        if (await cur.fetchone() or (None,))[0] is None:
            # Both statements in one go: without parameters psycopg runs them as one script.
            await conn.execute(sql.SQL(TABLES).format(schema=s))
            return
