"""The invariants every fault scenario ends with, checked by one helper.

Whatever went wrong, afterwards:
- no row that had a country (including the app's '') changed, and no row vanished;
- every row geod wrote carries exactly the fake server's answer for that address (country code,
  name, AS token, org, a timestamp), and that address was asked in a request the server answered;
- no private, reserved or invalid address was ever sent, and only normal forms were;
- `PRAGMA integrity_check` is `ok`;
- the daemon is alive, or exited 0 when it was told to stop, and printed no traceback.
"""

from __future__ import annotations

import dataclasses
import re
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from geod.addresses import sendable
from geod.ipapi import FIELDS
from geod.validate import country_name
from tests.conftest import read_rows
from tests.fake_ipapi import DEFAULT_TENANT, FakeIpApi, RecordedRequest, classify, parse_fields
from tests.proc import GeodProcess

Rows = dict[str, dict[str, Any]]
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
_ANSWERS = FakeIpApi()


def snapshot(db: Path) -> Rows:
    """Every row of geo_cache by ip ({} when the file or the table is gone)."""
    if not db.exists():
        return {}
    try:
        return read_rows(db)
    except sqlite3.OperationalError as error:
        if "no such table" not in str(error):
            raise
        return {}


def expected_row(address: str) -> dict[str, str]:
    """What geod must write for `address`: the fake server's deterministic answer."""
    answer = _ANSWERS.answer_for(address, parse_fields(FIELDS))
    return {
        "country_code": str(answer["countryCode"]),
        "country_name": country_name(str(answer["countryCode"])),  # geod's one name per code
        "asn": str(answer["as"]).split()[0],
        "org": str(answer["as"]).split(maxsplit=1)[1],  # the AS holder, not ip-api's `org`
    }


def batch_requests(requests: Iterable[RecordedRequest | dict[str, Any]],
                   tenant: str = DEFAULT_TENANT) -> list[dict[str, Any]]:
    """geod's POST /batch requests, from a FakeIpApi's records or a server process's log."""
    records = [r if isinstance(r, dict) else dataclasses.asdict(r) for r in requests]
    return [
        r for r in records
        if r["method"] == "POST" and r["path"] == "/batch" and r["tenant"] == tenant
    ]  # fmt: skip


def integrity(db: Path) -> str:
    conn = sqlite3.connect(db)
    try:
        return "; ".join(str(row[0]) for row in conn.execute("PRAGMA integrity_check"))
    finally:
        conn.close()


def assert_invariants(
    before: Rows,
    db: Path,
    requests: Iterable[RecordedRequest | dict[str, Any]],
    *,
    geod: GeodProcess | None = None,
    stopped: bool = False,
    exit_code: int | None = None,
    rows_may_vanish: bool = False,
) -> Rows:
    """Check every invariant for `db` (compared with `before`) and the requests geod sent.

    Args:
        before: a `snapshot` taken before the fault; rows added later must have a NULL country.
        requests: every request the fake server recorded (FakeIpApi.requests or a log).
        geod: the daemon process, alive unless `stopped` (then it must have exited 0).
        exit_code: for a one-shot process (`geod once`): it must be 0.
        rows_may_vanish: the scenario itself deleted the file, the table or rows.

    Returns:
        The rows after, for the scenario's own assertions.
    """
    sent = batch_requests(requests)
    for ip in (ip for r in sent for ip in r["ips"]):
        assert sendable(ip) == ip, f"sent {ip!r}: not a public address in normal form"
        assert classify(ip) is None, f"sent {ip!r}: the server calls it {classify(ip)!r}"
    answered = {ip for r in sent if r["status"] == 200 for ip in r["ips"]}

    if db.exists():
        assert integrity(db) == "ok"
    else:
        assert rows_may_vanish, f"{db} is gone"
    after = snapshot(db)
    if not rows_may_vanish:
        assert not set(before) - set(after), f"rows vanished: {sorted(set(before) - set(after))}"
    for ip, row in after.items():
        old = before.get(ip)
        if old is not None and old["country_code"] is not None:
            # Upkeep may fill a NULL name/asn/org (no `source` column: nothing is refreshed),
            # but never replaces a value.
            kept = {k: v for k, v in row.items() if old[k] is not None}
            assert kept == {k: v for k, v in old.items() if v is not None}, \
                f"row {ip!r} had a country and a value was changed: {old} -> {row}"
        elif row["country_code"] is not None:
            address = sendable(ip)
            assert address is not None, f"row {ip!r} is unsendable but was written: {row}"
            assert address in answered, f"row {ip!r} written, but {address} was never answered"
            written = {k: row[k] for k in ("country_code", "country_name", "asn", "org")}
            assert written == expected_row(address), f"row {ip!r}: {written}"
            assert TIMESTAMP.fullmatch(str(row["cached_at"])), row
        elif old is not None:
            assert row == old, f"row {ip!r} still NULL but changed: {old} -> {row}"

    if geod is not None:
        if stopped:
            assert geod.proc.returncode == 0, geod.describe()
        else:
            died = f"geod died ({geod.proc.returncode})\n"
            assert geod.proc.poll() is None, died + geod.describe()
        assert not any("Traceback" in line for line in geod.stderr_lines), geod.describe()
    if exit_code is not None:
        assert exit_code == 0
    return after
