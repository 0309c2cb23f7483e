"""Processes starting together on a fresh install must agree on one master key and one
escrow keypair: two different ones would leave secrets sealed that the other cannot open."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
from pathlib import Path

import pytest

from escrow.sealing import Sealer, SealError, load_master_key
from escrow.store import EscrowStore
from store.db import open_engine


def _load_key_in_child(var_dir: str, out: multiprocessing.Queue[bytes]) -> None:
    out.put(load_master_key(Path(var_dir)))


def test_processes_creating_the_master_key_at_once_get_the_same_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MDMFLOW_SECRETS_KEY", raising=False)
    ctx = multiprocessing.get_context("fork")
    out: multiprocessing.Queue[bytes] = ctx.Queue()
    procs = [ctx.Process(target=_load_key_in_child, args=(str(tmp_path), out)) for _ in range(8)]
    for p in procs:
        p.start()
    keys = {out.get(timeout=30) for _ in procs}
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    assert len(keys) == 1 and len(next(iter(keys))) == 32
    assert keys == {load_master_key(tmp_path)}
    assert os.stat(tmp_path / "secrets.key").st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["secrets.key"]  # no temporary left


def test_a_bad_explicit_master_key_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MDMFLOW_SECRETS_KEY", "c2hvcnQ=")
    with pytest.raises(SealError, match="32 bytes"):
        load_master_key(tmp_path)


async def test_stores_creating_the_escrow_keypair_at_once_share_one(db_url: str) -> None:
    engines = [await open_engine(db_url) for _ in range(4)]
    sealer = Sealer(bytes(range(32)))
    keys = await asyncio.gather(*(EscrowStore(e, sealer).key() for e in engines))
    assert len({k.certificate_der for k in keys}) == 1
    again = await EscrowStore(engines[0], sealer).key()  # as after a restart
    assert again.certificate_der == keys[0].certificate_der
    await asyncio.gather(*(e.dispose() for e in engines))
