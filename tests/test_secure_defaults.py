"""Secure by default: ``mdmflow serve`` pointed at an MDM server, with no webhook key.

Run as a user would run it, as a process: a forged, unsigned Authenticate (which would end
a running lock) is refused, the start-up log says why and how to fix it, and the files it
creates under ``var/`` are its owner's alone.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from mdmflow.temporal_server import DevServer, free_port

REPO = Path(__file__).resolve().parents[1]
AUTHENTICATE = (REPO / "tests" / "fixtures" / "nanomdm-live" / "webhooks.jsonl").read_bytes()


def serve_env(tmp_path: Path, temporal: str, port: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MDMFLOW_", "TEMPORAL_"))}
    env.update(
        TEMPORAL_ADDRESS=temporal,
        MDMFLOW_VAR_DIR=str(tmp_path / "var"),
        MDMFLOW_MDM_URL="https://nanomdm.example.com",
        MDMFLOW_LISTEN=f"127.0.0.1:{port}",
        MDMFLOW_LOG_FORMAT="text",
        **extra,
    )
    return env


async def post_forged(tmp_path: Path, dev_server: DevServer, **extra: str) -> tuple[int, str]:
    port = free_port()
    log = tmp_path / "serve.log"
    first = AUTHENTICATE.splitlines()[0]  # a real NanoMDM Authenticate, unsigned
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mdmflow", "serve"],
            env=serve_env(tmp_path, dev_server.address, port, **extra),
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
            while True:
                assert proc.poll() is None, log.read_text()
                try:
                    await http.get("/version")
                    break
                except httpx.TransportError:
                    assert time.monotonic() < deadline, log.read_text()
                    await asyncio.sleep(0.2)
            status = (await http.post("/webhook", content=first)).status_code
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    return status, log.read_text()


@pytest.mark.e2e
async def test_a_forged_unsigned_authenticate_is_refused_on_a_default_start(
    tmp_path: Path, dev_server: DevServer
) -> None:
    status, log = await post_forged(tmp_path, dev_server)
    assert status == 401
    assert "refuses every webhook" in log and "MDMFLOW_WEBHOOK_INSECURE" in log
    var = tmp_path / "var"
    for name in ("mdmflow.db", "api_key", "secrets.key"):
        mode = (var / name).stat().st_mode & 0o777
        assert mode & 0o077 == 0, f"var/{name} is {oct(mode)}"


@pytest.mark.e2e
async def test_insecure_mode_must_be_asked_for_and_says_so(
    tmp_path: Path, dev_server: DevServer
) -> None:
    status, log = await post_forged(tmp_path, dev_server, MDMFLOW_WEBHOOK_INSECURE="1")
    assert status == 200
    assert "accepts UNAUTHENTICATED webhooks" in log
