"""A loopback uvicorn server in the caller's event loop, stoppable and restartable on
the same port (benchmarks, chaos runs and tests use it as ``async with``).

Chaos runs take the simulator or the relay away and bring it back where clients expect
it; ``SO_REUSEADDR`` lets the port be bound again while old connections linger. The
first socket is bound and listening from construction, so nothing started meanwhile
(the Temporal dev server picks several free ports of its own) can take the port.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import uvicorn


def listening_socket(port: int = 0) -> socket.socket:
    """A loopback listener on ``port`` (0: any free one), held until it is closed."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(2048)
    return sock


class RestartableServer:
    def __init__(self, app: Any, sock: socket.socket | None = None) -> None:
        self.app = app
        self._sock: socket.socket | None = sock or listening_socket()
        self.port: int = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None

    async def start(self) -> None:
        if self._task is not None:
            return
        if self._sock is None:
            self._sock = listening_socket(self.port)
        sock = self._sock
        config = uvicorn.Config(
            self.app, log_level="warning", access_log=False, lifespan="on", backlog=2048
        )
        self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        while not self._server.started:
            if self._task.done():
                self._task.result()
            await asyncio.sleep(0.01)

    async def __aenter__(self) -> RestartableServer:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        """Close the listening socket and every open connection (clients see resets)."""
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        await self._task
        self._task = None
        self._server = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class Outage:
    """ASGI wrapper answering 500 for every request while ``failing`` is set."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.failing = False
        self.refused = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and self.failing:
            self.refused += 1
            await send(
                {
                    "type": "http.response.start",
                    "status": 500,
                    "headers": [(b"content-type", b"text/plain")],
                }
            )
            await send({"type": "http.response.body", "body": b"internal error\n"})
            return
        await self.app(scope, receive, send)
