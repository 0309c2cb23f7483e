"""The relay's durable inbox: webhooks accepted while Temporal could not take them.

NanoMDM sends each webhook once and never retries, so a webhook the relay cannot hand
to Temporal is written here before the relay answers 200, and a forwarder delivers it
once Temporal is back: in arrival order per enrollment, with retries and backoff, at
least once (the engine ignores duplicates). One forwarder at a time holds a lease, so
several relays never deliver the same entry concurrently.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from protocol.webhooks import WebhookEvent
from store.db import InboxRow, LeaseRow

# Retry backoff: doubling from half a second up to 10 s, so delivery resumes within
# seconds of Temporal's return; after MAX_ATTEMPTS (about 1.6 hours of failures) an
# entry is marked dead and left for an operator.
FIRST_RETRY = timedelta(seconds=0.5)
MAX_RETRY = timedelta(seconds=10)
MAX_ATTEMPTS = 600
FORWARDER_LEASE = "inbox-forwarder"


@dataclass(frozen=True)
class InboxEntry:
    id: int
    event: WebhookEvent
    attempts: int


@dataclass(frozen=True)
class InboxDepth:
    entries: int
    oldest: datetime | None
    dead: int


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


class WebhookInbox:
    def __init__(self, engine: AsyncEngine) -> None:
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)

    async def add(self, event: WebhookEvent) -> int:
        """Record a webhook; durable once this returns."""
        now = datetime.now(UTC)
        async with self._sessions() as session, session.begin():
            result = await session.execute(
                insert(InboxRow)
                .values(
                    enrollment_id=event.enrollment.id[:255],
                    event=event.model_dump(mode="json"),
                    received=now,
                    attempts=0,
                    next_attempt=now,
                    dead=False,
                )
                .returning(InboxRow.id)
            )
            return int(result.scalar_one())

    async def holds(self, enrollment_id: str) -> bool:
        """Whether an undelivered entry of this enrollment waits (a newer one must queue)."""
        async with self._sessions() as session:
            found = await session.scalar(
                select(InboxRow.id)
                .where(InboxRow.enrollment_id == enrollment_id, InboxRow.dead.is_(False))
                .limit(1)
            )
            return found is not None

    async def any_waiting(self) -> bool:
        """Whether any undelivered entry waits, of any enrollment (one indexed probe)."""
        async with self._sessions() as session:
            found = await session.scalar(
                select(InboxRow.id).where(InboxRow.dead.is_(False)).limit(1)
            )
            return found is not None

    async def depth(self) -> InboxDepth:
        async with self._sessions() as session:
            live = await session.execute(
                select(func.count(InboxRow.id), func.min(InboxRow.received)).where(
                    InboxRow.dead.is_(False)
                )
            )
            count, oldest = live.one()
            dead = await session.scalar(
                select(func.count(InboxRow.id)).where(InboxRow.dead.is_(True))
            )
        return InboxDepth(int(count or 0), _utc(oldest) if oldest else None, int(dead or 0))

    async def due(self, limit: int = 200) -> list[InboxEntry]:
        """Entries ready for (another) attempt, oldest first."""
        now = datetime.now(UTC)
        async with self._sessions() as session:
            rows = await session.scalars(
                select(InboxRow)
                .where(InboxRow.dead.is_(False))
                .order_by(InboxRow.id)
                .limit(limit)
            )
            out = []
            blocked: set[str] = set()
            for row in rows:
                # an entry waiting for its retry holds back its enrollment's later ones
                if row.enrollment_id in blocked or _utc(row.next_attempt) > now:
                    blocked.add(row.enrollment_id)
                    continue
                out.append(
                    InboxEntry(row.id, WebhookEvent.model_validate(row.event), row.attempts)
                )
            return out

    async def delivered(self, entry_id: int) -> None:
        async with self._sessions() as session, session.begin():
            await session.execute(delete(InboxRow).where(InboxRow.id == entry_id))

    async def failed(self, entry: InboxEntry, error: str) -> bool:
        """Schedule the next attempt; True when the entry is now dead."""
        attempts = entry.attempts + 1
        delay = min(FIRST_RETRY * 2 ** min(attempts - 1, 16), MAX_RETRY)
        dead = attempts >= MAX_ATTEMPTS
        async with self._sessions() as session, session.begin():
            await session.execute(
                update(InboxRow)
                .where(InboxRow.id == entry.id)
                .values(
                    attempts=attempts,
                    next_attempt=datetime.now(UTC) + delay,
                    last_error=error[:2000],
                    dead=dead,
                )
            )
        return dead

    async def lease(self, owner: str, ttl: timedelta, name: str = FORWARDER_LEASE) -> bool:
        """Take or renew the named lease for ``ttl``; False while another owner holds it."""
        now = datetime.now(UTC)
        async with self._sessions() as session, session.begin():
            taken = await session.execute(
                update(LeaseRow)
                .where(LeaseRow.name == name)
                .where((LeaseRow.owner == owner) | (LeaseRow.until < now))
                .values(owner=owner, until=now + ttl)
            )
            if taken.rowcount:  # type: ignore[attr-defined]
                return True
        try:
            async with self._sessions() as session, session.begin():
                session.add(LeaseRow(name=name, owner=owner, until=now + ttl))
        except IntegrityError:
            return False  # held by someone else
        return True
