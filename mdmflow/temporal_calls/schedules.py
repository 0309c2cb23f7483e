"""Periodic runs on Temporal Schedules (``mdmflow/<name>``).

A schedule starts :class:`workflows.scheduled_start.ScheduledStartWorkflow`, which
starts the chosen workflow for its enrollment IDs, or for every enrolled device when it
has none. Pausing, triggering and the next run times are Temporal's; the Web UI shows
them under Schedules.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from pydantic import BaseModel, Field, JsonValue
from temporalio.api.common.v1 import Payload
from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleHandle,
    ScheduleIntervalSpec,
    ScheduleSpec,
    ScheduleState,
    ScheduleUpdate,
    ScheduleUpdateInput,
)
from temporalio.service import RPCError, RPCStatusCode

from activities.models import StartRequest
from mdmflow.temporal_calls.starts import StartError, validate_ids
from workflows.registry import BY_NAME
from workflows.scheduled_start import ScheduledStartWorkflow

PREFIX = "mdmflow/"


class ScheduleError(ValueError):
    pass


class ScheduleNotFound(KeyError):
    pass


# OpenAPI lists the workflows; the check itself is ours, for a clearer 400.
_WORKFLOW_NAMES: list[JsonValue] = [*sorted(BY_NAME)]


class ScheduleRequest(BaseModel):
    workflow: str = Field(json_schema_extra={"enum": _WORKFLOW_NAMES})
    ids: list[str] | None = Field(default=None, description="omit for every enrolled device")
    context: str | None = None
    every_seconds: int | None = Field(default=None, ge=1)
    cron: str | None = None
    paused: bool = False
    note: str | None = None


def _schedule(name: str, req: ScheduleRequest, task_queue: str) -> Schedule:
    if req.workflow not in BY_NAME:
        raise ScheduleError(f"unknown workflow {req.workflow!r}")
    if (req.every_seconds is None) == (req.cron is None):
        raise ScheduleError("give exactly one of every_seconds and cron")
    if req.cron is not None and not req.cron.strip():
        raise ScheduleError("cron is empty")
    if req.ids is not None:
        try:
            validate_ids(req.ids)
        except StartError as exc:  # refused now, not at every firing
            raise ScheduleError(str(exc)) from exc
    spec = (
        ScheduleSpec(intervals=[ScheduleIntervalSpec(every=timedelta(seconds=req.every_seconds))])
        if req.every_seconds is not None
        else ScheduleSpec(cron_expressions=[req.cron or ""])
    )
    return Schedule(
        action=ScheduleActionStartWorkflow(
            ScheduledStartWorkflow.run,
            StartRequest(workflow=req.workflow, ids=req.ids, context=req.context),
            id=f"scheduled/{name}",
            task_queue=task_queue,
            # Temporal turns cron into calendars; keep what the operator wrote.
            memo={"mdmflow_spec": req.model_dump(include={"every_seconds", "cron"})},
        ),
        spec=spec,
        state=ScheduleState(paused=req.paused, note=req.note or ""),
    )


async def put(client: Client, task_queue: str, name: str, req: ScheduleRequest) -> None:
    schedule = _schedule(name, req, task_queue)
    handle = client.get_schedule_handle(PREFIX + name)

    def replace(_input: ScheduleUpdateInput) -> ScheduleUpdate:
        return ScheduleUpdate(schedule=schedule)

    try:
        await handle.describe()
    except RPCError as exc:
        if exc.status != RPCStatusCode.NOT_FOUND:
            raise
        # a spec Temporal cannot read (a bad cron) is INVALID_ARGUMENT: the API answers 400
        await client.create_schedule(PREFIX + name, schedule)
        return
    await handle.update(replace)


async def _handle(client: Client, name: str) -> ScheduleHandle:
    handle = client.get_schedule_handle(PREFIX + name)
    try:
        await handle.describe()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            raise ScheduleNotFound(name) from exc
        raise
    return handle


async def describe(client: Client, name: str) -> dict[str, Any]:
    handle = await _handle(client, name)
    desc = await handle.describe()
    action = desc.schedule.action
    request: dict[str, Any] | None = None
    if isinstance(action, ScheduleActionStartWorkflow) and action.args:
        arg = action.args[0]
        if isinstance(arg, Payload):  # described schedules carry raw payloads
            (arg,) = await client.data_converter.decode([arg], [StartRequest])
        if isinstance(arg, StartRequest):
            request = arg.model_dump()
    written: dict[str, Any] = {}
    if isinstance(action, ScheduleActionStartWorkflow) and action.memo:
        raw = action.memo.get("mdmflow_spec")
        if isinstance(raw, Payload):
            (raw,) = await client.data_converter.decode([raw], [dict])
        if isinstance(raw, dict):
            written = raw
    spec = desc.schedule.spec
    return {
        "name": name,
        "request": request,
        "every_seconds": [int(i.every.total_seconds()) for i in spec.intervals],
        "cron": [written["cron"]] if written.get("cron") else list(spec.cron_expressions),
        "paused": desc.schedule.state.paused,
        "note": desc.schedule.state.note,
        "next_runs": [t.isoformat() for t in desc.info.next_action_times[:5]],
        "recent_runs": [
            {
                "scheduled": a.scheduled_at.isoformat(),
                "started": a.started_at.isoformat(),
                "workflow_id": getattr(a.action, "workflow_id", None),
            }
            for a in desc.info.recent_actions[-5:]
        ],
        "runs": desc.info.num_actions,
    }


async def list_all(client: Client) -> list[str]:
    names = []
    async for entry in await client.list_schedules():
        if entry.id.startswith(PREFIX):
            names.append(entry.id.removeprefix(PREFIX))
    return sorted(names)


async def delete(client: Client, name: str) -> None:
    await (await _handle(client, name)).delete()


async def pause(client: Client, name: str, paused: bool) -> None:
    handle = await _handle(client, name)
    if paused:
        await handle.pause(note="paused through the mdmflow API")
    else:
        await handle.unpause(note="resumed through the mdmflow API")


async def trigger(client: Client, name: str) -> None:
    await (await _handle(client, name)).trigger()
