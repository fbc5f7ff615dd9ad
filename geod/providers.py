"""Build the configured provider chain and own what it holds open (the mmdb readers).

The daemon calls `open_providers` at start-up (a file that will not open is a `ConfigError`,
exit 78), `reload_providers` on SIGHUP (never raises: a bad file is logged and the old reader
kept) and `ProviderSet.close` on shutdown. The ip-api client comes from a factory the daemon
passes in, so nothing here can reach the rate governor: local providers are never paced by it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import structlog

from geod.config import Config
from geod.errors import ConfigError
from geod.mmdb import MmdbOpenError, MmdbProvider, WatchedReader
from geod.provider import Provider
from geod.rir import RirProvider

log = structlog.get_logger("geod.providers")

MakeIpApi = Callable[[], Provider]


class ProviderSet:
    """The chain in config order, plus the one provider that needs closing."""

    def __init__(self, chain: Sequence[Provider], mmdb: MmdbProvider | None = None) -> None:
        self.chain: tuple[Provider, ...] = tuple(chain)
        self.mmdb = mmdb

    def get(self, name: str) -> Provider | None:
        """The provider called `name` in the chain, if any."""
        return next((provider for provider in self.chain if provider.name == name), None)

    def close(self) -> None:
        if self.mmdb is not None:
            self.mmdb.close()
            self.mmdb = None


def open_providers(config: Config, make_ipapi: MakeIpApi) -> ProviderSet:
    """The chain `[resolve] providers` names, every file opened and checked.

    Raises:
        ConfigError: an mmdb file is missing, unreadable or not a MaxMind DB (names the key).
    """
    mmdb = _open_mmdb(config) if "mmdb" in config.resolve.providers else None
    return _assemble(config, make_ipapi, mmdb)


def reload_providers(old: ProviderSet, config: Config, make_ipapi: MakeIpApi) -> ProviderSet:
    """The chain for a reloaded config, re-opening mmdb files; never raises.

    A file that will not open is logged (`mmdb_reload_failed`) and the reader already open is
    kept; with no reader to keep, the chain goes on without `mmdb` until the next reload.
    """
    mmdb = old.mmdb
    if "mmdb" not in config.resolve.providers:
        old.close()
        mmdb = None
    elif mmdb is None:
        try:
            mmdb = _open_mmdb(config)
        except ConfigError as error:
            log.error("mmdb_reload_failed", path=config.mmdb.path, reason=error.reason,
                      action="left_out_of_chain")
    else:
        _reconfigure(mmdb, config)
    return _assemble(config, make_ipapi, mmdb)


def check_files(config: Config) -> None:
    """Open and close the configured files (`geod check-config`). Raises: ConfigError."""
    if "mmdb" in config.resolve.providers:
        _open_mmdb(config).close()


def _assemble(config: Config, make_ipapi: MakeIpApi, mmdb: MmdbProvider | None) -> ProviderSet:
    chain: list[Provider] = []
    for name in config.resolve.providers:
        if name == "ip-api":
            chain.append(make_ipapi())
        elif name == "rir":
            chain.append(RirProvider())
        elif name == "mmdb" and mmdb is not None:
            chain.append(mmdb)
    return ProviderSet(chain, mmdb)


def _open_mmdb(config: Config) -> MmdbProvider:
    try:
        return MmdbProvider.open(config.mmdb)
    except MmdbOpenError as error:
        key = "mmdb.path" if error.path == config.mmdb.path else "mmdb.asn_path"
        raise ConfigError(config.source, key, str(error)) from None


def _reconfigure(mmdb: MmdbProvider, config: Config) -> None:
    """Point an open provider at the reloaded paths; each reader is swapped only if it opens."""
    mmdb.country = _reopen(mmdb.country, config.mmdb.path)
    if not config.mmdb.asn_path:
        if mmdb.asn is not None:
            mmdb.asn.close()
        mmdb.asn = None
    elif mmdb.asn is None:
        try:
            mmdb.asn = WatchedReader(config.mmdb.asn_path)
        except MmdbOpenError as error:
            log.error("mmdb_reload_failed", path=config.mmdb.asn_path, reason=str(error),
                      action="without_asn")
    else:
        mmdb.asn = _reopen(mmdb.asn, config.mmdb.asn_path)


def _reopen(reader: WatchedReader, path: str) -> WatchedReader:
    """SIGHUP: re-open the same path in place, or switch to a new one if it opens."""
    if path == reader.path:
        reader.refresh(force=True)
        return reader
    try:
        fresh = WatchedReader(path)
    except MmdbOpenError as error:
        log.error("mmdb_reload_failed", path=path, reason=str(error), action="kept_old_reader")
        return reader
    reader.close()
    return fresh
