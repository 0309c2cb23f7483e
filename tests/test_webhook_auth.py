"""Who may post to ``/webhook``: HMAC (NanoMDM), Basic credentials or a path token (MicroMDM)."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from protocol.webhooks import WebhookEvent
from relay.app import webhook_router
from relay.hmac_check import sign
from relay.routing import Delivery
from relay.webhook_auth import WebhookAuth

BODY = (Path(__file__).parent / "fixtures" / "micromdm_webhooks.jsonl").read_bytes().splitlines()[0]


class Recorder:
    """Stands in for the Temporal router: the relay's auth decision is what is tested."""

    def __init__(self) -> None:
        self.delivered: list[WebhookEvent] = []

    async def deliver(self, event: WebhookEvent) -> Delivery:
        self.delivered.append(event)
        return Delivery(outcome="checkin")


async def post(auth: WebhookAuth, path: str = "/webhook", **kw: Any) -> tuple[int, int]:
    recorder = Recorder()
    app = FastAPI()
    app.include_router(webhook_router(lambda: recorder, auth))  # type: ignore[arg-type, return-value]
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://relay") as client:
        resp = await client.post(path, content=BODY, **kw)
    return resp.status_code, len(recorder.delivered)


def basic(user: str, secret: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode()}


async def test_basic_credentials_from_the_webhook_url_are_accepted() -> None:
    auth = WebhookAuth.from_settings(None, "micromdm:s3cret", None)
    assert await post(auth, headers=basic("micromdm", "s3cret")) == (200, 1)
    assert await post(auth) == (401, 0)
    assert await post(auth, headers=basic("micromdm", "wrong")) == (401, 0)
    assert await post(auth, headers=basic("other", "s3cret")) == (401, 0)
    assert await post(auth, headers={"Authorization": "Basic !!!"}) == (401, 0)


async def test_a_path_token_is_accepted_and_a_wrong_one_refused() -> None:
    auth = WebhookAuth.from_settings(None, None, "tok-123")
    assert await post(auth, "/webhook/tok-123") == (200, 1)
    assert await post(auth, "/webhook/tok-124") == (401, 0)
    assert await post(auth, "/webhook") == (401, 0)


async def test_any_configured_method_passes_and_hmac_still_works() -> None:
    auth = WebhookAuth.from_settings("hmac-key", "micromdm:s3cret", None)
    assert await post(auth, headers={"X-Hmac-Signature": sign("hmac-key", BODY)}) == (200, 1)
    assert await post(auth, headers=basic("micromdm", "s3cret")) == (200, 1)
    assert await post(auth, headers={"X-Hmac-Signature": sign("other", BODY)}) == (401, 0)


async def test_nothing_configured_refuses_everything_unless_insecure_is_set() -> None:
    """A forged unsigned Authenticate could end a running lock: secure by default."""
    assert await post(WebhookAuth()) == (401, 0)
    assert await post(WebhookAuth(), "/webhook/anything") == (401, 0)
    insecure = WebhookAuth.from_settings(None, None, None, insecure=True)
    assert await post(insecure) == (200, 1)
    assert await post(insecure, "/webhook/anything") == (200, 1)
    # a configured method still applies in insecure mode
    both = WebhookAuth.from_settings("hmac-key", None, None, insecure=True)
    assert await post(both) == (401, 0)


def test_basic_setting_must_be_user_and_secret() -> None:
    for bad in ("nocolon", ":secret", "user:"):
        with pytest.raises(ValueError, match="user:secret"):
            WebhookAuth.from_settings(None, bad, None)
    auth = WebhookAuth.from_settings("", "u:p:with:colons", "")
    assert auth.basic == ("u", "p:with:colons") and auth.hmac_key is None
    assert auth.methods() == "HTTP Basic"


async def test_an_oversized_webhook_is_refused_before_it_is_read() -> None:
    big = b'{"topic":"mdm.Connect","pad":"' + b"x" * (2 << 20) + b'"}'
    recorder = Recorder()
    app = FastAPI()
    insecure = WebhookAuth(insecure=True)
    app.include_router(webhook_router(lambda: recorder, insecure))  # type: ignore[arg-type, return-value]
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://relay") as client:
        declared = await client.post("/webhook", content=big)
        assert declared.status_code == 413

        async def stream() -> AsyncIterator[bytes]:  # no Content-Length: counted as read
            for _ in range(3):
                yield b"x" * (1 << 19)

        streamed = await client.post("/webhook", content=stream())
        assert streamed.status_code == 413
    assert recorder.delivered == []
