"""``POST /webhook``: verify, parse, hand to Temporal, answer fast.

200: delivered, or understood and deliberately dropped (Idle, foreign commands, late
reports). 400: not a webhook we can read. 401: bad or missing HMAC signature when a key
is configured. 503: Temporal unreachable (NanoMDM does not retry; the step engine's
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
from relay.hmac_check import verify
from relay.routing import Router

log = logging.getLogger("mdmflow.relay")


def webhook_router(get_router: Callable[[], Router], hmac_key: str | None) -> APIRouter:
    api = APIRouter()

    @api.post("/webhook", tags=["relay"], summary="MDM server webhook (NanoMDM / MicroMDM)")
    async def webhook(request: Request) -> Response:
        body = await request.body()
        metrics.inc("webhook_received")
        if hmac_key and not verify(hmac_key, body, request.headers.get("X-Hmac-Signature")):
            metrics.inc("webhook_bad_signature")
            log.warning("webhook refused: bad or missing X-Hmac-Signature")
            return JSONResponse({"error": "bad or missing X-Hmac-Signature"}, status_code=401)
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
