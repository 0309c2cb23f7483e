"""CLI for the stores behind the API: ``mdmflow event|schedule|escrow|profile|cmdplan``.

Each sub-command is one HTTP call to a running mdmflow API and prints its JSON answer;
the exit code is 0 on success and 1 when the API refused (its error is printed).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import httpx

from starter.client_cli import add_api_options, api_client, bad_ids, print_response

Call = tuple[str, str, dict[str, Any]]


def _event(args: argparse.Namespace) -> Call:
    path = f"/v1/event/{args.name}" if args.name else "/v1/events"
    if args.action == "put":
        body = {"event": args.event, "workflow": args.workflow}
        if args.context is not None:
            body["context"] = args.context
        if args.event_context is not None:
            body["event_context"] = args.event_context
        return "PUT", path, {"json": body}
    return {"get": "GET", "delete": "DELETE", "list": "GET"}[args.action], path, {}


def _schedule(args: argparse.Namespace) -> Call:
    if args.action == "list":
        return "GET", "/v1/schedules", {}
    path = f"/v1/schedule/{args.name}"
    if args.action == "put":
        body: dict[str, Any] = {
            "workflow": args.workflow,
            "ids": args.ids or None,
            "context": args.context,
            "every_seconds": args.every,
            "cron": args.cron,
            "paused": args.paused,
        }
        return "PUT", path, {"json": body}
    if args.action in ("pause", "unpause", "trigger"):
        return "POST", f"{path}/{args.action}", {}
    return {"get": "GET", "delete": "DELETE"}[args.action], path, {}


def _escrow(args: argparse.Namespace) -> Call:
    base = f"/v1/escrow/{args.id}"
    if args.action == "access":
        return "GET", f"{base}/access", {}
    if args.action == "summary":
        return "GET", base, {}
    params = {"reason": args.reason, "previous": str(args.previous).lower()}
    return "GET", f"{base}/{args.action}", {"params": params}


def _profile(args: argparse.Namespace) -> Call:
    if args.action == "list":
        return "GET", "/v1/profiles", {}
    path = f"/v1/profile/{args.name}"
    if args.action == "put":
        return "PUT", path, {"content": Path(args.file).read_bytes()}
    return {"get": "GET", "delete": "DELETE"}[args.action], path, {}


def _cmdplan(args: argparse.Namespace) -> Call:
    if args.action == "list":
        return "GET", "/v1/cmdplans", {}
    path = f"/v1/cmdplan/{args.name}"
    if args.action == "put":
        return "PUT", path, {"json": json.loads(Path(args.file).read_text())}
    return {"get": "GET", "delete": "DELETE"}[args.action], path, {}


def _missing_argument(args: argparse.Namespace) -> str | None:
    """What a sub-command still needs, checked before anything is sent."""
    needs_name = args.action not in ("list", "prk", "pin", "summary", "access")
    if needs_name and not getattr(args, "name", None):
        return f"{args.action} needs a name"
    if args.action == "put":
        if hasattr(args, "file") and not args.file:
            return "put needs a file"
        if hasattr(args, "every") and (args.every is None) == (args.cron is None):
            return "put needs exactly one of --every and --cron"
        for option in ("event", "workflow"):
            if hasattr(args, option) and not getattr(args, option):
                return f"put needs --{option}"
    return None


def _run(build: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        if bad_ids([args.id] if getattr(args, "id", None) else None):
            return 2
        problem = _missing_argument(args)
        if problem:
            print(f"mdmflow: {problem}", file=sys.stderr)
            return 2
        try:
            method, path, kwargs = build(args)
        except (OSError, ValueError) as exc:  # unreadable file, bad JSON
            print(f"mdmflow: {exc}", file=sys.stderr)
            return 2
        with api_client(args) as client:
            try:
                return print_response(client.request(method, path, **kwargs))
            except httpx.TransportError as exc:
                print(f"cannot reach the mdmflow API at {args.api_url}: {exc}")
                return 2

    return run


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "event", help="event subscriptions", description="Manage event subscriptions."
    )
    p.add_argument("action", choices=["put", "get", "delete", "list"])
    p.add_argument("name", nargs="?", help="subscription name (not for list)")
    p.add_argument(
        "--event", help="Enrollment, Authenticate, TokenUpdate, CheckOut, Idle, IdleNotStartedSince"
    )
    p.add_argument("--workflow", help="workflow to start")
    p.add_argument("--context", help="workflow context")
    p.add_argument("--event-context", help="IdleNotStartedSince: seconds")
    add_api_options(p)
    p.set_defaults(func=_run(_event))

    p = sub.add_parser(
        "schedule", help="periodic runs (Temporal Schedules)", description="Manage schedules."
    )
    p.add_argument(
        "action", choices=["put", "get", "delete", "list", "pause", "unpause", "trigger"]
    )
    p.add_argument("name", nargs="?", help="schedule name (not for list)")
    p.add_argument("--workflow", help="workflow to start")
    p.add_argument(
        "--id",
        dest="ids",
        action="append",
        help="enrollment ID (repeat); none: every enrolled device",
    )
    p.add_argument("--context", help="workflow context")
    p.add_argument("--every", type=int, help="interval in seconds")
    p.add_argument("--cron", help="cron expression, e.g. '0 2 * * *'")
    p.add_argument("--paused", action="store_true", help="create paused")
    add_api_options(p)
    p.set_defaults(func=_run(_schedule))

    p = sub.add_parser(
        "escrow",
        help="escrowed secrets (every retrieval is recorded)",
        description="Retrieve escrowed FileVault keys and lock PINs.",
    )
    p.add_argument("action", choices=["prk", "pin", "summary", "access"])
    p.add_argument("id", help="enrollment ID")
    p.add_argument("--reason", default="", help="why you need it (recorded)")
    p.add_argument("--previous", action="store_true", help="include superseded secrets")
    add_api_options(p)
    p.set_defaults(func=_run(_escrow))

    p = sub.add_parser(
        "profile", help="stored configuration profiles", description="Manage stored profiles."
    )
    p.add_argument("action", choices=["put", "get", "delete", "list"])
    p.add_argument("name", nargs="?")
    p.add_argument("file", nargs="?", help="put: the .mobileconfig (XML, binary or signed)")
    add_api_options(p)
    p.set_defaults(func=_run(_profile))

    p = sub.add_parser("cmdplan", help="command plans", description="Manage command plans.")
    p.add_argument("action", choices=["put", "get", "delete", "list"])
    p.add_argument("name", nargs="?")
    p.add_argument("file", nargs="?", help="put: the plan as JSON")
    add_api_options(p)
    p.set_defaults(func=_run(_cmdplan))
