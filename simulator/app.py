"""HTTP face of the simulator: NanoMDM's and MicroMDM's command APIs plus ``/sim`` control.

Response shapes, status codes and error texts follow NanoMDM 0.9 with MySQL storage, so
the client code exercised against the simulator is the code that talks to NanoMDM.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import plistlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from simulator.fleet import Fleet, UnknownEnrollment

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
        if user == MICROMDM_USER and request.method == "POST":
            return await _micromdm_push(ids)
        if user != NANOMDM_USER:
            return _unauthorized("nanomdm")
        id_list = _split_ids(ids)
        if not id_list:
            return PlainTextResponse("Bad Request\n", status_code=400)
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

    async def _micromdm_push(udid: str) -> Response:
        eid = fleet.resolve(udid)
        if eid is None:
            return _json_error(404, f"unknown device: {udid}")
        result, err = fleet.push([eid])[eid]
        if err is not None:
            return _json_error(500, err)
        return JSONResponse({"status": "success", "id": result})

    @app.post("/v1/commands/{udid}")
    async def micromdm_command(udid: str, request: Request) -> Response:
        if _basic_user(request, api_key) != MICROMDM_USER:
            return _unauthorized("micromdm")
        parsed = _parse_command(await request.body())
        if parsed is None:
            return _json_error(400, "request body is not a command plist")
        eid = fleet.resolve(udid)
        if eid is None:
            return _json_error(404, f"unknown device: {udid}")
        uuid, request_type, command = parsed
        err = fleet.enqueue([eid], uuid, request_type, command)
        if err is not None:
            return _json_error(500, err)
        fleet.push([eid])
        payload = {"command_uuid": uuid, "command": {"request_type": request_type}}
        return JSONResponse({"payload": payload}, status_code=201)

    @app.post("/push/{udid}")
    async def micromdm_push(udid: str, request: Request) -> Response:
        if _basic_user(request, api_key) != MICROMDM_USER:
            return _unauthorized("micromdm")
        return await _micromdm_push(udid)

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

    @app.patch("/sim/faults")
    async def faults(patch: FaultsPatch, request: Request) -> Response:
        if (denied := _control_auth(request)) is not None:
            return denied
        return JSONResponse(fleet.set_faults(**patch.model_dump()))

    @app.get("/sim/stats")
    async def stats(request: Request) -> Response:
        if (denied := _control_auth(request)) is not None:
            return denied
        return JSONResponse({**fleet.stats, "faults": fleet.faults})

    return app
