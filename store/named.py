"""Insert-or-replace for tables keyed by a user-chosen name (profiles, command plans)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_sessionmaker

from store.db import Base

RowT = TypeVar("RowT", bound=Base)


@asynccontextmanager
async def session_in(
    sessions: async_sessionmaker[AsyncSession], conn: AsyncConnection | None
) -> AsyncIterator[AsyncSession]:
    """A session in its own transaction, or inside the caller's open one (``conn``: the
    caller commits, e.g. with the audit row of the change)."""
    if conn is None:
        async with sessions() as session, session.begin():
            yield session
        return
    async with AsyncSession(bind=conn, expire_on_commit=False) as session:
        yield session
        await session.flush()


async def put_named(
    sessions: async_sessionmaker[AsyncSession],
    model: type[RowT],
    name: str,
    values: dict[str, Any],
    conn: AsyncConnection | None = None,
) -> None:
    """Create or update the row ``name``.

    Two first PUTs of one name can race to insert on PostgreSQL; the loser's
    IntegrityError is answered by trying again, which then finds the row and updates it.
    Inside the caller's transaction (``conn``) there is no second try: the caller's
    transaction fails and nothing of it commits.
    """
    for attempt in range(1 if conn is not None else 2):
        try:
            async with session_in(sessions, conn) as session:
                row = await session.get(model, name, with_for_update=True)
                if row is None:
                    row = model(name=name)
                    session.add(row)
                for key, value in values.items():
                    setattr(row, key, value)
            return
        except IntegrityError:
            if attempt or conn is not None:
                raise
