"""A minimal keep-alive HTTP/1.1 client for plain ``http://`` URLs.

Webhook posting dominates the simulator's CPU at fleet scale; a general-purpose client
spends far more per request than the few bytes this needs. One instance is one
connection, used by one worker at a time. ``https://`` URLs go through httpx instead.
"""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import urlsplit


class RawHTTPError(Exception):
    """The request could not be completed (connection, protocol or timeout)."""


class RawHTTPConnection:
    def __init__(self, base_url: str, *, timeout: float = 10.0) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"not a plain http URL: {base_url}")
        self.host = parts.hostname
        self.port = parts.port or 80
        self.host_header = parts.netloc.rsplit("@", 1)[-1]
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.timeout = timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()
        self._reader = self._writer = None

    async def request(
        self,
        method: str,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        path: str | None = None,
    ) -> tuple[int, bytes]:
        """Send one request; returns (status, body). Retries once on a stale connection."""
        for attempt in (0, 1):
            reused = self._writer is not None
            try:
                return await asyncio.wait_for(
                    self._once(method, path or self.path, body, headers or {}), self.timeout
                )
            except _StaleConnection:
                await self.close()
                if not reused or attempt == 1:
                    raise RawHTTPError("connection closed by peer") from None
            except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError) as exc:
                await self.close()
                raise RawHTTPError(repr(exc)) from exc
        raise RawHTTPError("unreachable")

    async def _once(
        self, method: str, path: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int, bytes]:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        reader, writer = self._reader, self._writer
        assert reader is not None
        head = [f"{method} {path} HTTP/1.1", f"Host: {self.host_header}"]
        head += [f"{k}: {v}" for k, v in headers.items()]
        head.append(f"Content-Length: {len(body)}")
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
        await writer.drain()
        status_line = await reader.readline()
        if not status_line:
            raise _StaleConnection
        try:
            status = int(status_line.split(b" ", 2)[1])
        except (IndexError, ValueError) as exc:
            raise ValueError(f"bad status line {status_line!r}") from exc
        length: int | None = None
        chunked = close = False
        while True:
            line = await reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value.strip())
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
            elif name == b"connection" and b"close" in value.lower():
                close = True
        if chunked:
            data = bytearray()
            while True:
                size = int((await reader.readline()).split(b";")[0].strip(), 16)
                if size == 0:
                    await reader.readline()
                    break
                data += await reader.readexactly(size)
                await reader.readexactly(2)
            payload = bytes(data)
        elif length is not None:
            payload = await reader.readexactly(length)
        else:
            payload = await reader.read()
            close = True
        if close:
            await self.close()
        return status, payload


class _StaleConnection(Exception):
    """The peer closed a kept-alive connection before answering."""
