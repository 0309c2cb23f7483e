"""The bare-Temporal floor: one no-op activity, then wait for one direct client signal.

The same shape as a one-step MDM workflow (send, then wait for the answer) with nothing
else: no search attributes, no HTTP, no device. The activity tells the driver that the
"command" went out; the driver then signals, as the relay would.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import activity, workflow

FLOOR_WORKFLOW = "bench.floor"


class FloorActivities:
    def __init__(self) -> None:
        self.sent: asyncio.Queue[str] = asyncio.Queue()

    @activity.defn(name="bench.noop")
    async def noop(self, workflow_id: str) -> None:
        self.sent.put_nowait(workflow_id)


@workflow.defn(name=FLOOR_WORKFLOW)
class FloorWorkflow:
    def __init__(self) -> None:
        self._answered = False

    @workflow.signal(name="answer")
    def answer(self) -> None:
        self._answered = True

    @workflow.run
    async def run(self) -> None:
        await workflow.execute_activity(
            "bench.noop", workflow.info().workflow_id, start_to_close_timeout=timedelta(seconds=30)
        )
        await workflow.wait_condition(lambda: self._answered)
