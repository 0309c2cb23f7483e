"""``mdmflow``: one command for every part (run ``mdmflow --help``)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence


def _build() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mdmflow",
        description="Durable Apple MDM workflows on Temporal (NanoCMD-compatible).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
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

    p = sub.add_parser("worker", help="run a worker", description="Run a Temporal worker.")
    p.set_defaults(func=_worker)

    p = sub.add_parser(
        "serve", help="run the API and webhook relay", description="Serve API and /webhook."
    )
    p.set_defaults(func=_serve)

    p = sub.add_parser(
        "temporal",
        help="run only the embedded Temporal dev server",
        description="Run the Temporal dev server on var/temporal.db in the foreground.",
    )
    p.set_defaults(func=_temporal)

    from starter.admin_cli import register as register_admin
    from starter.client_cli import register

    register(sub)
    register_admin(sub)
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

    worker.main()


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


def main(argv: Sequence[str] | None = None) -> int:
    args = _build().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    # One line per HTTP request drowns what the services themselves say.
    logging.getLogger("httpx").setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    result = args.func(args)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
