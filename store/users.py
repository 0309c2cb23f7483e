"""API users: a name, a role and a key the store keeps only as a slow hash.

Keys are random (``secrets.token_urlsafe(32)``) and shown once, when made. The stored
form is scrypt with its parameters written beside the salt and hash, so the cost can be
raised later without breaking keys already issued. Because scrypt costs tens of
milliseconds, a process remembers for a short while which (name, key, stored hash)
it has verified; the stored hash and role are still read on every authentication, so a
removed user, a rotated key or a new role counts on the next request in every process.
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import functools
import hashlib
import hmac
import re
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import DateTime, String, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.orm import Mapped, mapped_column

from store.db import Base, iso_utc, transaction

ROLES = ("viewer", "operator", "approver", "admin", "escrow")
Role = Literal["viewer", "operator", "approver", "admin", "escrow"]

NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
# The NanoCMD-compatible user is configured outside this table.
RESERVED_NAMES = frozenset({"nanocmd"})

SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
_SALT_BYTES = 16
_HASH_BYTES = 32
# Longer than any key this module issues; refused before scrypt spends time on it.
_MAX_KEY_CHARS = 512
_CREATED_BY_CHARS = 255

CACHE_TTL = 30.0
CACHE_SIZE = 1024


class UserRow(Base):
    __tablename__ = "users"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    role: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_by: Mapped[str] = mapped_column(String(_CREATED_BY_CHARS), default="")


@dataclass(frozen=True)
class User:
    name: str
    role: str


class UserExists(Exception):
    """A user of this name is already there; its key stays as it was."""

    def __init__(self, name: str) -> None:
        super().__init__(f"user {name!r} already exists")
        self.name = name


def check_name(name: str) -> None:
    """Refuse a name the table could not hold, or the reserved NanoCMD user."""
    if name in RESERVED_NAMES:
        raise ValueError(f"user name {name!r} is reserved: that user is configured elsewhere")
    if not NAME_PATTERN.fullmatch(name):
        raise ValueError(
            f"bad user name {name[:80]!r}: 1-64 of a-z 0-9 . _ -, starting with a letter or digit"
        )


def check_role(role: str) -> None:
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}: one of {', '.join(ROLES)}")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _scrypt(key: str, salt: bytes, n: int, r: int, p: int, length: int) -> bytes:
    # room for the parameters a stored hash names (OpenSSL's default cap is 32 MiB)
    maxmem = 2 * 128 * r * (n + p) + (1 << 20)
    return hashlib.scrypt(
        key.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=maxmem, dklen=length
    )


def hash_key(key: str) -> str:
    """``scrypt$N$r$p$<salt b64>$<hash b64>``: self-describing, so parameters can change."""
    salt = secrets.token_bytes(_SALT_BYTES)
    digest = _scrypt(key, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P, _HASH_BYTES)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def verify_key(key: str, encoded: str) -> bool:
    """Whether ``key`` hashes to ``encoded``; a malformed stored hash matches nothing."""
    try:
        scheme, n, r, p, salt, digest = encoded.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest, validate=True)
        actual = _scrypt(
            key, base64.b64decode(salt, validate=True), int(n), int(r), int(p), len(expected)
        )
    except ValueError:  # wrong field count, bad base64 or numbers, parameters scrypt refuses
        return False
    return hmac.compare_digest(actual, expected)


@functools.cache
def _decoy_hash() -> str:
    return hash_key(secrets.token_urlsafe(32))


def _verify_decoy(key: str) -> None:
    """Spend what verifying a known user costs, so timing does not tell who exists."""
    verify_key(key, _decoy_hash())


class UserStore:
    def __init__(
        self, engine: AsyncEngine, *, cache_ttl: float = CACHE_TTL, cache_size: int = CACHE_SIZE
    ) -> None:
        self._engine = engine
        self._dialect = engine.dialect.name
        if self._dialect not in ("sqlite", "postgresql"):
            raise ValueError(f"users need SQLite or PostgreSQL, not {self._dialect}")
        self._ttl = cache_ttl
        self._size = cache_size
        # SHA-256 of (name, key, stored hash) -> monotonic expiry; successes only
        self._verified: OrderedDict[bytes, float] = OrderedDict()

    async def add(
        self,
        name: str,
        role: str,
        created_by: str = "",
        conn: AsyncConnection | None = None,
    ) -> str:
        """Create a user and return its key: the only time the key is seen.

        The insert ignores a conflict rather than failing on it, so a duplicate leaves
        the caller's transaction usable (PostgreSQL aborts one on an error).
        """
        check_name(name)
        check_role(role)
        if len(created_by) > _CREATED_BY_CHARS:
            raise ValueError(f"created_by longer than {_CREATED_BY_CHARS} characters")
        key = secrets.token_urlsafe(32)
        key_hash = await asyncio.to_thread(hash_key, key)
        dialect: Any = postgresql if self._dialect == "postgresql" else sqlite
        statement = (
            dialect.insert(UserRow)
            .values(
                name=name,
                role=role,
                key_hash=key_hash,
                created_at=datetime.now(UTC),
                created_by=created_by,
            )
            .on_conflict_do_nothing(index_elements=["name"])
        )
        async with transaction(self._engine, conn) as tx:
            result = await tx.execute(statement)
        if result.rowcount != 1:
            raise UserExists(name)
        return key

    async def remove(self, name: str, conn: AsyncConnection | None = None) -> bool:
        check_name(name)
        async with transaction(self._engine, conn) as tx:
            result = await tx.execute(delete(UserRow).where(UserRow.name == name))
        return bool(result.rowcount)

    async def set_role(self, name: str, role: str, conn: AsyncConnection | None = None) -> bool:
        check_name(name)
        check_role(role)
        async with transaction(self._engine, conn) as tx:
            result = await tx.execute(update(UserRow).where(UserRow.name == name).values(role=role))
        return bool(result.rowcount)

    async def new_key(self, name: str, conn: AsyncConnection | None = None) -> str | None:
        """Replace the user's key (the old one stops working at once); None if no user."""
        check_name(name)
        key = secrets.token_urlsafe(32)
        key_hash = await asyncio.to_thread(hash_key, key)
        async with transaction(self._engine, conn) as tx:
            result = await tx.execute(
                update(UserRow).where(UserRow.name == name).values(key_hash=key_hash)
            )
        return key if result.rowcount else None

    async def get(self, name: str) -> User | None:
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(select(UserRow.name, UserRow.role).where(UserRow.name == name))
            ).first()
        return None if row is None else User(row.name, row.role)

    async def authenticate(self, name: str, key: str) -> User | None:
        """The user this key belongs to, with its current role; None otherwise."""
        if name in RESERVED_NAMES or not NAME_PATTERN.fullmatch(name):
            return None
        if not key or len(key) > _MAX_KEY_CHARS:
            return None
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    select(UserRow.role, UserRow.key_hash).where(UserRow.name == name)
                )
            ).first()
        if row is None:
            await asyncio.to_thread(_verify_decoy, key)
            return None
        token = hashlib.sha256(
            b"\0".join(part.encode("utf-8") for part in (name, key, row.key_hash))
        ).digest()
        if self._cached(token):
            return User(name, row.role)
        if not await asyncio.to_thread(verify_key, key, row.key_hash):
            return None
        self._remember(token)
        return User(name, row.role)

    def _cached(self, token: bytes) -> bool:
        expiry = self._verified.get(token)
        if expiry is None:
            return False
        if expiry <= time.monotonic():
            del self._verified[token]
            return False
        return True

    def _remember(self, token: bytes) -> None:
        if self._ttl <= 0 or self._size <= 0:
            return
        self._verified[token] = time.monotonic() + self._ttl
        self._verified.move_to_end(token)
        while len(self._verified) > self._size:
            self._verified.popitem(last=False)  # the oldest verification

    async def list(self) -> builtins.list[dict[str, str]]:
        """Every user by name: name, role, created_at (ISO 8601 UTC), created_by; no hashes."""
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                select(UserRow.name, UserRow.role, UserRow.created_at, UserRow.created_by).order_by(
                    UserRow.name
                )
            )
            return [
                {
                    "name": row.name,
                    "role": row.role,
                    "created_at": iso_utc(row.created_at) or "",
                    "created_by": row.created_by,
                }
                for row in rows
            ]
