"""The emergency stop and approval requests, shared by every API process and worker.

An emergency stop is a row per scope: ``*`` for everything, or one workflow name. It is
read fail-safe: a store that cannot be read counts as engaged (see ``EmergencyStops``).
Approval requests are a row per start (instance) that waits for a second person; the
run itself holds the decision (a Temporal update), the row is what ``GET /v1/approvals``
lists and what the API checks "not the starter" against.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import DateTime, Integer, String, Text, delete, insert, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.orm import Mapped, mapped_column

from store.db import Base, transaction

GLOBAL = "*"


class EmergencyStopRow(Base):
    __tablename__ = "emergency_stops"
    scope: Mapped[str] = mapped_column(String(255), primary_key=True)
    engaged_by: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(Text, default="")
    since: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ApprovalRow(Base):
    __tablename__ = "approvals"
    instance_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    workflow_name: Mapped[str] = mapped_column(String(255), index=True)
    started_by: Mapped[str] = mapped_column(String(64))
    target_count: Mapped[int] = mapped_column(Integer, default=0)
    requested_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # pending, approved, rejected, expired
    status: Mapped[str] = mapped_column(String(16), index=True, default="pending")
    decided_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    decided_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Stop:
    scope: str
    engaged_by: str
    reason: str
    since: datetime

    def as_dict(self) -> dict[str, Any]:
        return {
            "scope": self.scope,
            "workflow": None if self.scope == GLOBAL else self.scope,
            "engaged_by": self.engaged_by,
            "reason": self.reason,
            "since": self.since.isoformat(),
        }

    def sentence(self) -> str:
        what = "everything" if self.scope == GLOBAL else self.scope
        why = f": {self.reason}" if self.reason else ""
        return f"emergency stop on {what} by {self.engaged_by}{why}"


class EmergencyStops:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def engage(
        self, scope: str, by: str, reason: str, conn: AsyncConnection | None = None
    ) -> Stop:
        """Engage (or re-state) the stop on ``scope``; repeatable."""
        stop = Stop(scope, by, reason, datetime.now(UTC))
        values = {"engaged_by": by, "reason": reason, "since": stop.since}
        async with transaction(self._engine, conn) as c:
            done = await c.execute(
                update(EmergencyStopRow).where(EmergencyStopRow.scope == scope).values(**values)
            )
            if not done.rowcount:
                try:
                    async with c.begin_nested():
                        await c.execute(insert(EmergencyStopRow).values(scope=scope, **values))
                except IntegrityError:  # engaged by another process meanwhile
                    await c.execute(
                        update(EmergencyStopRow)
                        .where(EmergencyStopRow.scope == scope)
                        .values(**values)
                    )
        return stop

    async def release(self, scope: str, conn: AsyncConnection | None = None) -> bool:
        async with transaction(self._engine, conn) as c:
            done = await c.execute(delete(EmergencyStopRow).where(EmergencyStopRow.scope == scope))
        return bool(done.rowcount)

    async def engaged(self) -> list[Stop]:
        """Every engaged stop; raises when the store cannot be read (see :meth:`blocking`)."""
        async with self._engine.connect() as c:
            rows = (await c.execute(select(EmergencyStopRow))).all()
        return [Stop(r.scope, r.engaged_by, r.reason, _utc(r.since) or r.since) for r in rows]

    async def blocking(self, workflow_name: str) -> Stop | None:
        """The stop that halts ``workflow_name``, or None. Fail-safe: when the stop
        state cannot be read, that is itself a stop."""
        try:
            stops = await self.engaged()
        except (SQLAlchemyError, OSError) as exc:
            return Stop(
                GLOBAL,
                "mdmflow",
                f"the emergency-stop state cannot be read ({type(exc).__name__}); "
                "treated as engaged",
                datetime.now(UTC),
            )
        for stop in stops:
            if stop.scope in (GLOBAL, workflow_name):
                return stop
        return None


class Approvals:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def request(
        self, instance_id: str, workflow_name: str, started_by: str, target_count: int
    ) -> None:
        """Record that a start waits for approval (repeatable: each chunk asks)."""
        async with self._engine.begin() as c:
            found = await c.execute(
                select(ApprovalRow.instance_id).where(ApprovalRow.instance_id == instance_id)
            )
            if found.first() is not None:
                return
            try:
                async with c.begin_nested():
                    await c.execute(
                        insert(ApprovalRow).values(
                            instance_id=instance_id,
                            workflow_name=workflow_name,
                            started_by=started_by,
                            target_count=target_count,
                            requested_at=datetime.now(UTC),
                            status="pending",
                        )
                    )
            except IntegrityError:
                pass  # another chunk of the start asked first

    async def get(self, instance_id: str) -> dict[str, Any] | None:
        async with self._engine.connect() as c:
            row = (
                await c.execute(select(ApprovalRow).where(ApprovalRow.instance_id == instance_id))
            ).first()
        return None if row is None else _approval(row)

    async def decide(
        self,
        instance_id: str,
        status: str,
        by: str,
        reason: str,
        conn: AsyncConnection | None = None,
    ) -> bool:
        """Record the decision once; False when it was decided already."""
        async with transaction(self._engine, conn) as c:
            done = await c.execute(
                update(ApprovalRow)
                .where(ApprovalRow.instance_id == instance_id, ApprovalRow.status == "pending")
                .values(status=status, decided_by=by, decided_at=datetime.now(UTC), reason=reason)
            )
        return bool(done.rowcount)

    async def list(self, status: str | None = "pending", limit: int = 100) -> list[dict[str, Any]]:
        query = select(ApprovalRow).order_by(ApprovalRow.requested_at.desc()).limit(limit)
        if status:
            query = query.where(ApprovalRow.status == status)
        async with self._engine.connect() as c:
            rows = (await c.execute(query)).all()
        return [_approval(r) for r in rows]


def _approval(r: Any) -> dict[str, Any]:
    decided_at = _utc(r.decided_at)
    return {
        "id": r.instance_id,
        "instance_id": r.instance_id,
        "workflow": r.workflow_name,
        "started_by": r.started_by,
        "targets": r.target_count,
        "requested_at": (_utc(r.requested_at) or r.requested_at).isoformat(),
        "status": r.status,
        "decided_by": r.decided_by,
        "decided_at": decided_at.isoformat() if decided_at else None,
        "reason": r.reason,
    }
