"""NanoCMD's command plans: named lists of profiles, app manifests and DeviceConfigured.

Plans are stored as NanoCMD's JSON. Names and URLs may hold ``${param}`` references,
expanded per enrollment from its enrollment URL parameters as NanoCMD does.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, async_sessionmaker

from protocol.commands import manifest_url_problem
from store.db import CmdPlanRow
from store.named import put_named, session_in

NonEmpty = Annotated[str, Field(min_length=1)]


class CmdPlan(BaseModel):
    """NanoCMD's CMDPlan JSON. ``account_config`` is refused rather than silently dropped."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    profile_names: list[NonEmpty] = []
    manifest_urls: list[NonEmpty] = []
    device_configured: bool = False

    @field_validator("profile_names", "manifest_urls", mode="before")
    @classmethod
    def _null_is_empty(cls, value: Any) -> Any:
        # Go clients encode an empty slice as null.
        return [] if value is None else value

    @field_validator("manifest_urls")
    @classmethod
    def _urls(cls, urls: list[str]) -> list[str]:
        for url in urls:
            if (problem := manifest_url_problem(url)) is not None:
                raise ValueError(problem)
        return urls

    @field_validator("device_configured", mode="before")
    @classmethod
    def _null_is_false(cls, value: Any) -> Any:
        return False if value is None else value

    def expanded(self, params: dict[str, str]) -> CmdPlan:
        """The plan with ``${param}`` references in names and URLs filled from ``params``."""
        return self.model_copy(
            update={
                "profile_names": [expand(n, params) for n in self.profile_names],
                "manifest_urls": [expand(u, params) for u in self.manifest_urls],
            }
        )


_SPECIAL = frozenset("*#$@!?-0123456789")


def _is_name_char(c: str) -> bool:
    return c == "_" or ("0" <= c <= "9") or ("a" <= c <= "z") or ("A" <= c <= "Z")


def _shell_name(s: str) -> tuple[str, int]:
    """The variable name at the start of ``s`` (after a ``$``) and the characters it used."""
    if s[0] == "{":
        if len(s) > 2 and s[1] in _SPECIAL and s[2] == "}":
            return s[1], 3
        close = s.find("}", 1)
        if close == 1:
            return "", 2  # "${}": bad syntax, dropped
        if close < 0:
            return "", 1  # "${" never closed: bad syntax, dropped
        return s[1:close], close + 1
    if s[0] in _SPECIAL:
        return s[0], 1
    i = 0
    while i < len(s) and _is_name_char(s[i]):
        i += 1
    return s[:i], i


def expand(value: str, params: dict[str, str]) -> str:
    """Shell-like expansion exactly as NanoCMD's cmdplan workflow does it (Go's os.Expand).

    ``${name}`` and ``$name`` take ``params[name]``; ``${name:fallback}`` takes the
    fallback only when ``name`` is absent (a present empty value stays empty). A missing
    name without fallback expands to the empty string. A ``$`` followed by no name is
    kept; malformed ``${`` and ``${}`` are dropped.
    """
    out: list[str] = []
    last = 0
    j = 0
    while j < len(value):
        if value[j] == "$" and j + 1 < len(value):
            out.append(value[last:j])
            name, width = _shell_name(value[j + 1 :])
            if name:
                key, sep, fallback = name.partition(":")
                out.append(params[key] if key in params else fallback if sep else "")
            elif width == 0:
                out.append("$")
            j += width
            last = j + 1
        j += 1
    return "".join(out) + value[last:]


class CmdPlanStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)

    async def put(self, name: str, plan: CmdPlan, conn: AsyncConnection | None = None) -> None:
        values = {"plan": plan.model_dump(mode="json"), "modified": datetime.now(UTC)}
        await put_named(self._sessions, CmdPlanRow, name, values, conn)

    async def get(self, name: str) -> CmdPlan | None:
        async with self._sessions() as session:
            plan = await session.scalar(select(CmdPlanRow.plan).where(CmdPlanRow.name == name))
            return CmdPlan.model_validate(plan) if plan is not None else None

    async def delete(self, name: str, conn: AsyncConnection | None = None) -> bool:
        async with session_in(self._sessions, conn) as session:
            row = await session.get(CmdPlanRow, name)
            if row is None:
                return False
            await session.delete(row)
        return True

    async def names(self) -> list[str]:
        async with self._sessions() as session:
            return list(await session.scalars(select(CmdPlanRow.name).order_by(CmdPlanRow.name)))
