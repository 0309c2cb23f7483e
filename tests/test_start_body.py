"""``POST /v1/workflow/{name}/start`` takes IDs in a JSON body as well as in the query.

A fleet-sized ID list does not fit in a URL; NanoCMD's ``?id=`` form keeps working and
both can be combined.
"""

from __future__ import annotations

import pytest

from mdmflow.cli import main
from tests.e2e_stack import E2E
from workflows.models import FleetInput

DEVINFOLOG = "io.micromdm.wf.devinfolog.v1"
LOCK = "io.micromdm.wf.lock.v1"


async def test_ids_in_body_query_or_both_all_start_once(e2e: E2E) -> None:
    a, b, c = await e2e.enroll(3)
    context = '{"message": "from-body"}'
    resp = await e2e.api.post(
        f"/v1/workflow/{LOCK}/start",
        params={"id": a},
        json={"ids": [b, c, a], "context": context},
    )
    assert resp.status_code == 200, resp.text
    assert sorted(resp.json()["started"]) == sorted([a, b, c])
    e2e.note_started(LOCK, resp.json(), [a, b, c])
    for eid in (a, b, c):
        assert (await e2e.result(LOCK, eid))["status"] == "completed"
    handle = e2e.client.get_workflow_handle(await e2e.run_of(LOCK, b))
    started = (await handle.fetch_history()).events[0].workflow_execution_started_event_attributes
    # payloads are encrypted in history: read the input through the client's codec
    (inp,) = await e2e.client.data_converter.decode(started.input.payloads, [FleetInput])
    assert inp.context == context
    assert sorted(inp.enrollment_ids) == sorted([a, b, c])  # one fleet run, each ID once


async def test_body_without_ids_is_refused_and_query_form_unchanged(e2e: E2E) -> None:
    empty = await e2e.api.post(f"/v1/workflow/{DEVINFOLOG}/start", json={"ids": []})
    assert empty.status_code == 400
    assert "no enrollment IDs" in empty.json()["error"]
    bad = await e2e.api.post(f"/v1/workflow/{DEVINFOLOG}/start", json={"ids": "not-a-list"})
    assert bad.status_code == 400
    (eid,) = await e2e.enroll(1)
    resp = await e2e.api.post(f"/v1/workflow/{DEVINFOLOG}/start", params={"id": eid})
    assert resp.json()["started"] == [eid]
    assert (await e2e.result(DEVINFOLOG, eid))["status"] == "completed"


async def test_a_start_is_capped_at_fifty_thousand_ids(e2e: E2E) -> None:
    ids = [f"{n:08X}-0000-0000-0000-000000000000" for n in range(50_001)]
    resp = await e2e.api.post(f"/v1/workflow/{DEVINFOLOG}/start", json={"ids": ids})
    assert resp.status_code == 400
    assert "50000" in resp.json()["error"]


async def test_a_control_character_in_an_id_is_400_at_the_api_and_the_cli(
    e2e: E2E, capsys: pytest.CaptureFixture[str]
) -> None:
    resp = await e2e.api.post(f"/v1/workflow/{DEVINFOLOG}/start", json={"ids": ["A\x00B"]})
    assert resp.status_code == 400
    assert "control characters" in resp.json()["error"]
    assert main(["start", DEVINFOLOG, "A\x01B"]) == 2  # refused before anything is sent
    assert "control characters" in capsys.readouterr().err
    for argv in (  # every command that names an enrollment checks it the same way
        ["inventory", "A\x00B"],
        ["runs", "--id", "A\x00B"],
        ["run", "W", "--id", "A\x1bB"],
        ["escrow", "pin", "A\x00B", "--reason", "r"],
    ):
        assert main(argv) == 2, argv
        assert "control characters" in capsys.readouterr().err
