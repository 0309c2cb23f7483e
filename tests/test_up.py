"""``mdmflow up`` (what ``make run`` runs), from an empty ``var/``, as a user starts it.

Every part starts as its own process on one fresh state directory, which is exactly
where start-up races live; this runs the whole thing, uses it, stops it with Ctrl-C as
a terminal sends it (SIGINT to the whole foreground process group), and starts it again
on the same ``var/`` to find the same simulated devices.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from mdmflow.temporal_server import free_port

pytestmark = pytest.mark.e2e  # the whole stack as processes, on a real Temporal dev server


class Up:
    """One ``mdmflow up`` in its own process group, its output collected as it comes."""

    def __init__(self, env: dict[str, str]) -> None:
        listen = env["MDMFLOW_LISTEN"]
        self.api = f"http://{listen}"
        self.sim = f"http://127.0.0.1:{env['MDMFLOW_SIM_PORT']}"
        self.var = Path(env["MDMFLOW_VAR_DIR"])
        self.lines: list[str] = []
        self._banner = threading.Event()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mdmflow", "up"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # a terminal: Ctrl-C goes to this whole group
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            if line.startswith("Ctrl-C stops everything"):
                self._banner.set()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    @property
    def auth(self) -> tuple[str, str]:
        return ("nanocmd", (self.var / "api_key").read_text().strip())

    @property
    def sim_auth(self) -> tuple[str, str]:
        return ("nanomdm", (self.var / "simulator_api_key").read_text().strip())

    def wait_banner(self, timeout: float = 120) -> str:
        deadline = time.monotonic() + timeout
        while not self._banner.wait(0.2):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"no banner (exit {self.proc.poll()}):\n{self.output}")
        return self.output

    def ctrl_c(self) -> tuple[int, str]:
        """SIGINT to the process group, as a terminal's Ctrl-C; (exit status, output)."""
        os.killpg(self.proc.pid, signal.SIGINT)
        code = self.proc.wait(timeout=60)
        self._reader.join(timeout=30)  # EOF once every part has closed the pipe
        assert not self._reader.is_alive(), "a part of the stack outlived mdmflow up"
        return code, self.output

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def sim_get(self, path: str) -> Any:
        resp = httpx.get(self.sim + path, auth=self.sim_auth, timeout=10)
        resp.raise_for_status()
        return resp.json()


def up_env(tmp_path: Path) -> dict[str, str]:
    env = {
        **os.environ,
        "MDMFLOW_VAR_DIR": str(tmp_path / "var"),
        "MDMFLOW_TEMPORAL_PORT": str(free_port()),
        "MDMFLOW_TEMPORAL_UI_PORT": str(free_port()),
        "MDMFLOW_LISTEN": f"127.0.0.1:{free_port()}",
        "MDMFLOW_SIM_PORT": str(free_port()),
        "MDMFLOW_SIM_DEVICES": "3",
    }
    for name in ("TEMPORAL_ADDRESS", "MDMFLOW_API_KEY", "MDMFLOW_MDM_URL", "MDMFLOW_DB_URL"):
        env.pop(name, None)
    return env


def inventory_serial(up: Up, device: str) -> str:
    with httpx.Client(base_url=up.api, auth=up.auth, timeout=10) as http:
        started = http.post(f"/v1/workflow/io.micromdm.wf.inventory.v1/start?id={device}")
        assert started.status_code == 200, started.text
        deadline = time.monotonic() + 60
        values: dict[str, Any] = {}
        while time.monotonic() < deadline and "serial_number" not in values:
            time.sleep(0.3)
            values = http.get("/v1/inventory", params={"id": device}).json().get(device, {})
        assert values.get("serial_number") and values.get("last_source"), values
        return str(values["serial_number"])


def test_up_runs_a_workflow_stops_on_ctrl_c_and_comes_back_with_the_same_fleet(
    tmp_path: Path,
) -> None:
    env = up_env(tmp_path)
    first = Up(env)
    try:
        banner = first.wait_banner()
        assert "mdmflow is running" in banner and first.api in banner
        device = next(
            line.split("?id=")[1].rstrip("'\n")
            for line in banner.splitlines()
            if "/v1/inventory?id=" in line
        )
        serial = inventory_serial(first, device)
        fleet = first.sim_get("/sim/devices")["devices"]
        assert len(fleet) == 3 and device in {d["id"] for d in fleet}
        assert first.proc.poll() is None, "a part of the stack died"
        code, out = first.ctrl_c()
    finally:
        first.kill()
    assert code == 0, out
    assert "mdmflow stopped" in out
    assert "Traceback" not in out and "KeyboardInterrupt" not in out, out
    # dependency order: the relay, then the simulator (its devices enroll through the
    # relay), then the worker that talks to both
    relay_up = out.index("API and relay on")
    assert relay_up < out.index("enrolled 3 mac device(s)") < out.index("worker on "), out
    # device data and secrets under var/ are the owner's alone
    var = Path(env["MDMFLOW_VAR_DIR"])
    for name in ("mdmflow.db", "temporal.db", "api_key", "secrets.key", "simulator.json"):
        mode = (var / name).stat().st_mode & 0o777
        assert mode & 0o077 == 0, f"var/{name} is {oct(mode)}"

    second = Up(env)
    try:
        banner = second.wait_banner()
        assert f"?id={device}'" in banner  # the same example device
        assert second.sim_get("/sim/devices")["devices"] == fleet
        shown = second.sim_get(f"/sim/devices/{device}")
        assert shown["serial_number"] == serial
        # remembered, not re-made from the same seed: the first run's answers count
        assert shown["counters"]["answered"] >= 2, shown
        assert shown["token_update_tally"] == 1
        assert second.sim_get("/sim/stats")["webhooks_submitted"] == 0  # no re-enrollment
        code, out = second.ctrl_c()
    finally:
        second.kill()
    assert code == 0, out
    assert "restored 3 device(s)" in out and "mac device(s):" not in out  # none enrolled
    assert "Traceback" not in out and "KeyboardInterrupt" not in out, out
