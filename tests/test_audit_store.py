"""The audit log on SQLite and PostgreSQL: filters, paging, redaction, and a hash chain
that catches every kind of tampering and stays linear under concurrent appends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from store.audit import REDACTED, AuditEntry, AuditLog, redact
from store.db import open_engine


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    engine = await open_engine(db_url)
    yield engine
    await engine.dispose()


@pytest.fixture
def log(engine: AsyncEngine) -> AuditLog:
    return AuditLog(engine)


async def sql(engine: AsyncEngine, statement: str, **params: Any) -> None:
    """Tamper as someone with database access would: raw SQL, behind the log's back."""
    async with engine.begin() as conn:
        await conn.execute(text(statement), params)


async def fill(log: AuditLog) -> list[int]:
    entries = [
        AuditEntry("alice", "admin", "start", ["dev-1", "dev-2"], {"workflow": "lock"}),
        AuditEntry("bob", "operator", "stop", ["dev-2"], source="10.0.0.9"),
        AuditEntry("alice", "admin", "secret.read", ["dev-3"], outcome="denied"),
        AuditEntry("carol", "viewer", "start", ["dev-1"], {"pin": "123456"}),
        AuditEntry("bob", "operator", "profile.upload", params={"name": "wifi"}),
    ]
    return [await log.record(e) for e in entries]


async def test_record_and_read_back(log: AuditLog) -> None:
    before = datetime.now(UTC)
    seq = await log.record(
        AuditEntry(
            "alice",
            "admin",
            "secret.read",
            ("dev-9",),
            {"kind": "filevault", "RecoveryKey": "ABCD-EFGH"},
            "192.0.2.1",
            "denied",
        )
    )
    (entry,), next_page = await log.list()
    assert seq == 1
    assert next_page is None
    assert entry["seq"] == 1
    assert entry["user"] == "alice"
    assert entry["role"] == "admin"
    assert entry["action"] == "secret.read"
    assert entry["targets"] == ["dev-9"]
    assert entry["target_count"] == 1
    assert entry["params"] == {"kind": "filevault", "RecoveryKey": REDACTED}
    assert entry["source"] == "192.0.2.1"
    assert entry["outcome"] == "denied"
    at = datetime.fromisoformat(entry["time"])
    assert at.tzinfo is not None and at.utcoffset() == timedelta(0)
    assert before <= at <= datetime.now(UTC)
    assert len(entry["time"].split("T")[1].split("+")[0].split(".")[1]) == 6  # microseconds


async def test_filters(log: AuditLog) -> None:
    seqs = await fill(log)

    async def found(**filters: Any) -> list[int]:
        entries, _ = await log.list(**filters)
        return [e["seq"] for e in entries]

    assert await found() == seqs[::-1]
    assert await found(user="alice") == [3, 1]
    assert await found(action="start") == [4, 1]
    assert await found(enrollment="dev-1") == [4, 1]
    assert await found(enrollment="dev-2") == [2, 1]
    assert await found(enrollment="dev-404") == []
    assert await found(user="bob", enrollment="dev-2") == [2]
    assert await found(before_seq=3) == [2, 1]

    everything, _ = await log.list()
    third = datetime.fromisoformat(everything[2]["time"])  # seq 3
    assert await found(since=third) == [e["seq"] for e in everything if e["seq"] >= 3]
    assert await found(until=third) == [e["seq"] for e in everything if e["seq"] < 3]
    # the same instant in another zone, and naive meaning UTC, select the same rows
    east = third.astimezone(timezone(timedelta(hours=5)))
    assert await found(since=east) == await found(since=third)
    assert await found(until=third.replace(tzinfo=None)) == await found(until=third)


async def test_keyset_paging(log: AuditLog) -> None:
    for n in range(7):
        await log.record(AuditEntry("alice", "admin", "start", [f"dev-{n % 2}"]))
    pages: list[list[int]] = []
    before: int | None = None
    while True:
        entries, before = await log.list(enrollment="dev-0", limit=2, before_seq=before)
        pages.append([e["seq"] for e in entries])
        if before is None:
            break
    assert pages == [[7, 5], [3, 1]]


async def test_large_start_is_capped_on_the_row_but_findable_by_every_target(
    log: AuditLog,
) -> None:
    ids = [f"dev-{n:05d}" for n in range(10_000)]
    seq = await log.record(AuditEntry("alice", "admin", "start", ids, {"workflow": "wipe"}))
    await log.record(AuditEntry("bob", "operator", "stop", ["dev-09999"]))
    entry = (await log.list(before_seq=seq + 1, limit=1))[0][0]
    assert entry["target_count"] == 10_000
    assert entry["targets"] == ids[:100]
    for probe in ("dev-00000", "dev-05000", "dev-09999"):
        found, _ = await log.list(enrollment=probe)
        assert seq in [e["seq"] for e in found]
    assert (await log.verify()).ok


async def test_duplicate_targets_are_recorded_once(log: AuditLog) -> None:
    await log.record(AuditEntry("alice", "admin", "start", ["a", "b", "a"]))
    (entry,), _ = await log.list()
    assert entry["targets"] == ["a", "b"]
    assert entry["target_count"] == 2
    assert (await log.verify()).ok


async def test_awkward_values_read_back_exactly_and_verify(log: AuditLog) -> None:
    """What the hash covers must read back identically from either database."""
    params: dict[Any, Any] = {
        "note": "ünïcødé \u2603 and a NUL\x00here",
        "ratio": 0.1,
        "big": 2**70,
        "nan": float("nan"),
        "when": datetime(2024, 1, 2, tzinfo=UTC),
        "blob": b"\x00\x01",
        "nested": {"z": [1, 2, {"y": None}], "a": True},
        7: "non-string key",
    }
    await log.record(AuditEntry("ünï\x00", "r", "a" * 500, ["x" * 400], params, "s" * 999))
    (entry,), _ = await log.list()
    assert entry["params"]["nan"] == "nan"
    assert entry["params"]["blob"] == "[2 bytes]"
    assert entry["params"]["7"] == "non-string key"
    assert "\x00" not in entry["params"]["note"] and "\x00" not in entry["user"]
    assert len(entry["action"]) <= 128 and len(entry["source"]) <= 255
    assert len(entry["targets"][0]) <= 255
    assert (await log.verify()).ok


def test_redact_hides_secret_keys_at_any_depth() -> None:
    params: dict[Any, Any] = {
        "NewPIN": "123456",
        "Passcode": "0000",
        "api_token": "t",
        "escrow": {"RecoveryKey": "K", "kind": "filevault", "PRK": "x"},
        "steps": [{"UnlockToken": "u", "name": "lock"}, {"challenge": "c"}],
        "secret": {"deep": "whole value goes"},
        "password_hint": None,
        "workflow": "lock",
        "count": 3,
    }
    assert redact(params) == {
        "NewPIN": REDACTED,
        "Passcode": REDACTED,
        "api_token": REDACTED,
        "escrow": {"RecoveryKey": REDACTED, "kind": "filevault", "PRK": REDACTED},
        "steps": [{"UnlockToken": REDACTED, "name": "lock"}, {"challenge": REDACTED}],
        "secret": REDACTED,
        "password_hint": REDACTED,
        "workflow": "lock",
        "count": 3,
    }
    assert params["NewPIN"] == "123456"  # the caller's mapping is left alone


def test_redact_caps_sizes() -> None:
    capped = redact(
        {
            "text": "x" * 50_000,
            "ids": [f"d{n}" for n in range(5000)],
            "map": {f"k{n}": n for n in range(500)},
            "deep": {"a": {"a": {"a": {"a": {"a": {"a": {"a": {"a": {"a": {"a": 1}}}}}}}}}},
        }
    )
    assert len(capped["text"]) <= 1000 and capped["text"].endswith("chars]")
    assert len(capped["ids"]) == 101 and capped["ids"][:2] == ["d0", "d1"]
    assert capped["ids"][-1] == "[+4900 more]"
    assert len(capped["map"]) == 101 and capped["map"]["[more keys]"] == 400
    assert "[too deep]" in repr(capped["deep"])
    assert len(repr(capped)) < 20_000


async def test_empty_and_intact_chains_verify(log: AuditLog) -> None:
    empty = await log.verify()
    assert empty.ok and empty.checked == 0 and empty.first_bad_seq is None
    await fill(log)
    result = await log.verify()
    assert result.ok, result.problem
    assert result.checked == 5
    assert (await log.verify(page_size=2)).ok


async def test_edited_row_is_detected(log: AuditLog, engine: AsyncEngine) -> None:
    await fill(log)
    await sql(engine, "UPDATE audit_log SET outcome = 'ok' WHERE seq = 3")
    result = await log.verify(page_size=2)
    assert not result.ok
    assert result.first_bad_seq == 3
    assert result.checked == 2


async def test_edited_capped_targets_are_detected(log: AuditLog, engine: AsyncEngine) -> None:
    await fill(log)
    await sql(engine, "UPDATE audit_log SET targets = :t WHERE seq = 1", t='["dev-1"]')
    result = await log.verify()
    assert (result.ok, result.first_bad_seq) == (False, 1)


async def test_deleted_middle_row_is_detected(log: AuditLog, engine: AsyncEngine) -> None:
    await fill(log)
    await sql(engine, "DELETE FROM audit_log WHERE seq = 3")
    result = await log.verify(page_size=2)
    assert (result.ok, result.first_bad_seq, result.checked) == (False, 3, 2)
    assert "missing" in result.problem


async def test_deleted_and_renumbered_row_is_detected(log: AuditLog, engine: AsyncEngine) -> None:
    await fill(log)
    await sql(engine, "DELETE FROM audit_log WHERE seq = 3")
    await sql(engine, "UPDATE audit_log SET seq = 3 WHERE seq = 4")
    await sql(engine, "UPDATE audit_log SET seq = 4 WHERE seq = 5")
    await sql(engine, "UPDATE audit_head SET seq = 4")
    result = await log.verify()
    assert (result.ok, result.first_bad_seq) == (False, 3)


async def test_edited_target_row_is_detected(log: AuditLog, engine: AsyncEngine) -> None:
    await fill(log)
    await sql(
        engine,
        "UPDATE audit_targets SET enrollment_id = 'dev-7' "
        "WHERE seq = 1 AND enrollment_id = 'dev-2'",
    )
    result = await log.verify()
    assert (result.ok, result.first_bad_seq) == (False, 1)


async def test_deleted_or_added_target_row_is_detected(log: AuditLog, engine: AsyncEngine) -> None:
    await fill(log)
    await sql(engine, "DELETE FROM audit_targets WHERE seq = 2")
    assert (await log.verify()).first_bad_seq == 2
    await sql(engine, "INSERT INTO audit_targets (seq, enrollment_id) VALUES (2, 'dev-2')")
    assert (await log.verify()).ok
    await sql(engine, "INSERT INTO audit_targets (seq, enrollment_id) VALUES (4, 'dev-8')")
    assert (await log.verify()).first_bad_seq == 4


async def test_edited_target_of_a_large_start_is_detected(
    log: AuditLog, engine: AsyncEngine
) -> None:
    """Targets are read in pages while verifying; one edited deep in a page still counts."""
    await log.record(AuditEntry("a", "admin", "stop", ["x"]))
    await log.record(AuditEntry("a", "admin", "start", [f"d{n:05d}" for n in range(12_000)]))
    await log.record(AuditEntry("a", "admin", "stop", ["y"]))
    assert (await log.verify()).ok
    await sql(
        engine, "UPDATE audit_targets SET enrollment_id = 'd99999' WHERE enrollment_id = 'd11000'"
    )
    result = await log.verify()
    assert (result.ok, result.first_bad_seq) == (False, 2)


async def test_deleted_newest_row_is_detected(log: AuditLog, engine: AsyncEngine) -> None:
    await fill(log)
    await sql(engine, "DELETE FROM audit_targets WHERE seq = 5")
    await sql(engine, "DELETE FROM audit_log WHERE seq = 5")
    result = await log.verify()
    assert not result.ok
    assert result.first_bad_seq == 5
    assert result.checked == 4
    assert "head" in result.problem


async def test_deleted_head_is_detected(log: AuditLog, engine: AsyncEngine) -> None:
    await fill(log)
    await sql(engine, "DELETE FROM audit_head")
    result = await log.verify()
    assert (result.ok, result.first_bad_seq) == (False, 1)


async def test_rolled_back_record_leaves_no_trace(log: AuditLog, engine: AsyncEngine) -> None:
    await log.record(AuditEntry("alice", "admin", "start", ["dev-1"]))
    async with engine.connect() as conn:
        transaction = await conn.begin()
        seq = await log.record(AuditEntry("bob", "operator", "wipe", ["dev-1", "dev-2"]), conn)
        assert seq == 2
        await transaction.rollback()
    entries, _ = await log.list()
    assert [e["seq"] for e in entries] == [1]
    assert (await log.list(enrollment="dev-2"))[0] == []
    assert (await log.verify()).ok
    # the seq went back with the transaction: the chain goes on without a gap
    assert await log.record(AuditEntry("carol", "admin", "stop")) == 2
    assert (await log.verify()).ok


async def test_record_commits_with_the_callers_change(log: AuditLog, engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            text("INSERT INTO leases (name, owner, until) VALUES ('l', 'me', :t)"),
            {"t": datetime.now(UTC)},
        )
        await log.record(AuditEntry("alice", "admin", "lease.take", ["dev-1"]), conn)
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT owner FROM leases"))).scalar() == "me"
    assert [e["action"] for e in (await log.list())[0]] == ["lease.take"]
    assert (await log.verify()).ok


async def test_concurrent_appends_from_separate_processes_stay_one_chain(db_url: str) -> None:
    """Four engines, as four API processes would have, each appending 50 entries with
    several in flight at once."""
    engines = [await open_engine(db_url) for _ in range(4)]
    try:

        async def process(p: int) -> list[int]:
            log = AuditLog(engines[p])

            async def worker(w: int) -> list[int]:
                return [
                    await log.record(AuditEntry(f"user-{p}", "admin", "start", [f"d{p}-{w}-{n}"]))
                    for n in range(10)
                ]

            return [
                s for part in await asyncio.gather(*(worker(w) for w in range(5))) for s in part
            ]

        seqs = [s for part in await asyncio.gather(*(process(p) for p in range(4))) for s in part]
        assert sorted(seqs) == list(range(1, 201))
        log = AuditLog(engines[0])
        result = await log.verify(page_size=64)
        assert result.ok, result.problem
        assert result.checked == 200
        # time follows seq: each entry was stamped while it held the chain head
        entries: list[dict[str, Any]] = []
        before: int | None = None
        while True:
            page, before = await log.list(before_seq=before, limit=50)
            entries += page
            if before is None:
                break
        assert [e["seq"] for e in entries] == list(range(200, 0, -1))
        times = [datetime.fromisoformat(e["time"]) for e in entries]
        assert times == sorted(times, reverse=True)
    finally:
        for engine in engines:
            await engine.dispose()
