"""Run the simulator under uvicorn with a freshly enrolled fleet."""

from __future__ import annotations

import argparse
import logging

import uvicorn

from simulator.app import create_app
from simulator.fleet import Fleet, FleetConfig
from simulator.webhooks import split_credentials

log = logging.getLogger("simulator")


async def serve(args: argparse.Namespace) -> None:
    config = FleetConfig(
        webhook_url=args.webhook_url or None,
        webhook_hmac_key=args.hmac_key or None,
        api_key=args.api_key,
        connect_latency=args.latency,
        answer_latency=args.answer_latency,
        seed=args.seed,
        webhook_format=args.webhook_format,
        fv_enable_delay=args.fv_delay,
    )
    fleet = Fleet(config)
    await fleet.start()
    try:
        if args.devices > 0:
            ids = await fleet.enroll(args.devices, args.kind)
            log.info("enrolled %d %s device(s): %s", len(ids), args.kind, ", ".join(ids[:5]))
        log.info(
            "%s on http://%s:%d (Basic %s:<api key>); %s webhooks to %s%s",
            "MicroMDM API (/v1/commands, /v1/push, /push, /v1/devices)"
            if config.micromdm
            else "NanoMDM API",
            args.host,
            args.port,
            "micromdm" if config.micromdm else "nanomdm",
            config.webhook_format,
            split_credentials(config.webhook_url)[0] if config.webhook_url else "nowhere",
            " (HMAC signed)" if config.webhook_hmac_key else "",
        )
        server = uvicorn.Server(
            uvicorn.Config(
                create_app(fleet),
                host=args.host,
                port=args.port,
                log_level="debug" if args.verbose else "warning",
                access_log=bool(args.verbose),
            )
        )
        await server.serve()
    finally:
        await fleet.stop()
        log.info("simulator stopped: %s", fleet.stats)
