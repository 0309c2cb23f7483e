"""Look up runs by instance or enrollment: Temporal's visibility store and the run holds.

A fleet run drives many enrollments but carries no per-device search attribute (a
thousand IDs do not fit one); the store's holds say which running fleet run drives a
device, and the run's ``state`` query answers for that device.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from temporalio.client import (
    Client,
    WorkflowExecution,
    WorkflowExecutionStatus,
    WorkflowQueryFailedError,
)
from temporalio.service import RPCError

from activities.models import DeviceOutcome
from store.holds import HoldStore
from workflows import search_attributes as sa
from workflows.fleet import ENDED, FLEET_WORKFLOW, FleetRunWorkflow
from workflows.models import RunState


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


# Runs read from visibility per request page (devices of a fleet run are paged inside).
VISIBILITY_PAGE = 100


def _encode_token(vis: bytes | None, skip: int, after: str | None) -> str:
    doc = {"v": base64.b64encode(vis).decode() if vis else None, "s": skip, "a": after}
    return base64.urlsafe_b64encode(json.dumps(doc).encode()).decode()


def _decode_token(token: str) -> tuple[bytes | None, int, str | None]:
    try:
        doc = json.loads(base64.urlsafe_b64decode(token.encode()))
        vis = base64.b64decode(doc["v"]) if doc["v"] else None
        skip, after = int(doc["s"]), doc["a"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError("page_token is not one this API gave out") from exc
    if skip < 0 or (after is not None and not isinstance(after, str)):
        raise ValueError("page_token is not one this API gave out")
    return vis, skip, after


def _device_item(base: dict[str, Any], state: RunState) -> dict[str, Any]:
    return {
        **base,
        "enrollment_id": state.enrollment_id or base["enrollment_id"],
        "status": state.status,
        "message": state.message,
        "failure_type": state.failure_type,
        "current_step": state.current_step
        or (f"done:{state.status}" if state.status in ENDED else None),
    }


def _outcome_item(base: dict[str, Any], outcome: DeviceOutcome) -> dict[str, Any]:
    return {
        **base,
        "enrollment_id": outcome.enrollment_id,
        "status": outcome.status,
        "message": outcome.message,
        "failure_type": outcome.failure_type,
        "current_step": f"done:{outcome.status}",
    }


async def _expand(
    client: Client,
    holds: HoldStore,
    execution: WorkflowExecution,
    after: str | None,
    room: int,
) -> tuple[list[dict[str, Any]], str | None]:
    """One item per device of a run (a page of them for a fleet run), with the device's
    own status and message; a run that cannot answer keeps Temporal's status.

    A closed fleet run answers from the outcomes its devices left in the store (no
    Temporal query, which would replay the whole history); a running one is asked.
    """
    base = describe(execution)
    if not base["fleet"]:
        return [base], None
    if execution.status != WorkflowExecutionStatus.RUNNING:
        size = min(room, 500)
        outcomes = await holds.outcomes_of_run(execution.id, after=after, limit=size + 1)
        if outcomes:
            more = len(outcomes) > size
            outcomes = outcomes[:size]
            items = [_outcome_item(base, o) for o in outcomes]
            return items, outcomes[-1].enrollment_id if more else None
    handle = client.get_workflow_handle_for(
        FleetRunWorkflow.run, execution.id, run_id=execution.run_id
    )
    try:
        if base["enrollment_id"]:  # a run of one device
            state = await handle.query(FleetRunWorkflow.state, base["enrollment_id"])
            return [_device_item(base, state)], None
        page = await handle.query(FleetRunWorkflow.states, args=[after, min(room, 500)])
    except (RPCError, WorkflowQueryFailedError):
        return [base], None
    return [_device_item(base, s) for s in page.states], page.next_after


async def list_device_runs(
    client: Client,
    holds: HoldStore,
    query: str,
    *,
    limit: int = 100,
    page_token: str | None = None,
) -> tuple[list[dict[str, Any]], str | None]:
    """One item per device run, newest runs first, ``limit`` at a time.

    Returns the items and the token of the next page (None: no more). The token holds
    Temporal's own visibility page token, how many runs of that page were read and where
    in a fleet run's devices the page ended.
    """
    vis, skip, after = _decode_token(page_token) if page_token else (None, 0, None)
    pages = client.list_workflows(query, page_size=VISIBILITY_PAGE, next_page_token=vis)
    await pages.fetch_next_page()
    page, index = list(pages.current_page or []), skip
    items: list[dict[str, Any]] = []
    while len(items) < limit:
        if index >= len(page):
            if not pages.next_page_token:
                return items, None
            vis = pages.next_page_token
            await pages.fetch_next_page()
            page, index, after = list(pages.current_page or []), 0, None
            continue
        found, next_after = await _expand(client, holds, page[index], after, limit - len(items))
        items += found
        if next_after is not None:
            return items, _encode_token(vis, index, next_after)
        index, after = index + 1, None
    more = index < len(page) or bool(pages.next_page_token)
    return items, _encode_token(vis, index, None) if more else None


async def held_runs(
    client: Client,
    holds: HoldStore,
    enrollment_id: str,
    instance_id: str | None,
    workflow: str | None,
    known: set[str],
) -> list[dict[str, Any]]:
    """Fleet runs of ``enrollment_id`` that its search attribute cannot find (runs of
    many devices): running ones from its holds, with the device's state, and ended ones
    from the outcomes its devices left in the store."""
    found = []
    for workflow_id, outcome in await holds.outcomes_of_device(enrollment_id):
        if workflow_id in known or (instance_id and outcome.instance_id != instance_id):
            continue
        if workflow and outcome.workflow_name != workflow:
            continue
        known.add(workflow_id)
        base = {
            "workflow_id": workflow_id,
            "run_id": None,
            "workflow": outcome.workflow_name,
            "fleet": True,
            "enrollment_id": enrollment_id,
            "instance_id": outcome.instance_id,
            "start_time": None,
            "close_time": None,
        }
        found.append(_outcome_item(base, outcome))
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
            entry = _device_item(entry, state)
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
