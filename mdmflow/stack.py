"""``mdmflow up``: the whole embedded stack in one command (what ``make run`` runs).

Starts each part once what it talks to answers: the Temporal dev server (unless
``TEMPORAL_ADDRESS`` is set), the API + relay, the device simulator (unless
``MDMFLOW_MDM_URL`` is set; after the relay, so it sees the devices enroll; its fleet
kept in ``var/simulator.json``), then the worker. Prints where everything is; stops
everything quietly on Ctrl-C or when one part dies.

The parts run in their own process groups, so a terminal's Ctrl-C reaches only this
process, which stops them (SIGTERM, newest first) instead of each one printing its own
``KeyboardInterrupt``.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import httpx

from mdmflow import config
from mdmflow.secret_file import new_token, read_or_create
from mdmflow.temporal_server import DevServer, port_open

log = logging.getLogger("mdmflow.stack")


def _wait_http(
    url: str, timeout: float, proc: subprocess.Popen[bytes], cancelled: Callable[[], bool]
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cancelled():
            raise InterruptedError(f"stopped while waiting for {url}")
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f}s")


def _local_url(host: str, port: int) -> str:
    """Where a browser on this machine reaches a server listening on ``host``."""
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class Stack:
    def __init__(self, devices: int) -> None:
        self.settings = config.load()
        self.devices = devices
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.temporal: DevServer | None = None
        self.env = dict(os.environ)
        self.stopping = False

    def catch_signals(self) -> None:
        """Ctrl-C and SIGTERM ask to stop (also mid-start); the parts stop in ``stop()``."""

        def on_signal(_sig: int, _frame: object) -> None:
            self.stopping = True

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)

    def _cancelled(self) -> bool:
        return self.stopping

    def _spawn(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        if self.stopping:
            raise InterruptedError(f"stopped before starting the {name}")
        proc = subprocess.Popen(
            [sys.executable, "-m", "mdmflow", *args], env=self.env, process_group=0
        )
        self.children.append((name, proc))
        return proc

    def start(self) -> None:
        s = self.settings
        s.var_dir.mkdir(parents=True, exist_ok=True)
        if s.embedded_temporal:
            host, _, port = s.temporal_address.rpartition(":")
            if port_open(host, int(port)):
                raise SystemExit(f"port {port} is taken: is another Temporal server running?")
            ui_port = int(os.environ.get("MDMFLOW_TEMPORAL_UI_PORT", "8233"))
            self.temporal = DevServer(
                db_file=s.var_dir / "temporal.db",
                host=host,
                port=int(port),
                ui_port=ui_port,
                namespace=s.temporal_namespace,
                log_file=s.var_dir / "temporal.log",
                ui_codec_endpoint=f"{_local_url(s.listen_host, s.listen_port)}/codec",
                own_process_group=True,
            )
            # the codec server answers the Web UI on whichever port it was given
            self.env.setdefault(
                "MDMFLOW_CODEC_CORS_ORIGINS",
                f"http://127.0.0.1:{ui_port},http://localhost:{ui_port}",
            )
            log.info("starting Temporal dev server (%s)", self.temporal.db_file)
            self.temporal.start()
            self.temporal.wait_ready(cancelled=self._cancelled)
        self.env["TEMPORAL_ADDRESS"] = s.temporal_address
        self.env["TEMPORAL_NAMESPACE"] = s.temporal_namespace
        self.env["MDMFLOW_API_KEY"] = s.api_key
        self.env["MDMFLOW_VAR_DIR"] = str(s.var_dir)

        sim_args: list[str] | None = None
        if not s.mdm_url:
            sim_port = os.environ.get("MDMFLOW_SIM_PORT", "9000")
            sim_key = read_or_create(s.var_dir / "simulator_api_key", new_token)
            self.env.update(
                MDMFLOW_MDM_URL=f"http://127.0.0.1:{sim_port}",
                MDMFLOW_MDM_KIND=s.mdm_kind,
                MDMFLOW_MDM_API_KEY=sim_key,
            )
            relay = f"http://{s.listen_host}:{s.listen_port}/webhook"
            sim_args = [
                "sim", "serve", "--port", sim_port, "--devices", str(self.devices),
                "--state-file", str(s.var_dir / "simulator.json"),
            ]  # fmt: skip
            # keys reach the simulator by environment (MDMFLOW_MDM_API_KEY and
            # MDMFLOW_WEBHOOK_HMAC_KEY), never argv: not in the process list, and a key
            # starting with "-" is not mistaken for an option
            if s.mdm_kind == "micromdm":
                # MicroMDM cannot sign: it proves itself with credentials in the URL
                secret = read_or_create(s.var_dir / "webhook_basic_secret", new_token)
                self.env["MDMFLOW_WEBHOOK_BASIC_AUTH"] = f"micromdm:{secret}"
                relay = relay.replace("http://", f"http://micromdm:{secret}@", 1)
                sim_args += ["--micromdm", "--webhook-url", relay]
            else:
                hmac_key = s.webhook_hmac_key or read_or_create(
                    s.var_dir / "webhook_hmac_key", new_token
                )
                self.env["MDMFLOW_WEBHOOK_HMAC_KEY"] = hmac_key
                sim_args += ["--webhook-url", relay]

        api = self._spawn("api", "serve")
        _wait_http(f"http://{s.listen_host}:{s.listen_port}/version", 60, api, self._cancelled)
        if sim_args is not None:
            # after the relay, so it sees the devices enroll (events, enrollment register);
            # before the worker, so the worker's first sends find the MDM server up
            sim = self._spawn("simulator", *sim_args)
            _wait_http(f"{self.env['MDMFLOW_MDM_URL']}/sim/stats", 30, sim, self._cancelled)
        self._spawn("worker", "worker")
        self._banner()

    def _banner(self) -> None:
        s = self.settings
        api = f"http://{s.listen_host}:{s.listen_port}"
        lines = [
            "",
            "mdmflow is running",
            f"  API + relay   {api}   (OpenAPI docs: {api}/docs)",
            f"  webhook       {api}/webhook",
            f"  API key       {s.api_key}   (HTTP Basic user 'nanocmd', role "
            f"{s.nanocmd_role or 'off'})",
            f"  Temporal      {s.temporal_address} namespace {s.temporal_namespace}",
        ]
        if self.temporal is not None and self.temporal.ui_port:
            lines.append(f"  Web UI        http://{self.temporal.host}:{self.temporal.ui_port}")
            lines.append(f"  codec server  {api}/codec   (the Web UI decrypts payloads here)")
        mdm = self.env.get("MDMFLOW_MDM_URL")
        lines.append(f"  MDM server    {mdm} ({self.env.get('MDMFLOW_MDM_KIND', 'nanomdm')})")
        example = self._example_device()
        if example:
            lines += [
                "",
                "Try:",
                f"  curl -u nanocmd:{s.api_key} -X POST "
                f"'{api}/v1/workflow/io.micromdm.wf.inventory.v1/start?id={example}'",
                f"  curl -u nanocmd:{s.api_key} '{api}/v1/inventory?id={example}'",
            ]
        lines += [
            "",
            "Users and governance (see the README's Governance section):",
            "  mdmflow user add alice --role admin      (prints alice's key once)",
            "  mdmflow estop status | mdmflow approvals list | mdmflow audit verify",
        ]
        lines.append("\nCtrl-C stops everything.")
        print("\n".join(lines), flush=True)

    def _example_device(self) -> str | None:
        if self.settings.mdm_url:
            return None
        url = self.env["MDMFLOW_MDM_URL"] + "/sim/devices"
        try:
            body = httpx.get(url, auth=("nanomdm", self.env["MDMFLOW_MDM_API_KEY"])).json()
            devices = body["devices"] if isinstance(body, dict) else body
            return str(devices[0]["id"]) if devices else None
        except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError):
            return None

    def wait(self) -> int:
        while not self.stopping:
            for name, proc in self.children:
                if proc.poll() is not None:
                    log.error("%s exited with %s; stopping", name, proc.returncode)
                    return 1
            time.sleep(0.3)
        return 0

    def stop(self) -> None:
        """Newest first, each gone before the next: nothing loses what it talks to."""
        for name, proc in reversed(self.children):
            if proc.poll() is None:
                log.info("stopping %s", name)
                proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within 15 s; killing it", name)
                proc.kill()
                proc.wait()
        if self.temporal is not None:
            log.info("stopping Temporal dev server")
            self.temporal.stop()


def up(devices: int) -> int:
    stack = Stack(devices)
    stack.catch_signals()
    try:
        stack.start()
        return stack.wait()
    except InterruptedError:  # Ctrl-C while starting: stop what runs, quietly
        return 0
    except (RuntimeError, TimeoutError) as exc:  # a part did not come up: say which
        log.error("%s", exc)
        return 1
    finally:
        stack.stop()
        print("mdmflow stopped", flush=True)
