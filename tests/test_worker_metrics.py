"""The worker's SDK metrics (``MDMFLOW_WORKER_METRICS``) on a real Temporal server."""

from __future__ import annotations

import logging
import socket
import uuid
from datetime import timedelta

import httpx
import pytest
from temporalio import activity, workflow
from temporalio.worker import Worker

from mdmflow import config
from mdmflow.temporal_client import connect
from mdmflow.temporal_server import DevServer, free_port
from worker import metrics_runtime


@activity.defn
async def double(value: int) -> int:
    return value * 2


@workflow.defn(sandboxed=False)
class Doubling:
    @workflow.run
    async def run(self, value: int) -> int:
        return await workflow.execute_activity(
            double, value, start_to_close_timeout=timedelta(seconds=10)
        )


async def test_worker_serves_sdk_metrics(dev_server: DevServer) -> None:
    address = f"127.0.0.1:{free_port()}"
    runtime = metrics_runtime(address)  # kept by the module for the whole process
    assert runtime is not None
    client = await connect(dev_server.address, dev_server.namespace, runtime=runtime)
    queue = f"metrics-{uuid.uuid4()}"
    async with Worker(client, task_queue=queue, workflows=[Doubling], activities=[double]):
        result = await client.execute_workflow(Doubling.run, 21, id=queue, task_queue=queue)
    assert result == 42
    async with httpx.AsyncClient() as http:
        body = (await http.get(f"http://{address}/metrics")).text
    for name in (
        "temporal_workflow_completed",
        "temporal_workflow_task_execution_latency",
        "temporal_activity_execution_latency_bucket",
        "temporal_workflow_task_queue_poll_succeed",
    ):
        assert name in body, name
    assert f'task_queue="{queue}"' in body


async def test_step_durations_are_a_worker_metric(dev_server: DevServer) -> None:
    """A fleet run's steps are timed with the SDK's workflow metric meter, on the same
    endpoint, labelled by workflow and outcome."""
    from temporalio.testing import WorkflowEnvironment

    from tests.test_fleet_controls import answer
    from tests.test_step_engine import harness_on
    from tests.workflow_harness import outcome
    from workflows.devinfolog import DevInfoLogWorkflow

    address = f"127.0.0.1:{free_port()}"
    runtime = metrics_runtime(address)
    assert runtime is not None
    client = await connect(dev_server.address, dev_server.namespace, runtime=runtime)
    async with harness_on(WorkflowEnvironment.from_client(client), fleet=True) as h:
        eid, handle = await h.start(DevInfoLogWorkflow.NAME)
        await h.mdm.wait_sent(1)
        await answer(h, handle, eid)  # type: ignore[arg-type]
        assert (await outcome(handle)).status == "completed"
    async with httpx.AsyncClient() as http:
        body = (await http.get(f"http://{address}/metrics")).text
    lines = [line for line in body.splitlines() if line.startswith("mdmflow_step_duration")]
    assert any(
        'workflow="io.micromdm.wf.devinfolog.v1"' in line and 'outcome="completed"' in line
        for line in lines
    ), lines


def test_a_taken_port_costs_the_metrics_not_the_worker(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MDMFLOW_LOG_FORMAT", raising=False)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        with caplog.at_level(logging.WARNING, logger="mdmflow.worker"):
            assert metrics_runtime(address) is None  # the SDK's default runtime
    assert "SDK metrics not served (MDMFLOW_WORKER_METRICS=" in caplog.text


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, "127.0.0.1:9464"), ("", None), ("off", None), ("OFF", None),
     ("0.0.0.0:9500", "0.0.0.0:9500")],
)  # fmt: skip
def test_worker_metrics_setting(
    monkeypatch: pytest.MonkeyPatch, value: str | None, expected: str | None
) -> None:
    if value is None:
        monkeypatch.delenv("MDMFLOW_WORKER_METRICS", raising=False)
    else:
        monkeypatch.setenv("MDMFLOW_WORKER_METRICS", value)
    assert config.worker_metrics() == expected
