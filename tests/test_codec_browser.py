"""The Temporal Web UI shows workflow input decrypted through the API's codec server.

A real headless Chromium opens a run's page in the embedded dev server's UI; the UI posts
the encrypted input to the codec server from the browser, which works only if the codec
endpoint answers, CORS lets the UI's origin in, and the key is accepted. Driven over the
DevTools protocol (a minimal websocket client below) so the test can wait for the page.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import socket
import struct
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from bench.servers import RestartableServer
from escrow.sealing import load_master_key
from mdmflow.services import Services
from mdmflow.temporal_client import connect
from mdmflow.temporal_server import DevServer, free_port
from protocol import routing
from starter.api import create_app
from store.db import open_engine
from tests.conftest import TEST_CONVERTER
from workflows.inventory import InventoryWorkflow
from workflows.models import ENGINE_REVISION, WorkflowInput

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
API_KEY = "browser-codec-key"


class DevTools:
    """Just enough of a websocket client for the DevTools protocol (text frames)."""

    def __init__(self, url: str) -> None:
        rest = url.removeprefix("ws://")
        hostport, _, path = rest.partition("/")
        host, _, port = hostport.rpartition(":")
        self.sock = socket.create_connection((host, int(port)), timeout=10)
        key = base64.b64encode(secrets.token_bytes(16)).decode()
        self.sock.sendall(
            (
                f"GET /{path} HTTP/1.1\r\nHost: {hostport}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            head += self.sock.recv(1)
        assert head.startswith(b"HTTP/1.1 101"), head
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    def _recv_exact(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("DevTools connection closed")
            buf += chunk
        return buf

    def _recv_message(self) -> dict[str, Any]:
        data = b""
        while True:
            b0, b1 = self._recv_exact(2)
            length = b1 & 0x7F
            if length == 126:
                (length,) = struct.unpack(">H", self._recv_exact(2))
            elif length == 127:
                (length,) = struct.unpack(">Q", self._recv_exact(8))
            data += self._recv_exact(length)
            if b0 & 0x80:  # FIN
                message: dict[str, Any] = json.loads(data)
                return message

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        payload = json.dumps({"id": self.next_id, "method": method, "params": params}).encode()
        mask = secrets.token_bytes(4)
        n = len(payload)
        header = bytes([0x81]) + (
            bytes([0x80 | n])
            if n < 126
            else bytes([0x80 | 126]) + struct.pack(">H", n)
            if n < 65536
            else bytes([0x80 | 127]) + struct.pack(">Q", n)
        )
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(header + mask + masked)
        while True:  # events arrive in between; only our answer matters
            message = self._recv_message()
            if "method" in message:
                self.events.append(message)
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                result: dict[str, Any] = message["result"]
                return result


@pytest.fixture
def chromium(tmp_path: Path) -> Iterator[DevTools]:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"{CHROMIUM} is missing: apt-get install -y chromium")
    port = free_port()
    proc = subprocess.Popen(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'chromium'}",
            f"--remote-debugging-port={port}",
            "--window-size=1400,1000",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                targets = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=1).json()
                pages = [t for t in targets if t.get("type") == "page"]
                if pages:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("chromium's DevTools endpoint did not answer")
            time.sleep(0.1)
        yield DevTools(pages[0]["webSocketDebuggerUrl"])
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
async def ui_stack(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[DevServer, Services]]:
    """Dev server with the Web UI pointed at an API process's codec server."""
    ui_port = free_port()
    monkeypatch.setenv("MDMFLOW_CODEC_CORS_ORIGINS", f"http://127.0.0.1:{ui_port}")
    holder: dict[str, Services] = {}

    async def services() -> Services:
        return holder["services"]

    api = RestartableServer(create_app(services, API_KEY))
    server = DevServer(
        db_file=tmp_path / "temporal.db",
        port=free_port(),
        ui_port=ui_port,
        ui_codec_endpoint=f"{api.url}/codec",
        log_file=tmp_path / "temporal.log",
    )
    server.start()
    try:
        await server.wait_ready_async()
        client = await connect(server.address, server.namespace, data_converter=TEST_CONVERTER)
        engine = await open_engine(f"sqlite:///{tmp_path / 'mdmflow.db'}")
        holder["services"] = Services.create(
            client, engine, "browser", load_master_key(tmp_path / "var")
        )
        async with api:
            yield server, holder["services"]
        await engine.dispose()
    finally:
        server.stop()


async def test_web_ui_shows_the_decrypted_input(
    ui_stack: tuple[DevServer, Services], chromium: DevTools, tmp_path: Path
) -> None:
    server, services = ui_stack
    eid = f"BROWSER-{uuid.uuid4().hex[:8].upper()}"
    handle = await services.client.start_workflow(
        InventoryWorkflow.NAME,
        WorkflowInput(enrollment_id=eid, instance_id=str(uuid.uuid4()), revision=ENGINE_REVISION),
        id=routing.workflow_id(InventoryWorkflow.NAME, eid),
        task_queue="browser",  # no worker: the input is in the history from the start
    )
    url = (
        f"http://127.0.0.1:{server.ui_port}/namespaces/{server.namespace}/workflows/"
        f"{quote(handle.id, safe='')}/{handle.result_run_id}/history"
    )
    auth = base64.b64encode(f"nanocmd:{API_KEY}".encode()).decode()
    chromium.call("Network.enable")
    chromium.call("Network.setExtraHTTPHeaders", headers={"Authorization": f"Basic {auth}"})
    await asyncio.to_thread(chromium.call, "Page.navigate", url=url)
    text = ""
    deadline = time.monotonic() + 25
    while time.monotonic() < deadline:
        # the API serves on this event loop: the browser is driven from a thread
        answer = await asyncio.to_thread(
            chromium.call,
            "Runtime.evaluate",
            expression="document.body ? document.body.innerText : ''",
        )
        text = answer["result"].get("value", "")
        if eid in text.replace(handle.id, ""):
            break
        await asyncio.sleep(0.3)
    # the workflow ID holds the enrollment ID too: look for it outside the ID
    assert eid in text.replace(handle.id, ""), text[-2000:]
    # and the page as a person sees it: a screenshot of the decoded history, kept with
    # the test's files (pytest's tmp directory) for whoever wants to look
    shot = await asyncio.to_thread(chromium.call, "Page.captureScreenshot", format="png")
    png = base64.b64decode(shot["data"])
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
    (tmp_path / "decoded-history.png").write_bytes(png)
