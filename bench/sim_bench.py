"""Benchmark the device-fleet simulator over real loopback HTTP.

Starts the simulator as a subprocess (``python -m simulator serve``), enrolls N devices
through its control API, enqueues one DeviceInformation per device through NanoMDM's
``PUT /v1/enqueue`` and pushes, then measures commands answered per second and the
simulator's peak RSS. Run twice: without webhooks (the simulator alone) and with a
minimal counting webhook receiver in this process. Results go to
``bench/results/simulator.json``.

    .venv/bin/python bench/sim_bench.py [--devices 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import plistlib
import socket
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run by path: the project's folders are not installed as such
    sys.path.insert(0, str(ROOT))

from simulator.rawhttp import RawHTTPConnection  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "simulator.json"
QUERIES = ["Model", "SerialNumber", "DeviceName", "BuildVersion", "OSVersion", "IsAppleSilicon"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class CountingReceiver:
    """A bare asyncio HTTP/1.1 server that answers 200 and counts webhook POSTs."""

    def __init__(self) -> None:
        self.count = 0
        self.target = 0
        self.reached = asyncio.Event()
        self.server: asyncio.Server | None = None

    async def wait_for(self, target: int, timeout: float = 300) -> None:
        self.target = target
        self.reached.clear()
        if self.count < target:
            await asyncio.wait_for(self.reached.wait(), timeout)

    async def start(self, port: int) -> None:
        self.server = await asyncio.start_server(self._conn, "127.0.0.1", port, backlog=512)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()

    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                if length:
                    await reader.readexactly(length)
                self.count += 1
                if self.target and self.count >= self.target:
                    self.reached.set()
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


class RssSampler:
    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.peak = 0
        self._task: asyncio.Task[None] | None = None

    def sample(self) -> int:
        rss: int = self.proc.memory_info().rss
        self.peak = max(self.peak, rss)
        return rss

    async def _run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(0.05)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()


async def wait_until(client: httpx.AsyncClient, key: str, target: int, timeout: float) -> float:
    start = time.perf_counter()
    while True:
        stats = (await client.get("/sim/stats")).json()
        if stats[key] >= target:
            return time.perf_counter()
        if time.perf_counter() - start > timeout:
            raise TimeoutError(f"{key}={stats[key]} < {target} after {timeout}s")
        await asyncio.sleep(0.02)


def command_plist() -> bytes:
    return plistlib.dumps(
        {
            "Command": {"RequestType": "DeviceInformation", "Queries": QUERIES},
            "CommandUUID": str(uuid.uuid4()).upper(),
        }
    )


async def enqueue_all(base_url: str, ids: list[str], *, nopush: bool, concurrency: int) -> float:
    """Enqueue one command per device over ``concurrency`` keep-alive connections; seconds.

    A lean client keeps the load generator from eating the CPU the simulator needs.
    """
    it = iter(ids)
    suffix = "?nopush=1" if nopush else ""
    auth = {"Authorization": "Basic " + base64.b64encode(b"nanomdm:nanomdm").decode()}

    async def worker() -> None:
        conn = RawHTTPConnection(base_url, timeout=120)
        try:
            for dev in it:
                status, text = await conn.request(
                    "PUT", command_plist(), auth, path=f"/v1/enqueue/{dev}{suffix}"
                )
                if status != 200:
                    raise RuntimeError(f"enqueue failed: {status} {text[:200]!r}")
        finally:
            await conn.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - t0


async def run_case(devices: int, *, webhooks: bool, concurrency: int) -> dict[str, Any]:
    port = free_port()
    receiver = CountingReceiver()
    cmd = [
        sys.executable,
        "-m",
        "simulator",
        "serve",
        "--port",
        str(port),
        "--devices",
        "0",
        "--latency",
        "0.01",
    ]
    if webhooks:
        hook_port = free_port()
        await receiver.start(hook_port)
        cmd += ["--webhook-url", f"http://127.0.0.1:{hook_port}/webhook"]
    proc = await asyncio.create_subprocess_exec(
        *cmd, cwd=ROOT, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    sampler = RssSampler(proc.pid)
    base = f"http://127.0.0.1:{port}"
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    client = httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}", auth=("nanomdm", "nanomdm"), timeout=120, limits=limits
    )
    try:
        for _ in range(200):
            try:
                if (await client.get("/sim/stats")).status_code == 200:
                    break
            except httpx.TransportError:
                await asyncio.sleep(0.05)
        else:
            raise RuntimeError("simulator did not start")
        sampler.start()
        rss_start = sampler.sample()
        t0 = time.perf_counter()
        r = await client.post("/sim/devices", params={"count": devices})
        ids: list[str] = r.json()["enrolled"]
        enroll_s = time.perf_counter() - t0
        rss_enrolled = sampler.sample()

        # Phase 1: enqueue without push, then push everything; time until all answered.
        enqueue_s = await enqueue_all(base, ids, nopush=True, concurrency=concurrency)
        t_push = time.perf_counter()
        batch = 200
        await asyncio.gather(
            *(
                client.get(f"/v1/push/{','.join(ids[i : i + batch])}")
                for i in range(0, len(ids), batch)
            )
        )
        done = await wait_until(client, "commands_answered", devices, 300)
        answer_s = done - t_push
        phase1_webhooks_s = None
        if webhooks:  # enrollment (2 per device) + Idle and answer per device
            await receiver.wait_for(4 * devices)
            phase1_webhooks_s = time.perf_counter() - t_push

        # Phase 2: enqueue-with-push per device (the normal mdmflow path), end to end.
        t_e2e = time.perf_counter()
        received_before = receiver.count
        await enqueue_all(base, ids, nopush=False, concurrency=concurrency)
        done2 = await wait_until(client, "commands_answered", 2 * devices, 300)
        e2e_s = done2 - t_e2e

        webhook_s = None
        if webhooks:
            expected = 2 * devices + 2 * 2 * devices  # enrollment + (Idle + answer) x 2
            await receiver.wait_for(expected)
            webhook_s = time.perf_counter() - t_e2e
        stats = (await client.get("/sim/stats")).json()
        sampler.sample()
    finally:
        await sampler.stop()
        await client.aclose()
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
        await receiver.stop()
    return {
        "devices": devices,
        "webhooks": webhooks,
        "enroll_seconds": round(enroll_s, 3),
        "enqueue_nopush_per_second": round(devices / enqueue_s, 1),
        "push_to_all_answered_seconds": round(answer_s, 3),
        "answered_per_second_after_push": round(devices / answer_s, 1),
        "push_to_all_webhooks_received_seconds": round(phase1_webhooks_s, 3)
        if phase1_webhooks_s
        else None,
        "enqueue_with_push_end_to_end_per_second": round(devices / e2e_s, 1),
        "webhooks_received": receiver.count if webhooks else None,
        "webhooks_received_per_second_end_to_end": round(
            (receiver.count - received_before) / webhook_s, 1
        )
        if webhooks and webhook_s
        else None,
        "rss_mb_start": round(rss_start / 2**20, 1),
        "rss_mb_after_enroll": round(rss_enrolled / 2**20, 1),
        "rss_mb_peak": round(sampler.peak / 2**20, 1),
        "sim_stats": {k: v for k, v in stats.items() if isinstance(v, int) and v},
    }


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=10_000, help="fleet size (10000)")
    parser.add_argument("--concurrency", type=int, default=32, help="parallel HTTP requests")
    parser.add_argument("--no-webhooks-only", action="store_true", help="skip the webhook case")
    args = parser.parse_args()
    cases = [await run_case(args.devices, webhooks=False, concurrency=args.concurrency)]
    if not args.no_webhooks_only:
        cases.append(await run_case(args.devices, webhooks=True, concurrency=args.concurrency))
    result = {
        "benchmark": "simulator",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "targets": {"answered_per_second": 500, "rss_mb_peak": 500, "devices": 10_000},
        "cases": cases,
    }
    for c in cases:
        label = "with webhooks" if c["webhooks"] else "no webhooks  "
        print(
            f"{label}: {c['devices']} devices, "
            f"answered {c['answered_per_second_after_push']}/s after push, "
            f"enqueue+push end-to-end {c['enqueue_with_push_end_to_end_per_second']}/s, "
            f"enqueue {c['enqueue_nopush_per_second']}/s, "
            f"webhooks {c['webhooks_received_per_second_end_to_end']}/s, "
            f"peak RSS {c['rss_mb_peak']} MB"
        )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
