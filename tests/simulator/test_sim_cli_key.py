"""``mdmflow sim list`` and friends find the simulator's API key the way a user expects:
``--api-key``, ``$MDMFLOW_SIM_API_KEY``, the key ``make run`` generated, the default."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sim_support import SimFactory

from simulator.cli import build_parser


async def sim_cli(*argv: str) -> int:
    args = build_parser().parse_args(["sim", *argv])
    code: int = await asyncio.to_thread(args.func, args)
    return code


@pytest.fixture
def var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A ``var/`` as ``make run`` leaves it, found through ``$MDMFLOW_VAR_DIR``."""
    monkeypatch.delenv("MDMFLOW_SIM_API_KEY", raising=False)
    monkeypatch.setenv("MDMFLOW_VAR_DIR", str(tmp_path / "var"))
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "simulator_api_key").write_text("generated-key\n")
    return tmp_path / "var"


async def test_the_key_make_run_generated_is_used(
    make_sim: SimFactory, var: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sim = await make_sim(api_key="generated-key")
    assert await sim_cli("list", "--url", sim.url) == 0
    (dev,) = await sim.fleet.enroll(1)
    for argv in (["show", dev], ["connect", dev], ["stats"], ["enroll", "1"]):
        assert await sim_cli(*argv, "--url", sim.url) == 0, argv
    capsys.readouterr()

    (var / "simulator_api_key").unlink()  # no key file: the old default, refused here
    assert await sim_cli("list", "--url", sim.url) == 1
    assert "refused the API key from the default key" in capsys.readouterr().err


async def test_default_var_dir_is_var_in_the_working_directory(
    make_sim: SimFactory, var: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim = await make_sim(api_key="generated-key")
    monkeypatch.delenv("MDMFLOW_VAR_DIR")
    monkeypatch.chdir(var.parent)
    assert await sim_cli("list", "--url", sim.url) == 0


async def test_explicit_keys_win_in_order(
    make_sim: SimFactory,
    var: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    sim = await make_sim(api_key="generated-key")
    monkeypatch.setenv("MDMFLOW_SIM_API_KEY", "wrong")  # over the file, and alone
    assert await sim_cli("list", "--url", sim.url) == 1
    assert "$MDMFLOW_SIM_API_KEY" in capsys.readouterr().err
    assert await sim_cli("list", "--url", sim.url, "--api-key", "generated-key") == 0
    monkeypatch.setenv("MDMFLOW_SIM_API_KEY", "generated-key")
    assert await sim_cli("list", "--url", sim.url, "--api-key", "wrong") == 1  # over the env


async def test_a_left_over_key_file_does_not_lock_out_a_default_simulator(
    make_sim: SimFactory, var: Path
) -> None:
    sim = await make_sim()  # `sim serve` by hand: the default key
    assert await sim_cli("list", "--url", sim.url) == 0
