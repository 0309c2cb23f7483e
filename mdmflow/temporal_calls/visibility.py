"""Which runs exist: look-ups in Temporal's visibility store.

Visibility is eventually consistent: what must not lag (exclusivity, the runs driving a
device) comes from the store's holds instead; these look-ups serve listings, runs
started before fleet runs, and filters by instance or workflow.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from temporalio.client import Client, WorkflowExecution, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from workflows import search_attributes as sa
from workflows.fleet import FLEET_WORKFLOW

# Runs started one per device before fleet runs, still running during an upgrade, that
# a start must not run beside (looked up once per start, bounded).
LEGACY_LOOKUP_LIMIT = 10_000


def quote(value: str) -> str:
    """A visibility-query string literal: every value from outside goes through here."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def build_query(instance_id: str | None, enrollment_id: str | None, workflow: str | None) -> str:
    clauses = []
    if instance_id:
        clauses.append(f"{sa.INSTANCE_ID.name} = {quote(instance_id)}")
    if enrollment_id:
        clauses.append(f"{sa.ENROLLMENT_ID.name} = {quote(enrollment_id)}")
    if workflow:
        clauses.append(f"{sa.WORKFLOW_NAME.name} = {quote(workflow)}")
    return " AND ".join(clauses)


def describe(execution: WorkflowExecution) -> dict[str, Any]:
    attrs = execution.typed_search_attributes
    status = execution.status.name.lower() if execution.status is not None else "unknown"
    return {
        "workflow_id": execution.id,
        "run_id": execution.run_id,
        # a fleet run shows the MDM workflow it runs, as a one-device run does
        "workflow": attrs.get(sa.WORKFLOW_NAME) or execution.workflow_type,
        "fleet": execution.workflow_type == FLEET_WORKFLOW,
        "enrollment_id": attrs.get(sa.ENROLLMENT_ID),
        "instance_id": attrs.get(sa.INSTANCE_ID),
        "status": status,
        "current_step": attrs.get(sa.CURRENT_STEP),
        "start_time": execution.start_time.isoformat() if execution.start_time else None,
        "close_time": execution.close_time.isoformat() if execution.close_time else None,
    }


async def is_closed(client: Client, workflow_id: str) -> bool:
    """Temporal says the run ``workflow_id`` has ended (or never existed)."""
    try:
        desc = await client.get_workflow_handle(workflow_id).describe()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return True
        raise
    return desc.status != WorkflowExecutionStatus.RUNNING


async def legacy_runs(client: Client, name: str, ids: Sequence[str]) -> set[str]:
    """Enrollments of ``ids`` with a one-device run (started before fleet runs) running."""
    query = f"WorkflowType = {quote(name)} AND ExecutionStatus = 'Running'"
    wanted = set(ids)
    found: set[str] = set()
    async for execution in client.list_workflows(query, limit=LEGACY_LOOKUP_LIMIT):
        eid = execution.typed_search_attributes.get(sa.ENROLLMENT_ID)
        if eid in wanted:
            found.add(eid)
    return found


async def running_for_enrollment(client: Client, device_id: str) -> list[tuple[str, str]]:
    """(workflow ID, enrollment ID) of running MDM runs of a device and its user channels."""
    q = quote(device_id)
    prefix = quote(device_id + ":")
    query = (
        f"({sa.ENROLLMENT_ID.name} = {q} OR {sa.ENROLLMENT_ID.name} STARTS_WITH {prefix}) "
        "AND ExecutionStatus = 'Running'"
    )
    found = []
    async for execution in client.list_workflows(query):
        eid = execution.typed_search_attributes.get(sa.ENROLLMENT_ID)
        if eid:
            found.append((execution.id, eid))
    return found


async def started_since(client: Client, workflow: str, enrollment_id: str, since: datetime) -> bool:
    """Whether ``workflow`` was started for ``enrollment_id`` after ``since``."""
    query = (
        f"{sa.WORKFLOW_NAME.name} = {quote(workflow)} "
        f"AND {sa.ENROLLMENT_ID.name} = {quote(enrollment_id)} "
        f"AND StartTime > {quote(since.isoformat())}"
    )
    count = await client.count_workflows(query)
    return count.count > 0


async def running_fleet_runs(
    client: Client, instance_id: str | None, workflow: str | None, limit: int
) -> list[str]:
    """IDs of running fleet runs of an instance and/or workflow, at most ``limit``."""
    clauses = [f"WorkflowType = {quote(FLEET_WORKFLOW)}", "ExecutionStatus = 'Running'"]
    if instance_id:
        clauses.append(f"{sa.INSTANCE_ID.name} = {quote(instance_id)}")
    if workflow:
        clauses.append(f"{sa.WORKFLOW_NAME.name} = {quote(workflow)}")
    return [
        execution.id
        async for execution in client.list_workflows(" AND ".join(clauses), limit=limit)
    ]


async def fleet_runs_by_status(client: Client, timeout: timedelta) -> dict[str, int]:
    """Fleet runs per Temporal execution status (one visibility count, GROUP BY)."""
    counted = await client.count_workflows(
        f"WorkflowType = {quote(FLEET_WORKFLOW)} GROUP BY ExecutionStatus",
        rpc_timeout=timeout,
    )
    return {
        str(group.group_values[0]) if group.group_values else "": group.count
        for group in counted.groups
    }
