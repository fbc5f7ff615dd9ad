"""A strict in-process stand-in for ip-api.com, following /work/shared/ip-api.md.

`FakeIpApi.app` serves POST /batch and GET /json/{ip} with deterministic answers, a fixed-window
rate limit shared by every tenant (X-Rl / X-Ttl, 429), permanent bans, FIFO fault injection and a
record of every request. It does not model the pro service (a `key` is only recorded) or real data.
As a process: `python -m tests.fake_ipapi --port 0 [--log FILE] [--fault SPEC ...]` prints
`listening http://HOST:PORT`; each `--fault` queues one fault (see `Fault.parse`).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import hashlib
import ipaddress
import json
import math
import signal
import sys
import time
from collections.abc import Callable
from typing import IO, NamedTuple

from aiohttp import web
from aiohttp.typedefs import Handler

TENANT_HEADER = "X-Tenant"  # who is asking; the quota is shared, this only attributes 429s
DEFAULT_TENANT = "geod"
JSON_LIMIT = 45  # GET /json/{ip} has its own window budget, as on ip-api.com
OVERSIZED_BYTES = 8 * 1024 * 1024 + 1024

# Field names in ip-api's response order, with the bit each has in the numeric `fields` mask.
FIELD_BITS: dict[str, int] = {
    "status": 1 << 14, "message": 1 << 15, "continent": 1 << 20, "continentCode": 1 << 21,
    "country": 1 << 0, "countryCode": 1 << 1, "region": 1 << 2, "regionName": 1 << 3,
    "city": 1 << 4, "district": 1 << 19, "zip": 1 << 5, "lat": 1 << 6, "lon": 1 << 7,
    "timezone": 1 << 8, "offset": 1 << 25, "currency": 1 << 23, "isp": 1 << 9, "org": 1 << 10,
    "as": 1 << 11, "asname": 1 << 22, "mobile": 1 << 16, "proxy": 1 << 17, "hosting": 1 << 24,
    "query": 1 << 13,
}  # fmt: skip
DEFAULT_FIELDS = frozenset(
    "status message country countryCode region regionName city zip lat lon timezone isp org as"
    " query".split()
)  # fmt: skip
# Private first, then anything else that is not globally routable is "reserved range".
_PRIVATE_NETS = tuple(
    ipaddress.ip_network(n)
    for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7")
)

# Kinds a Fault may have; which of them use quota is decided in FakeIpApi._answer.
FAULT_KINDS = frozenset(
    "status slow malformed short long wrong_query oversized non_json reset bad_country"
    " empty_country".split()
)  # fmt: skip


class _Place(NamedTuple):
    code: str
    country: str
    continent: str
    continent_code: str
    region: str
    region_name: str
    city: str
    zip: str
    lat: float
    lon: float
    timezone: str
    offset: int
    currency: str


PLACES = (
    _Place("US", "United States", "North America", "NA", "VA", "Virginia", "Ashburn", "20149",
           39.0438, -77.4874, "America/New_York", -18000, "USD"),
    _Place("DE", "Germany", "Europe", "EU", "HE", "Hesse", "Frankfurt am Main", "60313",
           50.1109, 8.6821, "Europe/Berlin", 3600, "EUR"),
    _Place("FR", "France", "Europe", "EU", "IDF", "Île-de-France", "Paris", "75001",
           48.8566, 2.3522, "Europe/Paris", 3600, "EUR"),
    _Place("GB", "United Kingdom", "Europe", "EU", "ENG", "England", "London", "EC1A",
           51.5072, -0.1276, "Europe/London", 0, "GBP"),
    _Place("JP", "Japan", "Asia", "AS", "13", "Tokyo", "Tokyo", "100-0001",
           35.6762, 139.6503, "Asia/Tokyo", 32400, "JPY"),
    _Place("BR", "Brazil", "South America", "SA", "SP", "São Paulo", "São Paulo", "01000-000",
           -23.5505, -46.6333, "America/Sao_Paulo", -10800, "BRL"),
    _Place("AU", "Australia", "Oceania", "OC", "NSW", "New South Wales", "Sydney", "2000",
           -33.8688, 151.2093, "Australia/Sydney", 36000, "AUD"),
    _Place("IN", "India", "Asia", "AS", "MH", "Maharashtra", "Mumbai", "400001",
           19.0760, 72.8777, "Asia/Kolkata", 19800, "INR"),
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Fault:
    """One injected misbehaviour for the next request; `delay` (real seconds) works for any kind."""

    kind: str
    status: int | None = None  # for kind="status"; None means 500
    delay: float = 0.0
    headers: bool = True  # kind="status": send X-Rl/X-Ttl

    @classmethod
    def parse(cls, spec: str) -> Fault:
        """`KIND[:STATUS][@DELAY][!]`: e.g. `slow@30`, `status:503`, `status:429!` (no headers).

        `slow@0` is a normal answer: queue it first to fault a later request, not the next one.
        """
        headers = not spec.endswith("!")
        spec = spec.rstrip("!")
        spec, _, delay = spec.partition("@")
        kind, _, status = spec.partition(":")
        return cls(kind, int(status) if status else None, float(delay or 0), headers)

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(
                f"unknown fault kind {self.kind!r}; expected one of {sorted(FAULT_KINDS)}"
            )


@dataclasses.dataclass(frozen=True)
class RecordedRequest:
    """What one request (or one `spend()` unit, method "SPEND") asked and what it was answered."""

    time: float
    tenant: str
    method: str
    path: str
    query: dict[str, str]
    ips: list[str]
    status: int
    fault: str | None


@dataclasses.dataclass
class _Window:
    """Fixed window: opens at the first request when none is open, lasts `length` seconds."""

    limit: int
    length: float
    start: float | None = None
    used: int = 0

    def roll(self, now: float) -> None:
        if self.start is None or now >= self.start + self.length:
            self.start, self.used = now, 0

    def take(self) -> bool:
        if self.used >= self.limit:
            return False
        self.used += 1
        return True

    def headers(self, now: float, *, throttled: bool = False) -> dict[str, str]:
        end = (now if self.start is None else self.start) + self.length
        remaining = 0 if throttled else self.limit - self.used
        return {"X-Rl": str(remaining), "X-Ttl": str(math.ceil(end - now))}


def classify(query: str) -> str | None:
    """Return ip-api's fail `message` for `query`, or None when it is a public IP."""
    try:
        addr: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(query)
    except ValueError:
        return "invalid query"
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    if addr.is_unspecified or addr.is_multicast:
        return "reserved range"
    if addr.is_loopback or addr.is_link_local or any(addr in net for net in _PRIVATE_NETS):
        return "private range"
    return None if addr.is_global else "reserved range"


def parse_fields(value: str) -> set[str]:
    """Parse `fields`: comma-separated names or ip-api's numeric mask; unknown names are dropped."""
    if value.isdigit():
        mask = int(value)
        return {name for name, bit in FIELD_BITS.items() if mask & bit}
    return {name.strip() for name in value.split(",") if name.strip() in FIELD_BITS}


def _ips_in(body: object) -> list[str]:
    """Best-effort list of the queries in a batch body, for the record (even a rejected one)."""
    if not isinstance(body, list):
        return []
    found = [
        e if isinstance(e, str) else e.get("query") if isinstance(e, dict) else None for e in body
    ]
    return [q for q in found if isinstance(q, str)]


_Answer = tuple[int, list[dict[str, object]] | str]  # (status, rows or error text)


def _tenant(request: web.Request) -> str:
    return request.headers.get(TENANT_HEADER, DEFAULT_TENANT)


def _recorded(
    request: web.Request, now: float, ips: list[str], status: int, fault: str | None,
    tenant: str | None = None,
) -> RecordedRequest:
    tenant, query = tenant or _tenant(request), dict(request.query)
    return RecordedRequest(now, tenant, request.method, request.path, query, ips, status, fault)


class FakeIpApi:
    """The fake server: build one per test and hand `app` to `aiohttp_client` or an AppRunner."""

    def __init__(
        self,
        *,
        limit: int = 15,
        window: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        ban_after: int = 30,
        max_items: int = 100,
        json_limit: int = JSON_LIMIT,
        keys: frozenset[str] | None = None,
        per_client: bool = False,
    ) -> None:
        """`per_client`: one quota (and ban) per client address, as ip-api.com keys them, and
        a request without X-Tenant is attributed to its address; otherwise one shared quota."""
        self.max_items = max_items
        # The pro service: when set, a request whose `key` is not one of these is refused with
        # 403 (ip-api.md does not say how a bad key is refused; geod treats 401 and 403 alike).
        self.keys = keys
        # Rewrites the rate headers of every answer: what anyone on the plain-HTTP path can do.
        self.tamper: Callable[[dict[str, str]], dict[str, str]] | None = None
        self.ban_after = ban_after
        self.faults: collections.deque[Fault] = collections.deque()
        self.requests: list[RecordedRequest] = []
        self.banned: set[str] = set()
        self.on_record: Callable[[RecordedRequest], None] | None = None  # e.g. the --log writer
        self._clock = clock
        self._batch_window = _Window(limit, window)
        self._json_window = _Window(json_limit, window)
        self.per_client = per_client
        self._client_windows: dict[tuple[str, str], _Window] = {}
        self._throttled: collections.Counter[str] = collections.Counter()
        self.app = web.Application(middlewares=[self._record_unrouted])
        self.app.router.add_post("/batch", self._batch)
        self.app.router.add_get("/json/{ip}", self._json)

    def answer_for(self, ip: str, fields: set[str] | None) -> dict[str, object]:
        """The row ip-api would return for `ip` asking `fields` (None = ip-api's default set)."""
        wanted = DEFAULT_FIELDS if fields is None else fields
        message = classify(ip)
        if message is not None:
            full: dict[str, object] = {"status": "fail", "message": message, "query": ip}
            return {k: v for k, v in full.items() if k != "query" or "query" in wanted}
        digest = hashlib.sha256(str(ipaddress.ip_address(ip)).encode()).digest()
        n = int.from_bytes(digest[:8], "big")
        p = PLACES[n % len(PLACES)]
        asn = 1000 + (n >> 8) % 64000
        data: dict[str, object] = {
            "continent": p.continent, "continentCode": p.continent_code, "country": p.country,
            "countryCode": p.code, "region": p.region, "regionName": p.region_name, "city": p.city,
            "district": "", "zip": p.zip, "lat": p.lat, "lon": p.lon, "timezone": p.timezone,
            "offset": p.offset, "currency": p.currency, "isp": f"Example Net {asn}",
            "org": f"Org {(n >> 24) % 10000}", "as": f"AS{asn} Example Net",
            "asname": f"EXAMPLE-NET-{asn}", "mobile": bool(digest[8] & 1),
            "proxy": bool(digest[8] & 2), "hosting": bool(digest[8] & 4), "query": ip,
        }  # fmt: skip
        row: dict[str, object] = {"status": "success"}
        row.update((k, v) for k, v in data.items() if k in wanted)
        return row

    def spend(self, n: int = 1, tenant: str = "other") -> list[int]:
        """Use `n` requests of the shared batch quota without HTTP.

        Returns the status each would have got: 200, 429, or 403 once `tenant` is banned.
        """
        codes = []
        for _ in range(n):
            now = self._clock()
            if tenant in self.banned:
                status = 403
            else:
                self._batch_window.roll(now)
                status = 200 if self._batch_window.take() else 429
                if status == 429:
                    self._note_429(tenant)
            self._record(RecordedRequest(now, tenant, "SPEND", "/batch", {}, [], status, None))
            codes.append(status)
        return codes

    def sent_ips(self, tenant: str = DEFAULT_TENANT) -> list[str]:
        """Every query `tenant` sent in POST /batch bodies, in order, throttled ones included."""
        return [
            ip
            for r in self.requests
            if r.tenant == tenant and r.method == "POST" and r.path == "/batch"
            for ip in r.ips
        ]

    def count_429(self, tenant: str | None = None) -> int:
        """How many 429s were answered, to `tenant` or to everyone."""
        return sum(1 for r in self.requests if r.status == 429 and tenant in (None, r.tenant))

    # -- internals ------------------------------------------------------------------------------

    def _record(self, rec: RecordedRequest) -> None:
        # Called once the answer is decided, before any fault delay: records stay in arrival order.
        self.requests.append(rec)
        if self.on_record is not None:
            self.on_record(rec)

    def _note_429(self, tenant: str) -> None:
        self._throttled[tenant] += 1
        if self._throttled[tenant] >= self.ban_after:
            self.banned.add(tenant)

    @web.middleware
    async def _record_unrouted(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        # 404/405 never reach a handler; record them anyway (they use no quota and no fault).
        exc = request.match_info.http_exception
        if exc is not None:
            self._record(_recorded(request, self._clock(), [], exc.status, None))
            raise exc
        return await handler(request)

    async def _batch(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body: object = json.loads(raw)
        except ValueError:
            body = None
        default = parse_fields(request.query["fields"]) if "fields" in request.query else None

        def answer() -> _Answer:
            if not isinstance(body, list):
                return 400, "body must be a JSON array"
            if len(body) > self.max_items:
                return 422, f"too many items: {len(body)} > {self.max_items}"
            rows = []
            for i, entry in enumerate(body):
                if isinstance(entry, str):
                    rows.append(self.answer_for(entry, default))
                    continue
                ok = isinstance(entry, dict) and isinstance(entry.get("query"), str)
                ok = ok and all(isinstance(entry.get(k, ""), str) for k in ("fields", "lang"))
                if not ok:
                    return 400, f'item {i}: not an IP string nor an object with a string "query"'
                fields = parse_fields(entry["fields"]) if "fields" in entry else default
                rows.append(self.answer_for(entry["query"], fields))
            return 200, rows

        window = self._window_of(request, "batch", self._batch_window)
        return await self._handle(request, window, _ips_in(body), answer, default)

    async def _json(self, request: web.Request) -> web.StreamResponse:
        ip = request.match_info["ip"]
        fields = parse_fields(request.query["fields"]) if "fields" in request.query else None

        def answer() -> _Answer:
            return 200, [self.answer_for(ip, fields)]

        window = self._window_of(request, "json", self._json_window)
        return await self._handle(request, window, [ip], answer, fields, single=True)

    def _window_of(self, request: web.Request, kind: str, shared: _Window) -> _Window:
        if not self.per_client:
            return shared
        key = (request.remote or "", kind)
        if key not in self._client_windows:
            self._client_windows[key] = _Window(shared.limit, shared.length)
        return self._client_windows[key]

    def _who(self, request: web.Request) -> str:
        if self.per_client and TENANT_HEADER not in request.headers:
            return request.remote or DEFAULT_TENANT
        return _tenant(request)

    async def _handle(
        self,
        request: web.Request,
        window: _Window,
        ips: list[str],
        answer: Callable[[], _Answer],
        fields: set[str] | None,
        *,
        single: bool = False,
    ) -> web.StreamResponse:
        tenant, now = self._who(request), self._clock()

        def record(status: int, fault: str | None) -> None:
            self._record(_recorded(request, now, ips, status, fault, tenant))

        # A ban is checked before anything else: it uses no quota and consumes no fault.
        if tenant in self.banned:
            record(403, None)
            return web.Response(status=403, text="banned: over the rate limit too often")
        if self.keys is not None and request.query.get("key") not in self.keys:
            record(403, None)
            return web.Response(status=403, text="invalid key")
        window.roll(now)
        fault = self.faults.popleft() if self.faults else None
        response = self._answer(tenant, now, window, fault, answer, fields, single, record)
        if response is not None and self.tamper is not None:
            rate = {k: v for k, v in response.headers.items() if k in ("X-Rl", "X-Ttl")}
            for name in rate:
                del response.headers[name]
            response.headers.update(self.tamper(rate))
        if fault is not None and fault.delay > 0:
            # Real time, decided and recorded first: a server slower than the client's timeout.
            await asyncio.sleep(fault.delay)
        if response is None:
            return await self._reset(request, window.headers(now))
        return response

    def _answer(
        self,
        tenant: str,
        now: float,
        window: _Window,
        fault: Fault | None,
        answer: Callable[[], _Answer],
        fields: set[str] | None,
        single: bool,
        record: Callable[[int, str | None], None],
    ) -> web.Response | None:
        """Decide and record the answer; None means "reset the connection"."""
        kind = fault.kind if fault is not None else None
        # "status" and "reset" faults model failures in front of ip-api: they use no quota.
        if fault is not None and fault.kind == "status":
            status = fault.status if fault.status is not None else 500
            if status == 429:
                self._note_429(tenant)
            throttled = status == 429
            headers = window.headers(now, throttled=throttled) if fault.headers else {}
            if 300 <= status < 400:  # a redirect elsewhere, as a hijacked path might send
                headers["Location"] = "/elsewhere"
            record(status, kind)
            text = f"{status} injected fault"
            return web.Response(status=status, text=text, headers=headers)
        if kind == "reset":
            record(200, kind)
            return None
        # Throttled requests use no quota but count towards the tenant's ban.
        # A queued fault is still consumed (recorded with status 429).
        if not window.take():
            self._note_429(tenant)
            record(429, kind)
            headers = window.headers(now, throttled=True)
            return web.Response(status=429, text="too many requests", headers=headers)
        # Every other answer, 400 and 422 included, used one request of the quota.
        headers = window.headers(now)
        status, payload = answer()
        json_type = "application/json"
        if isinstance(payload, str):
            response = web.Response(status=status, text=payload, headers=headers)
        elif kind == "malformed":
            broken = b'[{"status": "success", "query": '
            response = web.Response(body=broken, content_type=json_type, headers=headers)
        elif kind == "non_json":
            html = "<html><body><h1>Service temporarily unavailable</h1></body></html>"
            response = web.Response(text=html, content_type="text/html", headers=headers)
        else:
            self._mutate_rows(kind, payload, fields)
            body: object = (payload[0] if payload else {}) if single else payload
            response = web.json_response(body, status=status, headers=headers)
        record(response.status, kind)
        return response

    def _mutate_rows(
        self, kind: str | None, rows: list[dict[str, object]], fields: set[str] | None
    ) -> None:
        if kind == "short" and rows:
            rows.pop()
        elif kind == "long":
            rows.append(self.answer_for("9.9.9.9", fields))
        elif kind == "wrong_query" and rows:
            echoed = {r.get("query") for r in rows}
            candidates = (f"8.8.4.{i}" for i in range(1, 256))  # public, and more than a batch
            rows[0]["query"] = next(ip for ip in candidates if ip not in echoed)
        elif kind == "oversized":  # still valid JSON, just huge: a padded row goes first
            rows.insert(0, {"status": "success", "query": "8.8.8.8", "isp": "x" * OVERSIZED_BYTES})
        elif kind in ("bad_country", "empty_country"):
            first = next((r for r in rows if r["status"] == "success"), None)
            if first is not None:
                first["countryCode"] = "U$A" if kind == "bad_country" else ""

    async def _reset(self, request: web.Request, headers: dict[str, str]) -> web.StreamResponse:
        # Promise a longer body than we send, then drop the connection: a client payload error.
        response = web.StreamResponse(headers=headers)
        response.content_type = "application/json"
        response.content_length = 4096
        await response.prepare(request)
        await response.write(b'[{"status": "success", "query": "8.8.')
        if request.transport is not None:
            request.transport.close()
        return response


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tests.fake_ipapi", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (default)")
    parser.add_argument("--limit", type=int, default=15, help="batch requests per window")
    parser.add_argument("--window", type=float, default=60.0, help="window length, seconds")
    parser.add_argument("--ban-after", type=int, default=30, help="429s before a tenant is banned")
    parser.add_argument("--max-items", type=int, default=100, help="batch items before 422")
    parser.add_argument("--per-client", action="store_true",
                        help="one quota per client address (ip-api.com's keying)")
    parser.add_argument("--log", help="append one JSON line per recorded request to this file")
    parser.add_argument("--fault", action="append", default=[], type=Fault.parse,
                        metavar="KIND[:STATUS][@DELAY][!]",
                        help="queue a fault for the next request (repeat for later ones)")
    return parser


async def _serve(fake: FakeIpApi, host: str, port: int) -> int:
    runner = web.AppRunner(fake.app, shutdown_timeout=1.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        bound = runner.addresses[0][1]
        print(f"listening http://{f'[{host}]' if ':' in host else host}:{bound}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the fake on a real socket with the monotonic clock until SIGTERM/SIGINT; returns 0."""
    args = _parser().parse_args(argv)
    fake = FakeIpApi(
        limit=args.limit, window=args.window, ban_after=args.ban_after, max_items=args.max_items,
        per_client=args.per_client,
    )
    fake.faults.extend(args.fault)
    if args.log is None:
        return asyncio.run(_serve(fake, args.host, args.port))
    with open(args.log, "a", encoding="utf-8") as log:

        def write(rec: RecordedRequest, log: IO[str] = log) -> None:
            log.write(json.dumps(dataclasses.asdict(rec)) + "\n")
            log.flush()

        fake.on_record = write
        return asyncio.run(_serve(fake, args.host, args.port))


if __name__ == "__main__":
    sys.exit(main())
