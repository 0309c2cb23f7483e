"""Run the API + relay process (``mdmflow serve``)."""

from __future__ import annotations

import logging

import uvicorn

from escrow.sealing import load_master_key
from mdmflow import config
from mdmflow.temporal_client import connect
from relay.webhook_auth import WebhookAuth
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

    try:
        webhook_auth = WebhookAuth.from_settings(
            settings.webhook_hmac_key, settings.webhook_basic_auth, settings.webhook_path_token
        )
    except ValueError as exc:
        raise SystemExit(str(exc)) from exc
    if webhook_auth.required:
        log.info("webhooks must be authenticated by %s", webhook_auth.methods())
    else:
        log.warning(
            "no MDMFLOW_WEBHOOK_HMAC_KEY, _BASIC_AUTH or _PATH_TOKEN: webhooks are accepted "
            "unauthenticated"
        )
    app = create_app(services, settings.api_key, webhook_auth)
    log.info("API and relay on http://%s:%d", settings.listen_host, settings.listen_port)
    uvicorn.run(
        app,
        host=settings.listen_host,
        port=settings.listen_port,
        log_level="warning",
        access_log=False,
    )
