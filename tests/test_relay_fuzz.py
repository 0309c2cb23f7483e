"""Junk at ``/webhook`` gets a 4xx, never a 5xx; one enrollment-ID grammar everywhere."""

from __future__ import annotations

import asyncio
import base64
import json
import plistlib
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import plist
from protocol.enrollment import enrollment_id_problem
from protocol.webhooks import WebhookEvent
from relay.app import webhook_router
from relay.routing import Delivery
from relay.webhook_auth import WebhookAuth


class Recorder:
    async def deliver(self, event: WebhookEvent) -> Delivery:
        return Delivery("checkin")


def relay_app(auth: WebhookAuth | None = None) -> FastAPI:
    app = FastAPI()
    # insecure by default to reach the parser: authentication is tested apart
    auth = auth or WebhookAuth(insecure=True)
    app.include_router(webhook_router(lambda: Recorder(), auth))  # type: ignore[arg-type, return-value]
    return app


async def post_all(
    bodies: list[bytes],
    headers: dict[str, str | bytes] | None = None,
    auth: WebhookAuth | None = None,
) -> list[int]:
    transport = httpx.ASGITransport(app=relay_app(auth))
    async with httpx.AsyncClient(transport=transport, base_url="http://relay") as client:
        answers = [await client.post("/webhook", content=b, headers=headers) for b in bodies]
    return [a.status_code for a in answers]


def webhook(event: dict[str, Any], topic: str = "mdm.Connect") -> bytes:
    kind = "acknowledge_event" if topic == "mdm.Connect" else "checkin_event"
    return json.dumps({"topic": topic, "event_id": "e", kind: event}).encode()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    raw=st.binary(max_size=300),
    doc=json_values,
    event=st.dictionaries(
        st.sampled_from(["udid", "status", "command_uuid", "raw_payload", "ids", "url_params"]),
        json_values,
    ),
    payload=st.dictionaries(
        st.sampled_from(["UDID", "Status", "CommandUUID", "RequestType", "MessageType", "UserID"]),
        st.text(max_size=12) | st.integers(-(2**63), 2**63 - 1) | st.binary(max_size=8),
    ),
)
def test_no_body_gets_a_server_error(
    raw: bytes, doc: Any, event: dict[str, Any], payload: dict[str, Any]
) -> None:
    # binary plists carry any string, control characters included
    binary = plistlib.dumps(payload, fmt=plistlib.FMT_BINARY)
    encoded = dict(event, raw_payload=base64.b64encode(binary).decode())
    bodies = [raw, json.dumps(doc).encode(), webhook(event), webhook(encoded)]
    bodies.append(webhook(encoded, "mdm.TokenUpdate"))
    statuses = asyncio.run(post_all(bodies))
    assert all(s < 500 for s in statuses), statuses


def test_deep_nesting_and_odd_headers_are_refused_cleanly() -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    nested_plist = b"<plist><array>" * 5000 + b"</array></plist>" * 5000
    body = webhook({"udid": "D", "raw_payload": base64.b64encode(nested_plist).decode()})
    statuses = asyncio.run(post_all([deep, body]))
    assert all(400 <= s < 500 for s in statuses), statuses
    odd = {"X-Hmac-Signature": b"\xe9t\xe9\xff", "Authorization": b"Basic \xe9\xff"}
    keyed = WebhookAuth.from_settings("hmac-key", "u:p", None)
    assert asyncio.run(post_all([body], odd, keyed)) == [401]


@pytest.mark.parametrize(
    ("eid", "ok"),
    [
        ("C9E587FA-CC62-45BE-A3EF-2B24708B500F", True),
        ("C9E587FA-CC62-45BE-A3EF-2B24708B500F:B9B0E8E5-7B0A-4C3B-9D9A-2B1F0E1C1D1E", True),
        ("00008120-0001234A0EF8C01E:ann.smith", True),
        ("", False),
        ("A\x00B", False),
        ("A\x1bB", False),
        ("A B", False),
        ("A\nB", False),
        ("X" * 256, False),
    ],
)
def test_one_enrollment_id_grammar(eid: str, ok: bool) -> None:
    assert (enrollment_id_problem(eid) is None) is ok


def test_a_webhook_with_a_control_character_in_its_enrollment_is_400() -> None:
    binary = plistlib.dumps({"UDID": "A\x01B", "Status": "Idle"}, fmt=plistlib.FMT_BINARY)
    raw = base64.b64encode(binary).decode()
    assert asyncio.run(post_all([webhook({"udid": "A", "raw_payload": raw})])) == [400]
    ids = {"id": "A\x00B", "type": "Device"}
    idle = base64.b64encode(plist.dumps({"UDID": "A", "Status": "Idle"})).decode()
    body = webhook({"udid": "A", "ids": ids, "raw_payload": idle})
    assert asyncio.run(post_all([body])) == [400]
