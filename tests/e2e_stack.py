"""The full stack in one process, on real loopback HTTP: API + relay, simulator, worker.

Module-scoped so each test module gets its own task queue, database and fleet.
"""

from __future__ import annotations

import asyncio
import uuid
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from temporalio.client import Client

from activities.mdm_server import NanoMdmClient
from bench.servers import RestartableServer
from escrow.sealing import load_master_key
from mdmflow.temporal_server import DevServer
from simulator.app import create_app as create_sim_app
from simulator.fleet import Fleet, FleetConfig
from starter.api import create_app
from starter.deps import Services
from store.db import open_engine
from worker import build_worker

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
        return body

    async def result(self, workflow: str, eid: str, timeout: float = 60) -> dict[str, Any]:
        handle = self.client.get_workflow_handle(f"{workflow}/{eid}")
        return dict(await asyncio.wait_for(handle.result(), timeout))

    async def state(self, workflow: str, eid: str) -> dict[str, Any]:
        resp = await self.api.get("/v1/runs/state", params={"workflow_id": f"{workflow}/{eid}"})
        return dict(resp.json())


@pytest.fixture(scope="module")
async def e2e(
    dev_server: DevServer,
    dev_client: Client,
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> AsyncIterator[E2E]:
    store_url = f"sqlite:///{tmp_path_factory.mktemp('e2e') / 'mdmflow.db'}"
    engine = await open_engine(store_url)
    queue = f"e2e-{uuid.uuid4()}"
    var_dir = tmp_path_factory.mktemp("var")
    services = Services.create(dev_client, engine, queue, load_master_key(var_dir))
    app = create_app(services, API_KEY, HMAC_KEY)
    api_server = RestartableServer(app)
    fleet = Fleet(
        FleetConfig(
            webhook_url=f"{api_server.url}/webhook",
            webhook_hmac_key=HMAC_KEY,
            api_key=SIM_KEY,
            connect_latency=0.02,
            # distinct devices per test module: they share one Temporal server
            seed=zlib.crc32(request.module.__name__.encode()),
        )
    )
    await fleet.start()
    sim_server = RestartableServer(create_sim_app(fleet))
    mdm = NanoMdmClient(sim_server.url, SIM_KEY)
    async with api_server, sim_server:
        worker = build_worker(services, mdm)
        async with (
            worker,
            httpx.AsyncClient(
                base_url=api_server.url, auth=("nanocmd", API_KEY), timeout=30
            ) as api,
            httpx.AsyncClient(base_url=sim_server.url, auth=("nanomdm", SIM_KEY)) as sim,
        ):
            yield E2E(
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
    await fleet.stop()
    await mdm.aclose()
    await engine.dispose()
