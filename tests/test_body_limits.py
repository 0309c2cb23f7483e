"""Every API body is capped by route before it is read: declared or streamed, 413."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
from fastapi import FastAPI, Request

from mdmflow.body import DEFAULT_LIMIT, MIB, BodyLimit, limit_for


def app() -> FastAPI:
    api = FastAPI()
    api.add_middleware(BodyLimit)

    @api.post("/v1/workflow/{name}/start")
    async def start(name: str, request: Request) -> dict[str, int]:
        return {"read": len(await request.body())}

    @api.put("/v1/event/{name}")
    async def event(name: str, request: Request) -> dict[str, int]:
        return {"read": len(await request.body())}

    return api


async def post(method: str, path: str, content: bytes | AsyncIterator[bytes]) -> int:
    transport = httpx.ASGITransport(app=app())
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        return (await client.request(method, path, content=content)).status_code


async def chunks(total: int, size: int = 256 * 1024) -> AsyncIterator[bytes]:
    for _ in range(total // size):
        yield b"x" * size


def test_limits_follow_the_route() -> None:
    assert limit_for("/v1/profile/wifi") == 32 * MIB
    assert limit_for("/v1/workflow/io.micromdm.wf.lock.v1/start") == 8 * MIB
    assert limit_for("/webhook/token") == 1 * MIB
    assert limit_for("/v1/event/enroll") == DEFAULT_LIMIT


async def test_declared_and_streamed_bodies_over_the_limit_are_413() -> None:
    start = "/v1/workflow/w/start"
    assert await post("POST", start, b"x" * (7 * MIB)) == 200
    assert await post("POST", start, b"x" * (9 * MIB)) == 413
    assert await post("POST", start, chunks(9 * MIB)) == 413  # no Content-Length
    assert await post("PUT", "/v1/event/e", b"x" * 1024) == 200
    assert await post("PUT", "/v1/event/e", chunks(DEFAULT_LIMIT * 2)) == 413
