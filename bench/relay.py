"""Benchmark 2: the relay under a fixed offered load, and a burst of check-ins.

The relay (``mdmflow serve``) runs as its own process. Load: valid, signed command-report
webhooks at a fixed rate for running devinfolog runs (their CommandUUIDs route to the
run, which ignores a UUID it did not send: one signal each, as a real answer costs).
Then 1,000 Authenticate/TokenUpdate check-ins at once. Beside it, the raw
``client.signal`` latency to the same runs at the same rate from this process.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from bench.chaos.common import set_offline, until
from bench.chaos.forge import checkin_webhook, headers, report_webhook
from bench.report import latency_ms
from bench.rss import PeakRss, cpu_per_item, cpu_seconds
from bench.stack import DEVINFOLOG, HMAC_KEY, Stack, StackOptions
from protocol import routing
from protocol.results import parse_report
from simulator.rawhttp import RawHTTPConnection, RawHTTPError

TARGET_RUNS = 50


class WebhookPool:
    """Keep-alive raw HTTP connections to ``/webhook``: a load generator far cheaper in
    CPU than httpx, so the two cores go to the relay and Temporal, not to the client."""

    def __init__(self, base_url: str, size: int = 64) -> None:
        self._free: asyncio.Queue[RawHTTPConnection] = asyncio.Queue()
        for _ in range(size):
            self._free.put_nowait(RawHTTPConnection(f"{base_url}/webhook", timeout=120))

    async def post(self, body: bytes) -> str:
        conn = await self._free.get()
        try:
            status, _ = await conn.request("POST", body, headers(HMAC_KEY, body))
            return str(status)
        except RawHTTPError:
            return "connection error"
        finally:
            self._free.put_nowait(conn)

    async def close(self) -> None:
        while not self._free.empty():
            await self._free.get_nowait().close()


def _report_body(eid: str) -> bytes:
    cmd = routing.command_uuid("dil", None, uuid.uuid4().hex[:20])
    return report_webhook(eid, cmd, "DeviceInformation")


async def _open_loop(
    rate: float, seconds: float, send: Callable[[int], Awaitable[str]]
) -> dict[str, Any]:
    """Fire ``send(i)`` at ``rate`` per second for ``seconds``; latency and status counts."""
    total = int(rate * seconds)
    latencies: list[float] = []
    codes: Counter[str] = Counter()
    start = time.monotonic()

    async def one(i: int) -> None:
        await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
        t = time.monotonic()
        codes[await send(i)] += 1
        latencies.append(time.monotonic() - t)

    await asyncio.gather(*(one(i) for i in range(total)))
    elapsed = time.monotonic() - start
    return {
        "offered_per_s": rate,
        "sent": total,
        "achieved_per_s": round(total / elapsed, 1),
        "status_codes": dict(codes),
        **latency_ms(latencies),
    }


async def _burst(pool: WebhookPool, count: int) -> dict[str, Any]:
    bodies = []
    for i in range(count // 2):
        eid = f"BURST-{i:05d}-{uuid.uuid4().hex[:8]}".upper()
        bodies += [checkin_webhook(eid, "Authenticate"), checkin_webhook(eid, "TokenUpdate", 1)]
    latencies: list[float] = []
    codes: Counter[str] = Counter()

    async def one(body: bytes) -> None:
        t = time.monotonic()
        codes[await pool.post(body)] += 1
        latencies.append(time.monotonic() - t)

    start = time.monotonic()
    await asyncio.gather(*(one(b) for b in bodies))
    elapsed = time.monotonic() - start
    return {
        "webhooks": len(bodies),
        "seconds": round(elapsed, 2),
        "answered_per_s": round(len(bodies) / elapsed, 1),
        "status_codes": dict(codes),
        **latency_ms(latencies),
    }


async def run(rate: float = 200, seconds: float = 10, burst: int = 1000) -> dict[str, Any]:
    async with Stack(StackOptions(processes=True)) as stack:
        ids = await stack.enroll(TARGET_RUNS)
        set_offline(stack, ids, True)  # the runs wait in their step for the whole benchmark
        await stack.start_runs(ids)
        await until("runs waiting", lambda: stack.fleet.stats["commands_enqueued"] >= len(ids))
        assert stack.api_proc is not None and stack.worker_proc is not None
        assert stack.temporal.process is not None
        pids = {
            "relay": stack.api_proc.pid,
            "worker": stack.worker_proc.pid,
            "temporal_server": stack.temporal.process.pid,
            "bench_load_generator": os.getpid(),
        }
        pool = WebhookPool(stack.api_url)
        async with PeakRss({"relay": stack.api_proc.pid}) as rss:
            bodies = [_report_body(ids[i % len(ids)]) for i in range(int(rate * seconds))]

            async def post(i: int) -> str:
                return await pool.post(bodies[i])

            cpu = cpu_seconds(pids)
            reports = await _open_loop(rate, seconds, post)
            reports["cpu_ms_per_webhook"] = cpu_per_item(cpu, cpu_seconds(pids), reports["sent"])
            checkins = await _burst(pool, burst)
        await pool.close()

        async def signal(i: int) -> str:
            eid = ids[i % len(ids)]
            cmd = routing.command_uuid("dil", None, uuid.uuid4().hex[:20])
            raw = f"""<?xml version="1.0" encoding="UTF-8"?><plist version="1.0"><dict>
<key>CommandUUID</key><string>{cmd}</string><key>Status</key><string>Acknowledged</string>
<key>UDID</key><string>{eid}</string></dict></plist>""".encode()
            handle = stack.client.get_workflow_handle(routing.workflow_id(DEVINFOLOG, eid))
            await handle.signal("command_report", parse_report(raw, eid))
            return "200"

        cpu = cpu_seconds(pids)
        signals = await _open_loop(rate, seconds, signal)
        signals["cpu_ms_per_signal"] = cpu_per_item(cpu, cpu_seconds(pids), signals["sent"])
        ignored = 0
        for eid in ids:
            handle = stack.client.get_workflow_handle(routing.workflow_id(DEVINFOLOG, eid))
            ignored += dict(await handle.query("state"))["ignored_reports"]
    delivered = reports["status_codes"].get("200", 0) + signals["sent"]
    assert ignored == delivered, f"runs saw {ignored} reports, {delivered} were delivered"
    return {
        "command_reports": reports,
        "checkin_burst": checkins,
        "raw_client_signal": signals,
        "reports_seen_by_runs": ignored,
        "relay_peak_rss_mib": rss.peak_mib["relay"],
    }
