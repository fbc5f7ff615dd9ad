"""IpApiProvider against the fake ip-api server: requests, validation, pacing, retries."""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from hypothesis import given, settings
from hypothesis import strategies as st

from geod import __version__
from geod.config import IpApiConfig
from geod.ipapi import FIELDS, IpApiError, IpApiProvider, is_retryable, parse_batch
from geod.provider import make_session
from geod.ratelimit import RateGovernor
from geod.records import Geo, Outcome
from geod.validate import country_name
from tests.conftest import FakeClock, Logs, events
from tests.fake_ipapi import FakeIpApi, Fault

PUBLIC = [f"8.8.{i}.{i}" for i in range(1, 6)]


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with make_session() as s:
        yield s


ServerFactory = Callable[..., Coroutine[Any, Any, tuple[FakeIpApi, IpApiProvider]]]


@pytest.fixture
def fake_ipapi(
    aiohttp_server: Any, session: aiohttp.ClientSession, fake_clock: FakeClock
) -> ServerFactory:
    """fake_ipapi(limit=, window=, **client config) -> (server state, client wired to it)."""

    async def start(limit: int = 15, window: float = 60.0, max_items: int = 100,
                    ban_after: int = 30, **settings: Any) -> tuple[FakeIpApi, IpApiProvider]:
        fake = FakeIpApi(limit=limit, window=window, clock=fake_clock, max_items=max_items,
                         ban_after=ban_after)
        server: TestServer = await aiohttp_server(fake.app)
        config = IpApiConfig(url=str(server.make_url("/batch")), **settings)
        governor = RateGovernor(config.reserve, fake_clock, fake_clock.sleep,
                                share=config.share == "auto")
        return fake, IpApiProvider(config, session, governor, sleep=fake_clock.sleep)

    return start


async def test_resolves_a_batch_with_the_servers_data(fake_ipapi: ServerFactory) -> None:
    """Each address gets the server's country and AS, geod's name for the code, the AS holder."""
    fake, client = await fake_ipapi()
    lookups = await client.resolve(PUBLIC)
    assert [lookup.address for lookup in lookups] == PUBLIC
    for lookup in lookups:
        answer = fake.answer_for(lookup.address, None)
        assert lookup.outcome is Outcome.RESOLVED and lookup.geo is not None
        assert lookup.geo.country_code == answer["countryCode"]
        assert lookup.geo.country_name == country_name(str(answer["countryCode"]))
        assert lookup.geo.org == str(answer["as"]).split(maxsplit=1)[1] != answer["org"]
        assert lookup.geo.asn == str(answer["as"]).split()[0]


async def test_request_shape(fake_ipapi: ServerFactory) -> None:
    """POST, only the stored fields, the key as a query parameter, one request per batch."""
    fake, client = await fake_ipapi(key="s3cret")
    await client.resolve(PUBLIC)
    [request] = fake.requests
    assert request.method == "POST"
    assert request.query == {"fields": FIELDS, "key": "s3cret"}
    assert request.ips == PUBLIC


async def test_user_agent(aiohttp_server: Any) -> None:
    """Requests carry User-Agent geod/<version>."""
    seen: list[str] = []

    async def handler(request: aiohttp.web.Request) -> aiohttp.web.Response:
        seen.append(request.headers["User-Agent"])
        return aiohttp.web.json_response([])

    app = aiohttp.web.Application()
    app.router.add_post("/batch", handler)
    server = await aiohttp_server(app)
    async with make_session() as session:
        await session.post(server.make_url("/batch"), json=[])
    assert seen == [f"geod/{__version__}"]


async def test_paces_on_x_rl_and_never_sees_429(fake_ipapi: ServerFactory,
                                                 fake_clock: FakeClock) -> None:
    """share=off: 3 requests per window, 8 batches burst then wait out each window, no 429."""
    fake, client = await fake_ipapi(limit=3, window=60, batch_size=1, share="off")
    for address in PUBLIC + ["9.9.9.9", "1.1.1.1", "4.4.4.4"]:
        [lookup] = await client.resolve([address])
        assert lookup.outcome is Outcome.RESOLVED
    assert fake.count_429() == 0
    assert len(fake.requests) == 8
    assert [round(s) for s in fake_clock.sleeps] == [60, 60]  # two windows waited out


async def test_reserve_leaves_requests_for_others(fake_ipapi: ServerFactory,
                                                  fake_clock: FakeClock) -> None:
    """With reserve=2 geod stops at X-Rl 2 and the other program's requests still succeed."""
    fake, client = await fake_ipapi(limit=5, window=60, reserve=2, share="off")
    for address in PUBLIC[:3]:
        await client.resolve([address])
    assert fake_clock.sleeps == []
    assert fake.spend(2, tenant="dashboard") == [200, 200]
    await client.resolve([PUBLIC[3]])  # must wait for the window: the reserve is used up
    assert len(fake_clock.sleeps) == 1
    assert fake.count_429() == 0


async def test_429_waits_x_ttl_then_retries(fake_ipapi: ServerFactory, fake_clock: FakeClock,
                                            logs: Logs) -> None:
    """A 429 is logged as rate_limited (warning), waited out for X-Ttl, then retried."""
    fake, client = await fake_ipapi(limit=15, window=60)
    fake.spend(15, tenant="dashboard")  # the app used the whole window
    [lookup] = await client.resolve([PUBLIC[0]])
    assert lookup.outcome is Outcome.RESOLVED
    assert fake.count_429("geod") == 1
    [event] = events(logs, "rate_limited")
    assert event["log_level"] == "warning" and event["ttl"] == 60
    assert fake_clock.sleeps[0] >= 60


async def test_429_without_headers_waits_a_whole_window(fake_ipapi: ServerFactory,
                                                        fake_clock: FakeClock) -> None:
    """429s without X-Rl/X-Ttl/Retry-After are each followed by a full window's wait (#10.13)."""
    fake, client = await fake_ipapi(max_attempts=4)
    fake.faults.extend([Fault("status", status=429, headers=False)] * 3)
    [lookup] = await client.resolve([PUBLIC[0]])
    assert lookup.outcome is Outcome.RESOLVED
    times = [r.time for r in fake.requests]
    assert len(times) == 4
    assert all(b - a >= 60 for a, b in itertools.pairwise(times))


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_server_errors_are_retried(fake_ipapi: ServerFactory, status: int) -> None:
    """5xx answers are retried and the batch still resolves."""
    fake, client = await fake_ipapi()
    fake.faults.append(Fault("status", status=status))
    [lookup] = await client.resolve([PUBLIC[0]])
    assert lookup.outcome is Outcome.RESOLVED
    assert [r.status for r in fake.requests] == [status, 200]


async def test_attempts_used_up_fail_the_batch(fake_ipapi: ServerFactory, logs: Logs) -> None:
    """After max_attempts failures every address of the batch is FAILED and a warning says why."""
    fake, client = await fake_ipapi(max_attempts=3)
    fake.faults.extend([Fault("status", status=503)] * 3)
    lookups = await client.resolve(PUBLIC[:2])
    assert [lookup.outcome for lookup in lookups] == [Outcome.FAILED] * 2
    assert len(fake.requests) == 3
    [event] = events(logs, "lookup_failed")
    assert event["log_level"] == "warning" and "503" in event["reason"]


async def test_422_is_not_retried(fake_ipapi: ServerFactory) -> None:
    """A 422 (too many items) is a bug, not a transient error: one request, batch failed."""
    fake, client = await fake_ipapi(max_items=3)
    lookups = await client.resolve(PUBLIC)
    assert {lookup.outcome for lookup in lookups} == {Outcome.FAILED}
    assert [r.status for r in fake.requests] == [422]


@pytest.mark.parametrize(
    ("kind", "failed"),
    [
        ("malformed", {0, 1, 2}),
        ("non_json", {0, 1, 2}),
        ("oversized", {0, 1, 2}),
        ("short", {0, 1, 2}),
        ("long", {0, 1, 2}),
        ("wrong_query", {0}),
        ("bad_country", {0}),
        ("empty_country", {0}),
    ],
)
async def test_bad_answers_are_never_resolved(fake_ipapi: ServerFactory, kind: str,
                                              failed: set[int]) -> None:
    """A malformed answer fails the affected look-ups (without retrying) and nothing else."""
    fake, client = await fake_ipapi()
    fake.faults.append(Fault(kind))
    lookups = await client.resolve(PUBLIC[:3])
    assert {i for i, lookup in enumerate(lookups) if lookup.outcome is Outcome.FAILED} == failed
    assert all(lookup.geo is None for lookup in lookups if lookup.outcome is Outcome.FAILED)
    assert len(fake.requests) == 1


async def test_timeout_is_retried(fake_ipapi: ServerFactory) -> None:
    """An answer slower than `timeout` is abandoned and retried."""
    fake, client = await fake_ipapi(timeout=0.1, max_attempts=2)
    fake.faults.append(Fault("slow", delay=0.5))
    [lookup] = await client.resolve([PUBLIC[0]])
    assert lookup.outcome is Outcome.RESOLVED
    assert len(fake.requests) >= 1


async def test_connection_reset_is_retried(fake_ipapi: ServerFactory) -> None:
    """A connection closed mid-body is retried."""
    fake, client = await fake_ipapi()
    fake.faults.append(Fault("reset"))
    [lookup] = await client.resolve([PUBLIC[0]])
    assert lookup.outcome is Outcome.RESOLVED
    assert len(fake.requests) == 2


async def test_connection_refused_fails_the_batch(session: aiohttp.ClientSession,
                                                  fake_clock: FakeClock, logs: Logs) -> None:
    """Nobody listening: retried, then FAILED with a reason that has no URL in it."""
    config = IpApiConfig(url="http://127.0.0.1:9/batch", key="s3cret", max_attempts=2)
    client = IpApiProvider(config, session, RateGovernor(0, fake_clock, fake_clock.sleep),
                         sleep=fake_clock.sleep)
    [lookup] = await client.resolve([PUBLIC[0]])
    assert lookup.outcome is Outcome.FAILED
    assert "cannot connect" in lookup.reason
    assert "s3cret" not in json.dumps([dict(e) for e in logs], default=str)


async def test_fail_messages(fake_ipapi: ServerFactory) -> None:
    """'private range' / 'reserved range' / 'invalid query' answers are UNRESOLVABLE."""
    _, client = await fake_ipapi()
    lookups = await client.resolve(["10.0.0.1", "240.0.0.1", "8.8.8.8"])
    assert [lookup.outcome for lookup in lookups] == [
        Outcome.UNRESOLVABLE, Outcome.UNRESOLVABLE, Outcome.RESOLVED]
    assert lookups[0].reason == "private range"


async def test_key_never_logged(fake_ipapi: ServerFactory, logs: Logs) -> None:
    """With a key set, no log event mentions it, even when requests fail."""
    fake, client = await fake_ipapi(key="pro-key-123", max_attempts=2)
    fake.faults.extend([Fault("status", status=500), Fault("reset")])
    await client.resolve([PUBLIC[0]])
    assert logs
    assert "pro-key-123" not in json.dumps([dict(e) for e in logs], default=str)


@pytest.mark.parametrize(
    ("error", "retry"),
    [
        (IpApiError("x", 429), True),
        (IpApiError("x", 500), True),
        (IpApiError("x", 503), True),
        (IpApiError("x", 422), False),
        (IpApiError("x", 403), False),
        (IpApiError("x", 400), False),
        (IpApiError("malformed", 200), False),
        (IpApiError("no status"), False),
        (TimeoutError(), True),
        (aiohttp.ServerDisconnectedError(), True),
        (aiohttp.ClientPayloadError("reset"), True),
        (ValueError("bug"), False),
    ],
)
def test_is_retryable(error: BaseException, retry: bool) -> None:
    """429, 5xx, timeouts and connection errors are retryable; other failures are permanent."""
    assert is_retryable(error) is retry


def test_parse_item_validation() -> None:
    """Codes must name a country, text be plausible, the echo exact; `as` gives asn and org."""
    asked = ["1.1.1.1", "2.2.2.2", "3.3.3.3", "4.4.4.4", "5.5.5.5", "6.6.6.6", "7.7.7.7",
             "8.8.8.8"]
    payload = [
        {"status": "success", "query": "1.1.1.1", "countryCode": "au", "country": "Australia",
         "as": "AS13335 Cloudflare, Inc.", "org": "APNIC and Cloudflare DNS Resolver project"},
        {"status": "success", "query": "2.2.2.2", "countryCode": "USA"},
        {"status": "success", "query": "3.3.3.3", "countryCode": "FR", "as": "AS1 " + "x" * 300},
        {"status": "success", "query": "4.4.4.4", "countryCode": "FR", "as": "AS1 bad\x00org"},
        {"status": "success", "query": "5.5.5.5", "countryCode": "DE", "as": "nonsense"},
        {"status": "fail", "query": "6.6.6.6", "message": "quota"},
        {"status": "success", "query": "7.7.7.7", "countryCode": "EU", "country": "Europe"},
        {"status": "success", "query": "8.8.8.8", "countryCode": "NL", "as": "AS64496",
         "country": "x" * 300, "org": "bad\x00org"},  # fields geod does not ask for are not read
    ]
    lookups = parse_batch(payload, asked)
    outcomes = [lookup.outcome for lookup in lookups]
    assert outcomes == [Outcome.RESOLVED, Outcome.FAILED, Outcome.FAILED, Outcome.FAILED,
                        Outcome.RESOLVED, Outcome.FAILED, Outcome.FAILED, Outcome.RESOLVED]
    geos = [lookup.geo for lookup in lookups]
    assert geos[0] == Geo("AU", "Australia", "AS13335", "Cloudflare, Inc.")
    assert geos[4] == Geo("DE", "Germany", None, None)
    assert geos[7] == Geo("NL", "Netherlands", "AS64496", None)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12,
)
ITEM = st.fixed_dictionaries(
    {"status": st.sampled_from(["success", "fail", "other"]) | JSON,
     "query": st.sampled_from(["8.8.8.8", "1.1.1.1"]) | JSON},
    optional={"countryCode": st.text(max_size=3) | JSON, "country": JSON, "as": JSON,
              "org": JSON, "message": JSON},
)


@settings(max_examples=300, deadline=None)
@given(payload=JSON | st.lists(ITEM, min_size=0, max_size=3))
def test_parse_batch_accepts_any_json(payload: Any) -> None:
    """Any JSON value gives one Lookup per asked address; RESOLVED only with a valid code."""
    asked = ["8.8.8.8", "1.1.1.1"]
    lookups = parse_batch(payload, asked)
    assert [lookup.address for lookup in lookups] == asked
    for lookup in lookups:
        if lookup.outcome is Outcome.RESOLVED:
            assert lookup.geo is not None
            code = lookup.geo.country_code
            assert len(code) == 2 and code.isascii() and code.isalpha() and code.isupper()


@pytest.mark.parametrize(
    ("answer", "asn", "org"),
    [  # ip-api answers captured in public projects' tests: `org` there is not the AS holder
        ({"as": "AS23148 Terremark", "org": "Sanoma Digital bv dialup pools"},
         "AS23148", "Terremark"),
        ({"as": "AS21453 Flex Ltd.", "org": "Wireless network in Moscow region"},
         "AS21453", "Flex Ltd."),
        ({"as": 'AS41754 JSC "ER-Telecom Holding"', "org": 'JSC "ER-Telecom Holding" Penza'},
         "AS41754", 'JSC "ER-Telecom Holding"'),
        ({"as": "AS8402 PJSC Vimpelcom", "org": ""}, "AS8402", "PJSC Vimpelcom"),
        ({"as": "", "org": "SURFnet bv"}, None, None),  # not announced in BGP: no AS, no holder
        ({"as": "AS15169", "org": "Google Public DNS"}, "AS15169", None),
        ({"as": "AS15169  Google LLC ", "org": ""}, "AS15169", "Google LLC"),
    ],
)
def test_org_is_the_as_holder(answer: dict[str, str], asn: str | None, org: str | None) -> None:
    """`org` is the AS holder from `as` (like IPinfo's as_name and MaxMind's ASN database)."""
    item = {"status": "success", "query": "1.2.3.4", "countryCode": "RU", **answer}
    [lookup] = parse_batch([item], ["1.2.3.4"])
    assert lookup.geo is not None and (lookup.geo.asn, lookup.geo.org) == (asn, org)
