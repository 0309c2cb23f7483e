"""The ``mdmflow`` CLI against a running API (the module's own full stack)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from mdmflow.cli import main
from tests.e2e_stack import API_KEY, E2E
from tests.test_nanocmd_workflows import mobileconfig


async def cli(
    e2e: E2E, capsys: pytest.CaptureFixture[str], *argv: str, user: tuple[str, str] | None = None
) -> tuple[int, Any]:
    """Run one CLI command in a thread (the API answers from this event loop), as
    ``nanocmd`` or as ``user`` (name, key)."""
    capsys.readouterr()
    name, key = user or ("nanocmd", API_KEY)
    url = str(e2e.api.base_url).rstrip("/")
    code = await asyncio.to_thread(
        main, [*argv, "--api-url", url, "--user", name, "--api-key", key]
    )
    out = capsys.readouterr().out
    try:
        return code, json.loads(out)
    except json.JSONDecodeError:
        return code, out


@pytest.mark.parametrize(
    "command", ["up", "worker", "serve", "temporal", "start", "runs", "run", "inventory", "event",
                "schedule", "escrow", "profile", "cmdplan", "sim"],
)  # fmt: skip
def test_every_command_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    assert "usage: mdmflow" in capsys.readouterr().out


async def test_start_runs_and_inventory(e2e: E2E, capsys: pytest.CaptureFixture[str]) -> None:
    (eid,) = await e2e.enroll(1)
    code, started = await cli(e2e, capsys, "start", "io.micromdm.wf.inventory.v1", eid)
    assert code == 0 and started["started"] == [eid]
    await e2e.result("io.micromdm.wf.inventory.v1", eid)
    code, inventory = await cli(e2e, capsys, "inventory", eid)
    assert code == 0 and inventory[eid]["serial_number"]
    for _ in range(50):
        code, runs = await cli(e2e, capsys, "runs", "--instance", started["instance_id"])
        if runs and runs[0]["status"] == "completed":
            break
        await asyncio.sleep(0.2)
    assert runs[0]["enrollment_id"] == eid and runs[0]["status"] == "completed"
    run = runs[0]["workflow_id"]
    code, summary = await cli(e2e, capsys, "run", run)
    assert code == 0 and summary["by_status"] == {"completed": 1}
    code, device = await cli(e2e, capsys, "run", run, "--id", eid)
    assert code == 0 and device["steps"][0]["name"] == "inventory"
    code, page = await cli(e2e, capsys, "run", run, "--devices", "--limit", "5")
    assert code == 0 and [s["enrollment_id"] for s in page["states"]] == [eid]
    code, stranger = await cli(e2e, capsys, "run", run, "--id", "NOT-IN-THIS-RUN")
    assert code == 1 and "not a device of this run" in stranger["error"]


async def test_schedules_through_the_cli(e2e: E2E, capsys: pytest.CaptureFixture[str]) -> None:
    (eid,) = await e2e.enroll(1)
    put = ["schedule", "put", "nightly", "--workflow", "io.micromdm.wf.devinfolog.v1"]
    code, _ = await cli(e2e, capsys, *put, "--cron", "0 2 * * *", "--id", eid)
    assert code == 0
    code, names = await cli(e2e, capsys, "schedule", "list")
    assert "nightly" in names
    assert (await cli(e2e, capsys, "schedule", "pause", "nightly"))[0] == 0
    code, desc = await cli(e2e, capsys, "schedule", "get", "nightly")
    assert desc["paused"] is True and desc["cron"] == ["0 2 * * *"] and len(desc["next_runs"]) == 5
    assert (await cli(e2e, capsys, "schedule", "delete", "nightly"))[0] == 0
    code, missing = await cli(e2e, capsys, "schedule", "get", "nightly")
    assert code == 1 and "no schedule" in missing["error"]


async def test_events_profiles_and_escrow_through_the_cli(
    e2e: E2E, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    put = ["event", "put", "on-enroll", "--event", "Enrollment"]
    code, _ = await cli(e2e, capsys, *put, "--workflow", "io.micromdm.wf.inventory.v1")
    assert code == 0
    code, events = await cli(e2e, capsys, "event", "list")
    assert events["on-enroll"]["event"] == "Enrollment"
    assert (await cli(e2e, capsys, "event", "delete", "on-enroll"))[0] == 0
    code, bad = await cli(e2e, capsys, "event", "put", "x", "--event", "Nope", "--workflow", "w")
    assert code == 1 and "unknown event" in bad["error"]

    profile = tmp_path / "p.mobileconfig"
    profile.write_bytes(mobileconfig("com.example.cli", "77777777-AAAA-4AAA-8AAA-777777777777"))
    assert (await cli(e2e, capsys, "profile", "put", "cli", str(profile)))[0] == 0
    code, profiles = await cli(e2e, capsys, "profile", "list")
    assert profiles["cli"]["identifier"] == "com.example.cli"

    (eid,) = await e2e.enroll(1)
    code, summary = await cli(e2e, capsys, "escrow", "summary", eid)
    assert code == 0 and summary == {}
    refused, _ = await cli(e2e, capsys, "escrow", "pin", eid, "--reason", "audit")
    assert refused == 1  # nanocmd is an operator here: secrets need the escrow role
    escrow = ("keeper", await e2e.services.users.add("keeper", "escrow"))
    code, missing = await cli(e2e, capsys, "escrow", "pin", eid, "--reason", "audit", user=escrow)
    assert code == 1 and "no pin escrowed" in missing["error"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["profile", "put", "p"], "put needs a file"),
        (["profile", "put", "p", "/nonexistent/p.mobileconfig"], "No such file"),
        (["cmdplan", "get"], "get needs a name"),
        (["schedule", "put", "s", "--workflow", "w"], "exactly one of --every and --cron"),
        (["event", "put", "e", "--workflow", "w"], "put needs --event"),
    ],
)
def test_incomplete_commands_say_what_is_missing(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*argv, "--api-url", "http://127.0.0.1:1"]) == 2
    assert message in capsys.readouterr().err
