"""The API and the webhook relay on the real dev server, over real HTTP.

The MDM server is the activity recorder here (the simulator runs in the end-to-end
tests), so each test controls exactly which reports reach the relay.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import yaml
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from activities.holds import HoldActivities
from bench.servers import RestartableServer
from mdmflow import metrics
from mdmflow.services import Services
from protocol import plist, routing
from relay.events import EVENTS
from relay.hmac_check import sign
from relay.webhook_auth import WebhookAuth
from starter.api import create_app
from tests.conftest import FIXTURES
from tests.workflow_harness import RecordingInventory, RecordingMdm, enrollment
from worker import PASSTHROUGH, governance_activities
from workflows.catalog import ALL_WORKFLOWS
from workflows.registry import BY_NAME

API_KEY = "test-api-key"
HMAC_KEY = "test-hmac-key"
INVENTORY = "io.micromdm.wf.inventory.v1"


class Stack:
    def __init__(
        self, base: str, client: Client, mdm: RecordingMdm, inventory: RecordingInventory
    ) -> None:
        self.base = base
        self.client = client
        self.mdm = mdm
        self.inventory = inventory
        self.http = httpx.AsyncClient(base_url=base, auth=("nanocmd", API_KEY), timeout=30)

    async def webhook(self, doc: dict[str, Any], key: str | None = HMAC_KEY) -> httpx.Response:
        body = json.dumps(doc).encode()
        headers = {"X-Hmac-Signature": sign(key, body)} if key else {}
        return await self.http.post("/webhook", content=body, headers=headers)


def ack(
    eid: str, command_uuid: str, request_type: str, status: str = "Acknowledged", **body: Any
) -> dict[str, Any]:
    raw = plist.dumps(
        {
            "CommandUUID": command_uuid,
            "RequestType": request_type,
            "Status": status,
            "UDID": eid,
            **body,
        }
    )
    return {
        "topic": "mdm.Connect",
        "event_id": uuid.uuid4().hex[:16],
        "created_at": "2026-11-24T04:40:17.712649545Z",
        "acknowledge_event": {
            "udid": eid,
            "status": status,
            "command_uuid": command_uuid,
            "ids": {"id": eid, "type": "Device"},
            "raw_payload": base64.b64encode(raw).decode(),
        },
    }


@pytest.fixture(scope="module")
async def stack(dev_client: Client, store_engine: AsyncEngine) -> AsyncIterator[Stack]:
    queue = f"tq-{uuid.uuid4()}"
    mdm, inventory = RecordingMdm(), RecordingInventory()
    services = Services.create(dev_client, store_engine, queue, bytes(32))
    app = create_app(services, API_KEY, WebhookAuth(hmac_key=HMAC_KEY))
    async with (
        RestartableServer(app) as server,
        Worker(
            dev_client,
            task_queue=queue,
            workflows=list(ALL_WORKFLOWS),
            activities=[
                *mdm.activities(),
                *inventory.activities(),
                HoldActivities(services.holds).release,
                *governance_activities(services),
            ],
            workflow_runner=SandboxedWorkflowRunner(
                restrictions=SandboxRestrictions.default.with_passthrough_modules(*PASSTHROUGH)
            ),
        ),
    ):
        s = Stack(server.url, dev_client, mdm, inventory)
        yield s
        await s.http.aclose()


async def test_version_is_open_and_the_api_needs_the_key(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.base) as anon:
        assert (await anon.get("/version")).json()["version"].startswith("v")
        denied = await anon.get("/v1/inventory", params={"id": "X"})
        assert denied.status_code == 401
        assert denied.headers["WWW-Authenticate"].startswith("Basic")
        wrong = await anon.get("/v1/inventory", params={"id": "X"}, auth=("nanocmd", "nope"))
        assert wrong.status_code == 401 and "error" in wrong.json()


async def test_start_errors_are_clear(stack: Stack) -> None:
    unknown = await stack.http.post("/v1/workflow/io.example.nope/start", params={"id": "A"})
    assert unknown.status_code == 400 and "unknown workflow" in unknown.json()["error"]
    no_ids = await stack.http.post(f"/v1/workflow/{INVENTORY}/start")
    assert no_ids.status_code == 400 and "no enrollment IDs" in no_ids.json()["error"]
    no_inv = await stack.http.get("/v1/inventory")
    assert no_inv.status_code == 400


async def test_webhook_rejects_bad_signatures_and_bad_bodies(stack: Stack) -> None:
    doc = ack(enrollment(), "11111111-1111-4111-8111-111111111111", "DeviceInformation")
    assert (await stack.webhook(doc, key=None)).status_code == 401
    assert (await stack.webhook(doc, key="forged")).status_code == 401
    body = b"{not json"
    bad = await stack.http.post(
        "/webhook", content=body, headers={"X-Hmac-Signature": sign(HMAC_KEY, body)}
    )
    assert bad.status_code == 400 and "not JSON" in bad.json()["error"]
    before = metrics.counters["webhook_unknown_command_uuid"]
    foreign = await stack.webhook(doc)
    assert foreign.status_code == 200 and foreign.json()["outcome"] == "not_ours"
    assert metrics.counters["webhook_unknown_command_uuid"] == before + 1


async def test_every_captured_webhook_is_accepted(stack: Stack) -> None:
    for line in (FIXTURES / "nanomdm-live" / "webhooks.jsonl").read_text().splitlines():
        resp = await stack.webhook(json.loads(line))
        assert resp.status_code == 200, resp.text
        assert resp.json()["outcome"] in {"checkin", "idle", "not_ours"}


async def test_reports_route_to_the_run_and_exclusivity_refuses_a_second_start(
    stack: Stack,
) -> None:
    eid, other = enrollment(), enrollment()
    first = await stack.http.post(f"/v1/workflow/{INVENTORY}/start", params={"id": eid})
    assert first.status_code == 200, first.text
    instance = first.json()["instance_id"]
    assert first.json()["started"] == [eid]
    second = await stack.http.post(
        f"/v1/workflow/{INVENTORY}/start", params=[("id", eid), ("id", other)]
    )
    assert second.json()["started"] == [other]
    assert "already running" in second.json()["refused"][eid]

    sent = await stack.mdm.wait_sent(2)
    step = next(s for s in sent if s.enrollment_id == eid)
    devinfo, secinfo = (c.command_uuid for c in step.commands)
    notnow = await stack.webhook(ack(eid, devinfo, "DeviceInformation", "NotNow"))
    assert notnow.json()["outcome"] == "signalled"
    await stack.webhook(
        ack(eid, devinfo, "DeviceInformation", QueryResponses={"SerialNumber": "SER1"})
    )
    await stack.webhook(ack(eid, secinfo, "SecurityInfo", SecurityInfo={"FDE_Enabled": True}))
    run = routing.fleet_workflow_id(INVENTORY, instance, 0)
    result = await stack.client.get_workflow_handle(run).result()
    assert result["status"] == "completed"
    late = await stack.webhook(ack(eid, devinfo, "DeviceInformation"))
    assert late.status_code == 200 and late.json()["outcome"] in {"no_run", "signalled"}

    runs = (await stack.http.get("/v1/runs", params={"instance_id": instance})).json()
    assert [(r["enrollment_id"], r["status"]) for r in runs] == [(eid, "completed")]
    assert runs[0]["current_step"] == "done:completed"
    by_id = (await stack.http.get("/v1/runs", params={"id": other})).json()
    assert by_id[0]["status"] == "running" and by_id[0]["current_step"] == "inventory"
    state = (await stack.http.get("/v1/runs/state", params={"workflow_id": run, "id": eid})).json()
    assert state["steps"][0]["commands"][0]["not_now_count"] == 1


async def test_openapi_serves_nanocmd_paths(stack: Stack) -> None:
    ours = (await stack.http.get("/openapi.json")).json()["paths"]
    theirs = yaml.safe_load((FIXTURES / "nanocmd" / "docs_openapi.yaml").read_text())["paths"]
    for path in ("/version", "/webhook", "/v1/workflow/{name}/start", "/v1/inventory"):
        assert path in theirs and path in ours
    assert (await stack.http.get("/docs")).status_code == 200


async def test_openapi_lists_the_choices_the_api_accepts(stack: Stack) -> None:
    doc = (await stack.http.get("/openapi.json")).json()

    def param(path: str, method: str, name: str) -> dict[str, object]:
        params = doc["paths"][path][method]["parameters"]
        return next(p["schema"] for p in params if p["name"] == name)

    assert param("/v1/workflow/{name}/start", "post", "name")["enum"] == sorted(BY_NAME)
    assert param("/v1/schedule/{name}/{action}", "post", "action")["enum"] == [
        "pause",
        "unpause",
        "trigger",
    ]
    schemas = doc["components"]["schemas"]
    assert schemas["EventSubscription"]["properties"]["event"]["enum"] == list(EVENTS)
    assert schemas["ScheduleRequest"]["properties"]["workflow"]["enum"] == sorted(BY_NAME)
    # an unknown choice still gets the handler's message, not a bare validation error
    bad = await stack.http.post("/v1/workflow/io.example.nope/start?id=A")
    assert bad.status_code == 400 and "unknown workflow" in bad.json()["error"]


async def test_run_state_errors_are_clear(stack: Stack) -> None:
    empty = await stack.http.get("/v1/runs/state", params={"workflow_id": ""})
    assert empty.status_code == 400
    missing = await stack.http.get("/v1/runs/state", params={"workflow_id": "nope/none"})
    assert missing.status_code == 404 and "no run" in missing.json()["error"]
