"""``mdmflow up`` (what ``make run`` runs), from an empty ``var/``, as a user starts it.

Every part starts as its own process on one fresh state directory at the same moment,
which is exactly where start-up races live; this runs the whole thing and uses it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from mdmflow.temporal_server import free_port


class Up:
    def __init__(self, proc: subprocess.Popen[str], api: str, api_key: str) -> None:
        self.proc = proc
        self.api = api
        self.auth = ("nanocmd", api_key)
        self.banner: list[str] = []

    def wait_banner(self, timeout: float = 90) -> str:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError(f"mdmflow up exited early:\n{''.join(self.banner)}")
            self.banner.append(line)
            if line.startswith("Ctrl-C stops everything"):
                return "".join(self.banner)
        raise AssertionError(f"no banner within {timeout}s:\n{''.join(self.banner)}")


@pytest.fixture
def up(tmp_path: Path) -> Iterator[Up]:
    listen = free_port()
    env = {
        **os.environ,
        "MDMFLOW_VAR_DIR": str(tmp_path / "var"),
        "MDMFLOW_TEMPORAL_PORT": str(free_port()),
        "MDMFLOW_TEMPORAL_UI_PORT": str(free_port()),
        "MDMFLOW_LISTEN": f"127.0.0.1:{listen}",
        "MDMFLOW_SIM_PORT": str(free_port()),
        "MDMFLOW_SIM_DEVICES": "3",
    }
    for name in ("TEMPORAL_ADDRESS", "MDMFLOW_API_KEY", "MDMFLOW_MDM_URL", "MDMFLOW_DB_URL"):
        env.pop(name, None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "mdmflow", "up"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        key_file = tmp_path / "var" / "api_key"
        for _ in range(100):
            if key_file.exists():
                break
            time.sleep(0.1)
        yield Up(proc, f"http://127.0.0.1:{listen}", key_file.read_text().strip())
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def test_up_starts_everything_runs_a_workflow_and_stops_cleanly(up: Up) -> None:
    banner = up.wait_banner()
    assert "mdmflow is running" in banner and up.api in banner
    device = next(
        line.split("?id=")[1].rstrip("'\n")
        for line in banner.splitlines()
        if "/v1/inventory?id=" in line
    )
    with httpx.Client(base_url=up.api, auth=up.auth, timeout=10) as http:
        started = http.post(f"/v1/workflow/io.micromdm.wf.inventory.v1/start?id={device}")
        assert started.status_code == 200, started.text
        deadline = time.monotonic() + 60
        values: dict[str, object] = {}
        while time.monotonic() < deadline and "serial_number" not in values:
            time.sleep(0.3)
            values = http.get("/v1/inventory", params={"id": device}).json().get(device, {})
        assert values.get("serial_number"), values
        assert values.get("last_source")
    assert up.proc.poll() is None, "a part of the stack died"
    up.proc.send_signal(signal.SIGTERM)
    assert up.proc.wait(timeout=30) == 0
    assert up.proc.stdout is not None
    tail = up.proc.stdout.read()
    assert "mdmflow stopped" in tail
    assert "Traceback" not in "".join(up.banner) + tail
