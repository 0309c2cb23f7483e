"""The audit log: who changed what, or read which secret, and whether it was allowed.

Rows form a hash chain: each row's hash covers all of its columns, the previous row's
hash and a digest of its full target list, so an edited, deleted or truncated row (or
an edited ``audit_targets`` row) shows up in ``verify``. Appends from every API process
are serialised by one head row that each append updates first: that takes the write
lock at once on SQLite and a row lock on PostgreSQL, so ``seq`` is handed out in commit
order and the chain stays linear. A rolled-back append rolls the head back with it.

The chain proves integrity against edits made through the database, not against
someone who rewrites the head and every later row too; copying the head's hash
elsewhere from time to time anchors it against that.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    Index,
    Integer,
    Row,
    String,
    insert,
    select,
    tuple_,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.orm import Mapped, mapped_column

from store.db import Base

GENESIS = "0" * 64  # the prev_hash of the first row
REDACTED = "[redacted]"
SECRET_WORDS = (
    "pin",
    "password",
    "passcode",
    "key",
    "secret",
    "token",
    "prk",
    "challenge",
    "recovery",
    "unlock",
)

TARGETS_SHOWN = 100  # targets kept on the row itself; all of them go to audit_targets
TARGET_BATCH = 1000  # audit_targets rows per INSERT: a 10,000-device start takes ten
TARGET_PAGE = 5000  # audit_targets rows per SELECT while verifying
MAX_STRING = 1000  # characters of one parameter value
MAX_ITEMS = 100  # elements of one parameter list, or keys of one mapping
MAX_DEPTH = 8

_COLUMN_LIMITS = {"user": 255, "role": 64, "action": 128, "source": 255, "outcome": 64}
_ID_LIMIT = 255


class AuditLogRow(Base):
    __tablename__ = "audit_log"
    __table_args__ = (
        Index("ix_audit_log_user", "user", "seq"),
        Index("ix_audit_log_action", "action", "seq"),
        Index("ix_audit_log_time", "time"),
    )
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    user: Mapped[str] = mapped_column(String(_COLUMN_LIMITS["user"]))
    role: Mapped[str] = mapped_column(String(_COLUMN_LIMITS["role"]))
    action: Mapped[str] = mapped_column(String(_COLUMN_LIMITS["action"]))
    targets: Mapped[list[str]] = mapped_column(JSON)
    target_count: Mapped[int] = mapped_column(Integer)
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    source: Mapped[str] = mapped_column(String(_COLUMN_LIMITS["source"]))
    outcome: Mapped[str] = mapped_column(String(_COLUMN_LIMITS["outcome"]))
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditTargetRow(Base):
    """Every target of every row: "what was done to this device" for starts of any size."""

    __tablename__ = "audit_targets"
    __table_args__ = (Index("ix_audit_targets_enrollment", "enrollment_id", "seq"),)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    enrollment_id: Mapped[str] = mapped_column(String(_ID_LIMIT), primary_key=True)


class AuditHeadRow(Base):
    """The chain's newest seq and hash; one row, locked by every append."""

    __tablename__ = "audit_head"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(Integer)
    hash: Mapped[str] = mapped_column(String(64))


@dataclass(frozen=True)
class AuditEntry:
    user: str
    role: str
    action: str
    targets: Sequence[str] = ()
    params: Mapping[str, Any] = field(default_factory=dict)
    source: str = ""
    outcome: str = "ok"


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    checked: int  # rows found intact before the first problem
    first_bad_seq: int | None
    problem: str  # "" when ok


Page = tuple[list[dict[str, Any]], int | None]


def canonical(value: Any) -> str:
    """The one JSON text of a value that is hashed: sorted keys, no whitespace."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _clean_text(value: str) -> str:
    """Text both databases store as given: no NUL, no lone surrogates."""
    return value.replace("\x00", "").encode("utf-8", "replace").decode("utf-8")


def _cap(value: str, limit: int) -> str:
    value = _clean_text(value)
    if len(value) <= limit:
        return value
    suffix = f"...[+{len(value) - limit} chars]"
    return value[: max(limit - len(suffix), 0)] + suffix


def _is_secret(key: str) -> bool:
    lowered = key.lower()
    return any(word in lowered for word in SECRET_WORDS)


def _redact(value: Any, depth: int) -> Any:
    if depth > MAX_DEPTH:
        return "[too deep]"
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        items = list(value.items())
        for key, item in items[:MAX_ITEMS]:
            name = _cap(str(key), MAX_STRING)
            out[name] = REDACTED if _is_secret(name) else _redact(item, depth + 1)
        if len(items) > MAX_ITEMS:
            out["[more keys]"] = len(items) - MAX_ITEMS
        return out
    if isinstance(value, list | tuple | set | frozenset):
        seq = list(value)
        shown = [_redact(item, depth + 1) for item in seq[:MAX_ITEMS]]
        if len(seq) > MAX_ITEMS:
            shown.append(f"[+{len(seq) - MAX_ITEMS} more]")
        return shown
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return f"[{len(bytes(value))} bytes]"
    return _cap(str(value), MAX_STRING)


def redact(params: Mapping[str, Any]) -> dict[str, Any]:
    """Parameters fit for the log: secret-looking keys' values hidden, sizes capped.

    A key is secret when it contains any of ``SECRET_WORDS`` in any case (so
    ``NewPIN``, ``api_token`` and ``RecoveryKey`` all are); its whole value goes,
    nested or not. The result is plain JSON that reads back from either database
    exactly as written, which the row's hash relies on.
    """
    result = _redact(params, 0)
    return result if isinstance(result, dict) else {}


def _iso(value: datetime) -> str:
    """UTC with microseconds; SQLite hands back naive datetimes for UTC columns."""
    aware = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return aware.isoformat(timespec="microseconds")


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def targets_digest(sorted_ids: Sequence[str]) -> str:
    return hashlib.sha256(canonical(list(sorted_ids)).encode()).hexdigest()


def row_hash(fields: Mapping[str, Any], digest: str) -> str:
    """The hash of a row: its columns (time as ISO text), prev_hash, all targets' digest."""
    return hashlib.sha256(canonical({**fields, "targets_digest": digest}).encode()).hexdigest()


_HASHED = (
    "seq",
    "time",
    "user",
    "role",
    "action",
    "targets",
    "target_count",
    "params",
    "source",
    "outcome",
    "prev_hash",
)
_COLUMNS = (*(getattr(AuditLogRow, name) for name in _HASHED), AuditLogRow.hash)


def _fields(row: Row[Any]) -> dict[str, Any]:
    fields = {name: getattr(row, name) for name in _HASHED}
    fields["time"] = _iso(fields["time"])
    return fields


def _chunks(ids: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(ids), size):
        yield ids[start : start + size]


class AuditLog:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        if engine.dialect.name not in ("sqlite", "postgresql"):
            raise ValueError(f"the audit log needs SQLite or PostgreSQL, not {engine.dialect.name}")

    async def record(self, entry: AuditEntry, conn: AsyncConnection | None = None) -> int:
        """Append one entry; return its seq.

        With ``conn`` the row is written in the caller's open transaction, so the change
        and its audit row commit or roll back together. The head stays locked until that
        transaction ends and every other append waits for it: record as the last
        statement before committing. (A session's connection is
        ``await session.connection()``.)
        """
        if conn is not None:
            return await self._append(conn, entry)
        async with self._engine.begin() as own:
            return await self._append(own, entry)

    async def _append(self, conn: AsyncConnection, entry: AuditEntry) -> int:
        # everything but seq, time and prev_hash is prepared before the lock is taken
        raw = [entry.targets] if isinstance(entry.targets, str) else entry.targets
        ids = list(dict.fromkeys(_cap(str(i), _ID_LIMIT) for i in raw))
        digest = targets_digest(sorted(ids))
        fields: dict[str, Any] = {
            "user": _cap(entry.user, _COLUMN_LIMITS["user"]),
            "role": _cap(entry.role, _COLUMN_LIMITS["role"]),
            "action": _cap(entry.action, _COLUMN_LIMITS["action"]),
            "targets": ids[:TARGETS_SHOWN],
            "target_count": len(ids),
            "params": redact(entry.params),
            "source": _cap(entry.source, _COLUMN_LIMITS["source"]),
            "outcome": _cap(entry.outcome, _COLUMN_LIMITS["outcome"]),
        }

        seq, prev_hash = await self._advance_head(conn)
        now = datetime.now(UTC)  # taken under the lock, so time follows seq
        fields.update(seq=seq, time=_iso(now), prev_hash=prev_hash)
        chained = row_hash(fields, digest)

        await conn.execute(update(AuditHeadRow).where(AuditHeadRow.id == 1).values(hash=chained))
        await conn.execute(insert(AuditLogRow).values({**fields, "time": now, "hash": chained}))
        for chunk in _chunks(ids, TARGET_BATCH):
            await conn.execute(
                insert(AuditTargetRow), [{"seq": seq, "enrollment_id": i} for i in chunk]
            )
        return seq

    async def _advance_head(self, conn: AsyncConnection) -> tuple[int, str]:
        """Take the chain's next seq and the previous hash, write-locking the head.

        The UPDATE comes first: a transaction that only read before writing could fail
        to upgrade its lock on SQLite. The head row is made by the first append ever.
        """
        bump = (
            update(AuditHeadRow)
            .where(AuditHeadRow.id == 1)
            .values(seq=AuditHeadRow.seq + 1)
            .returning(AuditHeadRow.seq, AuditHeadRow.hash)
        )
        head = (await conn.execute(bump)).first()
        if head is None:
            dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
            await conn.execute(
                dialect.insert(AuditHeadRow)
                .values(id=1, seq=0, hash=GENESIS)
                .on_conflict_do_nothing(index_elements=["id"])
            )
            head = (await conn.execute(bump)).one()
        return int(head.seq), str(head.hash)

    async def list(
        self,
        *,
        user: str | None = None,
        action: str | None = None,
        enrollment: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        before_seq: int | None = None,
        limit: int = 100,
    ) -> Page:
        """Entries newest first, and the ``before_seq`` of the next page (None at the end).

        ``since`` is inclusive and ``until`` exclusive; naive datetimes are taken as UTC.
        ``enrollment`` finds every entry that targeted that ID, however many others it had.
        ``limit`` is held to 1..1000.
        """
        limit = max(1, min(limit, 1000))
        query = select(*_COLUMNS)
        if enrollment is not None:
            query = query.join(AuditTargetRow, AuditTargetRow.seq == AuditLogRow.seq).where(
                AuditTargetRow.enrollment_id == enrollment
            )
        if user is not None:
            query = query.where(AuditLogRow.user == user)
        if action is not None:
            query = query.where(AuditLogRow.action == action)
        if since is not None:
            query = query.where(AuditLogRow.time >= _utc(since))
        if until is not None:
            query = query.where(AuditLogRow.time < _utc(until))
        if before_seq is not None:
            query = query.where(AuditLogRow.seq < before_seq)
        query = query.order_by(AuditLogRow.seq.desc()).limit(limit + 1)
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        entries = [{**_fields(row), "hash": row.hash} for row in rows[:limit]]
        return entries, (entries[-1]["seq"] if len(rows) > limit else None)

    async def verify(self, *, page_size: int = 1000) -> VerifyResult:
        """Walk the chain in seq order, ``page_size`` rows (and their targets) at a time.

        The head is read first and the walk stops at its seq, so rows appended while it
        runs are left for the next verification rather than mistaken for tampering.
        """
        walk = _Walk()
        async with self._engine.connect() as conn:
            head = (await conn.execute(select(AuditHeadRow.seq, AuditHeadRow.hash))).first()
            while True:
                query = select(*_COLUMNS).where(AuditLogRow.seq >= walk.expected)
                if head is not None:
                    query = query.where(AuditLogRow.seq <= head.seq)
                rows = (await conn.execute(query.order_by(AuditLogRow.seq).limit(page_size))).all()
                if not rows:
                    break
                async with aclosing(_targets(conn, rows[0].seq, rows[-1].seq)) as targets:
                    failure = await walk.page(rows, _Targets(targets))
                if failure is not None:
                    return failure
        last = walk.expected - 1
        if head is None:
            if last:
                return walk.bad(1, "the chain head is missing")
            return VerifyResult(True, 0, None, "")
        if head.seq != last or head.hash != walk.prev:
            return walk.bad(
                last + 1, f"the chain head is at row {head.seq} but the log ends at row {last}"
            )
        return VerifyResult(True, walk.checked, None, "")


class _Walk:
    """Where a verification has got to: the seq and prev_hash the next row must have."""

    def __init__(self) -> None:
        self.expected = 1
        self.prev = GENESIS
        self.checked = 0

    def bad(self, seq: int, problem: str) -> VerifyResult:
        return VerifyResult(False, self.checked, seq, problem)

    async def page(self, rows: Sequence[Row[Any]], targets: _Targets) -> VerifyResult | None:
        for row in rows:
            if row.seq != self.expected:
                return self.bad(self.expected, f"row {self.expected} is missing")
            if row.prev_hash != self.prev:
                return self.bad(row.seq, f"row {row.seq} does not follow row {row.seq - 1}")
            digest = targets_digest(await targets.of(row.seq))
            if row_hash(_fields(row), digest) != row.hash:
                return self.bad(row.seq, f"row {row.seq} or its targets were altered")
            self.prev = row.hash
            self.expected += 1
            self.checked += 1
        return None


async def _targets(
    conn: AsyncConnection, first: int, last: int
) -> AsyncGenerator[tuple[int, str], None]:
    """(seq, enrollment ID) of rows ``first``..``last``, in seq order, paged by key."""
    after: tuple[int, str] | None = None
    while True:
        query = select(AuditTargetRow.seq, AuditTargetRow.enrollment_id).where(
            AuditTargetRow.seq.between(first, last)
        )
        if after is not None:
            query = query.where(
                tuple_(AuditTargetRow.seq, AuditTargetRow.enrollment_id) > tuple_(*after)
            )
        query = query.order_by(AuditTargetRow.seq, AuditTargetRow.enrollment_id)
        rows = (await conn.execute(query.limit(TARGET_PAGE))).all()
        for seq, enrollment_id in rows:
            yield seq, enrollment_id
        if len(rows) < TARGET_PAGE:
            return
        after = (rows[-1].seq, rows[-1].enrollment_id)


class _Targets:
    """Each row's full target list, sorted, taken from one seq-ordered stream."""

    def __init__(self, stream: AsyncIterator[tuple[int, str]]) -> None:
        self._stream = stream
        self._pending: tuple[int, str] | None = None

    async def of(self, seq: int) -> list[str]:
        ids: list[str] = []
        while True:
            item = self._pending
            self._pending = None
            if item is None:
                item = await anext(self._stream, None)
                if item is None:
                    break
            if item[0] > seq:
                self._pending = item
                break
            if item[0] == seq:
                ids.append(item[1])
            # a smaller seq belongs to no row in the chain: that row's gap is reported
        return sorted(ids)
