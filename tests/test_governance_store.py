"""The emergency stop and approval rows on SQLite and PostgreSQL, and the stop's
fail-safe reading."""

from __future__ import annotations

from sqlalchemy import text

from store.db import open_engine
from store.governance import GLOBAL, Approvals, EmergencyStops


async def test_a_stop_per_scope_engaged_restated_and_released(db_url: str) -> None:
    engine = await open_engine(db_url)
    stops = EmergencyStops(engine)
    assert await stops.blocking("io.micromdm.wf.lock.v1") is None
    await stops.engage("io.micromdm.wf.lock.v1", "root", "bad lock rollout")
    await stops.engage("io.micromdm.wf.lock.v1", "admin", "still bad")  # restated
    found = await stops.blocking("io.micromdm.wf.lock.v1")
    assert found is not None and found.engaged_by == "admin" and found.reason == "still bad"
    assert await stops.blocking("io.micromdm.wf.inventory.v1") is None  # another workflow
    await stops.engage(GLOBAL, "root", "")
    assert (await stops.blocking("io.micromdm.wf.inventory.v1")) is not None
    assert await stops.release(GLOBAL) and not await stops.release(GLOBAL)
    assert await stops.release("io.micromdm.wf.lock.v1")
    assert await stops.engaged() == []
    await engine.dispose()


async def test_a_stop_state_that_cannot_be_read_counts_as_engaged(db_url: str) -> None:
    engine = await open_engine(db_url)
    async with engine.begin() as conn:
        await conn.execute(text("DROP TABLE emergency_stops"))
    stop = await EmergencyStops(engine).blocking("io.micromdm.wf.inventory.v1")
    assert stop is not None and stop.scope == GLOBAL
    assert "cannot be read" in stop.reason and "treated as engaged" in stop.reason
    await engine.dispose()


async def test_an_approval_is_requested_once_and_decided_once(db_url: str) -> None:
    engine = await open_engine(db_url)
    approvals = Approvals(engine)
    for _ in range(3):  # every chunk of the start asks
        await approvals.request("inst-1", "io.mdmflow.erase.v1", "alice", 1)
    assert [a["id"] for a in await approvals.list()] == ["inst-1"]
    assert await approvals.decide("inst-1", "approved", "bob", "ticket 7")
    assert not await approvals.decide("inst-1", "rejected", "carol", "late")
    assert await approvals.list() == []
    row = await approvals.get("inst-1")
    assert row is not None and row["status"] == "approved" and row["decided_by"] == "bob"
    await engine.dispose()
