"""Run the simulator under uvicorn: the saved fleet (if any) plus newly enrolled devices.

SIGINT and SIGTERM stop it quietly: uvicorn shuts down, the fleet is saved, exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import threading
from pathlib import Path
from types import FrameType

import uvicorn

from simulator import state
from simulator.app import create_app
from simulator.fleet import Fleet, FleetConfig
from simulator.webhooks import split_credentials

log = logging.getLogger("simulator")


class FleetFile:
    """Where the fleet is kept between runs; written only when something changed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._written: bytes | None = None

    def load_into(self, fleet: Fleet) -> int:
        """Restore the saved devices into ``fleet``; 0 when there is no file yet."""
        doc = state.read(self.path)
        if doc is None:
            return 0
        restored = fleet.restore(doc)
        self._written = self.path.read_bytes()
        return restored

    def save(self, fleet: Fleet) -> None:
        data = state.dumps(fleet.snapshot())
        if data != self._written:
            state.write(self.path, data)
            self._written = data

    async def autosave(self, fleet: Fleet, interval: float) -> None:
        """Save every ``interval`` seconds, so a crash loses at most that much."""
        while True:
            await asyncio.sleep(interval)
            try:
                self.save(fleet)
            except OSError as exc:
                log.warning("cannot save the fleet to %s: %s", self.path, exc)


class _Stopper:
    """SIGINT/SIGTERM handler: ask uvicorn to stop, never raise where the signal lands.

    Uvicorn installs its own handlers while it serves and afterwards restores these and
    re-raises the signal it caught; with the interpreter's defaults that re-raise would
    kill the process (SIGTERM) or throw KeyboardInterrupt (SIGINT) before the fleet is
    saved.
    """

    def __init__(self) -> None:
        self.requested = False
        self.server: uvicorn.Server | None = None
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self._handle)
            signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, _sig: int, _frame: FrameType | None) -> None:
        self.requested = True
        if self.server is not None:
            self.server.should_exit = True


async def serve(args: argparse.Namespace) -> None:
    config = FleetConfig(
        webhook_url=args.webhook_url or None,
        webhook_hmac_key=args.hmac_key or None,
        api_key=args.api_key,
        connect_latency=args.latency,
        answer_latency=args.answer_latency,
        seed=args.seed,
        webhook_format=args.webhook_format,
        fv_enable_delay=args.fv_delay,
    )
    fleet = Fleet(config)
    fleet_file = FleetFile(Path(args.state_file)) if args.state_file else None
    if fleet_file is not None:
        try:
            restored = fleet_file.load_into(fleet)
        except state.StateError as exc:
            raise SystemExit(f"error: {exc} (move it away to start with a new fleet)") from exc
        if restored:
            log.info("restored %d device(s) from %s", restored, fleet_file.path)
    stopper = _Stopper()
    await fleet.start()
    saver: asyncio.Task[None] | None = None
    try:
        missing = args.devices - fleet.device_count()
        if missing > 0:
            ids = await fleet.enroll(missing, args.kind)
            log.info("enrolled %d %s device(s): %s", len(ids), args.kind, ", ".join(ids[:5]))
        log.info(
            "%s on http://%s:%d (Basic %s:<api key>); %s webhooks to %s%s",
            "MicroMDM API (/v1/commands, /v1/push, /push, /v1/devices)"
            if config.micromdm
            else "NanoMDM API",
            args.host,
            args.port,
            "micromdm" if config.micromdm else "nanomdm",
            config.webhook_format,
            split_credentials(config.webhook_url)[0] if config.webhook_url else "nowhere",
            " (HMAC signed)" if config.webhook_hmac_key else "",
        )
        server = uvicorn.Server(
            uvicorn.Config(
                create_app(fleet),
                host=args.host,
                port=args.port,
                log_level="debug" if args.verbose else "warning",
                access_log=bool(args.verbose),
            )
        )
        stopper.server = server
        if fleet_file is not None:
            fleet_file.save(fleet)  # the new devices exist from now on, crash or not
            saver = asyncio.create_task(fleet_file.autosave(fleet, args.save_interval))
        if not stopper.requested:
            await server.serve()
    finally:
        if saver is not None:
            saver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await saver
        try:
            await fleet.stop()
        finally:
            if fleet_file is not None:
                fleet_file.save(fleet)
                log.info("fleet saved to %s", fleet_file.path)
        log.info("simulator stopped: %s", fleet.stats)
