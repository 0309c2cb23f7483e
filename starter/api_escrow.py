"""Escrowed secrets for people, each retrieval recorded; and NanoCMD's FileVault template.

``GET /v1/escrow/{id}/prk`` and ``/pin`` return the current secret (``?previous=true``
for all, newest first) and record who asked (``X-Mdmflow-Actor`` header, else the
API user and client address) and why (``?reason=``). ``GET /v1/escrow/{id}`` says what
is escrowed without revealing it; ``/access`` lists every retrieval. The inventory API
never returns secrets.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Request
from fastapi.responses import PlainTextResponse

from escrow import fvprofile
from starter.deps import AUTH, ERRORS, ServicesDep

router = APIRouter(tags=["escrow"], dependencies=AUTH, responses=ERRORS)


def _actor(request: Request, header: str | None) -> str:
    client = request.client.host if request.client else "unknown"
    return f"{header} via nanocmd@{client}" if header else f"nanocmd@{client}"


@router.get("/v1/escrow/{enrollment_id}", summary="What is escrowed (no secrets)")
async def escrow_summary(enrollment_id: str, svc: ServicesDep) -> dict[str, Any]:
    return await svc.escrow.summary(enrollment_id)


@router.get("/v1/escrow/{enrollment_id}/access", summary="Every retrieval of this device's secrets")
async def escrow_access(enrollment_id: str, svc: ServicesDep) -> list[dict[str, Any]]:
    return await svc.escrow.access_log(enrollment_id)


@router.get(
    "/v1/escrow/{enrollment_id}/{kind}",
    summary="Retrieve the FileVault recovery key (prk) or lock PIN (pin); recorded",
)
async def escrow_secret(
    enrollment_id: str,
    kind: str,
    request: Request,
    svc: ServicesDep,
    reason: str = "",
    previous: bool = False,
    x_mdmflow_actor: Annotated[str | None, Header()] = None,
) -> dict[str, Any]:
    if kind not in ("prk", "pin"):
        raise HTTPException(404, "secret kind must be prk or pin")
    found = await svc.escrow.retrieve(
        enrollment_id, kind, _actor(request, x_mdmflow_actor), reason, previous=previous
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
