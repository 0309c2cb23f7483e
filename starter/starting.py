"""Start one workflow for many enrollments, honouring exclusivity.

Exclusive workflows use the workflow ID ``<name>/<enrollment>`` with Temporal's
"fail if running" conflict policy: a start for an enrollment that already runs the
workflow is refused for that ID while the others start, as in NanoCMD. Simultaneous
workflows add the instance ID to the workflow ID.
"""

from __future__ import annotations

import asyncio
import logging
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

from protocol import routing
from protocol.enrollment import enrollment_id_problem
from workflows import search_attributes as sa
from workflows.models import ENGINE_REVISION, WorkflowInput
from workflows.registry import BY_NAME

log = logging.getLogger("mdmflow.starter")

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
) -> StartResult:
    """Start ``name`` for each ID; ``step_timeout`` (seconds) overrides the engine's 72 h."""
    wf = BY_NAME.get(name)
    if wf is None:
        raise StartError(f"unknown workflow {name!r}; known: {', '.join(sorted(BY_NAME))}")
    ids = validate_ids(ids)
    result = StartResult(instance_id=str(uuid.uuid4()))
    gate = asyncio.Semaphore(START_CONCURRENCY)

    async def start_one(enrollment_id: str) -> None:
        workflow_id = routing.workflow_id(
            name, enrollment_id, None if wf.EXCLUSIVE else result.instance_id
        )
        inp = WorkflowInput(
            enrollment_id=enrollment_id,
            instance_id=result.instance_id,
            context=context,
            url_params=(url_params or {}).get(enrollment_id, {}),
            step_timeout_seconds=step_timeout,
            revision=ENGINE_REVISION,
        )
        attrs = TypedSearchAttributes(
            [
                SearchAttributePair(sa.ENROLLMENT_ID, enrollment_id),
                SearchAttributePair(sa.WORKFLOW_NAME, name),
                SearchAttributePair(sa.INSTANCE_ID, result.instance_id),
                SearchAttributePair(sa.CURRENT_STEP, "starting"),
            ]
        )
        async with gate:
            try:
                await client.start_workflow(
                    name,
                    inp,
                    id=workflow_id,
                    task_queue=task_queue,
                    id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
                    id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
                    search_attributes=attrs,
                )
            except WorkflowAlreadyStartedError:
                result.refused[enrollment_id] = f"{name} is already running for this enrollment"
                log.info("not started %s for %s: already running", name, enrollment_id)
                return
        result.started.append(enrollment_id)

    await asyncio.gather(*(start_one(eid) for eid in ids))
    log.info(
        "instance %s of %s: started %d, refused %d",
        result.instance_id,
        name,
        len(result.started),
        len(result.refused),
    )
    return result
