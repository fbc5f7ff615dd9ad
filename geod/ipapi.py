"""ip-api.com batch client: the only code that talks to the network.

Every response is hostile until proven otherwise: the body size is capped, the shape checked and
each answer matched to its query by position and echo. Rate-limit pacing (`RateGovernor`) happens
before a request; tenacity retries after a failure. Neither ever sends a request in a tight loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import aiohttp
import structlog
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from geod import validate
from geod.config import Config, IpApiConfig
from geod.country_names import COMMON
from geod.netnum import parse_count
from geod.provider import Resources
from geod.ratelimit import (
    BAN_PAUSE,
    KEY_PAUSE,
    MAX_RETRY_AFTER,
    MAX_RL,
    MAX_TTL,
    UNBAN_URL,
    RateGovernor,
)
from geod.records import Geo, Lookup, Outcome

log = structlog.get_logger("geod.ipapi")

# Not `country`: the name comes from `country_names` (one per code, whichever provider answered).
# Not `org`: it names whoever registered the block (often an ISP's customer); geod's `org` is the
# AS holder, which `as` carries after the number, as IPinfo's `as_name` and MaxMind's ASN
# database do.
FIELDS = "status,message,query,countryCode,as"
MAX_BODY = 1 << 20  # 100 answers of the fields above are ~20 KiB; 1 MiB is generous
PERMANENT_FAILS = frozenset({"private range", "reserved range", "invalid query"})


class IpApiError(Exception):
    """A failed batch request, with whatever the server said about when to come back."""

    def __init__(
        self,
        reason: str,
        status: int | None = None,
        ttl: float | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.ttl = ttl
        self.retry_after = retry_after

    def __str__(self) -> str:
        where = f"HTTP {self.status}: " if self.status is not None else ""
        return f"{where}{self.reason}"


def is_retryable(error: BaseException) -> bool:
    """429, 5xx, timeouts and connection trouble are worth another attempt; nothing else is."""
    if isinstance(error, IpApiError):
        return error.status is not None and (error.status == 429 or error.status >= 500)
    return isinstance(error, asyncio.TimeoutError | aiohttp.ClientError)


class _wait_for_server:
    """tenacity wait: the server's own delay when it gave one, else exponential back-off."""

    def __init__(self) -> None:
        self._fallback = wait_exponential_jitter(initial=1, max=60, jitter=1)

    def __call__(self, state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        if isinstance(error, IpApiError):
            delay = error.ttl if error.ttl is not None else error.retry_after
            if delay is not None:
                return delay + 0.1  # past the reset, not on it (X-Ttl is whole seconds)
        return float(self._fallback(state))


class IpApiProvider:
    """The ip-api provider: one request at a time, paced by the shared `RateGovernor`."""

    name = "ip-api"
    metered = True  # every request spends the shared per-minute quota (`upkeep` asks last)

    def __init__(
        self,
        config: IpApiConfig,
        session: aiohttp.ClientSession,
        governor: RateGovernor,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        responses: Counter[str] | None = None,
        names: str = COMMON,
    ) -> None:
        """`responses` counts each request by HTTP status ("error": no answer), for metrics."""
        self.batch_size = config.batch_size
        self.names = names  # the `[resolve] country_names` style
        self._config = config
        self._session = session
        self._governor = governor
        self._sleep = sleep
        # Against a count limit, parallel requests buy nothing and make X-Rl bookkeeping racy.
        self._lock = asyncio.Lock()
        self.responses = responses if responses is not None else Counter()
        self._pause_logged = False  # `ipapi_paused` once per provider (a reload makes a new one)

    @classmethod
    def from_config(cls, config: Config, resources: Resources) -> IpApiProvider:
        """The provider `[ipapi]` describes, on the shared session and rate governor."""
        return cls(config.ipapi, resources.session, resources.governor, sleep=resources.sleep,
                   responses=resources.responses, names=config.resolve.country_names)

    async def resolve(self, addresses: Sequence[str]) -> list[Lookup]:
        """Resolve one batch; a batch whose attempts are used up comes back as FAILED lookups."""
        paused = self._governor.paused(self._key_id)
        if paused > 0:  # a ban or refused key, maybe from before a restart: no request, no noise
            reason = f"{self._governor.pause_reason}: not asking ip-api for {paused / 3600:.1f} h"
            if not self._pause_logged:
                self._pause_logged = True
                log.warning("ipapi_paused", reason=reason)
            return [Lookup(a, Outcome.FAILED, reason=reason, source=self.name) for a in addresses]
        async with self._lock:
            try:
                payload = await self._post_with_retries(addresses)
            except IpApiError as error:
                reason, error_type = str(error), type(error).__name__
            except (TimeoutError, aiohttp.ClientError) as error:
                reason, error_type = _describe(error), type(error).__name__
            else:
                return parse_batch(payload, addresses, source=self.name, names=self.names)
        log.warning("lookup_failed", reason=reason, error_type=error_type,
                    addresses=len(addresses))
        return [Lookup(a, Outcome.FAILED, reason=reason, source=self.name) for a in addresses]

    async def _post_with_retries(self, addresses: Sequence[str]) -> Any:
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._config.max_attempts),
            wait=_wait_for_server(),
            retry=retry_if_exception(is_retryable),
            sleep=self._sleep,
            before_sleep=self._log_retry,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                paused = self._governor.paused(self._key_id)
                if paused > 0:  # a ban or a refused key, maybe remembered from before a restart
                    raise IpApiError(f"{self._governor.pause_reason}: not asking ip-api for "
                                     f"another {paused / 3600:.1f} h")
                await self._governor.wait_turn()
                return await self._post(addresses)
        raise AssertionError("unreachable: tenacity reraises the last error")  # pragma: no cover

    async def _post(self, addresses: Sequence[str]) -> Any:
        params = {"fields": FIELDS}
        if self._config.key:
            params["key"] = self._config.key
        timeout = aiohttp.ClientTimeout(total=self._config.timeout)
        try:
            # Never follow a redirect: it would re-post the visitors' addresses to wherever
            # `Location` points (the free endpoint is plain HTTP; anyone on the path can answer).
            response = await self._session.post(
                self._config.url, json=list(addresses), params=params, timeout=timeout,
                allow_redirects=False)
        except (TimeoutError, aiohttp.ClientError):
            self.responses["error"] += 1
            raise
        self.responses[str(response.status)] += 1
        async with response:
            remaining = _header_int(response, "X-Rl", MAX_RL, clamp=True)
            ttl = _header_int(response, "X-Ttl", MAX_TTL)
            # A 429 or a 5xx did not use quota; any X-Rl drop around it was someone else's.
            served = response.status < 500 and response.status != 429
            if not (self._config.key and remaining is None and ttl is None):
                # (The pro service has no fixed limit and need not send the headers.)
                self._governor.observe(remaining, ttl, served=served)
            if response.status == 429:
                retry_after = _header_int(response, "Retry-After", MAX_RETRY_AFTER)
                if ttl is None or remaining is None:
                    self._governor.block_for(retry_after)
                raise IpApiError("rate limited", 429, ttl=ttl, retry_after=retry_after)
            if response.status in (401, 403):
                raise self._refused(response.status)
            if 300 <= response.status < 400:
                raise IpApiError("redirect not followed", response.status)
            if response.status != 200:
                raise IpApiError("unexpected status", response.status)
            if response.content_type != "application/json":
                raise IpApiError(f"unexpected content type {response.content_type[:40]!r}", 200)
            body = await _read_capped(response, MAX_BODY)
        try:
            return json.loads(body)
        except (ValueError, RecursionError):  # deep nesting ("[[[[...") recurses, 1 MiB or not
            raise IpApiError("malformed JSON in answer", 200) from None

    def _refused(self, status: int) -> IpApiError:
        """Record a refusal that waiting for the window will not cure; no retry, no loop.

        With a key it is the key (invalid or expired): paused until the key changes. Without,
        ip-api answers 403 to an address it banned, and only a person can undo that.
        """
        if self._config.key:
            self._governor.refuse("key refused", KEY_PAUSE, key=self._key_id)
            log.error("ipapi_key_refused", status=status, paused_h=KEY_PAUSE / 3600,
                      action="check [ipapi] key or key_file, then systemctl reload geod")
            return IpApiError("key refused: invalid or expired pro key", status)
        self._governor.refuse("banned", BAN_PAUSE)
        log.error("ipapi_banned", status=status, paused_h=BAN_PAUSE / 3600, unban=UNBAN_URL,
                  action="unban this host's address on the unban page; geod asks again "
                         "after the pause (delete its state file to ask sooner)")
        return IpApiError(f"forbidden: this address may be banned by ip-api (see {UNBAN_URL})",
                          status)

    @property
    def _key_id(self) -> str:
        """Which key a refusal was about, without keeping the key (the state file is on disk)."""
        key = self._config.key
        return hashlib.sha256(key.encode()).hexdigest()[:16] if key else ""

    def _log_retry(self, state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        if isinstance(error, IpApiError) and error.status == 429:
            log.warning("rate_limited", ttl=error.ttl, retry_after=error.retry_after,
                        attempt=state.attempt_number, wait_s=round(wait, 2))
        else:
            reason = str(error) if isinstance(error, IpApiError) else _describe(error)
            log.warning("request_retry", reason=reason, error_type=type(error).__name__,
                        attempt=state.attempt_number, wait_s=round(wait, 2))


def parse_batch(
    payload: Any, asked: Sequence[str], source: str = "ip-api", names: str = COMMON
) -> list[Lookup]:
    """Turn an untrusted batch answer into one Lookup per asked address.

    An answer of the wrong shape or length fails the whole batch: positions cannot be trusted.
    Each item must echo its query; any invalid value fails that item, never writes it.
    """
    if not isinstance(payload, list) or len(payload) != len(asked):
        got = f"{len(payload)} items" if isinstance(payload, list) else type(payload).__name__
        reason = f"answer has {got} for {len(asked)} asked"
        return [Lookup(a, Outcome.FAILED, reason=reason, source=source) for a in asked]
    pairs = zip(payload, asked, strict=True)
    return [_parse_item(item, address, source, names) for item, address in pairs]


def _parse_item(item: Any, address: str, source: str, names: str) -> Lookup:
    def failed(reason: str) -> Lookup:
        return Lookup(address, Outcome.FAILED, reason=reason, source=source)

    if not isinstance(item, dict):
        return failed("answer item is not an object")
    if item.get("query") != address:
        return failed("answer does not echo the query")
    status = item.get("status")
    if status == "fail":
        message = item.get("message")
        if isinstance(message, str) and message in PERMANENT_FAILS:
            return Lookup(address, Outcome.UNRESOLVABLE, reason=str(message), source=source)
        return failed("fail: " + (message[:60] if isinstance(message, str) else "no message"))
    if status != "success":
        return failed("answer has no valid status")
    code = validate.country_code(item.get("countryCode"))
    if code is None:  # junk, or a region ("EU") rather than a country
        return failed("answer has no valid country code")
    try:
        # `as` is empty for blocks not announced in BGP: then there is no AS, and no AS holder.
        asn, org = _as_holder(validate.plausible_text(item.get("as")))
    except ValueError as error:
        return failed(f"answer has an {error}")
    geo = Geo(code, validate.country_name(code, names), asn, org)
    return Lookup(address, Outcome.RESOLVED, geo=geo, source=source)


def _as_holder(as_field: str | None) -> tuple[str | None, str | None]:
    """(number, holder) from ip-api's `as` ("AS15169 Google LLC"); (None, None) when none.

    Raises:
        ValueError: it starts with "AS" but the number is invalid (never written).
    """
    parts = as_field.split(maxsplit=1) if as_field else []
    if not parts or parts[0][:2].upper() != "AS":
        return None, None
    holder = parts[1].strip() if len(parts) > 1 else ""
    return validate.asn(parts[0]), holder or None


async def _read_capped(response: aiohttp.ClientResponse, cap: int) -> bytes:
    if response.content_length is not None and response.content_length > cap:
        raise IpApiError(f"answer larger than {cap} bytes", 200)
    body = bytearray()
    async for chunk in response.content.iter_chunked(64 * 1024):
        body += chunk
        if len(body) > cap:
            raise IpApiError(f"answer larger than {cap} bytes", 200)
    return bytes(body)


def _header_int(response: aiohttp.ClientResponse, name: str, high: int,
                *, clamp: bool = False) -> int | None:
    """A rate header as the number ip-api can mean (0..high), or None: see `netnum`.

    `clamp`: a larger value means "at least high" (X-Rl); otherwise it is ignored (a wait).
    """
    if clamp:
        value = parse_count(response.headers.get(name), 10**9)
        return None if value is None else min(value, high)
    return parse_count(response.headers.get(name), high)


def _describe(error: BaseException | None) -> str:
    """A one-line reason for a network error, without URLs (they may carry the key)."""
    if isinstance(error, asyncio.TimeoutError):
        return "request timed out"
    if isinstance(error, aiohttp.ClientConnectorError):
        return f"cannot connect: {error.os_error.strerror or type(error.os_error).__name__}"
    if isinstance(error, aiohttp.ClientPayloadError):
        return "the answer was cut off or malformed"
    if isinstance(error, aiohttp.ServerDisconnectedError):
        return "the server closed the connection"
    if isinstance(error, aiohttp.ClientOSError) and error.strerror:
        return f"connection failed: {error.strerror}"
    if isinstance(error, aiohttp.ClientResponseError):
        return f"bad HTTP answer: {error.message}"[:200]
    # The class goes in its own field (error_type=); the reason stays words.
    return "network error" if error else "unknown error"
