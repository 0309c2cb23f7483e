"""NanoCMD's command-plan API: ``PUT/GET/DELETE /v1/cmdplan/{name}``, ``GET /v1/cmdplans``.

The body is read as JSON whatever its content type, as NanoCMD does (``curl -d`` sends
form-encoded by default).
"""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request, Response
from pydantic import ValidationError

from mdmflow.body import read_body
from starter.audit_trail import audited
from starter.deps import AUTH, ERRORS, ErrorBody, ServicesDep, describe_errors
from store.cmdplans import CmdPlan

router = APIRouter(tags=["cmdplans"], dependencies=AUTH, responses=ERRORS)

MAX_NAME = 255  # the cmdplans.name column
MAX_BYTES = 1024 * 1024

_JSON_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/CmdPlan"}}},
    }
}


def _missing(name: str) -> HTTPException:
    return HTTPException(404, f"no command plan {name!r}")


@router.put(
    "/v1/cmdplan/{name}",
    status_code=204,
    summary="Store a command plan",
    openapi_extra=_JSON_BODY,
    responses={413: {"model": ErrorBody}},
)
async def put_cmdplan(name: str, request: Request, svc: ServicesDep) -> Response:
    if len(name) > MAX_NAME:
        raise HTTPException(400, f"command plan name is longer than {MAX_NAME} characters")
    raw = await read_body(request, MAX_BYTES)
    try:
        plan = CmdPlan.model_validate_json(raw)
    except ValidationError as exc:
        raise HTTPException(
            400, f"not a valid command plan: {describe_errors(exc.errors(include_url=False))}"
        ) from exc
    async with audited(request, "cmdplan.put", params={"name": name}) as c:
        await svc.cmdplans.put(name, plan, conn=c)
    return Response(status_code=204)


@router.get("/v1/cmdplan/{name}", summary="A command plan")
async def get_cmdplan(name: str, svc: ServicesDep) -> CmdPlan:
    plan = await svc.cmdplans.get(name)
    if plan is None:
        raise _missing(name)
    return plan


@router.delete("/v1/cmdplan/{name}", status_code=204, summary="Delete a command plan")
async def delete_cmdplan(name: str, request: Request, svc: ServicesDep) -> Response:
    async with audited(request, "cmdplan.delete", params={"name": name}) as c:
        if not await svc.cmdplans.delete(name, conn=c):
            raise _missing(name)
    return Response(status_code=204)


@router.get("/v1/cmdplans", summary="Names of all command plans")
async def list_cmdplans(svc: ServicesDep) -> list[str]:
    return await svc.cmdplans.names()
