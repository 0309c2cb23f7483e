"""NanoCMD's profile API: ``PUT/GET/DELETE /v1/profile/{name}``, ``GET /v1/profiles``.

Profiles go in and come out as raw bytes, whatever the request's content type, so a
signed profile is stored and later installed exactly as signed.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request, Response

from escrow import fvprofile
from mdmflow.body import read_body
from mdmflow.roles import allows
from starter.audit_trail import audited
from starter.deps import AUTH, ERRORS, CallerDep, ErrorBody, ServicesDep
from store.profiles import ProfileError, ProfileInfo

router = APIRouter(tags=["profiles"], dependencies=AUTH, responses=ERRORS)

CONTENT_TYPE = "application/x-apple-aspen-config"
MAX_NAME = 255  # the profiles.name column
MAX_BYTES = 32 * 1024 * 1024  # far above any real profile, well below memory trouble

_BINARY = {"schema": {"type": "string", "format": "binary"}}
_RAW_BODY = {
    "requestBody": {
        "required": True,
        "description": "The .mobileconfig: XML or binary plist, or CMS-signed (DER or PEM).",
        "content": {CONTENT_TYPE: _BINARY},
    }
}


def _check_name(name: str) -> None:
    if len(name) > MAX_NAME:
        raise HTTPException(400, f"profile name is longer than {MAX_NAME} characters")


def _missing(name: str) -> HTTPException:
    return HTTPException(404, f"no profile {name!r}")


def _guard_template(name: str, role: str) -> None:
    """The FileVault escrow template decides where recovery keys are sent: admin only."""
    if name == fvprofile.TEMPLATE_PROFILE_NAME and not allows(role, "admin"):
        raise HTTPException(403, "role admin needed: this profile is the FileVault escrow template")


@router.put(
    "/v1/profile/{name}",
    status_code=204,
    summary="Store a profile (signed profiles are verified and kept signed)",
    openapi_extra=_RAW_BODY,
    responses={413: {"model": ErrorBody}},
)
async def put_profile(name: str, request: Request, who: CallerDep, svc: ServicesDep) -> Response:
    _check_name(name)
    _guard_template(name, who.role)
    raw = await read_body(request, MAX_BYTES)
    if not raw:
        raise HTTPException(400, "empty body: send the .mobileconfig as the request body")
    try:
        async with audited(request, "profile.put", params={"name": name, "bytes": len(raw)}) as c:
            await svc.profiles.put(name, raw, conn=c)
    except ProfileError as exc:
        raise HTTPException(400, f"not a usable profile: {exc}") from exc
    return Response(status_code=204)


@router.get(
    "/v1/profile/{name}",
    summary="The profile exactly as uploaded",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE: _BINARY}}},
)
async def get_profile(name: str, svc: ServicesDep) -> Response:
    raw = await svc.profiles.get(name)
    if raw is None:
        raise _missing(name)
    return Response(raw, media_type=CONTENT_TYPE)


@router.delete("/v1/profile/{name}", status_code=204, summary="Delete a profile")
async def delete_profile(name: str, request: Request, who: CallerDep, svc: ServicesDep) -> Response:
    _guard_template(name, who.role)
    async with audited(request, "profile.delete", params={"name": name}) as c:
        if not await svc.profiles.delete(name, conn=c):
            raise _missing(name)
    return Response(status_code=204)


@router.get("/v1/profiles", summary="Identifier and UUID of profiles by name (all without ?name)")
async def list_profiles(
    svc: ServicesDep,
    name: Annotated[list[str], Query(description="Profile name (repeat for many)")] = [],  # noqa: B006
) -> dict[str, ProfileInfo]:
    found = await svc.profiles.info(name or None)
    missing = sorted(set(name) - set(found))
    if missing:
        raise HTTPException(404, f"no profile {', '.join(repr(n) for n in missing)}")
    return found
