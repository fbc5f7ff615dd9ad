"""Tests for the ip-api stand-in: the contract of ip-api.md, the quota, bans, faults and the CLI."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from geod.provider import make_session
from tests.conftest import FakeClock
from tests.fake_ipapi import FakeIpApi, Fault, RecordedRequest

REPO = Path(__file__).resolve().parents[1]
PUBLIC = ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111"]

MakeClient = Callable[..., Awaitable[TestClient[Any, Any]]]


@pytest.fixture
def fake(fake_clock: FakeClock) -> FakeIpApi:
    return FakeIpApi(limit=3, window=60.0, clock=fake_clock, ban_after=3)


@pytest.fixture
async def client(fake: FakeIpApi, aiohttp_client: MakeClient) -> TestClient[Any, Any]:
    return await aiohttp_client(fake.app)


async def test_batch_answers_every_item_in_order(
    fake: FakeIpApi, client: TestClient[Any, Any]
) -> None:
    """A batch gets one row per item, in order, equal to answer_for, as application/json."""
    asked: list[object] = [*PUBLIC, {"query": "10.0.0.1"}]
    resp = await client.post("/batch", json=asked)
    assert resp.status == 200
    assert resp.content_type == "application/json"
    rows = await resp.json()
    assert rows == [fake.answer_for(ip, None) for ip in [*PUBLIC, "10.0.0.1"]]
    assert [r["query"] for r in rows] == [*PUBLIC, "10.0.0.1"]
    assert rows[0]["status"] == "success" and len(rows[0]["countryCode"]) == 2
    assert rows[0]["as"].startswith("AS") and rows[0]["org"].startswith("Org ")


def test_answer_for_is_deterministic_and_canonical() -> None:
    """Answers depend only on the address, not on the instance or its spelling."""
    first = FakeIpApi().answer_for("2001:4860::8888", {"countryCode", "as", "query"})
    again = FakeIpApi().answer_for("2001:4860:0::8888", {"countryCode", "as", "query"})
    assert first["countryCode"] == again["countryCode"] and first["as"] == again["as"]
    assert again["query"] == "2001:4860:0::8888"


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("10.0.0.1", "private range"),
        ("127.0.0.1", "private range"),
        ("100.64.0.1", "private range"),
        ("169.254.1.1", "private range"),
        ("fc00::1", "private range"),
        ("::ffff:192.168.1.1", "private range"),
        ("224.0.0.1", "reserved range"),
        ("0.0.0.0", "reserved range"),  # noqa: S104  # a query, not a bind address
        ("192.0.2.1", "reserved range"),
        ("240.0.0.1", "reserved range"),
        ("ff02::1", "reserved range"),
        ("2001:db8::1", "reserved range"),
        ("not-an-ip", "invalid query"),
        ("", "invalid query"),
        ("8.8.8.8 ", "invalid query"),
    ],
)
def test_fail_messages(query: str, message: str) -> None:
    """Non-public or malformed queries fail with ip-api's message and echo the query."""
    assert FakeIpApi().answer_for(query, None) == {
        "status": "fail",
        "message": message,
        "query": query,
    }


async def test_fail_rows_over_http(client: TestClient[Any, Any]) -> None:
    """The batch endpoint returns fail rows for the addresses named in the brief."""
    asked = ["10.0.0.1", "127.0.0.1", "224.0.0.1", "not-an-ip", "100.64.0.1"]
    rows = await (await client.post("/batch", json=asked)).json()
    assert [r["message"] for r in rows] == [
        "private range",
        "private range",
        "reserved range",
        "invalid query",
        "private range",
    ]


async def test_fields_filtering(fake: FakeIpApi, client: TestClient[Any, Any]) -> None:
    """Query-string fields apply to every item unless an object item brings its own."""
    asked: list[object] = ["8.8.8.8", {"query": "1.1.1.1", "fields": "as,query"}, "10.0.0.1"]
    resp = await client.post("/batch", params={"fields": "countryCode"}, json=asked)
    rows = await resp.json()
    assert set(rows[0]) == {"status", "countryCode"}
    assert rows[1] == {"status": "success", "as": fake.answer_for("1.1.1.1", None)["as"],
                       "query": "1.1.1.1"}  # fmt: skip
    assert rows[2] == {"status": "fail", "message": "private range"}
    mask = str((1 << 14) | (1 << 1) | (1 << 13))  # status, countryCode, query
    rows = await (await client.post("/batch", params={"fields": mask}, json=["8.8.8.8"])).json()
    assert set(rows[0]) == {"status", "countryCode", "query"}


async def test_over_max_items_is_422_and_uses_quota(client: TestClient[Any, Any]) -> None:
    """More than max_items is 422, which carries the rate headers and uses one request."""
    resp = await client.post("/batch", json=[f"8.8.{i // 256}.{i % 256}" for i in range(101)])
    assert resp.status == 422
    assert resp.headers["X-Rl"] == "2"
    ok = await client.post("/batch", json=["8.8.8.8"] * 100)
    assert ok.status == 200 and ok.headers["X-Rl"] == "1"


@pytest.mark.parametrize("body", [b"not json", b'{"query": "8.8.8.8"}', b"[42]", b'[{"q": 1}]'])
async def test_bad_body_is_400(client: TestClient[Any, Any], body: bytes) -> None:
    """A body that is not a JSON array of IP strings or query objects is 400."""
    resp = await client.post("/batch", data=body)
    assert resp.status == 400


async def test_batch_is_post_only(fake: FakeIpApi, client: TestClient[Any, Any]) -> None:
    """GET /batch is 405, recorded, and uses no quota."""
    resp = await client.get("/batch")
    assert resp.status == 405
    assert fake.requests[-1].status == 405 and fake.requests[-1].method == "GET"
    ok = await client.post("/batch", json=[])
    assert ok.status == 200 and await ok.json() == [] and ok.headers["X-Rl"] == "2"


async def test_rate_headers_count_down(fake_clock: FakeClock, client: TestClient[Any, Any]) -> None:
    """X-Rl counts the requests left in the window and X-Ttl the whole seconds until it resets."""
    seen = []
    for _ in range(3):
        resp = await client.post("/batch", json=["8.8.8.8"])
        seen.append((resp.headers["X-Rl"], resp.headers["X-Ttl"]))
        fake_clock.advance(10.5)
    assert seen == [("2", "60"), ("1", "50"), ("0", "39")]


async def test_429_when_exhausted_then_reset(
    fake: FakeIpApi, fake_clock: FakeClock, client: TestClient[Any, Any]
) -> None:
    """Over the limit is 429 with X-Rl 0 and uses no quota; the next window serves again."""
    for _ in range(3):
        assert (await client.post("/batch", json=["8.8.8.8"])).status == 200
    fake_clock.advance(59.2)
    resp = await client.post("/batch", json=["1.1.1.1"])
    assert resp.status == 429
    assert (resp.headers["X-Rl"], resp.headers["X-Ttl"]) == ("0", "1")
    fake_clock.advance(0.8)
    resp = await client.post("/batch", json=["1.1.1.1"])
    assert resp.status == 200 and (resp.headers["X-Rl"], resp.headers["X-Ttl"]) == ("2", "60")
    assert fake.count_429() == 1 and fake.sent_ips() == ["8.8.8.8"] * 3 + ["1.1.1.1"] * 2


async def test_spend_shares_the_quota(fake: FakeIpApi, client: TestClient[Any, Any]) -> None:
    """Another tenant's spend() uses the same quota geod sees, and 429s are counted per tenant."""
    assert fake.spend(2) == [200, 200]
    resp = await client.post("/batch", json=["8.8.8.8"])
    assert resp.headers["X-Rl"] == "0"
    assert fake.spend() == [429]
    resp = await client.post("/batch", json=["8.8.8.8"], headers={"X-Tenant": "geod"})
    assert resp.status == 429
    assert (fake.count_429("other"), fake.count_429("geod"), fake.count_429()) == (1, 1, 2)
    assert [r.method for r in fake.requests] == ["SPEND", "SPEND", "POST", "SPEND", "POST"]


async def test_ban_after_too_many_429s(
    fake: FakeIpApi, fake_clock: FakeClock, client: TestClient[Any, Any]
) -> None:
    """The ban_after-th 429 bans the tenant: 403 without rate headers forever, others unaffected."""
    fake.spend(3)
    statuses = [(await client.post("/batch", json=["8.8.8.8"])).status for _ in range(4)]
    assert statuses == [429, 429, 429, 403]
    assert fake.banned == {"geod"}
    fake_clock.advance(3600)
    resp = await client.post("/batch", json=["8.8.8.8"])
    assert resp.status == 403 and "X-Rl" not in resp.headers and "X-Ttl" not in resp.headers
    assert fake.spend(1) == [200]


async def test_429_fault_counts_towards_ban(fake: FakeIpApi, client: TestClient[Any, Any]) -> None:
    """Injected 429s count towards the ban like real ones."""
    fake.faults.extend(Fault("status", 429) for _ in range(3))
    for _ in range(3):
        assert (await client.post("/batch", json=["8.8.8.8"])).status == 429
    assert fake.banned == {"geod"}
    assert (await client.post("/batch", json=["8.8.8.8"])).status == 403


async def test_status_faults_use_no_quota(fake: FakeIpApi, client: TestClient[Any, Any]) -> None:
    """Status faults answer their code, with or without headers, and use no quota."""
    fake.faults.extend([Fault("status", 503), Fault("status", 429, headers=False), Fault("status")])
    first = await client.post("/batch", json=["8.8.8.8"])
    assert first.status == 503 and first.headers["X-Rl"] == "3"
    second = await client.post("/batch", json=["8.8.8.8"])
    assert second.status == 429 and "X-Rl" not in second.headers and "X-Ttl" not in second.headers
    assert (await client.post("/batch", json=["8.8.8.8"])).status == 500
    ok = await client.post("/batch", json=["8.8.8.8"])
    assert ok.status == 200 and ok.headers["X-Rl"] == "2"
    assert [r.fault for r in fake.requests] == ["status", "status", "status", None]


async def test_slow_fault_delays_then_answers(
    fake: FakeIpApi, client: TestClient[Any, Any]
) -> None:
    """A slow fault answers normally after a real delay, so a shorter client timeout fires."""
    fake.faults.extend([Fault("slow", delay=0.05), Fault("slow", delay=0.2)])
    started = time.monotonic()
    resp = await client.post("/batch", json=["8.8.8.8"])
    assert time.monotonic() - started >= 0.05
    assert await resp.json() == [fake.answer_for("8.8.8.8", None)]
    with pytest.raises(asyncio.TimeoutError):
        await client.post("/batch", json=["8.8.8.8"], timeout=aiohttp.ClientTimeout(total=0.02))
    assert [r.fault for r in fake.requests] == ["slow", "slow"]


@pytest.mark.parametrize(
    ("kind", "content_type"), [("malformed", "application/json"), ("non_json", "text/html")]
)
async def test_unparseable_faults(
    fake: FakeIpApi, client: TestClient[Any, Any], kind: str, content_type: str
) -> None:
    """Malformed and non_json faults answer 200 with a body that is not JSON and use quota."""
    fake.faults.append(Fault(kind))
    resp = await client.post("/batch", json=["8.8.8.8"])
    assert resp.status == 200 and resp.content_type == content_type
    assert resp.headers["X-Rl"] == "2"
    with pytest.raises(ValueError):
        json.loads(await resp.text())


@pytest.mark.parametrize("kind", ["short", "long", "wrong_query", "bad_country", "empty_country"])
async def test_row_faults(fake: FakeIpApi, client: TestClient[Any, Any], kind: str) -> None:
    """Row faults return valid JSON that breaks exactly one promise of the contract."""
    fake.faults.append(Fault(kind))
    asked = ["10.0.0.1", "8.8.8.8", "1.1.1.1"]
    resp = await client.post("/batch", json=asked)
    rows = await resp.json()
    expected = [fake.answer_for(ip, None) for ip in asked]
    assert resp.status == 200 and resp.headers["X-Rl"] == "2"
    if kind == "short":
        assert rows == expected[:-1]
    elif kind == "long":
        assert rows[:-1] == expected and len(rows) == 4 and rows[-1]["status"] == "success"
    elif kind == "wrong_query":
        assert rows[0]["query"] not in asked and rows[1:] == expected[1:]
    else:  # the first success row, 8.8.8.8
        assert rows[1]["countryCode"] == ("U$A" if kind == "bad_country" else "")
        assert rows[0] == expected[0] and rows[2] == expected[2]


async def test_oversized_fault(fake: FakeIpApi, client: TestClient[Any, Any]) -> None:
    """The oversized fault answers valid JSON larger than 8 MiB, on both endpoints."""
    fake.faults.extend([Fault("oversized"), Fault("oversized")])
    resp = await client.post("/batch", json=["8.8.8.8"])
    body = await resp.read()
    assert resp.status == 200 and len(body) > 8 * 1024 * 1024
    assert json.loads(body)[-1] == fake.answer_for("8.8.8.8", None)
    body = await (await client.get("/json/1.1.1.1")).read()
    assert len(body) > 8 * 1024 * 1024 and json.loads(body)["status"] == "success"


async def test_reset_fault_breaks_the_response(
    fake: FakeIpApi, client: TestClient[Any, Any]
) -> None:
    """The reset fault drops the connection mid-body: the client sees an aiohttp error."""
    fake.faults.append(Fault("reset"))
    with pytest.raises((aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError)):
        resp = await client.post("/batch", json=["8.8.8.8"])
        await resp.read()
    ok = await client.post("/batch", json=["8.8.8.8"])
    assert ok.status == 200 and ok.headers["X-Rl"] == "2"
    assert fake.requests[0].fault == "reset"


def test_unknown_fault_kind_is_rejected() -> None:
    """A typo in a fault kind fails loudly instead of silently answering normally."""
    with pytest.raises(ValueError, match="unknown fault kind"):
        Fault("timeout")


async def test_json_endpoint(fake: FakeIpApi, client: TestClient[Any, Any]) -> None:
    """GET /json/{ip} answers one object with its own 45-request budget."""
    resp = await client.get("/json/8.8.8.8", params={"fields": "countryCode,query"})
    assert await resp.json() == fake.answer_for("8.8.8.8", {"countryCode", "query"})
    assert resp.headers["X-Rl"] == "44"
    resp = await client.get("/json/192.168.0.1")
    assert (await resp.json())["message"] == "private range"
    assert (await client.post("/batch", json=[])).headers["X-Rl"] == "2"


async def test_requests_are_recorded(
    fake: FakeIpApi, fake_clock: FakeClock, client: TestClient[Any, Any]
) -> None:
    """Each request is recorded with time, tenant, query string, items, status and fault."""
    await client.post(
        "/batch",
        params={"fields": "countryCode", "lang": "de", "key": "k3y"},
        json=["8.8.8.8", {"query": "10.0.0.1"}],
        headers={"X-Tenant": "dashboard"},
    )
    assert fake.requests == [
        RecordedRequest(
            time=fake_clock.now,
            tenant="dashboard",
            method="POST",
            path="/batch",
            query={"fields": "countryCode", "lang": "de", "key": "k3y"},
            ips=["8.8.8.8", "10.0.0.1"],
            status=200,
            fault=None,
        )
    ]
    assert fake.sent_ips("dashboard") == ["8.8.8.8", "10.0.0.1"] and fake.sent_ips() == []


async def test_cli_serves_and_logs(tmp_path: Path) -> None:
    """`python -m tests.fake_ipapi --log` prints its address, logs requests, exits 0 on SIGTERM."""
    log = tmp_path / "requests.jsonl"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.fake_ipapi", "--port", "0", "--limit", "2", "--log", str(log),
        cwd=REPO, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode()
        assert line.startswith("listening http://127.0.0.1:")
        url = line.split()[1]
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{url}/batch", json=["8.8.8.8", "10.0.0.1"]) as resp:
                assert resp.status == 200 and resp.headers["X-Rl"] == "1"
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    [entry] = [json.loads(x) for x in log.read_text().splitlines()]
    assert entry["ips"] == ["8.8.8.8", "10.0.0.1"] and entry["status"] == 200
    assert entry["tenant"] == "geod" and entry["path"] == "/batch"


async def test_per_client_quota_is_keyed_by_source_address(aiohttp_server: Any) -> None:
    """per_client: each client address has its own window, as on ip-api.com; geod's
    `make_session(source_address=)` is what puts each instance on its own loopback address."""
    fake = FakeIpApi(limit=2, window=60, per_client=True)
    server = await aiohttp_server(fake.app)
    url = str(server.make_url("/batch"))
    statuses: dict[str, list[int]] = {}
    for source in ("127.0.0.2", "127.0.0.3"):
        async with make_session(source_address=source) as session:
            for _ in range(3):
                async with session.post(url, json=["8.8.8.8"]) as response:
                    statuses.setdefault(source, []).append(response.status)
    assert statuses == {"127.0.0.2": [200, 200, 429], "127.0.0.3": [200, 200, 429]}
    assert fake.sent_ips("127.0.0.2") == ["8.8.8.8"] * 3
