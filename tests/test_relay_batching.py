"""The relay batches a fleet run's reports into few signals, and tells fleet runs of resets.

On the real dev server, with a stand-in fleet run registered under the fleet run's signal
names: it records each signal it gets, so the tests see exactly how reports travelled.
Temporal going away is a real network partition (a proxy that stops passing bytes).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import BaseModel
from temporalio import workflow
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle
from temporalio.service import RPCError
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from bench.servers import RestartableServer
from mdmflow import metrics
from mdmflow.temporal_server import DevServer
from protocol import plist, routing
from protocol.results import CommandReport
from protocol.webhooks import WebhookEvent, parse_webhook
from relay.app import webhook_router
from relay.events import EventDispatcher
from relay.hmac_check import sign
from relay.inbox import DurableRouter, Forwarder
from relay.routing import FleetSignals, Router
from relay.webhook_auth import WebhookAuth
from store.db import open_engine
from store.events import EnrollmentRegister, SubscriptionStore
from store.holds import HoldStore
from store.inbox import WebhookInbox
from tests.conftest import FIXTURES, TEST_CONVERTER
from tests.workflow_harness import enrollment
from workflows.models import EnrollmentReset
from workflows.registry import BY_NAME

HMAC_KEY = "batching-hmac-key"
INVENTORY = BY_NAME["io.micromdm.wf.inventory.v1"]
LIVE = (FIXTURES / "nanomdm-live" / "webhooks.jsonl").read_bytes().splitlines()


class Received(BaseModel):
    batches: list[list[str]] = []  # per command_reports signal: "<enrollment>|<uuid>"
    singles: list[str] = []  # per command_report signal
    resets: list[str] = []  # per enrollment_reset signal: "<enrollment>|<reason>"


@workflow.defn(name="test.relay_batching.fleet")
class StandInFleet:
    """Answers to the fleet run's signal names and keeps what arrived, signal by signal."""

    def __init__(self) -> None:
        self._got = Received()
        self._done = False

    @workflow.run
    async def run(self) -> None:
        await workflow.wait_condition(lambda: self._done)

    @workflow.signal(name="command_reports")
    def command_reports(self, reports: list[CommandReport]) -> None:
        self._got.batches.append([f"{r.enrollment_id}|{r.command_uuid}" for r in reports])

    @workflow.signal(name="command_report")
    def command_report(self, report: CommandReport) -> None:
        self._got.singles.append(f"{report.enrollment_id}|{report.command_uuid}")

    @workflow.signal(name="enrollment_reset")
    def enrollment_reset(self, reset: EnrollmentReset) -> None:
        self._got.resets.append(f"{reset.enrollment_id}|{reset.reason}")

    @workflow.signal
    def finish(self) -> None:
        self._done = True

    @workflow.query
    def received(self) -> Received:
        return self._got


def ack_doc(eid: str, command_uuid: str) -> dict[str, Any]:
    """A NanoMDM ``mdm.Connect`` webhook: ``eid`` acknowledged ``command_uuid``."""
    raw = plist.dumps(
        {
            "CommandUUID": command_uuid,
            "RequestType": "InstallProfile",  # no AllCommandResponse subscriber
            "Status": "Acknowledged",
            "UDID": eid,
        }
    )
    return {
        "topic": "mdm.Connect",
        "event_id": uuid.uuid4().hex[:16],
        "created_at": "2026-11-24T04:40:17.712649545Z",
        "acknowledge_event": {
            "udid": eid,
            "status": "Acknowledged",
            "command_uuid": command_uuid,
            "ids": {"id": eid, "type": "Device"},
            "raw_payload": base64.b64encode(raw).decode(),
        },
    }


def ack(eid: str, command_uuid: str) -> WebhookEvent:
    return parse_webhook(json.dumps(ack_doc(eid, command_uuid)).encode())


FleetHandle = WorkflowHandle[StandInFleet, None]


@dataclass
class Fleet:
    """A stand-in fleet run: its handle and the CommandUUID its devices answer."""

    handle: FleetHandle
    workflow_id: str
    instance_id: str
    chunk: int

    def command_uuid_for(self, token: str) -> str:
        return routing.fleet_command_uuid(INVENTORY.CODE, self.instance_id, self.chunk, token)

    @property
    def command_uuid(self) -> str:
        return self.command_uuid_for("t1")

    async def received(self) -> Received:
        return await self.handle.query(StandInFleet.received)

    async def signal_events(self) -> int:
        count = 0
        async for event in self.handle.fetch_history_events():
            if event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED:
                count += 1
        return count


@dataclass
class Env:
    client: Client
    queue: str
    server: DevServer
    started: list[FleetHandle] = field(default_factory=list)

    async def fleet(self, *, started: bool = True) -> Fleet:
        instance = uuid.uuid4().hex[:12]
        chunk = 3
        workflow_id = routing.fleet_workflow_id(INVENTORY.NAME, instance, chunk)
        handle: FleetHandle = self.client.get_workflow_handle_for(StandInFleet.run, workflow_id)
        if started:
            handle = await self.client.start_workflow(
                StandInFleet.run, id=workflow_id, task_queue=self.queue
            )
            self.started.append(handle)
        return Fleet(handle, workflow_id, instance, chunk)


@pytest.fixture(scope="module")
async def env(dev_server: DevServer, dev_client: Client) -> AsyncIterator[Env]:
    queue = f"batching-{uuid.uuid4()}"
    async with Worker(
        dev_client,
        task_queue=queue,
        workflows=[StandInFleet],
        workflow_runner=UnsandboxedWorkflowRunner(),
    ):
        e = Env(dev_client, queue, dev_server)
        yield e
        for handle in e.started:
            with contextlib.suppress(RPCError):
                await handle.signal(StandInFleet.finish)


@pytest.fixture
async def inbox(tmp_path: Path) -> AsyncIterator[WebhookInbox]:
    engine = await open_engine(f"sqlite:///{tmp_path / 'relay.db'}")
    yield WebhookInbox(engine)
    await engine.dispose()


# -- a network path to Temporal that can be cut --------------------------------------


class Partition:
    """A TCP proxy in front of Temporal. ``cut`` makes it swallow every byte both ways,
    as a network partition does: calls neither succeed nor are refused, they time out.
    While ``held`` it passes nothing yet loses nothing: a slow network."""

    def __init__(self, backend: str) -> None:
        self._host, _, port = backend.rpartition(":")
        self._port = int(port)
        self.cut = False
        self._open = asyncio.Event()
        self._open.set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self.address = ""

    async def __aenter__(self) -> Partition:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.address = f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *_exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()

    def hold(self) -> None:
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(self._host, self._port)
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(src, dst))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                await self._open.wait()
                if not self.cut:
                    writer.write(data)
                    await writer.drain()
        except ConnectionError:
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()


@contextlib.asynccontextmanager
async def partitioned_client(server: DevServer) -> AsyncIterator[tuple[Client, Partition]]:
    async with Partition(server.address) as partition:
        client = await Client.connect(
            partition.address, namespace=server.namespace, data_converter=TEST_CONVERTER
        )
        yield client, partition


# -- tests ---------------------------------------------------------------------------


async def test_200_concurrent_reports_arrive_in_far_fewer_signals_each_once(env: Env) -> None:
    """Over real HTTP through the relay: every webhook answered only once delivered."""
    fleet = await env.fleet()
    devices = [enrollment() for _ in range(200)]
    engine = await open_engine("sqlite:///:memory:")
    durable = DurableRouter(Router(env.client, env.queue), WebhookInbox(engine))
    app = FastAPI()
    app.include_router(webhook_router(lambda: durable, WebhookAuth(hmac_key=HMAC_KEY)))
    batches_before = metrics.counters["webhook_report_batches"]
    batched_before = metrics.counters["webhook_reports_batched"]
    async with (
        RestartableServer(app) as server,
        httpx.AsyncClient(
            base_url=server.url, timeout=30, limits=httpx.Limits(max_connections=200)
        ) as http,
    ):

        async def post(eid: str) -> httpx.Response:
            body = json.dumps(ack_doc(eid, fleet.command_uuid)).encode()
            return await http.post(
                "/webhook", content=body, headers={"X-Hmac-Signature": sign(HMAC_KEY, body)}
            )

        answers = await asyncio.gather(*(post(eid) for eid in devices))
    await engine.dispose()
    assert [a.status_code for a in answers] == [200] * 200
    assert {a.json()["outcome"] for a in answers} == {"signalled"}

    got = await fleet.received()
    delivered = [item for batch in got.batches for item in batch]
    assert sorted(delivered) == sorted(f"{eid}|{fleet.command_uuid}" for eid in devices)
    assert got.singles == []
    signals = await fleet.signal_events()
    assert signals == len(got.batches)
    print(f"200 reports in {signals} signals: {[len(b) for b in got.batches]}")
    assert signals <= 50  # far fewer than one per report
    assert metrics.counters["webhook_report_batches"] - batches_before == signals
    assert metrics.counters["webhook_reports_batched"] - batched_before == 200


async def test_a_lone_report_is_signalled_at_once_as_one_element(env: Env) -> None:
    fleet = await env.fleet()
    router = Router(env.client, env.queue)
    eid = enrollment()
    delivery = await router.deliver(ack(eid, fleet.command_uuid))
    assert delivery.outcome == "signalled" and delivery.workflow_id == fleet.workflow_id
    # the answer came back only once the signal was in the history: nothing waits
    assert (await fleet.received()).batches == [[f"{eid}|{fleet.command_uuid}"]]
    assert await fleet.signal_events() == 1


async def test_reports_arriving_while_a_signal_is_in_flight_go_together_next(
    env: Env,
) -> None:
    fleet = await env.fleet()
    async with partitioned_client(env.server) as (client, partition):
        router = Router(client, env.queue)
        partition.hold()  # the first signal is on its way, slowly
        first_eid = enrollment()
        first = asyncio.create_task(router.deliver(ack(first_eid, fleet.command_uuid)))
        await asyncio.sleep(0.3)
        later = [enrollment() for _ in range(49)]
        rest = [asyncio.create_task(router.deliver(ack(e, fleet.command_uuid))) for e in later]
        await asyncio.sleep(0.2)
        assert not first.done() and not any(t.done() for t in rest)  # nobody answered yet
        partition.release()
        deliveries = await asyncio.gather(first, *rest)
    assert {d.outcome for d in deliveries} == {"signalled"}
    got = await fleet.received()
    assert [[i.split("|")[0] for i in b] for b in got.batches] == [[first_eid], later]
    assert await fleet.signal_events() == 2


async def test_a_batch_never_exceeds_its_cap(env: Env) -> None:
    fleet = await env.fleet()
    signals = FleetSignals(env.client, batch_max=10)
    devices = [enrollment() for _ in range(45)]
    reports = [ack(eid, fleet.command_uuid).report for eid in devices]
    await asyncio.gather(*(signals.send(fleet.workflow_id, r) for r in reports if r))
    got = await fleet.received()
    assert [len(b) for b in got.batches] == [10, 10, 10, 10, 5]
    assert sorted(i.split("|")[0] for b in got.batches for i in b) == sorted(devices)


async def test_reports_for_a_run_that_is_gone_are_no_run_each(env: Env) -> None:
    fleet = await env.fleet(started=False)
    router = Router(env.client, env.queue)
    deliveries = await asyncio.gather(
        *(router.deliver(ack(enrollment(), fleet.command_uuid)) for _ in range(5))
    )
    assert {d.outcome for d in deliveries} == {"no_run"}
    assert {d.workflow_id for d in deliveries} == {fleet.workflow_id}


async def test_one_device_runs_still_get_command_report(env: Env) -> None:
    eid, instance = enrollment(), uuid.uuid4().hex[:12]
    workflow_id = routing.workflow_id(INVENTORY.NAME, eid, instance)
    handle = await env.client.start_workflow(StandInFleet.run, id=workflow_id, task_queue=env.queue)
    env.started.append(handle)
    command_uuid = routing.command_uuid(INVENTORY.CODE, instance, "t1")
    router = Router(env.client, env.queue)
    delivery = await router.deliver(ack(eid, command_uuid))
    assert delivery.outcome == "signalled" and delivery.workflow_id == workflow_id
    got = await handle.query(StandInFleet.received)
    assert got.singles == [f"{eid}|{command_uuid}"] and got.batches == []


async def test_a_failed_batch_signal_fails_every_caller_in_it(env: Env) -> None:
    fleet = await env.fleet()
    async with partitioned_client(env.server) as (client, partition):
        router = Router(client, env.queue)
        partition.cut = True
        first = asyncio.create_task(router.deliver(ack(enrollment(), fleet.command_uuid)))
        await asyncio.sleep(0.3)  # its signal is in flight: the next ones wait and batch
        rest = [
            asyncio.create_task(router.deliver(ack(enrollment(), fleet.command_uuid)))
            for _ in range(19)
        ]
        outcomes = await asyncio.gather(first, *rest, return_exceptions=True)
    assert all(isinstance(o, RPCError) for o in outcomes), outcomes
    assert await fleet.received() == Received()  # nothing half-delivered


async def test_temporal_away_sends_the_batch_to_the_inbox_and_the_backlog_goes_in_few_signals(
    env: Env, inbox: WebhookInbox
) -> None:
    fleet = await env.fleet()
    devices = [enrollment() for _ in range(30)]
    async with partitioned_client(env.server) as (client, partition):
        relay = DurableRouter(Router(client, env.queue), inbox)
        partition.cut = True
        first = asyncio.create_task(relay.deliver(ack(devices[0], fleet.command_uuid)))
        await asyncio.sleep(0.3)
        rest = [relay.deliver(ack(eid, fleet.command_uuid)) for eid in devices[1:]]
        deliveries = await asyncio.gather(first, *rest)
    # each caller took its own fallback: held, answered 200, nothing lost
    assert {d.outcome for d in deliveries} == {"queued"}
    assert (await inbox.depth()).entries == 30
    assert await fleet.received() == Received()

    # Temporal is back: the forwarder delivers the backlog through the same batching
    forwarder = Forwarder(DurableRouter(Router(env.client, env.queue), inbox))
    for _ in range(100):
        await forwarder.forward_once()
        if (await inbox.depth()).entries == 0:
            break
        await asyncio.sleep(0.1)  # failed entries wait out their backoff first
    assert (await inbox.depth()).entries == 0
    got = await fleet.received()
    delivered = sorted(i.split("|")[0] for b in got.batches for i in b)
    assert delivered == sorted(devices)  # each exactly once
    assert len(got.batches) <= 5  # the probe, then the rest together


async def test_a_forwarder_pass_keeps_each_enrollments_order(env: Env, inbox: WebhookInbox) -> None:
    """Many enrollments at once, but one enrollment's answers in arrival order."""
    fleet = await env.fleet()
    devices = [enrollment() for _ in range(20)]
    uuids = [fleet.command_uuid_for(token) for token in ("a", "b", "c")]
    for token in uuids:
        for eid in devices:
            await inbox.add(ack(eid, token))
    forwarder = Forwarder(DurableRouter(Router(env.client, env.queue), inbox))
    assert await forwarder.forward_once() == 60
    got = await fleet.received()
    arrived = [item.split("|") for batch in got.batches for item in batch]
    for eid in devices:
        assert [u for e, u in arrived if e == eid] == uuids
    assert len(got.batches) < 60


async def test_a_reset_reaches_the_fleet_runs_holding_the_device_and_its_user_channels(
    env: Env, tmp_path: Path
) -> None:
    engine = await open_engine(f"sqlite:///{tmp_path / 'holds.db'}")
    holds = HoldStore(engine)
    fleet, other = await env.fleet(), await env.fleet()
    device = enrollment()
    user = f"{device}:501"
    for run, ids in ((fleet, [device, user]), (other, [enrollment()])):
        await holds.claim(
            INVENTORY.NAME,
            ids,
            workflow_id=run.workflow_id,
            instance_id=run.instance_id,
            exclusive=True,
        )
    events = EventDispatcher(
        env.client,
        env.queue,
        SubscriptionStore(engine),
        EnrollmentRegister(engine),
        holds=holds,
    )
    router = Router(env.client, env.queue, events)
    authenticate = parse_webhook(LIVE[0])
    assert authenticate.message_type == "Authenticate"
    authenticate = authenticate.model_copy(
        update={
            "event_id": uuid.uuid4().hex[:16],
            "enrollment": authenticate.enrollment.model_copy(update={"id": device}),
        }
    )
    before = metrics.counters["enrollment_reset_signalled"]
    assert (await router.deliver(authenticate)).outcome == "checkin"
    await engine.dispose()
    got = await fleet.received()
    assert sorted(got.resets) == sorted([f"{device}|re-enrolled", f"{user}|re-enrolled"])
    assert (await other.received()).resets == []
    assert metrics.counters["enrollment_reset_signalled"] - before == 2
