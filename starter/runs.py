"""Look up runs by instance or enrollment from Temporal's visibility store."""

from __future__ import annotations

from typing import Any

from temporalio.client import Client, WorkflowExecution

from workflows import search_attributes as sa


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
        "workflow": execution.workflow_type,
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
