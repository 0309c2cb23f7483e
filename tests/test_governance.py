"""Governance on the real stack: roles, default-deny policy, rate limits shared by two API
processes, the emergency stop, approvals, dry runs, and the audit log of all of it."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from temporalio.client import Client

from bench.servers import RestartableServer
from escrow.sealing import load_master_key
from mdmflow.cli import main
from mdmflow.policy import PolicyHolder
from mdmflow.services import Services
from mdmflow.temporal_server import DevServer, free_port
from simulator.model import DeviceBehaviour
from starter.api import create_app
from store.db import open_engine
from tests.e2e_stack import API_KEY, E2E, e2e_stack
from workflows.registry import BY_NAME

ERASE = "io.mdmflow.erase.v1"
LOCK = "io.micromdm.wf.lock.v1"
FVENABLE = "io.micromdm.wf.fvenable.v1"
INVENTORY = "io.micromdm.wf.inventory.v1"
CERTPROF = "io.micromdm.wf.certprof.v1"
FAST_POLL = json.dumps({"poll_seconds": 0.3, "max_polls": 40})

POLICY = """
[global]
rate = { capacity = 1000, per_seconds = 60 }

[workflow."io.micromdm.wf.inventory.v1"]
enabled = true
roles = ["operator", "admin"]
max_targets = 100

[workflow."io.micromdm.wf.fvenable.v1"]
enabled = true
roles = ["operator", "admin"]
max_targets = 100

[workflow."io.micromdm.wf.lock.v1"]
enabled = true
roles = ["operator", "admin"]
max_targets = 2
rate = { capacity = 10, per_seconds = 3600 }
approval = true
refuse_unknown = true

[workflow."io.mdmflow.erase.v1"]
enabled = true
roles = ["admin"]
max_targets = 1
rate = { capacity = 1, per_seconds = 3600 }
approval = true
refuse_unknown = true
"""


@pytest.fixture(scope="module")
async def gov(
    dev_server: DevServer,
    dev_client: Client,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[E2E]:
    path = tmp_path_factory.mktemp("policy") / "policy.toml"
    path.write_text(POLICY)
    policy = PolicyHolder.load(path, BY_NAME)
    async with e2e_stack(
        dev_client, dev_server, tmp_path_factory, "governance", policy=policy
    ) as stack:
        yield stack


async def wait_for(check: Any, timeout: float = 30.0) -> Any:
    """Poll ``check()`` (an awaitable factory) until it returns something truthy."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await check()
        if value:
            return value
        assert asyncio.get_running_loop().time() < deadline, "timed out waiting"
        await asyncio.sleep(0.1)


async def summary(gov: E2E, workflow_id: str) -> dict[str, Any]:
    resp = await gov.api.get("/v1/runs/summary", params={"workflow_id": workflow_id})
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


async def device_state(gov: E2E, workflow_id: str, eid: str) -> dict[str, Any]:
    resp = await gov.api.get("/v1/runs/state", params={"workflow_id": workflow_id, "id": eid})
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


async def test_who_are_you_401_and_not_allowed_403(gov: E2E) -> None:
    (eid,) = await gov.enroll(1)
    anonymous = await gov.api.get("/v1/runs", params={"id": eid}, auth=None)
    assert anonymous.status_code == 401
    wrong = await gov.api.get("/v1/runs", params={"id": eid}, auth=("nobody", "x"))
    assert wrong.status_code == 401 and "unknown user or wrong key" in wrong.json()["error"]
    viewer = await gov.as_role("viewer")
    assert (await viewer.get("/v1/runs", params={"id": eid})).status_code == 200
    refused = await viewer.post(f"/v1/workflow/{INVENTORY}/start", params={"id": eid})
    assert refused.status_code == 403
    assert "role admin or operator needed" in refused.json()["error"]
    escrow = await viewer.get(f"/v1/escrow/{eid}/pin", params={"reason": "curious"})
    assert escrow.status_code == 403 and "role escrow needed" in escrow.json()["error"]
    no_reason = await (await gov.as_role("escrow")).get(f"/v1/escrow/{eid}/pin")
    assert no_reason.status_code == 400 and "reason" in no_reason.json()["error"]
    users = await viewer.get("/v1/users")
    assert users.status_code == 403 and "role admin needed" in users.json()["error"]


async def test_default_deny_caps_and_strict_context(gov: E2E) -> None:
    a, b, c = await gov.enroll(3)
    operator = gov.api  # nanocmd: operator
    none = await operator.post(f"/v1/workflow/{CERTPROF}/start", params={"id": a})
    assert none.status_code == 403 and "has no policy entry" in none.json()["error"]
    many = await operator.post(f"/v1/workflow/{LOCK}/start", json={"ids": [a, b, c]})
    assert many.status_code == 403 and "at most 2" in many.json()["error"]
    broken = await operator.post(
        f"/v1/workflow/{LOCK}/start", params={"id": a, "context": '{"message":"oops'}
    )
    assert broken.status_code == 400 and "JSON" in broken.json()["error"], broken.text
    assert gov.fleet.device_state(a)["lock"] is None  # nothing reached the device


async def test_an_event_start_passes_the_policy_too(gov: E2E) -> None:
    """Starts by mdmflow itself (here an Enrollment subscription) meet default-deny."""
    context = json.dumps({"profile": "scep", "filter": {"cn_prefix": "mdm"}})
    sub = {"event": "Enrollment", "workflow": CERTPROF, "context": context}
    assert (await gov.api.put("/v1/event/certs", json=sub)).status_code == 204
    try:
        (eid,) = await gov.enroll(1)

        async def failed() -> dict[str, Any] | None:
            got: dict[str, Any] = (await gov.api.get("/v1/event/certs")).json()
            return got if got.get("last_error") else None

        got = await wait_for(failed)
        assert eid in got["last_error"] and "has no policy entry" in got["last_error"]
        assert got["starts"] == 0
    finally:
        await gov.api.delete("/v1/event/certs")


async def test_dry_run_names_the_commands_and_starts_nothing(gov: E2E) -> None:
    (eid,) = await gov.enroll(1)
    made_up = "00000000-0000-4000-8000-00000000D00D"
    before = await gov.services.holds.count()
    resp = await gov.api.post(
        f"/v1/workflow/{LOCK}/plan",
        json={"ids": [eid, made_up], "context": '{"message": "Lost: call IT"}'},
    )
    assert resp.status_code == 200, resp.text
    plan = resp.json()
    assert [(s["name"], [c["request_type"] for c in s["commands"]]) for s in plan["steps"]] == [
        ("lock", ["DeviceLock"])
    ]
    assert plan["steps"][0]["destructive"] is True
    assert plan["approval_required"] is True
    assert plan["start"] == [eid] and "unknown enrollment" in plan["refused"][made_up]
    assert await gov.services.holds.count() == before
    runs = await gov.api.get("/v1/runs", params={"id": eid})
    assert runs.json() == []
    assert gov.fleet.device_state(eid)["lock"] is None


async def test_the_cli_dry_run_prints_the_plan_as_tables(
    gov: E2E, capsys: pytest.CaptureFixture[str]
) -> None:
    (eid,) = await gov.enroll(1)
    url = str(gov.api.base_url).rstrip("/")
    argv = ["start", LOCK, eid, "--context", '{"message": "Call IT"}', "--dry-run"]
    code = await asyncio.to_thread(
        main, [*argv, "--api-url", url, "--user", "nanocmd", "--api-key", API_KEY]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "nothing started" in out and "approval: a second person" in out
    assert "lock  DeviceLock" in out and "message 'Call IT'" in out
    assert "would start: 1" in out
    assert (await gov.api.get("/v1/runs", params={"id": eid})).json() == []


async def test_erase_rate_limit_across_two_api_processes_and_approval(gov: E2E) -> None:
    first, second = await gov.enroll(2)
    admin = await gov.as_role("admin")
    started = await admin.post(f"/v1/workflow/{ERASE}/start", params={"id": first})
    assert started.status_code == 200, started.text
    gov.note_started(ERASE, started.json(), [first])
    instance = started.json()["instance_id"]

    # a second API process on the same store: the bucket (1 per hour) is shared
    engine = await open_engine(gov.store_url)
    other = Services.create(
        gov.client, engine, gov.queue, load_master_key(gov.var_dir), gov.services.policy
    )
    async with RestartableServer(create_app(other, API_KEY)) as server:
        async with httpx.AsyncClient(base_url=server.url, auth=admin.auth) as admin2:
            again = await admin2.post(f"/v1/workflow/{ERASE}/start", params={"id": second})
    await engine.dispose()
    assert again.status_code == 429, again.text
    assert "next are due in" in again.json()["error"]
    assert int(again.headers["Retry-After"]) > 3000

    workflow_id = await gov.run_of(ERASE, first)
    waiting = await wait_for(
        lambda: _status_is(gov, workflow_id, first, "awaiting_approval"), timeout=30
    )
    assert "waits for approval" in waiting["message"]
    listed = (await gov.api.get("/v1/approvals")).json()
    assert [a["id"] for a in listed] == [instance] and listed[0]["started_by"] == "admin-e2e"
    assert gov.fleet.device_state(first)["erase"] is None  # nothing sent yet

    selfish = await admin.post(f"/v1/approvals/{instance}/approve", json={"reason": "me"})
    assert selfish.status_code == 403 and "needs someone else" in selfish.json()["error"]
    operator = await gov.api.post(f"/v1/approvals/{instance}/approve")
    assert operator.status_code == 403  # nanocmd is an operator: no approve role
    approver = await gov.as_role("approver")
    ok = await approver.post(f"/v1/approvals/{instance}/approve", json={"reason": "ticket 42"})
    assert ok.status_code == 200, ok.text
    result = await gov.result(ERASE, first)
    assert result["status"] == "completed", result
    assert gov.fleet.device_state(first)["erase"] is not None
    decided = (await gov.api.get("/v1/approvals", params={"status": "all"})).json()
    assert decided[0]["status"] == "approved" and decided[0]["decided_by"] == "approver-e2e"


async def _status_is(gov: E2E, workflow_id: str, eid: str, status: str) -> dict[str, Any] | None:
    state = await device_state(gov, workflow_id, eid)
    return state if state["status"] == status else None


async def test_a_rejected_lock_ends_with_nothing_sent(gov: E2E) -> None:
    (eid,) = await gov.enroll(1)
    started = await gov.start(LOCK, eid)
    workflow_id = await gov.run_of(LOCK, eid)
    await wait_for(lambda: _status_is(gov, workflow_id, eid, "awaiting_approval"))
    approver = await gov.as_role("approver")
    resp = await approver.post(
        f"/v1/approvals/{started['instance_id']}/reject", json={"reason": "wrong device"}
    )
    assert resp.status_code == 200, resp.text
    result = await gov.result(LOCK, eid)
    assert result["status"] == "failed"
    assert "rejected by approver-e2e: wrong device" in result["message"]
    assert gov.fleet.device_state(eid)["lock"] is None


async def test_emergency_stop_halts_refuses_and_release_resumes(gov: E2E) -> None:
    (eid,) = await gov.enroll(1)
    gov.fleet.set_behaviour(eid, DeviceBehaviour(offline=True))
    started = await gov.api.post(
        f"/v1/workflow/{FVENABLE}/start", params={"id": eid, "context": FAST_POLL}
    )
    assert started.status_code == 200, started.text
    gov.note_started(FVENABLE, started.json(), [eid])  # its first step waits: device offline
    workflow_id = await gov.run_of(FVENABLE, eid)
    admin = await gov.as_role("admin")
    assert (await gov.api.post("/v1/estop")).status_code == 403  # operators cannot
    engaged = await admin.post("/v1/estop", json={"reason": "bad rollout"})
    assert engaged.status_code == 200, engaged.text
    assert engaged.json()["runs_signalled"] >= 1
    try:
        halted = await wait_for(lambda: _halted(gov, workflow_id), timeout=5)
        assert "halted by emergency stop" in halted and "bad rollout" in halted
        (other,) = await gov.enroll(1)
        refused = await gov.api.post(f"/v1/workflow/{INVENTORY}/start", params={"id": other})
        assert refused.status_code == 409 and "emergency stop" in refused.json()["error"]
        # the device answers the step in flight; the next step waits at the boundary
        gov.fleet.set_behaviour(eid, DeviceBehaviour())
        state = await wait_for(lambda: _status_is(gov, workflow_id, eid, "halted"), timeout=30)
        assert "halted by emergency stop" in state["message"]
        steps_while_halted = len(state["steps"])
        await asyncio.sleep(1.0)
        assert len((await device_state(gov, workflow_id, eid))["steps"]) == steps_while_halted
    finally:
        released = await admin.delete("/v1/estop")
    assert released.status_code == 200, released.text
    result = await gov.result(FVENABLE, eid)
    assert result["status"] == "completed", result
    assert (await gov.api.get("/v1/estop")).json() == {"engaged": False, "stops": []}


async def _halted(gov: E2E, workflow_id: str) -> str | None:
    halted: str | None = (await summary(gov, workflow_id)).get("halted")
    return halted


async def test_everything_is_audited_and_an_edit_is_detected(
    gov: E2E, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Runs last: the actions of the tests above, refused ones included, are all there."""
    entries, _ = await gov.services.audit.list(limit=1000)
    seen = {(e["user"], e["action"], e["outcome"].split(":")[0]) for e in entries}
    assert ("viewer-e2e", "start", "refused 403") in seen
    assert ("nanocmd", "start", "refused 403") in seen  # default-deny and the cap
    assert ("nanocmd", "start", "failed 400") in seen  # the broken context
    assert ("admin-e2e", "start", "ok") in seen
    assert ("admin-e2e", "start", "refused 429") in seen  # the other API process
    assert ("admin-e2e", "approval.approve", "refused 403") in seen  # self-approval
    assert ("approver-e2e", "approval.approve", "ok") in seen
    assert ("approver-e2e", "approval.reject", "ok") in seen
    assert ("admin-e2e", "estop.engage", "ok") in seen
    assert ("nanocmd", "estop.engage", "refused 403") in seen
    assert ("admin-e2e", "estop.release", "ok") in seen
    assert ("nanocmd", "plan", "ok") in seen
    assert ("viewer-e2e", "escrow.read", "refused 403") in seen
    erase = [e for e in entries if e["action"] == "start" and e["params"].get("workflow") == ERASE]
    assert erase and all(e["target_count"] == 1 and e["source"] for e in erase)
    api = await gov.api.get("/v1/audit", params={"user": "admin-e2e", "action": "estop.engage"})
    assert [e["outcome"] for e in api.json()] == ["ok"]
    assert set(api.json()[0]) >= {"time", "user", "action", "targets", "outcome"}

    monkeypatch.setenv("MDMFLOW_DB_URL", gov.store_url)
    assert await asyncio.to_thread(main, ["audit", "verify"]) == 0
    middle = entries[len(entries) // 2]["seq"]
    engine = await open_engine(gov.store_url)
    async with engine.begin() as conn:
        await conn.execute(
            text("UPDATE audit_log SET outcome = 'edited' WHERE seq = :seq"), {"seq": middle}
        )
    await engine.dispose()
    assert await asyncio.to_thread(main, ["audit", "verify"]) == 1
    assert f"AUDIT CHAIN BROKEN at entry {middle}" in capsys.readouterr().err


def test_policy_file_problems_are_clear(tmp_path: Path) -> None:
    """An unusable policy stops a start with why; an unusable edit keeps the last good one."""
    from mdmflow import policy as pol

    path = tmp_path / "policy.toml"
    path.write_text('[workflow."io.micromdm.wf.nope.v1"]\nenabled = true\n')
    with pytest.raises(pol.PolicyError, match="no such workflow"):
        PolicyHolder.load(path, BY_NAME)
    path.write_text(POLICY)
    holder = PolicyHolder.load(path, BY_NAME)
    path.write_text(POLICY.replace("max_targets = 2", "max_targets = 0"))
    holder._checked = 0.0
    assert holder.current().for_workflow(LOCK).max_targets == 2  # type: ignore[union-attr]
    assert holder.last_error is not None and "max_targets" in holder.last_error
    path.write_text(POLICY.replace("max_targets = 2", "max_targets = 1"))
    holder._checked = 0.0
    assert holder.current().for_workflow(LOCK).max_targets == 1  # type: ignore[union-attr]
    assert holder.last_error is None


async def test_forwarded_addresses_are_believed_only_from_trusted_proxies(gov: E2E) -> None:
    """`mdmflow serve` records X-Forwarded-For as the source only when the request comes
    from an address in MDMFLOW_TRUSTED_PROXIES."""
    sources = []
    for trusted in ("", "127.0.0.1"):
        port = free_port()
        env = {
            **os.environ,
            "TEMPORAL_ADDRESS": gov.temporal.address,
            "MDMFLOW_DB_URL": gov.store_url,
            "MDMFLOW_VAR_DIR": str(gov.var_dir),
            "MDMFLOW_API_KEY": "proxy-key",
            "MDMFLOW_TRUSTED_PROXIES": trusted,
            "MDMFLOW_WEBHOOK_INSECURE": "1",
            "MDMFLOW_LISTEN": f"127.0.0.1:{port}",
        }
        proc = subprocess.Popen([sys.executable, "-m", "mdmflow", "serve"], env=env)
        name = f"proxied-{len(sources)}"
        try:
            async with httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{port}", auth=("nanocmd", "proxy-key")
            ) as api:
                for _ in range(200):
                    try:
                        resp = await api.put(
                            f"/v1/cmdplan/{name}",
                            json={"profile_names": []},
                            headers={"X-Forwarded-For": "203.0.113.9"},
                        )
                        break
                    except httpx.TransportError:
                        await asyncio.sleep(0.1)
                assert resp.status_code == 204, resp.text
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        entries, _ = await gov.services.audit.list(action="cmdplan.put", limit=10)
        sources.append(next(e["source"] for e in entries if e["params"]["name"] == name))
    assert sources == ["127.0.0.1", "203.0.113.9"]
