"""Every error answer has the one documented shape ``{"error": "..."}``, routing's too."""

from __future__ import annotations

import httpx
import pytest

from starter.api import create_app


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/no/such/route", 404),
        ("DELETE", "/version", 405),
        ("GET", "/v1/runs/state", 400),  # a required query parameter missing
        ("GET", "/v1/runs", 401),  # no credentials
    ],
)
async def test_error_answers_share_one_shape(method: str, path: str, status: int) -> None:
    app = create_app(None, "key")  # type: ignore[arg-type]  # errors need no services
    auth = None if status == 401 else ("nanocmd", "key")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        resp = await client.request(method, path, auth=auth)
    assert resp.status_code == status
    body = resp.json()
    assert list(body) == ["error"] and body["error"]
