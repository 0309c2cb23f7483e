"""Scenario 3: the MDM server unreachable (connection refused), then answering 500.

Runs are started during the outage. The enqueue activity's retries (1 s, doubling, at
most 1 min apart) must get every command through once the server is back, and each
command must reach its device exactly once.
"""

from __future__ import annotations

import asyncio
from typing import Any

from temporalio.api.enums.v1 import EventType

from bench.chaos.common import answered_per_device, check_all_completed, sim_counts
from bench.stack import Stack


async def _send_attempts(stack: Stack, instance: str) -> list[int]:
    """The attempt number of each send activity that finally ran (1 = no retry), over
    the instance's fleet runs (a fleet run sends a command to many devices at once).

    A retried activity's start is only recorded when it reports back, so a send still
    retrying when its devices' commands were already answered is not in the list.
    """
    attempts: list[int] = []
    for wf in await stack.runs(instance):
        handle = stack.client.get_workflow_handle(wf.id)
        sends: set[int] = set()
        async for e in handle.fetch_history_events():
            if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
                if "send" in e.activity_task_scheduled_event_attributes.activity_type.name:
                    sends.add(e.event_id)
            elif e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
                started = e.activity_task_started_event_attributes
                if started.scheduled_event_id in sends:
                    attempts.append(started.attempt)
    return attempts


async def run(stack: Stack, n: int, refused_s: float, errors_s: float) -> dict[str, Any]:
    ids = await stack.enroll(n)
    await stack.sim.stop()
    instance = await stack.start_runs(ids)
    await asyncio.sleep(refused_s)  # the outage itself
    stack.mdm_outage.failing = True
    await stack.sim.start()
    await asyncio.sleep(errors_s)
    stack.mdm_outage.failing = False
    await stack.wait_closed(instance, n, timeout=refused_s + errors_s + 180)
    statuses = await check_all_completed(stack, instance, ids)
    counts = sim_counts(stack)
    per_device = answered_per_device(stack, ids)
    attempts = await _send_attempts(stack, instance)
    assert counts["commands_enqueued"] == n, f"{counts['commands_enqueued']} commands for {n} runs"
    assert per_device == {1: n}, f"answers per device: {dict(per_device)}"
    assert stack.mdm_outage.refused > 0, "no enqueue was answered 500"
    assert attempts and min(attempts) >= 2, f"a send went through during the outage: {attempts}"
    return {
        "killed": f"MDM server: refused connections {refused_s}s, then HTTP 500 {errors_s}s",
        "runs": n,
        "statuses": statuses,
        "answered_500": stack.mdm_outage.refused,
        "send_attempts_min_max": [min(attempts), max(attempts)],
        "answers_per_device": dict(per_device),
        **counts,
    }
