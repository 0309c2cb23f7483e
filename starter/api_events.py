"""NanoCMD's event subscriptions: ``PUT/GET/DELETE /v1/event/{name}``, ``GET /v1/events``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request, Response
from pydantic import BaseModel, Field

from relay.events import EVENTS
from starter.audit_trail import audited
from starter.deps import AUTH, ERRORS, ServicesDep, one_of
from store.events import Subscription
from workflows.contexts import ContextError, validate_context
from workflows.registry import BY_NAME

router = APIRouter(tags=["events"], dependencies=AUTH, responses=ERRORS)


class EventSubscription(BaseModel):
    # documented as enums; checked in validate() for a message that lists the choices
    event: str = Field(json_schema_extra=one_of(EVENTS))
    workflow: str = Field(json_schema_extra=one_of(sorted(BY_NAME)))
    context: str | None = None
    event_context: str | None = None


def validate(sub: EventSubscription) -> None:
    if sub.event not in EVENTS:
        raise HTTPException(400, f"unknown event {sub.event!r}; one of {', '.join(EVENTS)}")
    if sub.workflow not in BY_NAME:
        raise HTTPException(400, f"unknown workflow {sub.workflow!r}")
    try:
        validate_context(sub.workflow, sub.context)
    except ContextError as exc:
        raise HTTPException(400, str(exc)) from exc
    if sub.event == "IdleNotStartedSince":
        try:
            seconds = int(sub.event_context or "")
        except ValueError:
            seconds = 0
        if seconds <= 0:
            raise HTTPException(
                400, "IdleNotStartedSince needs event_context: a number of seconds > 0"
            )


@router.put("/v1/event/{name}", status_code=204, summary="Store an event subscription")
async def put_event(
    name: str, body: EventSubscription, request: Request, svc: ServicesDep
) -> Response:
    validate(body)
    params = {"name": name, "event": body.event, "workflow": body.workflow}
    async with audited(request, "event.put", params=params) as c:
        await svc.subscriptions.put(
            Subscription(name, body.event, body.workflow, body.context, body.event_context),
            conn=c,
        )
    return Response(status_code=204)


@router.get(
    "/v1/event/{name}", summary="An event subscription, with its start count and last error"
)
async def get_event(name: str, svc: ServicesDep) -> dict[str, Any]:
    found = await svc.subscriptions.get(name)
    if found is None:
        raise HTTPException(404, f"no event subscription {name!r}")
    return found


@router.delete("/v1/event/{name}", status_code=204, summary="Delete an event subscription")
async def delete_event(name: str, request: Request, svc: ServicesDep) -> Response:
    async with audited(request, "event.delete", params={"name": name}) as c:
        if not await svc.subscriptions.delete(name, conn=c):
            raise HTTPException(404, f"no event subscription {name!r}")
    return Response(status_code=204)


@router.get("/v1/events", summary="All event subscriptions by name")
async def list_events(svc: ServicesDep) -> dict[str, dict[str, Any]]:
    return {s.name: s.to_json() for s in await svc.subscriptions.all()}
