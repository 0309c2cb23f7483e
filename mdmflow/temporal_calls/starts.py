"""Start one workflow for many enrollments, honouring exclusivity.

A start runs as fleet runs (:mod:`workflows.fleet`): the IDs are cut into chunks of
``chunk_size`` (``MDMFLOW_FLEET_CHUNK``, default 1,000) and each chunk is one Temporal
workflow, ``<name>/fleet/<instance>/<chunk>``, that drives its devices.

Exclusivity (NanoCMD's: one running instance per workflow and enrollment) is a hold in
the store, claimed before the chunk starts under a unique constraint, so it holds across
chunks, concurrent starts and several API processes without asking Temporal's
eventually consistent visibility. A device refused names the run that holds it. A hold
whose run has ended without releasing it (terminated from the Web UI, say) is taken
over once Temporal confirms the run is closed. Simultaneous workflows hold per instance
(for look-ups by enrollment), never refusing.

The relay's AllCommandResponse deliveries start here too (:func:`start_command_response`).
"""

from __future__ import annotations

import logging
import os
import uuid
from dataclasses import dataclass, field

from temporalio.client import Client
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import WorkflowAlreadyStartedError

from mdmflow.temporal_calls.visibility import is_closed, legacy_runs
from protocol import routing
from protocol.enrollment import enrollment_id_problem
from protocol.results import CommandReport
from store.holds import Hold, HoldStore
from workflows import search_attributes as sa
from workflows.command_response import CommandResponseInput, CommandResponseWorkflow
from workflows.fleet import FleetRunWorkflow
from workflows.models import ENGINE_REVISION, FleetInput, OnFailure
from workflows.registry import BY_NAME

log = logging.getLogger("mdmflow.starter")

MAX_CHUNK = 1000
DEFAULT_CHUNK = 1000


def chunk_size_from_env() -> int:
    raw = os.environ.get("MDMFLOW_FLEET_CHUNK", "")
    if not raw:
        return DEFAULT_CHUNK
    try:
        size = int(raw)
    except ValueError as exc:
        raise ValueError(f"MDMFLOW_FLEET_CHUNK must be a number, not {raw!r}") from exc
    if not 1 <= size <= MAX_CHUNK:
        raise ValueError(f"MDMFLOW_FLEET_CHUNK must be between 1 and {MAX_CHUNK}")
    return size


START_CONCURRENCY = 32


class StartError(ValueError):
    """The request cannot start anything (unknown workflow, bad IDs)."""


@dataclass
class StartResult:
    instance_id: str
    started: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)


def validate_ids(ids: list[str]) -> list[str]:
    if not ids:
        raise StartError("no enrollment IDs given (use ?id=...)")
    seen: dict[str, None] = {}
    for eid in ids:
        if (problem := enrollment_id_problem(eid)) is not None:
            raise StartError(f"invalid enrollment ID {eid!r}: {problem}")
        seen[eid] = None
    return list(seen)


async def start_workflow(
    client: Client,
    task_queue: str,
    name: str,
    ids: list[str],
    context: str | None = None,
    url_params: dict[str, dict[str, str]] | None = None,
    step_timeout: float | None = None,
    *,
    holds: HoldStore,
    chunk_size: int | None = None,
    repush_after: list[float] | None = None,
    on_failure: OnFailure | None = None,
    rollback: bool = False,
    retries: int = 0,
    retry_backoff_seconds: float = 60.0,
    started_by: str = "",
    started_role: str = "",
) -> StartResult:
    """Start ``name`` for each ID; ``step_timeout`` (seconds) overrides the engine's 72 h.

    ``started_by``/``started_role``: who asked; a run checks the policy again for that
    role before a destructive step, and its approver must be someone else.
    """
    wf = BY_NAME.get(name)
    if wf is None:
        raise StartError(f"unknown workflow {name!r}; known: {', '.join(sorted(BY_NAME))}")
    ids = validate_ids(ids)
    # a workflow may want smaller chunks (fvenable polls: its devices drift apart)
    size = min(chunk_size or chunk_size_from_env(), wf.MAX_CHUNK)
    result = StartResult(instance_id=str(uuid.uuid4()))
    todo = ids
    if wf.EXCLUSIVE:
        legacy = await legacy_runs(client, name, ids)
        for eid in legacy:
            result.refused[eid] = f"{name} is already running for this enrollment"
        todo = [i for i in ids if i not in legacy]
    for index, start in enumerate(range(0, len(todo), size)):
        part = todo[start : start + size]
        workflow_id = routing.fleet_workflow_id(name, result.instance_id, index)
        claimed = await _claim(client, holds, name, part, workflow_id, result, wf.EXCLUSIVE)
        if not claimed:
            continue
        inp = FleetInput(
            workflow_name=name,
            instance_id=result.instance_id,
            chunk=index,
            enrollment_ids=claimed,
            context=context,
            url_params={i: p for i, p in (url_params or {}).items() if i in set(claimed) and p},
            step_timeout_seconds=step_timeout,
            repush_after_seconds=repush_after,
            revision=ENGINE_REVISION,
            on_failure=on_failure,
            rollback=rollback,
            retries=retries,
            retry_backoff_seconds=retry_backoff_seconds,
            started_by=started_by,
            started_role=started_role,
            target_count=len(ids),
        )
        pairs = [
            SearchAttributePair(sa.WORKFLOW_NAME, name),
            SearchAttributePair(sa.INSTANCE_ID, result.instance_id),
            SearchAttributePair(sa.CURRENT_STEP, "starting"),
        ]
        if len(claimed) == 1:  # a one-device run is found by its enrollment, as before
            pairs.append(SearchAttributePair(sa.ENROLLMENT_ID, claimed[0]))
        try:
            await client.start_workflow(
                FleetRunWorkflow.run,
                inp,
                id=workflow_id,
                task_queue=task_queue,
                id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                search_attributes=TypedSearchAttributes(pairs),
                static_summary=_summary(name, claimed),
                static_details=_details(inp),
            )
        except BaseException:
            await holds.release(workflow_id)  # nothing runs for them: give them back
            raise
        result.started.extend(claimed)
    log.info(
        "instance %s of %s: started %d, refused %d",
        result.instance_id,
        name,
        len(result.started),
        len(result.refused),
    )
    return result


async def _claim(
    client: Client,
    holds: HoldStore,
    name: str,
    ids: list[str],
    workflow_id: str,
    result: StartResult,
    exclusive: bool,
) -> list[str]:
    """Hold ``ids`` for ``workflow_id``; refused ones go into ``result``."""
    instance = result.instance_id
    refused = await holds.claim(
        name, ids, workflow_id=workflow_id, instance_id=instance, exclusive=exclusive
    )
    by_holder: dict[str, list[str]] = {}
    for eid, hold in refused.items():
        by_holder.setdefault(hold.workflow_id, []).append(eid)
    for holder, held in by_holder.items():
        if await is_closed(client, holder):  # the hold is stale
            for eid in await holds.take_over(
                holder, name, held, workflow_id=workflow_id, instance_id=instance
            ):
                refused.pop(eid, None)
    for eid, hold in refused.items():
        result.refused[eid] = already_running(name, hold)
    if refused:
        log.info("not started %s for %d enrollment(s): already running", name, len(refused))
    return [i for i in ids if i not in refused]


def _summary(name: str, ids: list[str]) -> str:
    """The Web UI's one-line summary of a fleet run (no context: it may hold secrets)."""
    who = ids[0] if len(ids) == 1 else f"{len(ids)} devices"
    return f"{name.removeprefix('io.micromdm.wf.')} for {who}"


def _details(inp: FleetInput) -> str:
    """The Web UI's static details: what was started, with which options."""
    lines = [
        f"**{inp.workflow_name}**, instance `{inp.instance_id}`, chunk {inp.chunk}",
        f"- devices: {len(inp.enrollment_ids)}",
        f"- on failure: {inp.on_failure or 'the workflow default'}, retries: {inp.retries}; "
        f"rollback: {'yes' if inp.rollback else 'no'}",
    ]
    if inp.step_timeout_seconds:
        lines.append(f"- step timeout: {inp.step_timeout_seconds:g} s")
    return "\n".join(lines)


def already_running(name: str, hold: Hold) -> str:
    """Why a device held by another run of ``name`` is refused (a start, a dry run)."""
    return f"{name} is already running for this enrollment (run {hold.workflow_id})"


async def start_command_response(
    client: Client,
    task_queue: str,
    subscriber_name: str,
    subscriber_code: str,
    report: CommandReport,
) -> bool:
    """Start the run handing ``report`` to a subscribed workflow; False: already started.

    Its ID comes from the report (enrollment, CommandUUID, status), so a webhook
    delivered twice starts one run.
    """
    workflow_id = (
        f"acr/{subscriber_code}/{report.enrollment_id}/{report.command_uuid}/{report.status}"
    )
    try:
        await client.start_workflow(
            CommandResponseWorkflow.run,
            CommandResponseInput(
                subscriber=subscriber_name, report=report, revision=ENGINE_REVISION
            ),
            id=workflow_id,
            task_queue=task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
        )
    except WorkflowAlreadyStartedError:
        return False
    return True
