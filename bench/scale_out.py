"""Scale-out: two workers and two API + relay processes on one Temporal server and one
PostgreSQL store, then one of each killed mid-run.

    .venv/bin/python -m bench.scale_out [--devices 1000] [--kill-devices 1000]
        [--workers 2] [--apis 2]   (fewer than 2 of each: the steady phase alone, a baseline)

Worker and relay are stateless; this shows it. The simulator's webhooks reach the relays
through :class:`RoundRobin`, a front that spreads them over the relays still up (as a
load balancer would). Both phases run ``io.micromdm.wf.inventory.v1`` (DeviceInformation
+ SecurityInfo, one step) on their own freshly enrolled devices.

1. Steady: the starts are split across both API processes. Every device completes, every
   device answered exactly its two commands, each answer was signalled exactly once
   (the relays' ``webhook_signalled`` counters sum to two per device, both relays took
   part), nothing failed at the front, and every inventory is in PostgreSQL.
2. Kill: runs started with a short re-push schedule (``repush_after_seconds``, which only
   the client takes, not the start API); one worker is SIGKILLed once a third of the
   commands are queued, one relay hangs (SIGSTOP) once half are answered and is SIGKILLed
   half a second later (and not before a report was sent to it). Webhooks sent to the
   dying relay fail (the front answers 502, the MDM server never retries) and the front
   takes it out of the rotation; the step re-issues a read-only command whose answer
   went missing under a new UUID. Every device must complete; a fleet run sends one
   CommandUUID to many devices, so every CommandUUID (original or re-issued) must have
   been queued exactly once per device it was sent to (per the devices' own states) and
   answered at most that often, every original answered by each of its devices, and the
   devices together answered exactly the commands queued for them. Re-issued commands
   are counted apart.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import logging
import os
import signal
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx

from bench.chaos.common import answered_per_device, check_all_completed, until
from bench.rss import PeakRss
from bench.servers import RestartableServer, listening_socket
from bench.stack import API_KEY, Stack, StackOptions
from simulator.rawhttp import RawHTTPConnection, RawHTTPError
from store.db import open_engine
from store.inventory import InventoryStore

INVENTORY = "io.micromdm.wf.inventory.v1"
PG_ADMIN = os.environ.get("MDMFLOW_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
# Hop-by-hop and framing headers the front sets itself.
_NOT_FORWARDED = frozenset({b"host", b"content-length", b"connection", b"transfer-encoding"})


class RoundRobin:
    """ASGI front: each request to the next upstream still up, over kept-alive connections.

    An upstream whose request fails (connection refused or reset, timeout) is taken out
    of the rotation for good and that request is answered 502: lost, as a webhook NanoMDM
    posted to a dying relay is lost.
    """

    def __init__(self, upstreams: Sequence[str], timeout: float = 30.0) -> None:
        self.upstreams = list(upstreams)
        self.forwarded = [0] * len(self.upstreams)
        self.failed = [0] * len(self.upstreams)
        self.reports_sent = [0] * len(self.upstreams)  # command reports dispatched
        # CommandUUIDs of the command reports among the failed requests
        self.failed_reports: list[str] = []
        self.down: set[int] = set()
        self._idle: list[list[RawHTTPConnection]] = [[] for _ in self.upstreams]
        self._turn = itertools.count()
        self._timeout = timeout

    def _pick(self) -> int | None:
        live = [i for i in range(len(self.upstreams)) if i not in self.down]
        return live[next(self._turn) % len(live)] if live else None

    async def _take_out(self, i: int) -> None:
        self.down.add(i)
        idle, self._idle[i] = self._idle[i], []
        for conn in idle:
            await conn.close()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            for idle in self._idle:
                for conn in idle:
                    await conn.close()
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        headers = {
            k.decode("latin-1"): v.decode("latin-1")
            for k, v in scope["headers"]
            if k.lower() not in _NOT_FORWARDED
        }
        target = scope["path"] + (
            f"?{scope['query_string'].decode()}" if scope["query_string"] else ""
        )
        status, payload = 502, b'{"error": "no relay answered"}'
        if (i := self._pick()) is not None:
            command_uuid = _command_uuid(body)
            if command_uuid is not None:
                self.reports_sent[i] += 1
            idle = self._idle[i]
            conn = (
                idle.pop() if idle else RawHTTPConnection(self.upstreams[i], timeout=self._timeout)
            )
            try:
                status, payload = await conn.request(scope["method"], body, headers, path=target)
            except RawHTTPError:
                await conn.close()
                self.failed[i] += 1
                if command_uuid is not None:
                    self.failed_reports.append(command_uuid)
                await self._take_out(i)
            else:
                self.forwarded[i] += 1
                if i not in self.down:
                    idle.append(conn)
                else:
                    await conn.close()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": payload})


def _command_uuid(body: bytes) -> str | None:
    """The CommandUUID a NanoMDM webhook reports on (None: a check-in or Idle)."""
    try:
        event = json.loads(body).get("acknowledge_event") or {}
    except (ValueError, AttributeError):
        return None
    value = event.get("command_uuid")
    return value if isinstance(value, str) else None


@asynccontextmanager
async def fresh_database(admin_url: str = PG_ADMIN) -> AsyncIterator[str]:
    """A new, empty PostgreSQL database beside ``admin_url``'s, dropped afterwards."""
    name = f"mdmflow_scale_{uuid.uuid4().hex[:12]}"
    try:
        admin = await asyncpg.connect(admin_url, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        where = urlsplit(admin_url).hostname
        raise RuntimeError(
            f"PostgreSQL not reachable on {where} ({exc!r}); set MDMFLOW_TEST_PG_URL"
        ) from exc
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield admin_url.rsplit("/", 1)[0] + "/" + name
        finally:
            await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@dataclass
class ScaleOut:
    stack: Stack
    front: RoundRobin
    store: InventoryStore  # read back from PostgreSQL by this process


@asynccontextmanager
async def scale_out_stack(
    db_url: str, workers: int = 2, apis: int = 2, connect_latency: float = 0.05
) -> AsyncIterator[ScaleOut]:
    """The stack with ``workers`` worker and ``apis`` API processes behind one front."""
    sock = listening_socket()
    front_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    options = StackOptions(
        processes=True,
        workers=workers,
        apis=apis,
        db_url=db_url,
        webhook_url=f"{front_url}/webhook",
        connect_latency=connect_latency,
    )
    stack = Stack(options)
    front = RoundRobin(stack.api_urls)
    async with RestartableServer(front, sock), stack:
        engine = await open_engine(db_url)
        try:
            yield ScaleOut(stack, front, InventoryStore(engine))
        finally:
            await engine.dispose()


def process_pids(stack: Stack) -> dict[str, int]:
    """The processes whose memory is reported; ``driver`` runs simulator, front and this."""
    pids: dict[str, int] = {}
    workers = [p for p in (stack.worker_proc, *stack.worker_replicas) if p is not None]
    relays = [p for p in (stack.api_proc, *stack.api_replicas) if p is not None]
    pids.update({f"worker-{i}": p.pid for i, p in enumerate(workers, start=1)})
    pids.update({f"relay-{i}": p.pid for i, p in enumerate(relays, start=1)})
    if stack.temporal.process is not None:
        pids["temporal"] = stack.temporal.process.pid
    pids["driver"] = os.getpid()
    return pids


async def signalled(urls: Sequence[str]) -> list[int]:
    """Each API process's count of reports it signalled to a run (its ``/metrics``)."""
    out = []
    async with httpx.AsyncClient(timeout=10.0) as http:
        for url in urls:
            text = (await http.get(f"{url}/metrics")).text
            values = [
                int(line.split()[1])
                for line in text.splitlines()
                if line.startswith("mdmflow_webhook_signalled ")
            ]
            out.append(values[0] if values else 0)
    return out


async def start_via(url: str, ids: Sequence[str]) -> str:
    """One multi-ID start through the API process at ``url``; returns the instance ID."""
    async with httpx.AsyncClient(
        base_url=url, auth=("nanocmd", API_KEY), timeout=httpx.Timeout(600.0)
    ) as http:
        resp = await http.post(f"/v1/workflow/{INVENTORY}/start", json={"ids": list(ids)})
    resp.raise_for_status()
    body: dict[str, Any] = resp.json()
    if body["refused"]:
        raise RuntimeError(f"start refused: {body['refused']}")
    return str(body["instance_id"])


async def check_inventory(so: ScaleOut, ids: Sequence[str]) -> int:
    """Both answers of every device are in the store; returns how many devices."""
    stored = await so.store.retrieve(list(ids))
    wrong = [
        eid
        for eid in ids
        if eid not in stored
        or stored[eid].get("last_source") != "DeviceInformation+SecurityInfo"
        or stored[eid].get("serial_number") != so.stack.fleet.device_state(eid)["serial_number"]
    ]
    assert not wrong, f"{len(wrong)} devices without their inventory, e.g. {wrong[:3]}"
    return len(stored)


async def steady(so: ScaleOut, n: int) -> dict[str, Any]:
    """Phase 1: ``n`` runs, their starts split across the API processes, nothing broken."""
    stack, fleet = so.stack, so.stack.fleet
    ids = await stack.enroll(n)
    urls = stack.api_urls
    parts = [ids[i * n // len(urls) : (i + 1) * n // len(urls)] for i in range(len(urls))]
    before_signalled = await signalled(urls)
    before_forwarded = list(so.front.forwarded)
    enqueued_before = fleet.stats["commands_enqueued"]
    async with PeakRss(process_pids(stack), every=0.5) as rss:
        t0 = time.monotonic()
        instances = await asyncio.gather(
            *(start_via(u, p) for u, p in zip(urls, parts, strict=True))
        )
        start_seconds = time.monotonic() - t0
        for instance, part in zip(instances, parts, strict=True):
            await stack.wait_closed(instance, len(part), timeout=max(600, n))
        seconds = time.monotonic() - t0
    await fleet.wait_idle(timeout=60)
    statuses: Counter[str] = Counter()
    for instance, part in zip(instances, parts, strict=True):
        statuses.update(await check_all_completed(stack, instance, part))
    per_device = answered_per_device(stack, ids)
    assert per_device == {2: n}, f"answers per device: {dict(per_device)}"
    enqueued = fleet.stats["commands_enqueued"] - enqueued_before
    assert enqueued == 2 * n, f"{enqueued} commands queued for {n} runs"
    per_relay = [a - b for a, b in zip(await signalled(urls), before_signalled, strict=True)]
    assert sum(per_relay) == 2 * n, f"reports signalled per relay {per_relay}, not {2 * n}"
    assert all(per_relay), f"a relay signalled nothing: {per_relay}"
    assert not any(so.front.failed), f"webhooks failed at the front: {so.front.failed}"
    forwarded = [a - b for a, b in zip(so.front.forwarded, before_forwarded, strict=True)]
    return {
        "devices": n,
        "seconds": round(seconds, 1),
        "devices_per_s": round(n / seconds, 2),
        "start_request_seconds": round(start_seconds, 1),
        "starts_per_api": [len(p) for p in parts],
        "statuses": dict(statuses),
        "answers_per_device": dict(per_device),
        "commands_enqueued": enqueued,
        "webhooks_per_relay": forwarded,
        "reports_signalled_per_relay": per_relay,
        "inventories_in_postgresql": await check_inventory(so, ids),
        "peak_rss_mib": rss.peak_mib,
    }


def _commands(states: dict[str, dict[str, Any]]) -> dict[str, list[tuple[str, list[str]]]]:
    """Per device, its commands: (original CommandUUID, re-issued UUIDs). Devices of a
    fleet run share a CommandUUID when they were sent the same command together."""
    return {
        eid: [(c["command_uuid"], list(c["reissued_as"])) for c in state["steps"][0]["commands"]]
        for eid, state in states.items()
    }


async def kill_mid_run(
    so: ScaleOut, n: int, repush_s: float, hang_s: float = 0.5
) -> dict[str, Any]:
    """Phase 2: SIGKILL the first worker and the first relay while ``n`` runs are going.

    The relay first hangs (SIGSTOP) for ``hang_s`` and until at least one command report
    was sent to it, so that answers surely die with it (and come back by re-issue);
    without the hang only the few requests in flight at the kill would.
    """
    stack, fleet = so.stack, so.stack.fleet
    assert stack.worker_proc is not None and stack.worker_replicas, "needs two workers"
    assert stack.api_proc is not None and stack.api_replicas, "needs two API processes"
    t_enroll = time.monotonic()
    ids = await stack.enroll(n)
    enroll_seconds = time.monotonic() - t_enroll
    base = fleet.stats
    forwarded_before, failed_before = list(so.front.forwarded), list(so.front.failed)
    reports_before = len(so.front.failed_reports)

    def done(key: str) -> int:
        return fleet.stats[key] - base[key]

    t0 = time.monotonic()
    starting = asyncio.create_task(
        stack.start_direct(ids, INVENTORY, repush_after_seconds=[repush_s])
    )
    await until(
        "a third of the commands queued", lambda: done("commands_enqueued") >= 2 * n // 3, 300
    )
    worker_pid = stack.worker_proc.pid
    await stack.stop_worker(kill=True)
    queued_at_kill = done("commands_enqueued")
    await until("half the commands answered", lambda: done("commands_answered") >= n, 300)
    answered_at_kill = done("commands_answered")
    relay_pid = stack.api_proc.pid
    os.kill(relay_pid, signal.SIGSTOP)  # hung: what reaches it now is never handled
    reports_to_hung = so.front.reports_sent[0]
    await asyncio.sleep(hang_s)
    await until(
        "a report sent to the hung relay", lambda: so.front.reports_sent[0] > reports_to_hung
    )
    await stack.stop_api(kill=True)
    instance = await starting
    await stack.wait_closed(instance, n, timeout=max(600, n))
    seconds = time.monotonic() - t0
    t_checks = time.monotonic()
    await fleet.wait_idle(timeout=60)  # re-issued commands still queued get answered
    idle_seconds = time.monotonic() - t_checks
    # one read of the device states serves every check: a query to a closed fleet run
    # replays its whole history, which for 1,000 devices takes seconds
    t_states = time.monotonic()
    states = await stack.device_states(instance)
    states_seconds = time.monotonic() - t_states
    assert sorted(states) == sorted(ids), f"{len(states)} devices in the runs, {n} started"
    statuses = dict(Counter(str(states[e]["status"]) for e in ids))
    assert statuses == {"completed": n}, f"devices not all completed: {statuses}"

    commands = _commands(states)
    # per CommandUUID, the devices it was sent to: as original, as a re-issue
    sent_to: Counter[str] = Counter()
    original_to: Counter[str] = Counter()
    for cmds in commands.values():
        for orig, again in cmds:
            original_to[orig] += 1
            sent_to.update([orig, *again])
    originals = list(original_to)
    reissued = [u for u in sent_to if u not in original_to]
    assert not set(reissued) & set(originals), "a CommandUUID both original and re-issued"
    assert all(
        len({u for u, _ in cmds} | {r for _, a in cmds for r in a})
        == len(cmds) + sum(len(a) for _, a in cmds)
        for cmds in commands.values()
    ), "a device given one CommandUUID twice"
    queued_not_once = [u for u, k in sent_to.items() if fleet.command_copies(u) != k]
    assert not queued_not_once, f"queued other than once per device: {queued_not_once[:3]}"
    answered_twice = [u for u, k in sent_to.items() if fleet.command_answers(u) > k]
    assert not answered_twice, f"answered more than once per device: {answered_twice[:3]}"
    unanswered = [u for u, k in original_to.items() if fleet.command_answers(u) != k]
    assert not unanswered, f"original commands not answered by each device: {unanswered[:3]}"
    assert done("commands_enqueued") == sum(sent_to.values()), "commands queued that no run sent"
    # a shared UUID's answers are counted over its devices: compare totals per device set
    per_device_answers = sum(fleet.device_state(e)["counters"]["answered"] for e in ids)
    assert per_device_answers == sum(fleet.command_answers(u) for u in sent_to), (
        "devices answered other commands than theirs"
    )
    # A report that failed at the front may still have been signalled before the relay
    # died; the run then completed without re-issuing that command.
    failed = set(so.front.failed_reports[reports_before:])
    reissued_for = {u for cmds in commands.values() for u, again in cmds if again}
    failed_originals = failed & set(originals)
    inventories = await check_inventory(so, ids)
    return {
        "devices": n,
        "repush_after_seconds": repush_s,
        # around the run: enrolling its devices, then waiting out late answers and checking
        "enroll_seconds": round(enroll_seconds, 1),
        "check_seconds": round(time.monotonic() - t_checks, 1),
        "idle_wait_seconds": round(idle_seconds, 1),
        "states_read_seconds": round(states_seconds, 1),
        "killed_worker": f"pid {worker_pid} (SIGKILL) with {queued_at_kill}/{2 * n} queued",
        "killed_relay": (
            f"pid {relay_pid} (SIGSTOP, {hang_s}s later SIGKILL) "
            f"with {answered_at_kill}/{2 * n} answered"
        ),
        "seconds": round(seconds, 1),
        "statuses": statuses,
        "webhooks_per_relay": [
            a - b for a, b in zip(so.front.forwarded, forwarded_before, strict=True)
        ],
        "webhooks_failed_at_front": sum(so.front.failed) - sum(failed_before),
        "reports_failed_at_front": len(failed),
        "failed_reports_recovered_by_reissue": len(failed_originals & reissued_for),
        "failed_reports_delivered_before_relay_died": len(failed_originals - reissued_for),
        "failed_reports_of_reissued_commands": len(failed & set(reissued)),
        "reissued_after_slow_answer": len(reissued_for - failed),
        "command_uuids_original": len(originals),
        "commands_original": sum(original_to.values()),
        "commands_reissued": sum(sent_to[u] for u in reissued),
        "reissued_answered": sum(fleet.command_answers(u) for u in reissued),
        "answers_per_device": dict(sorted(answered_per_device(stack, ids).items())),
        "inventories_in_postgresql": inventories,
    }


async def run(
    devices: int = 1000,
    kill_devices: int | None = None,
    repush_s: float = 3.0,
    pg_admin: str = PG_ADMIN,
    workers: int = 2,
    apis: int = 2,
) -> dict[str, Any]:
    """Both phases on one stack on a fresh PostgreSQL database.

    The kill phase needs two of each; with fewer (a baseline) only the steady one runs.
    """
    out: dict[str, Any] = {"workers": workers, "apis": apis, "store": "postgresql"}
    async with fresh_database(pg_admin) as db_url, scale_out_stack(db_url, workers, apis) as so:
        out["steady"] = await steady(so, devices)
        if workers >= 2 and apis >= 2:
            out["kill"] = await kill_mid_run(so, kill_devices or devices, repush_s)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1000, help="steady phase (1,000)")
    parser.add_argument("--kill-devices", type=int, help="kill phase (as --devices)")
    parser.add_argument("--repush", type=float, default=3.0, help="re-push interval, kill phase")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (2)")
    parser.add_argument("--apis", type=int, default=2, help="API + relay processes (2)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from mdmflow import eventloop

    result = eventloop.run(
        run(args.devices, args.kill_devices, args.repush, PG_ADMIN, args.workers, args.apis)
    )
    print(json.dumps(result, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
