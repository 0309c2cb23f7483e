"""Event subscriptions and the enrollment register kept from check-in webhooks."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, async_sessionmaker

from store.db import EnrollmentRow, EventClaimRow, EventSubscriptionRow, iso_utc
from store.named import session_in

# Claims older than this are pruned; duplicates arrive within seconds.
CLAIM_RETENTION = timedelta(days=1)

# Subscriptions are read on every check-in; a short cache keeps bursts cheap while a
# change through the API is visible within a few seconds on every relay.
CACHE_SECONDS = 2.0


@dataclass(frozen=True)
class Subscription:
    name: str
    event: str
    workflow: str
    context: str | None = None
    event_context: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"event": self.event, "workflow": self.workflow}
        if self.context is not None:
            out["context"] = self.context
        if self.event_context is not None:
            out["event_context"] = self.event_context
        return out


class SubscriptionStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)
        self._cache: tuple[float, list[Subscription]] | None = None

    @staticmethod
    def _from_row(row: EventSubscriptionRow) -> Subscription:
        return Subscription(row.name, row.event, row.workflow, row.context, row.event_context)

    async def put(self, sub: Subscription, conn: AsyncConnection | None = None) -> None:
        async with session_in(self._sessions, conn) as session:
            row = await session.get(EventSubscriptionRow, sub.name)
            if row is None:
                row = EventSubscriptionRow(name=sub.name, starts=0)
                session.add(row)
            row.event, row.workflow = sub.event, sub.workflow
            row.context, row.event_context = sub.context, sub.event_context
            row.last_error = row.last_error_at = None
        self._cache = None

    async def get(self, name: str) -> dict[str, Any] | None:
        async with self._sessions() as session:
            row = await session.get(EventSubscriptionRow, name)
            if row is None:
                return None
            out = self._from_row(row).to_json()
            out["starts"] = row.starts
            if row.last_error:
                out["last_error"] = row.last_error
                out["last_error_at"] = iso_utc(row.last_error_at)
            return out

    async def delete(self, name: str, conn: AsyncConnection | None = None) -> bool:
        async with session_in(self._sessions, conn) as session:
            row = await session.get(EventSubscriptionRow, name)
            if row is None:
                return False
            await session.delete(row)
        self._cache = None
        return True

    async def all(self) -> list[Subscription]:
        async with self._sessions() as session:
            rows = await session.scalars(
                select(EventSubscriptionRow).order_by(EventSubscriptionRow.name)
            )
            return [self._from_row(r) for r in rows]

    async def for_event(self, event: str) -> list[Subscription]:
        now = time.monotonic()
        if self._cache is None or now - self._cache[0] > CACHE_SECONDS:
            self._cache = (now, await self.all())
        return [s for s in self._cache[1] if s.event == event]

    async def unclaim(self, key: str) -> None:
        """Give a claim back: the start it guarded did not happen (Temporal was away)."""
        async with self._sessions() as session, session.begin():
            await session.execute(delete(EventClaimRow).where(EventClaimRow.key == key[:255]))

    async def claim(self, key: str) -> bool:
        """True the first time ``key`` is claimed, on any relay; False for a duplicate."""
        now = datetime.now(UTC)
        try:
            async with self._sessions() as session, session.begin():
                session.add(EventClaimRow(key=key[:255], created=now))
        except IntegrityError:
            return False
        if hash(key) % 1000 == 0:  # prune now and then
            async with self._sessions() as session, session.begin():
                await session.execute(
                    delete(EventClaimRow).where(EventClaimRow.created < now - CLAIM_RETENTION)
                )
        return True

    async def record(self, name: str, started: int, error: str | None) -> None:
        """Count starts atomically (many relays) and keep the last error for operators."""
        values: dict[str, Any] = {"starts": EventSubscriptionRow.starts + started}
        if error:
            values.update(last_error=error[:2000], last_error_at=datetime.now(UTC))
        async with self._sessions() as session, session.begin():
            await session.execute(
                update(EventSubscriptionRow)
                .where(EventSubscriptionRow.name == name)
                .values(**values)
            )


class EnrollmentRegister:
    def __init__(self, engine: AsyncEngine) -> None:
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)

    async def known(self, ids: Sequence[str]) -> set[str]:
        """Which of ``ids`` the relay has seen check in (enrolled or not since)."""
        found: set[str] = set()
        unique = sorted(set(ids))
        async with self._sessions() as session:
            for start in range(0, len(unique), 500):
                part = unique[start : start + 500]
                rows = await session.scalars(
                    select(EnrollmentRow.enrollment_id).where(EnrollmentRow.enrollment_id.in_(part))
                )
                found.update(rows)
        return found

    async def checkin(
        self,
        enrollment_id: str,
        enrollment_type: str,
        message: str,
        url_params: dict[str, str],
        awaiting_configuration: bool | None = None,
        mdm_address: str = "",
    ) -> int:
        """Record a check-in; returns TokenUpdates seen since the last Authenticate."""
        args = (
            enrollment_id,
            enrollment_type,
            message,
            url_params,
            awaiting_configuration,
            mdm_address,
        )
        try:
            return await self._checkin(*args)
        except IntegrityError:
            # A concurrent first check-in of this enrollment inserted the row: update it.
            return await self._checkin(*args)

    async def _checkin(
        self,
        enrollment_id: str,
        enrollment_type: str,
        message: str,
        url_params: dict[str, str],
        awaiting_configuration: bool | None,
        mdm_address: str,
    ) -> int:
        async with self._sessions() as session, session.begin():
            row = await session.get(EnrollmentRow, enrollment_id, with_for_update=True)
            if row is None:
                row = EnrollmentRow(
                    enrollment_id=enrollment_id, url_params={}, token_updates_since_auth=0
                )
                session.add(row)
            row.enrollment_type = enrollment_type or row.enrollment_type or ""
            row.mdm_address = mdm_address or row.mdm_address
            row.last_seen = datetime.now(UTC)
            if url_params:
                row.url_params = url_params
            if message == "Authenticate":
                row.token_updates_since_auth = 0
                row.enrolled = True
            elif message == "TokenUpdate":
                row.token_updates_since_auth = (row.token_updates_since_auth or 0) + 1
                row.enrolled = True
                if awaiting_configuration is not None:
                    row.awaiting_configuration = awaiting_configuration
            elif message == "CheckOut":
                row.enrolled = False
            return row.token_updates_since_auth or 0

    async def url_params(self, enrollment_id: str) -> dict[str, str]:
        async with self._sessions() as session:
            row = await session.get(EnrollmentRow, enrollment_id)
            return dict(row.url_params or {}) if row is not None else {}

    async def mdm_address(self, enrollment_id: str) -> str | None:
        """The ID MicroMDM keys this enrollment by, as learned from its check-ins."""
        async with self._sessions() as session:
            row = await session.get(EnrollmentRow, enrollment_id)
            return row.mdm_address if row is not None else None

    async def awaiting_configuration(self, enrollment_id: str) -> bool:
        async with self._sessions() as session:
            row = await session.get(EnrollmentRow, enrollment_id)
            return bool(row and row.awaiting_configuration)

    async def configured(self, enrollment_id: str) -> None:
        """DeviceConfigured was acknowledged: Setup Assistant continues."""
        async with self._sessions() as session, session.begin():
            row = await session.get(EnrollmentRow, enrollment_id)
            if row is not None:
                row.awaiting_configuration = False

    async def enrolled(self) -> list[str]:
        async with self._sessions() as session:
            rows = await session.scalars(
                select(EnrollmentRow.enrollment_id)
                .where(EnrollmentRow.enrolled.is_(True))
                .order_by(EnrollmentRow.enrollment_id)
            )
            return list(rows)
