"""Look up runs by instance or enrollment: Temporal's visibility store and the run holds.

A fleet run drives many enrollments but carries no per-device search attribute (a
thousand IDs do not fit one); the store's holds say which running fleet run drives a
device, and the run's ``state`` query answers for that device.
"""

from __future__ import annotations

from typing import Any

from temporalio.client import Client, WorkflowExecution, WorkflowQueryFailedError
from temporalio.service import RPCError

from store.holds import HoldStore
from workflows import search_attributes as sa
from workflows.fleet import FLEET_WORKFLOW, FleetRunWorkflow


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


async def list_runs(client: Client, query: str, limit: int = 1000) -> list[dict[str, Any]]:
    runs = []
    async for execution in client.list_workflows(query, limit=limit):
        runs.append(describe(execution))
    return runs


async def held_runs(
    client: Client,
    holds: HoldStore,
    enrollment_id: str,
    instance_id: str | None,
    workflow: str | None,
    known: set[str],
) -> list[dict[str, Any]]:
    """Running fleet runs that drive ``enrollment_id``, with that device's state."""
    found = []
    for hold in await holds.for_enrollment(enrollment_id, user_channels=False):
        if hold.workflow_id in known:
            continue
        if (instance_id and hold.instance_id != instance_id) or (
            workflow and hold.workflow_name != workflow
        ):
            continue
        entry: dict[str, Any] = {
            "workflow_id": hold.workflow_id,
            "run_id": None,
            "workflow": hold.workflow_name,
            "fleet": True,
            "enrollment_id": enrollment_id,
            "instance_id": hold.instance_id,
            "status": "running",
            "current_step": None,
            "start_time": hold.created_at.isoformat(),
            "close_time": None,
        }
        try:
            state = await client.get_workflow_handle_for(
                FleetRunWorkflow.run, hold.workflow_id
            ).query(FleetRunWorkflow.state, enrollment_id)
        except (RPCError, WorkflowQueryFailedError):
            pass  # the run ended a moment ago, or cannot answer: the hold says enough
        else:
            entry["current_step"] = state.current_step
            entry["device_status"] = state.status
        found.append(entry)
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
