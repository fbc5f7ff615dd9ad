"""The few error types geod raises, and the one mapping from errors to exit codes.

Core modules raise; only `cli` turns an exception into an exit code and a message.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1  # a fatal error that is not the config's fault (database unopenable, port taken)
EXIT_IN_USE = 75  # EX_TEMPFAIL: another geod is resolving this database; try again later
EXIT_NOPERM = 77  # EX_NOPERM: geod may not read or write its database; a restart cannot fix it
EXIT_CONFIG = 78  # EX_CONFIG from sysexits.h; systemd's RestartPreventExitStatus= names it


class GeodError(Exception):
    """Base of every error geod expects and can explain in one line."""


class ConfigError(GeodError):
    """The config is missing, unreadable or invalid.

    `key` is the dotted TOML path (`ipapi.batch_size`) or "" when the whole file is at fault.
    """

    def __init__(self, file: str, key: str, reason: str) -> None:
        super().__init__(file, key, reason)
        self.file = file
        self.key = key
        self.reason = reason

    def __str__(self) -> str:
        if not self.key:
            return f"{self.file}: {self.reason}"
        table, _, name = self.key.rpartition(".")
        where = f"[{table}] {name}" if table else name
        return f"{self.file}: {where}: {self.reason}"


class StoreError(GeodError):
    """The database cannot be opened or used (not a config problem)."""


class StoreBusy(StoreError):
    """Another program held the database's lock too long: skip for now, try again next pass.

    Store-neutral: SQLite's "database is locked" and a server's lock timeout both become this.
    """


class PermissionProblem(GeodError):
    """geod's user may not read or write a file it needs; the message names the file and the fix."""


class AlreadyRunning(GeodError):
    """Another geod holds this database's instance lock (`instance`)."""


def exit_code_for(error: BaseException) -> int:
    """The process exit code for an error that ends geod."""
    if isinstance(error, ConfigError):
        return EXIT_CONFIG
    if isinstance(error, PermissionProblem):
        return EXIT_NOPERM
    if isinstance(error, AlreadyRunning):
        return EXIT_IN_USE
    return EXIT_FAILURE
