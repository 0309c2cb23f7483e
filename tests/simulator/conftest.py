"""Fixtures: the simulator and a webhook receiver, both on real loopback HTTP."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import uvicorn
from sim_support import Receiver, Sim, SimFactory, start_server, stop_server

from simulator.app import create_app
from simulator.fleet import Fleet, FleetConfig


@pytest.fixture(scope="session")
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    rec = Receiver()
    server, task, url = await start_server(rec)
    yield rec, url
    await stop_server(server, task)


@pytest.fixture
async def make_sim(receiver: tuple[Receiver, str]) -> AsyncIterator[SimFactory]:
    rec, rec_url = receiver
    started: list[tuple[Sim, uvicorn.Server, asyncio.Task[None]]] = []

    async def factory(*, hook_status: int = 200, **cfg: Any) -> Sim:
        path = f"/status/{hook_status}/{uuid.uuid4().hex}"
        cfg.setdefault("webhook_url", rec_url + path)
        cfg.setdefault("connect_latency", 0.01)
        cfg.setdefault("webhook_concurrency", 4)
        fleet = Fleet(FleetConfig(**cfg))
        await fleet.start()
        server, task, url = await start_server(create_app(fleet))
        client = httpx.AsyncClient(base_url=url, auth=("nanomdm", fleet.config.api_key))
        sim = Sim(fleet, url, client, rec, path)
        started.append((sim, server, task))
        return sim

    yield factory
    for sim, server, task in started:
        await sim.client.aclose()
        await stop_server(server, task)
        await sim.fleet.stop()


@pytest.fixture
async def sim(make_sim: SimFactory) -> Sim:
    return await make_sim()
