"""Deterministic names that let the relay route a report with no lookup.

Workflow ID: ``<workflow name>/<enrollment ID>`` (exclusive workflows) or
``<workflow name>/<enrollment ID>/<instance ID>`` (simultaneous ones).

Fleet runs (engine revision 4): one run drives a chunk of enrollments, with workflow ID
``<workflow name>/fleet/<instance ID>/<chunk>``.

CommandUUID: ``mf.<code>.<instance or ->.<token>`` (one run per enrollment) or
``mf.<code>.<instance>.<chunk>.<token>`` (a fleet run's command, shared by every device
of the chunk it was enqueued for), where ``code`` is the workflow's short code. With the
webhook's enrollment ID this names the workflow ID, so a report costs at most one
Temporal signal and the relay keeps no state. Under 80 characters, well inside NanoMDM's
127-character column.
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
    # Set for a fleet run's command: the chunk of the instance that sent it.
    chunk: int | None = None

    def target(self, workflow_name: str, enrollment_id: str) -> str:
        """The workflow ID a report for this command goes to."""
        if self.chunk is not None and self.instance_id:
            return fleet_workflow_id(workflow_name, self.instance_id, self.chunk)
        return workflow_id(workflow_name, enrollment_id, self.instance_id)


def workflow_id(workflow_name: str, enrollment_id: str, instance_id: str | None = None) -> str:
    if instance_id:
        return f"{workflow_name}/{enrollment_id}/{instance_id}"
    return f"{workflow_name}/{enrollment_id}"


def fleet_workflow_id(workflow_name: str, instance_id: str, chunk: int) -> str:
    return f"{workflow_name}/fleet/{instance_id}/{chunk}"


def command_uuid(code: str, instance_id: str | None, token: str) -> str:
    if "." in code or (instance_id and "." in instance_id) or "." in token:
        raise ValueError("code, instance ID and token must not contain '.'")
    return f"{PREFIX}.{code}.{instance_id or NO_INSTANCE}.{token}"


def fleet_command_uuid(code: str, instance_id: str, chunk: int, token: str) -> str:
    if "." in code or "." in instance_id or "." in token or not instance_id or chunk < 0:
        raise ValueError("code, instance ID and token must not contain '.'")
    return f"{PREFIX}.{code}.{instance_id}.{chunk}.{token}"


def parse_command_uuid(value: str) -> CommandRoute | None:
    """The route inside one of our CommandUUIDs, or None for anybody else's command."""
    parts = value.split(".")
    if parts[0] != PREFIX or not all(parts[1:]):
        return None
    if len(parts) == 4:
        instance = None if parts[2] == NO_INSTANCE else parts[2]
        return CommandRoute(code=parts[1], instance_id=instance, token=parts[3])
    if len(parts) == 5 and parts[3].isdigit() and parts[2] != NO_INSTANCE:
        return CommandRoute(
            code=parts[1], instance_id=parts[2], token=parts[4], chunk=int(parts[3])
        )
    return None
