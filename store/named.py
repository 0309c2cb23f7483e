"""Insert-or-replace for tables keyed by a user-chosen name (profiles, command plans)."""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from store.db import Base

RowT = TypeVar("RowT", bound=Base)


async def put_named(
    sessions: async_sessionmaker[AsyncSession],
    model: type[RowT],
    name: str,
    values: dict[str, Any],
) -> None:
    """Create or update the row ``name``.

    Two first PUTs of one name can race to insert on PostgreSQL; the loser's
    IntegrityError is answered by trying again, which then finds the row and updates it.
    """
    for attempt in range(2):
        try:
            async with sessions() as session, session.begin():
                row = await session.get(model, name, with_for_update=True)
                if row is None:
                    row = model(name=name)
                    session.add(row)
                for key, value in values.items():
                    setattr(row, key, value)
            return
        except IntegrityError:
            if attempt:
                raise
