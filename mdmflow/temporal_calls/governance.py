"""Telling running fleet runs about the emergency stop, and delivering approvals.

The stop is broadcast as the fleet run's ``emergency_stop`` signal to every running run
it applies to (from Temporal's visibility, paged, many at once), and once more a few
seconds later for runs that were not yet visible the first time. A run that misses both
still reads the stop from the store at its next step boundary and when it starts (see
:mod:`workflows.governed`), so the broadcast is what makes it fast, not what makes it safe.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from temporalio.client import Client, WorkflowUpdateFailedError
from temporalio.service import RPCError

from mdmflow.temporal_calls.controls import _rpc_words, _words
from mdmflow.temporal_calls.visibility import quote
from workflows import search_attributes as sa
from workflows.fleet import FLEET_WORKFLOW, FleetRunWorkflow
from workflows.models import ApprovalDecision, EmergencyStopNotice

log = logging.getLogger("mdmflow.governance")

BROADCAST_CONCURRENCY = 64
# The second sweep, for runs started just before the stop and not yet visible.
SECOND_SWEEP_SECONDS = 3.0
# Chunks of one start an approval goes to at most (a start has at most 50).
MAX_APPROVAL_RUNS = 100


@dataclass
class Broadcast:
    signalled: int = 0
    failed: dict[str, str] = field(default_factory=dict)


def _running(scope: str | None, instance_id: str | None = None) -> str:
    clauses = [f"WorkflowType = {quote(FLEET_WORKFLOW)}", "ExecutionStatus = 'Running'"]
    if scope:
        clauses.append(f"{sa.WORKFLOW_NAME.name} = {quote(scope)}")
    if instance_id:
        clauses.append(f"{sa.INSTANCE_ID.name} = {quote(instance_id)}")
    return " AND ".join(clauses)


async def broadcast_stop(client: Client, notice: EmergencyStopNotice) -> Broadcast:
    """Signal ``notice`` to every running fleet run it applies to."""
    scope = None if notice.scope == "*" else notice.scope
    result = Broadcast()
    gate = asyncio.Semaphore(BROADCAST_CONCURRENCY)

    async def one(workflow_id: str) -> None:
        async with gate:
            try:
                handle = client.get_workflow_handle_for(FleetRunWorkflow.run, workflow_id)
                await handle.signal(FleetRunWorkflow.emergency_stop, notice)
                result.signalled += 1
            except RPCError as exc:
                result.failed[workflow_id] = _rpc_words(exc, workflow_id)

    tasks: list[asyncio.Task[None]] = []
    async for execution in client.list_workflows(_running(scope), page_size=1000):
        tasks.append(asyncio.create_task(one(execution.id)))
    await asyncio.gather(*tasks)
    if result.failed:
        log.warning(
            "emergency stop (%s) not delivered to %d run(s); they read it at their next "
            "step boundary",
            "engaged" if notice.engaged else "released",
            len(result.failed),
        )
    return result


# the second sweeps under way (a task nobody holds could be collected before it runs)
_LATER: set[asyncio.Task[Broadcast]] = set()


async def tell_runs(client: Client, notice: EmergencyStopNotice) -> Broadcast:
    """Broadcast ``notice`` now, and once more SECOND_SWEEP_SECONDS later in the
    background; returns how the first sweep went."""

    async def later() -> Broadcast:
        await asyncio.sleep(SECOND_SWEEP_SECONDS)
        return await broadcast_stop(client, notice)

    sent = await broadcast_stop(client, notice)
    task = asyncio.create_task(later())
    _LATER.add(task)
    task.add_done_callback(_LATER.discard)
    return sent


@dataclass
class Delivery:
    delivered: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)


async def deliver_decision(
    client: Client, instance_id: str, decision: ApprovalDecision
) -> Delivery:
    """The decision, as the ``approval`` Update, to every running chunk of the start."""
    out = Delivery()
    ids = [
        e.id
        async for e in client.list_workflows(_running(None, instance_id), limit=MAX_APPROVAL_RUNS)
    ]

    async def one(workflow_id: str) -> None:
        handle = client.get_workflow_handle_for(FleetRunWorkflow.run, workflow_id)
        try:
            await handle.execute_update(FleetRunWorkflow.approval, decision)
            out.delivered.append(workflow_id)
        except WorkflowUpdateFailedError as exc:
            out.refused[workflow_id] = _words(exc.cause)
        except RPCError as exc:
            out.refused[workflow_id] = _rpc_words(exc, workflow_id)

    await asyncio.gather(*(one(i) for i in ids))
    return out
