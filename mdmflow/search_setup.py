"""mdmflow's custom search attributes on any Temporal server: checked at start, added on demand.

Every run upserts them (``workflows.search_attributes``); on a namespace that lacks one,
starts are refused and runs fail. The embedded dev server registers them at launch; on
a cluster ``mdmflow temporal setup`` does it once, and the worker refuses to start
without them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import (
    AddSearchAttributesRequest,
    ListSearchAttributesRequest,
)
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from workflows import search_attributes as sa

log = logging.getLogger("mdmflow.temporal")

KEYWORD = IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD
WANTED: dict[str, IndexedValueType.ValueType] = {key.name: KEYWORD for key in sa.ALL}
CLOUD_HOSTS = (".tmprl.cloud", ".api.temporal.io")
SETUP = "mdmflow temporal setup"


def type_name(value: int) -> str:
    """``INDEXED_VALUE_TYPE_KEYWORD`` -> ``Keyword``."""
    name = IndexedValueType.Name(IndexedValueType.ValueType(value))
    return name.removeprefix("INDEXED_VALUE_TYPE_").title().replace("_", "")


@dataclass(frozen=True)
class Check:
    """What the namespace has of ours: present, missing, or registered with another type."""

    present: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    wrong_type: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.missing and not self.wrong_type


class SetupError(Exception):
    """The server would not list or add the attributes; the message says what to do."""


async def check(client: Client) -> Check:
    """One ``ListSearchAttributes`` call, compared with what mdmflow needs."""
    resp = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=client.namespace)
    )
    registered = {**resp.system_attributes, **resp.custom_attributes}
    result = Check()
    for name, wanted in WANTED.items():
        if name not in registered:
            result.missing.append(name)
        elif registered[name] != wanted:
            result.wrong_type[name] = type_name(registered[name])
        else:
            result.present.append(name)
    return result


def describe(client: Client, found: Check) -> str:
    """Which attributes are wrong and how to fix it, for a start-up log line."""
    parts = []
    if found.missing:
        parts.append(f"lacks the search attributes {', '.join(found.missing)} (Keyword)")
    parts += [f"has {name} as {kind}, not Keyword" for name, kind in found.wrong_type.items()]
    text = (
        f"Temporal namespace {client.namespace!r} {'; '.join(parts)}: starts are refused "
        "and runs cannot record their step."
    )
    if found.wrong_type:
        names = " ".join(f"--name {name}" for name in found.wrong_type)
        text += f" Remove those first (`temporal operator search-attribute remove {names}`)."
    return text + f" `{SETUP}` adds what is missing."


async def startup_problem(client: Client) -> str | None:
    """The start-up check: a message when attributes are missing, else None.

    A server that will not list them (permissions, Temporal Cloud) is not a reason to
    stop: that is logged and the process goes on.
    """
    try:
        found = await check(client)
    except RPCError as exc:
        log.warning(
            "could not check the search attributes of namespace %r (%s): going on",
            client.namespace,
            exc.message,
        )
        return None
    return None if found.ok else describe(client, found)


def _refused(client: Client, address: str, action: str, exc: RPCError) -> SetupError:
    text = f"Temporal at {address} refused to {action} search attributes: {exc.message}"
    if address.split(":")[0].endswith(CLOUD_HOSTS) or exc.status in (
        RPCStatusCode.PERMISSION_DENIED,
        RPCStatusCode.UNIMPLEMENTED,
    ):
        text += (
            f". On Temporal Cloud add them in the Cloud UI (namespace {client.namespace} → "
            f"Search Attributes) or with `tcld namespace search-attributes add`: "
            + ", ".join(f"{name}=Keyword" for name in WANTED)
        )
    return SetupError(text)


async def setup(client: Client, address: str) -> tuple[list[str], list[str]]:
    """Add what is missing; returns (added, already there). Safe to repeat.

    Raises ``SetupError`` when the server refuses, or when one of ours exists with
    another type (Temporal cannot change a type: it must be removed first).
    """
    try:
        found = await check(client)
    except RPCError as exc:
        raise _refused(client, address, "list", exc) from exc
    if found.wrong_type:
        raise SetupError(describe(client, found))
    if found.missing:
        try:
            await client.operator_service.add_search_attributes(
                AddSearchAttributesRequest(
                    namespace=client.namespace,
                    search_attributes={name: WANTED[name] for name in found.missing},
                )
            )
        except RPCError as exc:
            raise _refused(client, address, "add", exc) from exc
    return found.missing, found.present
