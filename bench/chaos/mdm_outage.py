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
from bench.stack import DEVINFOLOG, Stack
from protocol import routing


async def _send_attempts(stack: Stack, eid: str) -> int:
    """The attempt number of the send activity that finally ran (1 = no retry).

    0 when the history holds no started send: a run closes without waiting for a send
    whose commands were all answered already, and a retried activity's start is only
    recorded when it reports back.
    """
    handle = stack.client.get_workflow_handle(routing.workflow_id(DEVINFOLOG, eid))
    attempts = [
        e.activity_task_started_event_attributes.attempt
        async for e in handle.fetch_history_events()
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
    ]
    return attempts[0] if attempts else 0


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
    statuses = await check_all_completed(stack, ids)
    counts = sim_counts(stack)
    per_device = answered_per_device(stack, ids)
    attempts = [a for a in [await _send_attempts(stack, e) for e in ids] if a]
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
