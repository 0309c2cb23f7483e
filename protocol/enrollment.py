"""Enrollment IDs as NanoMDM forms them, derived from a device's check-in or report.

| enrollment        | ID                               | type                       |
|-------------------|----------------------------------|----------------------------|
| device            | UDID                             | Device                     |
| user channel      | UDID:UserID                      | User                       |
| Shared iPad user  | UDID:UserShortName               | Shared iPad                |
| BYOD device       | EnrollmentID                     | User Enrollment (Device)   |
| BYOD user         | EnrollmentID:EnrollmentUserID    | User Enrollment            |

Needed for senders that carry no ``ids`` (NanoMDM <= 0.8, MicroMDM): the webhook's
``udid`` is the device UDID even on the user channel, so it alone is not enough.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

# Shared iPad user sessions report this UserID with the short name beside it.
SHARED_IPAD_USER_ID = "FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF"

DEVICE = "Device"
USER = "User"
SHARED_IPAD = "Shared iPad"
USER_ENROLLMENT_DEVICE = "User Enrollment (Device)"
USER_ENROLLMENT = "User Enrollment"


# NanoMDM's enrollment ID column is 255 characters.
MAX_ENROLLMENT_ID = 255


def enrollment_id_problem(eid: str) -> str | None:
    """Why ``eid`` is not an enrollment ID, or None when it is one.

    The one grammar for the API, the relay and the CLI: what NanoMDM and MicroMDM
    produce (UDIDs, ``UDID:UserID``, ``UDID:ShortName``, User Enrollment IDs) is
    1-255 printable characters without whitespace. Control characters, NUL included,
    would otherwise reach the store and Temporal.
    """
    if not eid:
        return "empty enrollment ID"
    if len(eid) > MAX_ENROLLMENT_ID:
        return f"enrollment ID longer than {MAX_ENROLLMENT_ID} characters"
    if any(c.isspace() or not c.isprintable() for c in eid):
        return f"enrollment ID {eid!r} contains whitespace or control characters"
    return None


class EnrollmentRef(BaseModel):
    id: str
    type: str
    # The ID MicroMDM keys this enrollment by (see :func:`micromdm_address`).
    mdm_address: str = ""


def _s(payload: dict[str, Any], key: str) -> str:
    value = payload.get(key)
    return value if isinstance(value, str) else ""


def micromdm_address(payload: dict[str, Any]) -> str:
    """The ID MicroMDM queues commands under for the sender of ``payload``.

    MicroMDM keys a device by its UDID, a user channel and a Shared iPad user by their
    UserID, and both channels of a BYOD (User Enrollment) device by its EnrollmentID;
    NanoMDM's enrollment IDs (the table above) need a translation for it.
    """
    udid = _s(payload, "UDID")
    user_id = _s(payload, "UserID")
    if udid:
        return user_id or _s(payload, "UserShortName") or udid
    return _s(payload, "EnrollmentID")


def derive(payload: dict[str, Any]) -> EnrollmentRef | None:
    """Derive the enrollment from a check-in or command-report plist dictionary."""
    udid = _s(payload, "UDID")
    enrollment_id = _s(payload, "EnrollmentID")
    user_id = _s(payload, "UserID")
    short_name = _s(payload, "UserShortName")
    enrollment_user_id = _s(payload, "EnrollmentUserID")
    address = micromdm_address(payload)
    if udid:
        if short_name and (not user_id or user_id.upper() == SHARED_IPAD_USER_ID):
            return EnrollmentRef(id=f"{udid}:{short_name}", type=SHARED_IPAD, mdm_address=address)
        if user_id:
            return EnrollmentRef(id=f"{udid}:{user_id}", type=USER, mdm_address=address)
        return EnrollmentRef(id=udid, type=DEVICE, mdm_address=address)
    if enrollment_id:
        if enrollment_user_id:
            return EnrollmentRef(
                id=f"{enrollment_id}:{enrollment_user_id}",
                type=USER_ENROLLMENT,
                mdm_address=address,
            )
        return EnrollmentRef(id=enrollment_id, type=USER_ENROLLMENT_DEVICE, mdm_address=address)
    return None
