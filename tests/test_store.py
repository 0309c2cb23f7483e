"""The store on both supported databases: a SQLite file and PostgreSQL (127.0.0.1:5432)."""

from __future__ import annotations

import asyncio

from sqlalchemy import text

from store.db import SCHEMA_VERSION, normalise_url, open_engine
from store.inventory import InventoryStore


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


async def test_processes_opening_a_new_database_at_once_all_succeed(db_url: str) -> None:
    """The API and the worker start together on one fresh database: neither may crash."""
    engines = await asyncio.gather(*(open_engine(db_url) for _ in range(6)))
    async with engines[0].connect() as conn:
        version = (await conn.execute(text("SELECT version FROM schema_version"))).all()
    assert version == [(SCHEMA_VERSION,)]
    await asyncio.gather(*(e.dispose() for e in engines))


def test_plain_urls_get_async_drivers() -> None:
    assert normalise_url("sqlite:///var/x.db") == "sqlite+aiosqlite:///var/x.db"
    assert normalise_url("postgresql://u@h/db") == "postgresql+asyncpg://u@h/db"
    assert normalise_url("postgres://u@h/db") == "postgresql+asyncpg://u@h/db"
