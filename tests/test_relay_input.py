"""What a webhook carries never becomes a metric name, a log line break or query syntax."""

from __future__ import annotations

import base64
import json
import logging

import pytest

from mdmflow import metrics
from mdmflow.temporal_calls.visibility import quote
from protocol import plist
from protocol.webhooks import parse_webhook
from relay.routing import Router


def checkin(message_type: str) -> bytes:
    raw = plist.dumps({"MessageType": message_type, "UDID": "DEV-1", "Topic": "t"})
    doc = {
        "topic": "mdm.TokenUpdate",
        "event_id": "e",
        "checkin_event": {"udid": "DEV-1", "raw_payload": base64.b64encode(raw).decode()},
    }
    return json.dumps(doc).encode()


async def test_a_forged_message_type_adds_no_metric_series_or_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    router = Router(None, "q")  # type: ignore[arg-type]  # check-ins without events: no Temporal
    forged = "Evil\nmdmflow_owned 1"
    before = set(metrics.counters)
    with caplog.at_level(logging.INFO, logger="mdmflow.relay"):
        await router.deliver(parse_webhook(checkin(forged)))
        await router.deliver(parse_webhook(checkin("TokenUpdate")))
    added = set(metrics.counters) - before
    assert added <= {"webhook_checkin_other", "webhook_checkin_TokenUpdate"}
    assert metrics.counters["webhook_checkin_other"] >= 1
    assert "mdmflow_owned" not in metrics.render().replace("Evil", "")
    assert all("\n" not in r.getMessage() for r in caplog.records)


def test_query_values_are_quoted() -> None:
    assert quote("plain") == "'plain'"
    assert quote("x' OR WorkflowId != '") == "'x\\' OR WorkflowId != \\''"
    assert quote("back\\slash") == "'back\\\\slash'"
