"""Run holds on SQLite and PostgreSQL: one run per (workflow, enrollment), whatever races."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import inspect, text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.testing import ActivityEnvironment

from activities.holds import HoldActivities
from activities.models import ReleaseHolds
from store.db import open_engine
from store.holds import Hold, HoldStore


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    engine = await open_engine(db_url)
    yield engine
    await engine.dispose()


@pytest.fixture
def holds(engine: AsyncEngine) -> HoldStore:
    return HoldStore(engine)


def run(n: int, instance: str = "i1", name: str = "wf") -> str:
    return f"{name}/fleet/{instance}/{n}"


async def claim(
    holds: HoldStore, ids: list[str], n: int = 0, instance: str = "i1", name: str = "wf"
) -> dict[str, Hold]:
    """An exclusive claim by chunk ``n`` of ``instance``."""
    return await holds.claim(
        name, ids, workflow_id=run(n, instance, name), instance_id=instance, exclusive=True
    )


async def test_a_claimed_enrollment_is_refused_naming_the_run_that_holds_it(
    holds: HoldStore,
) -> None:
    assert await claim(holds, ["A", "B"]) == {}
    refused = await claim(holds, ["B", "C"], instance="i2")
    assert list(refused) == ["B"]  # C was free: claimed, each ID on its own
    blocker = refused["B"]
    assert (blocker.workflow_name, blocker.enrollment_id) == ("wf", "B")
    assert (blocker.workflow_id, blocker.instance_id) == (run(0), "i1")
    assert blocker.created_at.tzinfo is not None
    # claiming again what the run holds succeeds and adds nothing (a retried activity)
    assert await claim(holds, ["A", "B", "A"]) == {}
    assert await holds.count() == 3
    # another workflow holds the same enrollment beside it
    assert await claim(holds, ["A"], name="other") == {}
    beside = [h.workflow_id for h in await holds.for_enrollment("A")]
    assert beside == [run(0, name="other"), run(0)]  # by enrollment, then workflow name


async def test_simultaneous_runs_hold_the_same_enrollments_side_by_side(
    holds: HoldStore,
) -> None:
    for instance in ("i1", "i2"):
        refused = await holds.claim(
            "wf", ["A", "B"], workflow_id=run(0, instance), instance_id=instance, exclusive=False
        )
        assert refused == {}
    assert {h.instance_id for h in await holds.for_enrollment("A")} == {"i1", "i2"}
    # within one instance an enrollment still belongs to one of its runs
    refused = await holds.claim(
        "wf", ["B"], workflow_id=run(1, "i2"), instance_id="i2", exclusive=False
    )
    assert refused["B"].workflow_id == run(0, "i2")
    assert await holds.count() == 4


async def test_release_by_ids_and_all_is_repeatable(holds: HoldStore) -> None:
    ids = [f"D{i}" for i in range(10)]
    await claim(holds, ids)
    await claim(holds, ["X"], n=1)
    assert await holds.release(run(0), ["D0", "D1", "X", "unknown"]) == 2  # X is not its own
    assert await holds.release(run(0), ["D0", "D1"]) == 0
    assert await holds.release(run(0), []) == 0
    assert [h.enrollment_id for h in await holds.of_run(run(0))] == ids[2:]
    assert await holds.release(run(0)) == 8
    assert await holds.release(run(0)) == 0
    assert [h.enrollment_id for h in await holds.of_run(run(1))] == ["X"]
    # released enrollments are free for the next run
    assert await claim(holds, ids, n=2, instance="i2") == {}


async def test_the_release_activity_drops_the_runs_holds(holds: HoldStore) -> None:
    await claim(holds, ["A", "B", "C"])
    acts = HoldActivities(holds)
    env = ActivityEnvironment()
    assert await env.run(acts.release, ReleaseHolds(workflow_id=run(0), enrollment_ids=["A"])) == 1
    assert await env.run(acts.release, ReleaseHolds(workflow_id=run(0))) == 2
    assert await env.run(acts.release, ReleaseHolds(workflow_id=run(0))) == 0
    assert await holds.count() == 0


async def test_take_over_moves_only_the_stale_runs_holds(holds: HoldStore) -> None:
    await claim(holds, ["A", "B"])
    await claim(holds, ["C"], n=1)
    moved = await holds.take_over(
        run(0), "wf", ["B", "A", "C", "D"], workflow_id=run(0, "i2"), instance_id="i2"
    )
    assert moved == ["A", "B"]  # C is another run's, D nobody's
    assert [(h.enrollment_id, h.instance_id) for h in await holds.of_run(run(0, "i2"))] == [
        ("A", "i2"),
        ("B", "i2"),
    ]
    # the new run now owns them: its claim succeeds, the stale run's release finds nothing
    assert await claim(holds, ["A", "B"], instance="i2") == {}
    assert await holds.release(run(0)) == 0
    # the same stale run once more: nothing left to move
    again = await holds.take_over(run(0), "wf", ["A"], workflow_id=run(0, "i3"), instance_id="i3")
    assert again == []
    # a take-over names the workflow too: another workflow's holds of that run stay
    assert await holds.take_over(run(1), "other", ["C"], workflow_id="x", instance_id="x") == []


async def test_two_processes_taking_over_one_stale_run_never_both_win(db_url: str) -> None:
    engines = [await open_engine(db_url) for _ in range(2)]
    stores = [HoldStore(e) for e in engines]
    ids = [f"D{i:03d}" for i in range(200)]
    await claim(stores[0], ids, instance="old")
    takers = [(stores[n % 2], run(0, f"new{n}"), f"new{n}") for n in range(6)]
    moved = await asyncio.gather(
        *(
            s.take_over(
                run(0, "old"), "wf", random.sample(ids, len(ids)), workflow_id=w, instance_id=i
            )
            for s, w, i in takers
        )
    )
    won = [set(m) for m in moved]
    assert sum(len(w) for w in won) == len(ids)  # every hold moved exactly once
    assert set().union(*won) == set(ids)
    for (_, workflow_id, _), mine in zip(takers, won, strict=True):
        assert {h.enrollment_id for h in await stores[1].of_run(workflow_id)} == mine
    await asyncio.gather(*(e.dispose() for e in engines))


async def test_concurrent_claims_from_two_processes_never_share_an_enrollment(
    db_url: str,
) -> None:
    """Eight runs on two engines (two API processes) claim overlapping sets at once."""
    engines = [await open_engine(db_url) for _ in range(2)]
    stores = [HoldStore(e) for e in engines]
    pool = [f"ENR-{i:04d}" for i in range(600)]
    rng = random.Random(7)
    asks: list[list[str]] = []
    for n in range(8):
        window = pool[n * 40 : n * 40 + 300]
        asks.append(rng.sample(window, len(window)))  # every order, so waits could cross

    refused = await asyncio.gather(
        *(claim(stores[n % 2], asks[n], n=n, instance=f"i{n}") for n in range(8))
    )
    won = [set(asks[n]) - set(refused[n]) for n in range(8)]
    owner: dict[str, int] = {}
    for n, mine in enumerate(won):
        for enrollment_id in mine:
            assert enrollment_id not in owner, f"{enrollment_id}: runs {owner[enrollment_id]}, {n}"
            owner[enrollment_id] = n
    asked = set().union(*(set(a) for a in asks))
    assert set(owner) == asked  # nothing released, so every asked ID went to someone
    for n in range(8):
        stored = {h.enrollment_id for h in await stores[(n + 1) % 2].of_run(run(n, f"i{n}"))}
        assert stored == won[n]
        for enrollment_id, blocker in refused[n].items():
            holder = owner[enrollment_id]
            assert blocker.workflow_id == run(holder, f"i{holder}")
    assert await stores[0].count() == len(asked)
    await asyncio.gather(*(e.dispose() for e in engines))


async def test_a_chunk_of_a_thousand_is_claimed_and_paged(holds: HoldStore) -> None:
    ids = [f"{i:08X}-0000-0000-0000-{i:012X}" for i in range(1000)]
    refused = await claim(holds, ids)
    assert refused == {}
    assert await holds.count() == 1000
    pages: list[list[str]] = []
    after: str | None = None
    while page := await holds.of_run(run(0), limit=400, after=after):
        pages.append([h.enrollment_id for h in page])
        after = page[-1].enrollment_id
    assert [len(p) for p in pages] == [400, 400, 200]
    assert [i for p in pages for i in p] == sorted(ids)
    refused = await claim(holds, ids, n=1, instance="i2")
    assert len(refused) == 1000 and {h.workflow_id for h in refused.values()} == {run(0)}


async def test_for_enrollment_finds_user_channels_and_nothing_that_only_looks_alike(
    holds: HoldStore,
) -> None:
    ids = [
        "A%B", "A%B:501", "A%B:u/2", "AxB", "AxB:501", "AzzB:501", "A%B2", "A%B2:501",
        "A_B", "A_B:501", "AxB_", "a%b:501", "A/B", "A/B:501", "A\\B:501", "A%", "A%:1",
    ]  # fmt: skip
    await claim(holds, ids)

    async def found(device_id: str, user_channels: bool = True) -> list[str]:
        got = await holds.for_enrollment(device_id, user_channels=user_channels)
        return [h.enrollment_id for h in got]

    assert await found("A%B") == ["A%B", "A%B:501", "A%B:u/2"]  # no AxB, A%B2 or a%b
    assert await found("A%B", user_channels=False) == ["A%B"]
    assert await found("A_B") == ["A_B", "A_B:501"]
    assert await found("AxB") == ["AxB", "AxB:501"]
    assert await found("A/B") == ["A/B", "A/B:501"]
    assert await found("A\\B") == ["A\\B:501"]
    assert await found("A%") == ["A%", "A%:1"]
    assert await found("A") == []
    assert await found("A%B:501") == ["A%B:501"]


async def test_overlong_values_are_refused_before_anything_is_written(holds: HoldStore) -> None:
    with pytest.raises(ValueError, match="enrollment_id"):
        await claim(holds, ["ok", "x" * 256])
    assert await holds.count() == 0


async def test_a_database_from_before_holds_gets_the_table_on_start(db_url: str) -> None:
    engine = await open_engine(db_url)
    async with engine.begin() as conn:
        await conn.execute(text("DROP TABLE run_holds"))
    await engine.dispose()
    engine = await open_engine(db_url)  # create-on-start adds the table and its indexes
    async with engine.connect() as conn:
        indexes = await conn.run_sync(lambda c: inspect(c).get_indexes("run_holds"))
    assert {i["name"] for i in indexes} >= {
        "ux_run_holds_claim",
        "ix_run_holds_enrollment_id",
        "ix_run_holds_workflow_id",
    }
    assert await claim(HoldStore(engine), ["A"]) == {}
    await engine.dispose()
