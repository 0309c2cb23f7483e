"""``mdmflow``: one command for every part (run ``mdmflow --help``)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from mdmflow import __version__


def _build() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mdmflow",
        description="Durable Apple MDM workflows on Temporal (NanoCMD-compatible).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument(
        "--version", action="version", version=f"mdmflow {__version__}", help="print the version"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "up",
        help="run the embedded stack (Temporal, simulator, worker, API)",
        description="Start Temporal dev server, simulator (if no MDM server is configured), "
        "worker and API + relay; Ctrl-C stops them all.",
    )
    p.add_argument(
        "--devices",
        type=int,
        default=int(os.environ.get("MDMFLOW_SIM_DEVICES", "5")),
        help="simulated devices to enroll (default 5)",
    )
    p.set_defaults(func=_up)

    p = sub.add_parser(
        "worker",
        help="run a worker",
        description="Run a Temporal worker. It serves the Temporal SDK's Prometheus metrics "
        "at http://$MDMFLOW_WORKER_METRICS/metrics (default 127.0.0.1:9464; 'off' turns "
        "them off) and will not start on a namespace that lacks mdmflow's search "
        "attributes (see 'mdmflow temporal setup').",
    )
    p.set_defaults(func=_worker)

    p = sub.add_parser(
        "serve",
        help="run the API and webhook relay",
        description="Serve the API and /webhook. Logs an error at start when the namespace "
        "lacks mdmflow's search attributes (see 'mdmflow temporal setup').",
    )
    p.set_defaults(func=_serve)

    p = sub.add_parser(
        "temporal",
        help="run the embedded Temporal dev server, or set up a Temporal namespace",
        description="Without an action (or with 'serve'): run the embedded Temporal dev "
        "server on var/temporal.db in the foreground. 'setup': register mdmflow's custom "
        "search attributes on the Temporal server at TEMPORAL_ADDRESS / TEMPORAL_NAMESPACE "
        "(once per namespace; safe to repeat).",
    )
    p.set_defaults(func=_temporal)
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    actions.add_parser(
        "serve",
        help="run the embedded dev server in the foreground (the default)",
        description="Run the Temporal dev server on var/temporal.db in the foreground.",
    ).set_defaults(func=_temporal)
    actions.add_parser(
        "setup",
        help="register mdmflow's search attributes on TEMPORAL_ADDRESS",
        description="Add the custom search attributes mdmflow's runs use (MdmEnrollmentId, "
        "MdmWorkflowName, MdmInstanceId, MdmStep; Keyword) to TEMPORAL_NAMESPACE on the "
        "server at TEMPORAL_ADDRESS. Prints what it added and what was there; exits 0 "
        "when all are present. Temporal Cloud refuses this: add them in the Cloud UI or "
        "with tcld instead.",
    ).set_defaults(func=_temporal_setup)

    from starter.admin_cli import register as register_admin
    from starter.client_cli import register
    from starter.governance_cli import register as register_governance

    register(sub)
    register_admin(sub)
    register_governance(sub)
    try:
        from simulator.cli import register as register_sim
    except ImportError:  # pragma: no cover - the simulator ships with mdmflow
        pass
    else:
        register_sim(sub)
    return parser


def _up(args: argparse.Namespace) -> int:
    from mdmflow.stack import up

    return up(args.devices)


def _worker(_args: argparse.Namespace) -> None:
    import worker

    worker.run()


def _serve(_args: argparse.Namespace) -> None:
    from starter.server import serve

    serve()


def _temporal(_args: argparse.Namespace) -> int:
    from mdmflow import config
    from mdmflow.temporal_server import DevServer

    s = config.load()
    host, _, port = s.temporal_address.rpartition(":")
    server = DevServer(db_file=s.var_dir / "temporal.db", host=host, port=int(port))
    server.start()
    assert server.process is not None
    try:
        return server.process.wait()
    except KeyboardInterrupt:
        server.stop()
        return 0


def _temporal_setup(_args: argparse.Namespace) -> int:
    from mdmflow import config, eventloop
    from mdmflow.search_setup import SetupError, setup
    from mdmflow.temporal_client import connect

    s = config.load()

    async def run() -> tuple[list[str], list[str]]:
        client = await connect(s.temporal_address, s.temporal_namespace, wait=5.0)
        return await setup(client, s.temporal_address)

    try:
        added, present = eventloop.run(run())
    except RuntimeError as exc:  # Temporal unreachable
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except SetupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    where = f"{s.temporal_address} namespace {s.temporal_namespace}"
    if added:
        print(f"added to {where}: {', '.join(added)}")
    if present:
        print(f"already on {where}: {', '.join(present)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _build().parse_args(argv)
    from mdmflow.logs import configure_logging

    try:
        configure_logging(args.verbose)
    except ValueError as exc:  # a bad MDMFLOW_LOG_FORMAT
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # Everything mdmflow writes under var/ (store, Temporal's database, logs, keys) holds
    # device data or secrets: readable by its owner only.
    os.umask(0o077)
    try:
        result = args.func(args)
    except KeyboardInterrupt:  # Ctrl-C before a command installed its own handling
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
