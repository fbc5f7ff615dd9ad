"""The provider chain: a name -> factory table, and the chain's open, reload and close.

Each provider module builds itself from the config and the shared `Resources` (`from_config`)
and owns its own lifecycle: `close()` if it holds something open, `reopen(config)` if SIGHUP
should re-read its files (it never raises; a bad file is logged and the old one kept). Adding a
provider is one module and one line in `FACTORIES` (plus its name in `config.PROVIDERS`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import structlog

from geod.config import Config
from geod.errors import ConfigError
from geod.ipapi import IpApiProvider
from geod.mmdb import MmdbProvider, check_mmdb
from geod.provider import Provider, Resources
from geod.rir import RirProvider

log = structlog.get_logger("geod.chain")


Factory = Callable[[Config, Resources], Provider]  # raises ConfigError (names the key)

# config.PROVIDERS lists the same names (config cannot import this: the providers import
# config); test_chain checks the two agree.
FACTORIES: dict[str, Factory] = {
    IpApiProvider.name: IpApiProvider.from_config,
    MmdbProvider.name: MmdbProvider.from_config,
    RirProvider.name: RirProvider.from_config,
}
# Providers whose files `geod check-config` opens and closes.
CHECKS: dict[str, Callable[[Config], None]] = {MmdbProvider.name: check_mmdb}


class Chain:
    """The providers `[resolve] providers` names, in that order."""

    def __init__(self, providers: Sequence[Provider]) -> None:
        self.providers: tuple[Provider, ...] = tuple(providers)

    @classmethod
    def open(cls, config: Config, resources: Resources) -> Chain:
        """Build every configured provider. Raises: ConfigError (a file will not open)."""
        built: list[Provider] = []
        try:
            for name in config.resolve.providers:
                built.append(FACTORIES[name](config, resources))
        except BaseException:
            Chain(built).close()
            raise
        return cls(built)

    def reload(self, config: Config, resources: Resources) -> Chain:
        """The chain for a reloaded config; never raises.

        A provider that can `reopen` is kept and re-reads its files; the others are built
        afresh. One that will not build is logged and left out until the next reload.
        """
        old = {provider.name: provider for provider in self.providers}
        chain: list[Provider] = []
        for name in config.resolve.providers:
            provider = old.pop(name, None)
            if provider is not None and hasattr(provider, "reopen"):
                provider.reopen(config)
                chain.append(provider)
                continue
            _close(provider)
            try:
                chain.append(FACTORIES[name](config, resources))
            except ConfigError as error:
                log.error(f"{name.replace('-', '_')}_reload_failed", path=_value(config, error.key),
                          reason=error.reason, action="left_out_of_chain")
        Chain(list(old.values())).close()
        return Chain(chain)

    def close(self) -> None:
        for provider in self.providers:
            _close(provider)


def check_files(config: Config) -> None:
    """Open and close the configured files (`geod check-config`). Raises: ConfigError."""
    for name in config.resolve.providers:
        if name in CHECKS:
            CHECKS[name](config)


def _close(provider: Provider | None) -> None:
    close: Callable[[], None] | None = getattr(provider, "close", None)
    if close is not None:
        close()


def _value(config: Config, key: str) -> str:
    """The value of a dotted key ("mmdb.path") in `config`, for a log line."""
    value: Any = config
    for part in key.split("."):
        value = getattr(value, part, "")
    return str(value)
