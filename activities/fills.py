"""Fill a command's secret or bulky values at send time (see ``protocol.commands.Fill``).

A retried send reuses the PIN escrowed for that CommandUUID, so the PIN on the device
is always the PIN in the escrow.
"""

from __future__ import annotations

import secrets
from typing import Any, Protocol

from escrow import fvprofile
from escrow.store import EscrowStore
from protocol.commands import Command


class FillError(Exception):
    """A value cannot be filled; retrying will not help (the message says why)."""


class ProfileSource(Protocol):
    async def get(self, name: str) -> bytes | None: ...


def new_pin() -> str:
    """Six digits from the OS's CSPRNG (DeviceLock on macOS takes exactly six)."""
    return f"{secrets.randbelow(1_000_000):06d}"


class CommandFiller:
    def __init__(self, escrow: EscrowStore, profiles: ProfileSource) -> None:
        self._escrow = escrow
        self._profiles = profiles

    async def fill(self, enrollment_id: str, command_uuid: str, command: Command) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for i, fill in enumerate(command.fills):
            if fill.kind == "new_pin":
                pin = await self._escrow.by_source(enrollment_id, "pin", command_uuid)
                if pin is None:
                    pin = new_pin()
                    await self._escrow.put(enrollment_id, "pin", pin, command_uuid)
                out[str(i)] = pin
            elif fill.kind == "current_prk":
                prk = await self._escrow.current(enrollment_id, "prk")
                if prk is None:
                    raise FillError(
                        f"no FileVault recovery key escrowed for {enrollment_id}: "
                        "run io.micromdm.wf.fvenable.v1 first"
                    )
                out[str(i)] = prk
            elif fill.kind == "escrow_certificate":
                out[str(i)] = (await self._escrow.key()).certificate_der
            elif fill.kind == "profile":
                raw = await self._profiles.get(fill.name or "")
                if raw is None:
                    raise FillError(f"no stored profile named {fill.name!r}")
                for old, new in fill.replacements.items():
                    raw = raw.replace(old.encode(), new.encode())
                out[str(i)] = raw
            elif fill.kind == "escrow_profile":
                template = await self._profiles.get(fvprofile.TEMPLATE_PROFILE_NAME)
                cert = (await self._escrow.key()).certificate_der
                try:
                    out[str(i)] = fvprofile.render(template or fvprofile.default_template(), cert)
                except ValueError as exc:
                    raise FillError(str(exc)) from exc
        return out
