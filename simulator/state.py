"""The simulated fleet as a JSON document, so a restarted simulator has the same devices.

A real NanoMDM keeps its enrollments, queues and command table in a database and the
devices keep their profiles, FileVault and keys; mdmflow's inventory, escrow and
enrollment register remember them. Saving this document on shutdown (and now and then)
and loading it at start gives the simulator the same memory: same UDIDs, serials,
tokens, user channels, profiles, FileVault state and recovery keys, pending commands,
and random generators that carry on instead of repeating their first values.

The file holds plaintext recovery keys, so it is written owner-only (mode 0600).
"""

from __future__ import annotations

import base64
import json
import os
import plistlib
import random
import secrets
import struct
from collections import deque
from pathlib import Path
from typing import Any, cast

from simulator.answers import AnswerContext
from simulator.crypto import CertEntry
from simulator.identity import KINDS, Kind, Model, OSRelease
from simulator.model import DeviceBehaviour, Enrollment, QueuedCommand, user_channel
from simulator.profiles import InstalledProfile

FORMAT = "mdmflow-simulator-fleet"
VERSION = 1


class StateError(ValueError):
    """A state file this simulator cannot load (corrupt, or another format)."""


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode(), validate=True)


# ---- random generators ----------------------------------------------------------------


def rng_state(rng: random.Random) -> dict[str, Any]:
    """The Mersenne Twister's 625 words, packed (a JSON list of them is 7 KB of lines)."""
    version, internal, gauss = rng.getstate()
    words = struct.pack(f"<{len(internal)}I", *internal)
    return {"version": version, "words": _b64(words), "gauss_next": gauss}


def set_rng_state(rng: random.Random, saved: dict[str, Any]) -> None:
    words = _unb64(saved["words"])
    internal = struct.unpack(f"<{len(words) // 4}I", words)
    rng.setstate((int(saved["version"]), internal, saved["gauss_next"]))


# ---- certificates ---------------------------------------------------------------------


def encode_certificates(entries: tuple[CertEntry, ...]) -> list[dict[str, Any]]:
    return [
        {"common_name": c.common_name, "der": _b64(c.der), "is_identity": c.is_identity}
        for c in entries
    ]


def decode_certificates(items: list[dict[str, Any]]) -> tuple[CertEntry, ...]:
    return tuple(
        CertEntry(str(c["common_name"]), _unb64(c["der"]), bool(c["is_identity"])) for c in items
    )


# ---- enrollments ----------------------------------------------------------------------


def _encode_queue(queue: deque[QueuedCommand]) -> list[dict[str, Any]]:
    # Commands are plists (data, dates, nesting): kept as binary plists, whole.
    return [
        {
            "command_uuid": q.uuid,
            "request_type": q.request_type,
            "command": _b64(plistlib.dumps(q.command, fmt=plistlib.FMT_BINARY)),
            "notnow": q.notnow,
            "notnow_sent": q.notnow_sent,
        }
        for q in queue
    ]


def _decode_queue(items: list[dict[str, Any]]) -> deque[QueuedCommand]:
    queue: deque[QueuedCommand] = deque()
    for item in items:
        command = plistlib.loads(_unb64(item["command"]))
        entry = QueuedCommand(str(item["command_uuid"]), str(item["request_type"]), command)
        entry.notnow = bool(item["notnow"])
        entry.notnow_sent = int(item["notnow_sent"])
        queue.append(entry)
    return queue


def _encode_profiles(profiles: dict[str, InstalledProfile] | None) -> list[dict[str, Any]]:
    return [  # in install order: the newest escrow certificate wins
        {
            "identifier": p.identifier,
            "summary": p.summary,
            "escrow_cert": _b64(p.escrow_cert) if p.escrow_cert is not None else None,
            "enables_filevault": p.enables_filevault,
        }
        for p in (profiles or {}).values()
    ]


def _decode_profiles(items: list[dict[str, Any]]) -> dict[str, InstalledProfile] | None:
    if not items:
        return None
    out: dict[str, InstalledProfile] = {}
    for p in items:
        cert = p["escrow_cert"]
        out[p["identifier"]] = InstalledProfile(
            identifier=str(p["identifier"]),
            summary=dict(p["summary"]),
            escrow_cert=_unb64(cert) if cert is not None else None,
            enables_filevault=bool(p["enables_filevault"]),
        )
    return out


def _encode_channel(enr: Enrollment) -> dict[str, Any]:
    """What a device channel and a user channel both keep."""
    return {
        "attr_seed": enr.attr_seed,
        "enrolled": enr.enrolled,
        "token_update_tally": enr.tally,
        "queue": _encode_queue(enr.queue),
        "profiles": _encode_profiles(enr.profiles),
        "last_seen": enr.last_seen,
        "counters": {
            "connects": enr.connects,
            "answered": enr.answered,
            "notnow": enr.notnows,
            "errors": enr.errors,
        },
    }


def _decode_channel(enr: Enrollment, doc: dict[str, Any]) -> None:
    enr.enrolled = bool(doc["enrolled"])
    enr.tally = int(doc["token_update_tally"])
    enr.queue = _decode_queue(doc["queue"])
    enr.profiles = _decode_profiles(doc["profiles"])
    enr.last_seen = int(doc["last_seen"])
    counters = doc["counters"]
    enr.connects = int(counters["connects"])
    enr.answered = int(counters["answered"])
    enr.notnows = int(counters["notnow"])
    enr.errors = int(counters["errors"])


def encode_device(dev: Enrollment, ctx: AnswerContext) -> dict[str, Any]:
    """One device with its user channels; FileVault's pending delay as seconds left."""
    b = dev.behaviour
    fv_in = None if dev.fv_on_at is None else max(0.0, dev.fv_on_at - ctx.clock())
    return {
        "udid": dev.udid,
        "kind": dev.kind,
        "serial_number": dev.serial,
        "model": {
            "product_name": dev.model.product_name,
            "model_name": dev.model.model_name,
            "model": dev.model.model,
            "apple_silicon": dev.model.apple_silicon,
            "has_battery": dev.model.has_battery,
        },
        "os": {"version": dev.os.version, "build": dev.os.build},
        "supervised": dev.supervised,
        "awaiting_configuration": dev.awaiting,
        "erased": dev.erased,
        "push_token": dev.token.hex(),  # derived from attr_seed: for people reading the file
        **_encode_channel(dev),
        "behaviour": None if b is None else b.to_json(),
        "filevault_on_in": fv_in,
        "recovery_key": ctx.recovery_keys.get(dev.id),
        "lock": dev.lock,
        "erase": dev.erase,
        "apps": dev.apps,
        "users": [{"user_id": u.user_id, **_encode_channel(u)} for u in (dev.users or {}).values()],
    }


def _behaviour(doc: dict[str, Any] | None) -> DeviceBehaviour | None:
    if doc is None:
        return None
    return DeviceBehaviour(
        notnow_count=int(doc["notnow_count"]),
        offline=bool(doc["offline"]),
        connect_latency=doc["connect_latency"],
        errors={k: (int(v[0]), str(v[1]), str(v[2])) for k, v in doc["errors"].items()},
    )


def decode_device(doc: dict[str, Any], ctx: AnswerContext) -> Enrollment:
    """The device of :func:`encode_device`, user channels attached (not yet indexed)."""
    kind = doc["kind"]
    if kind not in KINDS:
        raise StateError(f"unknown device kind {kind!r}")
    m, o = doc["model"], doc["os"]
    dev = Enrollment(
        enrollment_id=doc["udid"],
        udid=doc["udid"],
        kind=cast(Kind, kind),
        model=Model(
            str(m["product_name"]),
            str(m["model_name"]),
            str(m["model"]),
            bool(m["apple_silicon"]),
            bool(m["has_battery"]),
        ),
        os=OSRelease(str(o["version"]), str(o["build"])),
        serial=str(doc["serial_number"]),
        attr_seed=int(doc["attr_seed"]),
        supervised=bool(doc["supervised"]),
        awaiting=bool(doc["awaiting_configuration"]),
    )
    _decode_channel(dev, doc)
    dev.erased = bool(doc["erased"])
    dev.behaviour = _behaviour(doc["behaviour"])
    if doc["filevault_on_in"] is not None:
        dev.fv_on_at = ctx.clock() + float(doc["filevault_on_in"])
    if doc["recovery_key"] is not None:
        ctx.set_recovery_key(dev, str(doc["recovery_key"]))
    dev.lock = doc["lock"]
    dev.erase = doc.get("erase")  # absent from files saved before EraseDevice was kept
    dev.apps = doc["apps"]
    for u in doc["users"]:
        user_id = str(u["user_id"])
        ch = user_channel(dev, user_id, int(u["attr_seed"]))
        _decode_channel(ch, u)
        if dev.users is None:
            dev.users = {}
        dev.users[user_id] = ch
    return dev


# ---- the file -------------------------------------------------------------------------


def dumps(doc: dict[str, Any]) -> bytes:
    """Compact JSON: indenting costs four times as long on a 10,000-device fleet."""
    full = {"format": FORMAT, "version": VERSION, **doc}
    return json.dumps(full, separators=(",", ":")).encode() + b"\n"


def write(path: Path, data: bytes) -> None:
    """Replace the file whole (owner-only): a crash mid-write leaves the previous one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read(path: Path) -> dict[str, Any] | None:
    """The saved document, or None when there is no file yet."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StateError(f"{path} is not a simulator state file: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise StateError(f"{path} is not a simulator state file")
    if doc.get("version") != VERSION:
        raise StateError(f"{path} has state version {doc.get('version')!r}, not {VERSION}")
    return doc
