"""The full stack in one process, on real loopback HTTP: API + relay, simulator, worker.

Module-scoped so each test module gets its own task queue, database and fleet.
"""

from __future__ import annotations

import asyncio
import uuid
import zlib
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from temporalio.client import Client, WorkflowHandle

from activities.mdm_server import make_client
from bench.servers import RestartableServer
from escrow.sealing import load_master_key
from mdmflow.policy import PolicyHolder
from mdmflow.services import Services
from mdmflow.temporal_calls.runs import run_result
from mdmflow.temporal_calls.starts import chunk_size_from_env
from mdmflow.temporal_calls.visibility import quote
from mdmflow.temporal_server import DevServer
from protocol import routing
from relay.webhook_auth import WebhookAuth
from simulator.app import create_app as create_sim_app
from simulator.fleet import Fleet, FleetConfig
from starter.api import create_app
from store.db import open_engine
from worker import build_worker
from workflows import search_attributes as sa

API_KEY = "e2e-api-key"
HMAC_KEY = "e2e-hmac-key"
SIM_KEY = "e2e-sim-key"
INVENTORY = "io.micromdm.wf.inventory.v1"


@dataclass
class E2E:
    api: httpx.AsyncClient
    client: Client
    fleet: Fleet
    sim_url: str
    queue: str
    store_url: str
    temporal: DevServer
    services: Services
    sim: httpx.AsyncClient
    var_dir: Path
    # (workflow, enrollment) -> the fleet run this helper's starts put it in
    started: dict[tuple[str, str], str] = field(default_factory=dict)
    # API clients of users made by as_role, by role
    users: dict[str, httpx.AsyncClient] = field(default_factory=dict)

    async def as_role(self, role: str) -> httpx.AsyncClient:
        """An API client of a user with ``role`` (made once per stack)."""
        if role not in self.users:
            name = f"{role}-e2e"
            key = await self.services.users.add(name, role, created_by="e2e")
            self.users[role] = httpx.AsyncClient(
                base_url=str(self.api.base_url), auth=(name, key), timeout=30
            )
        return self.users[role]

    async def enroll(self, count: int) -> list[str]:
        """Enroll devices and let their check-in webhooks reach the relay first."""
        ids = await self.fleet.enroll(count)
        await self.fleet.wait_idle()
        return ids

    async def start(self, workflow: str, *ids: str) -> dict[str, Any]:
        resp = await self.api.post(
            f"/v1/workflow/{workflow}/start", params=[("id", i) for i in ids]
        )
        assert resp.status_code == 200, resp.text
        body: dict[str, Any] = resp.json()
        self.note_started(workflow, body, ids)
        return body

    def note_started(self, workflow: str, body: dict[str, Any], ids: Sequence[str]) -> None:
        """Remember which fleet run (chunk) a start put each of ``ids`` in."""
        size = chunk_size_from_env()
        for position, eid in enumerate(i for i in dict.fromkeys(ids) if i in body["started"]):
            run = routing.fleet_workflow_id(workflow, body["instance_id"], position // size)
            self.started[(workflow, eid)] = run

    async def run_of(self, workflow: str, eid: str, timeout: float = 30) -> str:
        """The workflow ID of the latest run of ``workflow`` that drove ``eid``.

        The store's hold names it while it runs; a one-device fleet run is also found by
        its enrollment search attribute once it has ended.
        """
        query = (
            f"{sa.WORKFLOW_NAME.name} = {quote(workflow)} "
            f"AND {sa.ENROLLMENT_ID.name} = {quote(eid)}"
        )
        if (workflow, eid) in self.started:
            return self.started[(workflow, eid)]
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            for hold in await self.services.holds.for_enrollment(eid, user_channels=False):
                if hold.workflow_name == workflow:
                    return hold.workflow_id
            async for execution in self.client.list_workflows(query, limit=1):
                return execution.id
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"no run of {workflow} for {eid}")
            await asyncio.sleep(0.1)

    async def result(self, workflow: str, eid: str, timeout: float = 60) -> dict[str, Any]:
        """The device's outcome: its own result in a one-device run, its state in a chunk."""
        handle = self.client.get_workflow_handle(await self.run_of(workflow, eid))
        result = await ended(handle, timeout)
        if result.get("devices", 1) == 1:
            return result
        state = await handle.query("state", eid)
        return {k: state[k] for k in ("status", "message", "enrollment_id", "instance_id")}

    async def state(self, workflow: str, eid: str) -> dict[str, Any]:
        resp = await self.api.get(
            "/v1/runs/state",
            params={"workflow_id": await self.run_of(workflow, eid), "id": eid},
        )
        return dict(resp.json())


async def ended(handle: WorkflowHandle[Any, Any], timeout: float = 60) -> dict[str, Any]:
    """A fleet run's result however it ended (see ``run_result``), waited for at most
    ``timeout`` seconds."""
    return await asyncio.wait_for(run_result(handle), timeout)


WEBHOOK_USER, WEBHOOK_SECRET = "micromdm", "e2e-webhook-secret"


@asynccontextmanager
async def e2e_stack(
    dev_client: Client,
    dev_server: DevServer,
    tmp_path_factory: pytest.TempPathFactory,
    seed_name: str,
    kind: str = "nanomdm",
    policy: PolicyHolder | None = None,
) -> AsyncIterator[E2E]:
    """The stack against a simulated NanoMDM (HMAC-signed webhooks) or MicroMDM.

    In MicroMDM mode the simulator behaves like MicroMDM v1.13 and, unable to sign,
    proves its webhooks with Basic credentials in the webhook URL.
    """
    store_url = f"sqlite:///{tmp_path_factory.mktemp('e2e') / 'mdmflow.db'}"
    engine = await open_engine(store_url)
    queue = f"e2e-{uuid.uuid4()}"
    var_dir = tmp_path_factory.mktemp("var")
    services = Services.create(dev_client, engine, queue, load_master_key(var_dir), policy)
    micromdm = kind == "micromdm"
    auth = (
        WebhookAuth(basic=(WEBHOOK_USER, WEBHOOK_SECRET))
        if micromdm
        else WebhookAuth(hmac_key=HMAC_KEY)
    )
    app = create_app(services, API_KEY, auth)
    api_server = RestartableServer(app)
    hook = f"{api_server.url}/webhook"
    if micromdm:
        hook = hook.replace("http://", f"http://{WEBHOOK_USER}:{WEBHOOK_SECRET}@")
    fleet = Fleet(
        FleetConfig(
            webhook_url=hook,
            webhook_hmac_key=None if micromdm else HMAC_KEY,
            webhook_format="micromdm" if micromdm else "nanomdm",
            api_key=SIM_KEY,
            connect_latency=0.02,
            # distinct devices per test module: they share one Temporal server
            seed=zlib.crc32(seed_name.encode()),
        )
    )
    await fleet.start()
    sim_server = RestartableServer(create_sim_app(fleet))
    mdm = make_client(kind, sim_server.url, SIM_KEY, addresses=services.register.mdm_address)
    async with api_server, sim_server:
        worker = build_worker(services, mdm)
        async with (
            worker,
            httpx.AsyncClient(
                base_url=api_server.url, auth=("nanocmd", API_KEY), timeout=30
            ) as api,
            httpx.AsyncClient(base_url=sim_server.url, auth=(kind, SIM_KEY)) as sim,
        ):
            stack = E2E(
                api,
                dev_client,
                fleet,
                sim_server.url,
                queue,
                store_url,
                dev_server,
                services,
                sim,
                var_dir,
            )
            try:
                yield stack
            finally:
                for user_client in stack.users.values():
                    await user_client.aclose()
    await fleet.stop()
    await mdm.aclose()
    await engine.dispose()


@pytest.fixture(scope="module")
async def e2e(
    dev_server: DevServer,
    dev_client: Client,
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> AsyncIterator[E2E]:
    async with e2e_stack(
        dev_client, dev_server, tmp_path_factory, request.module.__name__
    ) as stack:
        yield stack


@pytest.fixture(scope="module")
async def e2e_micromdm(
    dev_server: DevServer,
    dev_client: Client,
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> AsyncIterator[E2E]:
    async with e2e_stack(
        dev_client, dev_server, tmp_path_factory, request.module.__name__ + "/micromdm", "micromdm"
    ) as stack:
        yield stack
