"""Benchmark 3: how long one step takes when the device answers at once.

``connect_latency`` 0: a push makes the device connect immediately. For each of N runs,
one at a time: from the simulator accepting the first enqueue of the step (recorded
here, wall clock) to the ``command_report`` signal in the run's history (the run has
the result), and to the run's close (the answer logged too).
"""

from __future__ import annotations

import time
from typing import Any

from temporalio.api.enums.v1 import EventType

from bench.report import latency_ms
from bench.stack import DEVINFOLOG, Stack, StackOptions
from protocol import routing


async def run(n: int = 100) -> dict[str, Any]:
    enqueued_at: dict[str, float] = {}
    async with Stack(StackOptions(connect_latency=0.0)) as stack:
        fleet = stack.fleet
        original = fleet.enqueue

        def recording_enqueue(
            ids: list[str], command_uuid: str, request_type: str, command: dict[str, Any]
        ) -> str | None:
            enqueued_at.setdefault(ids[0], time.time())
            return original(ids, command_uuid, request_type, command)

        fleet.enqueue = recording_enqueue  # type: ignore[method-assign]
        ids = await stack.enroll(n + 5)
        for eid in ids[:5]:  # warm-up
            await stack.start_runs([eid])
            await stack.results([eid])
        to_signal: list[float] = []
        to_close: list[float] = []
        api_to_result: list[float] = []
        for eid in ids[5:]:
            t = time.monotonic()
            await stack.start_runs([eid])
            await stack.results([eid])
            api_to_result.append(time.monotonic() - t)
            handle = stack.client.get_workflow_handle(routing.workflow_id(DEVINFOLOG, eid))
            async for event in handle.fetch_history_events():
                stamp = event.event_time.ToDatetime().timestamp()
                if event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED:
                    to_signal.append(stamp - enqueued_at[eid])
                elif event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED:
                    to_close.append(stamp - enqueued_at[eid])
    assert len(to_signal) == n and len(to_close) == n
    return {
        "runs": n,
        "enqueue_to_result_signal": latency_ms(to_signal),
        "enqueue_to_run_closed": latency_ms(to_close),
        "api_start_to_result": latency_ms(api_to_result),
    }
