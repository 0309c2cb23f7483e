"""What every API request passes before any route reads it.

- A URL (path or query, percent-decoded) with a control character is 400: such a value
  is never a valid name or enrollment ID, and PostgreSQL would refuse a NUL with a
  server error.
- The authenticated API (``/v1/...``, NanoCMD's ``/inventory``) knows who is calling
  before the request's body is read or parsed: no credentials, or wrong ones, is 401
  with nothing parsed. The caller found is left for the routes (``deps.caller``).

``/webhook`` has its own authentication (checked before its body is parsed, in the
relay), ``/codec`` its own key; ``/version``, ``/metrics`` and the docs are open.
"""

from __future__ import annotations

import base64
import binascii
import logging
from typing import Any
from urllib.parse import unquote_to_bytes

from sqlalchemy.exc import SQLAlchemyError
from starlette.types import ASGIApp, Receive, Scope, Send

from mdmflow.body import send_error
from starter.deps import identify

log = logging.getLogger("mdmflow.api")

AUTHENTICATED = ("/v1/", "/inventory")
_CONTROL = frozenset(range(0x20)) | {0x7F}


def _has_control(raw: bytes) -> bool:
    return any(b in _CONTROL for b in unquote_to_bytes(raw))


def _basic(scope: Scope) -> tuple[str, str] | None:
    for name, value in scope.get("headers") or []:
        if name.lower() != b"authorization":
            continue
        scheme, _, token = value.decode("latin-1").partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            decoded = base64.b64decode(token.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        user, sep, password = decoded.partition(":")
        return (user, password) if sep else None
    return None


class RequestGuard:
    """ASGI middleware: clean URLs everywhere, and who is calling before any body."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw_path = scope.get("raw_path") or str(scope.get("path", "")).encode()
        if _has_control(raw_path) or _has_control(scope.get("query_string", b"")):
            await send_error(send, 400, "control characters are not allowed in the URL")
            return
        path = str(scope.get("path", ""))
        if path.startswith(AUTHENTICATED):
            state: dict[str, Any] = scope.setdefault("state", {})
            creds = _basic(scope)
            if creds is None:
                await _unauthorised(send, "authentication required (HTTP Basic NAME:KEY)")
                return
            state["attempted_user"] = creds[0][:64]
            try:
                found = await identify(scope["app"], *creds)
            except SQLAlchemyError as exc:
                log.error("users could not be read: %s", exc)
                await send_error(send, 503, "the user store cannot be read; try again")
                return
            if found is None:
                await _unauthorised(send, "unknown user or wrong key (HTTP Basic NAME:KEY)")
                return
            state["caller"] = found
        await self.app(scope, receive, send)


async def _unauthorised(send: Send, why: str) -> None:
    await send_error(send, 401, why, [(b"www-authenticate", b'Basic realm="mdmflow"')])
