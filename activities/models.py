"""Activity inputs and outputs (kept free of I/O imports so workflows can use them)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from protocol.commands import Command


class QueuedCommand(BaseModel):
    command_uuid: str
    command: Command


class SendStepInput(BaseModel):
    enrollment_id: str
    commands: list[QueuedCommand]
    push: bool = True


class SendStepResult(BaseModel):
    queued: list[str] = Field(default_factory=list)
    # UUIDs the MDM server already had: a retried enqueue, not a failure.
    already_queued: list[str] = Field(default_factory=list)
    push_error: str | None = None


class PushInput(BaseModel):
    enrollment_ids: list[str]


class PushResult(BaseModel):
    push_error: str | None = None


class InventoryUpdate(BaseModel):
    enrollment_id: str
    values: dict[str, Any]
    source: str


class DeviceInfoLogEntry(BaseModel):
    enrollment_id: str
    command_uuid: str
    query_responses: dict[str, Any]


class StartRequest(BaseModel):
    """Start ``workflow`` for ``ids``, or for every enrolled device when ``ids`` is None."""

    workflow: str
    ids: list[str] | None = None
    context: str | None = None


class StartSummary(BaseModel):
    instance_id: str
    started: int
    refused: int
