"""Benchmark 3: how long one step takes when the device answers at once.

``connect_latency`` 0: a push makes the device connect immediately. 100 single-device
starts one after the other, each a fleet run of one device (as every start is): from the
simulator accepting the step's enqueue (recorded here, wall clock) to the answer's
signal in the run's history (the run has the result), and to the run's close (the answer
logged too); and from the API start request to the result read back.
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
            await stack.wait_closed(await stack.start_runs([eid]), 1)
        to_signal: list[float] = []
        to_close: list[float] = []
        api_to_result: list[float] = []
        for eid in ids[5:]:
            t = time.monotonic()
            instance = await stack.start_runs([eid])
            handle = stack.client.get_workflow_handle(
                routing.fleet_workflow_id(DEVINFOLOG, instance, 0)
            )
            result = await handle.result()
            api_to_result.append(time.monotonic() - t)
            assert result["status"] == "completed", result
            signalled = False
            async for event in handle.fetch_history_events():
                stamp = event.event_time.ToDatetime().timestamp()
                signal = event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED
                if signal and not signalled:  # the answer (a later one would be a duplicate)
                    signalled = True
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
