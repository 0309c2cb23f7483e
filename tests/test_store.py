"""The store on both supported databases: a SQLite file and PostgreSQL (127.0.0.1:5432)."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from sqlalchemy import inspect, text
from sqlalchemy.exc import DBAPIError

from store.db import SCHEMA_VERSION, normalise_url, open_engine
from store.events import EnrollmentRegister
from store.inventory import InventoryStore
from tests.conftest import PG_ADMIN


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
        indexes = await conn.run_sync(lambda c: inspect(c).get_indexes("devinfo_log"))
    assert version == [(SCHEMA_VERSION,)]
    assert [i["name"] for i in indexes] == ["ux_devinfo_log_command"]  # v3's is dropped
    await asyncio.gather(*(e.dispose() for e in engines))


def test_plain_urls_get_async_drivers() -> None:
    assert normalise_url("sqlite:///var/x.db") == "sqlite+aiosqlite:///var/x.db"
    assert normalise_url("postgresql://u@h/db") == "postgresql+asyncpg://u@h/db"
    assert normalise_url("postgres://u@h/db") == "postgresql+asyncpg://u@h/db"


async def test_a_retried_device_information_write_logs_once(db_url: str) -> None:
    engine = await open_engine(db_url)
    store = InventoryStore(engine)
    for _ in range(3):  # an activity runs at least once: the retry must change nothing
        await store.log_device_information("A", "u1", {"SerialNumber": "S1"})
    await store.log_device_information("A", "u2", {"SerialNumber": "S1"})
    await store.log_device_information("B", "u1", {"SerialNumber": "S2"})
    assert [e["command_uuid"] for e in await store.device_information_log("A")] == ["u2", "u1"]
    assert len(await store.device_information_log("B")) == 1
    await engine.dispose()


async def test_a_version_3_database_is_migrated_and_keeps_its_first_entries(db_url: str) -> None:
    engine = await open_engine(db_url)
    async with engine.begin() as conn:  # the v3 layout: no unique index, duplicates logged
        await conn.execute(text("DROP INDEX ux_devinfo_log_command"))
        await conn.execute(
            text("CREATE INDEX ix_devinfo_log_enrollment_id ON devinfo_log (enrollment_id)")
        )
        await conn.execute(text("UPDATE schema_version SET version = 3"))
        for serial in ("first", "again"):
            await conn.execute(
                text(
                    "INSERT INTO devinfo_log"
                    " (enrollment_id, command_uuid, query_responses, created)"
                    " VALUES ('A', 'u1', :q, CURRENT_TIMESTAMP)"
                ),
                {"q": json.dumps({"SerialNumber": serial})},
            )
    await engine.dispose()
    engines = await asyncio.gather(*(open_engine(db_url) for _ in range(3)))
    store = InventoryStore(engines[0])
    log = await store.device_information_log("A")
    assert [e["query_responses"]["SerialNumber"] for e in log] == ["first"]
    await store.log_device_information("A", "u1", {"SerialNumber": "later"})
    assert len(await store.device_information_log("A")) == 1
    async with engines[0].connect() as conn:
        version = (await conn.execute(text("SELECT version FROM schema_version"))).all()
    assert version == [(SCHEMA_VERSION,)]
    await asyncio.gather(*(e.dispose() for e in engines))


async def test_a_version_4_database_gains_the_micromdm_address_column(db_url: str) -> None:
    engine = await open_engine(db_url)
    async with engine.begin() as conn:  # the v4 layout: enrollments without mdm_address
        await conn.execute(text("ALTER TABLE enrollments DROP COLUMN mdm_address"))
        await conn.execute(text("UPDATE schema_version SET version = 4"))
    await engine.dispose()
    engines = await asyncio.gather(*(open_engine(db_url) for _ in range(3)))
    register = EnrollmentRegister(engines[0])
    await register.checkin("DEV:U-1", "User", "TokenUpdate", {}, None, "U-1")
    assert await register.mdm_address("DEV:U-1") == "U-1"
    await register.checkin("DEV:U-1", "User", "CheckOut", {}, None)  # keeps the address
    assert await register.mdm_address("DEV:U-1") == "U-1"
    assert await register.mdm_address("UNKNOWN") is None
    async with engines[0].connect() as conn:
        version = (await conn.execute(text("SELECT version FROM schema_version"))).all()
    assert version == [(SCHEMA_VERSION,)]
    await asyncio.gather(*(e.dispose() for e in engines))


async def test_a_database_that_cannot_be_reached_fails_at_once() -> None:
    """A wrong URL is reported in well under the schema-race retries' few seconds."""
    started = time.monotonic()
    with pytest.raises(DBAPIError, match="does not exist"):
        await open_engine(PG_ADMIN.rsplit("/", 1)[0] + "/mdmflow_no_such_database")
    assert time.monotonic() - started < 2
