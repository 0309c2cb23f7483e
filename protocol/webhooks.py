"""MDM-server webhooks (NanoMDM >= 0.9, NanoMDM <= 0.8, MicroMDM) in one normalised form.

All three senders post JSON ``{topic, event_id, created_at, acknowledge_event |
checkin_event}`` with the device's raw plist base64-encoded in ``raw_payload``. NanoMDM
0.9 adds ``ids: {id, type}``, the enrollment ID; for the others it is derived from the
raw plist (see :mod:`protocol.enrollment`).
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any, Literal

from pydantic import BaseModel, Field

from protocol import plist
from protocol.enrollment import (
    EnrollmentRef,
    derive,
    enrollment_id_problem,
    micromdm_address,
)
from protocol.results import CommandReport, ReportError, parse_report


class WebhookError(ValueError):
    """The request body is not a webhook we understand; the relay answers 400."""


class WebhookEvent(BaseModel):
    topic: str
    event_id: str = ""
    created_at: str | None = None
    kind: Literal["checkin", "acknowledge"]
    enrollment: EnrollmentRef
    udid: str = ""
    message_type: str = ""
    token_update_tally: int | None = None
    # TokenUpdate's AwaitingConfiguration: the device waits in Setup Assistant for
    # DeviceConfigured.
    awaiting_configuration: bool | None = None
    url_params: dict[str, str] = Field(default_factory=dict)
    report: CommandReport | None = None
    # NanoMDM >= 0.9 sends ``ids``; older NanoMDM and MicroMDM do not.
    has_ids: bool = False
    # Subscription events this webhook fires, worked out at first receipt; a webhook the
    # relay's inbox delivers again keeps them (see relay.events.EventDispatcher.dispatch).
    events: list[str] | None = None


def _decode_raw(event: dict[str, Any]) -> dict[str, Any]:
    raw = event.get("raw_payload")
    if not isinstance(raw, str) or not raw:
        raise WebhookError("event has no raw_payload")
    try:
        decoded = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise WebhookError(f"raw_payload is not base64: {exc}") from exc
    try:
        return plist.loads(decoded)
    except plist.PlistError as exc:
        raise WebhookError(f"raw_payload: {exc}") from exc


def _enrollment(event: dict[str, Any], payload: dict[str, Any]) -> tuple[EnrollmentRef, bool]:
    ids = event.get("ids")
    if isinstance(ids, dict) and isinstance(ids.get("id"), str) and ids["id"]:
        given = EnrollmentRef(
            id=ids["id"], type=str(ids.get("type", "")), mdm_address=micromdm_address(payload)
        )
        return given, True
    ref = derive(payload)
    if ref is None:
        raise WebhookError("cannot determine the enrollment: no ids and no UDID/EnrollmentID")
    return ref, False


def _checked(ref: EnrollmentRef, has_ids: bool) -> tuple[EnrollmentRef, bool]:
    if (problem := enrollment_id_problem(ref.id)) is not None:
        raise WebhookError(problem)
    return ref, has_ids


def parse_webhook(body: bytes) -> WebhookEvent:
    """Parse and validate one webhook body; raises :class:`WebhookError` with a reason."""
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WebhookError(f"body is not JSON: {exc}") from exc
    except RecursionError as exc:  # nested deeper than any webhook is
        raise WebhookError("body is nested too deeply") from exc
    if not isinstance(doc, dict):
        raise WebhookError("body is not a JSON object")
    topic = doc.get("topic")
    if not isinstance(topic, str) or not topic.startswith("mdm."):
        raise WebhookError(f"unknown topic {topic!r}")
    ack, checkin = doc.get("acknowledge_event"), doc.get("checkin_event")
    if isinstance(ack, dict) == isinstance(checkin, dict):
        raise WebhookError("need exactly one of acknowledge_event and checkin_event")
    event: dict[str, Any] = ack if isinstance(ack, dict) else checkin  # type: ignore[assignment]
    payload = _decode_raw(event)
    enrollment, has_ids = _checked(*_enrollment(event, payload))
    url_params = event.get("url_params") or {}
    if not isinstance(url_params, dict):
        raise WebhookError("url_params is not an object")
    common: dict[str, Any] = {
        "topic": topic,
        "event_id": str(doc.get("event_id") or ""),
        "created_at": doc.get("created_at") if isinstance(doc.get("created_at"), str) else None,
        "enrollment": enrollment,
        "udid": str(event.get("udid") or ""),
        "url_params": {str(k): str(v) for k, v in url_params.items()},
        "has_ids": has_ids,
    }
    if isinstance(ack, dict):
        try:
            report = parse_report(base64.b64decode(event["raw_payload"]), enrollment.id)
        except (ReportError, plist.PlistError) as exc:
            raise WebhookError(f"acknowledge_event: {exc}") from exc
        claimed = event.get("command_uuid")
        if claimed and report.command_uuid and claimed != report.command_uuid:
            raise WebhookError("command_uuid does not match the raw payload's CommandUUID")
        return WebhookEvent(kind="acknowledge", report=report, **common)
    tally = event.get("token_update_tally")
    return WebhookEvent(
        kind="checkin",
        message_type=str(payload.get("MessageType", "")),
        token_update_tally=tally if isinstance(tally, int) else None,
        awaiting_configuration=(
            payload["AwaitingConfiguration"]
            if isinstance(payload.get("AwaitingConfiguration"), bool)
            else None
        ),
        **common,
    )
