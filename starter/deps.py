"""What every API route depends on: the services and the API-key check."""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping, Sequence
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from pydantic import BaseModel, JsonValue

from mdmflow.services import Services as Services  # shared with the worker; named here too


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
    404: {"model": ErrorBody},
}

_basic = HTTPBasic(auto_error=False)


def authorised(
    request: Request, creds: Annotated[HTTPBasicCredentials | None, Depends(_basic)]
) -> None:
    """HTTP Basic ``nanocmd:<MDMFLOW_API_KEY>``, compared in constant time."""
    key: str = request.app.state.api_key
    ok = (
        creds is not None
        and secrets.compare_digest(creds.username.encode(), b"nanocmd")
        and secrets.compare_digest(creds.password.encode(), key.encode())
    )
    if not ok:
        raise HTTPException(
            status_code=401,
            detail="API key is missing or invalid (HTTP Basic, user nanocmd)",
            headers={"WWW-Authenticate": 'Basic realm="mdmflow"'},
        )


def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc


AUTH = [Depends(authorised)]


def one_of(values: Iterable[str]) -> dict[str, JsonValue]:
    """OpenAPI ``enum`` for a string the handler checks itself (for a clearer 400)."""
    choices: list[JsonValue] = [*values]
    return {"enum": choices}


ServicesDep = Annotated[Services, Depends(services)]
