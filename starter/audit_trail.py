"""Every state-changing call and every secret read goes into the audit log.

An ASGI middleware records, after the answer, each call that is not a plain read (and
each secret read named in ``ACTIONS``): who (the authenticated user and role, or the
name an unauthenticated caller gave), the action, targets and parameters the route put
on ``request.state`` (secrets redacted), the client address and the outcome, refusals
included. A route whose change lives in the store writes its audit row itself, in the
same transaction as the change (:func:`audited`), and the middleware then stays quiet.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qs

from fastapi import Request
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from store.audit import AuditEntry, AuditLog, redact

log = logging.getLogger("mdmflow.audit")

# Calls that are not a person's action: the MDM server's webhooks, the Web UI's codec.
NOT_AUDITED = ("/webhook", "/codec", "/metrics", "/version", "/docs", "/static", "/openapi")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_ERROR_BYTES = 2048


def _state(scope: Scope) -> dict[str, Any]:
    state: dict[str, Any] = scope.setdefault("state", {})
    return state


# Each audited route's action name (path parameters filled in), the same whether the
# call was done or refused before its handler ran (401, 403, 413, 422).
ACTIONS: dict[tuple[str, str], str] = {
    ("POST", "/v1/workflow/{name}/start"): "start",
    ("POST", "/v1/workflow/{name}/plan"): "plan",
    ("POST", "/v1/runs/{action}"): "runs.{action}",
    ("POST", "/v1/approvals/{approval_id}/{decision}"): "approval.{decision}",
    ("POST", "/v1/estop"): "estop.engage",
    ("DELETE", "/v1/estop"): "estop.release",
    ("POST", "/v1/users"): "user.add",
    ("DELETE", "/v1/users/{name}"): "user.remove",
    ("PUT", "/v1/profile/{name}"): "profile.put",
    ("DELETE", "/v1/profile/{name}"): "profile.delete",
    ("PUT", "/v1/cmdplan/{name}"): "cmdplan.put",
    ("DELETE", "/v1/cmdplan/{name}"): "cmdplan.delete",
    ("PUT", "/v1/event/{name}"): "event.put",
    ("DELETE", "/v1/event/{name}"): "event.delete",
    ("PUT", "/v1/schedule/{name}"): "schedule.put",
    ("DELETE", "/v1/schedule/{name}"): "schedule.delete",
    ("POST", "/v1/schedule/{name}/{action}"): "schedule.{action}",
    ("GET", "/v1/escrow/{enrollment_id}/{kind}"): "escrow.read",
}


def _action(scope: Scope, state: dict[str, Any]) -> str:
    explicit = state.get("audit_action")
    if explicit:
        return str(explicit)
    method = str(scope.get("method", ""))
    route = scope.get("route")
    path = getattr(route, "path", None) or str(scope.get("path", ""))
    template = ACTIONS.get((method, path))
    if template is None:
        return f"{method} {path}"
    params = {k: str(v)[:40] for k, v in (scope.get("path_params") or {}).items()}
    try:
        return template.format(**params)
    except (KeyError, IndexError):
        return template


def _targets(scope: Scope, state: dict[str, Any]) -> list[str]:
    """The targets a handler noted; before it ran, the enrollment IDs of the query."""
    noted = state.get("audit_targets")
    if noted is not None:
        return list(noted)
    ids = _query(scope).get("id")
    found = [ids] if isinstance(ids, str) else list(ids or [])
    path_id = (scope.get("path_params") or {}).get("enrollment_id")
    return [*found, path_id] if path_id else found


def _entry(scope: Scope, state: dict[str, Any], outcome: str) -> AuditEntry:
    caller = state.get("caller")
    if caller is not None:
        user, role = caller.user, caller.role
    else:
        user, role = state.get("attempted_user") or "-", "-"
    params = state.get("audit_params")
    if params is None:  # refused before the handler: what the request named
        params = {**(scope.get("path_params") or {}), **_query(scope)}
    client = scope.get("client")
    return AuditEntry(
        user=user,
        role=role,
        action=_action(scope, state),
        targets=_targets(scope, state),
        params=redact(params),
        source=str(client[0]) if client else "",
        outcome=outcome,
    )


def _query(scope: Scope) -> dict[str, Any]:
    raw = scope.get("query_string", b"").decode("latin-1")
    out: dict[str, Any] = {}
    for key, values in parse_qs(raw).items():
        out[key] = values[0] if len(values) == 1 else values
    return out


def outcome_of(status: int, body: bytes) -> str:
    """``ok`` or ``refused 403: <error>`` / ``failed 400: <error>`` from the answer."""
    if status < 400:
        return "ok"
    try:
        error = str(json.loads(body).get("error", ""))
    except (ValueError, AttributeError):
        error = ""
    kind = "refused" if status in (401, 403, 409, 423, 429) else "failed"
    return f"{kind} {status}: {error}"[:500]


class AuditTrail:
    """ASGI middleware writing the audit row of each audited call."""

    def __init__(self, app: ASGIApp, audit: Callable[[], AuditLog | None]) -> None:
        self.app = app
        self._audit = audit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or str(scope.get("path", "")).startswith(NOT_AUDITED):
            await self.app(scope, receive, send)
            return
        status = 500
        body = bytearray()

        async def watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif message["type"] == "http.response.body" and status >= 400:
                body.extend(message.get("body", b"")[: _ERROR_BYTES - len(body)])
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            state = _state(scope)
            route = getattr(scope.get("route"), "path", None)
            audited = (
                scope.get("method") not in SAFE_METHODS
                or state.get("audit_action")
                or (scope.get("method"), route) in ACTIONS
            )
            if audited and not state.get("audit_done"):
                await self._record(_entry(scope, state, outcome_of(status, bytes(body))))

    async def _record(self, entry: AuditEntry) -> None:
        audit = self._audit()
        if audit is None:
            return
        try:
            await audit.record(entry)
        except (SQLAlchemyError, OSError) as exc:
            log.error(
                "audit row not written (%s %s by %s): %s",
                entry.action,
                entry.outcome,
                entry.user,
                exc,
            )


def note(
    request: Request,
    action: str,
    targets: Sequence[str] = (),
    params: dict[str, Any] | None = None,
) -> None:
    """What the audit row of this call says besides who and how it ended."""
    request.state.audit_action = action
    request.state.audit_targets = list(targets)
    if params is not None:
        request.state.audit_params = params


@asynccontextmanager
async def audited(
    request: Request,
    action: str,
    targets: Sequence[str] = (),
    params: dict[str, Any] | None = None,
) -> AsyncIterator[AsyncConnection]:
    """A transaction for a store change whose audit row commits with it.

    On an exception nothing commits; the middleware then records the failed attempt.
    """
    note(request, action, targets, params)
    audit: AuditLog = request.app.state.services.audit
    async with request.app.state.services.engine.begin() as conn:
        yield conn
        await audit.record(_entry(request.scope, _state(request.scope), "ok"), conn)
    request.state.audit_done = True
