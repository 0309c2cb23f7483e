"""Request bodies with size limits: every route's body is capped before it is read.

:class:`BodyLimit` caps each request by route (a fleet-sized start, a profile, a
webhook) as it streams in, so no route reads an unbounded body; :func:`read_body` gives
routes that take raw bytes their own, smaller limit.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

from fastapi import HTTPException, Request

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

KIB, MIB = 1024, 1024 * 1024
# (path prefix, limit): the first match wins; anything else gets DEFAULT_LIMIT.
ROUTE_LIMITS: tuple[tuple[str, int], ...] = (
    ("/v1/profile/", 32 * MIB),  # signed profiles with embedded payloads
    ("/codec/", 16 * MIB),  # the Web UI decodes a page of history payloads at once
    ("/v1/workflow/", 8 * MIB),  # a fleet-sized start: tens of thousands of IDs
    ("/webhook", 1 * MIB),  # a device report
)
DEFAULT_LIMIT = 256 * KIB


def declared_too_large(request: Request, limit: int) -> bool:
    declared = request.headers.get("content-length", "")
    return declared.isdigit() and int(declared) > limit


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it outgrows ``limit``."""
    if declared_too_large(request, limit):
        raise HTTPException(413, f"body is larger than {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, f"body is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def limit_for(path: str, limits: Sequence[tuple[str, int]] = ROUTE_LIMITS) -> int:
    for prefix, limit in limits:
        if path.startswith(prefix):
            return limit
    return DEFAULT_LIMIT


class _TooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware: 413 for a body over its route's limit, declared or streamed."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = limit_for(str(scope.get("path", "")))
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length", b"").decode("latin-1")
        if declared.isdigit() and int(declared) > limit:
            await _refuse(send, limit)
            return
        received = 0
        started = False

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _TooLarge
            return message

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, tracked)
        except _TooLarge:
            if not started:
                await _refuse(send, limit)


async def _refuse(send: Send, limit: int) -> None:
    await send_error(send, 413, f"body is larger than {limit} bytes")


async def send_error(
    send: Send, status: int, error: str, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    """Answer ``{"error": ...}`` from ASGI middleware, before any route runs."""
    body = json.dumps({"error": error}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
