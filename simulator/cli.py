"""``mdmflow sim ...``: run the simulator and drive a running one over its HTTP API.

Each sub-command stores its handler in ``func`` (``args.func(args) -> int``), so the
project CLI only calls :func:`register`. ``python -m simulator`` runs ``sim serve``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import httpx

DEFAULT_URL = "http://127.0.0.1:9000"
DEFAULT_API_KEY = "nanomdm"
log = logging.getLogger("simulator")


def _client_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--url",
        default=os.environ.get("MDMFLOW_SIM_URL", DEFAULT_URL),
        help=f"simulator base URL (default: $MDMFLOW_SIM_URL or {DEFAULT_URL})",
    )
    p.add_argument(
        "--api-key",
        default=None,
        help="API key (Basic auth nanomdm:<key>; default: $MDMFLOW_SIM_API_KEY, else the "
        "key `mdmflow up` keeps in $MDMFLOW_VAR_DIR/simulator_api_key (var/), else "
        f"{DEFAULT_API_KEY})",
    )


def api_key_candidates(explicit: str | None) -> list[tuple[str, str]]:
    """(key, where it came from) to try in order.

    An explicit key (``--api-key`` or ``$MDMFLOW_SIM_API_KEY``) is the only one tried.
    Otherwise the key ``mdmflow up`` generated for its simulator comes first and the
    stand-alone default second: a key file left by ``make run`` must not lock out a
    simulator started by hand with the default key.
    """
    if explicit:
        return [(explicit, "--api-key")]
    env = os.environ.get("MDMFLOW_SIM_API_KEY")
    if env:
        return [(env, "$MDMFLOW_SIM_API_KEY")]
    key_file = Path(os.environ.get("MDMFLOW_VAR_DIR") or "var") / "simulator_api_key"
    try:
        from_file = key_file.read_text().strip()
    except OSError:
        from_file = ""
    default = (DEFAULT_API_KEY, "the default key")
    if not from_file or from_file == DEFAULT_API_KEY:
        return [default]
    return [(from_file, str(key_file)), default]


def _request(args: argparse.Namespace, method: str, path: str, **kw: Any) -> int:
    """Call the control API and print its JSON answer; non-2xx gives exit status 1."""
    candidates = api_key_candidates(args.api_key)
    for key, _source in candidates:
        try:
            resp = httpx.request(
                method,
                args.url.rstrip("/") + path,
                auth=("nanomdm", key),
                timeout=30.0,
                **kw,
            )
        except httpx.HTTPError as exc:
            print(f"error: cannot reach the simulator at {args.url}: {exc}", file=sys.stderr)
            return 2
        if resp.status_code != 401:  # a refused key changed nothing: try the next one
            break
    else:
        tried = " and ".join(source for _key, source in candidates)
        print(
            f"error: the simulator at {args.url} refused the API key from {tried}; "
            "pass --api-key or set MDMFLOW_SIM_API_KEY",
            file=sys.stderr,
        )
        return 1
    try:
        print(json.dumps(resp.json(), indent=2))
    except ValueError:
        print(resp.text)
    return 0 if resp.is_success else 1


def _parse_error(spec: str) -> tuple[str, list[int | str]]:
    """``RequestType=code[:domain[:description]]`` -> (RequestType, [code, domain, text])."""
    request_type, sep, rest = spec.partition("=")
    if not sep or not request_type or not rest:
        raise argparse.ArgumentTypeError(f"expected RequestType=code, got {spec!r}")
    parts = rest.split(":", 2)
    try:
        code = int(parts[0])
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"error code {parts[0]!r} is not an integer") from exc
    return request_type, [code, *parts[1:]]


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
    return value


# ---- handlers ------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    from simulator.serve import serve

    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        asyncio.run(serve(args))
    except KeyboardInterrupt:
        pass
    return 0


def cmd_enroll(args: argparse.Namespace) -> int:
    params: dict[str, Any] = {"count": args.count, "kind": args.kind}
    if args.awaiting_configuration:
        params["awaiting_configuration"] = "true"
    return _request(args, "POST", "/sim/devices", params=params)


def cmd_list(args: argparse.Namespace) -> int:
    return _request(args, "GET", "/sim/devices")


def cmd_show(args: argparse.Namespace) -> int:
    return _request(args, "GET", f"/sim/devices/{args.id}")


def cmd_connect(args: argparse.Namespace) -> int:
    return _request(args, "POST", f"/sim/devices/{args.id}/connect")


def cmd_reenroll(args: argparse.Namespace) -> int:
    return _request(args, "POST", f"/sim/devices/{args.id}/reenroll")


def cmd_checkout(args: argparse.Namespace) -> int:
    return _request(args, "POST", f"/sim/devices/{args.id}/checkout")


def cmd_user(args: argparse.Namespace) -> int:
    return _request(args, "POST", f"/sim/devices/{args.id}/users", json={"user_id": args.user_id})


def cmd_set(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {}
    if args.notnow is not None:
        body["notnow_count"] = args.notnow
    if args.offline is not None:
        body["offline"] = args.offline
    if args.latency is not None:
        body["connect_latency"] = args.latency
    if args.clear_errors or args.error:
        body["errors"] = dict(args.error or [])
    if not body:
        print("error: nothing to change (see --help)", file=sys.stderr)
        return 2
    return _request(args, "PATCH", f"/sim/devices/{args.id}", json=body)


def cmd_faults(args: argparse.Namespace) -> int:
    body = {
        k: v
        for k, v in (
            ("drop_rate", args.drop),
            ("duplicate_rate", args.duplicate),
            ("reorder_rate", args.reorder),
            ("seed", args.seed),
            ("push_fault", args.push_fault),
        )
        if v is not None
    }
    return _request(args, "PATCH", "/sim/faults", json=body)


def cmd_stats(args: argparse.Namespace) -> int:
    return _request(args, "GET", "/sim/stats")


# ---- parser --------------------------------------------------------------------------


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``sim`` command group to the project's argparse CLI."""
    sim = subparsers.add_parser(
        "sim",
        help="NanoMDM/MicroMDM-compatible device fleet simulator",
        description="Run a simulated NanoMDM (or MicroMDM) server with simulated Apple "
        "devices, or control a running one.",
    )
    sub = sim.add_subparsers(dest="sim_command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "serve",
        help="run the simulator (NanoMDM and MicroMDM APIs + control API)",
        description="Serve NanoMDM's API (Basic nanomdm:<api key>: /v1/enqueue, /v1/push), "
        "MicroMDM's API (Basic micromdm:<api key>: /v1/commands, /v1/push, /push, "
        "/v1/devices) and the /sim control API; devices post webhooks to --webhook-url. "
        "Run as MicroMDM with --micromdm (same as --webhook-format micromdm).",
    )
    p.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=9000, help="listen port (default 9000)")
    p.add_argument(
        "--devices",
        type=int,
        default=5,
        help="devices the fleet has at start: enrolls those the state file lacks (5)",
    )
    p.add_argument(
        "--kind", choices=("mac", "iphone", "ipad"), default="mac", help="kind of those devices"
    )
    p.add_argument("--webhook-url", default=None, help="where to POST webhooks (none: no webhooks)")
    p.add_argument(
        "--hmac-key",
        default=os.environ.get("MDMFLOW_WEBHOOK_HMAC_KEY") or None,
        help="sign webhooks with X-Hmac-Signature (default: $MDMFLOW_WEBHOOK_HMAC_KEY, else "
        "unsigned)",
    )
    p.add_argument(
        "--api-key",
        default=os.environ.get("MDMFLOW_MDM_API_KEY") or "nanomdm",
        help="API key for Basic auth (default: $MDMFLOW_MDM_API_KEY, else nanomdm); taken "
        "from the environment, a key stays out of the process list",
    )
    p.add_argument(
        "--state-file",
        default=None,
        help="keep the fleet in this JSON file: loaded at start (those devices come back "
        "without enrolling again; --devices only tops the fleet up), saved on shutdown and "
        "every --save-interval seconds (default: none, a new fleet each run)",
    )
    p.add_argument(
        "--save-interval",
        type=_positive,
        default=10.0,
        help="seconds between saves of --state-file (10)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed for all randomness (0)")
    p.add_argument(
        "--latency", type=float, default=0.05, help="seconds from push to connect (0.05)"
    )
    p.add_argument(
        "--answer-latency", type=float, default=0.0, help="seconds per answered command (0)"
    )
    p.add_argument(
        "--fv-delay", type=float, default=1.0, help="seconds until FileVault turns on (1.0)"
    )
    p.add_argument(
        "--webhook-format",
        choices=("nanomdm", "nanomdm08", "micromdm"),
        default="nanomdm",
        help="webhook flavour: NanoMDM 0.9 (with ids), 0.8, or MicroMDM",
    )
    p.add_argument(
        "--micromdm",
        dest="webhook_format",
        action="store_const",
        const="micromdm",
        help="run as MicroMDM: MicroMDM webhooks, for clients of its /v1/commands, "
        "/v1/push, /push and /v1/devices endpoints",
    )
    p.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("enroll", help="enroll N new devices", description="Enroll N devices.")
    p.add_argument("count", type=int, help="how many devices")
    p.add_argument("--kind", choices=("mac", "iphone", "ipad"), default="mac", help="device kind")
    p.add_argument(
        "--awaiting-configuration", action="store_true", help="enroll as if in Setup Assistant"
    )
    _client_args(p)
    p.set_defaults(func=cmd_enroll)

    p = sub.add_parser("list", help="list devices", description="List all simulated devices.")
    _client_args(p)
    p.set_defaults(func=cmd_list)

    for name, func, text in (
        ("show", cmd_show, "show a device's state (queue, profiles, FileVault, counters)"),
        ("connect", cmd_connect, "make a device connect now, as if pushed"),
        ("reenroll", cmd_reenroll, "re-enroll a device (Authenticate clears its queues)"),
        ("checkout", cmd_checkout, "unenroll a device (CheckOut)"),
    ):
        p = sub.add_parser(name, help=text, description=text[:1].upper() + text[1:] + ".")
        p.add_argument("id", help="enrollment ID (device UDID)")
        _client_args(p)
        p.set_defaults(func=func)

    p = sub.add_parser(
        "user", help="enroll a device's user channel", description="Enroll UDID:UserID."
    )
    p.add_argument("id", help="device enrollment ID")
    p.add_argument("--user-id", default=None, help="UserID (default: a new GUID)")
    _client_args(p)
    p.set_defaults(func=cmd_user)

    p = sub.add_parser(
        "set",
        help="change a device's behaviour",
        description="Change how a device behaves: NotNow answers, offline, latency, errors. "
        "--error replaces all injected errors.",
    )
    p.add_argument("id", help="device enrollment ID")
    p.add_argument(
        "--notnow", type=int, help="answer NotNow to the next N attempts of each command"
    )
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "--offline", dest="offline", action="store_const", const=True, help="go offline"
    )
    group.add_argument(
        "--online", dest="offline", action="store_const", const=False, help="go online"
    )
    p.set_defaults(offline=None)
    p.add_argument("--latency", type=float, help="this device's push-to-connect seconds")
    p.add_argument(
        "--error",
        action="append",
        type=_parse_error,
        metavar="RequestType=code[:domain[:text]]",
        help="answer this RequestType with an error (repeatable)",
    )
    p.add_argument("--clear-errors", action="store_true", help="stop injecting errors")
    _client_args(p)
    p.set_defaults(func=cmd_set)

    p = sub.add_parser(
        "faults",
        help="set webhook and push faults",
        description="Drop, duplicate or delay (reorder) a share of webhooks, reproducibly; "
        "make MicroMDM's push endpoints fail.",
    )
    p.add_argument("--drop", type=float, help="share of webhooks dropped (0..1)")
    p.add_argument("--duplicate", type=float, help="share of webhooks sent twice (0..1)")
    p.add_argument("--reorder", type=float, help="share of webhooks held back (0..1)")
    p.add_argument("--seed", type=int, help="restart the fault sequence with this seed")
    p.add_argument(
        "--push-fault",
        choices=("drop", "invalid_token", "none"),
        help="MicroMDM pushes: drop the connection (no APNs certificate), answer "
        "'invalid push token', or none (work again)",
    )
    _client_args(p)
    p.set_defaults(func=cmd_faults)

    p = sub.add_parser("stats", help="show counters", description="Show simulator counters.")
    _client_args(p)
    p.set_defaults(func=cmd_stats)


def build_parser(prog: str = "mdmflow") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog)
    register(parser.add_subparsers(dest="command", metavar="COMMAND", required=True))
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m simulator``: ``sim`` sub-commands, ``serve`` by default."""
    argv = list(sys.argv[1:] if argv is None else argv)
    known = {"serve", "enroll", "list", "show", "connect", "reenroll", "checkout", "user"}
    known |= {"set", "faults", "stats"}
    if not argv or argv[0] not in known | {"-h", "--help"}:
        argv = ["serve", *argv]
    parser = argparse.ArgumentParser(prog="python -m simulator")
    register(parser.add_subparsers(dest="command", metavar="COMMAND", required=True))
    args = parser.parse_args(["sim", *argv])
    result: int = args.func(args)
    return result
