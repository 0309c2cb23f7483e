"""The /sim control API and the ``mdmflow sim`` CLI."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest
from sim_support import Sim

from simulator.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]


async def test_control_api_roundtrip(sim: Sim) -> None:
    r = await sim.client.post("/sim/devices", params={"count": 2, "kind": "ipad"})
    assert r.status_code == 201
    ids = r.json()["enrolled"]
    assert len(ids) == 2
    listed = (await sim.client.get("/sim/devices")).json()["devices"]
    assert [d["id"] for d in listed] == ids and {d["kind"] for d in listed} == {"ipad"}
    show = (await sim.client.get(f"/sim/devices/{ids[0]}")).json()
    assert show["id"] == ids[0] and show["enrolled"] is True and show["queue"] == []
    u = await sim.client.post(f"/sim/devices/{ids[0]}/users", json={"user_id": "U-1"})
    assert u.status_code == 201 and u.json()["id"] == f"{ids[0]}:U-1"
    await sim.enqueue(ids[0], "ProfileList", "CTL-1", nopush=True)
    assert (await sim.client.post(f"/sim/devices/{ids[0]}/connect")).status_code == 200
    await sim.fleet.wait_idle(5)
    assert sim.connects(ids[0]) == [("Idle", None), ("Acknowledged", "CTL-1")]
    assert (await sim.client.post(f"/sim/devices/{ids[1]}/checkout")).status_code == 200
    assert sim.fleet.device_state(ids[1])["enrolled"] is False
    assert (await sim.client.post(f"/sim/devices/{ids[1]}/reenroll")).status_code == 200
    assert sim.fleet.device_state(ids[1])["enrolled"] is True
    faults = await sim.client.patch("/sim/faults", json={"drop_rate": 0.5, "seed": 4})
    assert faults.json()["drop_rate"] == 0.5 and faults.json()["seed"] == 4
    stats = (await sim.client.get("/sim/stats")).json()
    assert stats["commands_answered"] == 1 and stats["devices_enrolled"] == 2
    assert stats["faults"]["drop_rate"] == 0.5


async def test_control_api_errors(sim: Sim) -> None:
    assert (await sim.client.get("/sim/devices/NOPE")).status_code == 404
    assert "NOPE" in (await sim.client.get("/sim/devices/NOPE")).json()["error"]
    assert (await sim.client.post("/sim/devices/NOPE/connect")).status_code == 404
    assert (await sim.client.post("/sim/devices", params={"count": 0})).status_code == 400
    assert (await sim.client.post("/sim/devices", params={"kind": "toaster"})).status_code == 400
    assert (await sim.client.patch("/sim/faults", json={"drop_rate": 2})).status_code == 400
    assert (await sim.client.patch("/sim/faults", json={"bogus": 1})).status_code == 400
    (dev,) = await sim.fleet.enroll(1)
    await sim.fleet.checkout(dev)
    again = await sim.client.post(f"/sim/devices/{dev}/checkout")
    assert again.status_code == 400 and "not enrolled" in again.json()["error"]


@pytest.mark.parametrize(
    "argv",
    [
        ["sim", "--help"],
        ["sim", "serve", "--help"],
        ["sim", "enroll", "--help"],
        ["sim", "list", "--help"],
        ["sim", "show", "--help"],
        ["sim", "connect", "--help"],
        ["sim", "set", "--help"],
        ["sim", "faults", "--help"],
    ],
)
def test_cli_help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(argv)
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: mdmflow sim")
    assert "--help" in out


def test_python_m_simulator_help() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "simulator", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "serve" in out and "faults" in out


async def test_cli_drives_a_running_simulator(sim: Sim, capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()

    async def run(*argv: str) -> tuple[int, object]:
        args = parser.parse_args(["sim", *argv, "--url", sim.url])
        code = await asyncio.to_thread(args.func, args)
        out = capsys.readouterr().out
        return code, json.loads(out) if out.strip() else None

    code, out = await run("enroll", "2")
    assert code == 0
    assert isinstance(out, dict)
    ids = out["enrolled"]
    code, out = await run("list")
    assert code == 0 and isinstance(out, dict) and len(out["devices"]) == 2
    code, out = await run(
        "set",
        ids[0],
        "--notnow",
        "1",
        "--offline",
        "--error",
        "InstallProfile=12345:MCProfileErrorDomain:boom",
    )
    assert code == 0
    behaviour = sim.fleet.device_state(ids[0])["behaviour"]
    assert behaviour["notnow_count"] == 1 and behaviour["offline"] is True
    assert behaviour["errors"] == {"InstallProfile": [12345, "MCProfileErrorDomain", "boom"]}
    code, _ = await run("set", ids[0], "--online", "--clear-errors")
    assert sim.fleet.device_state(ids[0])["behaviour"]["errors"] == {}
    assert sim.fleet.device_state(ids[0])["behaviour"]["offline"] is False
    code, out = await run("show", ids[1])
    assert code == 0 and isinstance(out, dict) and out["id"] == ids[1]
    code, _ = await run("connect", ids[1])
    assert code == 0
    await sim.fleet.wait_idle(5)
    assert ("Idle", None) in sim.connects(ids[1])
    code, out = await run(
        "faults", "--drop", "0.1", "--duplicate", "0.2", "--reorder", "0.3", "--seed", "1"
    )
    assert code == 0 and sim.fleet.faults == {
        "drop_rate": 0.1,
        "duplicate_rate": 0.2,
        "reorder_rate": 0.3,
        "seed": 1,
    }
    code, _ = await run("show", "NOPE")
    assert code == 1
    args = parser.parse_args(["sim", "list", "--url", "http://127.0.0.1:9", "--api-key", "x"])
    assert await asyncio.to_thread(args.func, args) == 2
