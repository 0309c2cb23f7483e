"""API users on SQLite and PostgreSQL: hashed keys, and changes every process sees at once."""

from __future__ import annotations

import base64
import hashlib
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from store.db import open_engine
from store.users import ROLES, User, UserExists, UserStore, verify_key


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    engine = await open_engine(db_url)
    yield engine
    await engine.dispose()


@pytest.fixture
async def other_engine(db_url: str, engine: AsyncEngine) -> AsyncIterator[AsyncEngine]:
    """A second engine on the same database: another API process."""
    other = await open_engine(db_url)
    yield other
    await other.dispose()


@pytest.fixture
def users(engine: AsyncEngine) -> UserStore:
    return UserStore(engine)


async def stored_hash(engine: AsyncEngine, name: str) -> str:
    async with engine.connect() as conn:
        value = await conn.scalar(text("SELECT key_hash FROM users WHERE name = :n"), {"n": name})
    assert isinstance(value, str)
    return value


async def test_a_new_user_authenticates_with_the_key_it_was_given(users: UserStore) -> None:
    key = await users.add("alice", "operator", created_by="root")
    assert len(key) >= 43  # 32 random bytes, URL-safe base64
    assert await users.authenticate("alice", key) == User("alice", "operator")
    assert await users.get("alice") == User("alice", "operator")
    assert await users.get("bob") is None
    [listed] = await users.list()
    assert set(listed) == {"name", "role", "created_at", "created_by"}
    assert (listed["name"], listed["role"], listed["created_by"]) == ("alice", "operator", "root")
    assert listed["created_at"].endswith("+00:00")
    # every role can be given
    for role in ROLES:
        await users.add(f"u-{role}", role)
    assert {u["name"]: u["role"] for u in await users.list()}["u-escrow"] == "escrow"


async def test_wrong_keys_and_unknown_users_are_refused(users: UserStore) -> None:
    alice = await users.add("alice", "admin")
    bob = await users.add("bob", "viewer")
    assert alice != bob
    assert await users.authenticate("alice", bob) is None
    assert await users.authenticate("alice", alice[:-1]) is None
    assert await users.authenticate("alice", "") is None
    assert await users.authenticate("carol", alice) is None
    assert await users.authenticate("nanocmd", alice) is None
    assert await users.authenticate("Alice", alice) is None
    # a success cached for one key lets no other key through
    assert await users.authenticate("alice", alice) == User("alice", "admin")
    assert await users.authenticate("alice", bob) is None
    assert await users.authenticate("bob", alice) is None


async def test_a_duplicate_name_is_refused_and_the_first_key_keeps_working(
    users: UserStore,
) -> None:
    key = await users.add("alice", "viewer")
    with pytest.raises(UserExists, match="'alice' already exists"):
        await users.add("alice", "admin")
    assert await users.authenticate("alice", key) == User("alice", "viewer")


@pytest.mark.parametrize(
    ("name", "role", "message"),
    [
        ("nanocmd", "admin", "reserved"),
        ("", "viewer", "bad user name"),
        ("Alice", "viewer", "bad user name"),
        ("-alice", "viewer", "bad user name"),
        ("al ice", "viewer", "bad user name"),
        ("alice\n", "viewer", "bad user name"),
        ("a" * 65, "viewer", "bad user name"),
        ("alice", "root", "unknown role 'root'"),
    ],
)
async def test_reserved_and_bad_names_and_unknown_roles_are_refused(
    users: UserStore, name: str, role: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        await users.add(name, role)
    assert await users.list() == []


async def test_names_at_the_limits_are_accepted(users: UserStore) -> None:
    for name in ("a" * 64, "0", "ops.team_1-x"):
        key = await users.add(name, "viewer")
        assert await users.authenticate(name, key) == User(name, "viewer")
    key = await users.add("nanocmd2", "viewer")  # only the exact name is reserved
    assert await users.authenticate("nanocmd2", key) is not None


async def test_the_key_is_never_stored_in_plain_text(
    users: UserStore, engine: AsyncEngine, db_url: str
) -> None:
    keys = [await users.add(f"user{i}", "operator") for i in range(3)]
    keys.append(await users.new_key("user0") or "")
    async with engine.connect() as conn:
        cells = [str(c) for row in await conn.execute(text("SELECT * FROM users")) for c in row]
    for key in keys:
        assert not any(key in cell for cell in cells)
    if db_url.startswith("sqlite"):
        path = Path(db_url.removeprefix("sqlite:///"))
        raw = b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))
        assert b"user0" in raw  # the scan does see the table's contents
        for key in keys:
            assert key.encode() not in raw


async def test_the_stored_hash_is_scrypt_with_its_parameters(
    users: UserStore, engine: AsyncEngine
) -> None:
    key = await users.add("alice", "viewer")
    await users.add("bob", "viewer")
    encoded = await stored_hash(engine, "alice")
    match = re.fullmatch(r"scrypt\$16384\$8\$1\$([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+)", encoded)
    assert match is not None, encoded
    salt, digest = (base64.b64decode(part) for part in match.groups())
    assert len(salt) == 16
    # recomputed independently from the fields: the format says all that is needed
    assert hashlib.scrypt(key.encode(), salt=salt, n=2**14, r=8, p=1, dklen=len(digest)) == digest
    assert verify_key(key, encoded)
    assert not verify_key(key + "x", encoded)
    assert not verify_key(key, "scrypt$16384$8$1$broken")
    assert not verify_key(key, encoded.replace("scrypt", "bcrypt", 1))
    # a random salt per user
    assert encoded.split("$")[4] != (await stored_hash(engine, "bob")).split("$")[4]


async def test_a_removed_user_fails_at_once_in_a_process_with_a_warm_cache(
    users: UserStore, other_engine: AsyncEngine
) -> None:
    key = await users.add("alice", "operator")
    assert await users.authenticate("alice", key) is not None
    assert await users.authenticate("alice", key) is not None  # from the cache
    assert await UserStore(other_engine).remove("alice")
    assert await users.authenticate("alice", key) is None
    assert await users.get("alice") is None
    assert not await users.remove("alice")


async def test_a_role_change_counts_on_the_next_request_in_every_process(
    users: UserStore, other_engine: AsyncEngine
) -> None:
    key = await users.add("alice", "viewer")
    assert await users.authenticate("alice", key) == User("alice", "viewer")
    assert await UserStore(other_engine).set_role("alice", "approver")
    assert await users.authenticate("alice", key) == User("alice", "approver")
    with pytest.raises(ValueError, match="unknown role"):
        await users.set_role("alice", "superuser")
    assert not await users.set_role("nobody", "admin")


async def test_a_new_key_replaces_the_old_one_in_every_process(
    users: UserStore, other_engine: AsyncEngine
) -> None:
    old = await users.add("alice", "admin")
    assert await users.authenticate("alice", old) is not None
    new = await UserStore(other_engine).new_key("alice")
    assert new is not None and new != old
    assert await users.authenticate("alice", old) is None
    assert await users.authenticate("alice", new) == User("alice", "admin")
    assert await users.new_key("nobody") is None


async def test_reserved_name_is_refused_by_every_change(users: UserStore) -> None:
    for change in (
        users.remove("nanocmd"),
        users.set_role("nanocmd", "admin"),
        users.new_key("nanocmd"),
    ):
        with pytest.raises(ValueError, match="reserved"):
            await change


async def test_cached_verifications_skip_scrypt_and_failures_are_not_cached(
    engine: AsyncEngine,
) -> None:
    cached, uncached = UserStore(engine), UserStore(engine, cache_ttl=0)
    key = await cached.add("alice", "viewer")

    async def seconds_for(store: UserStore, key: str, expected: User | None) -> float:
        start = time.perf_counter()
        for _ in range(10):
            assert await store.authenticate("alice", key) == expected
        return time.perf_counter() - start

    slow = await seconds_for(uncached, key, User("alice", "viewer"))
    fast = await seconds_for(cached, key, User("alice", "viewer"))
    assert fast * 3 < slow, (fast, slow)
    # a wrong key pays for scrypt every time
    failing = await seconds_for(cached, key[::-1], None)
    assert fast * 3 < failing, (fast, failing)


async def test_writes_join_the_callers_transaction(users: UserStore, engine: AsyncEngine) -> None:
    class Abandon(Exception):
        pass

    with pytest.raises(Abandon):
        async with engine.begin() as conn:
            await users.add("alice", "viewer", conn=conn)
            raise Abandon
    assert await users.get("alice") is None

    key = await users.add("bob", "viewer")
    async with engine.begin() as conn:
        # a duplicate leaves the transaction usable (PostgreSQL aborts one on an error)
        with pytest.raises(UserExists):
            await users.add("bob", "admin", conn=conn)
        assert await users.set_role("bob", "operator", conn=conn)
        carol = await users.add("carol", "escrow", created_by="bob", conn=conn)
    assert await users.authenticate("bob", key) == User("bob", "operator")
    assert await users.authenticate("carol", carol) == User("carol", "escrow")

    with pytest.raises(Abandon):
        async with engine.begin() as conn:
            assert await users.remove("bob", conn=conn)
            assert await users.new_key("carol", conn=conn) is not None
            raise Abandon
    assert await users.authenticate("carol", carol) is not None
    assert await users.get("bob") is not None
