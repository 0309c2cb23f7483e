"""Webhook bodies built by hand: what an attacker or a confused sender could post."""

from __future__ import annotations

import plistlib
import uuid
from typing import Any

from simulator.webhooks import event_body, signature


def report_webhook(
    enrollment_id: str, command_uuid: str, request_type: str, **body: Any
) -> bytes:
    """A NanoMDM 0.9 ``mdm.Connect`` Acknowledged report for ``enrollment_id``."""
    raw = plistlib.dumps(
        {
            "CommandUUID": command_uuid,
            "RequestType": request_type,
            "Status": "Acknowledged",
            "UDID": enrollment_id,
            **body,
        }
    )
    return event_body(
        fmt="nanomdm",
        topic="mdm.Connect",
        event_id=uuid.uuid4().hex[:16],
        udid=enrollment_id,
        enrollment_id=enrollment_id,
        enrollment_type="Device",
        raw_payload=raw,
        status="Acknowledged",
        command_uuid=command_uuid,
    )


def checkin_webhook(enrollment_id: str, message_type: str, tally: int | None = None) -> bytes:
    """An ``mdm.Authenticate`` or ``mdm.TokenUpdate`` check-in for ``enrollment_id``."""
    raw: dict[str, Any] = {"MessageType": message_type, "UDID": enrollment_id, "Topic": "t"}
    if message_type == "TokenUpdate":
        raw |= {"Token": b"\x01" * 32, "PushMagic": str(uuid.uuid4())}
    else:
        raw |= {"SerialNumber": "C02BENCH0001", "OSVersion": "15.4", "BuildVersion": "24E248"}
    return event_body(
        fmt="nanomdm",
        topic=f"mdm.{message_type}",
        event_id=uuid.uuid4().hex[:16],
        udid=enrollment_id,
        enrollment_id=enrollment_id,
        enrollment_type="Device",
        raw_payload=plistlib.dumps(raw),
        token_update_tally=tally,
    )


def headers(key: str | None, body: bytes) -> dict[str, str]:
    out = {"Content-Type": "application/json"}
    if key is not None:
        out["X-Hmac-Signature"] = signature(key, body)
    return out
