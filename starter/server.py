"""Run the API + relay process (``mdmflow serve``)."""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

import uvicorn

from escrow.sealing import load_master_key
from mdmflow import config, metrics
from mdmflow.policy import load_configured
from mdmflow.search_setup import startup_problem
from mdmflow.temporal_client import connect, tls_config
from relay.webhook_auth import WebhookAuth
from starter.api import create_app
from starter.deps import Services
from store.db import open_engine
from workflows.registry import BY_NAME

log = logging.getLogger("mdmflow.api")


def ssl_options(cert: Path | None, key: Path | None) -> dict[str, str]:
    """uvicorn's ``ssl_certfile``/``ssl_keyfile``; empty (plain HTTP) when neither is set.

    Loads the pair once here so a missing file or a key that does not belong to the
    certificate stops ``serve`` with the setting's name, not a traceback from uvicorn.
    Raises ``ValueError``.
    """
    if cert is None and key is None:
        return {}
    if cert is None or key is None:
        raise ValueError("MDMFLOW_TLS_CERT and MDMFLOW_TLS_KEY go together: set both or neither")
    for setting, path in (("MDMFLOW_TLS_CERT", cert), ("MDMFLOW_TLS_KEY", key)):
        if not path.is_file():
            raise ValueError(f"{setting}: no such file {path}")
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc):
            raise ValueError(
                f"MDMFLOW_TLS_KEY {key} is not the key of MDMFLOW_TLS_CERT {cert}"
            ) from exc
        raise ValueError(
            f"MDMFLOW_TLS_CERT {cert} / MDMFLOW_TLS_KEY {key}: not a PEM certificate and "
            f"unencrypted key ({exc.reason or exc})"
        ) from exc
    return {"ssl_certfile": str(cert), "ssl_keyfile": str(key)}


def api_sdk_metrics() -> str | None:
    """``MDMFLOW_API_SDK_METRICS``: where the API/relay process serves the Temporal SDK's
    metrics of its client (signal and start latencies, failures); off by default."""
    return metrics.address_setting("MDMFLOW_API_SDK_METRICS", None)


def serve() -> None:
    settings = config.load()
    sdk_metrics = api_sdk_metrics()

    async def services() -> Services:
        client = await connect(
            settings.temporal_address,
            settings.temporal_namespace,
            security=security,
            runtime=metrics.sdk_metrics_runtime(sdk_metrics, "MDMFLOW_API_SDK_METRICS", log),
        )
        problem = await startup_problem(client)
        if problem:
            # the relay keeps delivering to runs in flight; starts answer 400 until fixed
            log.error("%s", problem)
        engine = await open_engine(settings.db_url)
        master_key = load_master_key(settings.var_dir)
        return Services.create(client, engine, settings.task_queue, master_key, policy)

    try:
        webhook_auth = WebhookAuth.from_settings(
            settings.webhook_hmac_key,
            settings.webhook_basic_auth,
            settings.webhook_path_token,
            insecure=settings.webhook_insecure,
        )
        https = ssl_options(settings.tls_cert, settings.tls_key)
        security = config.temporal_security()
        tls_config(security)  # a missing PEM file stops the start, not the first request
        policy = load_configured(BY_NAME)  # an unusable policy stops the start, with why
    except ValueError as exc:
        raise SystemExit(str(exc)) from exc
    if webhook_auth.required:
        log.info("webhooks must be authenticated by %s", webhook_auth.methods())
    elif webhook_auth.insecure:
        log.warning(
            "MDMFLOW_WEBHOOK_INSECURE is set: /webhook accepts UNAUTHENTICATED webhooks; anyone "
            "who reaches it can forge device answers and check-ins. Use it on a trusted "
            "network only, and set MDMFLOW_WEBHOOK_HMAC_KEY (NanoMDM) or "
            "MDMFLOW_WEBHOOK_BASIC_AUTH (MicroMDM) instead"
        )
    else:
        log.error(
            "no MDMFLOW_WEBHOOK_HMAC_KEY, _BASIC_AUTH or _PATH_TOKEN: /webhook refuses every "
            "webhook (401); configure one, or MDMFLOW_WEBHOOK_INSECURE=1 on a trusted network"
        )
    if settings.nanocmd_role is None:
        log.info("the nanocmd user is off (MDMFLOW_NANOCMD_ROLE=off): named users only")
    else:
        log.info("the nanocmd user acts with role %s (MDMFLOW_NANOCMD_ROLE)", settings.nanocmd_role)
    app = create_app(services, settings.api_key, webhook_auth, settings.nanocmd_role)
    scheme = "https" if https else "http"
    log.info("API and relay on %s://%s:%d", scheme, settings.listen_host, settings.listen_port)
    uvicorn.run(
        app,
        host=settings.listen_host,
        port=settings.listen_port,
        log_level="warning",
        access_log=False,
        log_config=None,  # uvicorn's lines go through our handler (text or JSON)
        ssl_certfile=https.get("ssl_certfile"),
        ssl_keyfile=https.get("ssl_keyfile"),
        # X-Forwarded-For (the address recorded with escrow reads) only from these proxies
        proxy_headers=bool(settings.trusted_proxies),
        forwarded_allow_ips=settings.trusted_proxies or "",
    )
