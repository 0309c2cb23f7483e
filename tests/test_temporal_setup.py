"""``mdmflow temporal setup`` and the start-up check, on namespaces of a real dev server."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from google.protobuf.duration_pb2 import Duration
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.api.workflowservice.v1 import RegisterNamespaceRequest
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

import worker
from mdmflow import cli, search_setup
from mdmflow.cli import main
from mdmflow.temporal_client import connect
from mdmflow.temporal_server import DevServer
from tests.logging_state import restored_logging

NAMES = ["MdmEnrollmentId", "MdmWorkflowName", "MdmInstanceId", "MdmStep"]


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    with restored_logging():
        yield


@pytest.fixture
async def fresh(dev_client: Client, dev_server: DevServer) -> AsyncIterator[Client]:
    """A new namespace: none of our search attributes (the server registers them on
    ``default`` only)."""
    name = f"setup-{uuid.uuid4().hex[:12]}"
    await dev_client.workflow_service.register_namespace(
        RegisterNamespaceRequest(
            namespace=name, workflow_execution_retention_period=Duration(seconds=86400)
        )
    )
    yield await connect(dev_server.address, name)


@pytest.fixture
def env_for(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, dev_server: DevServer
) -> Callable[[str], None]:
    """Point the process settings at a namespace of the dev server."""

    def point_at(namespace: str) -> None:
        monkeypatch.setenv("TEMPORAL_ADDRESS", dev_server.address)
        monkeypatch.setenv("TEMPORAL_NAMESPACE", namespace)
        monkeypatch.setenv("MDMFLOW_VAR_DIR", str(tmp_path / "var"))
        monkeypatch.delenv("MDMFLOW_LOG_FORMAT", raising=False)

    return point_at


async def _setup_cli(capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    code = await asyncio.to_thread(main, ["temporal", "setup"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


async def test_setup_adds_what_is_missing_once(
    fresh: Client, env_for: Callable[[str], None], capsys: pytest.CaptureFixture[str]
) -> None:
    env_for(fresh.namespace)
    assert await search_setup.startup_problem(fresh) is not None
    code, out, _ = await _setup_cli(capsys)
    assert code == 0
    assert out.startswith("added to ") and all(name in out for name in NAMES)
    assert "already" not in out
    found = await search_setup.check(fresh)
    assert found.ok and sorted(found.present) == sorted(NAMES)
    assert await search_setup.startup_problem(fresh) is None

    code, out, _ = await _setup_cli(capsys)  # again: nothing to do
    assert code == 0 and "added" not in out
    assert out.startswith("already on ") and all(name in out for name in NAMES)


async def test_some_present_some_added(
    fresh: Client, env_for: Callable[[str], None], capsys: pytest.CaptureFixture[str]
) -> None:
    await fresh.operator_service.add_search_attributes(
        AddSearchAttributesRequest(
            namespace=fresh.namespace,
            search_attributes={"MdmStep": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD},
        )
    )
    env_for(fresh.namespace)
    code, out, _ = await _setup_cli(capsys)
    added, already = out.splitlines()
    assert code == 0
    assert "MdmStep" in already and "MdmStep" not in added and "MdmEnrollmentId" in added


async def test_a_wrong_type_is_reported_not_papered_over(
    fresh: Client, env_for: Callable[[str], None], capsys: pytest.CaptureFixture[str]
) -> None:
    await fresh.operator_service.add_search_attributes(
        AddSearchAttributesRequest(
            namespace=fresh.namespace,
            search_attributes={"MdmStep": IndexedValueType.INDEXED_VALUE_TYPE_TEXT},
        )
    )
    found = await search_setup.check(fresh)
    assert found.wrong_type == {"MdmStep": "Text"} and "MdmEnrollmentId" in found.missing
    env_for(fresh.namespace)
    code, out, err = await _setup_cli(capsys)
    assert code == 1 and out == ""
    assert "MdmStep as Text, not Keyword" in err
    assert "temporal operator search-attribute remove --name MdmStep" in err


async def test_a_refusing_server_exits_non_zero(
    env_for: Callable[[str], None], capsys: pytest.CaptureFixture[str]
) -> None:
    env_for("no-such-namespace")
    code, out, err = await _setup_cli(capsys)
    assert code == 1 and out == ""
    assert err.startswith("error: Temporal at ") and "refused to list search attributes" in err
    assert "no-such-namespace" in err


def test_a_refusal_by_temporal_cloud_says_where_to_add_them() -> None:
    client = SimpleNamespace(namespace="prod.a1b2c")
    denied = RPCError("Request unauthorized.", RPCStatusCode.PERMISSION_DENIED, b"")
    err = search_setup._refused(client, "prod.a1b2c.tmprl.cloud:7233", "add", denied)  # type: ignore[arg-type]
    text = str(err)
    assert "Request unauthorized." in text and "Cloud UI" in text and "tcld" in text
    assert "MdmEnrollmentId=Keyword" in text
    local = RPCError("bad", RPCStatusCode.INVALID_ARGUMENT, b"")
    assert "tcld" not in str(search_setup._refused(client, "temporal:7233", "add", local))  # type: ignore[arg-type]


async def test_the_worker_refuses_to_start_without_them(
    fresh: Client,
    env_for: Callable[[str], None],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    env_for(fresh.namespace)
    monkeypatch.setenv("MDMFLOW_MDM_URL", "http://127.0.0.1:9")  # never reached
    monkeypatch.setenv("MDMFLOW_WORKER_METRICS", "off")
    with pytest.raises(SystemExit) as exited:
        await worker.run_worker()
    assert exited.value.code == 1
    (record,) = [r for r in caplog.records if r.name == "mdmflow.worker"]
    assert record.levelname == "ERROR"
    assert all(name in record.getMessage() for name in NAMES)
    assert "`mdmflow temporal setup` adds what is missing" in record.getMessage()


async def test_the_embedded_server_needs_no_setup(dev_client: Client) -> None:
    assert await search_setup.startup_problem(dev_client) is None


def test_temporal_help_names_both_actions(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["temporal", "--help"])
    out = capsys.readouterr().out
    assert info.value.code == 0 and "serve" in out and "setup" in out
    parser = cli._build()
    assert parser.parse_args(["temporal"]).func is cli._temporal  # bare: serves, as before
    assert parser.parse_args(["temporal", "serve"]).func is cli._temporal
    assert parser.parse_args(["temporal", "setup"]).func is cli._temporal_setup
