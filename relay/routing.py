"""Deliver one parsed webhook: a command report becomes a signal to its workflow.

The target is computed from the webhook alone (enrollment ID + CommandUUID), so any
number of relays can run side by side with no shared state. A one-device run gets one
``command_report`` signal per report. A fleet run gets ``command_reports``: reports for
it that arrive while a signal to it is in flight travel together in the next one, so a
chunk of a thousand devices answering at once costs a handful of signals, and a report
that finds no signal in flight is sent at once. The signals themselves are
:mod:`mdmflow.temporal_calls.signals`.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Literal, get_args

from temporalio.client import Client

from mdmflow import metrics
from mdmflow.temporal_calls import signals
from mdmflow.temporal_calls.signals import RunGone as RunGone
from mdmflow.temporal_calls.starts import start_command_response
from protocol import routing
from protocol.results import CommandReport
from protocol.webhooks import WebhookEvent
from relay.events import EventDispatcher
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

# A fleet signal carries at most this many reports and about this many bytes of them
# (Temporal refuses payloads over 2 MB); the rest wait for the next signal. A report
# larger than the byte budget travels alone.
BATCH_MAX = 500
BATCH_BYTES = 1 << 20

Outcome = Literal[
    "signalled", "not_ours", "no_run", "idle", "checkin", "unknown_workflow", "queued"
]


# The relay's figures by outcome: a fixed label set, whatever a webhook carries.
OUTCOMES: tuple[str, ...] = get_args(Outcome)
WEBHOOKS = metrics.labelled_counter(
    "webhooks_total", "Webhooks delivered or deliberately dropped, by outcome.", "outcome", OUTCOMES
)
WEBHOOK_SECONDS = metrics.histogram(
    "webhook_seconds",
    "Seconds from the relay handing over a verified webhook to its answer, by outcome.",
    "outcome",
    OUTCOMES,
)
CHECKINS = metrics.labelled_counter(
    "webhook_checkins_total",
    "Check-in webhooks by MessageType.",
    "message_type",
    sorted(CHECKIN_TYPES),
)


@dataclass
class Delivery:
    outcome: Outcome
    workflow_id: str | None = None


@dataclass
class _Waiting:
    report: CommandReport
    size: int  # bytes of the report as JSON: what it adds to the signal's payload
    done: asyncio.Future[None]


@dataclass
class _Lane:
    """Reports waiting for one fleet run, and the task signalling them (while it runs,
    a signal to the run is in flight or about to be)."""

    waiting: list[_Waiting] = field(default_factory=list)
    sender: asyncio.Task[None] | None = None


class FleetSignals:
    """Coalesces reports per fleet run: one signal in flight per run, the rest batched.

    Each caller awaits the signal that carries its report, so the relay still answers a
    webhook only once Temporal holds it, and a failed signal fails every report in it
    (each caller then takes its own fallback, the inbox). Runs never wait for one another:
    each workflow ID has its own lane.
    """

    def __init__(
        self, client: Client, batch_max: int = BATCH_MAX, batch_bytes: int = BATCH_BYTES
    ) -> None:
        self._client = client
        self._batch_max = batch_max
        self._batch_bytes = batch_bytes
        self._lanes: dict[str, _Lane] = {}

    async def send(self, workflow_id: str, report: CommandReport) -> None:
        """Return once a signal carrying ``report`` succeeded.

        Raises :class:`RunGone` when the run is not running, or the signal's error.
        """
        item = _Waiting(
            report,
            len(report.model_dump_json()),
            asyncio.get_running_loop().create_future(),
        )
        lane = self._lanes.get(workflow_id)
        if lane is None:
            lane = self._lanes[workflow_id] = _Lane()
        lane.waiting.append(item)
        if lane.sender is None:  # nothing in flight: this report goes at once
            lane.sender = asyncio.create_task(
                self._drain(workflow_id, lane), name=f"fleet-signals:{workflow_id}"
            )
        # a caller that stops waiting (the relay's delivery deadline) cancels only its
        # own future; a report not sent yet is then left out of the batch
        await item.done

    def _next_batch(self, lane: _Lane) -> list[_Waiting]:
        # callers that gave up already hold their report elsewhere (the inbox)
        lane.waiting = [w for w in lane.waiting if not w.done.done()]
        taken, size = 0, 0
        for w in lane.waiting:
            if taken and (taken >= self._batch_max or size + w.size > self._batch_bytes):
                break
            taken, size = taken + 1, size + w.size
        batch, lane.waiting = lane.waiting[:taken], lane.waiting[taken:]
        return batch

    async def _drain(self, workflow_id: str, lane: _Lane) -> None:
        batch: list[_Waiting] = []
        try:
            while batch := self._next_batch(lane):
                reports = [w.report for w in batch]
                error: BaseException | None = None
                try:
                    await signals.command_reports(
                        self._client, workflow_id, reports, rpc_timeout=SIGNAL_TIMEOUT
                    )
                except Exception as exc:  # RunGone, Temporal's error, an unencodable payload
                    error = exc
                if error is None:
                    metrics.inc("webhook_report_batches")
                    metrics.inc("webhook_reports_batched", len(reports))
                for w in batch:
                    if w.done.done():
                        continue
                    if error is None:
                        w.done.set_result(None)
                    else:
                        w.done.set_exception(error)
        finally:
            # shut down mid-signal: nobody is left waiting forever
            for w in batch + lane.waiting:
                w.done.cancel()
            # no await since the last look at ``waiting``: nothing was added meanwhile
            if self._lanes.get(workflow_id) is lane:
                del self._lanes[workflow_id]


class Router:
    def __init__(
        self, client: Client, task_queue: str, events: EventDispatcher | None = None
    ) -> None:
        self._client = client
        self._task_queue = task_queue
        self._events = events
        self._fleet = FleetSignals(client)

    async def deliver(self, event: WebhookEvent) -> Delivery:
        if event.kind == "checkin":
            # metric names come from a fixed list: a forged MessageType adds no new series
            kind = event.message_type if event.message_type in CHECKIN_TYPES else "other"
            metrics.inc(f"webhook_checkin_{kind}")
            CHECKINS.inc(kind)
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
            if await start_command_response(
                self._client, self._task_queue, wf.NAME, wf.CODE, report
            ):
                metrics.inc("all_command_response_started")
            else:
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
        workflow_id = route.target(wf.NAME, enrollment_id)
        if route.chunk is not None:
            return await self._to_fleet(workflow_id, report)
        try:
            await signals.command_report(
                self._client, workflow_id, report, rpc_timeout=SIGNAL_TIMEOUT
            )
        except RunGone:
            metrics.inc("webhook_no_running_workflow")
            log.info("late report %r: %r is not running", report.command_uuid, workflow_id)
            return Delivery("no_run", workflow_id)
        metrics.inc("webhook_signalled")
        return Delivery("signalled", workflow_id)

    async def _to_fleet(self, workflow_id: str, report: CommandReport) -> Delivery:
        try:
            await self._fleet.send(workflow_id, report)
        except RunGone:
            metrics.inc("webhook_no_running_workflow")
            log.info("late report %r: %r is not running", report.command_uuid, workflow_id)
            return Delivery("no_run", workflow_id)
        metrics.inc("webhook_signalled")
        return Delivery("signalled", workflow_id)
