"""Deliver one parsed webhook: a command report becomes one signal to one workflow.

The target is computed from the webhook alone (enrollment ID + CommandUUID), so any
number of relays can run side by side with no shared state.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from mdmflow import metrics
from protocol import routing
from protocol.webhooks import WebhookEvent
from workflows.registry import BY_CODE

log = logging.getLogger("mdmflow.relay")

Outcome = Literal["signalled", "not_ours", "no_run", "idle", "checkin", "unknown_workflow"]


@dataclass
class Delivery:
    outcome: Outcome
    workflow_id: str | None = None


class Router:
    def __init__(self, client: Client) -> None:
        self._client = client

    async def deliver(self, event: WebhookEvent) -> Delivery:
        if event.kind == "checkin":
            metrics.inc(f"webhook_checkin_{event.message_type or 'unknown'}")
            log.info("check-in %s from %s", event.message_type, event.enrollment.id)
            return Delivery("checkin")
        report = event.report
        assert report is not None
        if report.status == "Idle":
            metrics.inc("webhook_idle")
            return Delivery("idle")
        route = routing.parse_command_uuid(report.command_uuid)
        if route is None:
            metrics.inc("webhook_unknown_command_uuid")
            log.info("dropped report for foreign command %s", report.command_uuid)
            return Delivery("not_ours")
        wf = BY_CODE.get(route.code)
        if wf is None:
            metrics.inc("webhook_unknown_workflow")
            log.warning(
                "dropped report %s: no workflow with code %r", report.command_uuid, route.code
            )
            return Delivery("unknown_workflow")
        workflow_id = routing.workflow_id(wf.NAME, event.enrollment.id, route.instance_id)
        try:
            await self._client.get_workflow_handle(workflow_id).signal("command_report", report)
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                metrics.inc("webhook_no_running_workflow")
                log.info("late report %s: %s is not running", report.command_uuid, workflow_id)
                return Delivery("no_run", workflow_id)
            raise
        metrics.inc("webhook_signalled")
        return Delivery("signalled", workflow_id)
