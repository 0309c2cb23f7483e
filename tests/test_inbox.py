"""The relay's durable inbox: held while Temporal is away, delivered in order, never lost."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError
from temporalio.service import RPCError, RPCStatusCode

from protocol.webhooks import WebhookEvent, parse_webhook
from relay.inbox import DurableRouter, Forwarder, InboxUnavailable, inbox_gauges, render_gauges
from relay.routing import Delivery, Router
from store.db import open_engine
from store.inbox import MAX_ATTEMPTS, WebhookInbox

LINES = (Path(__file__).parent / "fixtures" / "micromdm_webhooks.jsonl").read_bytes().splitlines()


def event(n: int, enrollment: str = "DEV-1") -> WebhookEvent:
    """A captured webhook, renamed to ``enrollment`` and numbered by its event ID."""
    ev = parse_webhook(LINES[0])
    return ev.model_copy(
        update={
            "event_id": f"e{n}",
            "enrollment": ev.enrollment.model_copy(update={"id": enrollment}),
        }
    )


class FlakyTemporal:
    """Stands in for the Temporal router: down until told otherwise, records deliveries."""

    def __init__(self) -> None:
        self.up = False
        self.delivered: list[str] = []

    async def deliver(self, ev: WebhookEvent) -> Delivery:
        if not self.up:
            raise RPCError("connection refused", RPCStatusCode.UNAVAILABLE, b"")
        self.delivered.append(ev.event_id)
        return Delivery("checkin")


@pytest.fixture
async def inbox(db_url: str) -> WebhookInbox:
    return WebhookInbox(await open_engine(db_url))


def durable(temporal: FlakyTemporal, inbox: WebhookInbox) -> tuple[DurableRouter, Forwarder]:
    router: Router = temporal  # type: ignore[assignment]
    d = DurableRouter(router, inbox)
    return d, Forwarder(d)


async def test_held_while_temporal_is_down_then_delivered_in_order(inbox: WebhookInbox) -> None:
    temporal = FlakyTemporal()
    relay, forwarder = durable(temporal, inbox)
    for n in range(3):
        assert (await relay.deliver(event(n))).outcome == "queued"
    assert (await relay.deliver(event(9, "DEV-2"))).outcome == "queued"
    gauges = await inbox_gauges(inbox)
    assert gauges["inbox_depth"] == 4 and gauges["inbox_oldest_age_seconds"] >= 0
    assert await forwarder.forward_once() == 0  # still down: retried later, nothing lost
    temporal.up = True
    # Temporal failed moments ago: the relay queues without trying it (no waiting out
    # retries per webhook) until the forwarder gets a delivery through
    assert (await relay.deliver(event(10, "DEV-3"))).outcome == "queued"
    assert temporal.delivered == []
    for _ in range(50):  # the failed entries wait out their backoff first
        await forwarder.forward_once()
        if temporal.delivered:
            break
        await asyncio.sleep(0.1)
    # a new webhook of an enrollment with entries waiting queues behind them
    assert (await relay.deliver(event(3))).outcome == "queued"
    for _ in range(50):
        await forwarder.forward_once()
        if (await inbox.depth()).entries == 0:
            break
        await asyncio.sleep(0.1)
    assert (await relay.deliver(event(11, "DEV-4"))).outcome == "checkin"  # direct again
    assert sorted(temporal.delivered) == ["e0", "e1", "e10", "e11", "e2", "e3", "e9"]
    dev1 = [e for e in temporal.delivered if e in {"e0", "e1", "e2", "e3"}]
    assert dev1 == ["e0", "e1", "e2", "e3"]  # one enrollment's webhooks in arrival order
    assert (await inbox.depth()).entries == 0


async def test_a_retrying_entry_holds_back_its_enrollment_only(inbox: WebhookInbox) -> None:
    for n in range(2):
        await inbox.add(event(n))
    await inbox.add(event(5, "DEV-2"))
    first = (await inbox.due())[0]
    assert await inbox.failed(first, "Temporal: down") is False
    due = await inbox.due()
    assert [e.event.event_id for e in due] == ["e5"]  # DEV-1's second waits behind its first


async def test_an_entry_failing_for_good_is_kept_dead(inbox: WebhookInbox) -> None:
    await inbox.add(event(0))
    entry = (await inbox.due())[0]
    entry = type(entry)(entry.id, entry.event, MAX_ATTEMPTS - 1)
    assert await inbox.failed(entry, "Temporal: refused") is True
    depth = await inbox.depth()
    assert depth.entries == 0 and depth.dead == 1
    assert await inbox.due() == []


async def test_one_forwarder_holds_the_lease(inbox: WebhookInbox) -> None:
    ttl = timedelta(seconds=30)
    assert await inbox.lease("a", ttl)
    assert not await inbox.lease("b", ttl)
    assert await inbox.lease("a", ttl)  # renewed
    assert await inbox.lease("b", timedelta(seconds=30), name="other")
    assert await inbox.lease("c", timedelta(seconds=-1), name="expired")
    assert await inbox.lease("d", ttl, name="expired")  # taken over once expired


async def test_neither_temporal_nor_the_store_answers_503(tmp_path: Path) -> None:
    engine = await open_engine(f"sqlite:///{tmp_path / 'gone.db'}")
    inbox = WebhookInbox(engine)
    await engine.dispose()
    (tmp_path / "gone.db").unlink()
    (tmp_path / "gone.db").mkdir()  # the store can no longer be opened
    relay, _ = durable(FlakyTemporal(), inbox)
    with pytest.raises(InboxUnavailable):
        await relay.deliver(event(0))


async def test_a_restarted_relay_delivers_what_an_earlier_one_held(db_url: str) -> None:
    engine = await open_engine(db_url)
    earlier, _ = durable(FlakyTemporal(), WebhookInbox(engine))
    await earlier.deliver(event(0))
    await engine.dispose()
    temporal = FlakyTemporal()
    temporal.up = True
    inbox = WebhookInbox(await open_engine(db_url))
    _, forwarder = durable(temporal, inbox)
    forwarder.start()
    try:
        for _ in range(100):
            if temporal.delivered:
                break
            await asyncio.sleep(0.05)
    finally:
        await forwarder.stop()
    assert temporal.delivered == ["e0"]


async def test_an_entry_queued_by_another_relay_holds_this_relays_newer_webhooks(
    inbox: WebhookInbox,
) -> None:
    """Two relays on one store: one queued DEV-1's webhook (its Temporal was away); the
    other, with Temporal up, queues DEV-1's next one behind it and delivers DEV-2's."""
    down, up = FlakyTemporal(), FlakyTemporal()
    up.up = True
    first, _ = durable(down, inbox)
    second, second_forwarder = durable(up, inbox)
    assert (await first.deliver(event(1))).outcome == "queued"
    await second_forwarder.look()  # the poll every relay runs, lease or not
    assert (await second.deliver(event(2))).outcome == "queued"
    assert (await second.deliver(event(3, "DEV-2"))).outcome == "checkin"
    assert up.delivered == ["e3"]


async def test_a_check_in_the_store_cannot_record_is_503_not_lost(inbox: WebhookInbox) -> None:
    class StoreDown:
        async def deliver(self, ev: WebhookEvent) -> Delivery:
            raise OperationalError("INSERT INTO enrollments", {}, Exception("disk I/O error"))

    relay = DurableRouter(StoreDown(), inbox)  # type: ignore[arg-type]
    with pytest.raises(InboxUnavailable, match="cannot record this check-in"):
        await relay.deliver(event(1))


async def test_the_inbox_figures_reach_metrics(inbox: WebhookInbox) -> None:
    """Depth and oldest age as gauges; delivered and retried as counters, as scraped."""
    from mdmflow import metrics

    temporal = FlakyTemporal()
    relay, forwarder = durable(temporal, inbox)
    for n in range(2):
        await relay.deliver(event(n))
    text = render_gauges(await inbox_gauges(inbox))
    assert "mdmflow_inbox_depth 2" in text and "mdmflow_inbox_oldest_age_seconds" in text
    retried = metrics.counters["inbox_retried"]
    delivered = metrics.counters["inbox_delivered"]
    await forwarder.forward_once()  # Temporal still away: one attempt fails
    assert metrics.counters["inbox_retried"] == retried + 1
    temporal.up = True
    for _ in range(100):
        await forwarder.forward_once()
        if (await inbox.depth()).entries == 0:
            break
        await asyncio.sleep(0.1)
    assert metrics.counters["inbox_delivered"] == delivered + 2
    scraped = metrics.render() + render_gauges(await inbox_gauges(inbox))
    assert "mdmflow_inbox_depth 0" in scraped and "mdmflow_inbox_delivered" in scraped
