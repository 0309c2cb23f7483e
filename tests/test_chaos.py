"""Chaos, small and fast: break one part of the running stack, count that nothing is lost.

Each test brings up its own stack (fresh dev server, simulator, API + relay, worker) and
runs one scenario from :mod:`bench.chaos`; ``make chaos`` runs the same scenarios long.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from bench.chaos import (
    fuzz_api,
    mdm_outage,
    relay_outage,
    temporal_inbox,
    temporal_kill,
    webhook_faults,
    worker_kill,
)
from bench.stack import Stack, StackOptions
from tests.conftest import PG_ADMIN

# Each test starts a whole stack of its own and breaks a part of it.
pytestmark = pytest.mark.chaos


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    async with Stack(StackOptions(connect_latency=0.01)) as s:
        yield s


@pytest.fixture
async def process_stack() -> AsyncIterator[Stack]:
    async with Stack(StackOptions(processes=True, connect_latency=0.01)) as s:
        yield s


async def test_worker_killed_mid_run_every_run_completes_once(process_stack: Stack) -> None:
    report = await worker_kill.run(process_stack, 20)
    print(report)
    assert report["commands_enqueued"] == 20


async def test_mdm_server_outage_enqueues_retry_and_nothing_is_lost(stack: Stack) -> None:
    report = await mdm_outage.run(stack, 10, refused_s=2.0, errors_s=2.0)
    print(report)
    assert report["answered_500"] > 0


async def test_duplicated_reordered_and_forged_webhooks(stack: Stack) -> None:
    report = await webhook_faults.run(stack, 20)
    print(report)
    assert report["faults_injected"]["duplicate"] > 0
    assert report["forged"]["http_answers"]["bad_hmac"] == 401


async def test_temporal_killed_mid_run_restarts_on_same_file_and_runs_resume(
    process_stack: Stack,
) -> None:
    report = await temporal_kill.run(process_stack, 10, down_s=2.0)
    print(report)
    assert report["statuses"] == {"completed": 10}


async def test_relay_down_lost_answers_are_recovered_by_reissue_or_time_out(
    stack: Stack,
) -> None:
    report = await relay_outage.run(stack, recover=10, expire=4, down_s=0.5, repush_s=3.0)
    print(report)
    assert report["webhooks_lost"] >= 14


async def test_schemathesis_finds_no_server_error(stack: Stack) -> None:
    report = await fuzz_api.run(stack, max_examples=10, phases="examples,fuzzing")
    print(report)
    assert report["exit_code"] == 0


async def test_schemathesis_finds_no_server_error_on_postgresql() -> None:
    """The same on PostgreSQL, which refuses what SQLite takes (a NUL, an over-long value)."""
    name = f"mdmflow_fuzz_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(PG_ADMIN)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        url = PG_ADMIN.rsplit("/", 1)[0] + "/" + name
        async with Stack(StackOptions(db_url=url)) as stack:
            report = await fuzz_api.run(stack, max_examples=5, phases="examples,fuzzing")
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()
    print(report)
    assert report["exit_code"] == 0


async def test_temporal_killed_while_devices_answer_the_inbox_loses_nothing(
    process_stack: Stack,
) -> None:
    report = await temporal_inbox.run(process_stack, 10, down_s=1.0, rotate=3)
    print(report)
    assert report["webhooks_held_in_inbox"] >= 23
    assert report["keys_rotated_and_escrowed"] == 3
