"""What every API route depends on: the services, who is calling, and what they may do.

Callers authenticate with HTTP Basic: a user made by ``mdmflow user add`` (``NAME:KEY``),
or ``nanocmd:<MDMFLOW_API_KEY>`` as NanoCMD's clients do, with the role
``MDMFLOW_NANOCMD_ROLE`` (default operator; ``off`` disables it). 401 says "who are you?",
403 says which role the call needs (:mod:`mdmflow.roles`).
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from pydantic import BaseModel, JsonValue

from mdmflow.roles import Permission, allows, needed
from mdmflow.services import Services as Services  # shared with the worker; named here too

NANOCMD_USER = "nanocmd"


def describe_errors(errors: Sequence[Mapping[str, Any]]) -> str:
    """pydantic / FastAPI validation errors as one line a person can act on."""
    parts = []
    for err in errors:
        where = ".".join(str(p) for p in err.get("loc", ()))
        parts.append(f"{where}: {err['msg']}" if where else str(err["msg"]))
    return "; ".join(parts)


class ErrorBody(BaseModel):
    error: str


ERRORS: dict[int | str, dict[str, object]] = {
    400: {"model": ErrorBody},
    401: {"model": ErrorBody},
    403: {"model": ErrorBody},
    404: {"model": ErrorBody},
}

_basic = HTTPBasic(auto_error=False)


@dataclass(frozen=True)
class Caller:
    user: str
    role: str


def _unauthenticated(why: str) -> HTTPException:
    return HTTPException(
        status_code=401, detail=why, headers={"WWW-Authenticate": 'Basic realm="mdmflow"'}
    )


async def identify(app: Any, username: str, password: str) -> Caller | None:
    """The caller these credentials name, or None (unknown user, wrong key)."""
    if username == NANOCMD_USER:
        role: str | None = app.state.nanocmd_role
        key: str = app.state.api_key
        if role is not None and secrets.compare_digest(password.encode(), key.encode()):
            return Caller(NANOCMD_USER, role)
        return None
    svc: Services = app.state.services
    user = await svc.users.authenticate(username, password)
    return Caller(user.name, user.role) if user is not None else None


async def caller(
    request: Request, creds: Annotated[HTTPBasicCredentials | None, Depends(_basic)]
) -> Caller:
    """Who is calling (once per request: the request guard usually knows already); 401
    when nobody we know."""
    known: Caller | None = getattr(request.state, "caller", None)
    if known is not None:
        return known
    if creds is None:
        raise _unauthenticated("authentication required (HTTP Basic NAME:KEY)")
    request.state.attempted_user = creds.username[:64]
    found = await identify(request.app, creds.username, creds.password)
    if found is None:
        raise _unauthenticated("unknown user or wrong key (HTTP Basic NAME:KEY)")
    request.state.caller = found
    return found


CallerDep = Annotated[Caller, Depends(caller)]


def require(permission: Permission) -> Callable[..., Awaitable[Caller]]:
    """A dependency: the caller, when their role grants ``permission``; else 403."""

    async def check(who: CallerDep) -> Caller:
        if not allows(who.role, permission):
            raise HTTPException(
                status_code=403,
                detail=f"role {needed(permission)} needed ({who.user} has role {who.role})",
            )
        return who

    return check


async def by_method(request: Request, who: CallerDep) -> Caller:
    """Reading needs any role; changing needs operator (or admin)."""
    permission: Permission = "read" if request.method in ("GET", "HEAD") else "operate"
    return await require(permission)(who)


def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc


AUTH = [Depends(by_method)]


def one_of(values: Iterable[str]) -> dict[str, JsonValue]:
    """OpenAPI ``enum`` for a string the handler checks itself (for a clearer 400)."""
    choices: list[JsonValue] = [*values]
    return {"enum": choices}


ServicesDep = Annotated[Services, Depends(services)]
