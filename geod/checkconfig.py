"""`geod check-config`: the config, then the start-up checks, changing nothing.

Run as root for a unit that runs as `geod`, it checks what *that* user would meet (root's own
access would prove nothing: root bypasses the mode bits). The database is opened read-only.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from geod.chain import check_files
from geod.config import Config
from geod.errors import ConfigError, StoreError
from geod.preflight import Identity, check_access, unit_identity
from geod.store import open_store


def who_to_check(spec: str | None) -> Identity | None:
    """`--user`, else the installed unit's User=/Group= when run as root; None = this process."""
    if spec:
        return Identity.lookup(spec)
    if os.geteuid() == 0:
        return unit_identity()
    return None


async def check_config(config: Config, who: Identity | None) -> list[str]:
    """Every check `geod run` makes before READY, read-only; returns notes worth printing.

    Raises:
        ConfigError: a bad value, an unreadable mmdb file, a missing table or column.
        PermissionProblem: `who` may not write the database, its directory or companions.
        StoreError: the database cannot be opened.
    """
    check_files(config)
    database = config.database
    if database.url and database.password_file and not database.password:
        # `--no-key-file`: the password is a credential only the running service holds.
        return ["the PostgreSQL login was not checked: password_file was left unread"]
    if database.url:  # PostgreSQL: no file to check; the server says what geod may do
        store = await open_store(config, readonly=True)
        await store.close()
        return []
    notes = await asyncio.to_thread(check_access, database.path, who)
    if not await asyncio.to_thread(Path(database.path).exists):
        if not database.create:
            raise StoreError(f"database {database.path} does not exist (and create = false)")
        notes.append(f"{database.path} does not exist yet: geod run creates it (mode 0600)")
        return notes
    try:
        store = await open_store(config, readonly=True)
    except ConfigError as error:
        if not (database.create and error.key == "database.table"):
            raise
        notes.append(f"table {database.table} does not exist yet: geod run creates it")
    else:
        await store.close()
    return notes
