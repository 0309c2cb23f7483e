"""Run holds: which run drives which enrollment, and exclusivity across API processes.

A fleet run drives many enrollments from one workflow, so Temporal's workflow-ID policy
can no longer say "one running instance of this workflow per enrollment". A hold row per
(workflow name, enrollment, hold key) does, through a unique index: every API process
claims through it and the database decides, at once and for all of them. The same rows
answer "which runs hold this device or its user channels" for the relay and the API.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, Row, and_, delete, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from activities.models import DeviceOutcome
from store.db import DeviceOutcomeRow, RunHoldRow

# IDs per statement: well inside SQLite's and asyncpg's bound-parameter limits, so a
# chunk of 1,000 enrollments costs a couple of statements.
BATCH = 500

# Rounds of "insert, read back" before a claim gives up: another round is needed only
# when a blocking hold was released between the two statements.
_CLAIM_ROUNDS = 10

_LIMITS = {"workflow_name": 255, "enrollment_id": 255, "workflow_id": 512, "instance_id": 64}


@dataclass(frozen=True)
class Hold:
    workflow_name: str
    enrollment_id: str
    workflow_id: str
    instance_id: str
    created_at: datetime


class HoldContention(RuntimeError):
    """Holds kept appearing and vanishing under a claim; the caller may try again."""


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


_HOLD_COLUMNS = (
    RunHoldRow.workflow_name,
    RunHoldRow.enrollment_id,
    RunHoldRow.workflow_id,
    RunHoldRow.instance_id,
    RunHoldRow.created_at,
)


def _hold(row: Row[str, str, str, str, datetime]) -> Hold:
    name, enrollment_id, workflow_id, instance_id, created_at = row
    return Hold(name, enrollment_id, workflow_id, instance_id, _utc(created_at))


def _chunks(ids: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(ids), BATCH):
        yield ids[start : start + BATCH]


def _unique(ids: Sequence[str]) -> list[str]:
    """Distinct IDs, sorted: concurrent claims then wait on one another in one order and
    never deadlock on PostgreSQL."""
    return sorted(set(ids))


def _check(**values: str) -> None:
    """Refuse what a column would truncate (SQLite) or reject (PostgreSQL) mid-batch."""
    for name, value in values.items():
        if len(value) > _LIMITS[name]:
            raise ValueError(f"{name} longer than {_LIMITS[name]} characters: {value[:80]!r}...")


def _outcome(row: DeviceOutcomeRow) -> DeviceOutcome:
    return DeviceOutcome(
        enrollment_id=row.enrollment_id,
        workflow_name=row.workflow_name,
        instance_id=row.instance_id,
        status=row.status,
        message=row.message,
        failure_type=row.failure_type,
    )


class HoldStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)
        self._dialect = engine.dialect.name
        if self._dialect not in ("sqlite", "postgresql"):
            raise ValueError(f"run holds need SQLite or PostgreSQL, not {self._dialect}")

    async def claim(
        self,
        workflow_name: str,
        enrollment_ids: Sequence[str],
        *,
        workflow_id: str,
        instance_id: str,
        exclusive: bool,
    ) -> dict[str, Hold]:
        """Claim every ID for this run; return the refused ones with the hold blocking each.

        Each ID is claimed or refused on its own, atomically against every concurrent
        claimer: the unique index decides (``INSERT .. ON CONFLICT DO NOTHING``), then the
        rows are read back to see whose they are. Claiming again what the run already
        holds succeeds, so a retried activity changes nothing. Exclusive workflows hold
        with the key "", simultaneous ones with their instance ID.
        """
        _check(workflow_name=workflow_name, workflow_id=workflow_id, instance_id=instance_id)
        for enrollment_id in enrollment_ids:
            _check(enrollment_id=enrollment_id)
        key = "" if exclusive else instance_id
        pending = _unique(enrollment_ids)
        refused: dict[str, Hold] = {}
        now = datetime.now(UTC)
        async with self._sessions() as session, session.begin():
            for _ in range(_CLAIM_ROUNDS):
                if not pending:
                    return refused
                for chunk in _chunks(pending):
                    rows = [
                        {
                            "workflow_name": workflow_name,
                            "enrollment_id": enrollment_id,
                            "hold_key": key,
                            "workflow_id": workflow_id,
                            "instance_id": instance_id,
                            "created_at": now,
                        }
                        for enrollment_id in chunk
                    ]
                    await session.execute(self._insert_ignoring_conflicts(), rows)
                held: dict[str, Hold] = {}
                for chunk in _chunks(pending):
                    found = await session.execute(
                        select(*_HOLD_COLUMNS).where(
                            RunHoldRow.workflow_name == workflow_name,
                            RunHoldRow.hold_key == key,
                            RunHoldRow.enrollment_id.in_(chunk),
                        )
                    )
                    held.update((row.enrollment_id, _hold(row)) for row in found)
                for enrollment_id, hold in held.items():
                    if hold.workflow_id != workflow_id:
                        refused[enrollment_id] = hold
                # neither ours nor anyone's: the blocker was released in between
                pending = [i for i in pending if i not in held]
            if not pending:
                return refused
        raise HoldContention(f"{len(pending)} holds of {workflow_name} kept changing hands")

    def _insert_ignoring_conflicts(self) -> Any:
        dialect = postgresql if self._dialect == "postgresql" else sqlite
        return dialect.insert(RunHoldRow).on_conflict_do_nothing(
            index_elements=["workflow_name", "enrollment_id", "hold_key"]
        )

    async def take_over(
        self,
        stale_workflow_id: str,
        workflow_name: str,
        enrollment_ids: Sequence[str],
        *,
        workflow_id: str,
        instance_id: str,
    ) -> list[str]:
        """Move holds of a run known to be closed to this run; return the IDs moved.

        The caller has checked with Temporal that ``stale_workflow_id`` is closed (it
        ended without releasing). Compare-and-set on the holder: of two runs taking
        over the same hold, one moves it and the other finds it no longer the stale
        run's, so it never belongs to both.
        """
        _check(workflow_id=workflow_id, instance_id=instance_id)
        moved: list[str] = []
        now = datetime.now(UTC)
        async with self._sessions() as session, session.begin():
            for chunk in _chunks(_unique(enrollment_ids)):
                of_stale = and_(
                    RunHoldRow.workflow_id == stale_workflow_id,
                    RunHoldRow.workflow_name == workflow_name,
                    RunHoldRow.enrollment_id.in_(chunk),
                )
                if self._dialect == "postgresql":
                    # lock in one order first: concurrent take-overs wait, never deadlock
                    await session.execute(
                        select(RunHoldRow.id)
                        .where(of_stale)
                        .order_by(RunHoldRow.enrollment_id)
                        .with_for_update()
                    )
                result = await session.execute(
                    update(RunHoldRow)
                    .where(of_stale)
                    .values(workflow_id=workflow_id, instance_id=instance_id, created_at=now)
                    .returning(RunHoldRow.enrollment_id)
                    .execution_options(synchronize_session=False)
                )
                moved.extend(result.scalars())
        return sorted(moved)

    async def release(self, workflow_id: str, enrollment_ids: Sequence[str] | None = None) -> int:
        """Drop this run's holds (those IDs, or all); repeatable; return rows deleted."""
        async with self._sessions() as session, session.begin():
            if enrollment_ids is None:
                result = await session.execute(
                    delete(RunHoldRow).where(RunHoldRow.workflow_id == workflow_id)
                )
                return int(result.rowcount)  # type: ignore[attr-defined]
            deleted = 0
            for chunk in _chunks(_unique(enrollment_ids)):
                result = await session.execute(
                    delete(RunHoldRow).where(
                        RunHoldRow.workflow_id == workflow_id,
                        RunHoldRow.enrollment_id.in_(chunk),
                    )
                )
                deleted += int(result.rowcount)  # type: ignore[attr-defined]
            return deleted

    async def finish(self, workflow_id: str, outcomes: Sequence[DeviceOutcome]) -> int:
        """Record how these devices ended and drop their holds, in one transaction.

        Repeatable (a retried activity): an outcome already recorded is overwritten with
        the same values. Returns the holds dropped.
        """
        now = datetime.now(UTC)
        rows = [
            {
                "workflow_id": workflow_id,
                "enrollment_id": o.enrollment_id,
                "workflow_name": o.workflow_name,
                "instance_id": o.instance_id,
                "status": o.status,
                "message": o.message[:2000],
                "failure_type": o.failure_type,
                "finished_at": now,
            }
            for o in outcomes
        ]
        dialect = postgresql if self._dialect == "postgresql" else sqlite
        deleted = 0
        async with self._sessions() as session, session.begin():
            for start in range(0, len(rows), BATCH):
                part = rows[start : start + BATCH]
                insert = dialect.insert(DeviceOutcomeRow).values(part)
                await session.execute(
                    insert.on_conflict_do_update(
                        index_elements=["workflow_id", "enrollment_id"],
                        set_={
                            "status": insert.excluded.status,
                            "message": insert.excluded.message,
                            "failure_type": insert.excluded.failure_type,
                        },
                    )
                )
                result = await session.execute(
                    delete(RunHoldRow).where(
                        RunHoldRow.workflow_id == workflow_id,
                        RunHoldRow.enrollment_id.in_([r["enrollment_id"] for r in part]),
                    )
                )
                deleted += int(result.rowcount)  # type: ignore[attr-defined]
        return deleted

    async def outcomes_of_run(
        self, workflow_id: str, *, after: str | None = None, limit: int = 500
    ) -> list[DeviceOutcome]:
        """A closed run's device outcomes, in enrollment order after ``after``."""
        query = select(DeviceOutcomeRow).where(DeviceOutcomeRow.workflow_id == workflow_id)
        if after is not None:
            query = query.where(DeviceOutcomeRow.enrollment_id > after)
        query = query.order_by(DeviceOutcomeRow.enrollment_id).limit(limit)
        async with self._sessions() as session:
            return [_outcome(r) for r in await session.scalars(query)]

    async def outcomes_of_device(
        self, enrollment_id: str, *, limit: int = 100
    ) -> list[tuple[str, DeviceOutcome]]:
        """(workflow ID, outcome) of a device's ended fleet runs, newest first."""
        query = (
            select(DeviceOutcomeRow)
            .where(DeviceOutcomeRow.enrollment_id == enrollment_id)
            .order_by(DeviceOutcomeRow.finished_at.desc())
            .limit(limit)
        )
        async with self._sessions() as session:
            return [(r.workflow_id, _outcome(r)) for r in await session.scalars(query)]

    async def for_enrollment(self, device_id: str, *, user_channels: bool = True) -> list[Hold]:
        """Holds of this enrollment and, with ``user_channels``, of its ``device_id:...``."""
        which: ColumnElement[bool] = RunHoldRow.enrollment_id == device_id
        if user_channels:
            which = or_(which, self._channels_of(device_id))
        async with self._sessions() as session:
            rows = await session.execute(
                select(*_HOLD_COLUMNS)
                .where(which)
                .order_by(RunHoldRow.enrollment_id, RunHoldRow.workflow_name, RunHoldRow.id)
            )
            return [_hold(row) for row in rows]

    async def held(self, workflow_name: str, ids: Sequence[str]) -> dict[str, Hold]:
        """Which of ``ids`` a run of ``workflow_name`` holds now (a dry run's look)."""
        found: dict[str, Hold] = {}
        async with self._sessions() as session:
            for part in _chunks(_unique(ids)):
                rows = await session.execute(
                    select(*_HOLD_COLUMNS).where(
                        RunHoldRow.workflow_name == workflow_name,
                        RunHoldRow.enrollment_id.in_(part),
                    )
                )
                for row in rows:
                    hold = _hold(row)
                    found.setdefault(hold.enrollment_id, hold)
        return found

    def _channels_of(self, device_id: str) -> ColumnElement[bool]:
        """IDs starting with ``device_id:``, exactly: IDs may hold ``%``, ``_`` or case.

        PostgreSQL: LIKE with the prefix escaped (case-sensitive there; its pattern-ops
        index serves it). SQLite's LIKE ignores ASCII case and skips the index, so there
        the prefix is a range, which its binary collation makes exact and indexed.
        """
        prefix = device_id + ":"
        if self._dialect == "postgresql":
            return RunHoldRow.enrollment_id.startswith(prefix, autoescape=True)
        return and_(
            RunHoldRow.enrollment_id >= prefix,
            RunHoldRow.enrollment_id < device_id + chr(ord(":") + 1),
        )

    async def of_run(
        self, workflow_id: str, limit: int = 1000, after: str | None = None
    ) -> list[Hold]:
        """A run's holds in enrollment ID order; pass the last ID seen as ``after``."""
        query = select(*_HOLD_COLUMNS).where(RunHoldRow.workflow_id == workflow_id)
        if after is not None:
            query = query.where(RunHoldRow.enrollment_id > after)
        async with self._sessions() as session:
            rows = await session.execute(
                query.order_by(RunHoldRow.enrollment_id, RunHoldRow.id).limit(limit)
            )
            return [_hold(row) for row in rows]

    async def count(self) -> int:
        async with self._sessions() as session:
            return int(await session.scalar(select(func.count(RunHoldRow.id))) or 0)
