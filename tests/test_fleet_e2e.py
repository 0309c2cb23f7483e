"""Fleet runs end to end: API start → chunks → multi-ID enqueue → batched answers → store."""

from __future__ import annotations

import asyncio

import pytest

from simulator.fleet import DeviceBehaviour
from tests.e2e_stack import E2E, INVENTORY


async def wait_ended(e2e: E2E, instance: str, chunks: int, timeout: float = 90) -> list[dict]:  # type: ignore[type-arg]
    """One item per device of the instance once every device of its runs has ended."""
    deadline = asyncio.get_running_loop().time() + timeout
    ended = {"completed", "failed", "cancelled", "timed_out"}
    while True:
        params = {"instance_id": instance, "limit": "1000"}
        items = (await e2e.api.get("/v1/runs", params=params)).json()
        runs = {i["workflow_id"] for i in items}
        if len(runs) == chunks and all(i["status"] in ended for i in items):
            return list(items)
        assert asyncio.get_running_loop().time() < deadline, items
        await asyncio.sleep(0.2)


async def test_a_start_runs_in_chunks_and_every_device_gets_each_command_once(
    e2e: E2E, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MDMFLOW_FLEET_CHUNK", "7")  # 3 chunks: 7 + 7 + 2
    ids = await e2e.enroll(16)
    slow, erring = ids[0], ids[8]
    e2e.fleet.set_behaviour(slow, DeviceBehaviour(notnow_count=1))
    e2e.fleet.set_behaviour(
        erring, DeviceBehaviour(errors={"SecurityInfo": (12021, "MCMDMErrorDomain", "no")})
    )
    before = e2e.fleet.stats["commands_enqueued"]
    started = await e2e.start(INVENTORY, *ids)
    assert sorted(started["started"]) == sorted(ids)
    runs = await wait_ended(e2e, started["instance_id"], 3)
    assert sorted({r["workflow_id"].rsplit("/", 1)[1] for r in runs}) == ["0", "1", "2"]
    assert {r["workflow"] for r in runs} == {INVENTORY} and all(r["fleet"] for r in runs)

    results = {eid: await e2e.result(INVENTORY, eid) for eid in ids}
    assert {e for e, r in results.items() if r["status"] != "completed"} == {erring}
    assert "MCMDMErrorDomain 12021" in results[erring]["message"]
    # every chunk boundary carried its commands: each device answered each command once
    # (the NotNow device after a NotNow), and nothing was queued twice
    assert e2e.fleet.stats["commands_enqueued"] - before == 2 * len(ids)
    for eid in ids:
        counters = e2e.fleet.device_state(eid)["counters"]
        assert counters["answered"] == 2, (eid, counters)
        assert (counters["notnow"] > 0) == (eid == slow), (eid, counters)
    inventory = (await e2e.api.get("/v1/inventory", params=[("id", i) for i in ids])).json()
    assert set(inventory) == set(ids)
    assert all(inventory[i]["serial_number"] for i in ids)
    # /v1/runs lists one item per device, a page at a time, with each device's status
    listed: list[dict] = []  # type: ignore[type-arg]
    token: str | None = None
    while True:
        params = {"instance_id": started["instance_id"], "limit": "5"}
        if token:
            params["page_token"] = token
        resp = await e2e.api.get("/v1/runs", params=params)
        assert resp.status_code == 200, resp.text
        assert len(resp.json()) <= 5
        listed += resp.json()
        token = resp.headers.get("X-Next-Page-Token")
        if not token:
            break
    assert sorted(r["enrollment_id"] for r in listed) == sorted(ids)
    by_device = {r["enrollment_id"]: r for r in listed}
    assert by_device[erring]["status"] == "failed"
    assert by_device[erring]["failure_type"] == "DeviceError"
    assert all(by_device[i]["status"] == "completed" for i in ids if i != erring)
    bad = await e2e.api.get("/v1/runs", params={"instance_id": "x", "page_token": "nonsense"})
    assert bad.status_code == 400 and "page_token" in bad.json()["error"]

    # an ended run of many devices is found by a device's enrollment (from the outcome
    # its device left in the store), with that device's status
    mine = (await e2e.api.get("/v1/runs", params={"id": erring})).json()
    (item,) = [r for r in mine if r["instance_id"] == started["instance_id"]]
    assert item["status"] == "failed" and "MCMDMErrorDomain 12021" in item["message"]
    assert item["workflow_id"] == e2e.started[(INVENTORY, erring)]

    # a device's own record in its fleet run
    state = await e2e.state(INVENTORY, slow)
    assert state["status"] == "completed"
    assert sum(c["not_now_count"] for c in state["steps"][0]["commands"]) >= 1


async def test_concurrent_overlapping_starts_never_run_a_device_twice(e2e: E2E) -> None:
    ids = await e2e.enroll(30)
    for eid in ids:  # keep them busy, so the holds are still held by the second start
        e2e.fleet.set_behaviour(eid, DeviceBehaviour(offline=True))
    halves = [ids[:20], ids[10:]]
    first, second = await asyncio.gather(
        *(e2e.api.post(f"/v1/workflow/{INVENTORY}/start", json={"ids": half}) for half in halves)
    )
    a, b = first.json(), second.json()
    assert set(a["started"]).isdisjoint(b["started"])
    assert set(a["started"]) | set(b["started"]) == set(ids)
    for body in (a, b):
        for why in body["refused"].values():
            assert "already running" in why and "/fleet/" in why, why
    # the refused devices of one start are exactly the other's share of the overlap
    assert set(a["refused"]) | set(b["refused"]) == set(ids[10:20])

    # the device's run is found by its enrollment, with the device's own step
    eid = ids[15]
    found = (await e2e.api.get("/v1/runs", params={"id": eid})).json()
    (held,) = [r for r in found if r["status"] == "running" and r["workflow"] == INVENTORY]
    assert held["fleet"] and held["current_step"] == "inventory"
    page = (
        await e2e.api.get(
            "/v1/runs/devices", params={"workflow_id": held["workflow_id"], "limit": 5}
        )
    ).json()
    assert len(page["states"]) == 5 and page["next_after"]
    summary = (
        await e2e.api.get("/v1/runs/summary", params={"workflow_id": held["workflow_id"]})
    ).json()
    assert summary["by_step"] == {"inventory": summary["devices"]}

    # a second start for a device still held is refused, naming the run
    again = (await e2e.api.post(f"/v1/workflow/{INVENTORY}/start", params={"id": eid})).json()
    assert again["started"] == [] and held["workflow_id"] in again["refused"][eid]

    for eid in ids:
        e2e.fleet.set_behaviour(eid, DeviceBehaviour())
    for body in (a, b):
        chunks = 1 if body["started"] else 0
        if chunks:
            runs = await wait_ended(e2e, body["instance_id"], chunks, timeout=180)
            assert all(r["status"] == "completed" for r in runs)
            assert len(runs) == len(body["started"])
    # every device's hold went back with the end of its story
    for body in (a, b):
        for chunk in range(1):
            run = f"{INVENTORY}/fleet/{body['instance_id']}/{chunk}"
            assert await e2e.services.holds.of_run(run) == []
