"""Schedules API: ``PUT/GET/DELETE /v1/schedule/{name}``, pause, unpause, trigger."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Response
from fastapi import Path as PathParam

from mdmflow.temporal_calls import schedules
from mdmflow.temporal_calls.schedules import ScheduleError, ScheduleNotFound, ScheduleRequest
from starter.deps import AUTH, ERRORS, ServicesDep, one_of
from workflows.contexts import ContextError, validate_context

router = APIRouter(tags=["schedules"], dependencies=AUTH, responses=ERRORS)


ACTIONS = ("pause", "unpause", "trigger")


def _missing(name: str) -> HTTPException:
    return HTTPException(404, f"no schedule {name!r}")


@router.put("/v1/schedule/{name}", status_code=204, summary="Create or replace a schedule")
async def put_schedule(name: str, body: ScheduleRequest, svc: ServicesDep) -> Response:
    """The context is checked now, as a start's is; each scheduled start also passes the
    emergency stop and the policy (entry, enabled, max_targets) when it fires."""
    try:
        validate_context(body.workflow, body.context)
    except ContextError as exc:
        raise HTTPException(400, str(exc)) from exc
    try:
        await schedules.put(svc.client, svc.task_queue, name, body)
    except ScheduleError as exc:
        raise HTTPException(400, str(exc)) from exc
    return Response(status_code=204)


@router.get("/v1/schedule/{name}", summary="A schedule with its next and recent runs")
async def get_schedule(name: str, svc: ServicesDep) -> dict[str, Any]:
    try:
        return await schedules.describe(svc.client, name)
    except ScheduleNotFound as exc:
        raise _missing(name) from exc


@router.get("/v1/schedules", summary="Names of all schedules")
async def list_schedules(svc: ServicesDep) -> list[str]:
    return await schedules.list_all(svc.client)


@router.delete("/v1/schedule/{name}", status_code=204)
async def delete_schedule(name: str, svc: ServicesDep) -> Response:
    try:
        await schedules.delete(svc.client, name)
    except ScheduleNotFound as exc:
        raise _missing(name) from exc
    return Response(status_code=204)


@router.post("/v1/schedule/{name}/{action}", status_code=204, summary="pause, unpause or trigger")
async def act(
    name: str,
    action: Annotated[str, PathParam(json_schema_extra=one_of(ACTIONS))],
    svc: ServicesDep,
) -> Response:
    try:
        if action in ("pause", "unpause"):
            await schedules.pause(svc.client, name, action == "pause")
        elif action == "trigger":
            await schedules.trigger(svc.client, name)
        else:
            raise HTTPException(400, f"action must be one of {', '.join(ACTIONS)}")
    except ScheduleNotFound as exc:
        raise _missing(name) from exc
    return Response(status_code=204)
