"""Payload encryption: the codec, its key ring, the codec server, and what Temporal stores."""

from __future__ import annotations

import asyncio
import base64
import json
import stat
import subprocess
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from google.protobuf import json_format
from temporalio.api.common.v1 import Payload, Payloads
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from mdmflow import codec
from mdmflow.codec import ENCODING, KEY_ID, EncryptionCodec, KeyRing, PayloadKeyError
from mdmflow.temporal_server import temporal_binary
from starter.api import create_app
from starter.codec_server import codec_app
from tests.conftest import TEST_CONVERTER
from tests.e2e_stack import E2E, INVENTORY
from worker import PASSTHROUGH
from workflows.catalog import ALL_WORKFLOWS
from workflows.models import WorkflowInput

API_KEY = "codec-api-key"
UI = "http://127.0.0.1:8233"


def plain(value: object) -> Payload:
    return pydantic_data_converter.payload_converter.to_payloads([value])[0]


async def test_round_trip_encrypts_and_names_the_key() -> None:
    c = EncryptionCodec(KeyRing.generate("k1"))
    original = plain({"enrollment_id": "ABC-123"})
    (sealed,) = await c.encode([original])
    assert sealed.metadata["encoding"] == ENCODING
    assert sealed.metadata[KEY_ID] == b"k1"
    assert b"ABC-123" not in sealed.data
    assert await c.decode([sealed]) == [original]
    # a fresh nonce each time: equal inputs do not give equal ciphertexts
    assert (await c.encode([original]))[0].data != sealed.data


async def test_rotated_ring_encrypts_with_the_new_key_and_still_opens_the_old() -> None:
    old = KeyRing.generate("k0")
    (sealed_old,) = await EncryptionCodec(old).encode([plain("old")])
    rotated = KeyRing.parse(f"{KeyRing.generate('k1').format()},{old.format()}")
    c = EncryptionCodec(rotated)
    (sealed_new,) = await c.encode([plain("new")])
    assert sealed_new.metadata[KEY_ID] == b"k1"
    assert await c.decode([sealed_old, sealed_new]) == [plain("old"), plain("new")]
    with pytest.raises(PayloadKeyError, match="unknown key 'k1'"):
        await EncryptionCodec(old).decode([sealed_new])


async def test_tampered_ciphertext_or_key_id_is_refused() -> None:
    ring = KeyRing.parse(f"{KeyRing.generate('a').format()},{KeyRing.generate('b').format()}")
    c = EncryptionCodec(ring)
    (sealed,) = await c.encode([plain("secret")])
    flipped = Payload()
    flipped.CopyFrom(sealed)
    flipped.data = sealed.data[:-1] + bytes([sealed.data[-1] ^ 1])
    with pytest.raises(PayloadKeyError, match="failed authentication"):
        await c.decode([flipped])
    relabelled = Payload()
    relabelled.CopyFrom(sealed)
    relabelled.metadata[KEY_ID] = b"b"
    with pytest.raises(PayloadKeyError, match="failed authentication"):
        await c.decode([relabelled])


async def test_plain_payloads_pass_through_decode() -> None:
    c = EncryptionCodec(KeyRing.generate())
    p = plain({"recorded": "before encryption"})
    assert await c.decode([p]) == [p]


def test_key_ring_parse_rejects_bad_keys() -> None:
    short = base64.b64encode(b"x" * 16).decode()
    for text, message in [
        ("", "empty"),
        ("nokey", "expected id:base64key"),
        ("a:!!!", "not valid base64"),
        (f"a:{short}", "32 bytes"),
        ("bad/id:" + "A" * 44, "use letters"),
    ]:
        with pytest.raises(PayloadKeyError, match=message):
            KeyRing.parse(text)
    one = KeyRing.generate("same").format()
    with pytest.raises(PayloadKeyError, match="twice"):
        KeyRing.parse(f"{one},{one}")


def test_key_file_is_created_once_private_and_env_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(codec.ENV_KEYS, raising=False)
    first = codec.load_key_ring(tmp_path)
    path = tmp_path / codec.KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert codec.load_key_ring(tmp_path) == first  # the next start reads the same key
    explicit = KeyRing.generate("env")
    monkeypatch.setenv(codec.ENV_KEYS, explicit.format())
    assert codec.load_key_ring(tmp_path) == explicit


def test_default_converter_follows_the_var_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(codec.ENV_KEYS, raising=False)
    monkeypatch.setenv("MDMFLOW_VAR_DIR", str(tmp_path))
    conv = codec.default_converter()
    assert conv is codec.default_converter()
    assert isinstance(conv.payload_codec, EncryptionCodec)
    assert conv.payload_codec.ring == KeyRing.parse((tmp_path / codec.KEY_FILE).read_text())
    # the project's converter underneath: pydantic models still convert
    assert conv.payload_converter_class is pydantic_data_converter.payload_converter_class


def as_json(*payloads: Payload) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(json_format.MessageToJson(Payloads(payloads=payloads)))
    return body


def from_json(body: dict[str, Any]) -> list[Payload]:
    return list(json_format.ParseDict(body, Payloads()).payloads)


@pytest.fixture
def codec_client() -> httpx.AsyncClient:
    app = codec_app(lambda: TEST_CONVERTER.payload_codec, API_KEY, [UI])
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://codec")


async def test_codec_server_decodes_and_encodes_with_the_api_key(
    codec_client: httpx.AsyncClient,
) -> None:
    (sealed,) = await TEST_CONVERTER.encode([WorkflowInput(enrollment_id="E-1", instance_id="i")])
    body = as_json(sealed)
    assert set(body["payloads"][0]) == {"metadata", "data"}
    async with codec_client as http:
        resp = await http.post("/decode", json=body, auth=("nanocmd", API_KEY))
        assert resp.status_code == 200, resp.text
        (decoded,) = from_json(resp.json())
        assert json.loads(decoded.data)["enrollment_id"] == "E-1"
        assert decoded.metadata["encoding"] == b"json/plain"
        bearer = {"Authorization": f"Bearer {API_KEY}"}
        resp = await http.post("/encode", json=as_json(decoded), headers=bearer)
        (encoded,) = from_json(resp.json())
        assert encoded.metadata["encoding"] == ENCODING
        assert await TEST_CONVERTER.decode([encoded], [WorkflowInput]) == [
            WorkflowInput(enrollment_id="E-1", instance_id="i")
        ]
        bad = await http.post("/decode", json={"payloads": [{"data": "AAAA"}]}, auth=("x", "y"))
        assert bad.status_code == 401
        assert (await http.post("/decode", json=body)).status_code == 401
        wrong = await http.post("/decode", json=body, auth=("nanocmd", "guess"))
        assert wrong.status_code == 401
        assert (
            await http.post("/decode", content=b"{", auth=("nanocmd", API_KEY))
        ).status_code == 400


async def test_codec_server_cors_preflight_needs_no_key(codec_client: httpx.AsyncClient) -> None:
    preflight = {
        "Origin": UI,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type,x-namespace,authorization",
    }
    async with codec_client as http:
        resp = await http.options("/decode", headers=preflight)
        assert resp.status_code == 200
        assert resp.headers["access-control-allow-origin"] == UI
        assert resp.headers["access-control-allow-credentials"] == "true"
        assert "x-namespace" in resp.headers["access-control-allow-headers"].lower()
        other = await http.options("/decode", headers={**preflight, "Origin": "http://evil"})
        assert "access-control-allow-origin" not in other.headers
        # an answer (even a refusal) carries the header, so the UI can read it
        resp = await http.post("/decode", json={"payloads": []}, headers={"Origin": UI})
        assert resp.status_code == 401
        assert resp.headers["access-control-allow-origin"] == UI


async def test_api_serves_the_codec_of_its_temporal_client() -> None:
    app = create_app(lambda: None, API_KEY)  # type: ignore[arg-type, return-value]
    app.state.services = SimpleNamespace(client=SimpleNamespace(data_converter=TEST_CONVERTER))
    (sealed,) = await TEST_CONVERTER.encode(["from the API"])
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as http:
        resp = await http.post("/codec/decode", json=as_json(sealed), auth=("nanocmd", API_KEY))
    assert resp.status_code == 200, resp.text
    assert from_json(resp.json())[0].data == b'"from the API"'


async def test_replayer_reads_encrypted_histories(time_env: WorkflowEnvironment) -> None:
    from temporalio.worker import Worker

    from protocol import routing
    from tests.workflow_harness import RecordingInventory, RecordingMdm, enrollment
    from workflows.lock import LockWorkflow

    mdm, inv = RecordingMdm(), RecordingInventory()
    queue = f"codec-{uuid.uuid4()}"
    runner = SandboxedWorkflowRunner(
        restrictions=SandboxRestrictions.default.with_passthrough_modules(*PASSTHROUGH)
    )
    eid = enrollment()
    async with Worker(
        time_env.client,
        task_queue=queue,
        workflows=list(ALL_WORKFLOWS),
        activities=[mdm.send_step, mdm.push, inv.store, inv.log_device_information],
        workflow_runner=runner,
    ):
        handle = await time_env.client.start_workflow(
            LockWorkflow.NAME,
            WorkflowInput(enrollment_id=eid, instance_id=str(uuid.uuid4())),
            id=routing.workflow_id(LockWorkflow.NAME, eid),
            task_queue=queue,
        )
        await mdm.wait_sent(len(mdm.sent) + 1)
        await handle.terminate("enough")
        history = await handle.fetch_history()
    assert eid.encode() not in history.events[0].SerializeToString()
    replayer = Replayer(
        workflows=list(ALL_WORKFLOWS), data_converter=TEST_CONVERTER, workflow_runner=runner
    )
    result = await replayer.replay_workflow(
        WorkflowHistory.from_json(handle.id, history.to_json()), raise_on_replay_failure=True
    )
    assert result.replay_failure is None


def payloads_in(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    """Every payload (``{"metadata": ..., "data": ...}``) in a JSON history, with its path."""
    found: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        if (
            "metadata" in node
            and isinstance(node["metadata"], dict)
            and "encoding" in node["metadata"]
        ):
            return [(path, node)]
        for k, v in node.items():
            if k == "searchAttributes":  # indexed by the server: never encoded
                continue
            if path.endswith("markerRecordedEventAttributes.details") and k == "data":
                continue  # the SDK core's local-activity bookkeeping (seq, attempt, type)
            found += payloads_in(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            found += payloads_in(v, f"{path}[{i}]")
    return found


async def test_temporal_stores_only_encrypted_payloads(e2e: E2E) -> None:
    """A real inventory run (API, worker, relay, simulator) on the dev server."""
    (eid,) = await e2e.enroll(1)
    await e2e.start(INVENTORY, eid)
    assert (await e2e.result(INVENTORY, eid))["status"] == "completed"
    out = await asyncio.to_thread(
        subprocess.run,
        [
            temporal_binary(),
            "workflow",
            "show",
            "--address",
            e2e.temporal.address,
            "--workflow-id",
            await e2e.run_of(INVENTORY, eid),
            "--output",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    history = json.loads(out.stdout)  # (the enrollment ID is in the workflow ID, in clear)
    found = payloads_in(history)
    # input, signals (device reports), activity arguments and results, the result
    assert len(found) >= 6, found
    wrong = [p for p, body in found if base64.b64decode(body["metadata"]["encoding"]) != ENCODING]
    assert not wrong, wrong
    assert not [p for p, body in found if eid.encode() in base64.b64decode(body["data"])]
    # the API's codec server opens them again
    first = found[0][1]
    resp = await e2e.api.post("/codec/decode", json={"payloads": [first]})
    assert resp.status_code == 200, resp.text
    assert eid in base64.b64decode(resp.json()["payloads"][0]["data"]).decode()
