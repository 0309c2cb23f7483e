"""``POST /webhook``: verify, parse, hand to Temporal, answer fast.

200: delivered, or understood and deliberately dropped (Idle, foreign commands, late
reports). 400: not a webhook we can read. 401: not authenticated by any configured
method (HMAC signature, HTTP Basic credentials, path token; see :mod:`relay.webhook_auth`).
503: Temporal unreachable (NanoMDM does not retry; the step engine's
re-push/re-issue recovers the answer). Bad content never causes a 5xx.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from temporalio.service import RPCError

from mdmflow import metrics
from protocol.webhooks import WebhookError, parse_webhook
from relay.routing import Router
from relay.webhook_auth import WebhookAuth

log = logging.getLogger("mdmflow.relay")


def webhook_router(get_router: Callable[[], Router], auth: WebhookAuth) -> APIRouter:
    api = APIRouter()
    summary = "MDM server webhook (NanoMDM / MicroMDM)"

    @api.post("/webhook", tags=["relay"], summary=summary)
    async def webhook(request: Request) -> Response:
        return await _handle(request, None)

    @api.post("/webhook/{token}", tags=["relay"], summary=f"{summary}, with a path token")
    async def webhook_with_token(token: str, request: Request) -> Response:
        return await _handle(request, token)

    async def _handle(request: Request, token: str | None) -> Response:
        body = await request.body()
        metrics.inc("webhook_received")
        headers = request.headers
        if not auth.accepts(
            body, headers.get("X-Hmac-Signature"), headers.get("Authorization"), token
        ):
            metrics.inc("webhook_bad_signature")
            log.warning("webhook refused: not authenticated (%s)", auth.methods())
            return JSONResponse(
                {"error": f"webhook not authenticated: needs {auth.methods()}"}, status_code=401
            )
        try:
            event = parse_webhook(body)
        except WebhookError as exc:
            metrics.inc("webhook_invalid")
            log.info("webhook refused: %s", exc)
            return JSONResponse({"error": str(exc)}, status_code=400)
        try:
            delivery = await get_router().deliver(event)
        except RPCError as exc:
            metrics.inc("webhook_temporal_error")
            log.error("could not signal Temporal: %s", exc)
            return JSONResponse({"error": "Temporal unavailable"}, status_code=503)
        return JSONResponse({"outcome": delivery.outcome})

    return api
