"""Webhook events as NanoMDM 0.9 (or 0.8, or MicroMDM 1.13) posts them, and their delivery.

Delivery is fire-and-forget like NanoMDM's: one shared HTTP client, a fixed pool of
workers (bounded concurrency), no retries, failures only counted and logged. Events of
one device always go to the same worker so they arrive in order, unless the reorder
fault holds one back on purpose. Fault decisions come from one seeded RNG in
submission order, so a run is reproducible by seed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import logging
import random
import time
import zlib
from collections import deque
from typing import Any, Literal
from urllib.parse import unquote, urlsplit, urlunsplit

import httpx

from simulator import gojson
from simulator.rawhttp import RawHTTPConnection, RawHTTPError

log = logging.getLogger(__name__)

WebhookFormat = Literal["nanomdm", "nanomdm08", "micromdm"]

_SEND, _DUPLICATE, _REORDER = 0, 1, 2


def rfc3339nano(ns: int) -> str:
    """Go's ``time.RFC3339Nano`` in UTC: trailing zeros of the fraction trimmed."""
    secs, frac = divmod(ns, 1_000_000_000)
    base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs))
    digits = f"{frac:09d}".rstrip("0")
    return f"{base}.{digits}Z" if digits else f"{base}Z"


def event_body(
    *,
    fmt: WebhookFormat,
    topic: str,
    event_id: str,
    udid: str,
    enrollment_id: str,
    enrollment_type: str,
    raw_payload: bytes,
    status: str | None = None,
    command_uuid: str | None = None,
    token_update_tally: int | None = None,
    url_params: dict[str, str] | None = None,
) -> bytes:
    """Serialise one webhook exactly like the live captures of ``fmt``'s server.

    NanoMDM writes compact JSON with sorted keys; MicroMDM see :func:`micromdm_event`.
    """
    if fmt == "micromdm":
        return micromdm_event(
            topic=topic,
            event_id=event_id,
            udid=udid,
            raw_payload=raw_payload,
            status=status,
            command_uuid=command_uuid,
            url_params=url_params,
        )
    event: dict[str, Any] = {"udid": udid, "raw_payload": base64.b64encode(raw_payload).decode()}
    if fmt == "nanomdm":
        event["ids"] = {"id": enrollment_id, "type": enrollment_type}
    if url_params:
        event["url_params"] = url_params
    if status is not None:
        event["status"] = status
        if command_uuid:
            event["command_uuid"] = command_uuid
        kind = "acknowledge_event"
    else:
        if token_update_tally is not None:
            event["token_update_tally"] = token_update_tally
        kind = "checkin_event"
    doc = {
        "topic": topic,
        "event_id": event_id,
        "created_at": rfc3339nano(time.time_ns()),
        kind: event,
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def micromdm_event(
    *,
    topic: str,
    event_id: str,
    udid: str,
    raw_payload: bytes,
    status: str | None = None,
    command_uuid: str | None = None,
    url_params: dict[str, str] | None = None,
) -> bytes:
    """MicroMDM's webhook: its Go structs' field order, ``MarshalIndent`` with two spaces.

    A check-in always carries ``url_params`` (``null`` without any); an acknowledge
    omits an empty ``command_uuid`` (Idle) and absent ``url_params``. No ``ids``, no
    ``token_update_tally``: MicroMDM has neither.
    """
    raw = base64.b64encode(raw_payload).decode()
    doc: dict[str, Any] = {
        "topic": topic,
        "event_id": event_id,
        "created_at": rfc3339nano(time.time_ns()),
    }
    if status is not None:
        ack: dict[str, Any] = {"udid": udid, "status": status}
        if command_uuid:
            ack["command_uuid"] = command_uuid
        if url_params:
            ack["url_params"] = url_params
        ack["raw_payload"] = raw
        doc["acknowledge_event"] = ack
    else:
        doc["checkin_event"] = {"udid": udid, "url_params": url_params, "raw_payload": raw}
    return gojson.marshal_indent(doc)


def content_type(fmt: WebhookFormat) -> str:
    """The Content-Type the server of ``fmt`` posts its webhooks with."""
    return "application/json; charset=utf-8" if fmt == "micromdm" else "application/json"


def split_credentials(url: str) -> tuple[str, str | None]:
    """The URL without ``user:secret@`` and the Basic header Go's HTTP client makes of it.

    MicroMDM cannot sign webhooks; credentials in its webhook URL are how it proves itself.
    """
    parts = urlsplit(url)
    if parts.username is None:
        return url, None
    pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
    netloc = parts.netloc.rsplit("@", 1)[1]
    bare = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    return bare, "Basic " + base64.b64encode(pair).decode()


def signature(key: str, body: bytes) -> str:
    return base64.b64encode(hmac.new(key.encode(), body, hashlib.sha256).digest()).decode()


class WebhookSender:
    """Posts webhook bodies to one URL with faults (drop, duplicate, reorder) applied."""

    def __init__(
        self,
        url: str,
        *,
        stats: dict[str, int],
        hmac_key: str | None = None,
        content_type: str = "application/json",
        workers: int = 16,
        seed: int = 0,
        drop_rate: float = 0.0,
        duplicate_rate: float = 0.0,
        reorder_rate: float = 0.0,
        hold_timeout: float = 0.2,
    ) -> None:
        self.url, self.authorization = split_credentials(url)
        self.hmac_key = hmac_key
        self.content_type = content_type
        self._stats = stats
        self._nworkers = max(1, workers)
        self._queues: list[asyncio.Queue[tuple[bytes, int]]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._client: httpx.AsyncClient | None = None
        self.hold_timeout = hold_timeout
        self.pending = 0  # accepted but not yet posted (including held-back ones)
        # (submission index, action) for faults applied: lets tests compare two runs.
        self.fault_log: deque[tuple[int, str]] = deque(maxlen=10_000)
        self._submitted = 0
        self.configure(
            seed=seed, drop_rate=drop_rate, duplicate_rate=duplicate_rate, reorder_rate=reorder_rate
        )

    def configure(
        self,
        *,
        seed: int | None = None,
        drop_rate: float | None = None,
        duplicate_rate: float | None = None,
        reorder_rate: float | None = None,
    ) -> None:
        """Change fault rates; a new seed restarts the fault sequence."""
        if seed is not None:
            self.seed = seed
            self._rng = random.Random(f"{seed}:faults")
            self._submitted = 0
            self.fault_log.clear()
        if drop_rate is not None:
            self.drop_rate = drop_rate
        if duplicate_rate is not None:
            self.duplicate_rate = duplicate_rate
        if reorder_rate is not None:
            self.reorder_rate = reorder_rate

    def faults(self) -> dict[str, float | int]:
        return {
            "drop_rate": self.drop_rate,
            "duplicate_rate": self.duplicate_rate,
            "reorder_rate": self.reorder_rate,
            "seed": self.seed,
        }

    async def start(self) -> None:
        if self._tasks:
            return
        limits = httpx.Limits(
            max_connections=self._nworkers, max_keepalive_connections=self._nworkers
        )
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(10.0), limits=limits)
        self._queues = [asyncio.Queue() for _ in range(self._nworkers)]
        self._tasks = [asyncio.create_task(self._worker(q)) for q in self._queues]

    def _connection(self) -> RawHTTPConnection | None:
        """A worker's own keep-alive connection for http:// URLs; None means use httpx."""
        if not self.url.startswith("http://"):
            return None
        return RawHTTPConnection(self.url, timeout=10.0)

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks = []
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def submit(self, key: str, body: bytes) -> None:
        """Queue one webhook; ``key`` (the device) picks the worker that keeps its order."""
        index = self._submitted
        self._submitted += 1
        # Always draw three numbers so one fault's rate never shifts another's sequence.
        r_drop, r_dup, r_reorder = self._rng.random(), self._rng.random(), self._rng.random()
        if r_drop < self.drop_rate:
            self._stats["webhooks_dropped"] += 1
            self.fault_log.append((index, "drop"))
            return
        action = _SEND
        if r_dup < self.duplicate_rate:
            action = _DUPLICATE
            self._stats["webhooks_duplicated"] += 1
            self.fault_log.append((index, "duplicate"))
        elif r_reorder < self.reorder_rate:
            action = _REORDER
            self._stats["webhooks_reordered"] += 1
            self.fault_log.append((index, "reorder"))
        if not self._queues:
            self._stats["webhooks_failed"] += 1
            log.warning("webhook sender not started; event discarded")
            return
        self.pending += 1
        self._queues[zlib.crc32(key.encode()) % self._nworkers].put_nowait((body, action))

    async def _worker(self, queue: asyncio.Queue[tuple[bytes, int]]) -> None:
        conn = self._connection()
        try:
            await self._work(queue, conn)
        finally:
            if conn is not None:
                await conn.close()

    async def _work(
        self, queue: asyncio.Queue[tuple[bytes, int]], conn: RawHTTPConnection | None
    ) -> None:
        held: list[bytes] = []
        while True:
            if held:
                try:
                    body, action = await asyncio.wait_for(queue.get(), self.hold_timeout)
                except TimeoutError:
                    await self._flush(held, conn)
                    continue
            else:
                body, action = await queue.get()
            if action == _REORDER:
                held.append(body)  # sent after the next event of this worker
                continue
            await self._post(body, conn)
            if action == _DUPLICATE:
                await self._post(body, conn)
            self.pending -= 1
            await self._flush(held, conn)

    async def _flush(self, held: list[bytes], conn: RawHTTPConnection | None) -> None:
        while held:
            await self._post(held.pop(0), conn)
            self.pending -= 1

    async def _post(self, body: bytes, conn: RawHTTPConnection | None) -> None:
        headers = {"Content-Type": self.content_type}
        if self.hmac_key:
            headers["X-Hmac-Signature"] = signature(self.hmac_key, body)
        if self.authorization:
            headers["Authorization"] = self.authorization
        try:
            if conn is not None:
                status, text = await conn.request("POST", body, headers)
            else:
                assert self._client is not None
                resp = await self._client.post(self.url, content=body, headers=headers)
                status, text = resp.status_code, resp.content
        except (RawHTTPError, httpx.HTTPError) as exc:
            self._stats["webhooks_failed"] += 1
            log.debug("webhook POST failed: %r", exc)
            return
        except Exception:  # fire-and-forget: nothing may crash the fleet
            self._stats["webhooks_failed"] += 1
            log.exception("webhook POST failed unexpectedly")
            return
        self._stats["webhooks_sent"] += 1
        if status != 200:
            self._stats["webhooks_non_200"] += 1
            log.info("webhook answered HTTP %d: %s", status, text[:200])
