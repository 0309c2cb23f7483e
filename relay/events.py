"""Check-ins become events; events start the workflows subscribed to them.

| webhook                                   | events                                  |
|-------------------------------------------|-----------------------------------------|
| Authenticate                              | Authenticate (+ running runs told: re-enrolled) |
| TokenUpdate                               | TokenUpdate, and Enrollment when first  |
| CheckOut                                  | CheckOut (+ running runs told: checked out) |
| Connect with Status Idle                  | Idle, IdleNotStartedSince               |

"First TokenUpdate" is ``token_update_tally == 1`` when the sender has the tally
(NanoMDM >= 0.9); otherwise it is the first TokenUpdate the relay sees after an
Authenticate for that enrollment (or for an enrollment it has never seen).

Each matching subscription starts its workflow for the enrollment with the
subscription's context and the enrollment's URL params, through the normal start path
(exclusivity applies). A failing subscription is logged, counted and recorded on the
subscription (``GET /v1/event/{name}``) without blocking the others.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from typing import Literal

from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from mdmflow import metrics
from mdmflow.admission import SystemGate
from mdmflow.temporal_calls import signals
from mdmflow.temporal_calls.starts import StartError, start_workflow
from mdmflow.temporal_calls.visibility import running_for_enrollment, started_since
from protocol import routing
from protocol.webhooks import WebhookEvent
from store.events import EnrollmentRegister, Subscription, SubscriptionStore
from store.holds import HoldStore
from workflows.models import EnrollmentReset
from workflows.registry import WORKFLOWS

log = logging.getLogger("mdmflow.events")

# Temporal could not be reached or did not answer: worth trying again later, unlike a
# request Temporal refused.
TEMPORAL_AWAY = frozenset(
    {
        RPCStatusCode.UNAVAILABLE,
        RPCStatusCode.DEADLINE_EXCEEDED,
        RPCStatusCode.CANCELLED,
        RPCStatusCode.UNKNOWN,
        RPCStatusCode.RESOURCE_EXHAUSTED,
        RPCStatusCode.INTERNAL,
    }
)

EVENTS = ("Enrollment", "Authenticate", "TokenUpdate", "CheckOut", "Idle", "IdleNotStartedSince")


class EventDispatcher:
    def __init__(
        self,
        client: Client,
        task_queue: str,
        subscriptions: SubscriptionStore,
        register: EnrollmentRegister,
        holds: HoldStore,
        gate: SystemGate | None = None,
    ) -> None:
        self._client = client
        # the emergency stop and the policy, asked before each start (None: not asked)
        self._gate = gate
        self._task_queue = task_queue
        self._subscriptions = subscriptions
        self._register = register
        # runs are started through holds, and fleet runs are found by them
        self._holds = holds

    async def events_for(self, event: WebhookEvent) -> list[str]:
        if event.kind == "acknowledge":
            idle = event.report is not None and event.report.status == "Idle"
            return ["Idle", "IdleNotStartedSince"] if idle else []
        message = event.message_type
        since_auth = await self._register.checkin(
            event.enrollment.id,
            event.enrollment.type,
            message,
            event.url_params,
            event.awaiting_configuration,
            event.enrollment.mdm_address,
        )
        if message == "TokenUpdate":
            first = (
                event.token_update_tally == 1
                if event.token_update_tally is not None
                else since_auth == 1
            )
            return ["TokenUpdate", "Enrollment"] if first else ["TokenUpdate"]
        if message in ("Authenticate", "CheckOut"):
            return [message]
        return []

    async def dispatch(self, event: WebhookEvent) -> list[str]:
        """Handle one webhook's events; returns the event names that fired.

        The names are worked out once, at first receipt (the register counts check-ins),
        and kept on the event: a webhook the relay's inbox delivers again reuses them.
        """
        if event.events is None:
            event.events = await self.events_for(event)
        names = event.events
        if event.kind == "checkin" and event.message_type in ("Authenticate", "CheckOut"):
            await self._reset_running(
                event.enrollment.id,
                "re-enrolled" if event.message_type == "Authenticate" else "checked out",
            )
        jobs = []
        for name in names:
            for sub in await self._subscriptions.for_event(name):
                jobs.append(self._fire(sub, event))
        if jobs:
            await asyncio.gather(*jobs)
        return names

    async def _fire(self, sub: Subscription, event: WebhookEvent) -> None:
        eid = event.enrollment.id
        claim = f"{event.event_id}/{sub.name}"
        if event.event_id and not await self._subscriptions.claim(claim):
            metrics.inc("event_duplicate")
            return  # the same webhook delivered twice
        try:
            await self._start(sub, event, eid)
        except (RPCError, asyncio.CancelledError):
            # Temporal is away (or the relay gave up waiting for it): give the claim back,
            # so the webhook held in the relay's inbox fires this subscription when it is
            # delivered again (a start that did reach Temporal is refused then as running).
            if event.event_id:
                await self._subscriptions.unclaim(claim)
            raise

    async def _start(self, sub: Subscription, event: WebhookEvent, eid: str) -> None:
        try:
            if sub.event == "IdleNotStartedSince" and await self._started_recently(sub, eid):
                return
            if self._gate is not None and (why := await self._gate(sub.workflow, 1)):
                await self._start_failed(sub, eid, PermissionError(why))
                return
            params = event.url_params or await self._register.url_params(eid)
            result = await start_workflow(
                self._client,
                self._task_queue,
                sub.workflow,
                [eid],
                sub.context,
                url_params={eid: params},
                holds=self._holds,
            )
        except RPCError as exc:
            if exc.status in TEMPORAL_AWAY:
                raise
            await self._start_failed(sub, eid, exc)
            return
        except (StartError, ValueError) as exc:
            await self._start_failed(sub, eid, exc)
            return
        metrics.inc("event_started", len(result.started))
        if result.started:
            log.info("event %s for %r started %s (%s)", sub.event, eid, sub.workflow, sub.name)
            await self._subscriptions.record(sub.name, len(result.started), None)

    async def _start_failed(self, sub: Subscription, eid: str, exc: Exception) -> None:
        metrics.inc("event_start_failed")
        log.error(
            "event %s: subscription %s could not start %s: %s",
            sub.event,
            sub.name,
            sub.workflow,
            exc,
        )
        await self._subscriptions.record(sub.name, 0, f"{eid}: {exc}")

    async def _started_recently(self, sub: Subscription, eid: str) -> bool:
        try:
            seconds = int(sub.event_context or "0")
        except ValueError:
            seconds = 0
        since = datetime.now(UTC) - timedelta(seconds=seconds)
        return await started_since(self._client, sub.workflow, eid, since)

    async def _reset_running(self, eid: str, reason: Literal["re-enrolled", "checked out"]) -> None:
        """NanoMDM cleared the queue: tell every running run of this enrollment now."""
        reset = EnrollmentReset(enrollment_id=eid, reason=reason)
        # Exclusive runs have known IDs (no visibility lag); user channels and
        # simultaneous runs come from the visibility store; fleet runs from their holds
        # on the device and its user channels (the store: no visibility lag either).
        legacy = {(routing.workflow_id(w.NAME, eid), eid) for w in WORKFLOWS if w.EXCLUSIVE}
        legacy.update(await running_for_enrollment(self._client, eid))
        fleet = {
            (h.workflow_id, h.enrollment_id)
            for h in await self._holds.for_enrollment(eid, user_channels=True)
        }

        async def tell(workflow_id: str, run_enrollment: str) -> None:
            told = reset.model_copy(update={"enrollment_id": run_enrollment})
            try:
                await signals.enrollment_reset(
                    self._client, workflow_id, told, fleet=(workflow_id, run_enrollment) in fleet
                )
            except signals.RunGone:
                return  # ended meanwhile: nothing left to tell
            metrics.inc("enrollment_reset_signalled")
            log.info("told %r: %r %s", workflow_id, run_enrollment, reason)

        # one round trip for all candidates, not one per registered workflow; a run found
        # both ways is told once
        await asyncio.gather(*(tell(w, e) for w, e in sorted(legacy | fleet)))
