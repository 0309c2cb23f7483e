"""Database engine and schema: SQLite by default, PostgreSQL by URL.

Tables are created on start (``create_all`` only adds what is missing, so it survives
upgrades); ``schema_version`` records the layout for migrations that change tables.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    event,
    insert,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.pool import ConnectionPoolEntry

SCHEMA_VERSION = 5


def _add_column(table: str, column: str, sql_type: str) -> Callable[[Connection], None]:
    """A migration step adding a column unless it is there (SQLite has no IF NOT EXISTS)."""

    def step(conn: Connection) -> None:
        if column not in {c["name"] for c in inspect(conn).get_columns(table)}:
            conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {column} {sql_type}"))

    return step


# Steps that bring a database of version ``v - 1`` to ``v`` (idempotent: processes
# starting together may both run them): SQL text, or a function of the connection. A
# fresh database gets the current layout from the models and skips them.
MIGRATIONS: dict[int, tuple[str | Callable[[Connection], None], ...]] = {
    4: (
        "DELETE FROM devinfo_log WHERE id NOT IN "
        "(SELECT MIN(id) FROM devinfo_log GROUP BY enrollment_id, command_uuid)",
        "CREATE UNIQUE INDEX IF NOT EXISTS ux_devinfo_log_command "
        "ON devinfo_log (enrollment_id, command_uuid)",
        "DROP INDEX IF EXISTS ix_devinfo_log_enrollment_id",  # the new index leads with it
    ),
    5: (_add_column("enrollments", "mdm_address", "VARCHAR(255)"),),
}


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
    # one entry per command however often the write is retried (see MIGRATIONS[4]); it
    # also serves the per-enrollment look-ups
    __table_args__ = (
        Index("ux_devinfo_log_command", "enrollment_id", "command_uuid", unique=True),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    enrollment_id: Mapped[str] = mapped_column(String(255))
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
    # The ID MicroMDM keys this enrollment by (protocol.enrollment.micromdm_address).
    mdm_address: Mapped[str | None] = mapped_column(String(255), nullable=True)
    enrolled: Mapped[bool] = mapped_column(Boolean, default=True)
    url_params: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    # TokenUpdates seen since the last Authenticate (Enrollment rule for senders
    # that do not send token_update_tally).
    token_updates_since_auth: Mapped[int] = mapped_column(Integer, default=0)
    awaiting_configuration: Mapped[bool] = mapped_column(Boolean, default=False)
    last_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class InboxRow(Base):
    """A webhook the relay accepted while Temporal could not take it, until delivered.

    The ID gives arrival order; the forwarder delivers each enrollment's entries in it.
    """

    __tablename__ = "webhook_inbox"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    enrollment_id: Mapped[str] = mapped_column(String(255), index=True)
    event: Mapped[dict[str, object]] = mapped_column(JSON)
    received: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    # set when delivery kept failing for good; kept for an operator, no longer retried
    dead: Mapped[bool] = mapped_column(Boolean, default=False)


class LeaseRow(Base):
    """A named lease one process holds at a time (the inbox forwarder's)."""

    __tablename__ = "leases"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(128))
    until: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class RunHoldRow(Base):
    """One enrollment held by one run: the store, not Temporal, makes runs exclusive.

    The unique key refuses a second exclusive run (``hold_key`` "") of a workflow on an
    enrollment at once, across API processes; simultaneous runs hold with their instance
    ID as the key and coexist. Holds are looked up by enrollment (the relay: which runs
    wait for this device and its user channels) and by run (release, paging).
    """

    __tablename__ = "run_holds"
    __table_args__ = (
        Index("ux_run_holds_claim", "workflow_name", "enrollment_id", "hold_key", unique=True),
        # pattern ops: PostgreSQL serves the user-channel prefix look-up (LIKE 'X:%')
        # from this index under any collation, and equality too
        Index(
            "ix_run_holds_enrollment_id",
            "enrollment_id",
            postgresql_ops={"enrollment_id": "varchar_pattern_ops"},
        ),
        Index("ix_run_holds_workflow_id", "workflow_id", "enrollment_id"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    workflow_name: Mapped[str] = mapped_column(String(255))
    enrollment_id: Mapped[str] = mapped_column(String(255))
    hold_key: Mapped[str] = mapped_column(String(64), default="")
    workflow_id: Mapped[str] = mapped_column(String(512))
    instance_id: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class DeviceOutcomeRow(Base):
    """How a device's story in a fleet run ended, written when its hold goes back.

    Closed fleet runs answer "how did each device end" from here, without Temporal
    replaying a thousand-device history for a query, and a device's closed runs are found
    by its enrollment ID.
    """

    __tablename__ = "device_outcomes"
    __table_args__ = (
        Index("ux_device_outcomes_run", "workflow_id", "enrollment_id", unique=True),
        Index("ix_device_outcomes_enrollment", "enrollment_id", "finished_at"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    workflow_id: Mapped[str] = mapped_column(String(512))
    enrollment_id: Mapped[str] = mapped_column(String(255))
    workflow_name: Mapped[str] = mapped_column(String(255))
    instance_id: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    message: Mapped[str] = mapped_column(String(2000), default="")
    failure_type: Mapped[str | None] = mapped_column(String(32), nullable=True)
    finished_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ProfileRow(Base):
    """A stored configuration profile (NanoCMD's profile store), raw as uploaded."""

    __tablename__ = "profiles"
    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    identifier: Mapped[str] = mapped_column(String(255))
    uuid: Mapped[str] = mapped_column(String(255))
    raw: Mapped[bytes] = mapped_column(LargeBinary)
    signed: Mapped[bool] = mapped_column(Boolean, default=False)
    modified: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class CmdPlanRow(Base):
    """A named command plan: profiles, app manifests, DeviceConfigured."""

    __tablename__ = "cmdplans"
    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    plan: Mapped[dict[str, object]] = mapped_column(JSON)
    modified: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class EscrowKeyRow(Base):
    """The escrow keypair devices encrypt recovery keys to: made once, kept forever.

    The private key is stored encrypted with the secrets master key.
    """

    __tablename__ = "escrow_keys"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    certificate_pem: Mapped[str] = mapped_column(Text)
    private_key_sealed: Mapped[bytes] = mapped_column(LargeBinary)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class SecretRow(Base):
    """An escrowed secret (FileVault recovery key, lock PIN), sealed with AES-GCM."""

    __tablename__ = "secrets"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    enrollment_id: Mapped[str] = mapped_column(String(255), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    sealed: Mapped[bytes] = mapped_column(LargeBinary)
    source: Mapped[str] = mapped_column(String(512), default="")
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    superseded: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class SecretAccessRow(Base):
    """Every retrieval of a secret: who, when, which."""

    __tablename__ = "secret_access"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    secret_id: Mapped[int] = mapped_column(Integer, index=True)
    enrollment_id: Mapped[str] = mapped_column(String(255))
    kind: Mapped[str] = mapped_column(String(32))
    who: Mapped[str] = mapped_column(String(255))
    reason: Mapped[str] = mapped_column(Text, default="")
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


def iso_utc(value: datetime | None) -> str | None:
    """ISO 8601 in UTC; SQLite hands back naive datetimes for UTC columns."""
    if value is None:
        return None
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()


def normalise_url(url: str) -> str:
    """Accept plain ``sqlite:///`` and ``postgresql://`` URLs; pick the async drivers."""
    if url.startswith("sqlite:///"):
        return "sqlite+aiosqlite:///" + url.removeprefix("sqlite:///")
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+asyncpg://" + url.split("://", 1)[1]
    return url


def _sqlite_pragmas(dbapi_conn: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA busy_timeout=5000")  # first: switching to WAL may have to wait
    cur.execute("PRAGMA journal_mode=WAL")
    cur.close()


_SCHEMA_ATTEMPTS = 8


async def open_engine(url: str) -> AsyncEngine:
    """Create the engine and make sure the schema exists.

    The API and the worker usually start together on one fresh database; whichever
    loses the race to create a table sees "already exists" (or a duplicate key in
    PostgreSQL's catalogue) and simply tries again, finding the tables there.
    """
    url = normalise_url(url)
    # a SQLite file cannot drop a connection; a database server can
    engine = create_async_engine(url, pool_pre_ping=not url.startswith("sqlite"))
    if engine.dialect.name == "sqlite":
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    try:
        async with _schema_lock(engine):
            # a wrong URL, password or database fails here, at once, with the driver's
            # message (on SQLite the first connection also switches the file to WAL)
            async with engine.connect():
                pass
            for attempt in range(1, _SCHEMA_ATTEMPTS):
                try:
                    await _ensure_schema(engine)
                    return engine
                except DBAPIError:
                    await asyncio.sleep(random.uniform(0.05, 0.2) * attempt)
            await _ensure_schema(engine)
    except BaseException:
        await engine.dispose()
        raise
    return engine


@asynccontextmanager
async def transaction(
    engine: AsyncEngine, conn: AsyncConnection | None = None
) -> AsyncIterator[AsyncConnection]:
    """The caller's open transaction (``conn``: its audit row commits with the change),
    or a new one, committed on exit."""
    if conn is not None:
        yield conn
        return
    async with engine.begin() as own:
        yield own


@asynccontextmanager
async def _schema_lock(engine: AsyncEngine) -> AsyncIterator[None]:
    """SQLite: one process at a time creates or migrates the schema (a file lock beside
    the database). SQLite answers "database is locked" at once, whatever busy_timeout
    says, when two transactions that both read the schema then both want to write it;
    with a dozen tables, processes starting together could lose that race every time.
    PostgreSQL needs none: the retry above settles its races."""
    database = engine.url.database if engine.dialect.name == "sqlite" else None
    if not database or database == ":memory:":
        yield
        return
    fd = os.open(f"{database}.schema-lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        await asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _load_table_modules() -> None:
    """Modules that declare their own tables on ``Base`` (governance: users, audit,
    rate limits, emergency stop, approvals); imported here so every process creates them."""
    import store.audit
    import store.governance
    import store.ratelimits
    import store.users  # noqa: F401


async def _ensure_schema(engine: AsyncEngine) -> None:
    _load_table_modules()
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
        version_row = select(SchemaVersion.version).where(SchemaVersion.id == 1)
        version = (await conn.execute(version_row)).scalar()
        if version is None:
            await conn.execute(insert(SchemaVersion).values(id=1, version=SCHEMA_VERSION))
            return
        for target in range(version + 1, SCHEMA_VERSION + 1):
            for step in MIGRATIONS.get(target, ()):
                if isinstance(step, str):
                    await conn.execute(text(step))
                else:
                    await conn.run_sync(step)
        if version < SCHEMA_VERSION:
            await conn.execute(
                update(SchemaVersion).where(SchemaVersion.id == 1).values(version=SCHEMA_VERSION)
            )
