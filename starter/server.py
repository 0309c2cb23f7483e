"""Run the API + relay process (``mdmflow serve``)."""

from __future__ import annotations

import logging

import uvicorn

from escrow.sealing import load_master_key
from mdmflow import config
from mdmflow.temporal_client import connect
from starter.api import create_app
from starter.deps import Services
from store.db import open_engine

log = logging.getLogger("mdmflow.api")


def serve() -> None:
    settings = config.load()

    async def services() -> Services:
        client = await connect(settings.temporal_address, settings.temporal_namespace)
        engine = await open_engine(settings.db_url)
        master_key = load_master_key(settings.var_dir)
        return Services.create(client, engine, settings.task_queue, master_key)

    if not settings.webhook_hmac_key:
        log.warning("MDMFLOW_WEBHOOK_HMAC_KEY is not set: webhooks are accepted unsigned")
    app = create_app(services, settings.api_key, settings.webhook_hmac_key)
    log.info("API and relay on http://%s:%d", settings.listen_host, settings.listen_port)
    uvicorn.run(
        app,
        host=settings.listen_host,
        port=settings.listen_port,
        log_level="warning",
        access_log=False,
    )
