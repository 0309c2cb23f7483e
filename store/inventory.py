"""Inventory values per enrollment, merged key by key as NanoCMD does."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from store.db import DeviceInfoLogRow, InventoryRow, iso_utc

# Keys that must never be served by the inventory API even if a writer stored them.
SECRET_KEYS = frozenset({"prk", "pin", "recovery_key"})


class InventoryStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)

    async def store_values(self, enrollment_id: str, values: dict[str, Any], source: str) -> None:
        await self.store_many([(enrollment_id, values, source)])

    async def store_many(self, updates: Sequence[tuple[str, dict[str, Any], str]]) -> None:
        """Merge many devices' values in one transaction (a fleet run's batch).

        Repeatable: merging the same values again changes nothing but ``modified``.
        """
        now = datetime.now(UTC)
        ids = sorted({eid for eid, _, _ in updates})  # one lock order: no deadlocks
        async with self._sessions() as session, session.begin():
            rows = {
                r.enrollment_id: r
                for r in await session.scalars(
                    select(InventoryRow)
                    .where(InventoryRow.enrollment_id.in_(ids))
                    .order_by(InventoryRow.enrollment_id)
                    .with_for_update()
                )
            }
            for enrollment_id, values, source in updates:
                clean = {k: v for k, v in values.items() if k not in SECRET_KEYS}
                row = rows.get(enrollment_id)
                merged = dict(row.values) if row is not None else {}
                merged.update(clean)
                merged["last_source"] = source
                merged["modified"] = now.isoformat()
                if row is None:
                    row = InventoryRow(enrollment_id=enrollment_id, values=merged, modified=now)
                    session.add(row)
                    rows[enrollment_id] = row
                else:
                    row.values = merged
                    row.modified = now

    async def retrieve(self, enrollment_ids: list[str]) -> dict[str, dict[str, Any]]:
        async with self._sessions() as session:
            rows = await session.scalars(
                select(InventoryRow).where(InventoryRow.enrollment_id.in_(enrollment_ids))
            )
            return {
                r.enrollment_id: {k: v for k, v in r.values.items() if k not in SECRET_KEYS}
                for r in rows
            }

    async def log_device_information(
        self, enrollment_id: str, command_uuid: str, query_responses: dict[str, Any]
    ) -> None:
        await self.log_many([(enrollment_id, command_uuid, query_responses)])

    async def log_many(self, entries: Sequence[tuple[str, str, dict[str, Any]]]) -> None:
        # One entry per (enrollment, command): a retried write (an activity runs at least
        # once) finds it there and the INSERT does nothing.
        dialect_insert = pg_insert if self._engine.dialect.name == "postgresql" else sqlite_insert
        statement = dialect_insert(DeviceInfoLogRow).on_conflict_do_nothing(
            index_elements=["enrollment_id", "command_uuid"]
        )
        now = datetime.now(UTC)
        async with self._engine.begin() as conn:
            await conn.execute(
                statement,
                [
                    {
                        "enrollment_id": eid,
                        "command_uuid": uuid,
                        "query_responses": responses,
                        "created": now,
                    }
                    for eid, uuid, responses in entries
                ],
            )

    async def device_information_log(
        self, enrollment_id: str, limit: int = 50
    ) -> list[dict[str, Any]]:
        async with self._sessions() as session:
            rows = await session.scalars(
                select(DeviceInfoLogRow)
                .where(DeviceInfoLogRow.enrollment_id == enrollment_id)
                .order_by(DeviceInfoLogRow.id.desc())
                .limit(limit)
            )
            return [
                {
                    "command_uuid": r.command_uuid,
                    "created": iso_utc(r.created),
                    "query_responses": r.query_responses,
                }
                for r in rows
            ]
