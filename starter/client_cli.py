"""CLI commands that talk to a running mdmflow API (``mdmflow start|runs|inventory``)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import httpx

from mdmflow import config
from protocol.enrollment import enrollment_id_problem


def api_client(args: argparse.Namespace) -> httpx.Client:
    """A client authenticated as ``--user`` (default nanocmd, with var/api_key)."""
    user = getattr(args, "user", None) or os.environ.get("MDMFLOW_USER") or "nanocmd"
    key = args.api_key or os.environ.get("MDMFLOW_API_KEY")
    if key is None and user == "nanocmd":
        key = config.load().api_key
    return httpx.Client(base_url=args.api_url, auth=(user, key or ""), timeout=60)


def print_response(resp: httpx.Response) -> int:
    try:
        body: Any = resp.json()
    except ValueError:
        body = resp.text
    print(json.dumps(body, indent=2) if not isinstance(body, str) else body)
    return 0 if resp.is_success else 1


def bad_ids(ids: list[str] | None) -> bool:
    """Enrollment IDs the API would refuse: say so (exit 2) before sending anything."""
    bad = [p for i in ids or [] if (p := enrollment_id_problem(i)) is not None]
    if bad:
        print(f"error: {bad[0]}", file=sys.stderr)
    return bool(bad)


def cmd_start(args: argparse.Namespace) -> int:
    if bad_ids(args.ids):
        return 2
    params: list[tuple[str, str | int | float | bool | None]] = [("id", i) for i in args.ids]
    if args.context is not None:
        params.append(("context", args.context))
    if args.on_failure:
        params.append(("on_failure", args.on_failure))
    if args.rollback:
        params.append(("rollback", "true"))
    if args.retries:
        params.append(("retries", args.retries))
    if args.retry_backoff:
        params.append(("retry_backoff_seconds", args.retry_backoff))
    with api_client(args) as c:
        if args.dry_run:
            resp = c.post(f"/v1/workflow/{args.workflow}/plan", params=params)
            if not resp.is_success:
                return print_response(resp)
            print_plan(resp.json())
            return 0
        resp = c.post(f"/v1/workflow/{args.workflow}/start", params=params)
        code = print_response(resp)
        if code == 0 and not resp.json().get("started"):
            print("error: every ID was refused (see refused)", file=sys.stderr)
            return 1
        return code


def cmd_runs(args: argparse.Namespace) -> int:
    """List runs, or apply a control (cancel, pause, ...) to the runs chosen."""
    if bad_ids(args.id):
        return 2
    if args.action:
        return _control(args)
    if args.workflow_id or (args.id and len(args.id) > 1):
        print("error: list runs by --instance, --workflow or one --id", file=sys.stderr)
        return 2
    params = {
        k: v
        for k, v in {
            "instance_id": args.instance,
            "id": args.id[0] if args.id else None,
            "workflow": args.workflow,
        }.items()
        if v
    }
    with api_client(args) as c:
        return print_response(c.get("/v1/runs", params=params))


def _control(args: argparse.Namespace) -> int:
    params: list[tuple[str, str | int | float | bool | None]] = [
        ("id", i) for i in args.id or []
    ]
    for key, value in (
        ("workflow_id", args.workflow_id),
        ("instance_id", args.instance),
        ("workflow", args.workflow),
    ):
        if value:
            params.append((key, value))
    with api_client(args) as c:
        resp = c.post(
            f"/v1/runs/{args.action}", params=params, json={"reason": args.reason or ""}
        )
        return print_response(resp)


def print_plan(plan: dict[str, Any]) -> None:
    """A dry run as tables: the steps and their commands, then the devices."""
    print(f"dry run of {plan['workflow']} for {plan['targets']} enrollment(s); nothing started")
    if plan.get("emergency_stop"):
        print(f"EMERGENCY STOP: {plan['emergency_stop']}")
    if plan.get("approval_required"):
        print("approval: a second person (role approver) must approve before the first "
              "destructive step")
    if plan.get("plan_error"):
        print(f"the run would fail before sending anything: {plan['plan_error']}")
    rows: list[tuple[str, ...]] = [("STEP", "REQUEST TYPE", "DETAIL", "DESTRUCTIVE")]
    for step in plan.get("steps", []):
        for command in step["commands"]:
            rows.append(
                (step["name"], command["request_type"], command["detail"],
                 "yes" if step["destructive"] else "")
            )
    _table(rows)
    print()
    print(f"would start: {plan['would_start']}   would be refused: {plan['would_refuse']}")
    if plan.get("refused_for"):
        print(f"all refused: {plan['refused_for']}")
    else:
        refused = plan.get("refused", {})
        if refused:
            _table([("ENROLLMENT", "REFUSED BECAUSE"), *sorted(refused.items())])
    rate = plan.get("rate_limit")
    if rate:
        state = "enough tokens" if rate["allowed"] else f"short in {rate['bucket']}"
        print(f"rate limit: {state}")


def _table(rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def cmd_run(args: argparse.Namespace) -> int:
    """One run: a device's state (--id), a page of its devices (--devices), or its summary."""
    if bad_ids([args.id] if args.id else None):
        return 2
    with api_client(args) as c:
        if args.id:
            params = {"workflow_id": args.workflow_id, "id": args.id}
            return print_response(c.get("/v1/runs/state", params=params))
        if args.devices:
            params = {"workflow_id": args.workflow_id, "limit": str(args.limit)}
            if args.after:
                params["after"] = args.after
            return print_response(c.get("/v1/runs/devices", params=params))
        return print_response(c.get("/v1/runs/summary", params={"workflow_id": args.workflow_id}))


def cmd_inventory(args: argparse.Namespace) -> int:
    if bad_ids(args.ids):
        return 2
    with api_client(args) as c:
        return print_response(c.get("/v1/inventory", params=[("id", i) for i in args.ids]))


def add_api_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--api-url",
        default=os.environ.get("MDMFLOW_API_URL", "http://127.0.0.1:9003"),
        help="mdmflow API (default: MDMFLOW_API_URL or http://127.0.0.1:9003)",
    )
    p.add_argument(
        "--user",
        default=None,
        help="API user (default: MDMFLOW_USER or nanocmd); made by `mdmflow user add`",
    )
    p.add_argument(
        "--api-key",
        default=None,
        help="the user's key (default: MDMFLOW_API_KEY; for nanocmd also var/api_key)",
    )


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "start",
        help="start a workflow for enrollments",
        description="Start a workflow for one or more enrollment IDs.",
    )
    p.add_argument("workflow", help="e.g. io.micromdm.wf.inventory.v1")
    p.add_argument("ids", nargs="+", help="enrollment IDs")
    p.add_argument("--context", help="workflow-dependent context")
    p.add_argument(
        "--on-failure",
        choices=("fail", "suspend"),
        help="suspend: a failed step waits for retry, skip or abort (default: fail)",
    )
    p.add_argument(
        "--rollback", action="store_true", help="undo what the run did if it fails or is cancelled"
    )
    p.add_argument(
        "--retries",
        type=int,
        default=0,
        help="automatic retries of a failed step, under new CommandUUIDs (0..10; default 0)",
    )
    p.add_argument(
        "--retry-backoff",
        type=float,
        default=None,
        help="seconds before the first automatic retry, doubling (default 60)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="start nothing: show which devices would start or be refused and why, the "
        "commands each step would send, and whether approval is needed",
    )
    add_api_options(p)
    p.set_defaults(func=cmd_start)

    p = sub.add_parser(
        "runs",
        help="list runs, or cancel, pause, resume, retry, skip or abort them",
        description="Without an action: list runs with their status and current step. "
        "With one: apply it to the runs chosen by --workflow-id, --instance, --workflow "
        "and/or --id (repeatable; only those devices), e.g. "
        "`mdmflow runs pause --instance I --reason maintenance`. Exits 1 when the action "
        "applied to no device.",
    )
    p.add_argument(
        "action",
        nargs="?",
        choices=("cancel", "pause", "resume", "retry", "skip", "abort"),
        help="the control to apply (none: list)",
    )
    p.add_argument("--workflow-id", help="one run (as listed)")
    p.add_argument("--instance", help="instance ID returned by start")
    p.add_argument("--id", action="append", help="enrollment ID (repeatable for controls)")
    p.add_argument("--workflow", help="workflow name")
    p.add_argument("--reason", help="why (recorded in the run and the audit log)")
    add_api_options(p)
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser(
        "run",
        help="show one fleet run: its summary, its devices, or one device",
        description="Show a fleet run (workflow ID from `mdmflow runs`): devices per status "
        "and step; with --devices a page of per-device states; with --id one device's steps, "
        "commands and NotNow counts.",
    )
    p.add_argument("workflow_id", help="e.g. io.micromdm.wf.inventory.v1/fleet/<instance>/0")
    p.add_argument("--id", help="enrollment ID: that device's state")
    p.add_argument("--devices", action="store_true", help="list per-device states, a page")
    p.add_argument("--after", help="with --devices: the page after this enrollment ID")
    p.add_argument("--limit", type=int, default=100, help="with --devices: page size (100)")
    add_api_options(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "inventory",
        help="show inventory of enrollments",
        description="Show stored inventory values.",
    )
    p.add_argument("ids", nargs="+")
    add_api_options(p)
    p.set_defaults(func=cmd_inventory)
