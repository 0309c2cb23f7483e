"""Shared token buckets on SQLite and PostgreSQL: exact refill, all or nothing, no overdraft."""

from __future__ import annotations

import asyncio
import math
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from store.db import open_engine
from store.ratelimits import Bucket, RateLimits

ROOT = Path(__file__).resolve().parent.parent
T0 = 1_700_000_000.0


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    engine = await open_engine(db_url)
    yield engine
    await engine.dispose()


@pytest.fixture
def limits(engine: AsyncEngine) -> RateLimits:
    return RateLimits(engine)


async def rows(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(text("SELECT COUNT(*) FROM rate_buckets")) or 0)


async def test_a_bucket_refills_continuously_up_to_its_capacity(limits: RateLimits) -> None:
    bucket = Bucket("starts", capacity=10, per_seconds=60)  # one token every 6 s
    full = await limits.take([bucket], 10, now=T0)
    assert (full.allowed, full.bucket, full.retry_after) == (True, None, 0.0)
    assert full.available == {"starts": 0.0}
    half = await limits.take([bucket], 1, now=T0 + 3)
    assert (half.allowed, half.bucket) == (False, "starts")
    assert half.available == {"starts": 0.5}
    assert half.retry_after == 3.0
    one = await limits.take([bucket], 1, now=T0 + 6)
    assert one.allowed and one.available == {"starts": 0.0}
    # an hour idle refills to capacity, not beyond
    idle = await limits.peek([bucket], 10, now=T0 + 3600)
    assert idle.allowed and idle.available == {"starts": 10.0}
    assert not (await limits.peek([bucket], 11, now=T0 + 3600)).allowed
    # a clock behind the stored time refills nothing and does not move the row back
    assert (await limits.take([bucket], 4, now=T0 + 3600)).available == {"starts": 6.0}
    behind = await limits.take([bucket], 6, now=T0 + 3590)
    assert behind.allowed and behind.available == {"starts": 0.0}
    assert (await limits.peek([bucket], 1, now=T0 + 3600)).available == {"starts": 0.0}


async def test_a_bucket_never_seen_starts_full(limits: RateLimits, engine: AsyncEngine) -> None:
    bucket = Bucket("fresh", capacity=3, per_seconds=1)
    assert (await limits.peek([bucket], 3)).available == {"fresh": 3.0}
    assert await rows(engine) == 0  # a dry run writes nothing
    assert (await limits.take([bucket], 3)).allowed
    assert await rows(engine) == 1


async def test_a_take_is_all_or_nothing_across_buckets(limits: RateLimits) -> None:
    wide = Bucket("global", capacity=5, per_seconds=100)
    narrow = Bucket("user:alice", capacity=2, per_seconds=100)
    first = await limits.take([wide, narrow], 2, now=T0)
    assert first.allowed and first.available == {"global": 3.0, "user:alice": 0.0}
    refused = await limits.take([wide, narrow], 1, now=T0)
    assert (refused.allowed, refused.bucket) == (False, "user:alice")
    assert refused.available == {"global": 3.0, "user:alice": 0.0}
    # nothing was taken from the bucket that had enough
    assert (await limits.peek([wide], 3, now=T0)).available == {"global": 3.0}
    assert (await limits.take([wide], 3, now=T0)).allowed
    assert not (await limits.take([wide], 1, now=T0)).allowed


async def test_retry_after_is_exact_and_names_the_first_short_bucket(
    limits: RateLimits,
) -> None:
    slow = Bucket("slow", capacity=4, per_seconds=20)  # 0.2 tokens a second
    fast = Bucket("fast", capacity=4, per_seconds=4)  # 1 token a second
    assert (await limits.take([fast, slow], 4, now=T0)).allowed
    verdict = await limits.take([fast, slow], 3, now=T0 + 1)
    # both are short: the first in the caller's order is named, the wait is the longest
    assert (verdict.allowed, verdict.bucket) == (False, "fast")
    assert verdict.available == {"fast": 1.0, "slow": 0.2}
    assert verdict.retry_after == pytest.approx(14.0, abs=1e-9)  # (3 - 0.2) / 0.2
    assert not (await limits.take([fast, slow], 3, now=T0 + 1 + 13.9)).allowed
    assert (await limits.take([fast, slow], 3, now=T0 + 1 + 14.0)).allowed
    short = await limits.peek([slow], 2, now=T0 + 15 + 5)
    assert short.bucket == "slow"
    assert short.retry_after == pytest.approx(5.0, abs=1e-9)


async def test_more_tokens_than_the_capacity_can_never_be_taken(limits: RateLimits) -> None:
    bucket = Bucket("small", capacity=2, per_seconds=1)
    verdict = await limits.take([bucket], 3, now=T0)
    assert (verdict.allowed, verdict.bucket, verdict.retry_after) == (False, "small", math.inf)
    assert verdict.available == {"small": 2.0}
    assert (await limits.take([bucket], 2, now=T0)).allowed


async def test_capacity_one_per_hour_refuses_a_second_take(limits: RateLimits) -> None:
    bucket = Bucket("wipe", capacity=1, per_seconds=3600)
    assert (await limits.take([bucket], 1)).allowed
    second = await limits.take([bucket], 1)
    assert (second.allowed, second.bucket) == (False, "wipe")
    assert 3590 < second.retry_after <= 3600


async def test_a_refund_gives_tokens_back_up_to_capacity(limits: RateLimits) -> None:
    a = Bucket("a", capacity=5, per_seconds=1000)
    b = Bucket("b", capacity=3, per_seconds=1000)
    assert (await limits.take([a, b], 3, now=T0)).available == {"a": 2.0, "b": 0.0}
    assert (await limits.take([a], 1, now=T0)).available == {"a": 1.0}
    await limits.refund([a, b], 3, now=T0)
    assert (await limits.peek([a, b], 0, now=T0)).available == {"a": 4.0, "b": 3.0}
    await limits.refund([a, b], 3, now=T0)  # capped, and a bucket never seen stays full
    await limits.refund([Bucket("never", 2, 1)], 5, now=T0)
    after = await limits.peek([a, b, Bucket("never", 2, 1)], 0, now=T0)
    assert after.available == {"a": 5.0, "b": 3.0, "never": 2.0}


def test_buckets_and_takes_are_checked() -> None:
    for bad in (("", 1, 1.0), ("x", 0, 1.0), ("x", 1, 0.0), ("x", 1, math.inf), ("x" * 256, 1, 1)):
        with pytest.raises(ValueError):
            Bucket(*bad)


async def test_bad_takes_are_refused(limits: RateLimits) -> None:
    with pytest.raises(ValueError, match="named twice"):
        await limits.take([Bucket("x", 1, 1), Bucket("x", 2, 1)], 1)
    with pytest.raises(ValueError, match="cannot take -1"):
        await limits.take([Bucket("x", 1, 1)], -1)
    assert (await limits.take([], 5)).allowed


async def test_two_engines_taking_at_once_never_overdraw(db_url: str) -> None:
    """Two API processes' engines, many takes each, buckets listed in either order."""
    engines = [await open_engine(db_url) for _ in range(2)]
    try:
        narrow, wide = Bucket("narrow", 17, 86400), Bucket("wide", 40, 86400)
        takers = [RateLimits(e) for e in engines]
        verdicts = await asyncio.gather(
            *(
                takers[i % 2].take([narrow, wide] if i % 3 else [wide, narrow], 1, now=T0)
                for i in range(60)
            )
        )
        assert sum(v.allowed for v in verdicts) == 17
        assert {v.bucket for v in verdicts if not v.allowed} == {"narrow"}
        left = await takers[0].peek([narrow, wide], 0, now=T0)
        assert left.available == {"narrow": 0.0, "wide": 23.0}
    finally:
        for engine in engines:
            await engine.dispose()


CHILD = """
import asyncio, sys
from store.db import open_engine
from store.ratelimits import Bucket, RateLimits

async def main(url, capacity, takes, now):
    engine = await open_engine(url)
    limits = RateLimits(engine)
    bucket = Bucket("shared", capacity, 86400.0)
    print("ready", flush=True)
    sys.stdin.readline()
    granted = 0
    for start in range(0, takes, 8):
        batch = [limits.take([bucket], 1, now=now) for _ in range(min(8, takes - start))]
        granted += sum(v.allowed for v in await asyncio.gather(*batch))
    await engine.dispose()
    print(granted, flush=True)

asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])))
"""


async def test_separate_os_processes_grant_exactly_the_capacity(
    db_url: str, limits: RateLimits
) -> None:
    """Three processes and this one hammer one bucket: exactly ``capacity`` takes succeed."""
    capacity, takes = 60, 40
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    children = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            CHILD,
            db_url,
            str(capacity),
            str(takes),
            str(T0),
            cwd=ROOT,
            env=env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(3)
    ]
    try:
        for child in children:
            assert child.stdout is not None
            line = await asyncio.wait_for(child.stdout.readline(), 60)
            assert line == b"ready\n", line
        for child in children:
            assert child.stdin is not None
            child.stdin.write(b"go\n")
            await child.stdin.drain()
        bucket = Bucket("shared", capacity, 86400.0)
        mine = 0
        for _ in range(takes // 8):
            verdicts = await asyncio.gather(*(limits.take([bucket], 1, now=T0) for _ in range(8)))
            mine += sum(v.allowed for v in verdicts)
        results = [await asyncio.wait_for(child.communicate(), 120) for child in children]
    finally:
        for child in children:
            if child.returncode is None:
                child.kill()
                await child.wait()
    granted = []
    for child, (out, err) in zip(children, results, strict=True):
        assert child.returncode == 0, err.decode()
        granted.append(int(out))
    assert mine + sum(granted) == capacity, (mine, granted)
    assert (await limits.peek([bucket], 1, now=T0)).available == {"shared": 0.0}
    # the other processes took too: the work really was shared
    assert sum(granted) > 0
