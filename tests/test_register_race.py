"""Concurrent first check-ins of one enrollment (Authenticate and TokenUpdate racing,
as a webhook burst delivers them) must both be recorded, not fail on the insert."""

from __future__ import annotations

import asyncio
import uuid

from sqlalchemy.ext.asyncio import AsyncEngine

from store.events import EnrollmentRegister


async def test_racing_first_checkins_of_a_new_enrollment_all_succeed(
    store_engine: AsyncEngine,
) -> None:
    register = EnrollmentRegister(store_engine)
    ids = [f"RACE-{uuid.uuid4().hex}" for _ in range(20)]
    calls = [
        register.checkin(eid, "Device", message, {})
        for eid in ids
        for message in ("Authenticate", "TokenUpdate", "TokenUpdate")
    ]
    await asyncio.gather(*calls)
    enrolled = set(await register.enrolled())
    assert set(ids) <= enrolled
