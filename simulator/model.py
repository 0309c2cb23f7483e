"""Compact per-enrollment state (device channel and user channel alike).

Everything uses ``__slots__`` and lazily created containers: a fresh device is a few
hundred bytes, which is what lets one process hold 10,000 of them.
"""

from __future__ import annotations

import hashlib
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from simulator.identity import Kind, Model, OSRelease, attributes
from simulator.profiles import InstalledProfile


@dataclass(slots=True)
class DeviceBehaviour:
    """How a device misbehaves: NotNow, offline, slowness, per-RequestType errors.

    ``errors`` maps a RequestType to ``(ErrorCode, ErrorDomain, description)``.
    """

    notnow_count: int = 0
    offline: bool = False
    connect_latency: float | None = None
    errors: dict[str, tuple[int, str, str]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "notnow_count": self.notnow_count,
            "offline": self.offline,
            "connect_latency": self.connect_latency,
            "errors": {k: list(v) for k, v in self.errors.items()},
        }


DEFAULT_BEHAVIOUR = DeviceBehaviour()


class QueuedCommand:
    """One command in an enrollment's queue; ``notnow`` mirrors NanoMDM's result status."""

    __slots__ = ("command", "notnow", "notnow_sent", "request_type", "uuid")

    def __init__(self, uuid: str, request_type: str, command: dict[str, Any]) -> None:
        self.uuid = uuid
        self.request_type = request_type
        self.command = command
        self.notnow = False
        self.notnow_sent = 0


class Enrollment:
    """A device channel (``parent is None``) or a user channel ``UDID:UserID``."""

    __slots__ = (
        "answered",
        "apps",
        "attr_seed",
        "awaiting",
        "behaviour",
        "connects",
        "due",
        "enrolled",
        "erase",
        "erased",
        "errors",
        "fv_on_at",
        "gen",
        "id",
        "in_session",
        "kind",
        "last_seen",
        "lock",
        "model",
        "notnows",
        "os",
        "parent",
        "prk_hash",
        "profiles",
        "queue",
        "serial",
        "skip_notnow",
        "supervised",
        "tally",
        "udid",
        "user_id",
        "users",
    )

    def __init__(
        self,
        *,
        enrollment_id: str,
        udid: str,
        kind: Kind,
        model: Model,
        os: OSRelease,
        serial: str,
        attr_seed: int,
        supervised: bool = False,
        awaiting: bool = False,
        parent: Enrollment | None = None,
        user_id: str | None = None,
    ) -> None:
        self.id = enrollment_id
        self.udid = udid
        self.kind: Kind = kind
        self.model = model
        self.os = os
        self.serial = serial
        self.attr_seed = attr_seed
        self.supervised = supervised
        self.awaiting = awaiting
        self.parent = parent
        self.user_id = user_id
        self.enrolled = True
        self.erased = False
        self.tally = 0
        self.queue: deque[QueuedCommand] = deque()
        self.behaviour: DeviceBehaviour | None = None
        self.in_session = False
        self.skip_notnow = False
        self.due: float | None = None
        self.gen = 0
        self.profiles: dict[str, InstalledProfile] | None = None
        self.apps: list[dict[str, Any]] | None = None
        self.fv_on_at: float | None = None
        self.prk_hash: str | None = None
        self.lock: dict[str, Any] | None = None
        # The last EraseDevice the device took: PIN hash and options (survives the wipe).
        self.erase: dict[str, Any] | None = None
        self.users: dict[str, Enrollment] | None = None
        self.last_seen = 0  # wall-clock ns of the last check-in or report (0: never)
        self.connects = 0
        self.answered = 0
        self.notnows = 0
        self.errors = 0

    # ---- derived -------------------------------------------------------------------

    @property
    def device(self) -> Enrollment:
        """The device this channel belongs to (itself for a device channel)."""
        return self.parent if self.parent is not None else self

    @property
    def effective_behaviour(self) -> DeviceBehaviour:
        b = self.device.behaviour
        return b if b is not None else DEFAULT_BEHAVIOUR

    @property
    def enrollment_type(self) -> str:
        return "User" if self.parent is not None else "Device"

    @property
    def user_short_name(self) -> str:
        return f"user{self.attr_seed % 1000:03d}"

    @property
    def push_magic(self) -> str:
        h = hashlib.blake2b(f"{self.attr_seed}:{self.id}:magic".encode(), digest_size=16)
        return h.hexdigest().upper()

    @property
    def token(self) -> bytes:
        h = hashlib.blake2b(f"{self.attr_seed}:{self.id}:token".encode(), digest_size=32)
        return h.digest()

    def attributes(self) -> dict[str, Any]:
        d = self.device
        return attributes(
            kind=d.kind,
            udid=d.udid,
            serial=d.serial,
            model=d.model,
            os_release=d.os,
            attr_seed=d.attr_seed,
            supervised=d.supervised,
            awaiting_configuration=d.awaiting,
        )

    def report_base(self) -> dict[str, Any]:
        """Keys every report from this channel carries (UDID, plus UserID on a user channel)."""
        base: dict[str, Any] = {"UDID": self.udid}
        if self.user_id is not None:
            base["UserID"] = self.user_id
        return base


def user_channel(dev: Enrollment, user_id: str, attr_seed: int) -> Enrollment:
    """The user channel ``UDID:UserID`` of ``dev`` (same hardware, its own attributes)."""
    return Enrollment(
        enrollment_id=f"{dev.udid}:{user_id}",
        udid=dev.udid,
        kind=dev.kind,
        model=dev.model,
        os=dev.os,
        serial=dev.serial,
        attr_seed=attr_seed,
        parent=dev,
        user_id=user_id,
    )
