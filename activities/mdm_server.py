"""HTTP clients for the MDM server's command API: NanoMDM and MicroMDM.

Every failure is classified: :class:`PermanentMdmError` (a person must fix something:
wrong API key, a command the server refuses, an unknown enrollment) or
:class:`TransientMdmError` (the server is down or overloaded: retry). NanoCMD logged and
dropped enqueue errors; here they reach the workflow.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import quote

import httpx

log = logging.getLogger("mdmflow.mdm")

# NanoMDM puts IDs in the URL path; keep URLs well under common 8 KiB limits.
ENQUEUE_CHUNK = 100


class MdmError(Exception):
    pass


class PermanentMdmError(MdmError):
    """Retrying cannot help; the message says what to fix."""


class TransientMdmError(MdmError):
    """The server could not take the request now; retrying may help."""


@dataclass
class EnqueueOutcome:
    queued: list[str] = field(default_factory=list)
    already_queued: list[str] = field(default_factory=list)
    push_error: str | None = None


class MdmServerClient(Protocol):
    async def enqueue(
        self, ids: Sequence[str], command_uuid: str, body: bytes, *, push: bool
    ) -> EnqueueOutcome: ...

    async def push(self, ids: Sequence[str]) -> str | None: ...

    async def aclose(self) -> None: ...


def _is_duplicate(error: str) -> bool:
    text = error.lower()
    return "duplicate" in text or "unique constraint" in text or "already exists" in text


def _is_unknown_enrollment(error: str) -> bool:
    text = error.lower()
    return "foreign key" in text or "unknown enrollment" in text or "not found" in text


class NanoMdmClient:
    """NanoMDM's ``/v1/enqueue`` and ``/v1/push`` API (HTTP Basic ``nanomdm:<key>``)."""

    def __init__(self, base_url: str, api_key: str, *, timeout: float = 30.0) -> None:
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            auth=("nanomdm", api_key),
            timeout=timeout,
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=32),
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            return await self._http.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise TransientMdmError(f"MDM server unreachable: {exc!r}") from exc

    async def enqueue(
        self, ids: Sequence[str], command_uuid: str, body: bytes, *, push: bool
    ) -> EnqueueOutcome:
        outcome = EnqueueOutcome()
        for start in range(0, len(ids), ENQUEUE_CHUNK):
            chunk = list(ids[start : start + ENQUEUE_CHUNK])
            path = "/v1/enqueue/" + ",".join(quote(i, safe="") for i in chunk)
            resp = await self._request(
                "PUT",
                path,
                params=None if push else {"nopush": "1"},
                content=body,
                headers={"Content-Type": "application/xml"},
            )
            self._interpret_enqueue(resp, chunk, command_uuid, outcome)
        return outcome

    @staticmethod
    def _interpret_enqueue(
        resp: httpx.Response, ids: list[str], command_uuid: str, outcome: EnqueueOutcome
    ) -> None:
        """Decide "queued?" from ``command_error``, never from the HTTP status alone.

        Without a push certificate NanoMDM answers 500 with only ``push_error`` although
        the command is queued; a re-sent UUID's duplicate error means it is queued too.
        """
        if resp.status_code == 401:
            raise PermanentMdmError(
                "MDM server rejected the API key (401): check MDMFLOW_MDM_API_KEY"
            )
        if resp.status_code in (400, 413, 415):
            raise PermanentMdmError(
                f"MDM server refused command {command_uuid} ({resp.status_code}): "
                f"{resp.text.strip()[:300]}"
            )
        try:
            doc = resp.json()
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            if resp.status_code >= 500 or resp.status_code == 429:
                raise TransientMdmError(f"MDM server error {resp.status_code} on enqueue")
            raise PermanentMdmError(
                f"unexpected MDM server answer {resp.status_code}: {resp.text.strip()[:300]}"
            )
        statuses = doc.get("status") if isinstance(doc.get("status"), dict) else {}
        top_error = str(doc.get("command_error") or "")
        for enrollment in ids:
            per_id = statuses.get(enrollment) if isinstance(statuses, dict) else None
            error = top_error
            if isinstance(per_id, dict) and per_id.get("command_error"):
                error = str(per_id["command_error"])
            if not error:
                outcome.queued.append(enrollment)
            elif _is_duplicate(error):
                outcome.already_queued.append(enrollment)
            elif _is_unknown_enrollment(error):
                raise PermanentMdmError(
                    f"MDM server does not know enrollment {enrollment!r}: {error}"
                )
            else:
                raise TransientMdmError(f"MDM server could not queue {command_uuid}: {error}")
            if isinstance(per_id, dict) and per_id.get("push_error"):
                outcome.push_error = str(per_id["push_error"])
        if doc.get("push_error") and not outcome.push_error:
            outcome.push_error = str(doc["push_error"])

    async def push(self, ids: Sequence[str]) -> str | None:
        errors: list[str] = []
        for start in range(0, len(ids), ENQUEUE_CHUNK):
            chunk = ids[start : start + ENQUEUE_CHUNK]
            resp = await self._request(
                "GET", "/v1/push/" + ",".join(quote(i, safe="") for i in chunk)
            )
            if resp.status_code == 401:
                raise PermanentMdmError("MDM server rejected the API key (401) on push")
            try:
                doc = resp.json()
            except ValueError:
                doc = {}
            if doc.get("push_error"):
                errors.append(str(doc["push_error"]))
            for enrollment, st in (doc.get("status") or {}).items():
                if isinstance(st, dict) and st.get("push_error"):
                    errors.append(f"{enrollment}: {st['push_error']}")
            if resp.status_code >= 500 and not errors:
                errors.append(f"push answered {resp.status_code}")
        return "; ".join(errors) or None


class MicroMdmClient:
    """MicroMDM's ``/v1/commands`` and ``/v1/push`` API (HTTP Basic ``micromdm:<key>``).

    One ID per call; a user channel is addressed by its bare UserID.
    """

    def __init__(self, base_url: str, api_key: str, *, timeout: float = 30.0) -> None:
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"), auth=("micromdm", api_key), timeout=timeout
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    @staticmethod
    def _target(enrollment_id: str) -> str:
        return enrollment_id.split(":", 1)[1] if ":" in enrollment_id else enrollment_id

    async def enqueue(
        self, ids: Sequence[str], command_uuid: str, body: bytes, *, push: bool
    ) -> EnqueueOutcome:
        outcome = EnqueueOutcome()
        for enrollment in ids:
            try:
                resp = await self._http.post(
                    f"/v1/commands/{quote(self._target(enrollment), safe='')}", content=body
                )
            except httpx.HTTPError as exc:
                raise TransientMdmError(f"MDM server unreachable: {exc!r}") from exc
            if resp.status_code == 401:
                raise PermanentMdmError("MicroMDM rejected the API key (401)")
            if resp.status_code >= 500 or resp.status_code == 429:
                raise TransientMdmError(f"MicroMDM error {resp.status_code} on enqueue")
            if resp.status_code not in (200, 201):
                raise PermanentMdmError(
                    f"MicroMDM refused command {command_uuid} ({resp.status_code}): "
                    f"{resp.text.strip()[:300]}"
                )
            outcome.queued.append(enrollment)
        if push:
            outcome.push_error = await self.push(ids)
        return outcome

    async def push(self, ids: Sequence[str]) -> str | None:
        errors = []
        for enrollment in ids:
            try:
                resp = await self._http.post(f"/v1/push/{quote(self._target(enrollment), safe='')}")
            except httpx.HTTPError as exc:
                raise TransientMdmError(f"MDM server unreachable: {exc!r}") from exc
            if resp.status_code >= 300:
                errors.append(f"{enrollment}: push answered {resp.status_code}")
        return "; ".join(errors) or None


def make_client(kind: str, base_url: str, api_key: str) -> MdmServerClient:
    if kind == "nanomdm":
        return NanoMdmClient(base_url, api_key)
    if kind == "micromdm":
        return MicroMdmClient(base_url, api_key)
    raise ValueError(f"unknown MDM server kind {kind!r} (nanomdm or micromdm)")
