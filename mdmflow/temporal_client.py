"""One way to connect to Temporal, with the data converter every process must share."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from temporalio.client import Client
from temporalio.converter import DataConverter
from temporalio.runtime import (
    LoggingConfig,
    LoggingFormat,
    PrometheusConfig,
    Runtime,
    TelemetryConfig,
    TelemetryFilter,
)
from temporalio.service import TLSConfig

from mdmflow import codec, config, logs

log = logging.getLogger("mdmflow.temporal")

# A process may create only a few runtimes: one per metrics address, kept for good.
_runtimes: dict[str | None, Runtime] = {}


def sdk_runtime(metrics_address: str | None = None) -> Runtime | None:
    """The SDK runtime to connect with; None: the SDK's default will do.

    A runtime of our own serves the SDK's Prometheus metrics at
    ``http://<metrics_address>/metrics``, and with JSON logs has the SDK core write its
    own (Rust) log lines as JSON too. Those are written by the core, not forwarded into
    Python logging: forwarding calls into Python from the core's threads, which can
    abort the interpreter at exit. Raises ``ValueError`` when the metrics address is
    malformed or taken.
    """
    json_lines = logs.json_logs()
    if metrics_address is None and not json_lines:
        return None
    if metrics_address in _runtimes:
        return _runtimes[metrics_address]
    runtime = Runtime(
        telemetry=TelemetryConfig(
            logging=LoggingConfig(
                filter=TelemetryFilter(core_level="WARN", other_level="ERROR"),
                format=LoggingFormat.JSON if json_lines else None,
            ),
            metrics=PrometheusConfig(bind_address=metrics_address) if metrics_address else None,
        )
    )
    _runtimes[metrics_address] = runtime
    return runtime


def _read(path: Path | None, setting: str) -> bytes | None:
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ValueError(f"{setting}: cannot read {path}: {exc.strerror}") from exc


def tls_config(security: config.TemporalSecurity) -> TLSConfig | bool:
    """The SDK's TLS argument: False for plain gRPC, else the PEM files' contents.

    Raises ``ValueError`` naming the setting whose file cannot be read.
    """
    if not security.tls:
        return False
    return TLSConfig(
        server_root_ca_cert=_read(security.ca, "TEMPORAL_TLS_CA"),
        domain=security.server_name,
        client_cert=_read(security.cert, "TEMPORAL_TLS_CERT"),
        client_private_key=_read(security.key, "TEMPORAL_TLS_KEY"),
    )


async def connect(
    address: str,
    namespace: str,
    *,
    wait: float = 60.0,
    runtime: Runtime | None = None,
    data_converter: DataConverter | None = None,
    security: config.TemporalSecurity | None = None,
) -> Client:
    """Connect, waiting up to ``wait`` seconds for a server that is still starting.

    Without ``runtime``, :func:`sdk_runtime` picks one (none: the SDK default). Without
    ``data_converter``, payloads are encrypted with this install's key ring
    (:func:`mdmflow.codec.default_converter`). Without ``security``, TLS and the API key
    come from the environment (:func:`config.temporal_security`); a bad one raises
    ``ValueError``.
    """
    security = security or config.temporal_security()
    tls = tls_config(security)
    runtime = runtime or sdk_runtime()
    data_converter = data_converter or codec.default_converter()
    deadline = time.monotonic() + wait
    while True:
        try:
            return await Client.connect(
                address,
                namespace=namespace,
                data_converter=data_converter,
                runtime=runtime,
                tls=tls,
                api_key=security.api_key,
            )
        except RuntimeError as exc:
            if time.monotonic() >= deadline:
                raise RuntimeError(f"cannot reach Temporal at {address}: {exc}") from exc
            log.info("waiting for Temporal at %s (%s)", address, exc)
            await asyncio.sleep(0.5)
