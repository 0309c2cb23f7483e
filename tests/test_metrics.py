"""mdmflow's own metrics: the text format, bounded labels, where each process serves them.

Scrapes are real HTTP against the real API (dev server, store), the worker's endpoint and
the simulator standing in for NanoMDM; the text is parsed as a Prometheus scraper would.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import socket
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio import workflow
from temporalio.client import Client
from temporalio.service import RPCError
from temporalio.testing import ActivityEnvironment
from temporalio.worker import Worker

from activities.mdm import ENQUEUE_FAILURES, SEND_SECONDS, MdmActivities
from activities.mdm_server import NanoMdmClient, TransientMdmError
from activities.models import FleetSendInput, QueuedCommand, SendStepInput
from bench.servers import RestartableServer
from mdmflow import metrics
from mdmflow.services import Services
from mdmflow.temporal_client import connect
from mdmflow.temporal_server import DevServer, free_port
from protocol import plist
from protocol.commands import device_information
from relay.hmac_check import sign
from relay.routing import OUTCOMES, WEBHOOKS
from relay.webhook_auth import WebhookAuth
from simulator.app import create_app as simulator_app
from simulator.fleet import Fleet, FleetConfig
from starter.api import create_app
from starter.server import api_sdk_metrics
from worker import metrics_runtime, serve_own_metrics

API_KEY = "metrics-api-key"
HMAC_KEY = "metrics-hmac-key"

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')

Series = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> tuple[Series, dict[str, str]]:
    """Samples by (name, labels) and declared types; fails on any malformed line."""
    samples: Series = {}
    types: dict[str, str] = {}
    for line in text.splitlines():
        if not line:
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert name not in types, f"{name} declared twice"
            types[name] = kind
            continue
        if line.startswith("# HELP "):
            continue
        m = _SAMPLE.match(line)
        assert m, f"not a sample line: {line!r}"
        labels = frozenset(_LABEL.findall(m.group(3) or ""))
        key = (m.group(1), labels)
        assert key not in samples, f"duplicate series {line!r}"
        samples[key] = float(m.group(4))
    return samples, types


def histogram_checks(samples: Series, name: str) -> int:
    """Every series of histogram ``name``: buckets never decrease, +Inf equals _count.

    Returns the number of series checked.
    """
    by_series: dict[frozenset[tuple[str, str]], list[tuple[float, float]]] = {}
    for (metric, labels), value in samples.items():
        if metric == f"{name}_bucket":
            le = dict(labels)["le"]
            rest = frozenset(kv for kv in labels if kv[0] != "le")
            by_series.setdefault(rest, []).append((float(le), value))
    for labels, buckets in by_series.items():
        buckets.sort()
        counts = [v for _, v in buckets]
        assert counts == sorted(counts), (name, labels, buckets)
        assert buckets[-1][0] == float("inf")
        assert counts[-1] == samples[(f"{name}_count", labels)]
        assert (f"{name}_sum", labels) in samples
    return len(by_series)


def test_histogram_text_and_bounded_labels() -> None:
    h = metrics.Histogram("t_seconds", "test", (0.1, 1.0), label="kind", values=("a", "b"))
    for seconds, kind in ((0.05, "a"), (0.5, "a"), (5.0, "a"), (0.5, "forged\n1")):
        h.observe(seconds, kind)
    samples, types = parse("\n".join(h.lines()) + "\n")
    assert types == {"t_seconds": "histogram"}
    a = frozenset({("kind", "a")})
    assert samples[("t_seconds_bucket", a | {("le", "0.1")})] == 1
    assert samples[("t_seconds_bucket", a | {("le", "1")})] == 2
    assert samples[("t_seconds_bucket", a | {("le", "+Inf")})] == 3
    assert samples[("t_seconds_sum", a)] == pytest.approx(5.55)
    # the forged value is counted, as "other": no series of its own
    assert {dict(labels)["kind"] for _, labels in samples} == {"a", "b", "other"}
    assert samples[("t_seconds_count", frozenset({("kind", "other")}))] == 1
    assert histogram_checks(samples, "t_seconds") == 3
    with pytest.raises(ValueError, match="increasing"):
        metrics.Histogram("bad", "test", (1.0, 0.5))


@workflow.defn(name=metrics.FLEET_WORKFLOW_TYPE, sandboxed=False)
class StandInFleetRun:
    """Only the workflow type matters to the runs gauge."""

    @workflow.run
    async def run(self) -> None:
        return None


def checkin(message_type: str) -> dict[str, object]:
    raw = plist.dumps({"MessageType": message_type, "UDID": "DEV-M", "Topic": "t"})
    return {
        "topic": "mdm.TokenUpdate",
        "event_id": uuid.uuid4().hex[:16],
        "checkin_event": {"udid": "DEV-M", "raw_payload": base64.b64encode(raw).decode()},
    }


def report(command_uuid: str, status: str = "Acknowledged") -> dict[str, object]:
    raw = plist.dumps({"CommandUUID": command_uuid, "Status": status, "UDID": "DEV-M"})
    return {
        "topic": "mdm.Connect",
        "event_id": uuid.uuid4().hex[:16],
        "acknowledge_event": {
            "udid": "DEV-M",
            "status": status,
            "command_uuid": command_uuid,
            "ids": {"id": "DEV-M", "type": "Device"},
            "raw_payload": base64.b64encode(raw).decode(),
        },
    }


@pytest.fixture(scope="module")
async def api(dev_client: Client, store_engine: AsyncEngine) -> AsyncIterator[httpx.AsyncClient]:
    services = Services.create(dev_client, store_engine, f"tq-{uuid.uuid4()}", bytes(32))
    app = create_app(services, API_KEY, WebhookAuth(hmac_key=HMAC_KEY))
    async with RestartableServer(app) as server, httpx.AsyncClient(base_url=server.url) as http:
        yield http


async def post_webhook(http: httpx.AsyncClient, doc: dict[str, object]) -> httpx.Response:
    body = json.dumps(doc).encode()
    signature = {"X-Hmac-Signature": sign(HMAC_KEY, body)}
    return await http.post("/webhook", content=body, headers=signature)


async def test_api_metrics_parse_and_forged_webhooks_add_no_series(
    api: httpx.AsyncClient, dev_client: Client
) -> None:
    queue = f"runs-{uuid.uuid4()}"
    async with Worker(dev_client, task_queue=queue, workflows=[StandInFleetRun]):
        await dev_client.execute_workflow(StandInFleetRun.run, id=queue, task_queue=queue)
    # one webhook of each kind first: the plain counters appear on their first event
    for doc in (checkin("Unlisted"), report("warm-up"), report("warm-up", status="Idle")):
        assert (await post_webhook(api, doc)).status_code == 200
    assert (await post_webhook(api, report("warm-up", status="Odd"))).status_code == 400
    first = await api.get("/metrics")
    assert first.status_code == 200
    before, types = parse(first.text)
    signalled_before = WEBHOOKS.get("not_ours")

    forged = [
        checkin("Evil\nmdmflow_owned 1"),  # a MessageType nobody sends
        checkin('Authenticate"} 1\nx{a="'),
        report("not-one-of-ours"),  # a foreign CommandUUID: "not_ours"
        report("also-foreign"),
        report("idle-one", status="Idle"),
    ]
    for doc in forged:
        answer = await post_webhook(api, doc)
        assert answer.status_code == 200, answer.text
        assert answer.json()["outcome"] in OUTCOMES
    refused = await post_webhook(api, report("odd", status='Weird"} 1'))
    assert refused.status_code == 400  # not a status we know: refused before any figure

    after, types_after = parse((await api.get("/metrics")).text)
    assert types_after == types
    assert set(after) == set(before), set(after) ^ set(before)  # counts moved, series did not
    assert WEBHOOKS.get("not_ours") - signalled_before == 2

    def outcome(value: str) -> frozenset[tuple[str, str]]:
        return frozenset({("outcome", value)})

    assert (
        after[("mdmflow_webhooks_total", outcome("not_ours"))]
        - before.get(("mdmflow_webhooks_total", outcome("not_ours")), 0)
        == 2
    )
    assert after[("mdmflow_webhooks_total", outcome("checkin"))] >= 2
    assert after[("mdmflow_webhooks_total", outcome("idle"))] >= 1
    assert types["mdmflow_webhook_seconds"] == "histogram"
    assert histogram_checks(after, "mdmflow_webhook_seconds") == len(OUTCOMES) + 1
    assert after[("mdmflow_webhook_seconds_count", outcome("not_ours"))] >= 2
    checkins = {
        dict(labels)["message_type"]
        for name, labels in after
        if name == "mdmflow_webhook_checkins_total"
    }
    assert "other" in checkins and not any("Evil" in c or '"' in c for c in checkins)
    assert after[("mdmflow_webhook_checkin_other", frozenset())] >= 2  # the old name stays

    # runs by status, from Temporal's visibility: a fixed set of statuses, ours counted
    statuses = {dict(labels)["status"] for name, labels in after if name == "mdmflow_runs"}
    assert statuses == set(metrics.RUN_STATUSES)
    assert types["mdmflow_runs"] == "gauge"


async def test_runs_gauge_counts_fleet_runs_and_caches(dev_client: Client) -> None:
    queue = f"runs-{uuid.uuid4()}"
    async with Worker(dev_client, task_queue=queue, workflows=[StandInFleetRun]):
        await dev_client.execute_workflow(StandInFleetRun.run, id=queue, task_queue=queue)
    metrics._runs_cache.clear()
    counted = await metrics.runs_by_status(dev_client)
    assert counted["Completed"] >= 1
    assert set(counted) >= set(metrics.RUN_STATUSES)
    assert await metrics.runs_by_status(dev_client) is counted  # within the cache window


@pytest.fixture
async def simulator() -> AsyncIterator[str]:
    fleet = Fleet(FleetConfig(api_key="nanomdm-key", connect_latency=0.0))
    async with RestartableServer(simulator_app(fleet)) as server:
        yield server.url


async def test_worker_send_figures_and_their_endpoint_beside_the_sdks(
    simulator: str, dev_server: DevServer
) -> None:
    command = QueuedCommand(command_uuid="m1", command=device_information())
    step = SendStepInput(enrollment_id="E1", commands=[command])
    unreachable_before = ENQUEUE_FAILURES.get("unreachable")
    unknown_before = ENQUEUE_FAILURES.get("unknown_enrollment")
    sends_before = SEND_SECONDS.series["send_fleet"].count

    with socket.socket() as closed:  # a port nobody listens on: the MDM server is down
        closed.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{closed.getsockname()[1]}"
    down = NanoMdmClient(dead, "nanomdm-key", timeout=2)
    with pytest.raises(TransientMdmError):
        await ActivityEnvironment().run(MdmActivities(down).send_step, step)
    await down.aclose()
    assert ENQUEUE_FAILURES.get("unreachable") == unreachable_before + 1

    nano = NanoMdmClient(simulator, "nanomdm-key")
    fleet_send = FleetSendInput(
        enrollment_ids=["NOT-ENROLLED-1", "NOT-ENROLLED-2"],
        commands=[QueuedCommand(command_uuid="m2", command=device_information())],
    )
    result = await ActivityEnvironment().run(MdmActivities(nano).send_fleet, fleet_send)
    await nano.aclose()
    assert all(p.failed for p in result.problems.values()) and len(result.problems) == 2
    assert ENQUEUE_FAILURES.get("unknown_enrollment") == unknown_before + 2
    assert SEND_SECONDS.series["send_fleet"].count == sends_before + 1

    # the worker's endpoint: the SDK's at the address, ours one port above
    sdk = f"127.0.0.1:{free_port()}"
    runtime = metrics_runtime(sdk)
    assert runtime is not None
    ours = await serve_own_metrics(sdk)
    assert ours is not None
    try:
        client = await connect(dev_server.address, dev_server.namespace, runtime=runtime)
        await client.count_workflows()  # something for the SDK to have measured
        async with httpx.AsyncClient() as http:
            sdk_text = (await http.get(f"http://{sdk}/metrics")).text
            own = await http.get(f"http://{metrics.next_port(sdk)}/metrics")
            missing = await http.get(f"http://{metrics.next_port(sdk)}/nope")
    finally:
        ours.close()
    assert "temporal_request" in sdk_text
    assert own.status_code == 200 and missing.status_code == 404
    samples, types = parse(own.text)
    assert types["mdmflow_send_seconds"] == "histogram"
    assert types["mdmflow_enqueue_failures_total"] == "counter"
    kinds = {dict(k)["kind"] for n, k in samples if n == "mdmflow_enqueue_failures_total"}
    assert kinds == {"unreachable", "refused", "unknown_enrollment", "uncertain", "other"}
    unknown = frozenset({("kind", "unknown_enrollment")})
    assert samples[("mdmflow_enqueue_failures_total", unknown)] >= 2
    assert histogram_checks(samples, "mdmflow_send_seconds") == 3


async def test_a_taken_port_costs_the_worker_its_own_figures_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with caplog.at_level(logging.WARNING, logger="mdmflow.worker"):
            assert await serve_own_metrics(f"127.0.0.1:{port - 1}") is None
    assert "mdmflow worker metrics not served" in caplog.text
    assert await serve_own_metrics(None) is None


async def test_api_process_serves_its_clients_sdk_metrics(
    dev_server: DevServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    address = f"127.0.0.1:{free_port()}"
    monkeypatch.setenv("MDMFLOW_API_SDK_METRICS", address)
    runtime = metrics.sdk_metrics_runtime(
        api_sdk_metrics(), "MDMFLOW_API_SDK_METRICS", logging.getLogger("mdmflow.api")
    )
    assert runtime is not None
    client = await connect(dev_server.address, dev_server.namespace, runtime=runtime)
    handle = client.get_workflow_handle(f"no-such-run-{uuid.uuid4()}")
    with pytest.raises(RPCError):  # NOT_FOUND: a request to measure all the same
        await handle.signal("command_reports", [])
    async with httpx.AsyncClient() as http:
        body = (await http.get(f"http://{address}/metrics")).text
    assert "temporal_request_failure" in body
    assert 'operation="SignalWorkflowExecution"' in body


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, None), ("", None), ("off", None), ("127.0.0.1:9466", "127.0.0.1:9466")],
)
def test_api_sdk_metrics_setting(
    monkeypatch: pytest.MonkeyPatch, value: str | None, expected: str | None
) -> None:
    if value is None:
        monkeypatch.delenv("MDMFLOW_API_SDK_METRICS", raising=False)
    else:
        monkeypatch.setenv("MDMFLOW_API_SDK_METRICS", value)
    assert api_sdk_metrics() == expected
    assert metrics.next_port("127.0.0.1:9464") == "127.0.0.1:9465"
