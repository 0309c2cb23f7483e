"""Escrowed secrets for people, each retrieval recorded; and NanoCMD's FileVault template.

``GET /v1/escrow/{id}/prk`` and ``/pin`` return the current secret (``?previous=true``
for all, newest first) to a user with the escrow role who says why (``?reason=``,
required); each retrieval is recorded with that user and client address, in the
escrow's access log and the audit log, refused attempts included. ``GET /v1/escrow/{id}`` says what
is escrowed without revealing it; ``/access`` lists every retrieval. The inventory API
never returns secrets.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import PlainTextResponse

from escrow import fvprofile
from starter.audit_trail import note
from starter.deps import AUTH, ERRORS, Caller, ServicesDep, require

router = APIRouter(tags=["escrow"], dependencies=AUTH, responses=ERRORS)


def _actor(request: Request, who: Caller) -> str:
    client = request.client.host if request.client else "unknown"
    return f"{who.user}@{client}"


@router.get("/v1/escrow/{enrollment_id}", summary="What is escrowed (no secrets)")
async def escrow_summary(enrollment_id: str, svc: ServicesDep) -> dict[str, Any]:
    return await svc.escrow.summary(enrollment_id)


@router.get("/v1/escrow/{enrollment_id}/access", summary="Every retrieval of this device's secrets")
async def escrow_access(enrollment_id: str, svc: ServicesDep) -> list[dict[str, Any]]:
    return await svc.escrow.access_log(enrollment_id)


@router.get(
    "/v1/escrow/{enrollment_id}/{kind}",
    summary="Retrieve the FileVault recovery key (prk) or lock/erase PIN (pin); escrow role",
)
async def escrow_secret(
    enrollment_id: str,
    kind: str,
    request: Request,
    svc: ServicesDep,
    who: Annotated[Caller, Depends(require("escrow"))],
    reason: str = "",
    previous: bool = False,
) -> dict[str, Any]:
    note(request, "escrow.read", [enrollment_id], {"kind": kind, "why": reason})
    if kind not in ("prk", "pin"):
        raise HTTPException(404, "secret kind must be prk or pin")
    if not reason.strip():
        raise HTTPException(400, "say why (?reason=...): every retrieval is recorded")
    found = await svc.escrow.retrieve(
        enrollment_id, kind, _actor(request, who), reason, previous=previous
    )
    if not found:
        raise HTTPException(404, f"no {kind} escrowed for {enrollment_id}")
    return {"enrollment_id": enrollment_id, "kind": kind, "secrets": found}


@router.get(
    "/v1/fvenable/profiletemplate",
    response_class=PlainTextResponse,
    summary="The built-in FileVault escrow profile template (NanoCMD)",
)
async def fvenable_template() -> PlainTextResponse:
    return PlainTextResponse(fvprofile.default_template(), media_type="application/x-plist")
