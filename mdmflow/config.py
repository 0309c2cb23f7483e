"""Settings from the environment, each with a documented default (see README)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from mdmflow.secret_file import new_token, read_or_create


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


@dataclass(frozen=True)
class Settings:
    temporal_address: str
    temporal_namespace: str
    task_queue: str
    var_dir: Path
    db_url: str
    mdm_url: str | None
    mdm_kind: str
    mdm_api_key: str
    webhook_hmac_key: str | None
    # MicroMDM cannot sign: "user:secret" from its webhook URL, or a secret path segment
    webhook_basic_auth: str | None
    webhook_path_token: str | None
    # accept unauthenticated webhooks when none of the above is set (trusted networks only)
    webhook_insecure: bool
    # addresses of reverse proxies whose X-Forwarded-For is believed (comma-separated)
    trusted_proxies: str | None
    api_key: str
    listen_host: str
    listen_port: int
    # where ``mdmflow worker`` serves the SDK's Prometheus metrics; None: not served
    worker_metrics: str | None = None
    # HTTPS for the API + relay (PEM files); both None: plain HTTP
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # the role of NanoCMD's user ``nanocmd`` (MDMFLOW_API_KEY); None: that user is off
    nanocmd_role: str | None = "operator"

    @property
    def embedded_temporal(self) -> bool:
        return _env("TEMPORAL_ADDRESS") is None


def api_key_from(var_dir: Path) -> str:
    """``MDMFLOW_API_KEY``, else a random key generated once and kept in ``var/api_key``."""
    explicit = _env("MDMFLOW_API_KEY")
    if explicit:
        return explicit
    return read_or_create(var_dir / "api_key", new_token)


LOG_FORMATS = ("text", "json")
DEFAULT_WORKER_METRICS = "127.0.0.1:9464"
_OFF = ("", "off", "none", "false", "no")


def nanocmd_role() -> str | None:
    """``MDMFLOW_NANOCMD_ROLE``: the role NanoCMD's clients act with (default operator;
    ``off`` disables the ``nanocmd`` user, leaving only named users)."""
    from mdmflow.roles import ROLES

    value = (_env("MDMFLOW_NANOCMD_ROLE", "operator") or "operator").strip().lower()
    if value in _OFF:
        return None
    if value not in ROLES:
        raise ValueError(f"MDMFLOW_NANOCMD_ROLE must be one of {', '.join(ROLES)} or off")
    return value


def log_format() -> str:
    """``MDMFLOW_LOG_FORMAT``: ``text`` (default) or ``json`` (one object per line)."""
    value = (_env("MDMFLOW_LOG_FORMAT", "text") or "text").strip().lower()
    if value not in LOG_FORMATS:
        raise ValueError(f"MDMFLOW_LOG_FORMAT must be text or json, not {value!r}")
    return value


def worker_metrics() -> str | None:
    """``MDMFLOW_WORKER_METRICS``: ``host:port``; empty or ``off`` turns the endpoint off."""
    value = os.environ.get("MDMFLOW_WORKER_METRICS")
    if value is None:
        return DEFAULT_WORKER_METRICS
    value = value.strip()
    return None if value.lower() in _OFF else value


def _path(name: str) -> Path | None:
    value = _env(name)
    return Path(value).expanduser() if value else None


_TLS_ON = ("1", "on", "true", "yes")
_TLS_OFF = ("0", "off", "false", "no")
TEMPORAL_TLS_FILES = ("TEMPORAL_TLS_CA", "TEMPORAL_TLS_CERT", "TEMPORAL_TLS_KEY")


@dataclass(frozen=True)
class TemporalSecurity:
    """How clients reach Temporal: TLS, an mTLS client certificate, an API key (Cloud)."""

    tls: bool = False
    ca: Path | None = None  # server CA; None: the system's roots
    cert: Path | None = None  # client certificate (mTLS)
    key: Path | None = None
    server_name: str | None = None  # name to verify, when it differs from the address
    api_key: str | None = None


def temporal_security() -> TemporalSecurity:
    """``TEMPORAL_TLS``, ``TEMPORAL_TLS_CA/_CERT/_KEY/_SERVER_NAME`` and ``TEMPORAL_API_KEY``.

    Any of the others implies TLS unless ``TEMPORAL_TLS=0`` (an API key in the clear, to a
    local TLS-terminating proxy, say). Raises ``ValueError`` for a certificate
    without its key (or the reverse), ``TEMPORAL_TLS=0`` beside TLS files, and TLS
    settings without ``TEMPORAL_ADDRESS`` (the embedded dev server speaks plain gRPC).
    """
    cert, key = _path("TEMPORAL_TLS_CERT"), _path("TEMPORAL_TLS_KEY")
    if (cert is None) != (key is None):
        raise ValueError("TEMPORAL_TLS_CERT and TEMPORAL_TLS_KEY go together: set both or neither")
    ca = _path("TEMPORAL_TLS_CA")
    server_name = _env("TEMPORAL_TLS_SERVER_NAME")
    api_key = _env("TEMPORAL_API_KEY")
    switch = (_env("TEMPORAL_TLS") or "").strip().lower()
    if switch and switch not in _TLS_ON + _TLS_OFF:
        raise ValueError(f"TEMPORAL_TLS must be 1 or 0, not {switch!r}")
    if switch:
        off = switch in _TLS_OFF
        if off and any(_env(n) for n in TEMPORAL_TLS_FILES):
            raise ValueError("TEMPORAL_TLS=0 contradicts TEMPORAL_TLS_CA/_CERT/_KEY")
        tls = not off
    else:
        tls = any(v is not None for v in (ca, cert, server_name, api_key))
    if (tls or api_key) and _env("TEMPORAL_ADDRESS") is None:
        raise ValueError(
            "Temporal TLS and API key settings need TEMPORAL_ADDRESS: "
            "the embedded dev server has no TLS"
        )
    return TemporalSecurity(tls, ca, cert, key, server_name, api_key)


def load() -> Settings:
    var_dir = Path(_env("MDMFLOW_VAR_DIR", "var") or "var").resolve()
    listen = _env("MDMFLOW_LISTEN", "127.0.0.1:9003") or "127.0.0.1:9003"
    host, _, port = listen.rpartition(":")
    return Settings(
        temporal_address=_env("TEMPORAL_ADDRESS")
        or f"127.0.0.1:{_env('MDMFLOW_TEMPORAL_PORT', '7233')}",
        temporal_namespace=_env("TEMPORAL_NAMESPACE", "default") or "default",
        task_queue=_env("MDMFLOW_TASK_QUEUE", "mdmflow") or "mdmflow",
        var_dir=var_dir,
        db_url=_env("MDMFLOW_DB_URL") or f"sqlite:///{var_dir / 'mdmflow.db'}",
        mdm_url=_env("MDMFLOW_MDM_URL"),
        mdm_kind=_env("MDMFLOW_MDM_KIND", "nanomdm") or "nanomdm",
        mdm_api_key=_env("MDMFLOW_MDM_API_KEY", "nanomdm") or "",
        webhook_hmac_key=_env("MDMFLOW_WEBHOOK_HMAC_KEY"),
        webhook_basic_auth=_env("MDMFLOW_WEBHOOK_BASIC_AUTH"),
        webhook_path_token=_env("MDMFLOW_WEBHOOK_PATH_TOKEN"),
        webhook_insecure=(_env("MDMFLOW_WEBHOOK_INSECURE") or "0").lower() in ("1", "true", "yes"),
        trusted_proxies=_env("MDMFLOW_TRUSTED_PROXIES"),
        api_key=api_key_from(var_dir),
        listen_host=host or "127.0.0.1",
        listen_port=int(port),
        worker_metrics=worker_metrics(),
        tls_cert=_path("MDMFLOW_TLS_CERT"),
        tls_key=_path("MDMFLOW_TLS_KEY"),
        nanocmd_role=nanocmd_role(),
    )
