"""The `mmdb` provider: a MaxMind DB file (GeoLite2/GeoIP2, DB-IP Lite, IPinfo Lite) on disk.

Reads the country layouts real files use, plus an optional ASN database for `asn`/`org`. Every
value from a file is checked like an ip-api answer; a record that fails the check is a MISS.
The file is re-opened when it changes on disk (geoipupdate replaces it atomically, so the old
mapping stays valid until then) and on SIGHUP; a file that will not open keeps the old reader.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import maxminddb
import structlog

from geod import validate
from geod.config import Config, MmdbConfig
from geod.country_names import COMMON
from geod.errors import ConfigError
from geod.provider import LOCAL_BATCH
from geod.records import Geo, Lookup, Outcome
from geod.safefile import UnreadableFile, require_regular
from geod.validate import country_code, country_name, plausible_text

log = structlog.get_logger("geod.mmdb")



class MmdbOpenError(Exception):
    """A database file that cannot be used; `str()` says which file and why."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"cannot open {path}: {reason}")
        self.path = path


@dataclass(frozen=True, slots=True)
class _Signature:
    """What changes when a file is replaced or rewritten; one stat() to compare."""

    device: int
    inode: int
    size: int
    mtime_ns: int


def _signature(path: str) -> _Signature | None:
    try:
        st = os.stat(path)
    except (OSError, ValueError):  # ValueError: a NUL in the path (config refuses those)
        return None
    return _Signature(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


@dataclass(frozen=True, slots=True)
class _Opened:
    """A reader whose metadata has been read and checked, and what geod needs from it."""

    reader: maxminddb.Reader
    ipv4_only: bool
    database_type: str
    built: str
    build_epoch: int


def _open_reader(path: str) -> _Opened:
    """Open and inspect one file; any failure on the way is an MmdbOpenError, never another.

    The file is hostile until proven otherwise: a FIFO would block the open, and the library
    raises whatever it meets (OverflowError on a build_epoch of 2**64-1, KeyError, ...).
    """
    try:
        require_regular(path)
    except UnreadableFile as error:
        raise MmdbOpenError(path, error.reason) from None
    try:
        reader = maxminddb.open_database(path, maxminddb.MODE_MMAP_EXT)
    except OSError as error:
        raise MmdbOpenError(path, str(error.strerror or error)) from None
    except Exception:  # noqa: BLE001 - InvalidDatabaseError, ValueError, and whatever else
        raise MmdbOpenError(path, "not a MaxMind DB file") from None
    try:
        return _inspect(reader)
    except Exception as error:  # noqa: BLE001 - the metadata is as hostile as the records
        reader.close()
        raise MmdbOpenError(path, f"unusable metadata: {error}") from None


def _inspect(reader: maxminddb.Reader) -> _Opened:
    """Read the metadata geod relies on. Raises: ValueError (or whatever the library raises)."""
    meta = reader.metadata()
    if meta.ip_version not in (4, 6):
        raise ValueError(f"ip_version must be 4 or 6, got {meta.ip_version!r}")
    if not isinstance(meta.database_type, str):
        raise ValueError("database_type is not text")
    try:
        built = datetime.fromtimestamp(meta.build_epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError, TypeError):
        raise ValueError(f"build_epoch {meta.build_epoch!r} is not a date") from None
    return _Opened(reader, meta.ip_version == 4, meta.database_type, built, int(meta.build_epoch))


class WatchedReader:
    """One open database file that follows replacements of the file at `path`."""

    def __init__(self, path: str) -> None:
        """Raises: MmdbOpenError."""
        self.path = path
        self._seen = _signature(path)  # stat before open: a replacement in between is re-read
        self._open = _open_reader(path)
        self._log_opened()

    def refresh(self, *, force: bool = False) -> None:
        """Re-open if the file changed since it was last looked at (or always, with `force`).

        A file that will not open is logged once per change and the reader in use is kept.
        """
        seen = _signature(self.path)
        if seen == self._seen and not force:
            return
        self._seen = seen
        try:
            opened = _open_reader(self.path)
        except MmdbOpenError as error:
            log.error("mmdb_reload_failed", path=self.path, reason=str(error),
                      action="kept_old_reader")
            return
        self._open.reader.close()
        self._open = opened
        self._log_opened()

    def get(self, address: str) -> Any:
        """The record for a normalised address, or None when the file has no data for it.

        Raises:
            Exception: whatever the library raises on a corrupt record (the caller confines it).
        """
        if self._open.ipv4_only and ":" in address:
            return None  # the reader raises ValueError for IPv6 in an IPv4-only file
        return self._open.reader.get(address)

    def close(self) -> None:
        self._open.reader.close()

    @property
    def build_epoch(self) -> int:
        """When the file in use was built (its metadata): tells one release from the next."""
        return self._open.build_epoch

    @property
    def database_type(self) -> str:
        return self._open.database_type

    def _log_opened(self) -> None:
        log.info("mmdb_opened", path=self.path, database_type=self._open.database_type,
                 built=self._open.built)


class MmdbProvider:
    """Country (and, with an ASN file or IPinfo Lite, asn/org) from MaxMind DB files."""

    name = "mmdb"
    batch_size = LOCAL_BATCH

    def __init__(
        self, country: WatchedReader, asn: WatchedReader | None = None, names: str = COMMON
    ) -> None:
        self.country = country
        self.asn = asn
        self.names = names  # the `[resolve] country_names` style; the file's own names are unused

    @classmethod
    def open(cls, config: MmdbConfig, names: str = COMMON) -> MmdbProvider:
        """Raises: MmdbOpenError for either file (nothing is left open)."""
        country = WatchedReader(config.path)
        try:
            asn = WatchedReader(config.asn_path) if config.asn_path else None
        except MmdbOpenError:
            country.close()
            raise
        return cls(country, asn, names)

    @classmethod
    def from_config(cls, config: Config, resources: object = None) -> MmdbProvider:
        """The provider `[mmdb]` describes. Raises: ConfigError naming the file's key."""
        try:
            return cls.open(config.mmdb, config.resolve.country_names)
        except MmdbOpenError as error:
            key = "mmdb.path" if error.path == config.mmdb.path else "mmdb.asn_path"
            raise ConfigError(config.source, key, str(error)) from None

    def reopen(self, config: Config) -> None:
        """SIGHUP: re-open the files at the reloaded paths; each is swapped only if it opens."""
        self.names = config.resolve.country_names
        self.country = _reopen(self.country, config.mmdb.path)
        asn_path = config.mmdb.asn_path
        if not asn_path:
            if self.asn is not None:
                self.asn.close()
            self.asn = None
        elif self.asn is None:
            try:
                self.asn = WatchedReader(asn_path)
            except MmdbOpenError as error:
                log.error("mmdb_reload_failed", path=asn_path, reason=str(error),
                          action="without_asn")
        else:
            self.asn = _reopen(self.asn, asn_path)

    @property
    def fields(self) -> frozenset[str]:
        """What answers can hold: asn/org with an ASN file or from IPinfo Lite's records."""
        if self.asn is not None or "ipinfo" in self.country.database_type.lower():
            return frozenset({"country_code", "country_name", "asn", "org"})
        return frozenset({"country_code", "country_name"})

    def stamp(self) -> str:
        """The `source` value for answers from the file now in place: "mmdb:<build epoch>".

        Rows whose stamp differs were answered by another build: `upkeep` re-checks them.
        """
        self.country.refresh()
        return f"{self.name}:{self.country.build_epoch}"

    async def resolve(self, addresses: Sequence[str]) -> list[Lookup]:
        """One Lookup per address: RESOLVED, or MISS when the file has no usable record."""
        # One stat() per call notices a replaced file within a chunk; look-ups are ~1 us each
        # from a memory map, cheaper than a hop to a thread would be.
        self.country.refresh()
        if self.asn is not None:
            self.asn.refresh()
        return [self._lookup(address) for address in addresses]

    def close(self) -> None:
        self.country.close()
        if self.asn is not None:
            self.asn.close()

    def _lookup(self, address: str) -> Lookup:
        # A corrupt record fails this one address (FAILED: the next provider is asked and the
        # pass goes on); an implausible but readable one is a MISS.
        try:
            record = self.country.get(address)
        except Exception as error:  # noqa: BLE001 - InvalidDatabaseError and whatever else
            return self._failed(address, self.country.path, error)
        try:
            geo = parse_country(record, self.names)
        except ValueError as error:
            return Lookup(address, Outcome.MISS, reason=str(error), source=self.name)
        if geo is None:
            return Lookup(address, Outcome.MISS, reason="not in database", source=self.name)
        if self.asn is not None and geo.asn is None:
            try:
                asn_record = self.asn.get(address)
            except Exception:  # noqa: BLE001 - a corrupt ASN record costs only asn/org
                asn_record = None
            asn, org = parse_asn(asn_record)
            if asn is not None:
                geo = Geo(geo.country_code, geo.country_name, asn, org)
        return Lookup(address, Outcome.RESOLVED, geo=geo, source=self.name)

    def _failed(self, address: str, path: str, error: Exception) -> Lookup:
        reason = f"corrupt record in {path}: {type(error).__name__}"
        log.warning("mmdb_record_unreadable", path=path, error=str(error)[:200])
        return Lookup(address, Outcome.FAILED, reason=reason, source=self.name)


def check_mmdb(config: Config) -> None:
    """Open and close the configured files (`geod check-config`). Raises: ConfigError."""
    MmdbProvider.from_config(config).close()


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


def parse_country(record: Any, names: str = COMMON) -> Geo | None:
    """The Geo in one record of any supported layout; None when it has no country.

    The name is `names`' one name for the code: the file's own (`names.en`, IPinfo's `country`)
    is not used, so a row reads the same whichever provider or vendor answered it.

    Raises:
        ValueError: the record has a country that fails validation (the record is not used).
    """
    if record is None:
        return None
    if not isinstance(record, dict):
        raise ValueError("record is not a map")
    if "country_code" in record:  # IPinfo Lite: flat strings, ASN included
        code = _code(record.get("country_code"))
        asn = _asn(record.get("asn"))
        org = plausible_text(record.get("as_name")) if asn else None
        return Geo(code, country_name(code, names), asn, org)
    # MaxMind GeoLite2/GeoIP2 Country and City, DB-IP Lite: where the address is, else where
    # its block is registered (anycast and some European ranges only have the latter).
    for key in ("country", "registered_country"):
        place = record.get(key)
        if isinstance(place, dict) and "iso_code" in place:
            code = _code(place.get("iso_code"))
            return Geo(code, country_name(code, names))
    return None


def parse_asn(record: Any) -> tuple[str | None, str | None]:
    """(asn, org) from a GeoLite2/GeoIP2 ASN record; (None, None) if absent or implausible."""
    if not isinstance(record, dict):
        return None, None
    try:
        asn = _asn(record.get("autonomous_system_number"))
        org = plausible_text(record.get("autonomous_system_organization"))
    except ValueError:
        return None, None
    return (asn, org) if asn else (None, None)


def _code(value: Any) -> str:
    code = country_code(value)
    if code is None:
        raise ValueError("record has no valid country code")
    return code


def _asn(value: Any) -> str | None:
    """'AS15169' from 15169 or 'AS15169'; None when absent. Raises ValueError when invalid."""
    try:
        return validate.asn(value)
    except ValueError:
        raise ValueError("record has an invalid AS number") from None
