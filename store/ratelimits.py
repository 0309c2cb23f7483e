"""Token buckets every API process shares, surviving restarts: a row per bucket.

A start takes its tokens from all its buckets in one short transaction that locks the
rows in one order, so the database makes concurrent takes from any number of processes
add up: never more granted than the buckets hold. That costs no extra service and works
the same on SQLite and PostgreSQL. A Temporal workflow per bucket would do it too, but
would serialise every start through that one workflow's updates and its history.

A row keeps the tokens left and the wall-clock time they were counted at (processes
share it; a monotonic clock is per process). Refill is continuous and computed on read:
``capacity / per_seconds`` tokens a second, never above capacity. A bucket never seen
is full. The bucket's shape comes from configuration at each call, so a changed
capacity applies at once.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Double, String, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.orm import Mapped, mapped_column

from store.db import Base

_NAME_CHARS = 255
# Absorbs float rounding in the refill: a bucket due exactly N tokens is not short by 1e-12.
_EPSILON = 1e-9


class RateBucketRow(Base):
    __tablename__ = "rate_buckets"
    name: Mapped[str] = mapped_column(String(_NAME_CHARS), primary_key=True)
    tokens: Mapped[float] = mapped_column(Double)
    # time.time() when ``tokens`` was counted
    updated: Mapped[float] = mapped_column(Double)


@dataclass(frozen=True)
class Bucket:
    """Holds up to ``capacity`` tokens and refills ``capacity`` every ``per_seconds``."""

    name: str
    capacity: int
    per_seconds: float

    def __post_init__(self) -> None:
        if not self.name or len(self.name) > _NAME_CHARS:
            raise ValueError(f"bucket name must be 1-{_NAME_CHARS} characters")
        if self.capacity < 1:
            raise ValueError(f"bucket {self.name}: capacity must be at least 1")
        if not self.per_seconds > 0 or math.isinf(self.per_seconds):
            raise ValueError(f"bucket {self.name}: per_seconds must be a positive number")

    def available(self, tokens: float, updated: float, now: float) -> float:
        """Tokens held at ``now`` given ``tokens`` counted at ``updated``."""
        elapsed = max(0.0, now - updated)  # another process's clock may run a little ahead
        return min(float(self.capacity), tokens + elapsed * self.capacity / self.per_seconds)

    def wait_for(self, tokens: int, available: float) -> float:
        """Seconds until ``tokens`` are there: never, when more than the bucket holds."""
        if tokens > self.capacity:
            return math.inf
        return max(0.0, (tokens - available) * self.per_seconds / self.capacity)


@dataclass(frozen=True)
class Verdict:
    """A take's outcome.

    Refused: ``bucket`` is the first bucket (in the caller's order) short of tokens and
    ``retry_after`` the seconds until every bucket holds enough, ``math.inf`` when a
    bucket can never hold that many. ``available`` is what each bucket holds once the
    call is done: after the take when allowed, unchanged otherwise.
    """

    allowed: bool
    bucket: str | None
    retry_after: float
    available: dict[str, float]


def _check(buckets: Sequence[Bucket], tokens: int) -> None:
    if tokens < 0:
        raise ValueError(f"cannot take {tokens} tokens")
    names = [b.name for b in buckets]
    if len(set(names)) != len(names):
        raise ValueError(f"a bucket is named twice: {names}")


def _judge(buckets: Sequence[Bucket], tokens: int, available: dict[str, float]) -> Verdict:
    short = [b for b in buckets if available[b.name] + _EPSILON < tokens]
    if not short:
        return Verdict(True, None, 0.0, available)
    wait = max(b.wait_for(tokens, available[b.name]) for b in short)
    return Verdict(False, short[0].name, wait, available)


class RateLimits:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._dialect = engine.dialect.name
        if self._dialect not in ("sqlite", "postgresql"):
            raise ValueError(f"rate limits need SQLite or PostgreSQL, not {self._dialect}")

    async def take(
        self, buckets: Sequence[Bucket], tokens: int, now: float | None = None
    ) -> Verdict:
        """Take ``tokens`` from every bucket, or from none of them."""
        _check(buckets, tokens)
        now = time.time() if now is None else now
        if not buckets:
            return Verdict(True, None, 0.0, {})
        async with self._engine.begin() as conn:
            rows = await self._lock(conn, buckets, now)
            available = {b.name: b.available(*rows[b.name], now) for b in buckets}
            verdict = _judge(buckets, tokens, available)
            if not verdict.allowed:
                return verdict
            left = {name: max(0.0, held - tokens) for name, held in available.items()}
            await self._store(conn, left, rows, now)
        return Verdict(True, None, 0.0, left)

    async def peek(
        self, buckets: Sequence[Bucket], tokens: int, now: float | None = None
    ) -> Verdict:
        """What ``take`` would answer now, changing nothing (a dry run)."""
        _check(buckets, tokens)
        now = time.time() if now is None else now
        names = [b.name for b in buckets]
        async with self._engine.connect() as conn:
            found = await conn.execute(
                select(RateBucketRow.name, RateBucketRow.tokens, RateBucketRow.updated).where(
                    RateBucketRow.name.in_(names)
                )
            )
            rows = {row.name: (row.tokens, row.updated) for row in found}
        available = {
            b.name: b.available(*rows[b.name], now) if b.name in rows else float(b.capacity)
            for b in buckets
        }
        return _judge(buckets, tokens, available)

    async def refund(
        self, buckets: Sequence[Bucket], tokens: int, now: float | None = None
    ) -> None:
        """Give back tokens a failed start took, each bucket capped at its capacity."""
        _check(buckets, tokens)
        now = time.time() if now is None else now
        if not buckets:
            return
        async with self._engine.begin() as conn:
            rows = await self._lock(conn, buckets, now)
            refilled = {
                b.name: min(float(b.capacity), b.available(*rows[b.name], now) + tokens)
                for b in buckets
            }
            await self._store(conn, refilled, rows, now)

    async def _lock(
        self, conn: AsyncConnection, buckets: Sequence[Bucket], now: float
    ) -> dict[str, tuple[float, float]]:
        """Lock the buckets' rows in name order, adding missing ones full; (tokens, updated).

        The insert comes first on both databases. On SQLite it is the transaction's
        first statement and a write, so it takes the database's write lock (waiting
        for it, with the busy timeout) before anything is read: two processes never
        read the same count. On PostgreSQL the rows then exist to be locked with
        ``FOR UPDATE``; one order means concurrent takes wait, never deadlock.
        """
        ordered = sorted(buckets, key=lambda b: b.name)
        dialect: Any = postgresql if self._dialect == "postgresql" else sqlite
        await conn.execute(
            dialect.insert(RateBucketRow)
            .values(
                [{"name": b.name, "tokens": float(b.capacity), "updated": now} for b in ordered]
            )
            .on_conflict_do_nothing(index_elements=["name"])
        )
        found = await conn.execute(
            select(RateBucketRow.name, RateBucketRow.tokens, RateBucketRow.updated)
            .where(RateBucketRow.name.in_([b.name for b in ordered]))
            .order_by(RateBucketRow.name)
            .with_for_update()
        )
        return {row.name: (row.tokens, row.updated) for row in found}

    @staticmethod
    async def _store(
        conn: AsyncConnection,
        tokens: dict[str, float],
        rows: dict[str, tuple[float, float]],
        now: float,
    ) -> None:
        for name in sorted(tokens):
            # never move a row's clock back: refill since then was already counted
            updated = max(now, rows[name][1])
            await conn.execute(
                update(RateBucketRow)
                .where(RateBucketRow.name == name)
                .values(tokens=tokens[name], updated=updated)
            )
