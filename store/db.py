"""Database engine and schema: SQLite by default, PostgreSQL by URL.

Tables are created on start (``create_all`` only adds what is missing, so it survives
upgrades); ``schema_version`` records the layout for migrations that change tables.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Boolean, DateTime, Integer, MetaData, String, Text, event
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.pool import ConnectionPoolEntry

SCHEMA_VERSION = 2


class Base(DeclarativeBase):
    metadata = MetaData()


class SchemaVersion(Base):
    __tablename__ = "schema_version"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[int] = mapped_column(Integer)


class InventoryRow(Base):
    __tablename__ = "inventory"
    enrollment_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    values: Mapped[dict[str, object]] = mapped_column(JSON)
    modified: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class DeviceInfoLogRow(Base):
    __tablename__ = "devinfo_log"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    enrollment_id: Mapped[str] = mapped_column(String(255), index=True)
    command_uuid: Mapped[str] = mapped_column(String(127))
    query_responses: Mapped[dict[str, object]] = mapped_column(JSON)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class EventSubscriptionRow(Base):
    """NanoCMD's event subscription: start ``workflow`` when ``event`` happens."""

    __tablename__ = "event_subscriptions"
    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    event: Mapped[str] = mapped_column(String(64))
    workflow: Mapped[str] = mapped_column(String(255))
    context: Mapped[str | None] = mapped_column(Text, nullable=True)
    event_context: Mapped[str | None] = mapped_column(Text, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    last_error_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    starts: Mapped[int] = mapped_column(Integer, default=0)


class EventClaimRow(Base):
    """One row per (webhook event ID, subscription) handled: a duplicate finds it."""

    __tablename__ = "event_claims"
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class EnrollmentRow(Base):
    """What the relay learned from check-ins: who is enrolled, with which URL params."""

    __tablename__ = "enrollments"
    enrollment_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    enrollment_type: Mapped[str] = mapped_column(String(64), default="")
    enrolled: Mapped[bool] = mapped_column(Boolean, default=True)
    url_params: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    # TokenUpdates seen since the last Authenticate (Enrollment rule for senders
    # that do not send token_update_tally).
    token_updates_since_auth: Mapped[int] = mapped_column(Integer, default=0)
    last_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True))


def normalise_url(url: str) -> str:
    """Accept plain ``sqlite:///`` and ``postgresql://`` URLs; pick the async drivers."""
    if url.startswith("sqlite:///"):
        return "sqlite+aiosqlite:///" + url.removeprefix("sqlite:///")
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+asyncpg://" + url.split("://", 1)[1]
    return url


def _sqlite_pragmas(dbapi_conn: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=5000")
    cur.close()


async def open_engine(url: str) -> AsyncEngine:
    """Create the engine and make sure the schema exists."""
    engine = create_async_engine(normalise_url(url), pool_pre_ping=True)
    if engine.dialect.name == "sqlite":
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    async with async_sessionmaker(engine)() as session, session.begin():
        row = await session.get(SchemaVersion, 1)
        if row is None:
            session.add(SchemaVersion(id=1, version=SCHEMA_VERSION))
    return engine
