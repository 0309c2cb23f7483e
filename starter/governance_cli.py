"""``mdmflow user|audit|estop|approvals|policy``: governance from the command line.

``user`` and ``audit`` work on the configured store directly (``MDMFLOW_DB_URL``), so an
administrator on the host can add the first admin and check the audit chain while the
server runs; each user change is audited as done by ``local:<login>``. ``estop`` and
``approvals`` go through the API, which tells the running runs.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from mdmflow import config, eventloop
from mdmflow.roles import ROLES
from starter.client_cli import add_api_options, api_client, print_response
from store.audit import AuditEntry, AuditLog
from store.db import open_engine
from store.users import UserExists, UserStore


def _local_user() -> str:
    try:
        return f"local:{getpass.getuser()}"
    except (KeyError, OSError):
        return "local:unknown"


def _on_store(action: Callable[[Any], Awaitable[int]]) -> int:
    """Run ``action(engine)`` on the configured store; a store that cannot be opened is
    one line, not a traceback."""

    async def run() -> int:
        try:
            engine = await open_engine(config.load().db_url)
        except Exception as exc:
            print(f"error: cannot open the store: {exc}", file=sys.stderr)
            return 2
        try:
            return await action(engine)
        finally:
            await engine.dispose()

    return eventloop.run(run())


def cmd_user(args: argparse.Namespace) -> int:
    async def act(engine: Any) -> int:
        users, audit = UserStore(engine), AuditLog(engine)
        who = _local_user()
        if args.action == "list":
            print(json.dumps(await users.list(), indent=2))
            return 0
        if not args.name:
            print(f"error: user {args.action} needs a NAME", file=sys.stderr)
            return 2
        try:
            async with engine.begin() as conn:
                if args.action == "add":
                    if not args.role:
                        print("error: user add needs --role", file=sys.stderr)
                        return 2
                    key = await users.add(args.name, args.role, created_by=who, conn=conn)
                    params: dict[str, Any] = {"name": args.name, "role": args.role}
                elif args.action == "remove":
                    if not await users.remove(args.name, conn=conn):
                        print(f"error: no user {args.name!r}", file=sys.stderr)
                        return 1
                    params = {"name": args.name}
                else:  # new-key
                    new = await users.new_key(args.name, conn=conn)
                    if new is None:
                        print(f"error: no user {args.name!r}", file=sys.stderr)
                        return 1
                    key, params = new, {"name": args.name}
                entry = AuditEntry(who, "local", f"user.{args.action}", params=params, source="cli")
                await audit.record(entry, conn)
        except UserExists:
            print(f"error: user {args.name!r} exists", file=sys.stderr)
            return 1
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        if args.action == "remove":
            print(f"removed {args.name}")
            return 0
        print(f"{args.name} ({args.role or 'new key'}): keep this key, it is not shown again")
        print(key)
        return 0

    return _on_store(act)


def _when(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def cmd_audit(args: argparse.Namespace) -> int:
    async def act(engine: Any) -> int:
        audit = AuditLog(engine)
        if args.action == "verify":
            result = await audit.verify()
            if result.ok:
                print(f"audit chain intact: {result.checked} entries")
                return 0
            print(
                f"AUDIT CHAIN BROKEN at entry {result.first_bad_seq}: {result.problem} "
                f"({result.checked} entries intact before it)",
                file=sys.stderr,
            )
            return 1
        try:
            since, until = _when(args.since), _when(args.until)
        except ValueError as exc:
            print(f"error: {exc} (use ISO 8601, e.g. 2026-11-29T12:00:00Z)", file=sys.stderr)
            return 2
        entries, next_page = await audit.list(
            user=args.user,
            action=args.action_name,
            enrollment=args.id,
            since=since,
            until=until,
            before_seq=args.before,
            limit=args.limit,
        )
        print(json.dumps(entries, indent=2, default=str))
        if next_page is not None:
            print(f"more: --before {next_page}", file=sys.stderr)
        return 0

    return _on_store(act)


def cmd_estop(args: argparse.Namespace) -> int:
    with api_client(args) as c:
        if args.action == "status":
            return print_response(c.get("/v1/estop"))
        if args.action == "engage":
            body = {"workflow": args.workflow, "reason": args.reason or ""}
            return print_response(c.post("/v1/estop", json=body))
        params = {"workflow": args.workflow} if args.workflow else {}
        return print_response(c.delete("/v1/estop", params=params))


def cmd_approvals(args: argparse.Namespace) -> int:
    with api_client(args) as c:
        if args.action == "list":
            return print_response(c.get("/v1/approvals", params={"status": args.status}))
        if not args.id:
            print(f"error: approvals {args.action} needs the approval ID", file=sys.stderr)
            return 2
        path = f"/v1/approvals/{args.id}/{args.action}"
        return print_response(c.post(path, json={"reason": args.reason or ""}))


def cmd_policy(args: argparse.Namespace) -> int:
    if args.action == "check":
        from mdmflow.policy import PolicyError, parse
        from workflows.registry import BY_NAME

        try:
            with open(args.file, encoding="utf-8") as f:
                policy = parse(f.read(), BY_NAME, args.file)
        except (OSError, PolicyError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        allowed = sorted(n for n, w in policy.workflows.items() if w.enabled)
        print(f"{args.file}: valid; starts allowed for {', '.join(allowed) or 'nothing'}")
        return 0
    with api_client(args) as c:
        return print_response(c.get("/v1/policy"))


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "user",
        help="API users and their roles (on the store)",
        description="Add, list or remove API users, or give one a new key, on the configured "
        f"store (MDMFLOW_DB_URL). Roles: {', '.join(ROLES)}. `add` and `new-key` print the "
        "key alone on their last line, once; it is stored hashed.",
    )
    p.add_argument("action", choices=["add", "list", "remove", "new-key"])
    p.add_argument("name", nargs="?", help="user name (a-z, 0-9, . _ -)")
    p.add_argument("--role", choices=ROLES, help="add: the user's role")
    p.set_defaults(func=cmd_user)

    p = sub.add_parser(
        "audit",
        help="the audit log (on the store): list or verify",
        description="List audit entries, newest first, with filters; or `verify` the hash "
        "chain (exit 1 and the first bad entry when a row was edited or deleted).",
    )
    p.add_argument("action", choices=["list", "verify"], nargs="?", default="list")
    p.add_argument("--user")
    p.add_argument("--action-name", dest="action_name", help="e.g. start, estop.engage")
    p.add_argument("--id", help="entries naming this enrollment")
    p.add_argument("--since", help="ISO 8601")
    p.add_argument("--until", help="ISO 8601")
    p.add_argument("--before", type=int, help="page: entries before this one")
    p.add_argument("--limit", type=int, default=50)
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser(
        "estop",
        help="the emergency stop: status, engage, release (admin)",
        description="Engage the emergency stop on everything or one workflow (--workflow): "
        "new starts are refused and running runs halt at their next step boundary; release "
        "lets them go on where they were.",
    )
    p.add_argument("action", choices=["status", "engage", "release"])
    p.add_argument("--workflow", help="only this workflow (default: everything)")
    p.add_argument("--reason", help="why (shown in halted runs and the audit log)")
    add_api_options(p)
    p.set_defaults(func=cmd_estop)

    p = sub.add_parser(
        "approvals",
        help="starts waiting for a second person: list, approve, reject",
        description="List starts waiting for approval before their destructive step, or "
        "approve/reject one (role approver; never your own start).",
    )
    p.add_argument("action", choices=["list", "approve", "reject"])
    p.add_argument("id", nargs="?", help="the approval ID (the start's instance ID)")
    p.add_argument("--status", default="pending", help="list: pending (default) or all")
    p.add_argument("--reason", help="why (recorded)")
    add_api_options(p)
    p.set_defaults(func=cmd_approvals)

    p = sub.add_parser(
        "policy",
        help="the policy in force, or check a policy file",
        description="Show the policy the API holds, or `check FILE` before pointing "
        "MDMFLOW_POLICY_FILE at it.",
    )
    p.add_argument("action", choices=["show", "check"])
    p.add_argument("file", nargs="?", help="check: the TOML file")
    add_api_options(p)
    p.set_defaults(func=cmd_policy)
