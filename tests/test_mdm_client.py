"""How the MDM client judges NanoMDM's answers (MicroMDM's: ``test_micromdm.py``).

The answers are NanoMDM's documented shapes (``docs_openapi.yaml``: APIResult) served by
an in-process transport, including the cases the simulator does not produce, such as
a server without a push certificate.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from activities.mdm_server import (
    NanoMdmClient,
    PermanentMdmError,
    TransientMdmError,
)

EID = "C9E587FA-CC62-45BE-A3EF-2B24708B500F"
UUID = "mf.inv.-.0123456789"
BODY = b"<?xml version='1.0'?><plist/>"


def nanomdm(handler: Callable[[httpx.Request], httpx.Response]) -> NanoMdmClient:
    client = NanoMdmClient("http://mdm.test", "secret")
    client._http._transport = httpx.MockTransport(handler)
    return client


def answer(
    status: int, doc: dict[str, Any] | None = None, text: str = ""
) -> Callable[[httpx.Request], httpx.Response]:
    def handler(request: httpx.Request) -> httpx.Response:
        if doc is None:
            return httpx.Response(status, text=text)
        return httpx.Response(status, json=doc)

    return handler


async def test_enqueue_uses_nopush_basic_auth_and_reports_queued() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(
            200, json={"no_push": True, "command_uuid": UUID, "request_type": "X"}
        )

    outcome = await nanomdm(handler).enqueue([EID], UUID, BODY, push=False)
    assert outcome.queued == [EID]
    (req,) = seen
    assert req.method == "PUT" and req.url.path == f"/v1/enqueue/{EID}"
    assert req.url.params["nopush"] == "1"
    assert req.headers["authorization"] == "Basic bmFub21kbTpzZWNyZXQ="  # nanomdm:secret
    assert req.content == BODY


async def test_500_with_only_push_error_is_queued() -> None:
    doc = {
        "status": {EID: {"push_error": "no push certificate"}},
        "push_error": "push failed",
        "command_uuid": UUID,
    }
    outcome = await nanomdm(answer(500, doc)).enqueue([EID], UUID, BODY, push=True)
    assert outcome.queued == [EID]
    assert outcome.push_error == "no push certificate"


async def test_duplicate_uuid_counts_as_already_queued() -> None:
    doc = {
        "command_error": "storing command: Error 1062 (23000): "
        f"Duplicate entry '{UUID}' for key 'commands.PRIMARY'"
    }
    outcome = await nanomdm(answer(500, doc)).enqueue([EID], UUID, BODY, push=False)
    assert outcome.already_queued == [EID] and outcome.queued == []


@pytest.mark.parametrize(
    ("handler", "error", "text"),
    [
        (answer(401, text="Unauthorized"), PermanentMdmError, "API key"),
        (answer(400, text="bad plist"), PermanentMdmError, "bad plist"),
        (
            answer(
                500,
                {
                    "command_error": "Cannot add or update a child row: "
                    "a foreign key constraint fails"
                },
            ),
            PermanentMdmError,
            "does not know enrollment",
        ),
        (
            answer(500, {"command_error": "database is locked"}),
            TransientMdmError,
            "database is locked",
        ),
        (answer(502, text="bad gateway"), TransientMdmError, "502"),
        (answer(503, None, ""), TransientMdmError, "503"),
    ],
)
async def test_failures_are_classified(
    handler: Callable[[httpx.Request], httpx.Response], error: type[Exception], text: str
) -> None:
    with pytest.raises(error, match=text):
        await nanomdm(handler).enqueue([EID], UUID, BODY, push=False)


async def test_unreachable_server_is_transient() -> None:
    client = NanoMdmClient("http://127.0.0.1:1", "k", timeout=2)
    with pytest.raises(TransientMdmError, match="unreachable"):
        await client.enqueue([EID], UUID, BODY, push=False)
    await client.aclose()


async def test_many_ids_are_chunked_and_per_id_errors_are_read() -> None:
    paths: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        ids = request.url.path.removeprefix("/v1/enqueue/").split(",")
        paths.append(request.url.path)
        status = {i: {"command_error": "Duplicate entry"} for i in ids if i.endswith("7")}
        return httpx.Response(207 if status else 200, json={"status": status})

    ids = [f"DEV-{n:04d}" for n in range(250)]
    outcome = await nanomdm(handler).enqueue(ids, UUID, BODY, push=False)
    assert len(paths) == 3
    assert len(outcome.queued) + len(outcome.already_queued) == 250
    assert all(i.endswith("7") for i in outcome.already_queued)


async def test_push_collects_per_id_errors() -> None:
    doc = {"status": {EID: {"push_error": "BadDeviceToken"}}}
    assert await nanomdm(answer(200, doc)).push([EID]) == f"{EID}: BadDeviceToken"
    assert await nanomdm(answer(200, {"status": {EID: {"push_result": "ok"}}})).push([EID]) is None
