"""Roles and what each may do: the one table the API's checks and its 403s come from.

Roles are not a ladder: an approver cannot start runs and an operator cannot approve;
an admin may do both, but never approve a start of their own (the approval is checked
against the starter by the API and by the run itself). Every role may read runs,
inventory and the audit log; only the escrow role reads recovery keys and PINs.
"""

from __future__ import annotations

from typing import Literal

from store.users import ROLES as ROLES
from store.users import Role as Role

Permission = Literal["read", "operate", "approve", "admin", "escrow"]

GRANTS: dict[Permission, frozenset[Role]] = {
    # runs, inventory, profiles, plans, events, schedules, audit: reading
    "read": frozenset({"viewer", "operator", "approver", "admin", "escrow"}),
    # start and control runs; edit profiles, command plans, events, schedules
    "operate": frozenset({"operator", "admin"}),
    # approve or reject a run waiting for a second person (never one's own start)
    "approve": frozenset({"approver", "admin"}),
    # users, policy, the emergency stop, the FileVault escrow template
    "admin": frozenset({"admin"}),
    # FileVault recovery keys and lock/erase PINs (a reason is required)
    "escrow": frozenset({"escrow"}),
}


def allows(role: str, permission: Permission) -> bool:
    return role in GRANTS[permission]


def needed(permission: Permission) -> str:
    """The roles that grant ``permission``, for a 403 a person can act on."""
    roles = sorted(GRANTS[permission])
    return roles[0] if len(roles) == 1 else " or ".join(roles)
