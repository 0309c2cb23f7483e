"""What runs are doing: a run's or device's state, a fleet run's summary and device
pages, and listings with one item per device run.

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
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowQueryFailedError,
)
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError

from activities.models import DeviceOutcome
from mdmflow.temporal_calls.visibility import describe
from store.holds import HoldStore
from workflows.engine import MdmWorkflow
from workflows.fleet import ENDED, FleetRunWorkflow
from workflows.models import DeviceStatesPage, FleetSummary, RunState

# Runs read from visibility per request page (devices of a fleet run are paged inside).
VISIBILITY_PAGE = 100


async def run_state(
    client: Client, workflow_id: str, enrollment_id: str | None = None, *, run_id: str | None = None
) -> RunState:
    """A run's state, or one device's in a fleet run; running or closed.

    Without an enrollment the question is the one both a one-device run started before
    fleet runs and a fleet run of one device answer (the same query name, ``state``).
    """
    handle = client.get_workflow_handle(workflow_id, run_id=run_id)
    if enrollment_id is None:
        return await handle.query(MdmWorkflow.query_state)
    return await handle.query(FleetRunWorkflow.state, enrollment_id)


async def device_states(
    client: Client, workflow_id: str, after: str | None, limit: int, *, run_id: str | None = None
) -> DeviceStatesPage:
    """A page of a fleet run's per-device states, in enrollment order after ``after``."""
    handle = client.get_workflow_handle_for(FleetRunWorkflow.run, workflow_id, run_id=run_id)
    return await handle.query(FleetRunWorkflow.states, args=[after, limit])


async def run_summary(client: Client, workflow_id: str) -> FleetSummary:
    """A fleet run's devices per status and per current step."""
    handle = client.get_workflow_handle_for(FleetRunWorkflow.run, workflow_id)
    return await handle.query(FleetRunWorkflow.summary)


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
    try:
        if base["enrollment_id"]:  # a run of one device
            state = await run_state(
                client, execution.id, base["enrollment_id"], run_id=execution.run_id
            )
            return [_device_item(base, state)], None
        page = await device_states(
            client, execution.id, after, min(room, 500), run_id=execution.run_id
        )
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
            state = await run_state(client, hold.workflow_id, enrollment_id)
        except (RPCError, WorkflowQueryFailedError):
            pass  # the run ended a moment ago, or cannot answer: the hold says enough
        else:
            entry = _device_item(entry, state)
        found.append(entry)
    return found


async def run_result(handle: WorkflowHandle[Any, Any]) -> dict[str, Any]:
    """A fleet run's result however it ended.

    A run that failed in Temporal because a device failed carries its result (status,
    message, devices per status) in the failure's details; any other failure raises.
    """
    try:
        return dict(await handle.result(follow_runs=False))
    except WorkflowFailureError as exc:
        cause = exc.cause
        if isinstance(cause, ApplicationError) and cause.details:
            return dict(cause.details[0])
        raise
