"""HTTP clients for the MDM server's command API: NanoMDM and MicroMDM.

Every failure is classified: :class:`PermanentMdmError` (a person must fix something:
wrong API key, a command the server refuses, an unknown enrollment) or
:class:`TransientMdmError` (the server is down or overloaded: retry). NanoCMD logged and
dropped enqueue errors; here they reach the workflow.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable
from urllib.parse import quote

import httpx

log = logging.getLogger("mdmflow.mdm")

# NanoMDM puts IDs in the URL path; keep URLs well under common 8 KiB limits.
ENQUEUE_CHUNK = 100
# A fleet enqueue's longest path. NanoMDM stores a CommandUUID in one request only, so a
# fleet send cannot split a command's IDs over several; httpx refuses URLs over 64 KiB
# (NanoMDM itself takes up to 1 MiB). 1,000 UDIDs take about 37,000 characters.
FLEET_PATH_MAX = 60_000
# Times a fleet enqueue refused for an unknown enrollment is narrowed down and re-sent.
FLEET_UNKNOWN_ROUNDS = 3


class MdmError(Exception):
    pass


class PermanentMdmError(MdmError):
    """Retrying cannot help; the message says what to fix."""


class TransientMdmError(MdmError):
    """The server could not take the request now; retrying may help."""


class UncertainMdmError(TransientMdmError):
    """The request went out but its answer was lost: the command may be queued.

    Harmless to retry on a server that refuses a CommandUUID it holds (NanoMDM); on one
    that queues every copy (MicroMDM) a retry could run the command twice.
    """


# Looks up the address an MDM server keys an enrollment by (None: not recorded).
AddressBook = Callable[[str], Awaitable[str | None]]


@dataclass
class EnqueueOutcome:
    queued: list[str] = field(default_factory=list)
    already_queued: list[str] = field(default_factory=list)
    push_error: str | None = None


@dataclass
class FleetEnqueueOutcome:
    """One command enqueued for many enrollments, told apart per enrollment."""

    queued: list[str] = field(default_factory=list)
    already_queued: list[str] = field(default_factory=list)
    # Can never be queued (the server does not know the enrollment): why.
    failed: dict[str, str] = field(default_factory=dict)
    # Pushed by this request with no error reported; the rest of those queued by it:
    pushed: list[str] = field(default_factory=list)
    push_errors: dict[str, str] = field(default_factory=dict)


@dataclass
class FleetPushOutcome:
    pushed: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)


class MdmServerClient(Protocol):
    """What the send activity needs from an MDM server.

    ``enqueue`` reports push failures in ``push_error`` and ``push`` returns them as
    text: a push never raises for a failed notification, so a failed push can never
    make a retry post the commands again.
    """

    # True when the server refuses a CommandUUID it already holds (NanoMDM), so posting
    # one again is harmless; False when every post queues another copy (MicroMDM).
    deduplicates: bool

    async def check_enrolled(self, ids: Sequence[str]) -> None:
        """Raise :class:`PermanentMdmError` for an enrollment the server cannot reach."""
        ...

    async def enqueue(
        self, ids: Sequence[str], command_uuid: str, body: bytes, *, push: bool
    ) -> EnqueueOutcome: ...

    async def push(self, ids: Sequence[str]) -> str | None: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class FleetEnqueuer(Protocol):
    """A server that queues one command for many enrollment IDs in one request (NanoMDM)."""

    async def enqueue_fleet(
        self, ids: Sequence[str], command_uuid: str, body: bytes, *, push: bool
    ) -> FleetEnqueueOutcome: ...

    async def push_fleet(self, ids: Sequence[str]) -> FleetPushOutcome: ...


@runtime_checkable
class EnrollmentLister(Protocol):
    """A server that can say up front which enrollments it cannot reach (MicroMDM)."""

    async def unknown_enrollments(self, ids: Sequence[str]) -> dict[str, str]: ...


def _is_duplicate(error: str) -> bool:
    text = error.lower()
    return "duplicate" in text or "unique constraint" in text or "already exists" in text


def _is_unknown_enrollment(error: str) -> bool:
    text = error.lower()
    return "foreign key" in text or "unknown enrollment" in text or "not found" in text


def _is_missing_push_info(error: str) -> bool:
    """NanoMDM's per-ID push answer for an ID it has no enrollment (push data) for."""
    text = error.lower()
    return "push data missing" in text or "no push info" in text


def _fleet_path(prefix: str, ids: Sequence[str]) -> str:
    path = prefix + ",".join(quote(i, safe="") for i in ids)
    if len(path) > FLEET_PATH_MAX:
        raise PermanentMdmError(
            f"{len(ids)} enrollment IDs make a {len(path)}-character enqueue URL, over "
            f"{FLEET_PATH_MAX}: NanoMDM stores a CommandUUID in one request only, so "
            "send fewer enrollments per CommandUUID"
        )
    return path


def _fleet_enqueue_answer(resp: httpx.Response, command_uuid: str) -> dict[str, Any]:
    """The JSON answer of a fleet enqueue; raises for answers that concern every ID."""
    if resp.status_code == 401:
        raise PermanentMdmError("MDM server rejected the API key (401): check MDMFLOW_MDM_API_KEY")
    if resp.status_code in (400, 413, 415):
        raise PermanentMdmError(
            f"MDM server refused command {command_uuid} ({resp.status_code}): "
            f"{resp.text.strip()[:300]}"
        )
    if resp.status_code in (414, 431):
        raise PermanentMdmError(
            f"the enqueue URL for {command_uuid} is too long for the server in front of "
            f"NanoMDM ({resp.status_code}): a fleet send names every enrollment in one "
            "URL, so raise the proxy's request-line limit (nginx: large_client_header_buffers)"
        )
    try:
        doc = resp.json()
    except ValueError:
        doc = None
    # A 5xx JSON body without NanoMDM's keys comes from something in front of it.
    if not isinstance(doc, dict) or (
        resp.status_code >= 500 and not _NANOMDM_ANSWER_KEYS.intersection(doc)
    ):
        if resp.status_code >= 500 or resp.status_code == 429:
            raise TransientMdmError(f"MDM server error {resp.status_code} on enqueue")
        raise PermanentMdmError(
            f"unexpected MDM server answer {resp.status_code}: {resp.text.strip()[:300]}"
        )
    return doc


_NANOMDM_ANSWER_KEYS = frozenset(
    {"status", "command_error", "push_error", "command_uuid", "request_type", "no_push"}
)


class NanoMdmClient:
    """NanoMDM's ``/v1/enqueue`` and ``/v1/push`` API (HTTP Basic ``nanomdm:<key>``)."""

    deduplicates = True

    def __init__(self, base_url: str, api_key: str, *, timeout: float = 30.0) -> None:
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            auth=("nanomdm", api_key),
            timeout=timeout,
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=32),
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def check_enrolled(self, ids: Sequence[str]) -> None:
        """Nothing to ask: NanoMDM's enqueue itself refuses an unknown enrollment."""

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
            try:
                resp = await self._http.get(
                    "/v1/push/" + ",".join(quote(i, safe="") for i in chunk)
                )
            except httpx.HTTPError as exc:
                errors.append(f"push failed, MDM server unreachable ({exc!r})")
                continue
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

    async def enqueue_fleet(
        self, ids: Sequence[str], command_uuid: str, body: bytes, *, push: bool
    ) -> FleetEnqueueOutcome:
        """Queue one command for every ID in one request, with failures told per ID.

        NanoMDM's SQL storages insert the CommandUUID, then its queue rows, in one
        transaction: a second request with the same UUID is refused as a duplicate, and
        one unknown enrollment among the IDs refuses the whole request without saying
        which. So every ID goes into one URL; after such a refusal (nothing was queued)
        a push finds the unknown IDs, for which NanoMDM answers that it has no push data,
        and the command is sent again for the rest. Storages that answer per ID (the
        file storage) are read per ID.
        """
        outcome = FleetEnqueueOutcome()
        targets = list(ids)
        for _ in range(FLEET_UNKNOWN_ROUNDS):
            if not targets:
                return outcome
            resp = await self._request(
                "PUT",
                _fleet_path("/v1/enqueue/", targets),
                params=None if push else {"nopush": "1"},
                content=body,
                headers={"Content-Type": "application/xml"},
            )
            if not self._interpret_fleet_enqueue(resp, targets, command_uuid, push, outcome):
                return outcome
            missing = await self._missing(targets)
            if not missing:
                raise TransientMdmError(
                    f"MDM server refused {command_uuid} for an unknown enrollment among "
                    f"{len(targets)}, yet has push data for each of them"
                )
            for enrollment in missing:
                outcome.failed[enrollment] = f"MDM server does not know enrollment {enrollment!r}"
            targets = [t for t in targets if t not in missing]
        raise TransientMdmError(
            f"MDM server kept refusing {command_uuid} for unknown enrollments "
            f"({len(outcome.failed)} found so far)"
        )

    @staticmethod
    def _interpret_fleet_enqueue(
        resp: httpx.Response,
        ids: list[str],
        command_uuid: str,
        push: bool,
        outcome: FleetEnqueueOutcome,
    ) -> bool:
        """Fill ``outcome``; True when the whole request was refused for an unnamed unknown ID.

        As for one ID, "queued?" comes from ``command_error``, never from the HTTP status.
        """
        doc = _fleet_enqueue_answer(resp, command_uuid)
        raw_statuses = doc.get("status")
        statuses: dict[str, Any] = raw_statuses if isinstance(raw_statuses, dict) else {}
        top_error = str(doc.get("command_error") or "")
        per_id = {
            i: str(st["command_error"])
            for i, st in statuses.items()
            if isinstance(st, dict) and st.get("command_error")
        }
        if top_error and not per_id and _is_unknown_enrollment(top_error):
            if len(ids) > 1:
                return True
            outcome.failed[ids[0]] = f"MDM server does not know enrollment {ids[0]!r}: {top_error}"
            return False
        queued_now: list[str] = []
        for enrollment in ids:
            error = per_id.get(enrollment, top_error)
            if not error:
                queued_now.append(enrollment)
            elif _is_duplicate(error):
                outcome.already_queued.append(enrollment)
            elif _is_unknown_enrollment(error):
                outcome.failed[enrollment] = (
                    f"MDM server does not know enrollment {enrollment!r}: {error}"
                )
            else:
                raise TransientMdmError(f"MDM server could not queue {command_uuid}: {error}")
        outcome.queued.extend(queued_now)
        if push:
            top_push = str(doc.get("push_error") or "")
            for enrollment in queued_now:
                st = statuses.get(enrollment)
                st = st if isinstance(st, dict) else {}
                if st.get("push_error"):
                    outcome.push_errors[enrollment] = str(st["push_error"])
                elif top_push and not st.get("push_result"):
                    outcome.push_errors[enrollment] = top_push
                else:
                    outcome.pushed.append(enrollment)
        return False

    async def push_fleet(self, ids: Sequence[str]) -> FleetPushOutcome:
        """Push every ID, ``ENQUEUE_CHUNK`` per request; failures per ID, never raised."""
        outcome = FleetPushOutcome()
        for start in range(0, len(ids), ENQUEUE_CHUNK):
            chunk = list(ids[start : start + ENQUEUE_CHUNK])
            statuses, top = await self._push_statuses(chunk)
            for enrollment in chunk:
                error = statuses.get(enrollment, top)
                if error:
                    outcome.errors[enrollment] = error
                else:
                    outcome.pushed.append(enrollment)
        return outcome

    async def _push_statuses(self, ids: list[str]) -> tuple[dict[str, str | None], str | None]:
        """One push request: per-ID errors (None: pushed) and the error for IDs without one."""
        try:
            resp = await self._http.get(_fleet_path("/v1/push/", ids))
        except httpx.HTTPError as exc:
            return {}, f"push failed, MDM server unreachable ({exc!r})"
        if resp.status_code == 401:
            raise PermanentMdmError("MDM server rejected the API key (401) on push")
        try:
            doc = resp.json()
        except ValueError:
            doc = None
        doc = doc if isinstance(doc, dict) else {}
        statuses: dict[str, str | None] = {}
        raw = doc.get("status")
        for enrollment, st in (raw if isinstance(raw, dict) else {}).items():
            if isinstance(st, dict):
                statuses[str(enrollment)] = str(st["push_error"]) if st.get("push_error") else None
        top = str(doc["push_error"]) if doc.get("push_error") else None
        if top is None and resp.status_code >= 300:
            top = f"push answered {resp.status_code}"
        return statuses, top

    async def _missing(self, ids: list[str]) -> set[str]:
        """IDs NanoMDM has no enrollment for, told by a push (it says so per ID)."""
        missing: set[str] = set()
        for start in range(0, len(ids), ENQUEUE_CHUNK):
            statuses, _ = await self._push_statuses(ids[start : start + ENQUEUE_CHUNK])
            missing.update(i for i, e in statuses.items() if e and _is_missing_push_info(e))
        return missing & set(ids)


class MicroMdmClient:
    """MicroMDM's ``/v1/commands``, ``/v1/push`` and ``/v1/devices`` API (Basic ``micromdm:<key>``).

    MicroMDM differs from NanoMDM where it matters for safety: it queues a CommandUUID
    again every time it is posted (no duplicate check), answers 201 for any UDID, and its
    raw-command endpoint does not push. So this client never re-posts on its own, reports
    a request whose answer was lost as :class:`UncertainMdmError`, checks enrollments
    against the device list, and turns every push failure into a push error.
    """

    deduplicates = False

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 30.0,
        addresses: AddressBook | None = None,
    ) -> None:
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"), auth=("micromdm", api_key), timeout=timeout
        )
        self._addresses = addresses

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _target(self, enrollment_id: str) -> str:
        """The ID MicroMDM keys this enrollment by (see :func:`micromdm_address`)."""
        if self._addresses is not None:
            known = await self._addresses(enrollment_id)
            if known:
                return known
        return micromdm_address(enrollment_id)

    async def check_enrolled(self, ids: Sequence[str]) -> None:
        """Refuse enrollments MicroMDM does not list as enrolled.

        MicroMDM answers 201 to a command for any UDID, so an unknown or checked-out
        device would otherwise wait out the whole step timeout.
        """
        devices = {micromdm_device(i): i for i in ids}
        enrolled = await self._listed(sorted(devices))
        if enrolled is None:
            return
        for udid, enrollment in sorted(devices.items()):
            problem = _enrollment_problem(udid, enrollment, enrolled)
            if problem is not None:
                raise PermanentMdmError(problem)

    async def unknown_enrollments(self, ids: Sequence[str]) -> dict[str, str]:
        """The enrollments MicroMDM cannot reach, with why: one device list per chunk.

        As :meth:`check_enrolled`, but answering per enrollment, so a fleet send refuses
        only the devices concerned.
        """
        problems: dict[str, str] = {}
        for start in range(0, len(ids), ENQUEUE_CHUNK):
            chunk = ids[start : start + ENQUEUE_CHUNK]
            enrolled = await self._listed(sorted({micromdm_device(i) for i in chunk}))
            if enrolled is None:
                return {}
            for enrollment in chunk:
                problem = _enrollment_problem(micromdm_device(enrollment), enrollment, enrolled)
                if problem is not None:
                    problems[enrollment] = problem
        return problems

    async def _listed(self, udids: list[str]) -> dict[str, bool] | None:
        """UDID -> enrolled? for the UDIDs MicroMDM lists; None when it has no device list."""
        try:
            resp = await self._http.post("/v1/devices", json={"filter_udid": udids})
        except httpx.HTTPError as exc:
            raise TransientMdmError(f"MicroMDM unreachable: {exc!r}") from exc
        if resp.status_code == 401:
            raise PermanentMdmError(_MICROMDM_BAD_KEY)
        if resp.status_code in (404, 405):
            log.warning("MicroMDM has no device list (POST /v1/devices: %d)", resp.status_code)
            return None
        if resp.status_code >= 300:
            raise TransientMdmError(
                f"MicroMDM device list answered {resp.status_code}: {_server_error(resp)}"
            )
        try:
            listed = resp.json().get("devices") or []
        except (ValueError, AttributeError) as exc:
            raise TransientMdmError(f"MicroMDM device list is not JSON: {exc}") from exc
        return {str(d.get("udid")): bool(d.get("enrolled")) for d in listed if isinstance(d, dict)}

    async def enqueue(
        self, ids: Sequence[str], command_uuid: str, body: bytes, *, push: bool
    ) -> EnqueueOutcome:
        outcome = EnqueueOutcome()
        for enrollment in ids:
            target = quote(await self._target(enrollment), safe="")
            try:
                resp = await self._http.post(f"/v1/commands/{target}", content=body)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
                raise TransientMdmError(f"MicroMDM unreachable: {exc!r}") from exc
            except httpx.HTTPError as exc:
                # The request may have reached MicroMDM, which queues every copy it gets.
                raise UncertainMdmError(
                    f"MicroMDM took command {command_uuid} for {enrollment} but its answer "
                    f"was lost ({exc!r}): it may be queued"
                ) from exc
            if resp.status_code == 401:
                raise PermanentMdmError(_MICROMDM_BAD_KEY)
            if resp.status_code in (200, 201):
                outcome.queued.append(enrollment)
                continue
            error = _server_error(resp)
            if resp.status_code == 429 or (resp.status_code >= 500 and not _is_input_error(error)):
                raise TransientMdmError(
                    f"MicroMDM could not queue {command_uuid} ({resp.status_code}): {error}"
                )
            raise PermanentMdmError(
                f"MicroMDM refused command {command_uuid} ({resp.status_code}): {error}"
            )
        if push:
            outcome.push_error = await self.push(ids)
        return outcome

    async def push(self, ids: Sequence[str]) -> str | None:
        """Push each device; failures come back as text, never as an exception.

        A push that fails cannot un-queue a command: the step records it and re-pushes
        on its schedule. (MicroMDM without an APNs certificate drops the connection.)
        """
        errors = []
        for enrollment in ids:
            target = quote(await self._target(enrollment), safe="")
            try:
                resp = await self._http.post(f"/v1/push/{target}")
            except httpx.HTTPError as exc:
                errors.append(f"{enrollment}: push failed, MicroMDM dropped the request ({exc!r})")
                continue
            if resp.status_code == 401:
                raise PermanentMdmError("MicroMDM rejected the API key (401) on push")
            if resp.status_code >= 300:
                errors.append(f"{enrollment}: {_server_error(resp)}")
        return "; ".join(errors) or None


_MICROMDM_BAD_KEY = "MicroMDM rejected the API key (401): check MDMFLOW_MDM_API_KEY"


def _enrollment_problem(udid: str, enrollment: str, enrolled: dict[str, bool]) -> str | None:
    """Why MicroMDM cannot reach ``enrollment`` by its device list, or None."""
    if udid not in enrolled:
        return (
            f"MicroMDM does not know device {udid!r} (enrollment {enrollment!r}): "
            "it is not in MicroMDM's device list"
        )
    if not enrolled[udid]:
        return (
            f"device {udid!r} is not enrolled in MicroMDM (checked out): "
            f"nothing can reach enrollment {enrollment!r}"
        )
    return None


# MicroMDM answers 500 for input it cannot use; these texts mean "fix the command".
_INPUT_ERRORS = ("parse payload as plist", "request is malformed", "request must contain")


def _is_input_error(error: str) -> bool:
    return any(marker in error for marker in _INPUT_ERRORS)


def _server_error(resp: httpx.Response) -> str:
    """MicroMDM's JSON ``error`` text, else the start of the body, else the status."""
    try:
        doc = resp.json()
    except ValueError:
        doc = None
    if isinstance(doc, dict) and doc.get("error"):
        return str(doc["error"])
    text = resp.text.strip()[:300]
    return text or f"HTTP {resp.status_code}"


def micromdm_device(enrollment_id: str) -> str:
    """The device part of an enrollment ID: the UDID, or a BYOD EnrollmentID."""
    return enrollment_id.split(":", 1)[0]


def micromdm_address(enrollment_id: str) -> str:
    """MicroMDM's key for an enrollment when the relay has not recorded one.

    MicroMDM keys a device by UDID (BYOD: EnrollmentID) and a user channel by its
    UserID, so ``UDID:UserID`` is addressed as ``UserID``. BYOD user enrollments and
    Shared iPad users need the address recorded from their check-ins
    (:meth:`store.events.EnrollmentRegister.mdm_address`).
    """
    return enrollment_id.split(":", 1)[1] if ":" in enrollment_id else enrollment_id


def make_client(
    kind: str, base_url: str, api_key: str, *, addresses: AddressBook | None = None
) -> MdmServerClient:
    """The client for ``kind``; ``addresses`` looks up MicroMDM addresses the relay recorded."""
    if kind == "nanomdm":
        return NanoMdmClient(base_url, api_key)
    if kind == "micromdm":
        return MicroMdmClient(base_url, api_key, addresses=addresses)
    raise ValueError(f"unknown MDM server kind {kind!r} (nanomdm or micromdm)")
