"""Deterministic names that let the relay route a report with no lookup.

Workflow ID: ``<workflow name>/<enrollment ID>`` (exclusive workflows) or
``<workflow name>/<enrollment ID>/<instance ID>`` (simultaneous ones).

CommandUUID: ``mf.<code>.<instance or ->.<token>`` where ``code`` is the workflow's short
code. Together with the webhook's enrollment ID this names the workflow ID, so one
webhook costs one Temporal signal and the relay keeps no state. Under 80 characters,
well inside NanoMDM's 127-character column.
"""

from __future__ import annotations

from dataclasses import dataclass

PREFIX = "mf"
NO_INSTANCE = "-"


@dataclass(frozen=True)
class CommandRoute:
    code: str
    instance_id: str | None
    token: str


def workflow_id(workflow_name: str, enrollment_id: str, instance_id: str | None = None) -> str:
    if instance_id:
        return f"{workflow_name}/{enrollment_id}/{instance_id}"
    return f"{workflow_name}/{enrollment_id}"


def command_uuid(code: str, instance_id: str | None, token: str) -> str:
    if "." in code or (instance_id and "." in instance_id) or "." in token:
        raise ValueError("code, instance ID and token must not contain '.'")
    return f"{PREFIX}.{code}.{instance_id or NO_INSTANCE}.{token}"


def parse_command_uuid(value: str) -> CommandRoute | None:
    """The route inside one of our CommandUUIDs, or None for anybody else's command."""
    parts = value.split(".")
    if len(parts) != 4 or parts[0] != PREFIX or not all(parts[1:]):
        return None
    instance = None if parts[2] == NO_INSTANCE else parts[2]
    return CommandRoute(code=parts[1], instance_id=instance, token=parts[3])
