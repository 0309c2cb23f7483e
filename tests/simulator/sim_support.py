"""Helpers for the simulator tests: loopback servers, a webhook receiver, decoded events."""

from __future__ import annotations

import asyncio
import base64
import json
import plistlib
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import uvicorn

from simulator.fleet import Fleet

MM_AUTH = ("micromdm", "nanomdm")  # MicroMDM's Basic user with the default API key

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class Receiver:
    """A tiny ASGI app recording every POST by path; ``/status/<code>/...`` answers <code>."""

    def __init__(self) -> None:
        self.hooks: dict[str, list[tuple[dict[str, str], bytes]]] = defaultdict(list)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        more = True
        while more:
            msg = await receive()
            body += msg.get("body", b"")
            more = msg.get("more_body", False)
        path: str = scope["path"]
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        self.hooks[path].append((headers, body))
        code = int(path.split("/")[2]) if path.startswith("/status/") else 200
        await send({"type": "http.response.start", "status": code, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


async def start_server(app: Any) -> tuple[uvicorn.Server, asyncio.Task[None], str]:
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.005)
    port = server.servers[0].sockets[0].getsockname()[1]
    return server, task, f"http://127.0.0.1:{port}"


async def stop_server(server: uvicorn.Server, task: asyncio.Task[None]) -> None:
    server.should_exit = True
    await task


@dataclass
class Event:
    """One received webhook, decoded."""

    doc: dict[str, Any]
    headers: dict[str, str]
    body: bytes

    @property
    def topic(self) -> str:
        return str(self.doc["topic"])

    @property
    def event(self) -> dict[str, Any]:
        ev = self.doc.get("acknowledge_event") or self.doc.get("checkin_event")
        assert isinstance(ev, dict)
        return ev

    @property
    def raw(self) -> dict[str, Any]:
        out = plistlib.loads(base64.b64decode(self.event["raw_payload"]))
        assert isinstance(out, dict)
        return out

    @property
    def enrollment_id(self) -> str:
        ids = self.event.get("ids")
        if isinstance(ids, dict):
            return str(ids["id"])
        user = self.raw.get("UserID")
        return f"{self.event['udid']}:{user}" if user else str(self.event["udid"])

    @property
    def status(self) -> str | None:
        return self.event.get("status")

    @property
    def key(self) -> tuple[str, str | None, str | None]:
        return (self.topic, self.status, self.event.get("command_uuid"))


@dataclass
class Sim:
    fleet: Fleet
    url: str
    client: httpx.AsyncClient
    receiver: Receiver
    hook_path: str
    extra: list[Any] = field(default_factory=list)

    def events(self, enrollment_id: str | None = None, topic: str | None = None) -> list[Event]:
        out = []
        for headers, body in self.receiver.hooks[self.hook_path]:
            ev = Event(json.loads(body), headers, body)
            if topic is not None and ev.topic != topic:
                continue
            if enrollment_id is not None and ev.enrollment_id != enrollment_id:
                continue
            out.append(ev)
        return out

    def connects(self, enrollment_id: str | None = None) -> list[tuple[str | None, str | None]]:
        """(status, command_uuid) of each mdm.Connect webhook, in arrival order."""
        return [
            (e.status, e.event.get("command_uuid"))
            for e in self.events(enrollment_id, "mdm.Connect")
        ]

    async def enqueue(
        self,
        ids: str | list[str],
        request_type: str,
        command_uuid: str | None = None,
        *,
        nopush: bool = False,
        **fields: Any,
    ) -> httpx.Response:
        cmd_uuid = command_uuid or str(uuid.uuid4()).upper()
        body = plistlib.dumps(
            {"Command": {"RequestType": request_type, **fields}, "CommandUUID": cmd_uuid}
        )
        id_part = ids if isinstance(ids, str) else ",".join(ids)
        return await self.client.put(
            f"/v1/enqueue/{id_part}", content=body, params={"nopush": "1"} if nopush else None
        )

    async def mm_command(
        self, target: str, request_type: str, command_uuid: str | None = None, **fields: Any
    ) -> httpx.Response:
        """POST a raw command to MicroMDM's ``/v1/commands/{target}`` (nothing is pushed)."""
        cmd_uuid = command_uuid or str(uuid.uuid4()).upper()
        body = plistlib.dumps(
            {"Command": {"RequestType": request_type, **fields}, "CommandUUID": cmd_uuid}
        )
        return await self.client.post(f"/v1/commands/{target}", content=body, auth=MM_AUTH)

    async def mm_push(self, target: str) -> httpx.Response:
        """MicroMDM's ``POST /v1/push/{target}``."""
        return await self.client.post(f"/v1/push/{target}", auth=MM_AUTH)

    async def run(self, enrollment_id: str, request_type: str, **fields: Any) -> Event:
        """Enqueue one command, push, wait, and return its final report."""
        cmd_uuid = str(uuid.uuid4()).upper()
        resp = await self.enqueue(enrollment_id, request_type, cmd_uuid, **fields)
        assert resp.status_code == 200, resp.text
        await self.fleet.wait_idle(5)
        finals = [
            e
            for e in self.events(enrollment_id, "mdm.Connect")
            if e.event.get("command_uuid") == cmd_uuid and e.status != "NotNow"
        ]
        assert len(finals) == 1, self.connects(enrollment_id)
        return finals[0]


SimFactory = Callable[..., Awaitable[Sim]]


_RSA: tuple[Any, bytes] | None = None


def rsa_identity() -> tuple[Any, bytes]:
    """(private key, DER certificate) of a throwaway RSA identity, made once per run."""
    global _RSA
    if _RSA is None:
        import datetime as dt

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.x509.oid import NameOID

        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "escrow test")])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(1)
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .sign(key, hashes.SHA256())
        )
        _RSA = (key, cert.public_bytes(serialization.Encoding.DER))
    return _RSA


def decrypt_cms(data: bytes) -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import pkcs7

    key, der = rsa_identity()
    cert = x509.load_der_x509_certificate(der)
    return pkcs7.pkcs7_decrypt_der(data, cert, key, []).decode()


def mobileconfig(identifier: str, payloads: list[dict[str, Any]] | None = None) -> bytes:
    return plistlib.dumps(
        {
            "PayloadContent": payloads
            if payloads is not None
            else [
                {
                    "PayloadType": "com.apple.dock",
                    "PayloadUUID": str(uuid.uuid4()).upper(),
                    "PayloadIdentifier": f"{identifier}.dock",
                    "PayloadVersion": 1,
                }
            ],
            "PayloadDisplayName": f"Test {identifier}",
            "PayloadIdentifier": identifier,
            "PayloadType": "Configuration",
            "PayloadUUID": str(uuid.uuid4()).upper(),
            "PayloadVersion": 1,
        }
    )


def escrow_profile(identifier: str = "com.example.filevault") -> bytes:
    _, der = rsa_identity()
    cert_uuid = str(uuid.uuid4()).upper()
    return mobileconfig(
        identifier,
        [
            {
                "PayloadType": "com.apple.security.pkcs1",
                "PayloadUUID": cert_uuid,
                "PayloadIdentifier": f"{identifier}.cert",
                "PayloadContent": der,
                "PayloadVersion": 1,
            },
            {
                "PayloadType": "com.apple.security.FDERecoveryKeyEscrow",
                "PayloadUUID": str(uuid.uuid4()).upper(),
                "PayloadIdentifier": f"{identifier}.escrow",
                "EncryptCertPayloadUUID": cert_uuid,
                "Location": "mdmflow",
                "PayloadVersion": 1,
            },
            {
                "PayloadType": "com.apple.MCX.FileVault2",
                "PayloadUUID": str(uuid.uuid4()).upper(),
                "PayloadIdentifier": f"{identifier}.fv",
                "Enable": "On",
                "PayloadVersion": 1,
            },
        ],
    )


def signed(data: bytes) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.serialization import pkcs7

    key, der = rsa_identity()
    return (
        pkcs7.PKCS7SignatureBuilder()
        .set_data(data)
        .add_signer(x509.load_der_x509_certificate(der), key, hashes.SHA256())
        .sign(serialization.Encoding.DER, [pkcs7.PKCS7Options.Binary])
    )
