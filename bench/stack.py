"""The whole stack for benchmarks and chaos runs, on loopback ports in a temp dir.

A fresh embedded Temporal dev server (own SQLite file, free port, headless), the
simulator in this process, and API + relay and worker either in this process or as
``python -m mdmflow serve`` / ``python -m mdmflow worker`` subprocesses configured by
environment, so they can be measured (RSS) and killed (``kill -9``) like the real thing.
Scale-out (``workers``/``apis`` > 1) adds more such processes beside the first ones, all
on the one task queue, store and var dir (so one secrets master key); ``db_url`` puts the
store on PostgreSQL, ``webhook_url`` sends the simulator's webhooks to a front of choice.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import (
    Client,
    WorkflowExecution,
    WorkflowFailureError,
    WorkflowQueryFailedError,
)
from temporalio.worker import Worker

import worker as worker_module
from activities.mdm_server import NanoMdmClient
from bench.servers import Outage, RestartableServer, listening_socket
from escrow.sealing import load_master_key
from mdmflow import codec
from mdmflow.temporal_calls.runs import run_result
from mdmflow.temporal_calls.starts import start_workflow
from mdmflow.temporal_client import connect
from mdmflow.temporal_server import EAGER_ACTIVITIES, SQLITE_PRAGMAS, DevServer, free_port
from relay.webhook_auth import WebhookAuth
from simulator.app import create_app as create_sim_app
from simulator.fleet import Fleet, FleetConfig
from starter.api import create_app
from starter.deps import Services
from store.db import open_engine
from store.holds import HoldStore
from store.users import UserStore
from workflows import search_attributes as sa

API_KEY = "bench-api-key"
HMAC_KEY = "bench-hmac-key"
SIM_KEY = "bench-sim-key"
DEVINFOLOG = "io.micromdm.wf.devinfolog.v1"
ROOT = Path(__file__).resolve().parents[1]
STATES_PAGE = 500  # the fleet run's largest page of device states


@dataclass
class TunedDevServer(DevServer):
    """The product's dev server with other SQLite pragmas, eager activities on or off
    (for the settings benchmark)."""

    pragmas: tuple[str, ...] = SQLITE_PRAGMAS
    eager_activities: bool = True

    def command(self) -> list[str]:
        cmd = super().command()
        out: list[str] = []
        skip = False
        for arg, following in zip(cmd, [*cmd[1:], ""], strict=True):
            if skip:
                skip = False
                continue
            if arg == "--sqlite-pragma" or (
                following == EAGER_ACTIVITIES and not self.eager_activities
            ):
                skip = True  # the flag and its value
                continue
            out.append(arg)
        for pragma in self.pragmas:
            out += ["--sqlite-pragma", pragma]
        return out


@dataclass
class StackOptions:
    processes: bool = False  # worker and API as subprocesses
    connect_latency: float = 0.0
    seed: int = 1
    pragmas: tuple[str, ...] = SQLITE_PRAGMAS
    eager_activities: bool = True
    # In-process worker only: extra temporalio Worker arguments (slots, sticky cache).
    worker_tuning: dict[str, Any] = field(default_factory=dict)
    webhook_concurrency: int = 16
    # processes=True only: how many ``mdmflow worker`` / ``mdmflow serve`` processes; the
    # first of each is ``worker_proc`` / ``api_proc``, the others ``*_replicas``.
    workers: int = 1
    apis: int = 1
    # The store; None: a SQLite file in the stack's directory.
    db_url: str | None = None
    # Where the simulator posts webhooks; None: the first API's ``/webhook``.
    webhook_url: str | None = None


class Stack:
    def __init__(self, options: StackOptions | None = None) -> None:
        self.options = options or StackOptions()
        if not self.options.processes and (self.options.workers > 1 or self.options.apis > 1):
            raise ValueError("more than one worker or API needs processes=True")
        self.dir = Path(tempfile.mkdtemp(prefix="mdmflow-bench-"))
        # one payload key ring for the in-process clients and every child process
        os.environ.setdefault(codec.ENV_KEYS, codec.KeyRing.generate("bench").format())
        self.queue = f"bench-{uuid.uuid4().hex[:8]}"
        self.db_url = self.options.db_url or f"sqlite:///{self.dir / 'mdmflow.db'}"
        self.temporal = TunedDevServer(
            db_file=self.dir / "temporal.db",
            port=free_port(),
            ui_port=None,
            log_file=self.dir / "temporal.log",
            pragmas=self.options.pragmas,
            eager_activities=self.options.eager_activities,
        )
        # held until the API binds it (its own process, or the server below)
        self._api_listener: socket.socket | None = listening_socket()
        self.api_port: int = self._api_listener.getsockname()[1]
        self.api_url = f"http://127.0.0.1:{self.api_port}"
        # the other API processes' ports, held the same way until each binds its own
        self._replica_listeners = [listening_socket() for _ in range(self.options.apis - 1)]
        self.replica_api_ports = [s.getsockname()[1] for s in self._replica_listeners]
        self.worker_replicas: list[subprocess.Popen[bytes]] = []
        self.api_replicas: list[subprocess.Popen[bytes]] = []
        self.fleet = Fleet(
            FleetConfig(
                webhook_url=self.options.webhook_url or f"{self.api_url}/webhook",
                webhook_hmac_key=HMAC_KEY,
                api_key=SIM_KEY,
                connect_latency=self.options.connect_latency,
                seed=self.options.seed,
                webhook_concurrency=self.options.webhook_concurrency,
            )
        )
        self.mdm_outage = Outage(create_sim_app(self.fleet))
        self.sim = RestartableServer(self.mdm_outage)
        self._client: Client | None = None
        self._engine: AsyncEngine | None = None
        self._api_server: RestartableServer | None = None
        self._worker: Worker | None = None
        self._worker_task: asyncio.Task[None] | None = None
        self._mdm: NanoMdmClient | None = None
        self.worker_proc: subprocess.Popen[bytes] | None = None
        self.api_proc: subprocess.Popen[bytes] | None = None
        self.http = httpx.AsyncClient(
            base_url=self.api_url, auth=("nanocmd", API_KEY), timeout=httpx.Timeout(600.0)
        )
        # API clients of users with other roles (as_role), by role
        self._role_clients: dict[str, httpx.AsyncClient] = {}

    async def as_role(self, role: str) -> httpx.AsyncClient:
        """An API client of a user with ``role`` (``nanocmd`` is an operator)."""
        if role not in self._role_clients:
            assert self._engine is not None
            key = await UserStore(self._engine).add(f"bench-{role}", role, created_by="bench")
            self._role_clients[role] = httpx.AsyncClient(
                base_url=self.api_url, auth=(f"bench-{role}", key), timeout=600.0
            )
        return self._role_clients[role]

    # ---- lifecycle ---------------------------------------------------------------------

    @property
    def client(self) -> Client:
        assert self._client is not None, "stack not started"
        return self._client

    async def __aenter__(self) -> Stack:
        self.temporal.start()
        await self.temporal.wait_ready_async()
        self._client = await connect(self.temporal.address, self.temporal.namespace)
        self._engine = await open_engine(self.db_url)
        await self.fleet.start()
        await self.sim.start()
        self._spawn_replicas()  # they start up while the first API and worker do
        try:
            await self.start_api()
            await self.start_worker()
            await self._wait_replicas()
        except BaseException:
            for proc in [*self.worker_replicas, *self.api_replicas]:
                _end(proc, kill=True)
            raise
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.stop_worker()
        await self.stop_api()
        for proc in [*self.worker_replicas, *self.api_replicas]:
            _end(proc, kill=False)
        for sock in self._replica_listeners:
            sock.close()
        await self.sim.stop()
        if self._api_listener is not None:
            self._api_listener.close()
        await self.fleet.stop()
        await self.http.aclose()
        for client in self._role_clients.values():
            await client.aclose()
        if self._engine is not None:
            await self._engine.dispose()
        self.temporal.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _env(self, api_port: int | None = None) -> dict[str, str]:
        return {
            **os.environ,
            "TEMPORAL_ADDRESS": self.temporal.address,
            "MDMFLOW_TASK_QUEUE": self.queue,
            "MDMFLOW_MDM_URL": self.sim.url,
            "MDMFLOW_MDM_API_KEY": SIM_KEY,
            "MDMFLOW_WEBHOOK_HMAC_KEY": HMAC_KEY,
            "MDMFLOW_DB_URL": self.db_url,
            "MDMFLOW_API_KEY": API_KEY,
            "MDMFLOW_LISTEN": f"127.0.0.1:{api_port or self.api_port}",
            "MDMFLOW_VAR_DIR": str(self.dir / "var"),
        }

    def _spawn(
        self, what: str, log_name: str | None = None, api_port: int | None = None
    ) -> subprocess.Popen[bytes]:
        log = open(self.dir / (log_name or f"{what}.log"), "ab")  # the child owns it
        return subprocess.Popen(
            [sys.executable, "-m", "mdmflow", what],
            env=self._env(api_port),
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    async def start_api(self) -> None:
        if self.options.processes:
            if self._api_listener is not None:
                self._api_listener.close()
                self._api_listener = None
            self.api_proc = self._spawn("serve")
            deadline = time.monotonic() + 60
            while True:
                try:
                    if (await self.http.get("/version")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if self.api_proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"API did not start: see {self.dir / 'serve.log'}")
                await asyncio.sleep(0.1)
        if self._api_server is None:
            assert self._engine is not None
            services = Services.create(
                self.client, self._engine, self.queue, load_master_key(self.dir)
            )
            app = create_app(services, API_KEY, WebhookAuth(hmac_key=HMAC_KEY))
            self._api_server = RestartableServer(app, self._api_listener)
            self._api_listener = None
        await self._api_server.start()

    @property
    def api_urls(self) -> list[str]:
        """Every API process's base URL, the first API's first."""
        return [self.api_url, *(f"http://127.0.0.1:{p}" for p in self.replica_api_ports)]

    def _spawn_replicas(self) -> None:
        if not self.options.processes:
            return
        for i in range(2, self.options.workers + 1):
            self.worker_replicas.append(self._spawn("worker", f"worker-{i}.log"))
        for i, (sock, port) in enumerate(
            zip(self._replica_listeners, self.replica_api_ports, strict=True), start=2
        ):
            sock.close()
            self.api_replicas.append(self._spawn("serve", f"serve-{i}.log", port))
        self._replica_listeners = []

    async def _wait_replicas(self) -> None:
        for proc in self.worker_replicas:
            await self.wait_poller(proc.pid)
        for i, (proc, url) in enumerate(
            zip(self.api_replicas, self.api_urls[1:], strict=True), start=2
        ):
            await self.wait_serving(url, proc, f"serve-{i}.log")

    async def wait_serving(
        self, url: str, proc: subprocess.Popen[bytes], log_name: str, timeout: float = 60
    ) -> None:
        """Until the API process at ``url`` answers ``/version``."""
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(base_url=url, timeout=5.0) as http:
            while True:
                try:
                    if (await http.get("/version")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"API did not start: see {self.dir / log_name}")
                await asyncio.sleep(0.1)

    async def stop_api(self, kill: bool = False) -> None:
        """Take the relay away; ``kill`` sends SIGKILL to the subprocess."""
        if self.api_proc is not None:
            _end(self.api_proc, kill)
            self.api_proc = None
        elif self._api_server is not None:
            await self._api_server.stop()

    async def start_worker(self) -> None:
        if self.options.processes:
            self.worker_proc = self._spawn("worker")
            await self.wait_poller(self.worker_proc.pid)
            return
        assert self._engine is not None
        self._mdm = NanoMdmClient(self.sim.url, SIM_KEY)
        services = Services.create(self.client, self._engine, self.queue, load_master_key(self.dir))
        self._worker = worker_module.build_worker(services, self._mdm, **self.options.worker_tuning)
        self._worker_task = asyncio.create_task(self._worker.run())

    async def stop_worker(self, kill: bool = False) -> None:
        if self.worker_proc is not None:
            _end(self.worker_proc, kill)
            self.worker_proc = None
        if self._worker is not None and self._worker_task is not None:
            await self._worker.shutdown()
            await self._worker_task
            self._worker = None
            self._worker_task = None
        if self._mdm is not None:
            await self._mdm.aclose()
            self._mdm = None

    async def kill_temporal(self) -> None:
        self.temporal.stop(kill=True)

    async def restart_temporal(self) -> None:
        """Same SQLite file, same port: clients must find it again by themselves."""
        self.temporal.start()
        await self.temporal.wait_ready_async()

    async def wait_poller(self, pid: int, timeout: float = 60) -> None:
        """Until the worker process ``pid`` polls the workflow task queue."""
        request = DescribeTaskQueueRequest(
            namespace=self.temporal.namespace,
            task_queue=TaskQueue(name=self.queue),
            task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            resp = await self.client.workflow_service.describe_task_queue(request)
            if any(p.identity.startswith(f"{pid}@") for p in resp.pollers):
                return
            await asyncio.sleep(0.1)
        raise TimeoutError(f"worker {pid} is not polling: see {self.dir / 'worker.log'}")

    # ---- devices and runs ----------------------------------------------------------------

    async def enroll(self, count: int) -> list[str]:
        """Enroll devices without their check-in webhooks (benchmarks measure those apart)."""
        self.fleet.set_faults(drop_rate=1.0)
        try:
            return await self.fleet.enroll(count)
        finally:
            self.fleet.set_faults(drop_rate=0.0)

    async def start_runs(self, ids: Sequence[str], workflow: str = DEVINFOLOG) -> str:
        """One multi-ID start through the API (JSON body); returns the instance ID."""
        resp = await self.http.post(f"/v1/workflow/{workflow}/start", json={"ids": list(ids)})
        resp.raise_for_status()
        body: dict[str, Any] = resp.json()
        if body["refused"]:
            raise RuntimeError(f"start refused: {body['refused']}")
        return str(body["instance_id"])

    async def start_direct(
        self,
        ids: Sequence[str],
        workflow: str = DEVINFOLOG,
        *,
        repush_after_seconds: list[float] | None = None,
        step_timeout_seconds: float | None = None,
    ) -> str:
        """Start through the starter itself, with what the HTTP API does not take (the
        re-push schedule); returns the instance ID."""
        assert self._engine is not None
        result = await start_workflow(
            self.client,
            self.queue,
            workflow,
            list(ids),
            step_timeout=step_timeout_seconds,
            holds=HoldStore(self._engine),
            repush_after=repush_after_seconds,
        )
        if result.refused:
            raise RuntimeError(f"start refused: {result.refused}")
        return result.instance_id

    async def count(self, query: str) -> int:
        return (await self.client.count_workflows(query)).count

    async def wait_count(self, query: str, total: int, timeout: float = 600) -> None:
        """Poll visibility (every 0.2 s) until ``query`` matches ``total`` runs."""
        deadline = time.monotonic() + timeout
        while (found := await self.count(query)) < total:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{found}/{total} runs match {query!r} after {timeout}s")
            await asyncio.sleep(0.2)

    async def wait_closed(
        self, instance: str, devices: int, timeout: float = 600
    ) -> list[dict[str, Any]]:
        """Until every device of the instance has ended: the closed fleet runs' results
        count ``devices`` devices (a fleet run ends when its last device does). Returns
        those results (``FleetResult`` documents)."""
        query = f"{sa.INSTANCE_ID.name}='{instance}' AND ExecutionStatus!='Running'"
        deadline = time.monotonic() + timeout
        seen: dict[str, dict[str, Any]] = {}
        while True:
            async for wf in self.client.list_workflows(query):
                if wf.id not in seen:
                    seen[wf.id] = await self.fleet_result(wf)
            ended = sum(int(r["devices"]) for r in seen.values())
            if ended >= devices:
                return list(seen.values())
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{ended}/{devices} devices of instance {instance} ended after {timeout}s"
                )
            await asyncio.sleep(0.2)

    async def fleet_result(self, wf: WorkflowExecution) -> dict[str, Any]:
        """A closed fleet run's result; a one-device run that failed in Temporal counts as
        its one device failed."""
        handle = self.client.get_workflow_handle(wf.id, run_id=wf.run_id)
        try:
            return await run_result(handle)
        except WorkflowFailureError as exc:
            eid = wf.typed_search_attributes.get(sa.ENROLLMENT_ID)
            if eid is None:
                raise
            return {
                "status": "failed",
                "message": str(exc.cause),
                "enrollment_id": eid,
                "devices": 1,
                "by_status": {"failed": 1},
            }

    async def runs(self, instance: str) -> list[WorkflowExecution]:
        """The instance's fleet runs (one per chunk)."""
        query = f"{sa.INSTANCE_ID.name}='{instance}'"
        return [wf async for wf in self.client.list_workflows(query)]

    async def device_states(self, instance: str) -> dict[str, dict[str, Any]]:
        """Every device's ``RunState`` document, by enrollment ID, read page by page from
        each fleet run of the instance (running or closed)."""
        out: dict[str, dict[str, Any]] = {}
        for wf in await self.runs(instance):
            handle = self.client.get_workflow_handle(wf.id)
            after: str | None = None
            while True:
                page = dict(await handle.query("states", args=[after, STATES_PAGE]))
                for state in page["states"]:
                    out[str(state["enrollment_id"])] = {**dict(state), "workflow_id": wf.id}
                after = page.get("next_after")
                if not after:
                    break
        return out

    async def device_state(self, instance: str, eid: str) -> dict[str, Any]:
        """One device's ``RunState`` from the fleet run of the instance that holds it."""
        for wf in await self.runs(instance):
            handle = self.client.get_workflow_handle(wf.id)
            try:
                state = dict(await handle.query("state", eid))
            except WorkflowQueryFailedError:  # not a device of this chunk
                continue
            return {**state, "workflow_id": wf.id}
        raise KeyError(f"{eid} is in no fleet run of instance {instance}")

    async def results(
        self, ids: Sequence[str], workflow: str = DEVINFOLOG, timeout: float = 120
    ) -> dict[str, Any]:
        """Results of one-device runs found by enrollment ID (runs started for a single
        device, by a start or an event subscription), waiting for each to close."""

        async def one(eid: str) -> dict[str, Any]:
            query = (
                f"{sa.ENROLLMENT_ID.name}='{eid}' AND {sa.WORKFLOW_NAME.name}='{workflow}'"
            )
            deadline = time.monotonic() + timeout
            while True:
                found = [wf async for wf in self.client.list_workflows(query)]
                if found:
                    return await self.fleet_result(found[0])
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no {workflow} run for {eid} after {timeout}s")
                await asyncio.sleep(0.2)

        values = await asyncio.gather(*(one(e) for e in ids))
        return dict(zip(ids, values, strict=True))


def completed(results: Sequence[dict[str, Any]]) -> int:
    """Completed devices, from fleet runs' results."""
    return sum(int(dict(r.get("by_status") or {}).get("completed", 0)) for r in results)


def devices(results: Sequence[dict[str, Any]]) -> int:
    return sum(int(r["devices"]) for r in results)


def _end(proc: subprocess.Popen[bytes], kill: bool) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
