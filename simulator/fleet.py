"""The simulated NanoMDM (and MicroMDM) server state: enrollments, queues, pushes, sessions.

One scheduler task pops due connects from a heap; a connect runs the device's session
(Idle, then queued commands one by one, NanoMDM's NotNow skipping included) without
any per-device task, so a fleet of 10,000 devices costs no more than its state.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import plistlib
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, fields
from typing import Any, Literal

from simulator import answers, micromdm
from simulator import state as persist
from simulator.crypto import FleetCertificates
from simulator.identity import KINDS, MODELS, OS_RELEASES, Kind, new_serial, new_udid, new_uuid
from simulator.micromdm import PushFault
from simulator.model import DeviceBehaviour, Enrollment, QueuedCommand, user_channel
from simulator.webhooks import WebhookFormat, WebhookSender, content_type, event_body

__all__ = [
    "DeviceBehaviour",
    "Fleet",
    "FleetConfig",
    "PushFault",
    "UnknownEnrollment",
    "micromdm_config",
]

log = logging.getLogger(__name__)

# A device that answered NotNow comes back by itself after this many connect latencies.
NOTNOW_RECONNECT_FACTOR = 3.0
NOTNOW_RECONNECT_MIN = 0.05
# Commands answered in one go before the scheduler lets other work run.
_SESSION_CHUNK = 32
_SCHEDULER_CHUNK = 256

_DUPLICATE_ERROR = (
    "storing command: Error 1062 (23000): Duplicate entry '{uuid}' for key 'commands.PRIMARY'"
)
_FK_ERROR = (
    "storing command: Error 1452 (23000): Cannot add or update a child row: a foreign key "
    "constraint fails (`nanomdm`.`enrollment_queue`, CONSTRAINT `enrollment_queue_ibfk_1` "
    "FOREIGN KEY (`id`) REFERENCES `enrollments` (`id`) ON DELETE CASCADE ON UPDATE CASCADE)"
)


class UnknownEnrollment(KeyError):
    """No enrollment with that ID (the control API answers 404)."""


@dataclass(slots=True)
class FleetConfig:
    webhook_url: str | None = None
    webhook_hmac_key: str | None = None
    api_key: str = "nanomdm"
    connect_latency: float = 0.05
    answer_latency: float = 0.0
    seed: int = 0
    webhook_format: WebhookFormat = "nanomdm"
    drop_rate: float = 0.0
    duplicate_rate: float = 0.0
    reorder_rate: float = 0.0
    fv_enable_delay: float = 1.0
    topic: str = "com.apple.mgmt.External.mdmflow-sim"
    webhook_concurrency: int = 16
    # MicroMDM's push endpoints only: "drop" hangs up, "invalid_token" fails every push.
    push_fault: PushFault | None = None

    @property
    def micromdm(self) -> bool:
        """MicroMDM mode: webhooks (and their event IDs) as MicroMDM posts them."""
        return self.webhook_format == "micromdm"


def micromdm_config(**overrides: Any) -> FleetConfig:
    """A :class:`FleetConfig` in MicroMDM mode; keyword arguments set other fields."""
    return FleetConfig(**{"webhook_format": "micromdm", **overrides})


def _new_stats() -> dict[str, int]:
    keys = (
        "devices_enrolled commands_enqueued commands_answered acknowledged errors notnow "
        "commands_orphaned command_format_errors idle_reports connects pushes push_errors "
        "pushes_dropped webhooks_submitted "
        "webhooks_sent webhooks_dropped webhooks_duplicated webhooks_reordered webhooks_failed "
        "webhooks_non_200"
    )
    return dict.fromkeys(keys.split(), 0)


class Fleet:
    """NanoMDM's queue and push semantics plus the devices on the other end."""

    def __init__(self, config: FleetConfig | None = None) -> None:
        self.config = config or FleetConfig()
        seed = self.config.seed
        self._device_rng = random.Random(f"{seed}:devices")
        self._id_rng = random.Random(f"{seed}:ids")
        self._stats = _new_stats()
        self._enrollments: dict[str, Enrollment] = {}
        self._user_index: dict[str, str] = {}  # bare UserID -> enrollment ID (MicroMDM)
        self._command_uuids: set[str] = set()  # NanoMDM's commands table: UUIDs are global
        self._copies_queued: Counter[str] = Counter()  # per CommandUUID, both APIs
        self._copies_answered: Counter[str] = Counter()  # final answers, NotNow excluded
        self._push_fault: PushFault | None = self.config.push_fault
        self.ctx = answers.AnswerContext(
            certs=FleetCertificates(seed),
            key_rng=random.Random(f"{seed}:keys"),
            fv_enable_delay=self.config.fv_enable_delay,
        )
        self._sender: WebhookSender | None = None
        if self.config.webhook_url:
            self._sender = WebhookSender(
                self.config.webhook_url,
                stats=self._stats,
                hmac_key=self.config.webhook_hmac_key,
                content_type=content_type(self.config.webhook_format),
                workers=self.config.webhook_concurrency,
                seed=seed,
                drop_rate=self.config.drop_rate,
                duplicate_rate=self.config.duplicate_rate,
                reorder_rate=self.config.reorder_rate,
            )
        self._faults: dict[str, float | int] = {
            "drop_rate": self.config.drop_rate,
            "duplicate_rate": self.config.duplicate_rate,
            "reorder_rate": self.config.reorder_rate,
            "seed": seed,
        }
        self._heap: list[tuple[float, int, int, Enrollment]] = []
        self._seq = itertools.count()
        self._n_due = 0
        self._waiter: asyncio.Future[None] | None = None
        self._wake_at: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # ---- lifecycle ---------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._task is not None

    async def start(self) -> None:
        """Start the scheduler and the webhook workers (idempotent)."""
        if self._task is not None:
            return
        self._loop = asyncio.get_running_loop()
        if self._sender is not None:
            await self._sender.start()
        self._task = asyncio.create_task(self._run_scheduler(), name="sim-scheduler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self._sender is not None:
            await self._sender.stop()

    def _now(self) -> float:
        loop = self._loop or asyncio.get_running_loop()
        return loop.time()

    # ---- persistence -------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Everything that makes these devices themselves, as JSON (see :mod:`simulator.state`).

        Not kept: counters of this process (``stats``), faults and sessions in flight.
        """
        return {
            "rng": {
                "devices": persist.rng_state(self._device_rng),
                "ids": persist.rng_state(self._id_rng),
                "keys": persist.rng_state(self.ctx.key_rng),
            },
            "certificates": persist.encode_certificates(self.ctx.certs.entries()),
            "command_uuids": sorted(self._command_uuids),
            "devices": [
                persist.encode_device(d, self.ctx)
                for d in self._enrollments.values()
                if d.parent is None
            ],
        }

    def restore(self, doc: dict[str, Any]) -> int:
        """Bring back a :meth:`snapshot` into this empty fleet; returns how many devices.

        Nothing is posted: the devices were enrolled before, and like real devices
        after an MDM server restart they connect when next pushed.
        """
        if self._enrollments:
            raise ValueError("restore needs an empty fleet")
        try:
            devices = [persist.decode_device(d, self.ctx) for d in doc["devices"]]
            rngs = doc["rng"]
            persist.set_rng_state(self._device_rng, rngs["devices"])
            persist.set_rng_state(self._id_rng, rngs["ids"])
            persist.set_rng_state(self.ctx.key_rng, rngs["keys"])
            self.ctx.certs.restore(persist.decode_certificates(doc["certificates"]))
            uuids = {str(u) for u in doc["command_uuids"]}
        except (AttributeError, KeyError, TypeError, ValueError, IndexError) as exc:
            self.ctx.recovery_keys.clear()
            raise persist.StateError(f"cannot restore the fleet: {exc!r}") from exc
        self._command_uuids = uuids
        for dev in devices:
            self._enrollments[dev.id] = dev
            for ch in (dev.users or {}).values():
                self._enrollments[ch.id] = ch
                if ch.user_id is not None:
                    self._user_index[ch.user_id] = ch.id
            if dev.enrolled:
                self._stats["devices_enrolled"] += 1
        return len(devices)

    def device_count(self) -> int:
        """Devices the simulator knows, enrolled or not (user channels not counted)."""
        return sum(1 for d in self._enrollments.values() if d.parent is None)

    # ---- enrollment --------------------------------------------------------------------

    def _get(self, enrollment_id: str) -> Enrollment:
        enr = self._enrollments.get(enrollment_id)
        if enr is None:
            raise UnknownEnrollment(enrollment_id)
        return enr

    def resolve(self, some_id: str) -> str | None:
        """An enrollment ID for a UDID, an enrollment ID or a bare UserID (MicroMDM)."""
        if some_id in self._enrollments:
            return some_id
        return self._user_index.get(some_id)

    async def enroll(
        self, count: int = 1, kind: Kind = "mac", *, awaiting_configuration: bool = False
    ) -> list[str]:
        """Enroll new devices: Authenticate then TokenUpdate (tally 1) for each."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}")
        if count < 0:
            raise ValueError("count must not be negative")
        rng = self._device_rng
        ids = []
        for i in range(count):
            model = rng.choice(MODELS[kind])
            os_release = rng.choice(OS_RELEASES[kind])
            udid = new_udid(rng, kind)
            while udid in self._enrollments:
                udid = new_udid(rng, kind)
            dev = Enrollment(
                enrollment_id=udid,
                udid=udid,
                kind=kind,
                model=model,
                os=os_release,
                serial=new_serial(rng, model.apple_silicon),
                attr_seed=rng.getrandbits(32),
                supervised=kind != "mac" or rng.random() < 0.5,
                awaiting=awaiting_configuration,
            )
            self._enrollments[udid] = dev
            self._stats["devices_enrolled"] += 1
            self._authenticate(dev)
            self._token_update(dev)
            ids.append(udid)
            if i % 500 == 499:
                await asyncio.sleep(0)
        return ids

    async def enroll_user_channel(self, device_id: str, user_id: str | None = None) -> str:
        """Enroll the user channel ``UDID:UserID`` of a device (one TokenUpdate, tally 1)."""
        dev = self._get(device_id)
        if dev.parent is not None:
            raise ValueError(f"{device_id} is a user channel, not a device")
        if not dev.enrolled:
            raise ValueError(f"{device_id} is not enrolled")
        if dev.erased:
            raise ValueError(f"{device_id} was erased: re-enroll it first")
        user_id = user_id or new_uuid(self._id_rng)
        if dev.users is None:
            dev.users = {}
        if user_id in dev.users:
            ch = dev.users[user_id]
            ch.enrolled = True
        else:
            ch = user_channel(dev, user_id, self._device_rng.getrandbits(32))
            dev.users[user_id] = ch
            self._enrollments[ch.id] = ch
            self._user_index[user_id] = ch.id
        ch.tally = 0
        self._token_update(ch)
        return ch.id

    async def reenroll(self, device_id: str) -> None:
        """Authenticate again: NanoMDM clears the device's and its user channels' queues."""
        dev = self._get(device_id).device
        if not dev.enrolled:
            self._stats["devices_enrolled"] += 1
        dev.enrolled = True
        if dev.erased:
            # Its users were erased with it: their channels come back only when a user
            # enrolls again (NanoMDM disables a device's user channels on Authenticate).
            for ch in (dev.users or {}).values():
                ch.enrolled = False
            dev.erased = False
        for enr in self._channels(dev):
            enr.queue.clear()
            self._cancel(enr)
            enr.in_session = False
        self._authenticate(dev)
        dev.tally = 0
        self._token_update(dev)

    async def checkout(self, device_id: str) -> None:
        """The device removes its MDM profile: CheckOut, and MDM-installed profiles go."""
        dev = self._get(device_id).device
        if not dev.enrolled:
            raise ValueError(f"{device_id} is not enrolled")
        if dev.erased:
            raise ValueError(f"{device_id} was erased: it has no MDM profile to remove")
        raw = {"MessageType": "CheckOut", "Topic": self.config.topic}
        self._emit_checkin(dev, "mdm.CheckOut", raw)
        for enr in self._channels(dev):
            enr.enrolled = False
            enr.profiles = None
            self._cancel(enr)
            enr.in_session = False
        self._stats["devices_enrolled"] -= 1

    def _channels(self, dev: Enrollment) -> list[Enrollment]:
        return [dev, *(dev.users or {}).values()]

    def _authenticate_message(self, dev: Enrollment) -> dict[str, Any]:
        """The device's Authenticate check-in (without UDID), as a Mac or iPhone sends it."""
        attrs = dev.attributes()
        raw = {
            "BuildVersion": dev.os.build,
            "DeviceName": attrs["DeviceName"],
            "MessageType": "Authenticate",
            "OSVersion": dev.os.version,
            "ProductName": dev.model.product_name,
            "SerialNumber": dev.serial,
            "Topic": self.config.topic,
        }
        if dev.kind != "mac":
            raw["Model"] = dev.model.model
            raw["ModelName"] = dev.model.model_name
        return raw

    def _authenticate(self, dev: Enrollment) -> None:
        self._emit_checkin(dev, "mdm.Authenticate", self._authenticate_message(dev))

    def _token_update(self, enr: Enrollment) -> None:
        enr.tally += 1
        raw: dict[str, Any] = {
            "MessageType": "TokenUpdate",
            "PushMagic": enr.push_magic,
            "Token": enr.token,
            "Topic": self.config.topic,
        }
        if enr.parent is None:
            raw["AwaitingConfiguration"] = enr.awaiting
        else:
            raw["UserLongName"] = f"Simulated User {enr.user_short_name[4:]}"
            raw["UserShortName"] = enr.user_short_name
        self._emit_checkin(enr, "mdm.TokenUpdate", raw, tally=enr.tally)

    # ---- behaviour and control ---------------------------------------------------------

    def set_behaviour(self, device_id: str, behaviour: DeviceBehaviour) -> None:
        """Replace a device's behaviour; going back online makes it connect."""
        dev = self._get(device_id).device
        was_offline = dev.effective_behaviour.offline
        dev.behaviour = behaviour
        if was_offline and not behaviour.offline:
            for enr in self._channels(dev):
                if enr.enrolled:
                    self._schedule(enr, self._latency(enr))

    def update_behaviour(self, device_id: str, **changes: Any) -> DeviceBehaviour:
        """Change some behaviour fields, keeping the others."""
        current = self._get(device_id).effective_behaviour
        values = {f.name: getattr(current, f.name) for f in fields(DeviceBehaviour)}
        values["errors"] = dict(current.errors)
        unknown = set(changes) - set(values)
        if unknown:
            raise ValueError(f"unknown behaviour fields: {', '.join(sorted(unknown))}")
        values.update(changes)
        new = DeviceBehaviour(**values)
        self.set_behaviour(device_id, new)
        return new

    def set_faults(
        self,
        *,
        drop_rate: float | None = None,
        duplicate_rate: float | None = None,
        reorder_rate: float | None = None,
        seed: int | None = None,
        push_fault: PushFault | Literal["none"] | None = None,
    ) -> dict[str, float | int]:
        """Change webhook faults (returned) and MicroMDM's push fault; None leaves one as is.

        ``push_fault="none"`` clears the push fault (see :attr:`push_fault`).
        """
        if push_fault is not None:
            if push_fault != "none" and push_fault not in micromdm.PUSH_FAULTS:
                choices = ", ".join(("none", *micromdm.PUSH_FAULTS))
                raise ValueError(f"push_fault must be one of {choices}")
            self._push_fault = None if push_fault == "none" else push_fault
        for name, value in (
            ("drop_rate", drop_rate),
            ("duplicate_rate", duplicate_rate),
            ("reorder_rate", reorder_rate),
        ):
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1")
        if self._sender is not None:
            self._sender.configure(
                seed=seed,
                drop_rate=drop_rate,
                duplicate_rate=duplicate_rate,
                reorder_rate=reorder_rate,
            )
            self._faults = self._sender.faults()
        else:
            for k, v in (
                ("drop_rate", drop_rate),
                ("duplicate_rate", duplicate_rate),
                ("reorder_rate", reorder_rate),
                ("seed", seed),
            ):
                if v is not None:
                    self._faults[k] = v
        return dict(self._faults)

    @property
    def faults(self) -> dict[str, float | int]:
        """The webhook faults (rates and seed)."""
        return dict(self._faults)

    @property
    def push_fault(self) -> PushFault | None:
        """How pushes fail: "drop", "invalid_token", or None (they work).

        "drop" hangs up on every push, MicroMDM's and NanoMDM's (an enqueue that pushes
        queues its command first); "invalid_token" applies to MicroMDM's push only.
        """
        return self._push_fault

    def stats_add(self, key: str, n: int = 1) -> None:
        self._stats[key] += n

    @property
    def fault_log(self) -> list[tuple[int, str]]:
        """(webhook index, fault) pairs since the fault seed was last set."""
        return list(self._sender.fault_log) if self._sender is not None else []

    async def connect(self, device_id: str) -> None:
        """Make the device (or user channel) connect now, as if pushed with no latency."""
        enr = self._get(device_id)
        if enr.enrolled and not enr.in_session:
            self._schedule(enr, 0.0)

    def recovery_key(self, device_id: str) -> str | None:
        """Test-only: the plaintext FileVault personal recovery key of a device."""
        return self.ctx.recovery_keys.get(self._get(device_id).device.id)

    # ---- NanoMDM API -------------------------------------------------------------------

    def enqueue(
        self, ids: list[str], command_uuid: str, request_type: str, command: dict[str, Any]
    ) -> str | None:
        """Queue one command for the IDs; returns NanoMDM's (MySQL) error text on failure.

        Like NanoMDM's MySQL storage this is all-or-nothing, and a CommandUUID can be
        stored only once, whatever enrollment it was for.
        """
        if command_uuid in self._command_uuids:
            return _DUPLICATE_ERROR.format(uuid=command_uuid)
        targets = [self._enrollments.get(i) for i in ids]
        if any(t is None for t in targets):
            return _FK_ERROR
        self._command_uuids.add(command_uuid)
        for enr in targets:
            assert enr is not None
            enr.queue.append(QueuedCommand(command_uuid, request_type, command))
        self._stats["commands_enqueued"] += len(ids)
        self._copies_queued[command_uuid] += len(ids)
        return None

    def push(self, ids: list[str]) -> dict[str, tuple[str | None, str | None]]:
        """APNs push per ID: ``(push_result, push_error)``; pushed devices connect later."""
        out: dict[str, tuple[str | None, str | None]] = {}
        for i in ids:
            enr = self._enrollments.get(i)
            if enr is None or not enr.enrolled:
                self._stats["push_errors"] += 1
                out[i] = (None, f"no push info for enrollment id: {i}")
                continue
            self._stats["pushes"] += 1
            out[i] = (new_uuid(self._id_rng), None)
            if not enr.in_session:
                self._schedule(enr, self._latency(enr))
        return out

    # ---- MicroMDM API ------------------------------------------------------------------

    def micromdm_target(self, key: str) -> Enrollment | None:
        """The channel MicroMDM keys by ``key``: a device's UDID or a user channel's UserID.

        ``UDID:UserID`` is NanoMDM's ID only; MicroMDM has no queue under it.
        """
        enr = self._enrollments.get(key)
        if enr is not None and enr.parent is None:
            return enr
        user = self._user_index.get(key)
        return self._enrollments.get(user) if user is not None else None

    def queue_micromdm(
        self, key: str, command_uuid: str, request_type: str, command: dict[str, Any]
    ) -> str | None:
        """Queue a copy of a command under ``key`` like MicroMDM; the enrollment ID or None.

        MicroMDM checks neither the key nor the CommandUUID: every post queues one more
        copy, which the device runs and answers separately. A copy for an unknown key or
        a checked-out device is never answered (``commands_orphaned``). Nothing is pushed.
        """
        self._stats["commands_enqueued"] += 1
        self._copies_queued[command_uuid] += 1
        enr = self.micromdm_target(key)
        if enr is None or not enr.enrolled:
            self._stats["commands_orphaned"] += 1
            return None
        enr.queue.append(QueuedCommand(command_uuid, request_type, command))
        return enr.id

    def push_micromdm(self, key: str) -> tuple[str | None, str | None]:
        """MicroMDM's push: ``(push_notification_id, None)`` or ``(None, error text)``.

        Checks run in MicroMDM's order: push info, token, then APNs. Raises
        :class:`~simulator.micromdm.PushCrash` under the ``drop`` fault once the device
        is known, where MicroMDM without an APNs certificate panics.
        """
        enr = self.micromdm_target(key)
        if enr is None:
            error = micromdm.unknown_push_target(key)
        elif self._push_fault == "invalid_token":
            error = micromdm.INVALID_TOKEN
        elif self._push_fault == "drop":
            self._stats["pushes_dropped"] += 1
            raise micromdm.PushCrash(f"no APNs certificate to push {key}")
        elif not enr.enrolled:
            error = micromdm.UNREGISTERED
        else:
            return self.push([enr.id])[enr.id]
        self._stats["push_errors"] += 1
        return None, error

    def micromdm_devices(
        self, udids: list[str] | None = None, serials: list[str] | None = None
    ) -> list[dict[str, Any]]:
        """MicroMDM's device records (devices only), limited to the UDIDs or serials if given."""
        wanted_udids, wanted_serials = set(udids or ()), set(serials or ())
        out = []
        for enr in self._enrollments.values():
            if enr.parent is not None:
                continue
            if (wanted_udids or wanted_serials) and not (
                enr.udid in wanted_udids or enr.serial in wanted_serials
            ):
                continue
            out.append(micromdm.device_record(enr, self._authenticate_message(enr)))
        return out

    def command_copies(self, command_uuid: str) -> int:
        """How many times this CommandUUID was queued, counting each ID and each post."""
        return self._copies_queued[command_uuid]

    def command_answers(self, command_uuid: str) -> int:
        """How many final answers (not NotNow) devices gave to this CommandUUID."""
        return self._copies_answered[command_uuid]

    # ---- scheduler ---------------------------------------------------------------------

    def _latency(self, enr: Enrollment) -> float:
        b = enr.effective_behaviour
        return b.connect_latency if b.connect_latency is not None else self.config.connect_latency

    def _schedule(self, enr: Enrollment, delay: float) -> None:
        due = self._now() + max(0.0, delay)
        if enr.due is not None:
            if enr.due <= due:
                return
        else:
            self._n_due += 1
        enr.gen += 1
        enr.due = due
        heapq.heappush(self._heap, (due, next(self._seq), enr.gen, enr))
        if self._waiter is not None and (self._wake_at is None or due < self._wake_at):
            if not self._waiter.done():
                self._waiter.set_result(None)

    def _cancel(self, enr: Enrollment) -> None:
        if enr.due is not None:
            enr.due = None
            enr.gen += 1
            self._n_due -= 1

    async def _run_scheduler(self) -> None:
        loop = asyncio.get_running_loop()
        heap = self._heap
        while True:
            now = loop.time()
            budget = _SCHEDULER_CHUNK
            while heap and heap[0][0] <= now and budget > 0:
                _, _, gen, enr = heapq.heappop(heap)
                if gen != enr.gen:
                    continue
                enr.due = None
                self._n_due -= 1
                budget -= 1
                try:
                    self._step(enr)
                except Exception:  # one device's bug must not stop the fleet
                    log.exception("session step failed for %s", enr.id)
                    enr.in_session = False
            if budget == 0:
                await asyncio.sleep(0)
                continue
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiter = waiter
            handle = None
            if heap:
                self._wake_at = heap[0][0]
                handle = loop.call_at(heap[0][0], _resolve, waiter)
            else:
                self._wake_at = None
            try:
                await waiter
            finally:
                self._waiter = None
                if handle is not None:
                    handle.cancel()

    def _step(self, enr: Enrollment) -> None:
        dev = enr.device
        if not enr.enrolled or dev.erased or enr.effective_behaviour.offline:
            enr.in_session = False
            return
        answer_latency = self.config.answer_latency
        if not enr.in_session:
            enr.in_session = True
            enr.skip_notnow = False
            enr.connects += 1
            self._stats["connects"] += 1
            self._stats["idle_reports"] += 1
            self._emit_report(enr, {**enr.report_base(), "Status": "Idle"}, "Idle", None)
            if answer_latency > 0:
                self._schedule(enr, answer_latency)
                return
        budget = _SESSION_CHUNK
        while True:
            entry = self._next_command(enr)
            if entry is None:
                enr.in_session = False
                if enr.skip_notnow and enr.queue:
                    delay = max(NOTNOW_RECONNECT_FACTOR * self._latency(enr), NOTNOW_RECONNECT_MIN)
                    self._schedule(enr, delay)
                return
            self._answer(enr, entry)
            if not enr.in_session:
                return
            if answer_latency > 0:
                self._schedule(enr, answer_latency)
                return
            budget -= 1
            if budget == 0:
                self._schedule(enr, 0.0)
                return

    @staticmethod
    def _next_command(enr: Enrollment) -> QueuedCommand | None:
        """NanoMDM's next command: after a NotNow report, skip commands in NotNow status."""
        for entry in enr.queue:
            if enr.skip_notnow and entry.notnow:
                continue
            return entry
        return None

    def _answer(self, enr: Enrollment, entry: QueuedCommand) -> None:
        behaviour = enr.effective_behaviour
        if entry.notnow_sent < behaviour.notnow_count:
            entry.notnow_sent += 1
            entry.notnow = True
            enr.skip_notnow = True
            status, extra = "NotNow", dict[str, Any]()
            enr.notnows += 1
            self._stats["notnow"] += 1
        else:
            status, extra = answers.answer(self.ctx, enr, entry.request_type, entry.command)
            enr.queue.remove(entry)
            enr.skip_notnow = False
            enr.answered += 1
            self._stats["commands_answered"] += 1
            self._copies_answered[entry.uuid] += 1
            if status == "Acknowledged":
                self._stats["acknowledged"] += 1
            elif status == "Error":
                enr.errors += 1
                self._stats["errors"] += 1
            else:
                self._stats["command_format_errors"] += 1
        report = {
            **enr.report_base(),
            "CommandUUID": entry.uuid,
            "RequestType": entry.request_type,
            "Status": status,
            **extra,
        }
        self._emit_report(enr, report, status, entry.uuid)
        if entry.request_type == "EraseDevice" and status == "Acknowledged":
            # Wiped (see answers.erase_device) and silent: no CheckOut, NanoMDM still
            # thinks it enrolled, it never connects again until it is re-enrolled.
            dev = enr.device
            dev.erased = True
            for ch in self._channels(dev):
                ch.queue.clear()
                ch.in_session = False
                self._cancel(ch)

    # ---- webhooks ----------------------------------------------------------------------

    def _event_id(self) -> str:
        if self.config.micromdm:  # MicroMDM: uuid.NewString()
            return str(uuid.UUID(int=self._id_rng.getrandbits(128), version=4))
        return f"{self._id_rng.getrandbits(64):016x}"

    def _emit_report(
        self, enr: Enrollment, report: dict[str, Any], status: str, command_uuid: str | None
    ) -> None:
        enr.device.last_seen = time.time_ns()
        raw = plistlib.dumps(report, sort_keys=True)
        if self._sender is None:
            return
        body = event_body(
            fmt=self.config.webhook_format,
            topic="mdm.Connect",
            event_id=self._event_id(),
            udid=enr.udid,
            enrollment_id=enr.id,
            enrollment_type=enr.enrollment_type,
            raw_payload=raw,
            status=status,
            command_uuid=command_uuid,
        )
        self._stats["webhooks_submitted"] += 1
        self._sender.submit(enr.udid, body)

    def _emit_checkin(
        self, enr: Enrollment, topic: str, raw: dict[str, Any], tally: int | None = None
    ) -> None:
        if enr.parent is None:  # MicroMDM ignores user channels' check-ins here
            enr.last_seen = time.time_ns()
        if self._sender is None:
            return
        payload = plistlib.dumps({**raw, **enr.report_base()}, sort_keys=True)
        body = event_body(
            fmt=self.config.webhook_format,
            topic=topic,
            event_id=self._event_id(),
            udid=enr.udid,
            enrollment_id=enr.id,
            enrollment_type=enr.enrollment_type,
            raw_payload=payload,
            token_update_tally=tally,
        )
        self._stats["webhooks_submitted"] += 1
        self._sender.submit(enr.udid, body)

    # ---- inspection --------------------------------------------------------------------

    @property
    def stats(self) -> dict[str, int]:
        out = dict(self._stats)
        out["webhooks_in_flight"] = self._sender.pending if self._sender is not None else 0
        out["scheduled_connects"] = self._n_due
        return out

    def is_idle(self) -> bool:
        """No connect or session step is due and no webhook is waiting to be posted.

        Devices with queued commands that will not connect (offline, erased, or never
        pushed) do not count: nothing would ever happen to them.
        """
        pending = self._sender.pending if self._sender is not None else 0
        return self._n_due == 0 and pending == 0

    async def wait_idle(self, timeout: float = 10.0) -> None:
        """Wait until :meth:`is_idle`; raises ``TimeoutError`` after ``timeout`` seconds."""
        deadline = self._now() + timeout
        while not self.is_idle():
            if self._now() >= deadline:
                raise TimeoutError(f"simulator not idle after {timeout}s: {self.stats}")
            await asyncio.sleep(0.005)

    def device_state(self, enrollment_id: str) -> dict[str, Any]:
        """JSON-safe view of one device or user channel (no secrets, only hashes)."""
        enr = self._get(enrollment_id)
        dev = enr.device
        fv_on = answers.filevault_enabled(self.ctx, dev)
        state: dict[str, Any] = {
            "id": enr.id,
            "type": enr.enrollment_type,
            "udid": enr.udid,
            "user_id": enr.user_id,
            "kind": dev.kind,
            "enrolled": enr.enrolled,
            "erased": dev.erased,
            "serial_number": dev.serial,
            "product_name": dev.model.product_name,
            "model_name": dev.model.model_name,
            "os_version": dev.os.version,
            "build_version": dev.os.build,
            "is_apple_silicon": dev.model.apple_silicon,
            "supervised": dev.supervised,
            "awaiting_configuration": dev.awaiting,
            "token_update_tally": enr.tally,
            "behaviour": enr.effective_behaviour.to_json(),
            "in_session": enr.in_session,
            "queue": [
                {"command_uuid": q.uuid, "request_type": q.request_type, "notnow": q.notnow}
                for q in enr.queue
            ],
            "profiles": [p.identifier for p in (enr.profiles or {}).values()],
            "filevault": {
                "enabled": fv_on,
                "pending": dev.fv_on_at is not None and not fv_on,
                "escrow_certificate": answers.escrow_certificate(dev) is not None,
                "recovery_key_sha256": dev.prk_hash,
            },
            "lock": dev.lock,
            "erase": dev.erase,
            "installed_apps": [a["Identifier"] for a in (dev.apps or [])],
            "user_channels": [u.id for u in (dev.users or {}).values()] if enr is dev else [],
            "counters": {
                "connects": enr.connects,
                "answered": enr.answered,
                "notnow": enr.notnows,
                "errors": enr.errors,
            },
        }
        return state

    def list_devices(self) -> list[dict[str, Any]]:
        """A short summary of every device channel."""
        return [
            {
                "id": d.id,
                "kind": d.kind,
                "serial_number": d.serial,
                "product_name": d.model.product_name,
                "os_version": d.os.version,
                "enrolled": d.enrolled,
                "erased": d.erased,
                "queue_length": len(d.queue),
                "user_channels": [u.id for u in (d.users or {}).values()],
            }
            for d in self._enrollments.values()
            if d.parent is None
        ]


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
