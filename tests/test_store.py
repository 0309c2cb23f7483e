"""The store on both supported databases: a SQLite file and PostgreSQL (127.0.0.1:5432)."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from store.db import normalise_url, open_engine
from store.inventory import InventoryStore

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


async def test_inventory_merges_values_and_hides_secrets(db_url: str) -> None:
    engine = await open_engine(db_url)
    store = InventoryStore(engine)
    await store.store_values("A", {"serial_number": "S1", "model": "Mac16,10"}, "DeviceInformation")
    await store.store_values("A", {"fde_enabled": True, "prk": "SECRET"}, "SecurityInfo")
    await store.store_values("B", {"serial_number": "S2"}, "DeviceInformation")
    got = await store.retrieve(["A", "B", "missing"])
    assert set(got) == {"A", "B"}
    assert got["A"]["serial_number"] == "S1" and got["A"]["fde_enabled"] is True
    assert got["A"]["last_source"] == "SecurityInfo"
    assert "prk" not in got["A"]
    await engine.dispose()


async def test_schema_survives_a_restart_and_keeps_data(db_url: str) -> None:
    engine = await open_engine(db_url)
    await InventoryStore(engine).log_device_information("A", "u1", {"SerialNumber": "S1"})
    await engine.dispose()
    engine = await open_engine(db_url)  # create-on-start again: must not fail or wipe
    log = await InventoryStore(engine).device_information_log("A")
    assert [entry["command_uuid"] for entry in log] == ["u1"]
    await engine.dispose()


def test_plain_urls_get_async_drivers() -> None:
    assert normalise_url("sqlite:///var/x.db") == "sqlite+aiosqlite:///var/x.db"
    assert normalise_url("postgresql://u@h/db") == "postgresql+asyncpg://u@h/db"
    assert normalise_url("postgres://u@h/db") == "postgresql+asyncpg://u@h/db"
