"""Policies: what may start, by whom, how many devices at once, how fast. Default-deny.

The policy is a TOML file (``MDMFLOW_POLICY_FILE``; the shipped
``mdmflow/default_policy.toml`` otherwise). A workflow without an entry is refused. The
API checks it at every start and dry run; the worker checks it again right before a
run's first command of a destructive step (lock, erase, profile removal, key rotation),
so a policy tightened while a run waits takes effect before anything destructive goes out.

Every process re-reads the file when it changes (checked at most once a second). An
invalid file at start stops the process with the problem; an invalid edit later is
logged as an error, shown by ``GET /v1/policy``, and the last good policy stays in force.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mdmflow.roles import ROLES

log = logging.getLogger("mdmflow.policy")

DEFAULT_POLICY_FILE = Path(__file__).with_name("default_policy.toml")
ENV_POLICY_FILE = "MDMFLOW_POLICY_FILE"
# A start names at most this many devices whatever the policy says (a request's limit).
HARD_MAX_TARGETS = 50_000
DEFAULT_APPROVAL_TIMEOUT = 86_400.0
RELOAD_CHECK_SECONDS = 1.0

_WORKFLOW_KEYS = frozenset(
    {
        "enabled",
        "roles",
        "max_targets",
        "rate",
        "approval",
        "approval_timeout_seconds",
        "refuse_unknown",
    }
)


class PolicyError(ValueError):
    """The policy file cannot be used; the message says where and why."""


@dataclass(frozen=True)
class Rate:
    """A token bucket: ``capacity`` devices per ``per_seconds``, refilled continuously."""

    capacity: int
    per_seconds: float

    def as_dict(self) -> dict[str, Any]:
        return {"capacity": self.capacity, "per_seconds": self.per_seconds}


@dataclass(frozen=True)
class WorkflowPolicy:
    name: str
    enabled: bool
    roles: frozenset[str]
    max_targets: int
    rate: Rate | None = None
    approval: bool = False
    approval_timeout_seconds: float = DEFAULT_APPROVAL_TIMEOUT
    refuse_unknown: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "enabled": self.enabled,
            "roles": sorted(self.roles),
            "max_targets": self.max_targets,
            "rate": self.rate.as_dict() if self.rate else None,
            "approval": self.approval,
            "approval_timeout_seconds": self.approval_timeout_seconds,
            "refuse_unknown": self.refuse_unknown,
        }


@dataclass(frozen=True)
class Policy:
    workflows: Mapping[str, WorkflowPolicy]
    global_rate: Rate | None = None
    source: str = ""

    def for_workflow(self, name: str) -> WorkflowPolicy | None:
        return self.workflows.get(name)

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "global": {"rate": self.global_rate.as_dict() if self.global_rate else None},
            "workflows": {n: w.as_dict() for n, w in sorted(self.workflows.items())},
        }


@dataclass(frozen=True)
class Refusal:
    """Why policy refuses a start; ``status`` is the HTTP answer (403)."""

    message: str
    status: int = 403


def _rate(where: str, doc: object) -> Rate:
    if not isinstance(doc, dict) or set(doc) != {"capacity", "per_seconds"}:
        raise PolicyError(f"{where}: rate must be {{ capacity = N, per_seconds = S }}")
    capacity, per = doc["capacity"], doc["per_seconds"]
    if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 1:
        raise PolicyError(f"{where}: rate.capacity must be a whole number of at least 1")
    if not isinstance(per, int | float) or isinstance(per, bool) or not 0 < per < math.inf:
        raise PolicyError(f"{where}: rate.per_seconds must be a positive number")
    return Rate(capacity, float(per))


def _flag(where: str, doc: Mapping[str, object], key: str, default: bool) -> bool:
    value = doc.get(key, default)
    if not isinstance(value, bool):
        raise PolicyError(f"{where}: {key} must be true or false")
    return value


def _workflow(name: str, doc: object) -> WorkflowPolicy:
    where = f"workflow {name!r}"
    if not isinstance(doc, dict):
        raise PolicyError(f"{where}: must be a table")
    unknown = set(doc) - _WORKFLOW_KEYS
    if unknown:
        raise PolicyError(f"{where}: unknown setting(s) {', '.join(sorted(unknown))}")
    for key in ("enabled", "roles", "max_targets"):
        if key not in doc:
            raise PolicyError(f"{where}: {key} is required")
    roles = doc["roles"]
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        raise PolicyError(f"{where}: roles must be a list of role names")
    bad = [r for r in roles if r not in ROLES]
    if bad:
        raise PolicyError(f"{where}: unknown role(s) {bad}; roles are {', '.join(ROLES)}")
    max_targets = doc["max_targets"]
    if (
        not isinstance(max_targets, int)
        or isinstance(max_targets, bool)
        or not 1 <= max_targets <= HARD_MAX_TARGETS
    ):
        raise PolicyError(f"{where}: max_targets must be between 1 and {HARD_MAX_TARGETS:,}")
    rate = _rate(where, doc["rate"]) if "rate" in doc else None
    if rate is not None and rate.capacity < max_targets:
        raise PolicyError(
            f"{where}: rate.capacity ({rate.capacity}) is below max_targets ({max_targets}): "
            "a start of max_targets devices could never get its tokens"
        )
    timeout = doc.get("approval_timeout_seconds", DEFAULT_APPROVAL_TIMEOUT)
    if not isinstance(timeout, int | float) or isinstance(timeout, bool) or timeout <= 0:
        raise PolicyError(f"{where}: approval_timeout_seconds must be a positive number")
    return WorkflowPolicy(
        name=name,
        enabled=_flag(where, doc, "enabled", False),
        roles=frozenset(roles),
        max_targets=max_targets,
        rate=rate,
        approval=_flag(where, doc, "approval", False),
        approval_timeout_seconds=float(timeout),
        refuse_unknown=_flag(where, doc, "refuse_unknown", False),
    )


def parse(text: str, known: Iterable[str], source: str = "") -> Policy:
    """A policy from TOML text; ``known``: the workflow names this version runs."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"{source or 'policy'}: not valid TOML: {exc}") from exc
    unknown = set(doc) - {"global", "workflow"}
    if unknown:
        raise PolicyError(f"unknown section(s) {', '.join(sorted(unknown))}")
    glob = doc.get("global", {})
    if not isinstance(glob, dict) or set(glob) - {"rate"}:
        raise PolicyError("[global] takes only rate")
    global_rate = _rate("[global]", glob["rate"]) if "rate" in glob else None
    entries = doc.get("workflow", {})
    if not isinstance(entries, dict):
        raise PolicyError('[workflow."<name>"] tables expected')
    names = set(known)
    strangers = sorted(set(entries) - names)
    if strangers:
        raise PolicyError(
            f"no such workflow(s): {', '.join(strangers)} (known: {', '.join(sorted(names))})"
        )
    workflows = {name: _workflow(name, entry) for name, entry in entries.items()}
    if global_rate is not None:
        for wp in workflows.values():
            if wp.enabled and wp.max_targets > global_rate.capacity:
                raise PolicyError(
                    f"workflow {wp.name!r}: max_targets ({wp.max_targets}) is above the "
                    f"global rate capacity ({global_rate.capacity})"
                )
    return Policy(workflows=workflows, global_rate=global_rate, source=source)


def check_start(policy: Policy, workflow: str, role: str | None, targets: int) -> Refusal | None:
    """Why ``role`` may not start ``workflow`` for ``targets`` devices, or None.

    ``role`` None: a start by mdmflow itself (an event subscription, a schedule), whose
    role was checked when it was set up; the rest of the policy still applies.
    """
    wp = policy.for_workflow(workflow)
    if wp is None:
        return Refusal(
            f"policy: {workflow} has no policy entry, and what has none is refused "
            f'(add [workflow."{workflow}"] to {policy.source or "the policy file"})'
        )
    if not wp.enabled:
        return Refusal(f"policy: {workflow} is disabled (enabled = false)")
    if role is not None and role not in wp.roles:
        return Refusal(
            f"policy: role {role} may not start {workflow} (allowed: {', '.join(sorted(wp.roles))})"
        )
    if targets > wp.max_targets:
        return Refusal(
            f"policy: {workflow} takes at most {wp.max_targets:,} enrollment IDs per start "
            f"(max_targets), this start names {targets:,}; larger rollouts are several starts"
        )
    return None


@dataclass
class PolicyHolder:
    """The policy in force in this process, re-read when its file changes."""

    path: Path
    known: frozenset[str]
    _policy: Policy | None = None
    _stamp: tuple[int, int] | None = None
    _checked: float = 0.0
    last_error: str | None = None
    loaded_at: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def load(cls, path: Path | None, known: Iterable[str]) -> PolicyHolder:
        """Read the policy now; raises :class:`PolicyError` when it is unusable."""
        holder = cls(path or DEFAULT_POLICY_FILE, frozenset(known))
        holder._policy = holder._read()
        holder.loaded_at = time.time()
        log.info(
            "policy from %s: %d workflow(s) allowed",
            holder.path,
            sum(1 for w in holder._policy.workflows.values() if w.enabled),
        )
        return holder

    def _read(self) -> Policy:
        try:
            stat = self.path.stat()
            text = self.path.read_text(encoding="utf-8")
        except OSError as exc:
            raise PolicyError(f"cannot read policy file {self.path}: {exc.strerror}") from exc
        self._stamp = (stat.st_mtime_ns, stat.st_size)
        return parse(text, self.known, str(self.path))

    def current(self) -> Policy:
        """The policy in force, re-read first when the file changed (at most once a second)."""
        assert self._policy is not None
        now = time.monotonic()
        if now - self._checked < RELOAD_CHECK_SECONDS:
            return self._policy
        with self._lock:
            self._checked = now
            try:
                stat = self.path.stat()
                changed = (stat.st_mtime_ns, stat.st_size) != self._stamp
            except OSError as exc:
                changed = False
                self._keep(f"cannot read policy file {self.path}: {exc.strerror}")
            if changed:
                try:
                    self._policy = self._read()
                except PolicyError as exc:
                    self._keep(str(exc))
                else:
                    self.last_error = None
                    self.loaded_at = time.time()
                    log.warning("policy reloaded from %s", self.path)
        return self._policy

    def _keep(self, problem: str) -> None:
        if problem != self.last_error:
            log.error("POLICY NOT RELOADED, the last good policy stays in force: %s", problem)
        self.last_error = problem


def policy_path() -> Path | None:
    value = os.environ.get(ENV_POLICY_FILE, "").strip()
    return Path(value).expanduser() if value else None


def load_configured(known: Iterable[str]) -> PolicyHolder:
    """This process's policy from ``MDMFLOW_POLICY_FILE`` (or the shipped default)."""
    return PolicyHolder.load(policy_path(), known)
