"""What every API request passes first: no control characters in the URL (400, never a
database error), and who is calling before any body is read (401, nothing parsed)."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator

import httpx
import pytest
from temporalio.client import Client

from bench.servers import RestartableServer
from mdmflow.services import Services
from starter.api import create_app
from store.db import open_engine

KEY = "guard-key"


@pytest.fixture
async def api(dev_client: Client, db_url: str) -> AsyncIterator[httpx.AsyncClient]:
    engine = await open_engine(db_url)
    services = Services.create(dev_client, engine, "guard-queue", bytes(32))
    async with (
        RestartableServer(create_app(services, KEY)) as server,
        httpx.AsyncClient(base_url=server.url, auth=("nanocmd", KEY)) as http,
    ):
        yield http
    await engine.dispose()


@pytest.mark.parametrize(
    "method,url",
    [
        ("GET", "/v1/inventory?id=A%00B"),
        ("GET", "/v1/devinfolog?id=A%01B"),
        ("GET", "/v1/escrow/A%00B"),
        ("GET", "/v1/escrow/A%00B/access"),
        ("GET", "/v1/runs?id=A%00B"),
        ("GET", "/v1/event/A%00B"),
        ("DELETE", "/v1/event/A%00B"),
        ("GET", "/v1/cmdplan/A%7FB"),
        ("GET", "/v1/profile/A%0AB"),
        ("GET", "/v1/audit?id=A%00B"),
        ("POST", "/v1/runs/cancel?id=A%00B"),
    ],
)
async def test_control_characters_in_a_url_are_400_on_every_store(
    api: httpx.AsyncClient, method: str, url: str
) -> None:
    resp = await api.request(method, url)
    assert resp.status_code == 400, resp.text
    assert resp.json() == {"error": "control characters are not allowed in the URL"}


async def test_nothing_is_parsed_before_the_caller_is_known(api: httpx.AsyncClient) -> None:
    broken = b"{bad json"
    for auth in (None, ("nanocmd", "wrong"), ("nobody", "x")):
        for method, url in (("PUT", "/v1/event/x"), ("POST", "/v1/workflow/w/start")):
            resp = await api.request(method, url, content=broken, auth=auth)  # type: ignore[arg-type]
            assert resp.status_code == 401, (auth, url, resp.text)
            assert resp.headers["www-authenticate"] == 'Basic realm="mdmflow"'
    mangled = {"Authorization": "Basic " + base64.b64encode(b"no-colon").decode()}
    assert (await api.get("/v1/events", headers=mangled, auth=None)).status_code == 401
    # known: now the body is read, and its problem is the answer
    assert (await api.put("/v1/event/x", content=broken)).status_code == 400


async def test_codec_junk_is_400_in_the_one_error_shape(api: httpx.AsyncClient) -> None:
    assert (await api.post("/codec/decode", content=b"\xff\xfe")).status_code == 400
    short = b'{"payloads": [{"metadata": {"encoding": "YmluYXJ5L2VuY3J5cHRlZA==", '
    short += b'"encryption-key-id": "dGVzdA=="}, "data": "AA=="}]}'
    resp = await api.post("/codec/decode", content=short)
    assert resp.status_code == 400 and "error" in resp.json(), resp.text
    missing = await api.get("/codec/nope")
    assert missing.status_code == 404 and set(missing.json()) == {"error"}


async def test_a_manifest_url_that_is_no_url_is_refused(api: httpx.AsyncClient) -> None:
    for url in ("not a url", "ftp://apps.example.com/a.plist", "https://"):
        resp = await api.put("/v1/cmdplan/bad", json={"manifest_urls": [url]})
        assert resp.status_code == 400, (url, resp.text)
    ok = {"manifest_urls": ["https://apps.example.com/${dept:staff}/a.plist"]}
    assert (await api.put("/v1/cmdplan/good", json=ok)).status_code == 204
