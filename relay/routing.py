"""Deliver one parsed webhook: a command report becomes one signal to one workflow.

The target is computed from the webhook alone (enrollment ID + CommandUUID), so any
number of relays can run side by side with no shared state.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from mdmflow import metrics
from protocol import routing
from protocol.results import CommandReport
from protocol.webhooks import WebhookEvent
from relay.events import EventDispatcher
from workflows.command_response import CommandResponseInput
from workflows.models import ENGINE_REVISION
from workflows.registry import BY_CODE, command_response_subscribers

log = logging.getLogger("mdmflow.relay")

# Check-in message types counted by name in /metrics; any other is counted as "other".
CHECKIN_TYPES = frozenset(
    {
        "Authenticate",
        "TokenUpdate",
        "CheckOut",
        "UserAuthenticate",
        "DeclarativeManagement",
        "GetBootstrapToken",
        "SetBootstrapToken",
        "GetToken",
    }
)

# A webhook's signal gives up after this (the relay then holds it in its inbox) instead
# of waiting out the client's retries while the MDM server's request waits too.
SIGNAL_TIMEOUT = timedelta(seconds=3)

Outcome = Literal[
    "signalled", "not_ours", "no_run", "idle", "checkin", "unknown_workflow", "queued"
]


@dataclass
class Delivery:
    outcome: Outcome
    workflow_id: str | None = None


class Router:
    def __init__(
        self, client: Client, task_queue: str, events: EventDispatcher | None = None
    ) -> None:
        self._client = client
        self._task_queue = task_queue
        self._events = events

    async def deliver(self, event: WebhookEvent) -> Delivery:
        if event.kind == "checkin":
            # metric names come from a fixed list: a forged MessageType adds no new series
            kind = event.message_type if event.message_type in CHECKIN_TYPES else "other"
            metrics.inc(f"webhook_checkin_{kind}")
            log.info("check-in %r from %r", event.message_type, event.enrollment.id)
            if self._events is not None:
                await self._events.dispatch(event)
            return Delivery("checkin")
        report = event.report
        assert report is not None
        if report.status == "Idle":
            metrics.inc("webhook_idle")
            if self._events is not None:
                await self._events.dispatch(event)
            return Delivery("idle")
        delivery = await self._route(event.enrollment.id, report)
        await self._all_command_response(report, routing.parse_command_uuid(report.command_uuid))
        return delivery

    async def _all_command_response(
        self, report: CommandReport, route: routing.CommandRoute | None
    ) -> None:
        """Start a delivery run for each workflow subscribed to this RequestType."""
        for wf in command_response_subscribers(report.request_type, report.status):
            if route is not None and route.code == wf.CODE:
                continue  # its own command: the run itself has the answer
            workflow_id = (
                f"acr/{wf.CODE}/{report.enrollment_id}/{report.command_uuid}/{report.status}"
            )
            try:
                await self._client.start_workflow(
                    "mdmflow.command_response.v1",
                    CommandResponseInput(
                        subscriber=wf.NAME, report=report, revision=ENGINE_REVISION
                    ),
                    id=workflow_id,
                    task_queue=self._task_queue,
                    id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
                    id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                )
                metrics.inc("all_command_response_started")
            except WorkflowAlreadyStartedError:
                metrics.inc("all_command_response_duplicate")

    async def _route(self, enrollment_id: str, report: CommandReport) -> Delivery:
        route = routing.parse_command_uuid(report.command_uuid)
        if route is None:
            metrics.inc("webhook_unknown_command_uuid")
            log.info("dropped report for foreign command %r", report.command_uuid)
            return Delivery("not_ours")
        wf = BY_CODE.get(route.code)
        if wf is None:
            metrics.inc("webhook_unknown_workflow")
            log.warning(
                "dropped report %r: no workflow with code %r", report.command_uuid, route.code
            )
            return Delivery("unknown_workflow")
        workflow_id = routing.workflow_id(wf.NAME, enrollment_id, route.instance_id)
        try:
            await self._client.get_workflow_handle(workflow_id).signal(
                "command_report", report, rpc_timeout=SIGNAL_TIMEOUT
            )
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                metrics.inc("webhook_no_running_workflow")
                log.info("late report %r: %r is not running", report.command_uuid, workflow_id)
                return Delivery("no_run", workflow_id)
            raise
        metrics.inc("webhook_signalled")
        return Delivery("signalled", workflow_id)
