"""HTTP face of the simulator: NanoMDM's and MicroMDM's command APIs plus ``/sim`` control.

Response shapes, status codes and error texts follow NanoMDM 0.9 with MySQL storage on
the ``nanomdm`` user's endpoints and MicroMDM 1.13 on the ``micromdm`` user's
(``/v1/commands``, ``/v1/push``, ``/push``, ``/v1/devices``), so the client code exercised
against the simulator is the code that talks to either server.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import plistlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from simulator import micromdm
from simulator.fleet import Fleet, UnknownEnrollment
from simulator.micromdm import GoJSONResponse, PushFault

NANOMDM_USER = "nanomdm"
MICROMDM_USER = "micromdm"


def _basic_user(request: Request, api_key: str) -> str | None:
    """The Basic-auth user name if the password is the API key, else None."""
    header = request.headers.get("authorization", "")
    if not header.lower().startswith("basic "):
        return None
    try:
        user, _, password = base64.b64decode(header[6:], validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    if not hmac.compare_digest(password.encode(), api_key.encode()):
        return None
    return user


def _unauthorized(realm: str) -> Response:
    return PlainTextResponse(
        "Unauthorized\n", status_code=401, headers={"WWW-Authenticate": f'Basic realm="{realm}"'}
    )


def _json_error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _parse_command(body: bytes) -> tuple[str, str, dict[str, Any]] | None:
    """(CommandUUID, RequestType, Command dict) of an enqueued plist, None if invalid."""
    try:
        doc = plistlib.loads(body)
    except Exception:  # plistlib raises several unrelated types
        return None
    if not isinstance(doc, dict):
        return None
    uuid, cmd = doc.get("CommandUUID"), doc.get("Command")
    if not isinstance(uuid, str) or not uuid or not isinstance(cmd, dict):
        return None
    request_type = cmd.get("RequestType")
    if not isinstance(request_type, str) or not request_type:
        return None
    return uuid, request_type, cmd


def _split_ids(ids: str) -> list[str]:
    return [i for i in (s.strip() for s in ids.split(",")) if i]


def _push_body(
    fleet: Fleet, ids: list[str], body: dict[str, Any]
) -> tuple[dict[str, Any], int, int]:
    """Push and fill ``status``; returns (status map, error count, id count)."""
    status: dict[str, Any] = {}
    errors = 0
    for i, (result, err) in fleet.push(ids).items():
        if err is not None:
            status[i] = {"push_error": err}
            errors += 1
        else:
            status[i] = {"push_result": result}
    if status:
        body["status"] = status
    return status, errors, len(status)


class BehaviourPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    notnow_count: int | None = Field(default=None, ge=0)
    offline: bool | None = None
    connect_latency: float | None = Field(default=None, ge=0)
    errors: dict[str, int | str | list[int | str]] | None = None


class FaultsPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    drop_rate: float | None = Field(default=None, ge=0, le=1)
    duplicate_rate: float | None = Field(default=None, ge=0, le=1)
    reorder_rate: float | None = Field(default=None, ge=0, le=1)
    seed: int | None = None
    # MicroMDM's push endpoints; null (or "none") makes them work again.
    push_fault: PushFault | Literal["none"] | None = None


class UserChannelRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: str | None = None


def parse_error_spec(spec: int | str | list[int | str]) -> tuple[int, str, str]:
    """``code`` | ``"code"`` | ``[code, domain?, text?]`` -> (code, domain, text)."""
    items = spec if isinstance(spec, list) else [spec]
    if not 1 <= len(items) <= 3:
        raise ValueError("an error is [code, domain, description]")
    try:
        code = int(items[0])
    except ValueError as exc:
        raise ValueError(f"error code {items[0]!r} is not an integer") from exc
    domain = str(items[1]) if len(items) > 1 else "MCMDMErrorDomain"
    text = str(items[2]) if len(items) > 2 else f"Simulated error {code} <{domain}:{code}>"
    return code, domain, text


def _device_filters(body: bytes) -> tuple[list[str], list[str]]:
    """``filter_udid`` and ``filter_serial`` of a ``/v1/devices`` body (may be empty).

    Raises ValueError for a body MicroMDM's JSON decoder would refuse. ``page`` and
    ``per_page`` are accepted and, as by MicroMDM's stores, ignored.
    """
    if not body.strip():
        return [], []
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"decoding request: {exc}") from exc
    if not isinstance(doc, dict):
        raise ValueError("json: cannot unmarshal into Go value of type device.ListDevicesOption")
    out: list[list[str]] = []
    for key in ("filter_udid", "filter_serial"):
        value = doc.get(key) or []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"json: cannot unmarshal {key} into Go type []string")
        out.append(value)
    return out[0], out[1]


def _micromdm_push(fleet: Fleet, udid: str) -> Response:
    """MicroMDM's push answer for one UDID or UserID."""
    try:
        push_id, error = fleet.push_micromdm(udid)
    except micromdm.PushCrash as crash:
        return micromdm.DroppedConnection(str(crash))
    if error is not None:  # a failed response is written by MicroMDM's error encoder
        return GoJSONResponse({"error": error}, status_code=500)
    return GoJSONResponse({"status": "success", "push_notification_id": push_id})


def create_app(fleet: Fleet) -> FastAPI:
    """The FastAPI app; starts the fleet on startup if it is not running yet."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        started_here = not fleet.running
        await fleet.start()
        try:
            yield
        finally:
            if started_here:
                await fleet.stop()

    app = FastAPI(title="mdmflow NanoMDM simulator", lifespan=lifespan)
    api_key = fleet.config.api_key

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _json_error(400, str(exc.errors()))

    @app.exception_handler(UnknownEnrollment)
    async def _unknown(_: Request, exc: UnknownEnrollment) -> JSONResponse:
        return _json_error(404, f"unknown enrollment: {exc.args[0]}")

    @app.exception_handler(ValueError)
    async def _bad_value(_: Request, exc: ValueError) -> JSONResponse:
        return _json_error(400, str(exc))

    # ---- NanoMDM -----------------------------------------------------------------------

    @app.put("/v1/enqueue/{ids}")
    async def enqueue(ids: str, request: Request, nopush: str | None = None) -> Response:
        if _basic_user(request, api_key) != NANOMDM_USER:
            return _unauthorized("nanomdm")
        id_list = _split_ids(ids)
        parsed = _parse_command(await request.body())
        if parsed is None or not id_list:
            return PlainTextResponse("Bad Request\n", status_code=400)
        uuid, request_type, command = parsed
        no_push = nopush not in (None, "", "0", "false")
        body: dict[str, Any] = {}
        command_error = fleet.enqueue(id_list, uuid, request_type, command)
        code = 200
        if command_error is not None:
            code = 500
        elif not no_push and fleet.push_fault == "drop":
            # queued, then the push crashes the handler: the answer is lost
            fleet.stats_add("pushes_dropped", len(id_list))
            return micromdm.DroppedConnection(f"push of {uuid} crashed")
        elif not no_push:
            status, errors, total = _push_body(fleet, id_list, body)
            if errors and errors == total:
                code = 500
                body["push_error"] = next(iter(status.values()))["push_error"]
            elif errors:
                code = 207
        if no_push:
            body["no_push"] = True
        if command_error is not None:
            body["command_error"] = command_error
        body["command_uuid"] = uuid
        body["request_type"] = request_type
        return JSONResponse(body, status_code=code)

    @app.api_route("/v1/push/{ids}", methods=["GET", "POST"])
    async def push(ids: str, request: Request) -> Response:
        user = _basic_user(request, api_key)
        if user == MICROMDM_USER:  # MicroMDM routes only POST here
            if request.method != "POST":
                return PlainTextResponse("", status_code=405)
            return _micromdm_push(fleet, ids)
        if user != NANOMDM_USER:
            return _unauthorized("nanomdm")
        id_list = _split_ids(ids)
        if not id_list:
            return PlainTextResponse("Bad Request\n", status_code=400)
        if fleet.push_fault == "drop":
            fleet.stats_add("pushes_dropped", len(id_list))
            return micromdm.DroppedConnection("push crashed")
        body: dict[str, Any] = {}
        status, errors, total = _push_body(fleet, id_list, body)
        code = 200
        if errors and errors == total:
            code = 500
            body["push_error"] = next(iter(status.values()))["push_error"]
        elif errors:
            code = 207
        return JSONResponse(body, status_code=code)

    # ---- MicroMDM ----------------------------------------------------------------------

    @app.api_route("/v1/commands/{udid}", methods=["POST", "PUT"])
    async def micromdm_command(udid: str, request: Request) -> Response:
        """Queue a raw plist command: any UDID, any number of copies, no push."""
        if _basic_user(request, api_key) != MICROMDM_USER:
            return _unauthorized("micromdm")
        body = await request.body()
        try:
            uuid, request_type, command = micromdm.parse_command(body)
        except micromdm.CommandError as exc:
            return micromdm.error_response(str(exc))
        fleet.queue_micromdm(udid, uuid, request_type, command)
        payload = micromdm.command_payload(udid, uuid, request_type, body)
        return GoJSONResponse({"payload": payload}, status_code=201)

    @app.get("/push/{udid}")
    async def micromdm_push(udid: str, request: Request) -> Response:
        """MicroMDM's legacy push route: GET only, as its router registers it."""
        if _basic_user(request, api_key) != MICROMDM_USER:
            return _unauthorized("micromdm")
        return _micromdm_push(fleet, udid)

    @app.post("/v1/devices")
    async def micromdm_devices(request: Request) -> Response:
        if _basic_user(request, api_key) != MICROMDM_USER:
            return _unauthorized("micromdm")
        try:
            udids, serials = _device_filters(await request.body())
        except ValueError as exc:
            return micromdm.error_response(str(exc))
        # Go encodes an empty (nil) device slice as null.
        return GoJSONResponse({"devices": fleet.micromdm_devices(udids, serials) or None})

    # ---- control API -------------------------------------------------------------------

    def _control_auth(request: Request) -> Response | None:
        if _basic_user(request, api_key) not in (NANOMDM_USER, MICROMDM_USER):
            return _unauthorized("simulator")
        return None

    @app.post("/sim/devices")
    async def enroll_devices(
        request: Request,
        count: int = 1,
        kind: Literal["mac", "iphone", "ipad"] = "mac",
        awaiting_configuration: bool = False,
    ) -> Response:
        if (denied := _control_auth(request)) is not None:
            return denied
        if not 0 < count <= 100_000:
            return _json_error(400, "count must be between 1 and 100000")
        ids = await fleet.enroll(count, kind, awaiting_configuration=awaiting_configuration)
        return JSONResponse({"enrolled": ids}, status_code=201)

    @app.get("/sim/devices")
    async def list_devices(request: Request) -> Response:
        if (denied := _control_auth(request)) is not None:
            return denied
        return JSONResponse({"devices": fleet.list_devices()})

    @app.get("/sim/devices/{device_id}")
    async def show_device(device_id: str, request: Request) -> Response:
        if (denied := _control_auth(request)) is not None:
            return denied
        return JSONResponse(fleet.device_state(device_id))

    @app.patch("/sim/devices/{device_id}")
    async def patch_device(device_id: str, patch: BehaviourPatch, request: Request) -> Response:
        if (denied := _control_auth(request)) is not None:
            return denied
        changes: dict[str, Any] = {
            k: getattr(patch, k) for k in patch.model_fields_set if k != "errors"
        }
        if "errors" in patch.model_fields_set:
            changes["errors"] = {k: parse_error_spec(v) for k, v in (patch.errors or {}).items()}
        behaviour = fleet.update_behaviour(device_id, **changes)
        return JSONResponse({"id": device_id, "behaviour": behaviour.to_json()})

    @app.post("/sim/devices/{device_id}/connect")
    async def connect(device_id: str, request: Request) -> Response:
        if (denied := _control_auth(request)) is not None:
            return denied
        await fleet.connect(device_id)
        return JSONResponse({"id": device_id, "connecting": True})

    @app.post("/sim/devices/{device_id}/reenroll")
    async def reenroll(device_id: str, request: Request) -> Response:
        if (denied := _control_auth(request)) is not None:
            return denied
        await fleet.reenroll(device_id)
        return JSONResponse({"id": device_id, "reenrolled": True})

    @app.post("/sim/devices/{device_id}/checkout")
    async def checkout(device_id: str, request: Request) -> Response:
        if (denied := _control_auth(request)) is not None:
            return denied
        await fleet.checkout(device_id)
        return JSONResponse({"id": device_id, "checked_out": True})

    @app.post("/sim/devices/{device_id}/users")
    async def user_channel(device_id: str, request: Request) -> Response:
        if (denied := _control_auth(request)) is not None:
            return denied
        raw = await request.body()
        req = UserChannelRequest.model_validate_json(raw) if raw.strip() else UserChannelRequest()
        uid = await fleet.enroll_user_channel(device_id, req.user_id)
        return JSONResponse({"id": uid}, status_code=201)

    def _all_faults() -> dict[str, Any]:
        return {**fleet.faults, "push_fault": fleet.push_fault}

    @app.patch("/sim/faults")
    async def faults(patch: FaultsPatch, request: Request) -> Response:
        if (denied := _control_auth(request)) is not None:
            return denied
        changes = patch.model_dump(exclude={"push_fault"})
        if "push_fault" in patch.model_fields_set:
            changes["push_fault"] = patch.push_fault or "none"
        fleet.set_faults(**changes)
        return JSONResponse(_all_faults())

    @app.get("/sim/stats")
    async def stats(request: Request) -> Response:
        if (denied := _control_auth(request)) is not None:
            return denied
        return JSONResponse({**fleet.stats, "faults": _all_faults()})

    @app.get("/sim/commands/{command_uuid}")
    async def command_counts(command_uuid: str, request: Request) -> Response:
        """Copies of one CommandUUID queued and answered (MicroMDM queues repeats)."""
        if (denied := _control_auth(request)) is not None:
            return denied
        return JSONResponse(
            {
                "command_uuid": command_uuid,
                "queued": fleet.command_copies(command_uuid),
                "answered": fleet.command_answers(command_uuid),
            }
        )

    return app
