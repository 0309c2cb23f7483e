"""MicroMDM 1.13's side of the API: its command parsing, device records, responses.

Texts and shapes follow MicroMDM's source (platform/command/new_command.go,
platform/apns/push.go, platform/device/get_devices.go); the routes are in
:mod:`simulator.app`, the queue and push state in :mod:`simulator.fleet`.
"""

from __future__ import annotations

import base64
import hashlib
import plistlib
import uuid
from typing import Any, Literal

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from simulator import gojson
from simulator.model import Enrollment
from simulator.webhooks import rfc3339nano

PushFault = Literal["drop", "invalid_token"]
PUSH_FAULTS: tuple[PushFault, ...] = ("drop", "invalid_token")

MALFORMED = "request is malformed"
INVALID_TOKEN = "invalid push token"
# What buford returns for APNs' 410 Unregistered: the device removed its MDM profile.
UNREGISTERED = "device token is inactive for the specified topic"
_ZERO_TIME = "0001-01-01T00:00:00Z"  # Go's zero time.Time, which omitempty keeps


class CommandError(Exception):
    """The raw command cannot be queued; MicroMDM answers 500 with this text."""


class PushCrash(RuntimeError):
    """Raised to abort a push response the way MicroMDM's nil push service panics."""


def unknown_push_target(target: str) -> str:
    return f"retrieving PushInfo by UDID: not found: PushInfo udid {target}"


def parse_command(body: bytes) -> tuple[str, str, dict[str, Any]]:
    """(CommandUUID, RequestType, Command) of a raw XML plist command.

    MicroMDM decodes the body with an XML-only plist decoder into a struct, so a binary
    plist, a non-dict or a wrongly typed key is a parse error; missing keys are not.
    """
    try:
        doc = plistlib.loads(body, fmt=plistlib.FMT_XML)
    except Exception as exc:  # plistlib raises several unrelated types
        raise CommandError(f"parse payload as plist: {exc}") from exc
    if not isinstance(doc, dict):
        raise CommandError(_type_error(doc, "command.newRawCommandRequest"))
    command_uuid = doc.get("CommandUUID", "")
    command = doc.get("Command", {})
    if not isinstance(command_uuid, str):
        raise CommandError(_type_error(command_uuid, "string"))
    if not isinstance(command, dict):
        raise CommandError(_type_error(command, "struct { RequestType string }"))
    request_type = command.get("RequestType", "")
    if not isinstance(request_type, str):
        raise CommandError(_type_error(request_type, "string"))
    if not command_uuid or not request_type:
        raise CommandError(MALFORMED)
    return command_uuid, request_type, command


def _type_error(value: object, go_type: str) -> str:
    kind = {dict: "dictionary", list: "array", str: "string", bool: "boolean", int: "integer"}
    name = kind.get(type(value), type(value).__name__)
    return f"parse payload as plist: plist: cannot unmarshal {name} into Go value of type {go_type}"


def command_payload(udid: str, command_uuid: str, request_type: str, body: bytes) -> dict[str, Any]:
    """The 201 answer's ``payload``: the RawCommand MicroMDM queued, raw body included."""
    return {
        "udid": udid,
        "command_uuid": command_uuid,
        "command": {"request_type": request_type},
        "payload": base64.b64encode(body).decode(),
    }


def record_uuid(dev: Enrollment) -> str:
    """MicroMDM's own ID for a device record: a v4 UUID made at first Authenticate."""
    digest = hashlib.blake2b(f"{dev.attr_seed}:{dev.udid}:micromdm".encode(), digest_size=16)
    return str(uuid.UUID(bytes=digest.digest(), version=4))


def device_record(dev: Enrollment, authenticate: dict[str, Any]) -> dict[str, Any]:
    """One ``/v1/devices`` entry: Go's ``device.Device`` with ``omitempty``.

    Filled from the device's Authenticate and TokenUpdate, as MicroMDM's device worker
    does. Empty strings and false are left out (so a checked-out device has no
    ``enrolled``); the ``time.Time`` fields are not, even when zero.
    """
    fields: list[tuple[str, Any]] = [
        ("uuid", record_uuid(dev)),
        ("udid", dev.udid),
        ("serial_number", authenticate.get("SerialNumber", "")),
        ("os_version", authenticate.get("OSVersion", "")),
        ("build_version", authenticate.get("BuildVersion", "")),
        ("product_name", authenticate.get("ProductName", "")),
        ("imei", authenticate.get("IMEI", "")),
        ("meid", authenticate.get("MEID", "")),
        ("push_magic", dev.push_magic),
        ("awaiting_configuration", dev.awaiting),
        ("token", dev.token.hex()),
        ("enrolled", dev.enrolled),
        ("model", authenticate.get("Model", "")),
        ("model_name", authenticate.get("ModelName", "")),
        ("device_name", authenticate.get("DeviceName", "")),
    ]
    record = {k: v for k, v in fields if v}
    record["dep_profile_assign_time"] = _ZERO_TIME
    record["dep_profile_push_time"] = _ZERO_TIME
    record["dep_profile_assigned_date"] = _ZERO_TIME
    record["last_seen"] = rfc3339nano(dev.last_seen) if dev.last_seen else _ZERO_TIME
    return record


class GoJSONResponse(Response):
    """A MicroMDM answer: ``json.Encoder`` output with two-space indent and a newline."""

    media_type = "application/json; charset=utf-8"

    def render(self, content: Any) -> bytes:
        return gojson.encode(content)


def error_response(message: str, status_code: int = 500) -> GoJSONResponse:
    """MicroMDM's ``httputil.ErrorEncoder``: 500 and ``{"error": ...}`` unless told otherwise."""
    return GoJSONResponse({"error": message}, status_code=status_code)


class DroppedConnection(Response):
    """Close the connection without an answer, as MicroMDM does when a handler panics.

    Go's HTTP server recovers the panic and hangs up before writing anything. Uvicorn
    marks a response started before it checks header names, so an invalid name makes it
    close without writing; were the headers written anyway, the short body still ends
    the exchange in a protocol error.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(status_code=200)
        self.reason = reason

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"content-length", b"1"), (b"x-simulated panic", b"1")]
        try:
            await send({"type": "http.response.start", "status": 200, "headers": headers})
        except Exception as exc:  # the server refused the header: nothing was written
            raise PushCrash(self.reason) from exc
        raise PushCrash(self.reason)
