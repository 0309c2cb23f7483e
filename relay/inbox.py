"""Nothing lost while Temporal is away: deliver a webhook now, or hold it in the inbox.

:class:`DurableRouter` answers the relay's "delivered?" question: delivered to Temporal,
or written to the store's inbox (``store.inbox``) when Temporal cannot take it. Only
when neither works does the relay answer 503. A webhook for an enrollment that already
has entries waiting is queued behind them, so each enrollment's webhooks reach its runs
in arrival order. :class:`Forwarder` delivers the inbox as soon as Temporal is back:
many enrollments at once, each in order, so a fleet run's backlog after an outage goes
out through the router's batching as a few large signals rather than thousands.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections import deque
from datetime import UTC, datetime, timedelta

from sqlalchemy.exc import SQLAlchemyError
from temporalio.service import RPCError

from mdmflow import metrics
from protocol.webhooks import WebhookEvent
from relay.routing import WEBHOOK_SECONDS, WEBHOOKS, Delivery, Router
from store.inbox import InboxEntry, WebhookInbox

log = logging.getLogger("mdmflow.inbox")

# How often the forwarder looks for due entries, and how long its lease lasts.
POLL_SECONDS = 0.5
LEASE = timedelta(seconds=15)
# The relay checks "does this enrollment have entries waiting?" only while the inbox was
# seen non-empty this recently: an empty inbox costs the hot path nothing.
RECENT_SECONDS = 5.0
# How long after a failed Temporal call the relay stops trying Temporal first (the
# forwarder keeps trying and reopens the direct path as soon as a delivery succeeds).
TEMPORAL_DOWN_SECONDS = 5.0
# A webhook's delivery to Temporal is given this long before it is held in the inbox
# instead (the MDM server's request waits meanwhile; NanoMDM gives up after its timeout).
DELIVER_SECONDS = 4.0
# Entries one forwarder pass takes, and how many enrollments it delivers at once (each
# enrollment's entries one after another): reports of one fleet run in flight together
# are what the router coalesces into one signal.
FORWARD_BATCH = 500
FORWARD_CONCURRENCY = 64


class InboxUnavailable(RuntimeError):
    """Neither Temporal nor the store could take the webhook: the relay answers 503."""


class DurableRouter:
    def __init__(self, router: Router, inbox: WebhookInbox) -> None:
        self.router = router
        self.inbox = inbox
        self._nonempty_until = 0.0  # monotonic time until which "maybe non-empty" holds
        # After Temporal failed a call, webhooks go straight to the inbox for a while:
        # each would otherwise wait out the client's retries, and NanoMDM's request with it.
        self._temporal_down_until = 0.0

    def saw_entries(self) -> None:
        self._nonempty_until = time.monotonic() + RECENT_SECONDS

    async def deliver(self, event: WebhookEvent) -> Delivery:
        started = time.monotonic()
        delivery = await self._held_or_delivered(event)
        WEBHOOKS.inc(delivery.outcome)
        WEBHOOK_SECONDS.observe(time.monotonic() - started, delivery.outcome)
        return delivery

    async def _held_or_delivered(self, event: WebhookEvent) -> Delivery:
        eid = event.enrollment.id
        if time.monotonic() < self._temporal_down_until:
            return await self._queue(event, "Temporal was unreachable moments ago")
        if time.monotonic() < self._nonempty_until and await self._held(eid):
            return await self._queue(event, "earlier webhooks of this enrollment wait")
        try:
            return await self.deliver_now(event)
        except (RPCError, TimeoutError) as exc:
            metrics.inc("webhook_temporal_error")
            return await self._queue(event, temporal_problem(exc))
        except SQLAlchemyError as exc:  # a check-in's register write: the store is away
            raise InboxUnavailable(f"the store cannot record this check-in ({exc})") from exc

    async def deliver_now(self, event: WebhookEvent) -> Delivery:
        """Hand to Temporal within DELIVER_SECONDS; a failure keeps the direct path shut."""
        try:
            async with asyncio.timeout(DELIVER_SECONDS):
                delivery = await self.router.deliver(event)
        except (RPCError, TimeoutError):
            self._temporal_down_until = time.monotonic() + TEMPORAL_DOWN_SECONDS
            raise
        self._temporal_down_until = 0.0
        return delivery

    async def _held(self, enrollment_id: str) -> bool:
        try:
            return await self.inbox.holds(enrollment_id)
        except SQLAlchemyError:
            return False  # the store is down too: try Temporal directly

    async def _queue(self, event: WebhookEvent, why: str) -> Delivery:
        try:
            await self.inbox.add(event)
        except SQLAlchemyError as exc:
            log.error("webhook lost to the MDM server's retry policy: %s; store: %s", why, exc)
            raise InboxUnavailable(why) from exc
        self.saw_entries()
        metrics.inc("inbox_queued")
        log.info("webhook for %s held in the inbox (%s)", event.enrollment.id, why)
        return Delivery("queued")


class Forwarder:
    """Delivers the inbox while this process holds the forwarder lease."""

    def __init__(self, durable: DurableRouter) -> None:
        self._durable = durable
        self._inbox = durable.inbox
        self._owner = f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="inbox-forwarder")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        holding, renew_at = False, 0.0
        while True:
            try:
                if time.monotonic() >= renew_at:  # a store write every few seconds, not per poll
                    holding = await self._inbox.lease(self._owner, LEASE)
                    renew_at = time.monotonic() + (LEASE.total_seconds() / 3 if holding else 1.0)
                if holding:
                    await self.forward_once()
                await self.look()
            except asyncio.CancelledError:
                raise
            except Exception:  # the store may be down: keep trying, quietly
                log.warning("inbox forwarder: store unavailable", exc_info=True)
            await asyncio.sleep(POLL_SECONDS)

    async def look(self) -> None:
        """Every relay, lease or not: entries queued by another relay, or waiting out a
        backoff, must hold this relay's newer webhooks of their enrollment back too (one
        cheap probe per poll, off the webhook's path)."""
        if await self._inbox.any_waiting():
            self._durable.saw_entries()

    async def forward_once(self) -> int:
        """One pass over the due entries; returns how many were delivered.

        The oldest entry goes first, alone: while Temporal is away a pass costs one probe
        (and one entry's attempt). Once it is through, up to FORWARD_CONCURRENCY
        enrollments are delivered at once, each enrollment's entries in arrival order; the
        first failure stops the pass from starting more, and what is left waits for the
        next pass, still in order (an entry retrying holds back its enrollment's later ones).
        """
        entries = await self._inbox.due(FORWARD_BATCH)
        if not entries:
            return 0
        self._durable.saw_entries()
        if not await self._deliver(entries[0]):
            return 0
        lanes: dict[str, list[InboxEntry]] = {}
        for entry in entries[1:]:
            lanes.setdefault(entry.event.enrollment.id, []).append(entry)
        queue = deque(lanes.values())
        delivered = 1
        stop = False
        errors: list[Exception] = []

        async def work() -> None:
            nonlocal delivered, stop
            while queue and not stop:
                for entry in queue.popleft():
                    if stop:
                        return
                    try:
                        ok = await self._deliver(entry)
                    except Exception as exc:  # the store failed: end the pass, keep order
                        errors.append(exc)
                        ok = False
                    if not ok:
                        stop = True
                        return
                    delivered += 1

        # the workers finish what they started before the pass returns, so two passes
        # never deliver the same enrollment at once
        await asyncio.gather(*(work() for _ in range(min(FORWARD_CONCURRENCY, len(queue)))))
        if errors:
            raise errors[0]
        return delivered

    async def _deliver(self, entry: InboxEntry) -> bool:
        try:
            await self._durable.deliver_now(entry.event)
        except (RPCError, TimeoutError) as exc:
            dead = await self._inbox.failed(entry, temporal_problem(exc))
            metrics.inc("inbox_retried")
            if dead:
                metrics.inc("inbox_dead")
                log.error("inbox entry %d given up after %d attempts", entry.id, entry.attempts)
            return False
        await self._inbox.delivered(entry.id)
        metrics.inc("inbox_delivered")
        return True


def temporal_problem(exc: RPCError | TimeoutError) -> str:
    if isinstance(exc, RPCError):
        return f"Temporal: {exc.message}"
    return f"Temporal did not answer in {DELIVER_SECONDS} s"


async def inbox_gauges(inbox: WebhookInbox) -> dict[str, float]:
    """Depth, oldest entry's age and dead entries, for ``/metrics``."""
    depth = await inbox.depth()
    age = (datetime.now(UTC) - depth.oldest).total_seconds() if depth.oldest else 0.0
    return {
        "inbox_depth": depth.entries,
        "inbox_oldest_age_seconds": round(age, 3),
        "inbox_dead_entries": depth.dead,
    }


def render_gauges(gauges: dict[str, float]) -> str:
    """Prometheus text for point-in-time values (the counters are mdmflow.metrics')."""
    lines = []
    for name, value in sorted(gauges.items()):
        lines += [f"# TYPE mdmflow_{name} gauge", f"mdmflow_{name} {value}"]
    return "\n".join(lines) + "\n" if lines else ""
