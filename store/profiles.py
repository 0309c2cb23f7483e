"""NanoCMD's profile store: configuration profiles by name, raw as uploaded.

The raw bytes are kept because a signed profile must reach the device with its
signature intact; identifier and UUID are kept beside them because that is what a
profile workflow compares with the device's ProfileList.
"""

from __future__ import annotations

import plistlib
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, async_sessionmaker

from escrow import fvprofile
from protocol import cms
from store.db import ProfileRow
from store.named import put_named, session_in


class ProfileError(ValueError):
    """Bytes that are not an acceptable configuration profile; the message says why."""


class ProfileInfo(BaseModel):
    """The top-level PayloadIdentifier and PayloadUUID (NanoCMD's ProfileInfo)."""

    model_config = ConfigDict(frozen=True)

    identifier: str
    uuid: str
    signed: bool = False


def parse_profile(raw: bytes) -> ProfileInfo:
    """Check a .mobileconfig (XML or binary plist, or CMS-signed DER/PEM) and describe it.

    A signed profile's signature must verify: storing one that does not would only
    fail later, on every device it is sent to.
    """
    if not raw:
        raise ProfileError("empty profile")
    signed = raw[:1] == b"\x30" or cms.is_pem(raw)
    content = raw
    if signed:
        try:
            content, _signers = cms.verify(cms.pem_to_der(raw) if cms.is_pem(raw) else raw)
        except cms.CmsError as exc:
            raise ProfileError(f"signed profile refused: {exc}") from exc
    try:
        doc: Any = plistlib.loads(content)
    except Exception as exc:  # plistlib raises several unrelated types
        what = "signed content" if signed else "profile"
        raise ProfileError(f"{what} is not a valid XML or binary property list: {exc}") from exc
    return ProfileInfo(**_top_level(doc), signed=signed)


def _top_level(doc: Any) -> dict[str, str]:
    """NanoCMD's checks on the top-level payload, with the reason when one fails."""
    if not isinstance(doc, dict):
        raise ProfileError("profile is not a dictionary at the top level")
    ptype = doc.get("PayloadType")
    if ptype != "Configuration":
        raise ProfileError(f"PayloadType must be 'Configuration', found {ptype!r}")
    out = {}
    for key, field in (("PayloadIdentifier", "identifier"), ("PayloadUUID", "uuid")):
        value = doc.get(key)
        if not isinstance(value, str) or not value:
            raise ProfileError(f"{key} is missing or empty")
        if len(value) > 255:
            raise ProfileError(f"{key} is longer than 255 characters")
        out[field] = value
    version = doc.get("PayloadVersion")
    if version != 1 or isinstance(version, bool):
        raise ProfileError(f"PayloadVersion must be 1, found {version!r}")
    return out


class ProfileStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)

    async def put(self, name: str, raw: bytes, conn: AsyncConnection | None = None) -> ProfileInfo:
        """Store (or replace) ``name``; raises ProfileError before storing a bad one.

        The FileVault template (stored as ``io.micromdm.wf.fvenable.v1``) holds the
        ``__CERTIFICATE__`` placeholder where base64 goes; it is checked as rendered.
        """
        if name == fvprofile.TEMPLATE_PROFILE_NAME:
            if fvprofile.PLACEHOLDER.encode() not in raw:
                raise ProfileError(f"the FileVault template needs {fvprofile.PLACEHOLDER}")
            info = parse_profile(fvprofile.render(raw, b"\x30\x00"))
        else:
            info = parse_profile(raw)
        values = {
            "identifier": info.identifier,
            "uuid": info.uuid,
            "signed": info.signed,
            "raw": raw,
            "modified": datetime.now(UTC),
        }
        await put_named(self._sessions, ProfileRow, name, values, conn)
        return info

    async def get(self, name: str) -> bytes | None:
        async with self._sessions() as session:
            raw = await session.scalar(select(ProfileRow.raw).where(ProfileRow.name == name))
            return bytes(raw) if raw is not None else None

    async def info(self, names: list[str] | None = None) -> dict[str, ProfileInfo]:
        """Identifier and UUID by name: of ``names`` that exist, or of all when None."""
        query = select(ProfileRow.name, ProfileRow.identifier, ProfileRow.uuid, ProfileRow.signed)
        if names is not None:
            query = query.where(ProfileRow.name.in_(names))
        async with self._sessions() as session:
            rows = await session.execute(query.order_by(ProfileRow.name))
            return {
                name: ProfileInfo(identifier=ident, uuid=uuid, signed=signed)
                for name, ident, uuid, signed in rows
            }

    async def delete(self, name: str, conn: AsyncConnection | None = None) -> bool:
        async with session_in(self._sessions, conn) as session:
            row = await session.get(ProfileRow, name)
            if row is None:
                return False
            await session.delete(row)
        return True
