"""Simultaneous workflows: many runs per enrollment, each routed by its instance ID."""

from __future__ import annotations

import base64
import json
import uuid

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from activities.holds import HoldActivities
from mdmflow.temporal_calls.starts import start_workflow
from protocol import plist, routing
from protocol.webhooks import parse_webhook
from relay.routing import Router
from store.holds import HoldStore
from tests.simultaneous_workflow import SimultaneousWorkflow
from tests.workflow_harness import RecordingGovernance, RecordingMdm, enrollment
from worker import PASSTHROUGH
from workflows import registry
from workflows.fleet import FleetRunWorkflow


def webhook(eid: str, command_uuid: str) -> bytes:
    raw = plist.dumps(
        {
            "CommandUUID": command_uuid,
            "RequestType": "DeviceInformation",
            "Status": "Acknowledged",
            "UDID": eid,
            "QueryResponses": {"SerialNumber": "S"},
        }
    )
    event = {
        "udid": eid,
        "status": "Acknowledged",
        "command_uuid": command_uuid,
        "ids": {"id": eid, "type": "Device"},
        "raw_payload": base64.b64encode(raw).decode(),
    }
    return json.dumps({"topic": "mdm.Connect", "acknowledge_event": event}).encode()


async def test_two_instances_run_side_by_side_and_reports_reach_their_own_run(
    time_env: WorkflowEnvironment, store_engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(registry.BY_NAME, SimultaneousWorkflow.NAME, SimultaneousWorkflow)
    monkeypatch.setitem(registry.BY_CODE, SimultaneousWorkflow.CODE, SimultaneousWorkflow)
    queue = f"sim-{uuid.uuid4()}"
    mdm = RecordingMdm()
    holds = HoldStore(store_engine)
    eid = enrollment()
    async with Worker(
        time_env.client,
        task_queue=queue,
        workflows=[SimultaneousWorkflow, FleetRunWorkflow],
        activities=[
            *mdm.activities(),
            HoldActivities(holds).release,
            *RecordingGovernance().activities(),
        ],
        workflow_runner=SandboxedWorkflowRunner(
            restrictions=SandboxRestrictions.default.with_passthrough_modules(*PASSTHROUGH)
        ),
    ):
        name = SimultaneousWorkflow.NAME
        first = await start_workflow(time_env.client, queue, name, [eid], holds=holds)
        second = await start_workflow(time_env.client, queue, name, [eid], holds=holds)
        assert first.started == [eid] and second.started == [eid]  # nothing refused
        sent = await mdm.wait_sent(2)
        routes = {}
        for s in sent:
            route = routing.parse_command_uuid(s.commands[0].command_uuid)
            assert route is not None and route.instance_id is not None
            routes[route.instance_id] = s.commands[0].command_uuid
        assert set(routes) == {first.instance_id, second.instance_id}

        router = Router(time_env.client, queue)
        for instance, command_uuid in routes.items():
            delivery = await router.deliver(parse_webhook(webhook(eid, command_uuid)))
            assert delivery.outcome == "signalled"
            assert delivery.workflow_id == routing.fleet_workflow_id(name, instance, 0)
        for instance in routes:
            handle = time_env.client.get_workflow_handle(
                routing.fleet_workflow_id(name, instance, 0)
            )
            assert (await handle.result())["status"] == "completed"
