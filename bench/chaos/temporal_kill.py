"""Scenario 2: ``kill -9`` the Temporal dev server mid-run, restart it on the same file.

Half the runs are mid-step (commands queued, devices offline) when the server dies. It
comes back on the same SQLite file and port; the worker and the API + relay processes
must find it again on their own (they are not restarted), the second half is started
through the API, and then every run must complete with one command per device.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from bench.chaos.common import (
    answered_per_device,
    check_all_completed,
    set_offline,
    sim_counts,
    until,
)
from bench.stack import Stack


async def _start_when_api_is_back(stack: Stack, ids: list[str], timeout: float) -> tuple[str, int]:
    """Start through the API, retrying while it answers 503 (Temporal not reachable yet)."""
    deadline = time.monotonic() + timeout
    refused = 0
    while True:
        try:
            return await stack.start_runs(ids), refused
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code != 503 or time.monotonic() > deadline:
                raise
            refused += 1
            await asyncio.sleep(0.5)


async def run(stack: Stack, n: int, down_s: float) -> dict[str, Any]:
    assert stack.worker_proc is not None and stack.api_proc is not None, "needs subprocesses"
    worker_pid, api_pid = stack.worker_proc.pid, stack.api_proc.pid
    ids = await stack.enroll(n)
    set_offline(stack, ids, True)
    first, second = ids[: n // 2], ids[n // 2 :]
    instance1 = await stack.start_runs(first)
    await until(
        "first half queued",
        lambda: stack.fleet.stats["commands_enqueued"] >= len(first),
        timeout=120,
    )
    temporal_pid = stack.temporal.process.pid if stack.temporal.process else 0
    await stack.kill_temporal()
    await asyncio.sleep(down_s)  # the outage itself
    await stack.restart_temporal()
    instance2, answered_503 = await _start_when_api_is_back(stack, second, timeout=120)
    alive = {
        "worker": stack.worker_proc is not None and stack.worker_proc.poll() is None,
        "api": stack.api_proc is not None and stack.api_proc.poll() is None,
    }
    assert alive == {"worker": True, "api": True}, f"a process died with Temporal: {alive}"
    set_offline(stack, ids, False)
    await stack.wait_closed(instance1, len(first), timeout=300)
    await stack.wait_closed(instance2, len(second), timeout=300)
    statuses = dict(await check_all_completed(stack, instance1, first))
    for status, count in (await check_all_completed(stack, instance2, second)).items():
        statuses[status] = statuses.get(status, 0) + count
    counts = sim_counts(stack)
    per_device = answered_per_device(stack, ids)
    assert counts["commands_enqueued"] == n, f"{counts['commands_enqueued']} commands for {n} runs"
    assert per_device == {1: n}, f"answers per device: {dict(per_device)}"
    return {
        "killed": f"temporal dev server pid {temporal_pid} (SIGKILL), down {down_s}s, "
        f"{len(first)} runs mid-step",
        "runs": n,
        "statuses": statuses,
        "same_worker_and_api_processes": [worker_pid, api_pid],
        "api_503_before_reconnect": answered_503,
        "answers_per_device": dict(per_device),
        **counts,
    }
